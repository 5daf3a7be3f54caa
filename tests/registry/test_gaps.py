"""Positions older than memory: reported without a store, filled from it with one."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from registry import (
    Event,
    Lagged,
    ManualClock,
    MemoryRegistry,
    Position,
    Subscription,
    UnknownRun,
)

from .fakes import FakeStore, drain, positions, publish_texts, run_once


def after(log: list[Event], session_id: str, run_id: str, seq: int) -> list[tuple[str, int]]:
    """Positions of the session's log strictly after ``(run_id, seq)``."""
    events = [e for e in log if e.session_id == session_id]
    runs = list(dict.fromkeys(e.run_id for e in events))
    key = (runs.index(run_id), seq)
    return [(e.run_id, e.seq) for e in events if (runs.index(e.run_id), e.seq) > key]


# Without a store --------------------------------------------------------------------------


async def test_overrun_position_without_store_is_not_recovered(reg: MemoryRegistry) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    publish_texts(reg, "s1", reg.buffer_size + 2)  # seqs 1..11, memory holds 4..11
    sub = await reg.subscribe("s1", owner="alice", after_seq=1)
    assert sub.info is not None
    assert sub.info.recovered is False
    assert sub.info.first_available == Position(result.run_id, 4)
    assert sub.info.replayed == reg.buffer_size
    events = drain(sub)
    assert positions(events) == [(result.run_id, s) for s in range(4, 12)]


async def test_evicted_run_without_store_starts_at_the_oldest_in_memory(
    reg: MemoryRegistry, clock: ManualClock
) -> None:
    old = await run_once(reg, "s1", 1)
    clock.advance(reg.run_ttl)
    reg.sweep()
    newer = await reg.start("s1", owner="alice", content="two")
    sub = await reg.subscribe("s1", owner="alice", run_id=old, after_seq=1)
    assert sub.info is not None
    assert sub.info.recovered is False
    assert sub.info.first_available == Position(newer.run_id, 1)
    assert positions(drain(sub)) == [(newer.run_id, 1)]


async def test_nothing_in_memory_without_store(reg: MemoryRegistry, clock: ManualClock) -> None:
    old = await run_once(reg, "s1", 1)
    clock.advance(reg.run_ttl)
    reg.sweep()
    sub = await reg.subscribe("s1", owner="alice", run_id=old, after_seq=1)
    assert sub.info is not None
    assert (sub.info.recovered, sub.info.first_available, sub.info.run) == (False, None, None)
    newer = await reg.start("s1", owner="alice", content="two")
    assert positions(drain(sub)) == [(newer.run_id, 1)]


# With a store ---------------------------------------------------------------------------


@pytest.mark.parametrize("by_id", [False, True])
@pytest.mark.parametrize("after_seq", [0, 1, 2])
async def test_overrun_position_is_filled_from_the_store(
    sreg: MemoryRegistry, store: FakeStore, by_id: bool, after_seq: int
) -> None:
    result = await sreg.start("s1", owner="alice", content="hi")
    publish_texts(sreg, "s1", sreg.buffer_size + 2)  # memory holds 4..11
    assert sreg.get_run(result.run_id).last_seq == 11  # type: ignore[union-attr]
    run_id = result.run_id if by_id else None
    sub = await sreg.subscribe("s1", owner="alice", run_id=run_id, after_seq=after_seq)
    assert sub.info is not None
    assert sub.info.recovered is True
    assert sub.info.first_available is None
    # The cursor starts halfway into the full buffer, not at its oldest event, so the
    # next few publishes do not overrun it; the store supplies everything before it.
    assert store.history_calls == [
        ("s1", Position(result.run_id, after_seq), Position(result.run_id, 8))
    ]
    expected = after(store.events, "s1", result.run_id, after_seq)
    assert sub.info.replayed == len(expected)
    publish_texts(sreg, "s1", 2)
    expected += [(result.run_id, 12), (result.run_id, 13)]
    assert positions(drain(sub)) == expected


@pytest.mark.parametrize("by_id", [False, True])
async def test_a_completed_runs_full_buffer_is_replayed_from_its_oldest_event(
    sreg: MemoryRegistry, store: FakeStore, by_id: bool
) -> None:
    run_id = await run_once(sreg, "s1", sreg.buffer_size + 4)  # memory holds its last events
    run = sreg.get_run(run_id)
    assert run is not None
    assert run.status == "completed"
    first_kept = run.last_seq - sreg.buffer_size + 1
    sub = await sreg.subscribe("s1", owner="alice", run_id=run_id if by_id else None, after_seq=1)
    assert sub.info is not None
    assert sub.info.recovered is True
    # The store supplies only what the buffer no longer holds.
    assert store.history_calls == [("s1", Position(run_id, 1), Position(run_id, first_kept))]
    assert positions(drain(sub)) == after(store.events, "s1", run_id, 1)


