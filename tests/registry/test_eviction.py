"""Eviction: completed runs linger for the TTL, leave in order, only once durable."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from registry import ManualClock, MemoryRegistry, Notice, RunNotice, SessionDeleted

from .fakes import FakeStore, drain, positions, run_once


async def test_completed_run_stays_for_the_ttl(reg: MemoryRegistry, clock: ManualClock) -> None:
    run_id = await run_once(reg, "s1", 2)
    clock.advance(reg.run_ttl - 0.5)
    assert reg.sweep() == 0
    assert reg.get_run(run_id) is not None
    sub = await reg.subscribe("s1", owner="alice", run_id=run_id)
    assert len(drain(sub)) == 4
    sub.close()
    clock.advance(0.5)
    assert reg.sweep() == 1
    assert reg.get_run(run_id) is None
    assert reg.stats.evicted == 1
    assert reg.list_runs(status="all") == []
    assert reg.sweep() == 0


async def test_running_runs_are_never_evicted(reg: MemoryRegistry, clock: ManualClock) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    clock.advance(reg.run_ttl * 100)
    assert reg.sweep() == 0
    assert reg.running_run_id("s1") == result.run_id


async def test_the_ttl_counts_from_completion(reg: MemoryRegistry, clock: ManualClock) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    clock.advance(reg.run_ttl * 2)
    reg.publish("s1", "complete", {})
    clock.advance(reg.run_ttl / 2)
    assert reg.sweep() == 0
    assert reg.get_run(result.run_id) is not None


async def test_an_old_expiry_never_removes_a_newer_run(
    reg: MemoryRegistry, clock: ManualClock
) -> None:
    old = await run_once(reg, "s1", 1)
    clock.advance(reg.run_ttl / 2)
    newer = await run_once(reg, "s1", 1)
    running = await reg.start("s1", owner="alice", content="three")
    clock.advance(reg.run_ttl / 2)
    assert reg.sweep() == 1
    assert reg.get_run(old) is None
    assert reg.get_run(newer) is not None
    assert reg.running_run_id("s1") == running.run_id
    sub = await reg.subscribe("s1", owner="alice", run_id=newer)
    assert [r for r, _ in positions(drain(sub))] == [newer] * 3 + [running.run_id]
    clock.advance(reg.run_ttl / 2)
    assert reg.sweep() == 1
    assert reg.get_run(newer) is None
    assert reg.running_run_id("s1") == running.run_id


async def test_a_forgotten_sessions_expiry_leaves_its_successor_alone(
    reg: MemoryRegistry, clock: ManualClock
) -> None:
    """The same session id, deleted and used again: the old run's expiry is by identity."""
    old = await run_once(reg, "s1", 1)
    reg.forget_session("s1")
    assert reg.get_run(old) is None
    new = await reg.start("s1", owner="alice", content="again")
    clock.advance(reg.run_ttl)
    reg.sweep()
    assert reg.running_run_id("s1") == new.run_id
    sub = await reg.subscribe("s1", owner="alice")
    assert positions(drain(sub)) == [(new.run_id, 1)]


async def test_runs_wait_until_their_events_are_durable(clock: ManualClock) -> None:
    store = FakeStore(auto_durable=False)
    reg = MemoryRegistry(store=store, clock=clock, run_ttl=10)
    run_id = await run_once(reg, "s1", 3)
    store.durable[run_id] = 4  # the complete (seq 5) is not on disk yet
    clock.advance(100)
    assert reg.sweep() == 0
    assert reg.get_run(run_id) is not None
    store.flush()
    assert reg.sweep() == 1
    assert reg.get_run(run_id) is None


async def test_eviction_forgets_client_msg_ids(reg: MemoryRegistry, clock: ManualClock) -> None:
    """Without a store, an id is remembered as long as its run is in memory."""
    first = await reg.start("s1", owner="alice", content="hi", client_msg_id="m")
    reg.publish("s1", "complete", {})
    assert (await reg.start("s1", owner="alice", content="hi", client_msg_id="m")).run_id == (
        first.run_id
    )
    clock.advance(reg.run_ttl)
    reg.sweep()
    again = await reg.start("s1", owner="alice", content="hi", client_msg_id="m")
    assert again.status == "started"


async def test_a_start_sweeps(reg: MemoryRegistry, clock: ManualClock) -> None:
    old = await run_once(reg, "s1")
    clock.advance(reg.run_ttl)
    await reg.start("s2", owner="alice", content="hi")
    assert reg.get_run(old) is None


async def test_no_timer_per_run(reg: MemoryRegistry, clock: ManualClock) -> None:
    """Runs complete and expire with no task of their own: sweep() is all there is."""
    baseline = asyncio.all_tasks()
    run_ids = [await run_once(reg, f"s{i}", 1) for i in range(20)]
    assert asyncio.all_tasks() == baseline
    clock.advance(reg.run_ttl)
    assert asyncio.all_tasks() == baseline
    assert all(reg.get_run(r) is not None for r in run_ids), "nothing expires on its own"
    assert reg.sweep() == 20


@pytest.mark.parametrize("ttl", [0.0, 0.1])
async def test_sweeper_task_evicts(clock: ManualClock, ttl: float) -> None:
    """Inside ``async with``, one sweeper task evicts expired runs by itself."""
    async with MemoryRegistry(clock=clock, run_ttl=ttl) as reg:
        run_id = await run_once(reg, "s1")
        clock.advance(ttl)
        with anyio.fail_after(10):
            # The sweeper wakes on real time and signals nothing: poll, with a deadline.
            while reg.get_run(run_id) is not None:  # noqa: ASYNC110
                await anyio.sleep(0.01)
    assert reg.stats.evicted == 1


async def test_forgetting_a_session_ends_its_run_then_announces_the_deletion(
    reg: MemoryRegistry,
) -> None:
    heard: list[Notice] = []
    reg.listen(heard.append)
    started = await reg.start("s1", owner="alice", content="go")
    sub = await reg.subscribe("s1", owner="alice")
    reg.forget_session("s1", owner="alice")
    assert sub.closed
    assert [type(n).__name__ for n in heard] == ["RunNotice", "RunNotice", "SessionDeleted"]
    finished = heard[1]
    assert isinstance(finished, RunNotice)
    assert finished.kind == "run_finished"
    assert finished.run.run_id == started.run_id
    assert finished.run.outcome == "aborted"
    assert heard[2] == SessionDeleted("alice", "s1")
    # Without an owner nothing is announced; a session never seen is announced all the same.
    reg.forget_session("s1")
    reg.forget_session("never-seen", owner="bob")
    assert heard[3:] == [SessionDeleted("bob", "never-seen")]
