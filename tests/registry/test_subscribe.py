"""Subscribing from a position: replay then live, across runs, with no gap or duplicate."""

from __future__ import annotations

import anyio
import pytest

from registry import (
    Event,
    ManualClock,
    MemoryRegistry,
    SubscriptionClosed,
    UnknownRun,
)

from .fakes import drain, kinds, positions, publish_texts, run_once


def after(log: list[Event], run_id: str, seq: int) -> list[tuple[str, int]]:
    """Positions in ``log`` strictly after ``(run_id, seq)``; ``log`` is in session order."""
    runs = list(dict.fromkeys(e.run_id for e in log))
    key = (runs.index(run_id), seq)
    return [(e.run_id, e.seq) for e in log if (runs.index(e.run_id), e.seq) > key]


async def test_replay_then_live(reg: MemoryRegistry) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    publish_texts(reg, "s1", 2)
    sub = await reg.subscribe("s1", owner="alice")
    assert sub.info is not None
    assert sub.info.replayed == 3
    assert sub.info.recovered is True
    assert sub.info.first_available is None
    assert sub.info.is_processing is True
    assert sub.info.run == reg.get_run(result.run_id)
    assert [e.seq for e in drain(sub)] == [1, 2, 3]
    assert drain(sub) == []
    publish_texts(reg, "s1", 2)
    assert [e.seq for e in drain(sub)] == [4, 5]
    assert sub.position == (result.run_id, 5)


async def test_events_published_before_reading_are_not_lost(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="hi")
    publish_texts(reg, "s1", 3)
    sub = await reg.subscribe("s1", owner="alice", after_seq=2)
    publish_texts(reg, "s1", 2)
    assert [e.seq for e in drain(sub)] == [3, 4, 5, 6]


async def test_pull_with_a_limit(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="hi")
    publish_texts(reg, "s1", 4)
    sub = await reg.subscribe("s1", owner="alice")
    assert [e.seq for e in sub.pull(2)] == [1, 2]
    assert sub.pending() == 3
    assert [e.seq for e in sub.pull(2)] == [3, 4]
    assert [e.seq for e in sub.pull(2)] == [5]
    assert sub.pull(2) == []


async def test_many_subscribers_each_get_everything(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="hi")
    subs = [await reg.subscribe("s1", owner="alice") for _ in range(5)]
    publish_texts(reg, "s1", 3)
    reg.publish("s1", "complete", {})
    expected = positions(drain(subs[0]))
    assert len(expected) == 5
    assert all(positions(drain(sub)) == expected for sub in subs[1:])
    summary = reg.list_runs(status="all")[0]
    assert summary.subscribers == 5


async def test_subscription_follows_the_session_into_next_runs(reg: MemoryRegistry) -> None:
    first = await reg.start("s1", owner="alice", content="one")
    sub = await reg.subscribe("s1", owner="alice")
    reg.publish("s1", "complete", {})
    second = await reg.start("s1", owner="alice", content="two")
    publish_texts(reg, "s1", 1)
    reg.publish("s1", "complete", {})
    third = await reg.start("s1", owner="alice", content="three")
    assert positions(drain(sub)) == [
        (first.run_id, 1),
        (first.run_id, 2),
        (second.run_id, 1),
        (second.run_id, 2),
        (second.run_id, 3),
        (third.run_id, 1),
    ]


async def test_subscription_follows_after_its_run_was_evicted(
    reg: MemoryRegistry, clock: ManualClock
) -> None:
    """A tab left open past the TTL still sees the next run (sent from another tab)."""
    first = await run_once(reg, "s1", 1)
    sub = await reg.subscribe("s1", owner="alice")
    assert len(drain(sub)) == 3
    clock.advance(reg.run_ttl + 1)
    assert reg.sweep() == 1
    assert reg.get_run(first) is None
    second = await reg.start("s1", owner="alice", content="two")
    publish_texts(reg, "s1", 1)
    assert positions(drain(sub)) == [(second.run_id, 1), (second.run_id, 2)]


async def test_subscribing_before_any_run_waits_for_the_first(reg: MemoryRegistry) -> None:
    sub = await reg.subscribe("s1", owner="alice")
    assert sub.info is not None
    assert (sub.info.run, sub.info.is_processing, sub.info.replayed) == (None, False, 0)
    assert not sub.ready()
    assert drain(sub) == []
    result = await reg.start("s1", owner="alice", content="hi")
    assert sub.ready()
    assert positions(drain(sub)) == [(result.run_id, 1)]


async def test_no_run_id_means_the_latest_run(reg: MemoryRegistry) -> None:
    await run_once(reg, "s1", 2)
    latest = await reg.start("s1", owner="alice", content="two")
    publish_texts(reg, "s1", 3)
    sub = await reg.subscribe("s1", owner="alice", after_seq=2)
    assert positions(drain(sub)) == [(latest.run_id, 3), (latest.run_id, 4)]
    assert sub.info is not None
    assert sub.info.replayed == 2


