"""The SQLite store: sessions, runs and the append-only event log in one file.

Writes go through the group-commit :class:`~registry.store.writer.Writer` (one connection,
one task); reads use a second connection, which WAL lets run beside the writer, and a third
copies the WAL back into the file in the background. Every read that must see what was just
published flushes the writer first. One store per file at a time, which a lock on the file
enforces: opening ends the runs the file says are running, so a second server on a file in
use would end the first one's live runs as crashed. What a store does is
:class:`~registry.store.logstore.LogStore`'s; this module opens the file and connects it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import aiosqlite

from ..clock import Clock, SystemClock, to_ms
from .errors import StoreError
from .logstore import LogStore
from .recovery import end_running_runs
from .schema import NewerSchema, migrate
from .sql import SQLITE, Dialect, Params
from .sqlite_thread import WriterConnection
from .sqlite_writer import SQLiteBackend, SQLiteTx, rows_per_statement
from .writer import Writer

log = logging.getLogger("runwire.store")

DEFAULT_PATH = "runwire.db"


class SQLiteStore(LogStore):
    """Durable sessions, runs and events in a SQLite file; the registry's
    :class:`~registry.Persistence`.

    Open with :meth:`open` and end with :meth:`close` (or ``async with``). The write side
    (``run_started``, ``append``, ``run_completed``, ``provider_session``) only queues and
    never raises; session changes are awaited and ordered after everything queued before
    them.
    """

    sql: ClassVar[Dialect] = SQLITE
    constraint_errors = (sqlite3.IntegrityError,)
    database_errors = (sqlite3.Error,)

    def __init__(
        self,
        path: str,
        writer_db: WriterConnection,
        connections: tuple[aiosqlite.Connection, ...],
        reader_db: aiosqlite.Connection,
        writer: Writer,
        clock: Clock,
        next_ord: int,
        lock: int,
    ) -> None:
        # Use open(): it migrates, recovers and starts the writer.
        super().__init__(path, writer, clock, next_ord)
        self.path = path
        self._writer_db = writer_db
        self._connections = connections
        self._reader = SQLiteTx(reader_db)
        self._lock = lock

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        clock: Clock | None = None,
        flush_delay: float = 0.02,
        batch_size: int = 1000,
        busy_timeout: float = 5.0,
    ) -> SQLiteStore:
        """Open (or create) the database at ``path``: migrate it, end the runs a crash left
        running, and start the writer. Raises :class:`StoreError` naming the path when the
        file cannot be used, or is open in another store (of this process or another)."""
        if flush_delay < 0:
            raise ValueError("flush_delay must not be negative")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if busy_timeout < 0:
            raise ValueError("busy_timeout must not be negative")
        name = os.fspath(path)
        _check_path(name)
        clock = clock if clock is not None else SystemClock()
        lock = _lock(name)
        # The schema is made on an aiosqlite connection; the writer's own connection then
        # takes over (see sqlite_thread) and the setup connection is closed last.
        others: list[aiosqlite.Connection] = []
        writer_db: WriterConnection | None = None
        setup_db: aiosqlite.Connection | None = None
        try:
            setup_db = await _connect(name, busy_timeout)
            await _setup_file(setup_db, name)
            writer_db = await WriterConnection.open(name, _writer_settings(busy_timeout))
            recovered = await _recover(writer_db, to_ms(clock.now()))
            next_ord = await _max_ord(writer_db)
            rows = await writer_db.call(rows_per_statement)
            reader_db = await _connect(name, busy_timeout)
            others.append(reader_db)
            await reader_db.execute("PRAGMA query_only = ON")
            checkpoint_db = await _connect(name, busy_timeout)
            others.append(checkpoint_db)
        except BaseException as exc:
            for db in others:
                await db.close()
            if writer_db is not None:
                await writer_db.close()
            if setup_db is not None:
                await setup_db.close()
            os.close(lock)
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{name}: cannot open the database: {exc}") from exc
            raise
        await setup_db.close()
        writer = Writer(
            SQLiteBackend(writer_db, checkpoint_db, name, rows),
            flush_delay=flush_delay,
            batch_size=batch_size,
            # At most one insert statement's worth: the writer's thread takes the GIL back
            # after each statement, and a run's source waits for the whole batch's commit.
            # Measured (bench.ws_bench, bench.store_bench's 100 concurrent runs), commits of
            # up to 1,024 events beat commits of up to 8,000, even for a backlog.
            max_batch=min(batch_size * 8, rows),
        )
        writer.stats.recovered_runs = recovered
        store = cls(name, writer_db, tuple(others), reader_db, writer, clock, next_ord, lock)
        writer.start()
        if recovered:
            log.warning("%s: ended %d runs left running by a crash", name, recovered)
        return store

    async def max_ord(self) -> int:
        """The highest start order allocated: runs stored at open, and started since."""
        return self._next_ord

    async def _disconnect(self) -> None:
        # The writer's connection goes last: closing the last connection folds the WAL
        # back into the file.
        try:
            for db in reversed(self._connections):
                await db.close()
            await self._writer_db.close()
        finally:
            os.close(self._lock)

    async def _fetch(self, sql: str, params: Params) -> list[Any]:
        self._check_open()
        try:
            return await self._reader.fetch(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: reading failed: {exc}") from exc


# Opening ------------------------------------------------------------------------------


def _check_path(path: str) -> None:
    """Refuse, with a clear message, paths SQLite would fail on obscurely (or not at all)."""
    if path in ("", ":memory:") or path.startswith("file:"):
        raise StoreError(f"{path or '(empty)'}: the store needs a file path")
    file = Path(path)
    parent = file.parent
    if not parent.is_dir():
        raise StoreError(f"{path}: cannot create the database: directory {parent} does not exist")
    if file.is_dir():
        raise StoreError(f"{path}: is a directory, not a database file")
    if file.exists():
        # Checked on the mode bits, not with access(): root may write anything, but a file
        # made read-only says "do not write here".
        if not file.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            raise StoreError(f"{path}: the database file is read-only")
        if not os.access(file, os.R_OK | os.W_OK):
            raise StoreError(f"{path}: no permission to read and write the database file")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{path}: cannot create the database: directory {parent} is not writable")


def _lock(path: str) -> int:
    """Lock the database file (creating it, empty, if need be) for one store: the open
    descriptor holding the lock, closed with the store; the lock also ends with the
    process, however it ends. Independent of SQLite's own locks, which are another kind
    (``fcntl`` byte ranges, not ``flock``) and which other tools reading the file take."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open the database: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise StoreError(
            f"{path}: the database is in use by another runwire server; one server per "
            "file (several processes share PostgreSQL and Redis instead)"
        ) from exc
    except OSError as exc:
        # A file system without locks: go on unguarded rather than not at all.
        log.warning("%s: cannot lock the database file (%s)", path, exc.strerror)
    return fd


