"""With a store that reports its commits, only durable events are delivered.

A client must never hold an event that a crash could lose: after a restart the run's
``complete`` takes the seq after the last one on disk, and a client that had seen a later,
lost event would skip that ``complete``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from registry import Event, ManualClock, MemoryRegistry, RunNotice

from .fakes import FakeStore, drain, kinds, positions


@pytest.fixture
def gated(clock: ManualClock) -> tuple[MemoryRegistry, FakeStore]:
    store = FakeStore()
    store.gating = True
    return MemoryRegistry(store=store, clock=clock, buffer_size=8), store


async def test_nothing_is_delivered_or_told_before_it_is_on_disk(
    gated: tuple[MemoryRegistry, FakeStore],
) -> None:
    reg, store = gated
    run_id = (await reg.start("s", owner="a", content="hi")).run_id
    sub = await reg.subscribe("s", owner="a")
    pending: list[int] = []
    sub.listen(lambda: pending.append(sub.pending()))
    reg.publish("s", "text", {"text": "one"})
    assert sub.info is not None
    assert sub.info.replayed == 0
    assert pending == []  # a listener hears only of what it may have
    assert drain(sub) == []
    store.flush()
    assert pending == [2]
    assert positions(drain(sub)) == [(run_id, 1), (run_id, 2)]


async def test_delivery_stops_at_the_durable_seq(gated: tuple[MemoryRegistry, FakeStore]) -> None:
    reg, store = gated
    run_id = (await reg.start("s", owner="a", content="hi")).run_id
    sub = await reg.subscribe("s", owner="a")
    for text in ("a", "b", "c"):
        reg.publish("s", "text", {"text": text})
    assert store.on_durable is not None
    store.on_durable(run_id, 2)
    assert positions(drain(sub)) == [(run_id, 1), (run_id, 2)]
    # An older report never moves delivery back.
    store.on_durable(run_id, 1)
    assert drain(sub) == []
    store.on_durable(run_id, 4)
    assert positions(drain(sub)) == [(run_id, 3), (run_id, 4)]


async def test_the_next_run_waits_for_the_previous_complete_to_be_durable(
    gated: tuple[MemoryRegistry, FakeStore],
) -> None:
    reg, store = gated
    first = (await reg.start("s", owner="a", content="one")).run_id
    sub = await reg.subscribe("s", owner="a")
    store.flush()
    assert positions(drain(sub)) == [(first, 1)]
    reg.publish("s", "complete", {})
    second = (await reg.start("s", owner="a", content="two")).run_id
    assert store.on_durable is not None
    store.on_durable(second, 1)  # the new run is on disk, the old complete is not
    assert drain(sub) == []
    store.on_durable(first, 2)
    got = drain(sub)
    assert positions(got) == [(first, 2), (second, 1)]
    assert kinds(got) == ["complete", "user_message"]


async def test_a_commit_wakes_a_waiting_subscriber(
    gated: tuple[MemoryRegistry, FakeStore],
) -> None:
    reg, store = gated
    run_id = (await reg.start("s", owner="a", content="hi")).run_id
    sub = await reg.subscribe("s", owner="a")
    got = []

    async def reader() -> None:
        got.extend(await sub.next_batch())

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        assert got == []  # published but not durable: the reader waits
        store.flush()
    assert positions(got) == [(run_id, 1)]


async def test_without_a_reporting_store_everything_is_delivered_at_once(
    clock: ManualClock,
) -> None:
    store = FakeStore()  # gating off: watch_durable() says it will not report
    reg = MemoryRegistry(store=store, clock=clock)
    run_id = (await reg.start("s", owner="a", content="hi")).run_id
    sub = await reg.subscribe("s", owner="a")
    reg.publish("s", "text", {"text": "x"})
    assert positions(drain(sub)) == [(run_id, 1), (run_id, 2)]


@pytest.mark.parametrize("burst", [False, True])
async def test_a_source_that_outruns_the_disk_waits_for_it(clock: ManualClock, burst: bool) -> None:
    """Pacing: with buffer 8, a source of 100 events must wait for commits, or its
    undelivered events would be pushed out of the buffer and the subscriber would lag.
    Also when the 100 events come as one burst: it is paced in the middle."""
    store = FakeStore()  # commits only when the "disk" task below is urged
    store.gating = True
    urged = anyio.Event()

    def urge() -> None:
        store.urged += 1
        urged.set()

    store.urge = urge  # type: ignore[method-assign]

    async def disk() -> None:
        nonlocal urged
        while True:
            await urged.wait()
            urged = anyio.Event()
            store.flush()  # a commit, later than the urge, as the real writer's

    async def source(context: object) -> AsyncIterator[Any]:
        pairs = [("text_delta", {"text": str(i)}) for i in range(100)]
        if burst:
            yield pairs
        else:
            for pair in pairs:
                yield pair

    got: list[Event] = []
    async with MemoryRegistry(store=store, clock=clock, buffer_size=8) as reg:
        sub = await reg.subscribe("s", owner="a")

        async def reader() -> None:
            while not got or got[-1].kind != "complete":
                got.extend(await sub.next_batch())  # raises Lagged if events were lost

        finished = anyio.Event()
        reg.listen(
            lambda n: (
                finished.set() if isinstance(n, RunNotice) and n.kind == "run_finished" else None
            )
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(disk)
            tg.start_soon(reader)
            await reg.start("s", owner="a", content="go", source=source)
            await finished.wait()
            store.flush()  # commit the tail the source left after its last wait
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert [e.seq for e in got] == list(range(1, 103))
    assert store.urged >= 100 // 8  # at least once per buffer of events


async def test_a_paced_source_goes_on_as_soon_as_a_commit_makes_room(clock: ManualClock) -> None:
    # Buffer 8: a source more than 4 events ahead of the disk is held. A commit of the
    # oldest two lets it publish two more at once, while the store writes the rest: it is not held
    # until nearly everything is on disk.
    store = FakeStore()
    store.gating = True
    urged = anyio.Event()

    def urge() -> None:
        urged.set()

    store.urge = urge  # type: ignore[method-assign]

    async def source(context: object) -> AsyncIterator[Any]:
        yield [("text_delta", {"text": str(i)}) for i in range(20)]

    async with MemoryRegistry(store=store, clock=clock, buffer_size=8) as reg:
        run_id = (await reg.start("s", owner="a", content="go", source=source)).run_id
        await urged.wait()
        assert store.appended_seq(run_id) == 5  # 5 ahead of nothing on disk: held
        urged = anyio.Event()
        assert store.on_durable is not None
        store.on_durable(run_id, 2)
        # Bounds a failure (a source still held) rather than timing anything.
        with anyio.fail_after(10):
            await urged.wait()
        assert store.appended_seq(run_id) == 7  # two more, then held again
        reg.abort("s")
