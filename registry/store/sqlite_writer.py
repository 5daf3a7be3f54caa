"""SQLite's side of the group-commit writer: its statements, its errors, its checkpoints.

The writer's connection lives on a thread of its own (see ``sqlite_thread``), and a batch is
one job there: one transaction, committed. A batch of events alone (a run streaming) is a
single statement, a transaction of its own, that reads every row out of one JSON array
parameter; a batch with run starts or ends is ``BEGIN IMMEDIATE``, ``executemany`` for those,
the events' statement, ``COMMIT``. Copying the WAL back into the database runs on a
connection of its own beside the writer (see :meth:`SQLiteBackend.start`).

Why one statement for the events: the ``sqlite3`` module lets go of the GIL for each step of
a statement and must take it back afterwards, and ``executemany`` steps once per row. While
the event loop is busy, each taking back can wait for the loop to run out of work, so a
thousand rows would cost a thousand such waits. One statement is one step: SQLite parses the
array and inserts every row on the writer's thread without the GIL.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

import aiosqlite
import anyio
import msgspec

from .records import StoreStats
from .sql import SQLITE, Dialect, Params
from .sqlite_thread import WriterConnection
from .writer import EventRow, LogOp, Plan, Statements, batch_writes, op_writes

log = logging.getLogger("runwire.store")

# Errors that blame one operation's data (a constraint, a value SQLite cannot bind): that
# operation is isolated and skipped. Any other error (locked, busy, I/O, full disk, a
# damaged page) says nothing about the data: the batch is retried as it is.
REFUSED: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    TypeError,
    ValueError,
    OverflowError,
)
_json = msgspec.json.Encoder()
# Pages (roughly) committed before the background checkpoint runs: ~1 MB of WAL.
_CHECKPOINT_PAGES = 256

INSERT_SESSION_STUB = """
    INSERT INTO sessions (session_id, owner, provider, created_at, updated_at)
    VALUES (?, '', ?, ?, ?)
    ON CONFLICT (session_id) DO UPDATE SET updated_at = MAX(updated_at, excluded.updated_at)
"""
INSERT_RUN = """
    INSERT INTO runs (run_id, session_id, ord, provider, status, client_msg_id, started_at)
    VALUES (?, ?, ?, ?, 'running', ?, ?)
"""
# One parameter: a JSON array of rows, each an array in :data:`EventRow` order, ``data`` as
# a JSON string (its text, exactly as the registry encoded it).
INSERT_EVENTS = """
    INSERT INTO events (run_id, seq, kind, ts, data)
    SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 FROM json_each(?)
"""
SET_SESSION_PROVIDER_ID = "UPDATE sessions SET provider_session_id = ? WHERE session_id = ?"
SET_RUN_PROVIDER_ID = "UPDATE runs SET provider_session_id = ? WHERE run_id = ?"
END_RUN = """
    UPDATE runs SET status = 'completed', outcome = ?, exit_code = ?, error = ?,
        completed_at = ?, last_seq = MAX(last_seq, ?)
    WHERE run_id = ?
"""
END_RUN_SESSION = """
    UPDATE sessions SET updated_at = MAX(updated_at, ?1),
        unread_since = CASE WHEN ?2 THEN COALESCE(unread_since, ?1) ELSE unread_since END
    WHERE session_id = ?3