async def test_after_seq_past_the_end_waits_for_the_next_event(reg: MemoryRegistry) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice", run_id=result.run_id, after_seq=50)
    assert drain(sub) == []
    publish_texts(reg, "s1", 1)
    assert positions(drain(sub)) == [(result.run_id, 2)]


async def test_latest_run_id_delivers_after_seq(reg: MemoryRegistry) -> None:
    await run_once(reg, "s1", 2)
    latest = await reg.start("s1", owner="alice", content="two")
    publish_texts(reg, "s1", 3)
    sub = await reg.subscribe("s1", owner="alice", run_id=latest.run_id, after_seq=3)
    assert positions(drain(sub)) == [(latest.run_id, 4)]


@pytest.mark.parametrize("after_seq", [0, 1, 3, 4])
async def test_older_run_id_delivers_its_rest_then_later_runs(
    reg: MemoryRegistry, after_seq: int
) -> None:
    sub_all = await reg.subscribe("s1", owner="alice")
    old = await run_once(reg, "s1", 2)
    await run_once(reg, "s1", 1)
    await reg.start("s1", owner="alice", content="three")
    publish_texts(reg, "s1", 1)
    log = drain(sub_all)
    sub = await reg.subscribe("s1", owner="alice", run_id=old, after_seq=after_seq)
    assert sub.info is not None
    assert sub.info.recovered is True
    expected = after(log, old, after_seq)
    assert sub.info.replayed == len(expected)
    assert positions(drain(sub)) == expected
    publish_texts(reg, "s1", 1)
    assert [e.seq for e in drain(sub)] == [3]


async def test_run_of_another_session_is_refused(reg: MemoryRegistry) -> None:
    other = await reg.start("s2", owner="alice", content="hi")
    with pytest.raises(UnknownRun) as info:
        await reg.subscribe("s1", owner="alice", run_id=other.run_id)
    assert info.value.code == "INVALID_FIELD"
    assert "run_id" in str(info.value)
    assert reg.subscriber_count() == 0


async def test_negative_after_seq_is_refused(reg: MemoryRegistry) -> None:
    with pytest.raises(ValueError, match="after_seq"):
        await reg.subscribe("s1", owner="alice", after_seq=-1)


async def test_unsubscribe(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice")
    keep = await reg.subscribe("s1", owner="alice")
    assert reg.subscriber_count() == 2
    sub.close()
    sub.close()
    assert sub.closed
    assert reg.subscriber_count() == 1
    publish_texts(reg, "s1", 1)
    assert sub.pull() == []
    assert not sub.arm(lambda: None)
    with pytest.raises(SubscriptionClosed):
        await sub.next_batch()
    assert len(drain(keep)) == 2


async def test_next_batch_waits_for_a_publish(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice", after_seq=1)
    got: list[Event] = []
    waiting = anyio.Event()

    async def reader() -> None:
        waiting.set()
        got.extend(await sub.next_batch())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await waiting.wait()
            reg.publish("s1", "text", {"text": "x"})
    assert [e.seq for e in got] == [2]


async def test_async_iteration_ends_when_closed_from_elsewhere(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice")
    seen: list[int] = []
    caught_up = anyio.Event()
    ended = anyio.Event()

    async def reader() -> None:
        async for batch in sub:
            seen.extend(e.seq for e in batch)
            if seen[-1] == 3:
                caught_up.set()
        ended.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            publish_texts(reg, "s1", 2)
            await caught_up.wait()
            # The reader is now parked waiting for more; closing must wake it.
            sub.close()
            await ended.wait()
    publish_texts(reg, "s1", 1)
    assert seen == [1, 2, 3]


async def test_arm_wakes_once_per_change(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice")
    calls: list[int] = []
    assert not sub.arm(lambda: calls.append(1)), "something to pull already"
    drain(sub)
    assert sub.arm(lambda: calls.append(1))
    publish_texts(reg, "s1", 2)
    assert calls == [1]
    assert kinds(drain(sub)) == ["text", "text"]


async def test_a_listener_hears_every_change_until_the_subscription_closes(
    reg: MemoryRegistry,
) -> None:
    await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice")
    first: list[int] = []
    calls: list[int] = []
    sub.listen(lambda: first.append(1))
    sub.listen(lambda: calls.append(sub.pending()))  # replaces the first
    publish_texts(reg, "s1", 2)
    assert first == []
    assert calls == [2, 3], "told at each change, pulled or not"
    drain(sub)
    sub.close()
    assert calls == [2, 3, 0], "and once when it closes"
    publish_texts(reg, "s1", 1)
    assert calls == [2, 3, 0]
    late: list[int] = []
    sub.listen(lambda: late.append(1))
    assert late == [1], "a closed subscription says so at once"


async def test_a_subscription_keeps_a_completed_session_visible(reg: MemoryRegistry) -> None:
    run_id = await run_once(reg, "s1")
    sub = await reg.subscribe("s1", owner="alice", run_id=run_id)
    assert sub.info is not None
    assert sub.info.is_processing is False
    assert sub.info.run is not None
    assert sub.info.run.status == "completed"
    assert kinds(drain(sub)) == ["user_message", "complete"]
