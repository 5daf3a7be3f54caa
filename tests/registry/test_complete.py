"""Exactly one complete per run: provider completes, abort, complete_run, late events."""

from __future__ import annotations

from typing import Any

import pytest

from registry import ManualClock, MemoryRegistry, StartResult

from .fakes import FakeStore, drain, kinds, publish_texts


async def test_first_complete_ends_the_run(reg: MemoryRegistry, clock: ManualClock) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice")
    publish_texts(reg, "s1", 2)
    clock.advance(2)
    complete = reg.publish("s1", "complete", {"exit_code": 0, "session_id": "prov-7"})
    assert complete is not None
    assert complete.seq == 4
    assert complete.data == {
        "exit_code": 0,
        "success": True,
        "aborted": False,
        "reason": "done",
        "actual_session_id": "s1",
        "session_id": "s1",
    }
    summary = reg.get_run(result.run_id)
    assert summary is not None
    assert summary.status == "completed"
    assert summary.outcome == "done"
    assert summary.completed_at == int(clock.now() * 1000)
    assert summary.last_seq == 4
    assert not reg.is_processing("s1")
    assert reg.stats.runs_completed == 1
    assert kinds(drain(sub))[-1] == "complete"


async def test_everything_after_the_complete_is_dropped(reg: MemoryRegistry) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice")
    reg.publish("s1", "complete", {})
    assert reg.publish("s1", "text", {"text": "late"}) is None
    assert reg.publish("s1", "complete", {"reason": "error"}) is None
    assert reg.publish("s1", "session_created", {"session_id": "prov"}) is None
    assert reg.stats.dropped == 3
    assert reg._runs[result.run_id].dropped == 3
    events = drain(sub)
    assert kinds(events) == ["user_message", "complete"]
    assert events[-1].data["reason"] == "done"
    summary = reg.get_run(result.run_id)
    assert summary is not None
    assert (summary.last_seq, summary.outcome) == (2, "done")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, {"exit_code": 0, "success": True, "aborted": False, "reason": "done"}),
        (
            {"exit_code": 3},
            {"exit_code": 3, "success": False, "aborted": False, "reason": "done"},
        ),
        (
            {"error": "boom"},
            {
                "exit_code": 1,
                "success": False,
                "aborted": False,
                "reason": "error",
                "error": "boom",
            },
        ),
        (
            {"reason": "nonsense", "exit_code": True, "success": "yes"},
            {"exit_code": 0, "success": True, "aborted": False, "reason": "done"},
        ),
        (
            {"reason": "aborted", "cost": 1.5},
            {"exit_code": 1, "success": False, "aborted": True, "reason": "aborted", "cost": 1.5},
        ),
    ],
)
async def test_provider_complete_is_normalised(
    reg: MemoryRegistry, data: dict[str, Any], expected: dict[str, Any]
) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    complete = reg.publish("s1", "complete", data)
    assert complete is not None
    assert complete.data == {**expected, "actual_session_id": "s1"}
    summary = reg.get_run(result.run_id)
    assert summary is not None
    assert summary.outcome == expected["reason"]


async def test_abort_completes_with_aborted(reg: MemoryRegistry, clock: ManualClock) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice")
    publish_texts(reg, "s1", 1)
    clock.advance(1)
    summary = reg.abort("s1")
    assert summary is not None
    assert summary.run_id == result.run_id
    assert (summary.status, summary.outcome, summary.last_seq) == ("completed", "aborted", 3)
    assert summary.completed_at == int(clock.now() * 1000)
    events = drain(sub)
    assert kinds(events) == ["user_message", "text", "complete"]
    assert events[-1].data == {
        "exit_code": 1,
        "success": False,
        "aborted": True,
        "reason": "aborted",
        "actual_session_id": "s1",
    }
    # The provider's own complete arriving afterwards is dropped: a run has exactly one.
    assert reg.publish("s1", "complete", {"reason": "done"}) is None
    assert reg.stats.dropped == 1
    assert drain(sub) == []


