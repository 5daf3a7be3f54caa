"""A run this process accepted: it drives the run's source and writes the run's log."""

from __future__ import annotations

import anyio

from ..sessions import RunContext, Source


class Owned:
    """One run accepted here, from the send until its end is written to the database.

    A started run is driven at once; a queued one once Redis starts it (ending the run
    before it). Either way it begins when this process's mirror adopts it, that is when
    its ``user_message`` comes back over pub/sub, so the log is written in seq order.
    """

    __slots__ = (
        "adopted",
        "context",
        "ended",
        "last_appended",
        "pacing",
        "provider",
        "run_id",
        "scope",
        "session_id",
        "source",
        "started_at",
    )

    def __init__(
        self, context: RunContext, source: Source | None, *, provider: str, started_at: int
    ) -> None:
        self.context = context
        self.run_id = context.run_id
        self.session_id = context.session_id
        self.source = source
        self.provider = provider
        # When it was accepted (ms); its start in Redis may come later (queued).
        self.started_at = started_at
        # Set when the mirror adopts the run (its first event is here and being written).
        self.adopted = anyio.Event()
        # Set when the mirror has the run's complete (whoever appended it).
        self.ended = anyio.Event()
        # The cancel scope of the task driving the source, while it runs.
        self.scope: anyio.CancelScope | None = None
        # The highest seq this process appended to the run in Redis.
        self.last_appended = 1
        # While the driver waits for the database: the durable seq it waits for, and its
        # wake-up.
        self.pacing: tuple[int, anyio.Event] | None = None

    @property
    def running(self) -> bool:
        """Started and not ended."""
        return self.adopted.is_set() and not self.ended.is_set()
