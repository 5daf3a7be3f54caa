"""The in-memory state of one run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from .buffer import ReplayBuffer
from .events import Outcome, RunStatus, RunSummary

if TYPE_CHECKING:
    from .sessions import SessionState


ALL_DURABLE = 1 << 62


class Run:
    """One provider turn: its numbering, its buffer and how it ended.

    ``next`` links to the session's following run once that one starts, so a subscription
    can walk from run to run even after the registry has evicted the one it is reading.
    """

    __slots__ = (
        "buffer",
        "cancel_scope",
        "client_msg_id",
        "completed_at",
        "dropped",
        "durable",
        "next",
        "ordinal",
        "outcome",
        "pacing",
        "provider",
        "provider_session_id",
        "run_id",
        "session",
        "started_at",
        "status",
    )

    def __init__(
        self,
        session: SessionState,
        run_id: str,
        provider: str,
        started_at: int,
        buffer_size: int,
        client_msg_id: str | None,
        first_seq: int = 1,
    ) -> None:
        self.session = session
        self.run_id = run_id
        self.provider = provider
        self.started_at = started_at
        self.client_msg_id = client_msg_id
        self.buffer = ReplayBuffer(buffer_size, first_seq)
        self.status: RunStatus = "running"
        self.completed_at: int | None = None
        self.outcome: Outcome | None = None
        self.provider_session_id: str | None = None
        self.next: Run | None = None
        # Position among the runs its session state has started (0, 1, 2 ...).
        self.ordinal = session.started
        self.cancel_scope: anyio.CancelScope | None = None
        # Events refused because the run had already completed (late or duplicate complete).
        self.dropped = 0
        # The highest seq that may be delivered: events past it are not on disk yet. A
        # registry whose store does not report commits delivers everything at once.
        self.durable = ALL_DURABLE
        # While the source waits for the disk: the durable seq it waits for, and its wake-up.
        self.pacing: tuple[int, anyio.Event] | None = None

    @property
    def last_seq(self) -> int:
        return self.buffer.last_seq

    @property
    def done(self) -> bool:
        return self.status == "completed"

    def summary(self) -> RunSummary:
        return RunSummary(
            run_id=self.run_id,
            session_id=self.session.session_id,
            provider=self.provider,
            status=self.status,
            started_at=self.started_at,
            completed_at=self.completed_at,
            last_seq=self.buffer.last_seq,
            subscribers=len(self.session.subscriptions),
            outcome=self.outcome,
        )