async def test_abort_with_nothing_running_is_a_no_op(reg: MemoryRegistry) -> None:
    assert reg.abort("unknown") is None
    await reg.start("s1", owner="alice", content="hi")
    assert reg.abort("s1") is not None
    assert reg.abort("s1") is None
    assert reg.stats.runs_completed == 1
    assert reg.stats.published == 2


async def test_abort_starts_the_next_queued_start(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="one")
    queued = await reg.start("s1", owner="alice", content="two", policy="enqueue")
    reg.abort("s1")
    assert reg.running_run_id("s1") == queued.run_id


async def test_abort_can_clear_the_queue(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="one")
    two = await reg.start("s1", owner="alice", content="two", policy="enqueue", client_msg_id="m2")
    three = await reg.start("s1", owner="alice", content="three", policy="enqueue")
    assert reg.abort("s1", clear_queue=True) is not None
    assert reg.running_run_id("s1") is None
    assert reg.queued("s1") == 0
    # The queued sends were acknowledged with run ids: they become runs that ended at
    # once, each with its user message, instead of silently vanishing.
    listed = reg.list_runs(status="all")
    assert [r.run_id for r in listed[-2:]] == [two.run_id, three.run_id]
    assert all(r.status == "completed" and r.outcome == "aborted" for r in listed)
    assert all(r.last_seq == 2 for r in listed[-2:])
    # So resending the same client_msg_id finds that run.
    again = await reg.start("s1", owner="alice", content="two", client_msg_id="m2")
    assert again == StartResult("s1", two.run_id, "duplicate")


async def test_shutdown_ends_queued_starts_as_runs(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="one")
    two = await reg.start("s1", owner="alice", content="two", policy="enqueue")
    three = await reg.start("s1", owner="alice", content="three", policy="enqueue")
    assert reg.shutdown() == 1
    listed = reg.list_runs(status="all")
    assert [r.run_id for r in listed[-2:]] == [two.run_id, three.run_id]
    assert [r.outcome for r in listed] == ["server_restart"] * 3
    assert reg.running_run_id("s1") is None


async def test_complete_run_only_while_running(reg: MemoryRegistry) -> None:
    assert reg.complete_run("s1") is False
    result = await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice")
    assert reg.complete_run("s1", exit_code=137, error="provider crashed") is True
    assert reg.complete_run("s1") is False
    events = drain(sub)
    assert kinds(events) == ["user_message", "complete"]
    assert events[-1].data == {
        "exit_code": 137,
        "success": False,
        "aborted": False,
        "reason": "error",
        "error": "provider crashed",
        "actual_session_id": "s1",
    }
    summary = reg.get_run(result.run_id)
    assert summary is not None
    assert summary.outcome == "error"


async def test_complete_run_with_exit_zero_is_done(reg: MemoryRegistry) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    assert reg.complete_run("s1", exit_code=0)
    summary = reg.get_run(result.run_id)
    assert summary is not None
    assert summary.outcome == "done"


async def test_store_hears_the_outcome_and_unread(sreg: MemoryRegistry, store: FakeStore) -> None:
    await sreg.start("s1", owner="alice", content="hi")
    sreg.publish("s1", "complete", {})
    sub = await sreg.subscribe("s1", owner="alice")
    await sreg.start("s1", owner="alice", content="again")
    sreg.abort("s1")
    sub.close()
    assert [(run.outcome, unread) for run, unread in store.completed] == [
        ("done", True),
        ("aborted", False),
    ]
    assert all(run.status == "completed" for run, _ in store.completed)


async def test_shutdown_ends_running_runs(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="one")
    await reg.start("s2", owner="bob", content="two")
    await reg.start("s2", owner="bob", content="queued", policy="enqueue")
    await reg.start("s3", owner="bob", content="three")
    reg.publish("s3", "complete", {})
    subs = [await reg.subscribe(s, owner="x") for s in ("s1", "s2")]
    assert reg.shutdown() == 2
    assert reg.list_runs() == []
    assert reg.queued("s2") == 0
    for sub in subs:
        last = drain(sub)[-1]
        assert last.kind == "complete"
        assert last.data["reason"] == "server_restart"
        assert last.data["aborted"] is False
        assert last.data["success"] is False
    assert reg.shutdown() == 0
