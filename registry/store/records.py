"""What the store hands out besides events: session records and its own counters."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import msgspec

from ..events import Outcome, RunStatus, RunSummary, Turn

if TYPE_CHECKING:
    from .writer import Writer

SessionStatus = Literal["active", "locked", "archived"]
SESSION_STATUSES: tuple[SessionStatus, ...] = ("active", "locked", "archived")


class SessionRecord(msgspec.Struct, omit_defaults=False):
    """A session as the HTTP API shows it (``owner`` is for the server, not the wire)."""

    session_id: str
    owner: str
    title: str | None
    provider: str
    status: SessionStatus
    created_at: int
    updated_at: int
    has_unread: bool
    running_run_id: str | None
    # The handoff notes last written (summary, next_steps, blockers, context_for_next).
    handoff: dict[str, Any] | None = None
    # Where the session was forked from: {session_id, run_id, seq} (run_id and seq are
    # null when the fork copied nothing), or None.
    forked_from: dict[str, Any] | None = None


class SessionCursor(NamedTuple):
    """Where a page of a listing of sessions ended: its last session's sort key (the order is
    newest activity first, then newest created, then by id)."""

    updated_at: int
    created_at: int
    session_id: str

    @classmethod
    def of(cls, record: SessionRecord) -> SessionCursor:
        return cls(record.updated_at, record.created_at, record.session_id)


class StoreStats:
    """Counters of the store's writer, for metrics. Reading them costs nothing."""

    __slots__ = (
        "_writer",
        "checkpoints",
        "dropped",
        "events_written",
        "flush_latency_ms",
        "flushes",
        "last_flush_ms",
        "recovered_runs",
        "write_errors",
    )

    def __init__(self, writer: Writer, *, samples: int = 1024) -> None:
        self._writer = writer
        # Batches committed, and how long the last commit took (ms).
        self.flushes = 0
        self.last_flush_ms = 0.0
        # Per committed batch: the age of its oldest operation at commit (ms), newest last.
        # That is the batch's worst append-to-commit latency, so percentiles over these
        # samples are an upper bound on the per-event latency.
        self.flush_latency_ms: deque[float] = deque(maxlen=samples)
        self.events_written = 0
        # Failed write attempts (each is logged and retried), and operations given up on
        # (each is logged as an error with what was lost).
        self.write_errors = 0
        self.dropped = 0
        # Runs found running at open and ended with ``server_restart``.
        self.recovered_runs = 0
        # WAL checkpoints run beside the writer.
        self.checkpoints = 0

    @property
    def backlog(self) -> int:
        """Events queued for the disk and not yet committed."""
        return self._writer.backlog


def check_owner(owner: str) -> None:
    """Refuse an owner that is not a non-empty string."""
    if not isinstance(owner, str) or not owner:
        raise ValueError("owner must be a non-empty string")


def check_title(title: str | None) -> None:
    """Refuse a title that is neither a string nor ``None``."""
    if title is not None and not isinstance(title, str):
        raise ValueError("title must be a string or null")


def session_record(row: Any) -> SessionRecord:
    """A session from a row of the store's session columns."""
    sid, owner, title, provider, status, created_at, updated_at, unread, running = row[:9]
    handoff, forked_from = row[9:]
    return SessionRecord(
        sid,
        owner,
        title,
        provider,
        cast(SessionStatus, status),
        created_at,
        updated_at,
        bool(unread),
        running,
        msgspec.json.decode(handoff) if handoff is not None else None,
        msgspec.json.decode(forked_from) if forked_from is not None else None,
    )


def run_summary(row: Any) -> RunSummary:
    """A run from a row of the store's run columns (``subscribers`` is 0)."""
    run_id, session_id, provider, status, started_at, completed_at, last_seq, outcome = row
    return RunSummary(
        run_id=run_id,
        session_id=session_id,
        provider=provider,
        status=cast(RunStatus, status),
        started_at=started_at,
        completed_at=completed_at,
        last_seq=last_seq,
        subscribers=0,
        outcome=cast(Outcome | None, outcome),
    )


def turns_of(events: Iterable[tuple[str, str, dict[str, Any]]]) -> list[Turn]:
    """Turns from ``(run_id, kind, data)`` of completed runs' ``user_message``, ``text`` and
    ``text_delta`` events in order: each run's prompt, then its answer (its texts joined
    by lines, or else its deltas joined)."""
    turns: list[Turn] = []
    current: str | None = None
    texts: list[str] = []
    deltas: list[str] = []

    def close_run() -> None:
        answer = "\n".join(texts) if texts else "".join(deltas)
        if answer:
            turns.append(Turn("assistant", answer))

    for run_id, kind, data in events:
        if run_id != current:
            if current is not None:
                close_run()
            current, texts, deltas = run_id, [], []
        if kind == "user_message":
            content = data.get("content")
            if isinstance(content, str):
                turns.append(Turn("user", content))
            continue
        text = data.get("text")
        if isinstance(text, str):
            (texts if kind == "text" else deltas).append(text)
    if current is not None:
        close_run()
    return turns
