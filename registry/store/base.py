"""What the gateway and the providers use of a store, whichever database is behind it.

:class:`Store` is the registry's :class:`~registry.hooks.Persistence` plus the rest of the
public API that :class:`~registry.store.SQLiteStore` and
:class:`~registry.store.PostgresStore` share, with the same semantics: code written
against it runs on either. How a store is opened (a file path, a URL) is each class's own.
"""

from __future__ import annotations

from collections.abc import Collection
from types import TracebackType
from typing import Any, Protocol, Self

from ..events import Event, ForkOrigin, Position, RunSummary, Turn
from ..hooks import Persistence
from .digest import Digest
from .fork import ForkPoint
from .records import SessionCursor, SessionRecord, StoreStats


class Store(Persistence, Protocol):
    """A durable store of sessions, runs and events. Database failures raise
    :class:`~registry.store.StoreError`; bad arguments raise ``ValueError``."""

    # Lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Write everything queued, stop the writer and close the connections. Idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    @property
    def stats(self) -> StoreStats:
        """The writer's counters; ``stats.backlog`` is the events not yet committed."""
        ...

    async def flush(self) -> None:
        """Return once everything queued before this call is committed."""
        ...

    async def max_ord(self) -> int:
        """The highest start order any run has (0 for none): where a shared counter of
        start orders begins."""
        ...

    # Runs and history --------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunSummary | None:
        """A run's summary as stored (``subscribers`` is 0)."""
        ...

    async def history_page(
        self,
        session_id: str,
        *,
        after: Position | None,
        limit: int,
        kinds: Collection[str] | None = None,
    ) -> tuple[list[Event], Position | None]:
        """Up to ``limit`` events after ``after``, and the position of the next page (or
        ``None``). Raises :class:`~registry.errors.UnknownRun` for a foreign ``after``."""
        ...

    async def digest(
        self,
        session_id: str,
        *,
        file_tools: Collection[str] = (),
        recent: int = 20,
        max_checkpoints: int = 100,
    ) -> Digest:
        """What the session's log says about it (see :mod:`registry.store.digest`)."""
        ...

    # providers.ConversationStore ---------------------------------------------------------

    async def resume_id(self, session_id: str) -> str | None:
        """The provider session id the session's next run should resume."""
        ...

    async def fork_origin(self, session_id: str) -> ForkOrigin | None:
        """How a forked session's provider continues its source's conversation."""
        ...

    async def turns(self, session_id: str) -> list[Turn]:
        """The session's finished exchanges, oldest first."""
        ...

    # Sessions ----------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        owner: str,
        provider: str,
        title: str | None = None,
        session_id: str | None = None,
    ) -> SessionRecord:
        """Create an ``active`` session. Raises ``ValueError`` when ``session_id`` is taken."""
        ...

    async def get_session(self, session_id: str, *, owner: str) -> SessionRecord | None:
        """The session, or ``None`` when it does not exist or belongs to someone else."""
        ...

    async def list_sessions(
        self, *, owner: str, after: SessionCursor | None = None, limit: int | None = None
    ) -> list[SessionRecord]:
        """The owner's sessions, most recent activity first: those past ``after`` (where an
        earlier page ended), ``limit`` at most (``None``: all)."""
        ...

    async def update_session(
        self,
        session_id: str,
        *,
        owner: str,
        title: str | None = None,
        status: str | None = None,
    ) -> SessionRecord | None:
        """Change the title and/or status; ``None`` when the session is not the owner's."""
        ...

    async def set_handoff(
        self, session_id: str, *, owner: str, handoff: dict[str, Any]
    ) -> SessionRecord | None:
        """Store the session's handoff notes; ``None`` when it is not the owner's."""
        ...

    async def fork_session(
        self,
        session_id: str,
        *,
        owner: str,
        at: ForkPoint | None = None,
        title: str | None = None,
    ) -> SessionRecord | None:
        """A new session whose log is a copy of this one's up to ``at``; ``None`` when the
        session is not the owner's. Raises :class:`~registry.store.BadForkPoint`."""
        ...

    async def set_fork_summary(self, session_id: str, summary: str) -> None:
        """Store the summary a forked session's provider starts from."""
        ...

    async def delete_session(self, session_id: str, *, owner: str) -> bool:
        """Delete the session with its runs and events; ``False`` when not the owner's."""
        ...

    async def mark_read(self, session_id: str, *, owner: str) -> bool:
        """Clear the session's unread mark; ``False`` when it is not the owner's."""
        ...
