"""PostgreSQL's side of the group-commit writer: its statements, its errors, its connection.

A batch is one transaction on a connection of the writer's own: run starts and the rest
with pipelined ``executemany``, the events (nearly all of a batch) in a single ``INSERT``
of ``unnest``-ed arrays.

A connection can be lost under the writer (the server restarted, the backend was
terminated, the network went away). The writer then retries the batch as it retries any
failure, and :meth:`PostgresBackend.begin` connects again first, so queued writes are
committed once the database is back and never dropped while the process lives. A batch
whose ``COMMIT`` was sent when the connection died may have been committed after all, so
every log write here is idempotent: a repeated run start or event changes nothing
(``ON CONFLICT DO NOTHING``), provider ids and run ends set what they set before. The same
makes a run start that another process may already have recorded safe to write again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from .records import StoreStats
from .sql import POSTGRES, Dialect, Params, positional
from .writer import EventRow, LogOp, Plan, Statements, batch_writes, op_writes

log = logging.getLogger("runwire.store")

Connect = Callable[[], Awaitable[asyncpg.Connection]]

# Errors that blame one operation's data: a constraint, a value PostgreSQL will not take
# (a NUL character, a number out of range), a value too large to index, or one asyncpg
# cannot encode. Anything else (a lost connection, a timeout, a restarting server) says
# nothing about the data: the batch is retried as it is.
REFUSED: tuple[type[Exception], ...] = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.DataError,
    asyncpg.ProgramLimitExceededError,
    TypeError,
    ValueError,
    OverflowError,
)

INSERT_SESSION_STUB = """
    INSERT INTO sessions (session_id, owner, provider, created_at, updated_at)
    VALUES ($1, '', $2, $3, $4)
    ON CONFLICT (session_id) DO UPDATE
        SET updated_at = GREATEST(sessions.updated_at, excluded.updated_at)
"""
INSERT_RUN = """
    INSERT INTO runs (run_id, session_id, ord, provider, status, client_msg_id, started_at)
    VALUES ($1, $2, $3, $4, 'running', $5, $6)
    ON CONFLICT (run_id) DO NOTHING
"""
INSERT_EVENTS = """
    INSERT INTO events (run_id, seq, kind, ts, data)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[])
    ON CONFLICT (run_id, seq) DO NOTHING
"""
SET_SESSION_PROVIDER_ID = "UPDATE sessions SET provider_session_id = $1 WHERE session_id = $2"
SET_RUN_PROVIDER_ID = "UPDATE runs SET provider_session_id = $1 WHERE run_id = $2"
END_RUN = """
    UPDATE runs SET status = 'completed', outcome = $1, exit_code = $2, error = $3,
        completed_at = $4, last_seq = GREATEST(last_seq, $5)
    WHERE run_id = $6
"""
END_RUN_SESSION = """
    UPDATE sessions SET updated_at = GREATEST(updated_at, $1),
        unread_since = CASE WHEN $2 THEN COALESCE(unread_since, $1) ELSE unread_since END
    WHERE session_id = $3
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


class Unreachable(Exception):
    """The database could not be connected to; the message holds no password."""


class PgTx:
    """An asyncpg connection as the shared queries use it (their ``:name``s made ``$n``)."""

    __slots__ = ("conn",)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @property
    def sql(self) -> Dialect:
        return POSTGRES

    async def fetch(self, query: str, params: Params) -> list[Any]:
        text, args = positional(query, params)
        return list(await self.conn.fetch(text, *args))

    async def execute(self, query: str, params: Params) -> int:
        text, args = positional(query, params)
        return rowcount(await self.conn.execute(text, *args))


def rowcount(status: str) -> int:
    """The rows a command changed, from its status (``UPDATE 3``, ``INSERT 0 1``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresBackend:
    """The writer's own connection to a PostgreSQL database, made again when lost."""

    refused = REFUSED
    # One row per event: its commits cost the database's process, not this one.
    stretches = False

    def __init__(self, conn: asyncpg.Connection, connect: Connect, name: str) -> None:
        self.name = name
        self._conn: asyncpg.Connection | None = conn
        self._connect = connect

    @property
    def connection(self) -> asyncpg.Connection | None:
        """The connection now, if any."""
        return self._conn

    async def begin(self) -> PgTx:
        conn = self._conn
        if conn is None or conn.is_closed():
            # Lost since the last write: only ever made at open, and again here.
            self._conn = None
            conn = self._conn = await self._connect()
            log.warning("the store's writer is connected to %s again", self.name)
        await conn.execute("BEGIN")
        return PgTx(conn)

    async def execute(self, statement: str) -> None:
        await self._open().execute(statement)

    async def commit(self, plan: Plan) -> None:
        await self.begin()
        conn = self._open()
        for statement, rows in batch_writes(STATEMENTS, plan, plan.rows()):
            if statement is INSERT_EVENTS:
                await conn.execute(statement, *zip(*rows, strict=True))
            else:
                await conn.executemany(statement, rows)
        await self.execute("COMMIT")

    async def apply(self, op: LogOp, row: EventRow | None) -> None:
        conn = self._open()
        for statement, params in op_writes(STATEMENTS, op, row):
            if statement is INSERT_EVENTS:
                await conn.execute(statement, *([value] for value in params))
            else:
                await conn.execute(statement, *params)

    async def rollback(self) -> None:
        conn = self._conn
        if conn is None or conn.is_closed():
            self._drop()
            return
        if not conn.is_in_transaction():
            return
        try:
            await conn.execute("ROLLBACK")
        except Exception as exc:
            # A connection that cannot even roll back is of no more use: start afresh.
            log.warning("rolling back a write to %s failed (%s); reconnecting", self.name, exc)
            self._drop()

    def committed(self, plan: Plan) -> None:
        pass

    def start(self, stats: StoreStats) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def close(self, seconds: float) -> None:
        """Close the connection (the writer has stopped), within ``seconds``."""
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=seconds)
        except Exception:
            conn.terminate()

    def _open(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is None:
            raise asyncpg.InterfaceError("the writer's connection was lost")
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
