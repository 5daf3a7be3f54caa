"""Starting runs: ids, the reject/enqueue/interrupt policies and idempotent sends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from registry import (
    ManualClock,
    MemoryRegistry,
    Notice,
    QueueFull,
    RunInProgress,
    RunNotice,
    ShuttingDown,
)

from .fakes import FakeStore, drain, kinds, publish_texts

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def id_ms(run_id: str) -> int:
    """The millisecond timestamp in the first 10 characters of a ULID."""
    value = 0
    for char in run_id[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


async def test_start_gives_a_running_run_with_a_fresh_id(
    reg: MemoryRegistry, clock: ManualClock
) -> None:
    result = await reg.start("s1", owner="alice", content="hi", provider="echo")
    assert result.session_id == "s1"
    assert result.status == "started"
    assert len(result.run_id) == 26
    assert set(result.run_id) <= set(CROCKFORD)
    assert id_ms(result.run_id) == int(clock.now() * 1000)
    summary = reg.get_run(result.run_id)
    assert summary is not None
    assert summary.status == "running"
    assert summary.provider == "echo"
    assert reg.running_run_id("s1") == result.run_id
    assert reg.is_processing("s1")


async def test_run_ids_are_unique_and_sort_in_start_order(
    reg: MemoryRegistry, clock: ManualClock
) -> None:
    ids: list[str] = []
    for i in range(200):
        result = await reg.start(f"s{i % 3}", owner="alice", content="x", policy="interrupt")
        ids.append(result.run_id)
        if i % 50 == 49:
            clock.advance(0.001)
    assert len(set(ids)) == len(ids)
    # Sortable by time, and within one millisecond still in the order they were made (an
    # interrupt or a queued start begins in the same millisecond its predecessor ended).
    assert sorted(ids) == ids


async def test_second_start_is_refused_naming_the_running_run(reg: MemoryRegistry) -> None:
    first = await reg.start("s1", owner="alice", content="one")
    with pytest.raises(RunInProgress) as info:
        await reg.start("s1", owner="alice", content="two")
    assert info.value.run_id == first.run_id
    assert info.value.session_id == "s1"
    assert info.value.code == "RUN_IN_PROGRESS"
    assert first.run_id in str(info.value)
    # Nothing changed: the first run goes on, nothing was queued or started.
    assert reg.running_run_id("s1") == first.run_id
    assert reg.queued("s1") == 0
    assert reg.stats.runs_started == 1


async def test_other_sessions_are_independent(reg: MemoryRegistry) -> None:
    a = await reg.start("s1", owner="alice", content="one")
    b = await reg.start("s2", owner="alice", content="two")
    assert a.run_id != b.run_id
    assert reg.running_run_id("s1") == a.run_id
    assert reg.running_run_id("s2") == b.run_id


async def test_enqueue_queues_and_starts_in_order(reg: MemoryRegistry) -> None:
    first = await reg.start("s1", owner="alice", content="one")
    second = await reg.start("s1", owner="alice", content="two", policy="enqueue")
    third = await reg.start("s1", owner="alice", content="three", policy="enqueue")
    assert (second.status, third.status) == ("queued", "queued")
    assert len({first.run_id, second.run_id, third.run_id}) == 3
    assert reg.queued("s1") == 2
    # Queued starts are not runs yet.
    assert reg.get_run(second.run_id) is None
    assert reg.running_run_id("s1") == first.run_id

    sub = await reg.subscribe("s1", owner="alice", run_id=first.run_id)
    reg.publish("s1", "complete", {})
    assert reg.running_run_id("s1") == second.run_id
    reg.publish("s1", "text", {"text": "2"})
    reg.publish("s1", "complete", {})
    assert reg.running_run_id("s1") == third.run_id
    reg.publish("s1", "complete", {})
    assert reg.running_run_id("s1") is None
    assert reg.queued("s1") == 0

    events = drain(sub)
    users = [e for e in events if e.kind == "user_message"]
    assert [(e.run_id, e.data["content"]) for e in users] == [
        (first.run_id, "one"),
        (second.run_id, "two"),
        (third.run_id, "three"),
    ]


async def test_queue_is_bounded(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="one")
    for _ in range(reg.queue_limit):
        await reg.start("s1", owner="alice", content="q", policy="enqueue")
    with pytest.raises(QueueFull) as info:
        await reg.start("s1", owner="alice", content="too many", policy="enqueue")
    assert info.value.code == "QUEUE_FULL"
    assert info.value.limit == reg.queue_limit
    assert reg.queued("s1") == reg.queue_limit
    # Once a queued start begins there is room again.
    reg.publish("s1", "complete", {})
    assert reg.queued("s1") == reg.queue_limit - 1
    result = await reg.start("s1", owner="alice", content="fits", policy="enqueue")
    assert result.status == "queued"


async def test_enqueue_with_nothing_running_starts_at_once(reg: MemoryRegistry) -> None:
    result = await reg.start("s1", owner="alice", content="one", policy="enqueue")
    assert result.status == "started"
    assert reg.running_run_id("s1") == result.run_id


async def test_interrupt_aborts_then_starts_at_once(reg: MemoryRegistry) -> None:
    first = await reg.start("s1", owner="alice", content="one")
    publish_texts(reg, "s1", 2)
    queued = await reg.start("s1", owner="alice", content="later", policy="enqueue")
    sub = await reg.subscribe("s1", owner="alice", run_id=first.run_id)

    second = await reg.start("s1", owner="alice", content="now", policy="interrupt")
    assert second.status == "started"
    assert reg.running_run_id("s1") == second.run_id

    old = reg.get_run(first.run_id)
    assert old is not None
    assert (old.status, old.outcome) == ("completed", "interrupted")
    events = drain(sub)
    assert kinds(events) == ["user_message", "text", "text", "complete", "user_message"]
    complete = events[3]
    assert complete.run_id == first.run_id
    assert complete.data["aborted"] is True
    assert complete.data["reason"] == "interrupted"
    assert complete.data["success"] is False
    assert events[4].run_id == second.run_id
    assert events[4].data["content"] == "now"
    # The interrupting start went ahead of the queue; the queued one still waits.
    assert reg.queued("s1") == 1
    reg.publish("s1", "complete", {})
    assert reg.running_run_id("s1") == queued.run_id


async def test_interrupt_with_nothing_running_starts(reg: MemoryRegistry) -> None:
    result = await reg.start("s1", owner="alice", content="one", policy="interrupt")
    assert result.status == "started"
    assert reg.stats.runs_completed == 0


async def test_unknown_policy_is_refused_and_kills_nothing(reg: MemoryRegistry) -> None:
    first = await reg.start("s1", owner="alice", content="one")
    with pytest.raises(ValueError, match="policy"):
        await reg.start("s1", owner="alice", content="two", policy="bogus")  # type: ignore[arg-type]
    assert reg.running_run_id("s1") == first.run_id
    assert reg.stats.runs_completed == 0


async def test_duplicate_client_msg_id_returns_the_original(reg: MemoryRegistry) -> None:
    first = await reg.start("s1", owner="alice", content="hi", client_msg_id="m1")
    again = await reg.start("s1", owner="alice", content="hi", client_msg_id="m1")
    assert again == (first.session_id, first.run_id, "duplicate")
    assert reg.stats.runs_started == 1
    assert reg.queued("s1") == 0
    sub = await reg.subscribe("s1", owner="alice")
    assert kinds(drain(sub)) == ["user_message"]

    # Still a duplicate once the run completed, and checked before the running-run policy.
    reg.publish("s1", "complete", {})
    assert await reg.start("s1", owner="alice", content="hi", client_msg_id="m1") == again
    second = await reg.start("s1", owner="alice", content="x", client_msg_id="m2")
    assert await reg.start("s1", owner="alice", content="x", client_msg_id="m1") == again
    assert second.status == "started"


async def test_duplicate_of_a_queued_start(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="one")
    queued = await reg.start(
        "s1", owner="alice", content="two", policy="enqueue", client_msg_id="m"
    )
    again = await reg.start("s1", owner="alice", content="two", policy="enqueue", client_msg_id="m")
    assert again == ("s1", queued.run_id, "duplicate")
    assert reg.queued("s1") == 1


async def test_client_msg_id_is_per_session(reg: MemoryRegistry) -> None:
    a = await reg.start("s1", owner="alice", content="hi", client_msg_id="m1")
    b = await reg.start("s2", owner="alice", content="hi", client_msg_id="m1")
    assert b.status == "started"
    assert b.run_id != a.run_id


async def test_refused_start_does_not_take_the_client_msg_id(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="one")
    with pytest.raises(RunInProgress):
        await reg.start("s1", owner="alice", content="two", client_msg_id="m")
    reg.publish("s1", "complete", {})
    retry = await reg.start("s1", owner="alice", content="two", client_msg_id="m")
    assert retry.status == "started"


async def test_user_message_carries_the_client_msg_id(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="hello", client_msg_id="m1")
    await reg.start("s2", owner="alice", content="bye")
    with_id = drain(await reg.subscribe("s1", owner="alice"))[0]
    without = drain(await reg.subscribe("s2", owner="alice"))[0]
    assert with_id.data == {"content": "hello", "client_msg_id": "m1"}
    assert without.data == {"content": "bye"}


async def test_duplicate_found_in_the_store(clock: ManualClock) -> None:
    store = FakeStore()
    first = MemoryRegistry(store=store, clock=clock)
    original = await first.start("s1", owner="alice", content="hi", client_msg_id="m1")
    # A new registry (as after a restart) shares only the store.
    second = MemoryRegistry(store=store, clock=clock)
    again = await second.start("s1", owner="alice", content="hi", client_msg_id="m1")
    assert again == ("s1", original.run_id, "duplicate")
    assert second.stats.runs_started == 0
    assert store.started[0][1] == "m1"


async def test_store_hears_of_each_start(sreg: MemoryRegistry, store: FakeStore) -> None:
    result = await sreg.start("s1", owner="alice", content="hi", provider="p", client_msg_id="m")
    [(summary, msg_id)] = store.started
    assert msg_id == "m"
    assert (summary.run_id, summary.session_id, summary.provider) == (result.run_id, "s1", "p")
    assert summary.status == "running"


async def test_listeners_hear_starts_and_finishes(reg: MemoryRegistry) -> None:
    heard: list[Notice] = []
    stop = reg.listen(heard.append)
    first = await reg.start("s1", owner="alice", content="hi")
    reg.publish("s1", "complete", {})
    stop()
    await reg.start("s1", owner="alice", content="unheard")
    runs = [n for n in heard if isinstance(n, RunNotice)]
    assert runs == heard
    assert [(n.kind, n.owner, n.run.run_id, n.run.status) for n in runs] == [
        ("run_started", "alice", first.run_id, "running"),
        ("run_finished", "alice", first.run_id, "completed"),
    ]


async def test_a_failing_listener_does_not_stop_the_run(
    reg: MemoryRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(notice: Notice) -> None:
        raise RuntimeError("listener broke")

    reg.listen(boom)
    result = await reg.start("s1", owner="alice", content="hi")
    assert reg.running_run_id("s1") == result.run_id
    assert "run listener failed" in caplog.text


async def test_source_needs_an_entered_registry(reg: MemoryRegistry) -> None:
    async def source(ctx: object) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        yield ("text", {})  # pragma: no cover - never called

    with pytest.raises(RuntimeError, match="async with"):
        await reg.start("s1", owner="alice", content="hi", source=source)
    assert reg.running_run_id("s1") is None


async def test_no_starts_after_shutdown(reg: MemoryRegistry) -> None:
    reg.shutdown()
    with pytest.raises(ShuttingDown):
        await reg.start("s1", owner="alice", content="hi")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buffer_size": 0}, "buffer_size"),
        ({"run_ttl": -1.0}, "run_ttl"),
        ({"queue_limit": -1}, "queue_limit"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MemoryRegistry(**kwargs)  # type: ignore[arg-type]
