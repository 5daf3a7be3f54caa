"""SQLite's side of the group-commit writer: its statements, its errors, its checkpoints.

The writer's connection lives on a thread of its own (see ``sqlite_thread``), and a batch is
one job there: one ``BEGIN IMMEDIATE`` transaction, committed (a batch of events alone
that fits one statement is a transaction of its own). Its events go in as the log stores
them, a burst of streamed text as one row (see ``stretch``), by multi-row
``INSERT ... VALUES`` statements of up to :data:`ROWS_PER_STATEMENT` rows, in a few sizes
(see :func:`statement_sizes`); run starts, provider ids and run ends use
``executemany``. Copying the WAL back into the database runs on a connection of its own
beside the writer (see :meth:`SQLiteBackend.start`).

Why many rows per statement: the ``sqlite3`` module lets go of the GIL for each step of a
statement and must take it back afterwards, and ``executemany`` steps once per row. While
the event loop is busy, each taking back can wait for the loop to run out of work, so a
thousand rows would cost a thousand such waits; a few statements cost a few. SQLite also
inserts a statement's rows for about half the CPU of as many single-row steps.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import sqlite3
from typing import Any, NamedTuple

import aiosqlite
import anyio

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
INSERT_EVENT = "INSERT INTO events (run_id, seq, kind, ts, data) VALUES (?, ?, ?, ?, ?)"
# A batch's events go in as stored rows (see ``stretch``), with their span.
INSERT_ROWS = "INSERT INTO events (run_id, seq, kind, ts, data, span) VALUES (?, ?, ?, ?, ?, ?)"
# Rows per multi-row insert. After each statement the writer's thread waits to take the
# GIL back (about 0.4 ms on average while the loop is busy, at most the interpreter's 5 ms
# switch interval), so a batch goes fastest in few, big statements. But SQLite compiles a
# statement for ~2.5 µs a row, so they come in few sizes, all kept in the connection's
# statement cache (128): whole statements of this many rows, then the rest in at most
# two, a multiple of ROW_STEP rows and fewer than ROW_STEP.
ROWS_PER_STATEMENT = 1024
ROW_STEP = 64
# Bound parameters per stored row (a StoredRow).
_COLUMNS = 6
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
    INSERT_EVENT,
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
    stretches = True

    def __init__(
        self,
        db: WriterConnection,
        checkpointer: aiosqlite.Connection,
        path: str,
        rows_per_statement: int,
    ) -> None:
        self.name = path
        self._db = db
        self._rows_per_statement = rows_per_statement
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
        assert plan.stored is not None
        writes = batch_writes(STATEMENTS, plan, plan.stored)
        steps = _batch_steps(writes, self._rows_per_statement)
        await self._db.call(lambda conn: _commit(conn, steps))

    async def apply(self, op: LogOp, row: EventRow | None) -> None:
        for statement, params in op_writes(STATEMENTS, op, row):
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


class Step(NamedTuple):
    """One statement of a batch, with its parameters."""

    statement: str
    params: list[Any]
    many: bool
    """Run once per row of ``params`` (``executemany``), or once."""


def _batch_steps(
    writes: list[tuple[str, list[tuple[Any, ...]]]], rows_per_statement: int
) -> list[Step]:
    """A batch's statements with their parameters bound up, ready for :func:`_commit`.

    Made on the event loop, not on the writer's thread: the thread holds the GIL while it
    runs Python, and the loop, having handed it the batch, waits for the GIL meanwhile.
    The events come as stored rows (see ``stretch``), written by multi-row
    :data:`INSERT_ROWS` statements.
    """
    steps: list[Step] = []
    for statement, rows in writes:
        if statement is not INSERT_EVENT:
            steps.append(Step(statement, rows, True))
            continue
        params = list(itertools.chain.from_iterable(rows))
        start = 0
        for count in statement_sizes(len(rows), rows_per_statement):
            bound = params[start * _COLUMNS : (start + count) * _COLUMNS]
            steps.append(Step(_insert_rows(count), bound, False))
            start += count
    return steps


def statement_sizes(count: int, most: int) -> list[int]:
    """How many rows each insert of a batch of ``count`` events takes, ``most`` at most:
    ``most`` each, then the rest as a multiple of :data:`ROW_STEP` and a remainder."""
    step = min(ROW_STEP, most)
    whole, rest = divmod(count, most)
    sizes = [most] * whole
    if rest >= step:
        sizes.append(rest - rest % step)
    if rest % step:
        sizes.append(rest % step)
    return sizes


def _commit(conn: sqlite3.Connection, steps: list[Step]) -> None:
    """A batch's statements in one transaction, on the writer's thread."""
    if len(steps) == 1 and not steps[0].many:
        # Events alone, in one statement: a transaction of its own, and the thread takes
        # the GIL back once, not three times (a busy loop can make each a wait).
        conn.execute(steps[0].statement, steps[0].params)
        return
    conn.execute("BEGIN IMMEDIATE")
    for statement, params, many in steps:
        if many:
            conn.executemany(statement, params)
        else:
            conn.execute(statement, params)
    conn.execute("COMMIT")


def rows_per_statement(conn: sqlite3.Connection) -> int:
    """How many rows one statement inserts: :data:`ROWS_PER_STATEMENT`, or fewer where
    SQLite allows fewer bound parameters."""
    return min(ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _COLUMNS)


@functools.lru_cache(maxsize=128)
def _insert_rows(count: int) -> str:
    """A multi-row insert of ``count`` events."""
    return INSERT_ROWS + ", (?, ?, ?, ?, ?, ?)" * (count - 1)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