async def test_evicted_runs_then_memory(
    sreg: MemoryRegistry, store: FakeStore, clock: ManualClock
) -> None:
    old = await run_once(sreg, "s1", 3)
    await run_once(sreg, "s1", 1)
    clock.advance(sreg.run_ttl)
    assert sreg.sweep() == 2
    middle = await run_once(sreg, "s1", sreg.buffer_size + 3)  # overflowed, in memory
    latest = await sreg.start("s1", owner="alice", content="now")
    publish_texts(sreg, "s1", 2)
    sub = await sreg.subscribe("s1", owner="alice", run_id=old, after_seq=2)
    assert sub.info is not None
    assert sub.info.recovered is True
    # Memory is whole only from the middle run's oldest buffered event on; that run is
    # completed, so its buffer stays as it is and the cursor starts at its oldest event.
    first_kept = sreg.get_run(middle).last_seq - sreg.buffer_size + 1  # type: ignore[union-attr]
    assert store.history_calls == [("s1", Position(old, 2), Position(middle, first_kept))]
    assert positions(drain(sub)) == after(store.events, "s1", old, 2)
    publish_texts(sreg, "s1", 1)
    assert positions(drain(sub)) == [(latest.run_id, 4)]


async def test_everything_evicted_reads_the_latest_run_from_the_store(
    sreg: MemoryRegistry, store: FakeStore, clock: ManualClock
) -> None:
    await run_once(sreg, "s1", 2)
    last = await run_once(sreg, "s1", 3)
    clock.advance(sreg.run_ttl)
    assert sreg.sweep() == 2
    sub = await sreg.subscribe("s1", owner="alice", after_seq=2)
    assert sub.info is not None
    assert (sub.info.recovered, sub.info.run) == (True, None)
    assert store.history_calls == [("s1", Position(last, 2), None)]
    assert positions(drain(sub)) == [(last, s) for s in (3, 4, 5)]
    newer = await sreg.start("s1", owner="alice", content="again")
    assert positions(drain(sub)) == [(newer.run_id, 1)]


async def test_a_store_without_runs_is_an_empty_replay(sreg: MemoryRegistry) -> None:
    sub = await sreg.subscribe("s1", owner="alice")
    assert sub.info is not None
    assert (sub.info.recovered, sub.info.replayed, sub.info.first_available) == (True, 0, None)
    result = await sreg.start("s1", owner="alice", content="hi")
    assert positions(drain(sub)) == [(result.run_id, 1)]


async def test_latest_run_comes_from_memory_when_the_store_lags(
    sreg: MemoryRegistry, store: FakeStore
) -> None:
    await run_once(sreg, "s1", 2)
    latest = await sreg.start("s1", owner="alice", content="now")
    publish_texts(sreg, "s1", sreg.buffer_size + 2)
    store.stale_latest = True  # its newest run is not written yet
    sub = await sreg.subscribe("s1", owner="alice", after_seq=1)
    assert positions(drain(sub)) == [(latest.run_id, s) for s in range(2, 12)]


async def test_unknown_position_in_the_store(sreg: MemoryRegistry) -> None:
    await sreg.start("s1", owner="alice", content="hi")
    with pytest.raises(UnknownRun):
        await sreg.subscribe("s1", owner="alice", run_id="01NOTARUN", after_seq=0)
    assert sreg.subscriber_count() == 0


async def test_a_failing_store_read_leaves_no_subscription(
    sreg: MemoryRegistry, store: FakeStore
) -> None:
    async def broken(*args: object) -> list[Event] | None:
        raise OSError("disk gone")

    store.read_history = broken  # type: ignore[method-assign,assignment]
    await sreg.start("s1", owner="alice", content="hi")
    publish_texts(sreg, "s1", sreg.buffer_size + 1)
    with pytest.raises(OSError, match="disk gone"):
        await sreg.subscribe("s1", owner="alice")
    assert sreg.subscriber_count() == 0


# Events published while the store is read ------------------------------------------------


async def subscribe_while(
    reg: MemoryRegistry,
    store: FakeStore,
    run_id: str | None,
    after_seq: int,
    during: Callable[[], None],
) -> Subscription:
    """Subscribe, and run ``during()`` while the store's read_history is in progress."""
    store.gate = anyio.Event()
    store.reading = anyio.Event()
    out: list[Subscription] = []

    async def subscribe() -> None:
        out.append(await reg.subscribe("s1", owner="alice", run_id=run_id, after_seq=after_seq))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(subscribe)
            await store.reading.wait()
            during()
            store.gate.set()
    return out[0]


