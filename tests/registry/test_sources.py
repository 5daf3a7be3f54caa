"""Runs driven by a source in the registry's task group: ends, failures, aborts, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from registry import Event, ManualClock, MemoryRegistry, RunContext, ShuttingDown, Subscription

from .fakes import drain, kinds

Item = tuple[str, dict[str, Any]]


class RunReader:
    """Reads a subscription one run at a time: up to and including each complete."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.read: list[Event] = []

    async def next_run(self) -> list[Event]:
        with anyio.fail_after(10):  # a hang guard, not a timing assertion
            while "complete" not in kinds(self.read):
                self.read.extend(await self.sub.next_batch())
        end = kinds(self.read).index("complete") + 1
        run, self.read = self.read[:end], self.read[end:]
        return run

    def rest(self) -> list[Event]:
        rest, self.read = self.read + drain(self.sub), []
        return rest


@pytest.fixture
def live(clock: ManualClock) -> MemoryRegistry:
    """A registry for source-driven runs; each test enters it in its own task."""
    return MemoryRegistry(clock=clock, buffer_size=64)


async def test_source_events_follow_the_user_message(live: MemoryRegistry) -> None:
    async with live:
        seen: list[RunContext] = []

        async def source(ctx: RunContext) -> AsyncIterator[Item]:
            seen.append(ctx)
            yield ("text", {"text": "a"})
            yield ("session_created", {"session_id": "prov-1"})
            yield ("text", {"text": "b", "session_id": "prov-1"})
            yield ("complete", {"exit_code": 0})

        sub = RunReader(await live.subscribe("s1", owner="alice"))
        result = await live.start(
            "s1", owner="alice", content="go", source=source, client_msg_id="m1"
        )
        events = await sub.next_run()
        assert kinds(events) == ["user_message", "text", "text", "complete"]
        assert [e.seq for e in events] == [1, 2, 3, 4]
        assert all("prov-1" not in e.frame() for e in events)
        assert seen == [RunContext("s1", result.run_id, "alice", "go", "m1")]
        assert live._runs[result.run_id].provider_session_id == "prov-1"


async def test_source_that_ends_without_complete_gets_done(live: MemoryRegistry) -> None:
    async with live:

        async def source(ctx: RunContext) -> AsyncIterator[Item]:
            yield ("text", {"text": "only"})

        sub = RunReader(await live.subscribe("s1", owner="alice"))
        result = await live.start("s1", owner="alice", content="go", source=source)
        events = await sub.next_run()
        assert kinds(events) == ["user_message", "text", "complete"]
        assert events[-1].data == {
            "exit_code": 0,
            "success": True,
            "aborted": False,
            "reason": "done",
            "actual_session_id": "s1",
        }
        summary = live.get_run(result.run_id)
        assert summary is not None
        assert summary.outcome == "done"


