"""Slow subscribers: publishing never waits for them; they end with Lagged, others go on."""

from __future__ import annotations

import inspect

import pytest

from registry import Event, Lagged, ManualClock, MemoryRegistry, Subscription

from .fakes import FakeStore, drain, positions, publish_texts, run_once


def pull_until_lagged(sub: Subscription, limit: int) -> tuple[list[Event], Lagged]:
    got: list[Event] = []
    while True:
        try:
            batch = sub.pull(limit)
        except Lagged as lag:
            return got, lag
        assert batch, "a lagging subscription never runs dry before Lagged"
        got += batch


async def test_publish_is_synchronous_and_memory_is_capped(reg: MemoryRegistry) -> None:
    assert not inspect.iscoroutinefunction(reg.publish)
    result = await reg.start("s1", owner="alice", content="hi")
    stuck = [await reg.subscribe("s1", owner="alice") for _ in range(3)]
    publish_texts(reg, "s1", 10 * reg.buffer_size)
    run = reg._runs[result.run_id]
    assert len(run.buffer) == reg.buffer_size
    assert run.last_seq == 10 * reg.buffer_size + 1
    assert all(not sub.closed for sub in stuck), "nothing happens to them until they read"


async def test_falling_behind_ends_with_lagged_at_the_last_delivered(reg: MemoryRegistry) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    slow = await reg.subscribe("s1", owner="alice")
    fast = await reg.subscribe("s1", owner="alice")
    publish_texts(reg, "s1", 2)
    assert [e.seq for e in slow.pull()] == [1, 2, 3]
    fast_seen = drain(fast)
    for _ in range(reg.buffer_size + 1):
        publish_texts(reg, "s1", 1)
        fast_seen += drain(fast)
    assert slow.ready()
    with pytest.raises(Lagged) as info:
        slow.pull()
    assert (info.value.session_id, info.value.run_id, info.value.last_seq) == (
        "s1",
        result.run_id,
        3,
    )
    assert slow.closed
    assert slow.pull() == []
    assert reg.subscriber_count() == 1
    # The subscriber that kept up got everything.
    assert [e.seq for e in fast_seen] == list(range(1, reg.buffer_size + 5))


async def test_lagged_reports_the_events_it_did_deliver(reg: MemoryRegistry) -> None:
    """Events still deliverable are delivered first, and Lagged names the last of them."""
    first = await reg.start("s1", owner="alice", content="one")
    sub = await reg.subscribe("s1", owner="alice")
    publish_texts(reg, "s1", 2)
    reg.publish("s1", "complete", {})
    await reg.start("s1", owner="alice", content="two")
    publish_texts(reg, "s1", reg.buffer_size + 1)  # overruns the second run's buffer
    delivered = sub.pull()
    assert positions(delivered) == [(first.run_id, s) for s in (1, 2, 3, 4)]
    with pytest.raises(Lagged) as info:
        sub.pull()
    assert (info.value.run_id, info.value.last_seq) == (first.run_id, 4)


async def test_lagged_mid_batch_with_a_limit(reg: MemoryRegistry) -> None:
    first = await reg.start("s1", owner="alice", content="one")
    sub = await reg.subscribe("s1", owner="alice")
    publish_texts(reg, "s1", 3)
    reg.publish("s1", "complete", {})
    await reg.start("s1", owner="alice", content="two")
    publish_texts(reg, "s1", reg.buffer_size + 1)
    assert [e.seq for e in sub.pull(2)] == [1, 2]
    assert [e.seq for e in sub.pull(10)] == [3, 4, 5]
    with pytest.raises(Lagged) as info:
        sub.pull(10)
    assert (info.value.run_id, info.value.last_seq) == (first.run_id, 5)


async def test_next_batch_raises_lagged_then_closed(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice", after_seq=1)
    publish_texts(reg, "s1", reg.buffer_size + 1)
    with pytest.raises(Lagged):
        await sub.next_batch()


async def test_resubscribing_from_lagged_loses_nothing(
    sreg: MemoryRegistry, store: FakeStore
) -> None:
    first = await sreg.start("s1", owner="alice", content="one")
    slow = await sreg.subscribe("s1", owner="alice")
    got = slow.pull(2)
    publish_texts(sreg, "s1", 3)
    sreg.publish("s1", "complete", {})
    await sreg.start("s1", owner="alice", content="two")
    publish_texts(sreg, "s1", sreg.buffer_size + 3)
    more, lag = pull_until_lagged(slow, 3)
    got += more
    assert (lag.run_id, lag.last_seq) == positions(got)[-1]
    assert lag.run_id == first.run_id
    again = await sreg.subscribe("s1", owner="alice", run_id=lag.run_id, after_seq=lag.last_seq)
    assert again.info is not None
    assert again.info.recovered is True
    got += drain(again)
    assert positions(got) == positions(store.events)
    assert len(got) == 5 + sreg.buffer_size + 4


async def test_resubscribing_where_a_later_run_overflowed_without_a_store(
    reg: MemoryRegistry,
) -> None:
    """Memory holds the rest of the named run but not the start of the next: not recovered,
    and delivery starts where memory does (no endless lag and resubscribe)."""
    first = await run_once(reg, "s1", 1)
    second = await reg.start("s1", owner="alice", content="two")
    publish_texts(reg, "s1", reg.buffer_size + 2)
    sub = await reg.subscribe("s1", owner="alice", run_id=first, after_seq=1)
    assert sub.info is not None
    assert sub.info.recovered is False
    first_seq = reg.get_run(second.run_id).last_seq - reg.buffer_size + 1  # type: ignore[union-attr]
    assert sub.info.first_available == (second.run_id, first_seq)
    events = drain(sub)
    assert positions(events)[0] == (second.run_id, first_seq)
    assert len(events) == reg.buffer_size


async def test_other_sessions_are_unaffected(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="hi")
    await reg.start("s2", owner="alice", content="hi")
    slow = await reg.subscribe("s1", owner="alice")
    other = await reg.subscribe("s2", owner="alice")
    publish_texts(reg, "s1", reg.buffer_size + 1)
    publish_texts(reg, "s2", 2)
    with pytest.raises(Lagged):
        slow.pull()
    assert [e.seq for e in drain(other)] == [1, 2, 3]


async def test_a_run_evicted_before_it_was_read_is_reported(
    reg: MemoryRegistry, clock: ManualClock
) -> None:
    """A subscriber waiting for a session's next run, too slow to read it before eviction,
    hears so at once rather than when some later run starts."""
    sub = await reg.subscribe("s1", owner="alice")
    await run_once(reg, "s1", 1)
    clock.advance(reg.run_ttl)
    assert reg.sweep() == 1
    assert sub.ready()
    with pytest.raises(Lagged) as info:
        sub.pull()
    assert (info.value.run_id, info.value.last_seq) == (None, 0)
