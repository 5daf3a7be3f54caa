"""What the registry asks of a store, and the store it uses when it has none.

The registry never waits for the disk while publishing: the write side is a set of
synchronous ``*_nowait``-style calls that only enqueue. The read side is async and is used
off the hot path (a subscribe whose position is older than memory, an idempotency check).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .events import Event, Position, RunSummary

OnDurable = Callable[[str, int], bool | None]
"""``callback(run_id, seq)``, called after a commit made ``run_id``'s events up to ``seq``
durable. It returns whether that woke anyone waiting for them (``None``: nobody)."""


class Persistence(Protocol):
    """The store as the registry sees it. Implemented by :class:`registry.store.SQLiteStore`
    and :class:`registry.store.PostgresStore`."""

    def run_started(
        self, run: RunSummary, *, client_msg_id: str | None, ord: int | None = None
    ) -> None:
        """Record a new run (status ``running``). Must not block.

        ``ord`` is the run's place in its session's start order when the caller numbers
        starts itself (several processes share one database and number them in one shared
        place); ``None`` lets the store number it."""

    def append(self, event: Event) -> None:
        """Queue an event for the durable log. Must not block. Called in seq order."""

    def append_many(self, events: list[Event]) -> None:
        """Queue several events of one run, in seq order: :meth:`append` for a burst."""

    def run_completed(self, run: RunSummary, *, unread: bool) -> None:
        """Record a run's outcome; ``unread`` when nobody was subscribed to its session."""

    def provider_session(self, session_id: str, run_id: str, provider_session_id: str) -> None:
        """Record the provider-native session id a run announced. Must not block or raise."""

    def durable_seq(self, run_id: str) -> int:
        """The highest seq of ``run_id`` known to be on disk (0 for none)."""

    def watch_durable(self, callback: OnDurable) -> bool:
        """Arrange for ``callback(run_id, seq)`` after each commit that makes a run's events
        up to ``seq`` durable. Returns whether it will: a registry whose store does, delivers
        an event only once it is on disk, so a client never holds an event that a crash
        could lose (and a restarted run's ``complete`` never reuses a seq a client saw).

        When the callback says it woke someone, the store may give them time to be served
        before its next commit (the SQLite and PostgreSQL stores wait their flush delay).
        """

    def urge(self) -> None:
        """Write what is queued now rather than after the batching delay. Called when a
        run's source got far ahead of the disk and waits for its commits."""

    async def find_client_msg(self, session_id: str, client_msg_id: str) -> str | None:
        """The run_id of the run a ``client_msg_id`` already started in the session, if any."""

    async def latest_run(self, session_id: str) -> RunSummary | None:
        """The session's newest run as stored, if any."""

    async def read_history(
        self,
        session_id: str,
        after: Position | None,
        before: Position | None,
        limit: int | None = None,
    ) -> list[Event] | None:
        """The session's events strictly after ``after`` and strictly before ``before``, the
        first ``limit`` of them (``None``: all).

        ``after=None`` means from the start of the session's first run; ``before=None`` means
        to the end of the log. Runs come in start order, events in seq order. Returns ``None``
        when ``after`` names a run that is not the session's (an unknown position).
        Implementations flush pending writes first, so every published event is readable.
        """


class NullPersistence:
    """No store: nothing is persisted and nothing older than memory can be replayed."""

    def run_started(
        self, run: RunSummary, *, client_msg_id: str | None, ord: int | None = None
    ) -> None:
        pass

    def append(self, event: Event) -> None:
        pass

    def append_many(self, events: list[Event]) -> None:
        for event in events:
            self.append(event)

    def run_completed(self, run: RunSummary, *, unread: bool) -> None:
        pass

    def provider_session(self, session_id: str, run_id: str, provider_session_id: str) -> None:
        pass

    def durable_seq(self, run_id: str) -> int:
        # Nothing will ever be on disk, so nothing is waited for: eviction goes by TTL alone.
        return 1 << 62

    def watch_durable(self, callback: OnDurable) -> bool:
        return False

    def urge(self) -> None:
        pass

    async def find_client_msg(self, session_id: str, client_msg_id: str) -> str | None:
        return None

    async def latest_run(self, session_id: str) -> RunSummary | None:
        return None

    async def read_history(
        self,
        session_id: str,
        after: Position | None,
        before: Position | None,
        limit: int | None = None,
    ) -> list[Event] | None:
        raise NotImplementedError


def has_history(store: Persistence) -> bool:
    """Whether ``store`` can replay events that memory no longer holds."""
    return not isinstance(store, NullPersistence)
