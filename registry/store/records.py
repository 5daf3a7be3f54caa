"""What the store hands out besides events: session records and its own counters."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Literal

import msgspec

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
