"""The PostgreSQL schema as an ordered list of migrations, applied at open.

Versioned as :mod:`registry.store.schema` is for SQLite: version ``n`` is what
``MIGRATIONS[:n]`` make of an empty database, recorded in the one row of
``runwire_schema``. To change the schema, append a migration; never edit one that has
shipped. Opening applies the missing ones in a single transaction, so a failed upgrade
leaves the database at its old version.

Several processes may open one database at once: the migrating transaction first takes a
transaction-level advisory lock, so one of them migrates while the others wait and then
find nothing left to do.

Version 1 is the whole of SQLite's version 4, in PostgreSQL's terms: 64-bit integers for
times, seqs and start orders, ``C`` collation on ids (byte order, as SQLite sorts), event
data as JSON text exactly as the registry encoded it, and the append-only rule of the log
as a trigger. Version 2 follows SQLite's version 5.
"""

from __future__ import annotations

import asyncpg

from .schema import Migration, NewerSchema

# pg_advisory_xact_lock key of the migrations (the bytes of "runwire1").
MIGRATION_LOCK = 0x72756E7769726531

_V1: Migration = (
    """
    CREATE TABLE sessions (
        session_id TEXT COLLATE "C" PRIMARY KEY,
        owner TEXT COLLATE "C" NOT NULL,
        provider TEXT NOT NULL,
        provider_session_id TEXT,
        title TEXT,
        status TEXT NOT NULL DEFAULT 'active'
            CHECK (status IN ('active', 'locked', 'archived')),
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        unread_since BIGINT,
        handoff TEXT,
        forked_from TEXT,
        fork_origin TEXT
    )
    """,
    "CREATE INDEX sessions_by_activity ON sessions (owner, updated_at DESC)",
    "CREATE INDEX sessions_by_provider_session ON sessions (provider_session_id)",
    # ``ord`` is the start order (see the SQLite schema); unique per session.
    """
    CREATE TABLE runs (
        run_id TEXT COLLATE "C" PRIMARY KEY,
        session_id TEXT COLLATE "C" NOT NULL
            REFERENCES sessions (session_id) ON DELETE CASCADE,
        ord BIGINT NOT NULL,
        provider TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'completed')),
        outcome TEXT
            CHECK (outcome IN ('done', 'aborted', 'interrupted', 'error', 'server_restart')),
        exit_code BIGINT,
        error TEXT,
        client_msg_id TEXT COLLATE "C",
        provider_session_id TEXT,
        last_seq BIGINT NOT NULL DEFAULT 0,
        started_at BIGINT NOT NULL,
        completed_at BIGINT
    )
    """,
    "CREATE UNIQUE INDEX runs_by_session ON runs (session_id, ord)",
    """
    CREATE UNIQUE INDEX runs_by_client_msg ON runs (session_id, client_msg_id)
        WHERE client_msg_id IS NOT NULL
    """,
    "CREATE INDEX runs_running ON runs (status) WHERE status = 'running'",
    """
    CREATE TABLE events (
        run_id TEXT COLLATE "C" NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        seq BIGINT NOT NULL CHECK (seq >= 1),
        kind TEXT COLLATE "C" NOT NULL,
        ts BIGINT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    )
    """,
    "CREATE INDEX events_by_kind ON events (run_id, kind)",
    # The log is append-only: an event is never changed, and only leaves with its run
    # (deleting a session cascades; by then the run row is gone and the trigger allows it).
    # The error is a constraint violation, so a writer would treat it as refused data.
    """
    CREATE FUNCTION runwire_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' THEN
            RAISE EXCEPTION 'events are append-only: they cannot be updated'
                USING ERRCODE = 'restrict_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM runs WHERE run_id = OLD.run_id) THEN
            RAISE EXCEPTION 'events are append-only: delete the session instead'
                USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN OLD;
    END
    $$
    """,
    """
    CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
        FOR EACH ROW EXECUTE FUNCTION runwire_events_append_only()
    """,
)

# SQLite's version 5: a row may hold a stretch of events (see ``stretch``). This writer
# stores one event per row, but the readers are shared.
_V2: Migration = (
    "ALTER TABLE events ADD COLUMN span BIGINT NOT NULL DEFAULT 1 CHECK (span BETWEEN 1 AND seq)",
)

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2)
"""``MIGRATIONS[n]`` takes a database from version ``n`` to ``n + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)


async def schema_version(db: asyncpg.Connection) -> int:
    """The database's recorded version (0 for a database runwire never opened)."""
    exists = await db.fetchval("SELECT to_regclass('runwire_schema') IS NOT NULL")
    if not exists:
        return 0
    version = await db.fetchval("SELECT max(version) FROM runwire_schema")
    return int(version or 0)


async def migrate(db: asyncpg.Connection, *, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to version ``target`` in one transaction; return how many
    migrations ran (0 when it is already there).

    Raises :class:`~registry.store.schema.NewerSchema` for a database past the newest
    version this code knows.
    """
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"target must be between 0 and {SCHEMA_VERSION}")
    async with db.transaction():
        # Held to the end of the transaction: concurrent opens migrate one at a time.
        await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        version = await schema_version(db)
        if version > SCHEMA_VERSION:
            raise NewerSchema(version, newest=SCHEMA_VERSION, place="database")
        for number in range(version, target):
            for statement in MIGRATIONS[number]:
                await db.execute(statement)
        if target > version:
            await db.execute("CREATE TABLE IF NOT EXISTS runwire_schema (version INTEGER NOT NULL)")
            await db.execute("DELETE FROM runwire_schema")
            await db.execute("INSERT INTO runwire_schema (version) VALUES ($1)", target)
    return max(0, target - version)
