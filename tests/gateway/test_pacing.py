"""A source is held back while too many of its events are not on disk."""

from __future__ import annotations

from gateway.pacing import paced
from registry import RunContext


class FakeLog:
    """Commits only when flushed: everything produced so far becomes durable."""

    def __init__(self) -> None:
        self.durable = 0
        self.produced = 1  # The user_message.
        self.flushes: list[int] = []

    def durable_seq(self, run_id: str) -> int:
        return self.durable

    async def flush(self) -> None:
        self.flushes.append(self.produced)
        self.durable = self.produced


async def test_paced_source_waits_for_the_log_when_too_far_ahead():
    log = FakeLog()

    async def source(context: RunContext):
        for index in range(10):
            log.produced += 1
            yield "text_delta", {"text": str(index)}

    context = RunContext("s", "r", "alice", "hi", None)
    items = [item async for item in paced(source, log, ahead=3)(context)]
    assert [data["text"] for _, data in items] == [str(i) for i in range(10)]
    # Flushed each time more than three events were not durable: at seqs 4 and 8.
    assert log.flushes == [4, 8]


async def test_paced_source_never_waits_while_the_log_keeps_up():
    log = FakeLog()

    async def source(context: RunContext):
        for _ in range(100):
            log.produced += 1
            log.durable = log.produced  # Committed at once.
            yield "text_delta", {"text": "x"}

    context = RunContext("s", "r", "alice", "hi", None)
    assert len([item async for item in paced(source, log, ahead=3)(context)]) == 100
    assert log.flushes == []
