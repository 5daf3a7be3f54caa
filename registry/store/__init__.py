"""The durable side of runwire: sessions, runs and an append-only event log in SQLite, or
in PostgreSQL for several processes sharing one database.

``SQLiteStore`` and ``PostgresStore`` implement the registry's
:class:`~registry.hooks.Persistence` and the rest of :class:`Store`: events are queued
without waiting and committed in batches by one writer task; reads replay what the
registry's buffers no longer hold, across restarts.

``PostgresStore`` is imported on first use, so that a process on SQLite never loads the
PostgreSQL driver.
"""

from typing import TYPE_CHECKING

from .base import Store
from .digest import Digest, RunFacts, ToolResult
from .errors import StoreError
from .fork import BadForkPoint, ForkPoint
from .records import SESSION_STATUSES, SessionCursor, SessionRecord, SessionStatus, StoreStats
from .schema import MIGRATIONS, SCHEMA_VERSION
from .sqlite import DEFAULT_PATH, SQLiteStore

__all__ = [
    "DEFAULT_PATH",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SESSION_STATUSES",
    "BadForkPoint",
    "Digest",
    "ForkPoint",
    "PostgresStore",
    "RunFacts",
    "SQLiteStore",
    "SessionCursor",
    "SessionRecord",
    "SessionStatus",
    "Store",
    "StoreError",
    "StoreStats",
    "ToolResult",
]

if TYPE_CHECKING:
    from .postgres import PostgresStore

    # mypy --strict checks here that both stores are a Store.
    def _both_are_stores(sqlite: SQLiteStore, postgres: PostgresStore) -> tuple[Store, Store]:
        return sqlite, postgres


def __getattr__(name: str) -> object:
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