async def _connect(path: str, busy_timeout: float) -> aiosqlite.Connection:
    try:
        db = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the database: {exc}") from exc
    try:
        for pragma in _connection_pragmas(busy_timeout):
            await db.execute(pragma)
    except sqlite3.Error as exc:
        await db.close()
        raise StoreError(f"{path}: cannot open the database: {exc}") from exc
    return db


async def _setup_file(db: aiosqlite.Connection, path: str) -> None:
    """WAL, then the schema; every failure becomes a StoreError naming the file."""
    try:
        async with db.execute("PRAGMA journal_mode = WAL") as cursor:
            row = await cursor.fetchone()
        if row is None or str(row[0]).lower() != "wal":
            raise StoreError(f"{path}: cannot switch the database to WAL mode")
        await migrate(db)
    except NewerSchema as exc:
        raise StoreError(f"{path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise StoreError(f"{path}: the file is not a SQLite database") from exc
        if "readonly" in str(exc):
            raise StoreError(f"{path}: the database file is read-only") from exc
        raise StoreError(f"{path}: cannot open the database: {exc}") from exc


def _connection_pragmas(busy_timeout: float) -> list[str]:
    """The settings of every connection to the file."""
    # PRAGMA takes no bound parameters; this is our own integer.
    return [f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}", "PRAGMA foreign_keys = ON"]


def _writer_settings(busy_timeout: float) -> Callable[[sqlite3.Connection], None]:
    """The writer's connection settings, made on its thread."""

    def setup(conn: sqlite3.Connection) -> None:
        for pragma in _connection_pragmas(busy_timeout):
            conn.execute(pragma)
        conn.execute("PRAGMA synchronous = NORMAL")
        # Checkpoints run beside the writer (see SQLiteBackend); this is only the backstop
        # that bounds the WAL (~40 MB) should they fall behind a constant stream of commits.
        conn.execute("PRAGMA wal_autocheckpoint = 10000")

    return setup


async def _max_ord(db: WriterConnection) -> int:
    rows = await db.fetch("SELECT COALESCE(MAX(ord), 0) FROM runs")
    return int(rows[0][0]) if rows else 0


async def _recover(db: WriterConnection, now: int) -> int:
    """End every run a crash left running (see :mod:`registry.store.recovery`). Returns how
    many runs were ended."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        recovered = await end_running_runs(SQLiteTx(db), now)
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    return recovered