@pytest.mark.parametrize("snapshot", [True, False], ids=["read-before", "read-after"])
async def test_publishing_during_the_store_read(
    sreg: MemoryRegistry, store: FakeStore, snapshot: bool
) -> None:
    store.snapshot = snapshot
    first = await sreg.start("s1", owner="alice", content="one")
    publish_texts(sreg, "s1", sreg.buffer_size + 2)  # memory holds 4..11
    late: list[Event | None] = []

    def during() -> None:
        publish_texts(sreg, "s1", 2)
        sreg.publish("s1", "complete", {})
        late.append(sreg.publish("s1", "text", {}))

    sub = await subscribe_while(sreg, store, first.run_id, 2, during)
    assert late == [None]
    second = await sreg.start("s1", owner="alice", content="two")
    publish_texts(sreg, "s1", 1)
    got = positions(drain(sub))
    assert got == after(store.events, "s1", first.run_id, 2)
    assert got[-2:] == [(second.run_id, 1), (second.run_id, 2)]
    assert len(got) == len(set(got))


@pytest.mark.parametrize("snapshot", [True, False], ids=["read-before", "read-after"])
async def test_a_run_starting_during_the_store_read(
    sreg: MemoryRegistry, store: FakeStore, clock: ManualClock, snapshot: bool
) -> None:
    store.snapshot = snapshot
    old = await run_once(sreg, "s1", 2)
    clock.advance(sreg.run_ttl)
    sreg.sweep()

    def during() -> None:
        # start() only awaits the store for client_msg_id; drive its coroutine by hand.
        coro = sreg.start("s1", owner="alice", content="two")
        with pytest.raises(StopIteration):
            coro.send(None)
        publish_texts(sreg, "s1", 2)

    sub = await subscribe_while(sreg, store, old, 1, during)
    got = positions(drain(sub))
    assert got == after(store.events, "s1", old, 1)
    assert [seq for _, seq in got] == [2, 3, 4, 1, 2, 3]


async def test_overrun_during_the_store_read_lags_at_the_last_given(
    sreg: MemoryRegistry, store: FakeStore
) -> None:
    first = await sreg.start("s1", owner="alice", content="one")
    publish_texts(sreg, "s1", sreg.buffer_size + 2)  # memory holds 4..11

    def during() -> None:
        publish_texts(sreg, "s1", sreg.buffer_size)  # the cursor (at 8) is overrun

    sub = await subscribe_while(sreg, store, first.run_id, 0, during)
    got = sub.pull()
    assert [e.seq for e in got] == list(range(1, 8))
    with pytest.raises(Lagged) as info:
        sub.pull()
    assert (info.value.run_id, info.value.last_seq) == (first.run_id, 7)
    again = await sreg.subscribe("s1", owner="alice", run_id=first.run_id, after_seq=7)
    assert positions(got + drain(again)) == positions(store.events)


# A log with a hole ------------------------------------------------------------------------


@pytest.mark.parametrize("lost", ["middle", "tail"])
async def test_a_hole_in_the_log_is_reported_not_skipped_over(
    sreg: MemoryRegistry, store: FakeStore, clock: ManualClock, lost: str
) -> None:
    """Events lost before they were written (their engine lost them) exist nowhere: the
    subscription says so (recovered false) and starts right after the hole."""
    old = await run_once(sreg, "s1", 6)  # seqs 1..8, the complete last
    clock.advance(sreg.run_ttl)
    sreg.sweep()  # evicted: only the log has it
    new = (await sreg.start("s1", owner="alice", content="again")).run_id
    if lost == "middle":
        store.events = [e for e in store.events if (e.run_id, e.seq) != (old, 4)]
        resume = Position(old, 5)
    else:
        store.events = [e for e in store.events if not (e.run_id == old and e.seq >= 7)]
        resume = Position(new, 1)
    sub = await sreg.subscribe("s1", owner="alice", run_id=old, after_seq=1)
    assert sub.info is not None
    assert sub.info.recovered is False
    assert sub.info.first_available == resume
    got = positions(drain(sub))
    assert got[0] == tuple(resume)
    assert got[-1] == (new, 1)
    # From past the hole, nothing is missing.
    past = await sreg.subscribe(
        "s1", owner="alice", run_id=old, after_seq=5 if lost == "middle" else 8
    )
    assert past.info is not None
    assert past.info.recovered is True