"""
STATEMENTS = Statements(
    INSERT_SESSION_STUB,
    INSERT_RUN,
    INSERT_EVENTS,
    SET_SESSION_PROVIDER_ID,
    SET_RUN_PROVIDER_ID,
    END_RUN,
    END_RUN_SESSION,
)


class SQLiteTx:
    """A connection as the shared queries use it (they bind ``:name``s): the writer's, or
    an aiosqlite one (the reader's)."""

    __slots__ = ("db",)

    def __init__(self, db: aiosqlite.Connection | WriterConnection) -> None:
        self.db = db

    @property
    def sql(self) -> Dialect:
        return SQLITE

    async def fetch(self, query: str, params: Params) -> list[Any]:
        db = self.db
        if isinstance(db, WriterConnection):
            return await db.fetch(query, params)
        return list(await db.execute_fetchall(query, params))

    async def execute(self, query: str, params: Params) -> int:
        db = self.db
        if isinstance(db, WriterConnection):
            return await db.execute(query, params)
        cursor = await db.execute(query, params)
        return cursor.rowcount


class SQLiteBackend:
    """The writer's connection to one SQLite file, and a checkpoint connection beside it."""

    refused = REFUSED

    def __init__(self, db: WriterConnection, checkpointer: aiosqlite.Connection, path: str) -> None:
        self.name = path
        self._db = db
        self._tx = SQLiteTx(db)
        self._checkpointer = checkpointer
        self._checkpoint_wanted = anyio.Event()
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._pages = 0
        self._writer_done = False
        self._stats: StoreStats | None = None

    async def begin(self) -> SQLiteTx:
        await self._db.execute("BEGIN IMMEDIATE")
        return self._tx

    async def execute(self, statement: str) -> None:
        await self._db.execute(statement)

    async def commit(self, plan: Plan) -> None:
        writes = [
            (statement, _rows_json(rows) if statement is INSERT_EVENTS else rows)
            for statement, rows in batch_writes(STATEMENTS, plan)
        ]
        await self._db.call(lambda conn: _commit(conn, writes))

    async def apply(self, op: LogOp, row: EventRow | None) -> None:
        for statement, params in op_writes(STATEMENTS, op, row):
            if statement is INSERT_EVENTS:
                await self._db.execute(statement, (_rows_json([params]),))
            else:
                await self._db.execute(statement, params)

    async def rollback(self) -> None:
        try:
            await self._db.call(_rollback)
        except sqlite3.Error as exc:
            log.error("rolling back a failed write to %s failed: %s", self.name, exc)

    def committed(self, plan: Plan) -> None:
        count = len(plan.events)
        # Each run written to dirties at least its leaf page; rows fill ~40 to a page.
        self._pages += len(plan.last_seq) + count // 40 + len(plan.ops) - count + 2
        if self._pages >= _CHECKPOINT_PAGES:
            self._pages = 0
            self._checkpoint_wanted.set()

    # The checkpoint beside the writer -----------------------------------------------------

    def start(self, stats: StoreStats) -> None:
        self._stats = stats
        self._checkpoint_task = asyncio.get_running_loop().create_task(
            self._checkpoint_forever(), name="runwire-store-checkpoint"
        )

    async def stop(self) -> None:
        task = self._checkpoint_task
        if task is None:
            return
        self._writer_done = True
        self._checkpoint_wanted.set()
        await asyncio.wait([task])
        self._checkpoint_task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("the store's %s task failed", task.get_name(), exc_info=task.exception())

    async def _checkpoint_forever(self) -> None:
        """Copy the WAL back into the database beside the writer, not inside its commits.

        A PASSIVE checkpoint on its own connection blocks neither the writer nor readers,
        so a commit never pays for the copy and its fsync (tens of ms). The writer's own
        auto-checkpoint stays on at a high mark as a backstop that bounds the WAL.
        """
        while True:
            await self._checkpoint_wanted.wait()
            self._checkpoint_wanted = anyio.Event()
            if self._writer_done:
                return
            try:
                await self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
                if self._stats is not None:
                    self._stats.checkpoints += 1
            except sqlite3.Error as exc:
                log.warning("checkpointing %s failed: %s", self.name, exc)


def _commit(conn: sqlite3.Connection, writes: list[tuple[str, Any]]) -> None:
    """A batch's writes, on the writer's thread: events are one JSON text, the rest rows."""
    if len(writes) == 1 and writes[0][0] is INSERT_EVENTS:
        # Only events: the statement is a transaction of its own.
        conn.execute(INSERT_EVENTS, (writes[0][1],))
        return
    conn.execute("BEGIN IMMEDIATE")
    for statement, rows in writes:
        if statement is INSERT_EVENTS:
            conn.execute(statement, (rows,))
        else:
            conn.executemany(statement, rows)
    conn.execute("COMMIT")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _rows_json(rows: list[Any]) -> str:
    """The parameter of :data:`INSERT_EVENTS`: text, since SQLite reads a blob as binary
    JSON (3.45 and later) or refuses it."""
    return _json.encode(rows).decode()
