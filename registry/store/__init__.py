"""The durable side of runwire: sessions, runs and an append-only event log in SQLite.

``SQLiteStore`` implements the registry's :class:`~registry.hooks.Persistence`: events are
queued without waiting and committed in batches by one writer task; reads replay what the
registry's buffers no longer hold, across restarts.
"""

from .digest import Digest, RunFacts, ToolResult
from .errors import StoreError
from .fork import BadForkPoint, ForkPoint
from .records import SESSION_STATUSES, SessionRecord, SessionStatus, StoreStats
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
    "RunFacts",
    "SQLiteStore",
    "SessionRecord",
    "SessionStatus",
    "StoreError",
    "StoreStats",
    "ToolResult",
]
