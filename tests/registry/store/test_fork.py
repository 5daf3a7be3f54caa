"""Forks in the store, on both engines: what is copied up to the point, how a cut run ends,
the origin a provider continues from, and the start orders of the copied runs."""

from __future__ import annotations

from typing import Any

import pytest

from registry import Event, ForkOrigin, ManualClock, MemoryRegistry, Turn
from registry.store import BadForkPoint, ForkPoint, Store

from .conftest import Backend

OWNER = "ann"


async def source_session(store: Store, clock: ManualClock) -> tuple[MemoryRegistry, str, list[str]]:
    """A session of two completed runs (the first announcing provider id ``prov-1``) and a
    third still running."""
    registry = MemoryRegistry(store=store, clock=clock)
    sid = (await store.create_session(owner=OWNER, provider="cli", title="Plan")).session_id
    runs = []
    for n in range(3):
        runs.append((await registry.start(sid, owner=OWNER, content=f"q{n}")).run_id)
        registry.publish(sid, "text", {"text": f"a{n}"})
        if n == 0:
            registry.publish(sid, "session_created", {"provider_session_id": "prov-1"})
        if n < 2:
            registry.complete_run(sid, exit_code=0)
        clock.advance(1)
    await store.flush()
    return registry, sid, runs


def shape(events: list[Event]) -> list[tuple[int, str, dict[str, Any]]]:
    return [
        (e.seq, e.kind, {k: v for k, v in e.data.items() if k != "actual_session_id"})
        for e in events
    ]


async def test_a_fork_at_the_end_copies_the_log_under_new_ids(
    store: Store, clock: ManualClock
) -> None:
    _registry, sid, runs = await source_session(store, clock)
    notes = {"summary": "s", "next_steps": [], "blockers": [], "context_for_next": {}}
    await store.set_handoff(sid, owner=OWNER, handoff=notes)
    before = await store.read_history(sid, None, None)
    fork = await store.fork_session(sid, owner=OWNER)
    assert fork is not None
    copied = await store.read_history(fork.session_id, None, None)
    assert before is not None
    assert copied is not None
    # The running run is cut where it had got to, and ends interrupted.
    assert shape(copied[:-1]) == shape(before)
    assert (copied[-1].kind, copied[-1].data["reason"]) == ("complete", "interrupted")
    assert {e.session_id for e in copied} == {fork.session_id}
    assert not {e.run_id for e in copied} & set(runs)
    completes = [e for e in copied if e.kind == "complete"]
    assert {e.data["actual_session_id"] for e in completes} == {fork.session_id}
    assert (fork.title, fork.provider, fork.handoff, fork.running_run_id) == (
        "Plan (fork)",
        "cli",
        notes,
        None,
    )
    assert fork.forked_from == {"session_id": sid, "run_id": runs[2], "seq": 2}
    # The source is left as it was, and the fork's provider starts from its turns.
    assert await store.read_history(sid, None, None) == before
    assert await store.fork_origin(fork.session_id) == ForkOrigin(None, 3, None)
    assert await store.fork_origin(sid) is None
    assert await store.resume_id(fork.session_id) is None


async def test_a_fork_at_a_completed_run_resumes_its_provider_id(
    store: Store, clock: ManualClock
) -> None:
    _registry, sid, runs = await source_session(store, clock)
    fork = await store.fork_session(sid, owner=OWNER, at=ForkPoint(runs[0]), title="Mine")
    assert fork is not None
    assert fork.title == "Mine"
    copied = await store.read_history(fork.session_id, None, None)
    assert copied is not None
    assert [(e.seq, e.kind) for e in copied] == [(1, "user_message"), (2, "text"), (3, "complete")]
    # Resuming prov-1 is exactly the copied conversation, so the fork may resume it.
    assert await store.fork_origin(fork.session_id) == ForkOrigin("prov-1", 1, None)
    await store.set_fork_summary(fork.session_id, "the first turn")
    assert await store.fork_origin(fork.session_id) == ForkOrigin("prov-1", 1, "the first turn")
    assert await store.turns(fork.session_id) == [Turn("user", "q0"), Turn("assistant", "a0")]


async def test_a_fork_inside_a_run_cuts_it(store: Store, clock: ManualClock) -> None:
    _registry, sid, runs = await source_session(store, clock)
    fork = await store.fork_session(sid, owner=OWNER, at=ForkPoint(runs[1], 1))
    assert fork is not None
    copied = await store.read_history(fork.session_id, None, None)
    assert copied is not None
    assert [(e.seq, e.kind) for e in copied] == [
        (1, "user_message"),
        (2, "text"),
        (3, "complete"),
        (1, "user_message"),
        (2, "complete"),
    ]
    assert copied[-1].data["reason"] == "interrupted"
    last = await store.get_run(copied[-1].run_id)
    assert last is not None
    assert (last.status, last.outcome, last.last_seq) == ("completed", "interrupted", 2)
    assert await store.fork_origin(fork.session_id) == ForkOrigin(None, 2, None)
    assert fork.forked_from == {"session_id": sid, "run_id": runs[1], "seq": 1}


async def test_fork_points_and_owners_are_checked(store: Store, clock: ManualClock) -> None:
    _registry, sid, runs = await source_session(store, clock)
    with pytest.raises(BadForkPoint) as info:
        await store.fork_session(sid, owner=OWNER, at=ForkPoint("NOT-A-RUN"))
    assert info.value.field == "run_id"
    with pytest.raises(BadForkPoint) as info:
        await store.fork_session(sid, owner=OWNER, at=ForkPoint(runs[0], 9))
    assert info.value.field == "seq"
    assert await store.fork_session(sid, owner="bob") is None
    assert len(await store.list_sessions(owner=OWNER)) == 1
    empty = await store.create_session(owner=OWNER, provider="cli")
    fork = await store.fork_session(empty.session_id, owner=OWNER)
    assert fork is not None
    assert fork.forked_from == {"session_id": empty.session_id, "run_id": None, "seq": None}
    assert await store.read_history(fork.session_id, None, None) == []


async def test_copied_runs_are_in_order_and_the_forks_own_runs_follow(
    backend: Backend, store: Store, clock: ManualClock
) -> None:
    registry, sid, _runs = await source_session(store, clock)
    registry.complete_run(sid, exit_code=0)
    fork = await store.fork_session(sid, owner=OWNER)
    assert fork is not None
    own = (await registry.start(fork.session_id, owner=OWNER, content="mine")).run_id
    registry.complete_run(fork.session_id, exit_code=0)
    history = await store.read_history(fork.session_id, None, None)
    assert history is not None
    assert [e.data["content"] for e in history if e.kind == "user_message"] == [
        "q0",
        "q1",
        "q2",
        "mine",
    ]
    source_ords = [
        ord_
        for (ord_,) in await backend.rows(
            "SELECT ord FROM runs WHERE session_id = ? ORDER BY ord", (sid,)
        )
    ]
    fork_ords = [
        ord_
        for (ord_,) in await backend.rows(
            "SELECT ord FROM runs WHERE session_id = ? ORDER BY ord", (fork.session_id,)
        )
    ]
    if backend.engine == "postgres":
        # PostgreSQL keeps the source's start orders: they came from the shared counter.
        assert fork_ords[:3] == source_ords
    else:
        assert fork_ords[0] > source_ords[-1]
    assert fork_ords[3] > max(fork_ords[:3])
    assert fork_ords[3] == await store.max_ord()
    assert own == history[-1].run_id
