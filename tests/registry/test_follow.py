"""Following runs numbered elsewhere: adopt and ingest (what a cluster's mirror uses)."""

from __future__ import annotations

from registry import ManualClock, MemoryRegistry, Notice, RunNotice

from .fakes import FakeStore, drain, kinds, positions


def follower(clock: ManualClock, store: FakeStore | None = None) -> MemoryRegistry:
    return MemoryRegistry(store=store, clock=clock, buffer_size=8, run_ttl=60.0)


async def test_ingested_events_reach_subscribers_once_in_order(clock: ManualClock) -> None:
    reg = follower(clock)
    sub = await reg.subscribe("s1", owner="alice")
    reg.adopt("s1", owner="alice", run_id="r1", provider="echo", started_at=1000)
    assert reg.ingest("r1", 1, "user_message", 1000, {"content": "hi"})
    assert reg.ingest("r1", 2, "text", 1001, {"text": "a"}, '{"text":"a"}')
    assert reg.ingest("r1", 2, "text", 1001, {"text": "a"})  # already held: ignored
    assert reg.ingest("r1", 1, "user_message", 1000, {"content": "hi"})
    events = drain(sub)
    assert positions(events) == [("r1", 1), ("r1", 2)]
    assert [e.ts for e in events] == [1000, 1001]
    assert events[1].frame().endswith(',"data":{"text":"a"}}')
    assert reg.is_processing("s1")


async def test_a_gap_is_refused_until_the_missing_events_come(clock: ManualClock) -> None:
    reg = follower(clock)
    reg.adopt("s1", owner="alice", run_id="r1", provider="echo", started_at=1000)
    assert reg.ingest("r1", 1, "user_message", 1000, {"content": "hi"})
    assert not reg.ingest("r1", 3, "text", 1001, {"text": "b"})
    assert reg.following("r1") == 1
    assert reg.ingest("r1", 2, "text", 1001, {"text": "a"})
    assert reg.ingest("r1", 3, "text", 1001, {"text": "b"})
    assert reg.following("r1") == 3
    # A run that is not followed here: nothing to do, nothing refused.
    assert reg.ingest("elsewhere", 7, "text", 1001, {"text": "x"})
    assert reg.following("elsewhere") is None


async def test_an_ingested_complete_ends_the_run_with_its_own_time(clock: ManualClock) -> None:
    store = FakeStore()
    reg = follower(clock, store)
    heard: list[Notice] = []
    reg.listen(heard.append)
    sub = await reg.subscribe("s1", owner="alice")
    reg.adopt(
        "s1", owner="alice", run_id="r1", provider="echo", started_at=1000, client_msg_id="m1"
    )
    reg.ingest("r1", 1, "user_message", 1000, {"content": "hi", "client_msg_id": "m1"})
    done = {
        "exit_code": 0,
        "success": True,
        "aborted": False,
        "reason": "done",
        "actual_session_id": "s1",
    }
    assert reg.ingest("r1", 2, "complete", 5000, done)
    assert reg.ingest("r1", 3, "text", 5001, {"text": "late"})  # after the complete: ignored
    assert kinds(drain(sub)) == ["user_message", "complete"]
    summary = reg.get_run("r1")
    assert summary is not None
    assert (summary.status, summary.outcome, summary.completed_at) == ("completed", "done", 5000)
    assert not reg.is_processing("s1")
    assert [(n.kind, n.run.run_id) for n in heard if isinstance(n, RunNotice)] == [
        ("run_started", "r1"),
        ("run_finished", "r1"),
    ]
    assert [(run.run_id, cmid) for run, cmid in store.started] == [("r1", "m1")]
    assert [run.run_id for run, _ in store.completed] == ["r1"]
    assert [e.seq for e in store.events] == [1, 2]


async def test_a_run_adopted_after_its_start_was_trimmed_replays_the_rest_from_the_log(
    clock: ManualClock,
) -> None:
    store = FakeStore()
    # What the log already has of the run: its first 20 events (written by another process).
    writer = follower(clock, store)
    await writer.start("s1", owner="alice", content="go")
    for i in range(19):
        writer.publish("s1", "text", {"text": str(i)})
    run_id = store.run_ids("s1")[0]

    reg = follower(clock, store)
    reg.adopt("s1", owner="alice", run_id=run_id, provider="", started_at=1000, first_seq=18)
    for seq in range(18, 24):
        assert reg.ingest(run_id, seq, "text", 1000, {"text": str(seq)})
    sub = await reg.subscribe("s1", owner="alice", run_id=run_id, after_seq=5)
    assert [e.seq for e in drain(sub)] == list(range(6, 24))


async def test_adopting_a_second_running_run_of_a_session_is_a_bug(clock: ManualClock) -> None:
    reg = follower(clock)
    reg.adopt("s1", owner="alice", run_id="r1", provider="echo", started_at=1000)
    for run_id in ("r1", "r2"):
        try:
            reg.adopt("s1", owner="alice", run_id=run_id, provider="echo", started_at=1000)
        except RuntimeError:
            continue
        raise AssertionError("adopt accepted a second running run")
