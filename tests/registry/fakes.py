"""Test doubles and small helpers for the registry tests."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import strategies as st

from registry import Event, MemoryRegistry, NullPersistence, Position, RunSummary, Subscription
from registry.hooks import OnDurable


class Recorder(NullPersistence):
    """No store as far as the registry can tell (no history), but it keeps every event.

    Subclassing :class:`NullPersistence` keeps ``has_history`` false, so the registry
    behaves exactly as it does without a store while tests still see the ground truth.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []

    def append(self, event: Event) -> None:
        self.events.append(event)


class FakeStore:
    """An in-memory :class:`registry.Persistence` that records every call.

    ``read_history`` answers from the events it was given, like a store that flushed first.
    Set ``gate`` to make it wait (after setting ``reading``) until the test opens the gate;
    with ``snapshot`` it collects its answer before waiting, otherwise after.
    """

    def __init__(self, *, auto_durable: bool = True) -> None:
        self.events: list[Event] = []
        self.started: list[tuple[RunSummary, str | None]] = []
        self.completed: list[tuple[RunSummary, bool]] = []
        self.provider_ids: list[tuple[str, str, str]] = []
        self.history_calls: list[tuple[str, Position | None, Position | None]] = []
        self.auto_durable = auto_durable
        self.durable: dict[str, int] = {}
        self.fail_provider_session = False
        self.stale_latest = False
        self.gate: anyio.Event | None = None
        self.reading: anyio.Event | None = None
        self.snapshot = False
        # With ``gating``, the registry delivers only what flush() has made durable.
        self.gating = False
        self.urged = 0
        self.on_durable: OnDurable | None = None

    # Write side ----------------------------------------------------------------------

    def run_started(
        self, run: RunSummary, *, client_msg_id: str | None, ord: int | None = None
    ) -> None:
        self.started.append((run, client_msg_id))

    def append(self, event: Event) -> None:
        self.events.append(event)

    def append_many(self, events: list[Event]) -> None:
        self.events.extend(events)

    def run_completed(self, run: RunSummary, *, unread: bool) -> None:
        self.completed.append((run, unread))

    def provider_session(self, session_id: str, run_id: str, provider_session_id: str) -> None:
        self.provider_ids.append((session_id, run_id, provider_session_id))
        if self.fail_provider_session:
            raise RuntimeError("disk on fire")

    def durable_seq(self, run_id: str) -> int:
        if self.auto_durable:
            return self.appended_seq(run_id)
        return self.durable.get(run_id, 0)

    def watch_durable(self, callback: OnDurable) -> bool:
        self.on_durable = callback
        return self.gating

    def urge(self) -> None:
        self.urged += 1

    def flush(self) -> None:
        """Mark everything appended so far as durable (and say so, when gating)."""
        for event in self.events:
            self.durable[event.run_id] = event.seq
        if self.gating and self.on_durable is not None:
            for run_id, seq in list(self.durable.items()):
                self.on_durable(run_id, seq)

    # Read side -----------------------------------------------------------------------

    async def find_client_msg(self, session_id: str, client_msg_id: str) -> str | None:
        for run, msg_id in self.started:
            if run.session_id == session_id and msg_id == client_msg_id:
                return run.run_id
        return None

    async def latest_run(self, session_id: str) -> RunSummary | None:
        runs = [run for run, _ in self.started if run.session_id == session_id]
        if self.stale_latest:
            # A store whose newest run is not written yet: it answers with the one before.
            runs = runs[:-1]
        return runs[-1] if runs else None

    async def read_history(
        self,
        session_id: str,
        after: Position | None,
        before: Position | None,
        limit: int | None = None,
    ) -> list[Event] | None:
        self.history_calls.append((session_id, after, before))
        answer = self.history(session_id, after, before) if self.snapshot else None
        if self.gate is not None:
            if self.reading is not None:
                self.reading.set()
            await self.gate.wait()
        if not self.snapshot:
            answer = self.history(session_id, after, before)
        return answer if answer is None or limit is None else answer[:limit]

    # Helpers -------------------------------------------------------------------------

    def run_ids(self, session_id: str) -> list[str]:
        return [run.run_id for run, _ in self.started if run.session_id == session_id]

    def appended_seq(self, run_id: str) -> int:
        seqs = [e.seq for e in self.events if e.run_id == run_id]
        return max(seqs, default=0)

    def history(
        self, session_id: str, after: Position | None, before: Position | None
    ) -> list[Event] | None:
        order = {run_id: i for i, run_id in enumerate(self.run_ids(session_id))}
        if after is not None and after.run_id not in order:
            return None
        lo = (order[after.run_id], after.seq) if after is not None else (-1, 0)
        hi = (order[before.run_id], before.seq) if before is not None else (len(order), 0)
        return [
            e
            for e in self.events
            if e.session_id == session_id and lo < (order[e.run_id], e.seq) < hi
        ]


def drain(sub: Subscription) -> list[Event]:
    """Everything the subscription can deliver now (pull until empty)."""
    out: list[Event] = []
    while batch := sub.pull():
        out.extend(batch)
    return out


def positions(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.run_id, e.seq) for e in events]


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def publish_texts(reg: MemoryRegistry, session_id: str, count: int) -> list[Event]:
    """Publish ``count`` text events to the session's running run; return them."""
    out: list[Event] = []
    for i in range(count):
        event = reg.publish(session_id, "text", {"text": f"t{i}"})
        assert event is not None
        out.append(event)
    return out


async def run_once(
    reg: MemoryRegistry, session_id: str, texts: int = 0, *, owner: str = "alice", **data: Any
) -> str:
    """Start a run, publish ``texts`` text events and complete it; return its run_id."""
    result = await reg.start(session_id, owner=owner, content="go")
    assert result.status == "started"
    publish_texts(reg, session_id, texts)
    assert reg.publish(session_id, "complete", dict(data)) is not None
    return result.run_id


def nested_past_any_limit() -> dict[str, Any]:
    """Data nested deeper than the interpreter's recursion limit: JSON in principle, but
    neither msgspec nor ``repr`` can take it."""
    data: dict[str, Any] = {}
    for _ in range(100_000):
        data = {"k": data}
    return data


NOT_JSON = [
    pytest.param(lambda: {"content": object()}, id="an-object"),
    pytest.param(nested_past_any_limit, id="nested-past-the-recursion-limit"),
]
"""Data a source may yield that cannot be JSON, made fresh for each use."""


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
"""Any value that JSON holds exactly as given (no NaN or infinity)."""
