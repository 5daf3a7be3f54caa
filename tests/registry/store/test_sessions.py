"""Sessions, unread marks, idempotent sends, provider ids, history pages, turns."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import ManualClock, MemoryRegistry, Position, Turn
from registry.clock import to_ms
from registry.errors import UnknownRun
from registry.store import SessionCursor, SessionRecord, Store, StoreError

from .conftest import Backend

# Sessions ---------------------------------------------------------------------------------


async def test_create_and_get_checks_the_owner(store: Store, clock: ManualClock) -> None:
    record = await store.create_session(owner="ann", provider="echo", title="Plans")
    now = int(clock.now() * 1000)
    assert record == SessionRecord(
        record.session_id, "ann", "Plans", "echo", "active", now, now, False, None
    )
    assert await store.get_session(record.session_id, owner="ann") == record
    # Someone else's session reads exactly like a missing one.
    assert await store.get_session(record.session_id, owner="bob") is None
    assert await store.get_session("s_missing", owner="ann") is None
    assert await store.update_session(record.session_id, owner="bob", title="x") is None
    assert await store.mark_read(record.session_id, owner="bob") is False
    assert await store.delete_session(record.session_id, owner="bob") is False
    assert await store.get_session(record.session_id, owner="ann") == record


async def test_create_with_a_chosen_id_and_refuse_a_taken_one(store: Store) -> None:
    record = await store.create_session(owner="ann", provider="echo", session_id="s_mine")
    assert record.session_id == "s_mine"
    assert record.title is None
    with pytest.raises(ValueError, match="already exists"):
        await store.create_session(owner="bob", provider="echo", session_id="s_mine")
    assert (await store.get_session("s_mine", owner="ann")) == record


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"owner": ""}, "owner"),
        ({"owner": "ann", "title": 5}, "title"),
        ({"owner": "ann", "session_id": ""}, "session_id"),
    ],
)
async def test_create_refuses_bad_fields(
    store: Store, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        await store.create_session(provider="echo", **kwargs)  # type: ignore[arg-type]
    assert await store.list_sessions(owner="ann") == []


async def test_list_by_latest_activity_with_unread_and_running_run(
    store: Store, clock: ManualClock
) -> None:
    registry = MemoryRegistry(store=store, clock=clock)
    first = await store.create_session(owner="ann", provider="echo")
    clock.advance(1)
    second = await store.create_session(owner="ann", provider="echo")
    clock.advance(1)
    await store.create_session(owner="bob", provider="echo")
    listed = await store.list_sessions(owner="ann")
    assert [s.session_id for s in listed] == [second.session_id, first.session_id]
    # A run in the older session makes it the most recent activity.
    clock.advance(1)
    run_id = (await registry.start(first.session_id, owner="ann", content="q")).run_id
    listed = await store.list_sessions(owner="ann")
    assert [s.session_id for s in listed] == [first.session_id, second.session_id]
    assert listed[0].running_run_id == run_id
    assert listed[0].updated_at == int(clock.now() * 1000)
    assert listed[1].running_run_id is None
    clock.advance(1)
    registry.complete_run(first.session_id, exit_code=0)  # nobody subscribed: unread
    listed = await store.list_sessions(owner="ann")
    assert listed[0].running_run_id is None
    assert listed[0].has_unread
    assert not listed[1].has_unread
    assert await store.list_sessions(owner="nobody") == []


OWNERS = itertools.count()


async def pages(store: Store, owner: str, limit: int) -> list[list[str]]:
    """Every page of the owner's sessions, ``limit`` at most each, following each page's end."""
    listed: list[list[str]] = []
    after = None
    while page := await store.list_sessions(owner=owner, after=after, limit=limit):
        assert len(page) <= limit
        listed.append([s.session_id for s in page])
        after = SessionCursor.of(page[-1])
    return listed


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    # Per session: ms after the one before (0: the clock stands still), and whether a run
    # then ends in it (so updated_at moves past created_at, and ties on it too).
    plan=st.lists(st.tuples(st.sampled_from([0, 0, 1, 2]), st.booleans()), max_size=12),
    limit=st.integers(1, 13),
)
async def test_pages_of_sessions_are_the_whole_list_cut_up(
    backend: Backend, plan: list[tuple[int, bool]], limit: int
) -> None:
    # Each example lists an owner of its own, on a store of its own, in the test's database.
    owner = f"u{next(OWNERS)}"
    clock = ManualClock()
    async with await backend.open(clock=clock) as store:
        registry = MemoryRegistry(store=store, clock=clock)
        for index, (gap, ran) in enumerate(plan):
            clock.advance(gap / 1000)
            sid = (await store.create_session(owner=owner, provider="echo")).session_id
            if ran and index % 2:
                await registry.start(sid, owner=owner, content="q")
                registry.publish(sid, "complete", {"reason": "done"})
        await store.create_session(owner=f"{owner}-other", provider="echo")
        whole = [s.session_id for s in await store.list_sessions(owner=owner)]
        assert len(whole) == len(plan)
        listed = await pages(store, owner, limit)
        assert list(itertools.chain.from_iterable(listed)) == whole
        assert all(len(page) == limit for page in listed[:-1])


async def test_sessions_made_in_one_millisecond_list_newest_first(
    store: Store, clock: ManualClock
) -> None:
    # The clock stands still, as it seems to for a script making sessions in a loop.
    made = [
        (await store.create_session(owner="ann", provider="echo")).session_id for _ in range(12)
    ]
    listed = await store.list_sessions(owner="ann")
    assert [s.session_id for s in listed] == made[::-1]
    assert len({s.created_at for s in listed}) == len(made)
    # Once the clock moves on, stamps follow it again.
    clock.advance(1)
    later = await store.create_session(owner="ann", provider="echo")
    assert later.created_at == to_ms(clock.now())


async def test_a_page_of_sessions_is_not_shifted_by_changes_meanwhile(
    store: Store, clock: ManualClock
) -> None:
    registry = MemoryRegistry(store=store, clock=clock)
    made = []
    for _ in range(5):
        clock.advance(1)
        made.append((await store.create_session(owner="ann", provider="echo")).session_id)
    newest_first = made[::-1]
    first = await store.list_sessions(owner="ann", limit=2)
    assert [s.session_id for s in first] == newest_first[:2]
    # Meanwhile: a new session, a deleted one past the page, activity in a listed one.
    clock.advance(1)
    await store.create_session(owner="ann", provider="echo")
    assert await store.delete_session(newest_first[3], owner="ann")
    await registry.start(newest_first[1], owner="ann", content="q")
    rest = await store.list_sessions(owner="ann", after=SessionCursor.of(first[-1]))
    assert [s.session_id for s in rest] == [newest_first[2], newest_first[4]]
    # Someone else's cursor position lists only the caller's own sessions.
    assert await store.list_sessions(owner="bob", after=SessionCursor.of(first[-1])) == []
    with pytest.raises(ValueError, match="limit"):
        await store.list_sessions(owner="ann", limit=0)


async def test_handoff_notes_are_stored_replaced_and_owner_checked(
    store: Store, clock: ManualClock
) -> None:
    record = await store.create_session(owner="ann", provider="echo")
    assert record.handoff is None
    notes = {"summary": "half done", "next_steps": ["b"], "blockers": [], "context_for_next": {}}
    clock.advance(2)
    updated = await store.set_handoff(record.session_id, owner="ann", handoff=notes)
    assert updated is not None
    assert updated.handoff == notes
    assert updated.updated_at > record.updated_at
    assert await store.set_handoff(record.session_id, owner="bob", handoff={"x": 1}) is None
    again = await store.get_session(record.session_id, owner="ann")
    assert again is not None
    assert again.handoff == notes
    newer = {**notes, "summary": "done", "context_for_next": {"branch": "main", "n": [1]}}
    await store.set_handoff(record.session_id, owner="ann", handoff=newer)
    listed = await store.list_sessions(owner="ann")
    assert [s.handoff for s in listed] == [newer]


async def test_update_title_and_status(store: Store, clock: ManualClock) -> None:
    record = await store.create_session(owner="ann", provider="echo")
    clock.advance(5)
    updated = await store.update_session(record.session_id, owner="ann", title="New")
    assert updated is not None
    assert (updated.title, updated.status) == ("New", "active")
    assert updated.updated_at == record.updated_at + 5000
    for status in ("locked", "archived", "active"):
        updated = await store.update_session(record.session_id, owner="ann", status=status)
        assert updated is not None
        assert updated.status == status
        assert updated.title == "New"
    same = await store.update_session(record.session_id, owner="ann")
    assert same == updated


@pytest.mark.parametrize("status", ["deleted", "ACTIVE", ""])
async def test_a_bad_status_is_a_clear_error(store: Store, status: str) -> None:
    record = await store.create_session(owner="ann", provider="echo")
    with pytest.raises(ValueError, match="status must be one of active, locked, archived"):
        await store.update_session(record.session_id, owner="ann", status=status)
    fetched = await store.get_session(record.session_id, owner="ann")
    assert fetched is not None
    assert fetched.status == "active"


async def test_delete_takes_runs_and_events_with_it(backend: Backend, store: Store) -> None:
    registry = MemoryRegistry(store=store)
    keep = await store.create_session(owner="ann", provider="echo")
    gone = await store.create_session(owner="ann", provider="echo")
    for record in (keep, gone):
        await registry.start(record.session_id, owner="ann", content="q")
        registry.publish(record.session_id, "text", {"text": "a"})
        registry.complete_run(record.session_id, exit_code=0)
    assert await store.delete_session(gone.session_id, owner="ann") is True
    assert await store.get_session(gone.session_id, owner="ann") is None
    assert await store.delete_session(gone.session_id, owner="ann") is False
    assert await backend.rows(
        "SELECT COUNT(*) FROM runs WHERE session_id = ?", (gone.session_id,)
    ) == [(0,)]
    assert await backend.rows(
        "SELECT DISTINCT r.session_id FROM events e JOIN runs r USING (run_id)"
    ) == [(keep.session_id,)]
    assert await backend.rows("SELECT SUM(span) FROM events") == [(3,)]
    assert await store.read_history(gone.session_id, None, None) == []


# Unread -----------------------------------------------------------------------------------


async def test_unread_keeps_the_earliest_and_mark_read_clears_it(
    backend: Backend, store: Store, clock: ManualClock
) -> None:
    registry = MemoryRegistry(store=store, clock=clock)
    record = await store.create_session(owner="ann", provider="echo")
    sid = record.session_id

    async def unread_since() -> object:
        found = await backend.rows("SELECT unread_since FROM sessions WHERE session_id = ?", (sid,))
        return found[0][0]

    # Completed while someone is subscribed: not unread.
    sub = await registry.subscribe(sid, owner="ann")
    await registry.start(sid, owner="ann", content="1")
    registry.complete_run(sid, exit_code=0)
    await store.flush()
    assert await unread_since() is None
    sub.close()
    clock.advance(1)
    first = int(clock.now() * 1000)
    await registry.start(sid, owner="ann", content="2")
    registry.complete_run(sid, exit_code=0)
    clock.advance(1)
    await registry.start(sid, owner="ann", content="3")
    registry.complete_run(sid, exit_code=0)
    fetched = await store.get_session(sid, owner="ann")
    assert fetched is not None
    assert fetched.has_unread
    assert await unread_since() == first
    assert await store.mark_read(sid, owner="ann") is True
    fetched = await store.get_session(sid, owner="ann")
    assert fetched is not None
    assert not fetched.has_unread
    assert await unread_since() is None


# Idempotent sends -------------------------------------------------------------------------


async def test_a_client_msg_id_is_found_across_a_restart(backend: Backend) -> None:
    store = await backend.open()
    registry = MemoryRegistry(store=store)
    sid = (await store.create_session(owner="ann", provider="echo")).session_id
    original = await registry.start(sid, owner="ann", content="q", client_msg_id="m-1")
    registry.complete_run(sid, exit_code=0)
    await store.close()

    store = await backend.open()
    try:
        assert await store.find_client_msg(sid, "m-1") == original.run_id
        assert await store.find_client_msg(sid, "m-2") is None
        assert await store.find_client_msg("other-session", "m-1") is None
        registry = MemoryRegistry(store=store)
        again = await registry.start(sid, owner="ann", content="q", client_msg_id="m-1")
        assert (again.run_id, again.status) == (original.run_id, "duplicate")
        fresh = await registry.start(sid, owner="ann", content="q", client_msg_id="m-2")
        assert fresh.status == "started"
        history = await store.read_history(sid, Position(original.run_id, 2), None)
        assert history is not None
        assert history[0].data == {"content": "q", "client_msg_id": "m-2"}
    finally:
        await store.close()


# Provider session ids ---------------------------------------------------------------------


async def test_the_provider_id_is_recorded_and_handed_to_the_next_run(
    backend: Backend, store: Store
) -> None:
    registry = MemoryRegistry(store=store)
    sid = (await store.create_session(owner="ann", provider="cli")).session_id
    assert await store.resume_id(sid) is None
    run1 = (await registry.start(sid, owner="ann", content="q")).run_id
    registry.publish(sid, "session_created", {"provider_session_id": "prov-A"})
    registry.complete_run(sid, exit_code=0)
    assert await store.resume_id(sid) == "prov-A"
    assert await backend.rows("SELECT provider_session_id FROM runs WHERE run_id = ?", (run1,)) == [
        ("prov-A",)
    ]
    # A null or empty id never wipes the stored one.
    run2 = (await registry.start(sid, owner="ann", content="q")).run_id
    registry.publish(sid, "session_created", {"provider_session_id": ""})
    store.provider_session(sid, run2, "")
    store.provider_session(sid, run2, None)  # type: ignore[arg-type]
    registry.complete_run(sid, exit_code=0)
    assert await store.resume_id(sid) == "prov-A"
    # A new id replaces it.
    await registry.start(sid, owner="ann", content="q")
    registry.publish(sid, "session_created", {"session_id": "prov-B"})
    registry.complete_run(sid, exit_code=1, error="boom")
    assert await store.resume_id(sid) == "prov-B"
    # The id never shows in the log.
    history = await store.read_history(sid, None, None)
    assert history is not None
    assert all("prov-" not in str(e.data) for e in history)


async def test_resume_falls_back_to_the_latest_run_that_recorded_one(
    backend: Backend, store: Store
) -> None:
    registry = MemoryRegistry(store=store)
    sid = (await store.create_session(owner="ann", provider="cli")).session_id
    for pid in ("prov-1", "prov-2", None):
        await registry.start(sid, owner="ann", content="q")
        if pid:
            registry.publish(sid, "session_created", {"provider_session_id": pid})
        registry.complete_run(sid, exit_code=1, error="failed")  # failed runs count too
    await store.flush()
    await backend.execute("UPDATE sessions SET provider_session_id = NULL")
    assert await store.resume_id(sid) == "prov-2"


# History pages, runs, turns ---------------------------------------------------------------


async def test_history_pages_walk_every_run_in_order(store: Store) -> None:
    registry = MemoryRegistry(store=store)
    sid = (await store.create_session(owner="ann", provider="echo")).session_id
    runs = []
    for n in range(3):
        runs.append((await registry.start(sid, owner="ann", content=f"q{n}")).run_id)
        registry.publish(sid, "text", {"text": f"a{n}"})
        registry.complete_run(sid, exit_code=0)
    seen = []
    after: Position | None = None
    pages = 0
    while True:
        page, after = await store.history_page(sid, after=after, limit=4)
        pages += 1
        seen.extend(page)
        if after is None:
            break
        assert len(page) == 4
        assert after == page[-1].position
    assert pages == 3  # 4 + 4 + 1, and no empty last page
    assert [(e.run_id, e.seq) for e in seen] == [(r, s) for r in runs for s in (1, 2, 3)]
    # Each run starts with its user message: history has both sides.
    assert [e.data["content"] for e in seen if e.kind == "user_message"] == ["q0", "q1", "q2"]
    assert await store.history_page(sid, after=Position(runs[-1], 3), limit=10) == ([], None)
    with pytest.raises(UnknownRun):
        await store.history_page(sid, after=Position("NOT-HERE", 0), limit=10)
    with pytest.raises(ValueError, match="limit"):
        await store.history_page(sid, after=None, limit=0)


async def test_history_pages_of_some_kinds_follow_on(store: Store) -> None:
    registry = MemoryRegistry(store=store)
    sid = (await store.create_session(owner="ann", provider="echo")).session_id
    runs = []
    for n in range(3):
        runs.append((await registry.start(sid, owner="ann", content=f"q{n}")).run_id)
        registry.publish(sid, "text_delta", {"text": "."})
        registry.publish(sid, "tool_use", {"tool_id": f"t{n}", "name": "ls", "input": {}})
        registry.publish(sid, "text", {"text": f"a{n}"})
        registry.complete_run(sid, exit_code=0)
    kinds = {"tool_use", "complete"}
    seen = []
    after: Position | None = None
    while True:
        page, after = await store.history_page(sid, after=after, limit=2, kinds=kinds)
        seen.extend(page)
        if after is None:
            break
        assert after == page[-1].position
    assert [(e.run_id, e.seq, e.kind) for e in seen] == [
        (run, seq, kind) for run in runs for seq, kind in ((3, "tool_use"), (5, "complete"))
    ]
    # A kind nothing has, and the filter's values never reach the SQL text.
    assert await store.history_page(sid, after=None, limit=5, kinds={"x') OR 1=1 --"}) == (
        [],
        None,
    )


async def test_get_run_and_latest_run(store: Store, clock: ManualClock) -> None:
    registry = MemoryRegistry(store=store, clock=clock)
    sid = (await store.create_session(owner="ann", provider="echo")).session_id
    assert await store.latest_run(sid) is None
    first = (await registry.start(sid, owner="ann", content="q")).run_id
    registry.abort(sid)
    second = (await registry.start(sid, owner="ann", content="q", provider="echo")).run_id
    registry.publish(sid, "text", {"text": "x"})
    running = await store.get_run(second)
    assert running is not None
    assert (running.status, running.last_seq, running.subscribers, running.outcome) == (
        "running",
        2,
        0,
        None,
    )
    assert await store.latest_run(sid) == running
    done = await store.get_run(first)
    assert done is not None
    expected = registry.get_run(first)
    assert expected is not None
    assert done == expected  # the store's view matches the registry's, subscribers 0
    assert done.outcome == "aborted"
    assert await store.get_run("missing") is None


async def test_turns_give_earlier_exchanges_oldest_first(store: Store) -> None:
    registry = MemoryRegistry(store=store)
    sid = (await store.create_session(owner="ann", provider="api")).session_id
    await registry.start(sid, owner="ann", content="hi")
    for chunk in ("Hel", "lo", "!"):
        registry.publish(sid, "text_delta", {"text": chunk})
    registry.complete_run(sid, exit_code=0)
    await registry.start(sid, owner="ann", content="and?")
    registry.publish(sid, "text_delta", {"text": "ignored: whole texts win"})
    registry.publish(sid, "text", {"text": "First."})
    registry.publish(sid, "tool_use", {"tool_id": "t", "name": "n", "input": {}})
    registry.publish(sid, "text", {"text": "Second."})
    registry.complete_run(sid, exit_code=0)
    await registry.start(sid, owner="ann", content="silent")
    registry.complete_run(sid, exit_code=1, error="no answer")
    # The running run's own prompt is not an earlier turn.
    await registry.start(sid, owner="ann", content="now")
    assert await store.turns(sid) == [
        Turn("user", "hi"),
        Turn("assistant", "Hello!"),
        Turn("user", "and?"),
        Turn("assistant", "First.\nSecond."),
        Turn("user", "silent"),
    ]
    assert await store.turns("no-such-session") == []


async def test_a_run_of_a_session_the_store_never_saw_is_kept(store: Store) -> None:
    # The gateway creates sessions first; a run without one still keeps its events,
    # under a session no owner can read.
    registry = MemoryRegistry(store=store)
    run_id = (await registry.start("s_unknown", owner="ann", content="q")).run_id
    registry.complete_run("s_unknown", exit_code=0)
    history = await store.read_history("s_unknown", None, None)
    assert history is not None
    assert [(e.run_id, e.kind) for e in history] == [(run_id, "user_message"), (run_id, "complete")]
    assert await store.get_session("s_unknown", owner="ann") is None
    assert store.stats.dropped == 0


async def test_a_session_change_that_cannot_be_written_is_a_clear_error(
    backend: Backend,
) -> None:
    store = await backend.open(outages=True)
    try:
        async with backend.outage():
            with pytest.raises(StoreError, match=backend.outage_words) as info:
                await store.create_session(owner="ann", provider="echo")
            assert backend.label in str(info.value)
        record = await store.create_session(owner="ann", provider="echo")
        assert await store.list_sessions(owner="ann") == [record]
    finally:
        await store.close()