@pytest.mark.parametrize("after", [0, 2])
async def test_source_that_raises_ends_with_one_error_complete(
    live: MemoryRegistry, after: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with live:

        async def source(ctx: RunContext) -> AsyncIterator[Item]:
            for i in range(after):
                yield ("text", {"text": str(i)})
            raise RuntimeError("model fell over")

        sub = RunReader(await live.subscribe("s1", owner="alice"))
        await live.start("s1", owner="alice", content="go", source=source)
        events = await sub.next_run()
        assert kinds(events) == ["user_message"] + ["text"] * after + ["complete"]
        assert events[-1].data == {
            "exit_code": 1,
            "success": False,
            "aborted": False,
            "reason": "error",
            "error": "model fell over",
            "actual_session_id": "s1",
        }
        assert "model fell over" in caplog.text
        # The run is over and the registry is still usable.
        assert not live.is_processing("s1")
        assert live.stats.dropped == 0


async def test_source_yielding_garbage_ends_with_error(live: MemoryRegistry) -> None:
    async with live:

        async def source(ctx: RunContext) -> AsyncIterator[Any]:
            yield "not a pair"

        sub = RunReader(await live.subscribe("s1", owner="alice"))
        await live.start("s1", owner="alice", content="go", source=source)
        events = await sub.next_run()
        assert kinds(events) == ["user_message", "complete"]
        assert events[-1].data["reason"] == "error"
        assert "not a pair" in events[-1].data["error"]


async def test_a_burst_yielded_after_the_run_ended_is_dropped(live: MemoryRegistry) -> None:
    # The run is aborted while its source runs: the source sees the cancellation only at
    # its next await, and yields one more burst before that. None of it is published.
    async with live:

        async def source(ctx: RunContext) -> AsyncIterator[Any]:
            yield [("text", {"text": "a"})]
            live.abort("s1")
            yield [("text", {"text": "late"}), ("text", {"text": "later"})]
            await anyio.sleep_forever()

        sub = RunReader(await live.subscribe("s1", owner="alice"))
        result = await live.start("s1", owner="alice", content="go", source=source)
        events = await sub.next_run()
        assert kinds(events) == ["user_message", "text", "complete"]
        assert events[-1].data["aborted"] is True
        assert live.get_run(result.run_id) is not None
        assert live._runs[result.run_id].dropped == 2
        assert sub.rest() == []


async def test_a_burst_is_published_in_order_with_one_timestamp(
    live: MemoryRegistry, clock: ManualClock
) -> None:
    async with live:

        async def source(ctx: RunContext) -> AsyncIterator[Item | list[Item]]:
            yield [
                ("text", {"text": "a"}),
                ("session_created", {"provider_session_id": "prov-1"}),
                ("text", {"text": "b", "session_id": "prov-1"}),
            ]
            clock.advance(1.0)
            yield ("text", {"text": "c"})
            clock.advance(1.0)
            # Nothing after the complete of a burst is published.
            yield [("complete", {"exit_code": 0}), ("text", {"text": "late"})]

        sub = RunReader(await live.subscribe("s1", owner="alice"))
        result = await live.start("s1", owner="alice", content="go", source=source)
        events = await sub.next_run()
        assert kinds(events) == ["user_message", "text", "text", "text", "complete"]
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert [e.data.get("text") for e in events[1:4]] == ["a", "b", "c"]
        assert events[2].data["session_id"] == "s1"
        first, second, third = events[1].ts, events[3].ts, events[4].ts
        assert events[2].ts == first
        assert second == first + 1000
        assert third == second + 1000
        assert live._runs[result.run_id].provider_session_id == "prov-1"
        assert sub.rest() == []


@pytest.mark.parametrize(
    ("burst", "why"),
    [
        ([("text", {"text": "a"}), ("text", "not a dict"), ("text", {"text": "b"})], "not a dict"),
        # No database keeps a NUL whole: refused before it is numbered, not stored cut short.
        ([("text", {"text": "a"}), ("te\x00xt", {"text": "b"})], "NUL"),
    ],
)
async def test_a_bad_pair_in_a_burst_ends_with_error_after_the_good_ones(
    live: MemoryRegistry, burst: list[Any], why: str
) -> None:
    async with live:

        async def source(ctx: RunContext) -> AsyncIterator[Any]:
            yield burst

        sub = RunReader(await live.subscribe("s1", owner="alice"))
        await live.start("s1", owner="alice", content="go", source=source)
        events = await sub.next_run()
        assert kinds(events) == ["user_message", "text", "complete"]
        assert events[-1].data["reason"] == "error"
        assert why in events[-1].data["error"]


async def test_source_complete_stops_the_source(live: MemoryRegistry) -> None:
    async with live:
        closed = anyio.Event()
        pulled_after_complete = False

        async def source(ctx: RunContext) -> AsyncIterator[Item]:
            nonlocal pulled_after_complete
            try:
                yield ("complete", {"exit_code": 0})
                pulled_after_complete = True
                yield ("text", {"text": "after"})
            finally:
                closed.set()

        sub = RunReader(await live.subscribe("s1", owner="alice"))
        await live.start("s1", owner="alice", content="go", source=source)
        events = await sub.next_run()
        with anyio.fail_after(10):
            await closed.wait()
        assert kinds(events) == ["user_message", "complete"]
        assert not pulled_after_complete
        assert sub.rest() == []


async def test_abort_cancels_the_source_and_drops_its_late_complete(
    live: MemoryRegistry,
) -> None:
    async with live:
        streaming = anyio.Event()
        cancelled = anyio.Event()
        finished = anyio.Event()

        async def source(ctx: RunContext) -> AsyncIterator[Item]:
            try:
                yield ("text", {"text": "working"})
                streaming.set()
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.set()
                # A provider that reports its own end while being stopped.
                yield ("complete", {"reason": "done", "exit_code": 0})
                raise
            finally:
                finished.set()

        sub = RunReader(await live.subscribe("s1", owner="alice"))
        result = await live.start("s1", owner="alice", content="go", source=source)
        with anyio.fail_after(10):
            await streaming.wait()
        summary = live.abort("s1")
        assert summary is not None
        assert summary.outcome == "aborted"
        with anyio.fail_after(10):
            await cancelled.wait()
            await finished.wait()
        events = sub.rest()
        assert kinds(events) == ["user_message", "text", "complete"]
        assert events[-1].data["reason"] == "aborted"
        assert live._runs[result.run_id].dropped == 1
        assert live.stats.dropped == 1


async def test_interrupt_cancels_the_running_source(live: MemoryRegistry) -> None:
    async with live:
        running = anyio.Event()
        cancelled = anyio.Event()

        async def slow(ctx: RunContext) -> AsyncIterator[Item]:
            try:
                running.set()
                await anyio.sleep_forever()
                yield ("text", {})  # pragma: no cover
            finally:
                cancelled.set()

        async def quick(ctx: RunContext) -> AsyncIterator[Item]:
            yield ("text", {"text": "second"})

        sub = RunReader(await live.subscribe("s1", owner="alice"))
        await live.start("s1", owner="alice", content="one", source=slow)
        with anyio.fail_after(10):
            await running.wait()
        await live.start("s1", owner="alice", content="two", source=quick, policy="interrupt")
        first = await sub.next_run()
        second = await sub.next_run()
        with anyio.fail_after(10):
            await cancelled.wait()
        assert first[-1].data["reason"] == "interrupted"
        assert kinds(second) == ["user_message", "text", "complete"]
        assert second[-1].data["reason"] == "done"


async def test_queued_source_starts_when_the_first_ends(live: MemoryRegistry) -> None:
    async with live:
        release = anyio.Event()

        async def first(ctx: RunContext) -> AsyncIterator[Item]:
            await release.wait()
            yield ("text", {"text": "first"})

        async def second(ctx: RunContext) -> AsyncIterator[Item]:
            yield ("text", {"text": "second"})

        sub = RunReader(await live.subscribe("s1", owner="alice"))
        await live.start("s1", owner="alice", content="one", source=first)
        queued = await live.start(
            "s1", owner="alice", content="two", source=second, policy="enqueue"
        )
        assert queued.status == "queued"
        release.set()
        await sub.next_run()
        events = await sub.next_run()
        assert events[0].run_id == queued.run_id
        assert [e.data.get("text") for e in events[:2]] == [None, "second"]


async def test_leaving_the_context_ends_runs_with_server_restart(clock: ManualClock) -> None:
    running: dict[str, anyio.Event] = {"s1": anyio.Event(), "s2": anyio.Event()}
    cancelled: list[str] = []

    async def forever(ctx: RunContext) -> AsyncIterator[Item]:
        try:
            running[ctx.session_id].set()
            await anyio.sleep_forever()
            yield ("text", {})  # pragma: no cover
        finally:
            cancelled.append(ctx.session_id)

    async with MemoryRegistry(clock=clock) as reg:
        sub = RunReader(await reg.subscribe("s1", owner="alice"))
        await reg.start("s1", owner="alice", content="go", source=forever)
        await reg.start("s2", owner="alice", content="go", source=forever)
        with anyio.fail_after(10):
            for event in running.values():
                await event.wait()
    assert sorted(cancelled) == ["s1", "s2"]
    events = sub.rest()
    assert kinds(events) == ["user_message", "complete"]
    assert events[-1].data["reason"] == "server_restart"
    assert reg.list_runs() == []
    assert {r.outcome for r in reg.list_runs(status="all")} == {"server_restart"}
    with pytest.raises(ShuttingDown):
        await reg.start("s3", owner="alice", content="late")


async def test_no_task_outlives_its_run(clock: ManualClock) -> None:
    """Completed runs wait for eviction without a timer task each."""

    async def source(ctx: RunContext) -> AsyncIterator[Item]:
        yield ("text", {"text": "x"})

    async with MemoryRegistry(clock=clock, run_ttl=3600) as reg:
        await anyio.lowlevel.checkpoint()
        baseline = len(asyncio.all_tasks())
        subs = [RunReader(await reg.subscribe(f"s{i}", owner="alice")) for i in range(20)]
        for i in range(20):
            await reg.start(f"s{i}", owner="alice", content="go", source=source)
        for sub in subs:
            await sub.next_run()
        # Each run's task returns right after its complete; poll that condition.
        with anyio.fail_after(10):
            while len(asyncio.all_tasks()) > baseline:
                await anyio.lowlevel.checkpoint()
        assert len(reg.list_runs(status="all")) == 20
        assert len(asyncio.all_tasks()) == baseline
