"""Replay past the buffer: read_history as documented in registry/hooks.py, and a
MemoryRegistry subscriber served from the log then the buffer, with no gap and no dup."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from registry import (
    Event,
    Lagged,
    ManualClock,
    MemoryRegistry,
    Position,
    RunSummary,
    Subscription,
    Turn,
)
from registry.store import Store

from .conftest import Backend

OWNER = "ann"


def positions(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.run_id, e.seq) for e in events]


def drain(sub: Subscription) -> list[Event]:
    out: list[Event] = []
    while batch := sub.pull():
        out.extend(batch)
    return out


def pull_until_lagged(sub: Subscription) -> tuple[list[Event], Lagged | None]:
    """What ``sub`` delivers now, a few at a time, and the ``Lagged`` that ended it, if any."""
    out: list[Event] = []
    try:
        while batch := sub.pull(4):
            out.extend(batch)
    except Lagged as lag:
        return out, lag
    return out, None


def assert_gapless(events: list[Event], runs: list[str], *, start: tuple[str, int]) -> None:
    """Runs in start order, seqs consecutive, starting right after ``start``."""
    expected_run, expected_seq = start[0], start[1] + 1
    order = runs.index(expected_run)
    for event in events:
        if event.run_id != expected_run:
            order += 1
            assert event.run_id == runs[order], "runs out of start order"
            expected_run, expected_seq = event.run_id, 1
        assert event.seq == expected_seq, f"gap or dup at {event.run_id}:{event.seq}"
        expected_seq += 1


async def session_with_runs(
    store: Store, registry: MemoryRegistry, counts: list[int]
) -> tuple[str, list[str]]:
    """A session whose runs publish ``count`` text events each and complete."""
    sid = (await store.create_session(owner=OWNER, provider="echo")).session_id
    runs = []
    for n, count in enumerate(counts):
        run_id = (await registry.start(sid, owner=OWNER, content=f"question {n}")).run_id
        runs.append(run_id)
        for i in range(count):
            registry.publish(sid, "text", {"text": f"{n}.{i}"})
        if n < len(counts) - 1:
            registry.complete_run(sid, exit_code=0)
    return sid, runs


# read_history itself ----------------------------------------------------------------------


async def test_read_history_bounds(store: Store) -> None:
    registry = MemoryRegistry(store=store)
    sid, (r1, r2, r3) = await session_with_runs(store, registry, [2, 3, 1])
    everything = await store.read_history(sid, None, None)
    assert everything is not None
    # r1: user, 2 texts, complete; r2: user, 3 texts, complete; r3: user, 1 text (running).
    assert positions(everything) == (
        [(r1, s) for s in range(1, 5)] + [(r2, s) for s in range(1, 6)] + [(r3, 1), (r3, 2)]
    )
    assert everything[0].kind == "user_message"
    assert everything[0].data == {"content": "question 0"}
    assert all(e.session_id == sid for e in everything)
    middle = await store.read_history(sid, Position(r1, 3), Position(r2, 3))
    assert middle is not None
    assert positions(middle) == [(r1, 4), (r2, 1), (r2, 2)]
    assert await store.read_history(sid, Position(r2, 2), Position(r2, 3)) == []
    tail = await store.read_history(sid, Position(r2, 5), None)
    assert tail is not None
    assert positions(tail) == [(r3, 1), (r3, 2)]
    # A `before` run the log does not have bounds nothing.
    unbounded = await store.read_history(sid, Position(r3, 1), Position("UNKNOWN", 1))
    assert unbounded is not None
    assert positions(unbounded) == [(r3, 2)]


async def test_read_history_of_a_position_that_is_not_the_sessions(store: Store) -> None:
    registry = MemoryRegistry(store=store)
    sid, _ = await session_with_runs(store, registry, [1])
    _other, (other_run,) = await session_with_runs(store, registry, [1])
    assert await store.read_history(sid, Position("NO-SUCH-RUN", 0), None) is None
    assert await store.read_history(sid, Position(other_run, 0), None) is None
    assert await store.read_history("no-such-session", None, None) == []


async def test_runs_come_in_start_order_not_id_order(store: Store) -> None:
    sid = (await store.create_session(owner=OWNER, provider="p")).session_id
    # Same millisecond, ids that sort the other way round.
    for run_id in ("01ZZZZ", "01AAAA"):
        store.run_started(
            RunSummary(run_id, sid, "p", "running", 5, None, 0, 0), client_msg_id=None
        )
        store.append(Event(sid, run_id, 1, "user_message", 5, {"content": run_id}))
    history = await store.read_history(sid, None, None)
    assert history is not None
    assert positions(history) == [("01ZZZZ", 1), ("01AAAA", 1)]
    after_first = await store.read_history(sid, Position("01ZZZZ", 1), None)
    assert after_first is not None
    assert positions(after_first) == [("01AAAA", 1)]


async def test_runs_come_in_the_start_order_they_were_given(backend: Backend, store: Store) -> None:
    # Several processes on one database number starts in one shared place, and say so.
    sid = (await store.create_session(owner=OWNER, provider="p")).session_id
    for run_id, ord_ in (("R-LATE", 20), ("R-EARLY", 10)):
        store.run_started(
            RunSummary(run_id, sid, "p", "running", 5, None, 0, 0), client_msg_id=None, ord=ord_
        )
        store.append(Event(sid, run_id, 1, "user_message", 5, {"content": run_id}))
    history = await store.read_history(sid, None, None)
    assert history is not None
    assert positions(history) == [("R-EARLY", 1), ("R-LATE", 1)]
    # The store's own numbering carries on past the highest it was given.
    store.run_started(RunSummary("R-NEXT", sid, "p", "running", 6, None, 0, 0), client_msg_id=None)
    assert await store.max_ord() == 21
    await store.flush()
    assert await backend.rows("SELECT run_id, ord FROM runs ORDER BY ord") == [
        ("R-EARLY", 10),
        ("R-LATE", 20),
        ("R-NEXT", 21),
    ]


async def test_max_ord_starts_from_what_is_stored(backend: Backend) -> None:
    store = await backend.open()
    assert await store.max_ord() == 0
    registry = MemoryRegistry(store=store)
    _sid, _runs = await session_with_runs(store, registry, [1, 1, 1])
    await store.close()
    store = await backend.open()
    try:
        assert await store.max_ord() == 3
    finally:
        await store.close()


async def test_read_history_sees_what_was_just_published(backend: Backend) -> None:
    store = await backend.open(flush_delay=3600)
    try:
        registry = MemoryRegistry(store=store)
        sid, (run_id,) = await session_with_runs(store, registry, [10])
        assert store.stats.backlog == 11
        history = await store.read_history(sid, Position(run_id, 5), None)
        assert history is not None
        assert [e.seq for e in history] == list(range(6, 12))
    finally:
        await store.close()


async def test_equal_reads_at_the_same_time_are_one_read(store: Store) -> None:
    registry = MemoryRegistry(store=store)
    sid, (r1, r2) = await session_with_runs(store, registry, [3, 2])
    reads: dict[int, list[Event] | None] = {}

    async def read(index: int, before: Position | None) -> None:
        reads[index] = await store.read_history(sid, Position(r1, 1), before)

    bounds = [Position(r2, 2)] * 3 + [Position(r2, 3)] + [None] * 2
    async with anyio.create_task_group() as tg:
        for index, before in enumerate(bounds):
            tg.start_soon(read, index, before)
    same = reads[0]
    assert same is not None
    assert positions(same) == [(r1, s) for s in range(2, 6)] + [(r2, 1)]
    # One read's events, shared; a read of another stretch is its own.
    assert reads[1] is same
    assert reads[2] is same
    other = reads[3]
    assert other is not None
    assert other is not same
    assert positions(other) == [*positions(same), (r2, 2)]
    # Reads to the end may return events published after the first began: never shared.
    assert reads[4] == reads[5]
    assert reads[4] is not reads[5]


# Through MemoryRegistry -------------------------------------------------------------------


async def test_a_position_older_than_the_buffer_is_served_from_the_log(
    store: Store,
) -> None:
    registry = MemoryRegistry(store=store, buffer_size=4)
    sid, (r1, r2) = await session_with_runs(store, registry, [10, 2])
    sub = await registry.subscribe(sid, owner=OWNER, run_id=r1, after_seq=2)
    assert sub.info is not None
    assert sub.info.recovered is True
    assert sub.info.first_available is None
    got = drain(sub)
    assert sub.info.replayed == len(got)
    assert_gapless(got, [r1, r2], start=(r1, 2))
    assert got[-1].position == Position(r2, 3)
    # ...then live, from the buffer.
    registry.publish(sid, "text", {"text": "live"})
    # Delivered once it is on disk, never before.
    assert drain(sub) == []
    await store.flush()
    assert positions(drain(sub)) == [(r2, 4)]


async def test_frames_replayed_from_the_log_are_the_frames_first_sent(store: Store) -> None:
    registry = MemoryRegistry(store=store, buffer_size=4)
    sid = (await store.create_session(owner=OWNER, provider="echo")).session_id
    run_id = (await registry.start(sid, owner=OWNER, content="q")).run_id
    data: list[dict[str, Any]] = [
        {"text": 'é " \\ \u0001', "n": 1.5e300, "big": 2**70},
        {"list": [None, True]},
    ]
    sent = [registry.publish(sid, "tool_result", d) for d in data * 3]
    first = {(e.run_id, e.seq): e.frame() for e in sent if e is not None}
    await store.flush()
    sub = await registry.subscribe(sid, owner=OWNER, run_id=run_id, after_seq=1)
    replayed = {(e.run_id, e.seq): e.frame() for e in drain(sub)}
    assert replayed == first


async def test_stored_data_too_deep_to_decode_is_read_as_a_stand_in(store: Store) -> None:
    """Data encoded nearer the top of the stack than a reader runs can nest past what the
    reader's decoder takes there. Such an event is read as a stand-in that keeps its seq,
    and the events around it come whole: a replay goes on."""
    registry = MemoryRegistry(store=store)
    sid = (await store.create_session(owner=OWNER, provider="echo")).session_id
    run_id = (await registry.start(sid, owner=OWNER, content="q")).run_id
    registry.publish(sid, "text", {"text": "before"})
    # Past any recursion limit here, so that the test does not hang on stack depths.
    deep = '{"k":' * 100_000 + "{}" + "}" * 100_000
    store.append(Event(sid, run_id, 3, "text", 0, {}, None, deep))
    await store.flush()
    stand_in = {"unencodable": "nested too deeply to read"}
    history = await store.read_history(sid, Position(run_id, 0), None)
    assert history is not None
    assert [(e.seq, e.data) for e in history[1:]] == [(2, {"text": "before"}), (3, stand_in)]
    assert json.loads(history[2].frame())["data"] == stand_in
    page, _ = await store.history_page(sid, after=None, limit=10)
    assert [e.data for e in page] == [e.data for e in history]
    digest = await store.digest(sid)
    assert [e.data for e in digest.actions] == [stand_in, {"text": "before"}]
    # Once the run is over, its turns are read from the log too.
    store.run_completed(
        RunSummary(run_id, sid, "echo", "completed", 0, 1, 3, 0, "done"), unread=False
    )
    await store.flush()
    assert await store.turns(sid) == [Turn("user", "q"), Turn("assistant", "before")]


async def test_a_later_run_longer_than_the_buffer_is_also_served_from_the_log(
    store: Store,
) -> None:
    registry = MemoryRegistry(store=store, buffer_size=4)
    sid, (r1, r2) = await session_with_runs(store, registry, [10, 10])
    sub = await registry.subscribe(sid, owner=OWNER, run_id=r1, after_seq=2)
    got = drain(sub)
    assert_gapless(got, [r1, r2], start=(r1, 2))
    assert got[-1].position == Position(r2, 11)


async def test_an_evicted_run_is_served_from_the_log_then_the_next_run_live(
    store: Store, clock: ManualClock
) -> None:
    registry = MemoryRegistry(store=store, clock=clock, run_ttl=60, buffer_size=8)
    sid, (r1, r2) = await session_with_runs(store, registry, [20, 3])
    await store.flush()
    clock.advance(61)
    assert registry.sweep() == 1
    assert registry.get_run(r1) is None
    for after_seq in (0, 5, 22):
        sub = await registry.subscribe(sid, owner=OWNER, run_id=r1, after_seq=after_seq)
        assert sub.info is not None
        assert sub.info.recovered
        got = drain(sub)
        assert_gapless(got, [r1, r2], start=(r1, after_seq))
        assert got[-1].position == Position(r2, 4)
        sub.close()


async def test_a_long_replay_comes_in_pages_each_ended_by_lagged(
    store: Store, clock: ManualClock
) -> None:
    """A replay holds at most ``replay_page`` events: the subscription ends after a page
    with ``lagged`` at its last event, and subscribing again from there reads the next,
    until memory continues the last one. Together: every event once, in order, then live."""
    registry = MemoryRegistry(store=store, clock=clock, run_ttl=60, buffer_size=4, replay_page=6)
    sid, runs = await session_with_runs(store, registry, [20, 7, 3])
    registry.complete_run(sid, exit_code=0)
    await store.flush()
    clock.advance(61)
    assert registry.sweep() == 3
    page = await store.read_history(sid, Position(runs[0], 0), None, 6)
    assert page is not None
    assert positions(page) == [(runs[0], seq) for seq in range(1, 7)]
    got: list[Event] = []
    pages: list[int] = []
    position: tuple[str, int] = (runs[0], 0)
    while True:
        sub = await registry.subscribe(sid, owner=OWNER, run_id=position[0], after_seq=position[1])
        assert sub.info is not None
        assert sub.info.recovered
        delivered, lag = pull_until_lagged(sub)
        pages.append(len(delivered))
        assert sub.info.replayed == len(delivered)
        got += delivered
        if lag is None:
            break
        assert (lag.run_id, lag.last_seq) == delivered[-1].position
        assert sub.closed
        position = delivered[-1].position
    assert_gapless(got, runs, start=(runs[0], 0))
    assert len(got) == 22 + 9 + 5
    # Six full pages, the sixth the log's last: it ends without lagged, and goes on live.
    assert pages == [6, 6, 6, 6, 6, 6]
    # The last subscription goes on live.
    run4 = (await registry.start(sid, owner=OWNER, content="again")).run_id
    await store.flush()
    assert positions(drain(sub)) == [(run4, 1)]


async def test_eviction_waits_for_the_disk(
    backend: Backend, clock: ManualClock, store_log: object
) -> None:
    store = await backend.open(clock=clock, outages=True)
    try:
        registry = MemoryRegistry(store=store, clock=clock, run_ttl=0)
        sid = (await store.create_session(owner=OWNER, provider="p")).session_id
        await store.flush()
        retried = store_log("retrying")  # type: ignore[operator]
        async with backend.outage():
            run_id = (await registry.start(sid, owner=OWNER, content="q")).run_id
            registry.complete_run(sid, exit_code=0)
            await retried.seen.wait()
            clock.advance(1)
            # Completed and past its TTL, but not on disk: the buffer must keep it.
            assert registry.sweep() == 0
            assert registry.get_run(run_id) is not None
        await store.flush()
        assert registry.sweep() == 1
        history = await store.read_history(sid, None, None)
        assert history is not None
        assert [e.kind for e in history] == ["user_message", "complete"]
    finally:
        await store.close()


async def test_a_subscriber_from_an_earlier_process(backend: Backend) -> None:
    store = await backend.open()
    registry = MemoryRegistry(store=store, buffer_size=4)
    sid, (r1, r2) = await session_with_runs(store, registry, [6, 6])
    registry.complete_run(sid, exit_code=0)
    await store.close()

    store = await backend.open()
    try:
        registry = MemoryRegistry(store=store, buffer_size=4)
        # The run the client last saw, and where.
        sub = await registry.subscribe(sid, owner=OWNER, run_id=r1, after_seq=3)
        assert sub.info is not None
        assert sub.info.recovered
        assert sub.info.first_available is None
        got = drain(sub)
        assert_gapless(got, [r1, r2], start=(r1, 3))
        assert got[-1].position == Position(r2, 8)
        # No run given: the session's latest run, from after_seq.
        latest = await registry.subscribe(sid, owner=OWNER, after_seq=5)
        assert positions(drain(latest)) == [(r2, 6), (r2, 7), (r2, 8)]
        # A new run in this process follows on, live, without a gap.
        r3 = (await registry.start(sid, owner=OWNER, content="again")).run_id
        registry.publish(sid, "text", {"text": "x"})
        await store.flush()
        more = drain(sub)
        assert positions(more) == [(r3, 1), (r3, 2)]
        assert positions(drain(latest)) == [(r3, 1), (r3, 2)]
        with pytest.raises(Exception, match="not a run of session"):
            await registry.subscribe(sid, owner=OWNER, run_id="NOT-A-RUN", after_seq=0)
    finally:
        await store.close()


async def test_a_subscriber_of_a_session_only_the_log_knows_gets_it_all(
    backend: Backend,
) -> None:
    store = await backend.open()
    registry = MemoryRegistry(store=store)
    sid, (_r1,) = await session_with_runs(store, registry, [3])
    registry.complete_run(sid, exit_code=0)
    await store.close()
    store = await backend.open()
    try:
        registry = MemoryRegistry(store=store)
        sub = await registry.subscribe(sid, owner=OWNER)
        assert [e.kind for e in drain(sub)] == ["user_message", "text", "text", "text", "complete"]
        assert sub.info is not None
        assert sub.info.recovered
    finally:
        await store.close()
