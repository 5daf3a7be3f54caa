"""The session digest: what the log says, read whole or completed runs from memory."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import ManualClock, MemoryRegistry
from registry.store import Store
from registry.store.digest import MAX_STRING, Limits, read_digest

from .conftest import Backend

OWNER = "alice"
LIMITS = Limits(frozenset(("Write", "Edit")), recent=3, max_checkpoints=2)

event = st.one_of(
    st.tuples(st.just("text"), st.fixed_dictionaries({"text": st.sampled_from("ab")})),
    st.tuples(st.just("error"), st.fixed_dictionaries({"message": st.sampled_from("xy")})),
    st.tuples(st.just("checkpoint"), st.fixed_dictionaries({"n": st.integers(0, 9)})),
    st.tuples(st.just("text_delta"), st.fixed_dictionaries({"text": st.just("d")})),
    st.builds(
        lambda name, path, n: (
            "tool_use",
            {"tool_id": f"t{n}", "name": name, "input": {"file_path": path}},
        ),
        st.sampled_from(["Write", "Edit", "Bash"]),
        st.sampled_from(["a", "b"]),
        st.integers(0, 3),
    ),
    st.builds(
        lambda n, bad: ("tool_result", {"tool_id": f"t{n}", "content": "ok", "is_error": bad}),
        st.integers(0, 3),
        st.booleans(),
    ),
)
# Per step: a run's events, and whether it is left running while the digest is read.
steps = st.lists(st.tuples(st.lists(event, max_size=8), st.booleans()), min_size=1, max_size=5)


def comparable(digest: Any) -> Any:
    """A digest with its events as plain tuples, so two reads compare equal."""
    as_tuples = [
        [(e.run_id, e.seq, e.kind, e.data) for e in events]
        for events in (digest.actions, digest.errors, digest.checkpoints, digest.file_uses)
    ]
    return (
        digest.runs,
        digest.kinds,
        digest.last_event_ts,
        digest.tools,
        as_tuples,
        digest.results,
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=steps)
async def test_remembered_runs_give_the_same_digest_as_a_whole_read(
    backend: Backend, plan: list[tuple[list[tuple[str, dict[str, Any]]], bool]]
) -> None:
    # Each example reads a session of its own, on a store of its own, in the test's database.
    async with await backend.open(clock=ManualClock()) as store:
        registry = MemoryRegistry(store=store)
        sid = (await store.create_session(owner=OWNER, provider="p")).session_id
        for events, keep_running in plan:
            await registry.start(sid, owner=OWNER, content="go")
            for kind, data in events:
                registry.publish(sid, kind, data)
            if not keep_running:
                registry.publish(sid, "complete", {"reason": "done", "exit_code": 0})
            remembered = await store.digest(
                sid, file_tools=LIMITS.file_tools, recent=3, max_checkpoints=2
            )
            whole = await read_digest(store._fetch, store.sql, sid, LIMITS)  # type: ignore[attr-defined]
            assert comparable(remembered) == comparable(whole)
            if keep_running:
                registry.publish(sid, "complete", {"reason": "done", "exit_code": 0})


async def test_a_deleted_session_is_forgotten(store: Store) -> None:
    registry = MemoryRegistry(store=store)
    sid = (await store.create_session(owner=OWNER, provider="p")).session_id
    await registry.start(sid, owner=OWNER, content="go")
    registry.publish(sid, "complete", {"reason": "done"})
    assert len((await store.digest(sid)).runs) == 1
    assert await store.delete_session(sid, owner=OWNER)
    empty = await store.digest(sid)
    assert (empty.runs, empty.kinds) == ([], {})


async def test_long_strings_are_cut(store: Store) -> None:
    registry = MemoryRegistry(store=store)
    sid = (await store.create_session(owner=OWNER, provider="p")).session_id
    await registry.start(sid, owner=OWNER, content="go")
    registry.publish(sid, "checkpoint", {"note": "n" * 5000, "list": ["l" * 5000, 1]})
    [checkpoint] = (await store.digest(sid)).checkpoints
    assert checkpoint.data == {"note": "n" * MAX_STRING, "list": ["l" * MAX_STRING, 1]}
