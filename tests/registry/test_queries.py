"""Queries: get_run, is_processing, list_runs (status, owner) and the summary fields."""

from __future__ import annotations

from registry import LocalRegistry, ManualClock, MemoryRegistry, RunSummary

T0 = 1_700_000_000_000


async def test_get_run_summaries(reg: MemoryRegistry, clock: ManualClock) -> None:
    assert reg.get_run("01NOSUCHRUN") is None
    result = await reg.start("s1", owner="alice", content="hi", provider="echo")
    reg.publish("s1", "text", {"text": "x"})
    sub = await reg.subscribe("s1", owner="alice")
    assert reg.get_run(result.run_id) == RunSummary(
        run_id=result.run_id,
        session_id="s1",
        provider="echo",
        status="running",
        started_at=T0,
        completed_at=None,
        last_seq=2,
        subscribers=1,
        outcome=None,
    )
    clock.advance(3)
    reg.abort("s1")
    sub.close()
    assert reg.get_run(result.run_id) == RunSummary(
        run_id=result.run_id,
        session_id="s1",
        provider="echo",
        status="completed",
        started_at=T0,
        completed_at=T0 + 3000,
        last_seq=3,
        subscribers=0,
        outcome="aborted",
    )


async def test_is_processing_and_running_run_id(reg: MemoryRegistry) -> None:
    assert not reg.is_processing("s1")
    assert reg.running_run_id("s1") is None
    result = await reg.start("s1", owner="alice", content="hi")
    assert reg.is_processing("s1")
    assert not reg.is_processing("s2")
    assert reg.running_run_id("s1") == result.run_id
    reg.publish("s1", "complete", {})
    assert not reg.is_processing("s1")
    assert reg.running_run_id("s1") is None


async def test_list_runs_by_status_and_owner(reg: MemoryRegistry, clock: ManualClock) -> None:
    a_done = await reg.start("a1", owner="alice", content="1", provider="echo")
    reg.publish("a1", "complete", {})
    clock.advance(1)
    a_running = await reg.start("a1", owner="alice", content="2", provider="echo")
    a_queued = await reg.start("a1", owner="alice", content="3", provider="echo", policy="enqueue")
    clock.advance(1)
    b_running = await reg.start("b1", owner="bob", content="4", provider="fake")
    await reg.subscribe("a1", owner="alice")

    running = reg.list_runs()
    assert [r.run_id for r in running] == [a_running.run_id, b_running.run_id]
    assert all(r.status == "running" for r in running)
    assert [r.run_id for r in reg.list_runs(status="running")] == [r.run_id for r in running]

    everything = reg.list_runs(status="all")
    assert [(r.run_id, r.status) for r in everything] == [
        (a_done.run_id, "completed"),
        (a_running.run_id, "running"),
        (b_running.run_id, "running"),
        (a_queued.run_id, "queued"),
    ]
    assert everything[-1] == RunSummary(
        run_id=a_queued.run_id,
        session_id="a1",
        provider="echo",
        status="queued",
        started_at=None,
        completed_at=None,
        last_seq=0,
        subscribers=1,
        outcome=None,
    )
    assert everything[0].outcome == "done"
    assert everything[1].subscribers == 1
    assert everything[2].subscribers == 0

    assert [r.run_id for r in reg.list_runs(owner="alice")] == [a_running.run_id]
    assert [r.run_id for r in reg.list_runs(owner="alice", status="all")] == [
        a_done.run_id,
        a_running.run_id,
        a_queued.run_id,
    ]
    assert [r.run_id for r in reg.list_runs(owner="bob", status="all")] == [b_running.run_id]
    assert reg.list_runs(owner="carol", status="all") == []


async def test_summaries_are_snapshots(reg: MemoryRegistry) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    before = reg.get_run(result.run_id)
    reg.publish("s1", "text", {})
    assert before is not None
    assert before.last_seq == 1
    assert reg.get_run(result.run_id).last_seq == 2  # type: ignore[union-attr]


async def test_subscriber_count(reg: MemoryRegistry) -> None:
    subs = [await reg.subscribe(s, owner="alice") for s in ("s1", "s1", "s2")]
    assert reg.subscriber_count() == 3
    subs[0].close()
    assert reg.subscriber_count() == 2


async def test_the_local_registry_answers_the_protocol_from_memory(reg: MemoryRegistry) -> None:
    local = LocalRegistry(reg)
    assert await local.publish("s1", "checkpoint", {}) is None
    assert reg.stats.dropped == 0  # nothing ran: a miss, not a late event
    started = await local.start("s1", owner="alice", content="go")
    event = await local.publish("s1", "checkpoint", {"label": "x"})
    assert event is not None
    assert event.seq == 2
    assert await local.running_run_id("s1") == started.run_id
    assert local.local_runs() == 1
    assert [r.run_id for r in await local.list_runs(owner="alice")] == [started.run_id]
    assert await local.list_runs(owner="bob") == []
    summary = await local.abort("s1")
    assert summary is not None
    assert summary.outcome == "aborted"
    assert local.local_runs() == 0
    got = await local.get_run(started.run_id)
    assert got is not None
    assert got.last_seq == 3
