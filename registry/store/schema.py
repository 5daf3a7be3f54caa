"""The database schema as an ordered list of migrations, applied at open.

Schema version ``n`` is what ``MIGRATIONS[:n]`` make of an empty database, and
``PRAGMA user_version`` records ``n``. To change the schema, append a migration (a tuple of
statements); never edit one that has shipped. Opening applies the missing ones in a single
transaction, so a failed upgrade leaves the file at its old version.
"""

from __future__ import annotations

import aiosqlite

Migration = tuple[str, ...]

_V1: Migration = (
    """
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        provider TEXT NOT NULL,
        provider_session_id TEXT,
        title TEXT,
        status TEXT NOT NULL DEFAULT 'active'
            CHECK (status IN ('active', 'locked', 'archived')),
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        unread_since INTEGER
    )
    """,
    "CREATE INDEX sessions_by_activity ON sessions (owner, updated_at DESC)",
    "CREATE INDEX sessions_by_provider_session ON sessions (provider_session_id)",
    # ``ord`` is the start order, assigned by the store: run ids minted in the same
    # millisecond do not sort by start. Unique per session, which also tells the planner
    # that (session, ord) then seq is already in order: history reads need no sort.
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
        ord INTEGER NOT NULL,
        provider TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'completed')),
        outcome TEXT
            CHECK (outcome IN ('done', 'aborted', 'interrupted', 'error', 'server_restart')),
        exit_code INTEGER,
        error TEXT,
        client_msg_id TEXT,
        provider_session_id TEXT,
        last_seq INTEGER NOT NULL DEFAULT 0,
        started_at INTEGER NOT NULL,
        completed_at INTEGER
    ) WITHOUT ROWID
    """,
    "CREATE UNIQUE INDEX runs_by_session ON runs (session_id, ord)",
    """
    CREATE UNIQUE INDEX runs_by_client_msg ON runs (session_id, client_msg_id)
        WHERE client_msg_id IS NOT NULL
    """,
    "CREATE INDEX runs_running ON runs (status) WHERE status = 'running'",
    """
    CREATE TABLE events (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        seq INTEGER NOT NULL CHECK (seq >= 1),
        kind TEXT NOT NULL,
        ts INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID
    """,
    # The log is append-only: an event is never changed, and only leaves with its run
    # (deleting a session cascades; by then the run row is gone and the trigger allows it).
    """
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN
        SELECT RAISE(ABORT, 'events are append-only: they cannot be updated');
    END
    """,
    """
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    WHEN EXISTS (SELECT 1 FROM runs WHERE run_id = OLD.run_id)
    BEGIN
        SELECT RAISE(ABORT, 'events are append-only: delete the session instead');
    END
    """,
)

# Handoff notes on a session: a JSON object, or NULL when none were written.
_V2: Migration = ("ALTER TABLE sessions ADD COLUMN handoff TEXT",)

# Events by kind within a run: a session's totals per kind are read off this index without
# touching event data, and the filtered reads (tool uses, errors, ``?kinds=``) seek to
# their kind in each run instead of scanning it.
_V3: Migration = ("CREATE INDEX events_by_kind ON events (run_id, kind)",)

# Forks: where a session was forked from ({session_id, run_id, seq} as JSON), and how its
# provider continues the conversation (a ForkOrigin as JSON); both NULL for other sessions.
_V4: Migration = (
    "ALTER TABLE sessions ADD COLUMN forked_from TEXT",
    "ALTER TABLE sessions ADD COLUMN fork_origin TEXT",
)

# Stretches (see ``stretch``): a row holds the events ``seq - span + 1 .. seq``; rows
# written before are one event each.
_V5: Migration = (
    "ALTER TABLE events ADD COLUMN span INTEGER NOT NULL DEFAULT 1 CHECK (span BETWEEN 1 AND seq)",
)

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3, _V4, _V5)
"""``MIGRATIONS[n]`` takes a database from version ``n`` to ``n + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)


class NewerSchema(Exception):
    """The database was written by a newer runwire: its version is past the newest this code
    knows (:data:`SCHEMA_VERSION` for a SQLite file)."""

    def __init__(self, version: int, *, newest: int = SCHEMA_VERSION, place: str = "file") -> None:
        super().__init__(
            f"schema version {version} is newer than this runwire supports "
            f"({newest}); upgrade runwire or use another {place}"
        )
        self.version = version


async def schema_version(db: aiosqlite.Connection) -> int:
    """The file's ``PRAGMA user_version``."""
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def migrate(db: aiosqlite.Connection, *, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to version ``target`` in one transaction; return how many
    migrations ran (0 when it is already there).

    ``db`` must be in autocommit mode (``isolation_level=None``). Raises
    :class:`NewerSchema` for a file past the newest version this code knows.
    """
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"target must be between 0 and {SCHEMA_VERSION}")
    # IMMEDIATE: two processes opening the same new file do not both migrate it.
    await db.execute("BEGIN IMMEDIATE")
    try:
        version = await schema_version(db)
        if version > SCHEMA_VERSION:
            raise NewerSchema(version)
        for number in range(version, target):
            for statement in MIGRATIONS[number]:
                await db.execute(statement)
        if target > version:
            # PRAGMA takes no bound parameters; this is our own integer.
            await db.execute(f"PRAGMA user_version = {int(target)}")
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    return max(0, target - version)
