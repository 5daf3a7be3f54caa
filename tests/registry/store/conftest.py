"""Shared helpers for the store tests, which run against both engines.

The ``backend`` fixture is a fresh database of one engine: a SQLite file in ``tmp_path``, or
an empty PostgreSQL database in the session's throwaway server. It opens stores on that
database and reads back what is really stored with a plain connection of its own, outside
the store. Tests about SQLite files as such use
``db_path`` and :func:`rows` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from registry import ManualClock, MemoryRegistry
from registry.store import PostgresStore, SQLiteStore, Store
from tests.servers import Databases

ENGINES = ("sqlite", "postgres")


@pytest.fixture(autouse=True)
async def close_stores(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Close every store a test opened, even when the test failed before closing it: an
    open store's connection threads would keep the interpreter from exiting."""
    opened: list[Store] = []
    for cls in (SQLiteStore, PostgresStore):
        original = vars(cls)["open"].__func__

        async def tracked(
            cls: type[Any], /, *args: Any, __open: Any = original, **kwargs: Any
        ) -> Any:
            store = await __open(cls, *args, **kwargs)
            opened.append(store)
            return store

        monkeypatch.setattr(cls, "open", classmethod(tracked))
    yield
    for store in opened:
        await store.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "runwire.db"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


class Backend:
    """One test's database: opens stores on it and reads it directly."""

    engine: str
    label: str
    """How the store's messages name the database."""
    outage_words: str
    """What a session change says while :meth:`outage` lasts."""

    async def open(self, *, outages: bool = False, **options: Any) -> Store:
        """A store on the database; with ``outages``, one whose writes fail (rather than
        wait) while :meth:`outage` lasts."""
        raise NotImplementedError

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A query (``?`` placeholders) on a connection of the test's own."""
        raise NotImplementedError

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """A change made behind the store's back."""
        raise NotImplementedError

    def outage(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Writes fail while this lasts: a locked file, an unreachable database."""
        raise NotImplementedError

    async def events(self, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
        """The run's stored events as (seq, kind, data)."""
        return expand(await self.rows(EVENT_ROWS, (run_id,)))


class SQLiteFile(Backend):
    engine = "sqlite"
    outage_words = "locked"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)

    async def open(self, *, outages: bool = False, **options: Any) -> Store:
        if outages:
            options.setdefault("busy_timeout", 0)
        return await SQLiteStore.open(self.path, **options)

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return rows(self.path, sql, params)

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        conn = sqlite3.connect(self.path)
        try:
            conn.execute(sql, params)
            conn.commit()
        finally:
            conn.close()

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        blocker = sqlite3.connect(self.path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()


class PostgresDatabase(Backend):
    engine = "postgres"
    outage_words = "not currently accepting connections"

    def __init__(self, url: str, admin_url: str, name: str) -> None:
        self.url = self.label = url
        self.admin_url = admin_url
        self.name = name

    async def open(self, *, outages: bool = False, **options: Any) -> Store:
        return await PostgresStore.open(self.url, **options)

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(self.url)
        try:
            return [tuple(row) for row in await conn.fetch(dollars(sql), *params)]
        finally:
            await conn.close()

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(dollars(sql), *params)
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """No new connection to the database, and the writer's own ended."""
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            await self.kill(admin, "runwire-writer")
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')
            await admin.close()

    async def kill(self, admin: asyncpg.Connection, application: str) -> int:
        """End the backends of the store's connections named ``application``, and wait
        until they are gone; how many there were."""
        return int(
            await admin.fetchval(
                """
                SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000))
                FROM pg_stat_activity WHERE datname = $1 AND application_name = $2
                """,
                self.name,
                application,
            )
        )


def dollars(sql: str) -> str:
    """``?`` placeholders as asyncpg's ``$1, $2 ...``."""
    numbers = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(numbers)}", sql)


@pytest.fixture(params=ENGINES)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield SQLiteFile(tmp_path / "runwire.db")
        return
    databases: Databases = request.getfixturevalue("databases")
    async with databases.fresh() as name:
        yield PostgresDatabase(databases.url(name), databases.server_url, name)


@pytest.fixture
async def store(backend: Backend, clock: ManualClock) -> AsyncIterator[Store]:
    opened = await backend.open(clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


async def started(
    store: Store, *, owner: str = "ann", **kwargs: Any
) -> tuple[MemoryRegistry, str, str]:
    """A registry on ``store`` with one session and a running run (driven by publish)."""
    record = await store.create_session(owner=owner, provider="echo")
    registry = MemoryRegistry(store=store, **kwargs)
    result = await registry.start(record.session_id, owner=owner, content="hello")
    return registry, record.session_id, result.run_id


def rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the file with a separate, plain sqlite3 connection: what is really on disk."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def stored_events(path: Path, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    return expand(rows(path, EVENT_ROWS, (run_id,)))


EVENT_ROWS = "SELECT seq, kind, data, span FROM events WHERE run_id = ? ORDER BY seq"


def expand(stored: list[Any]) -> list[tuple[int, str, dict[str, Any]]]:
    """A run's rows (:data:`EVENT_ROWS`) as its events, (seq, kind, data): a row holds the
    events ``seq - span + 1 .. seq``, their data an array when there are more than one."""
    events: list[tuple[int, str, dict[str, Any]]] = []
    for seq, kind, data, span in stored:
        items = json.loads(data) if span > 1 else [json.loads(data)]
        assert len(items) == span
        events.extend((seq - span + 1 + i, kind, item) for i, item in enumerate(items))
    return events


class LogWaiter(logging.Handler):
    """Sets an event when the store logs a record containing ``needle``."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.seen = anyio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if self.needle in message:
            self.seen.set()


@pytest.fixture
def store_log() -> Iterator[Any]:
    """``store_log(needle)`` -> a LogWaiter attached to the store's logger for the test."""
    logger = logging.getLogger("runwire.store")
    handlers: list[LogWaiter] = []

    def attach(needle: str) -> LogWaiter:
        handler = LogWaiter(needle)
        logger.addHandler(handler)
        handlers.append(handler)
        return handler

    yield attach
    for handler in handlers:
        logger.removeHandler(handler)


async def until(condition: Any, *, within: float = 10.0) -> None:
    """Fallback wait, bounded, for a condition nothing signals: the writer acting on its own
    (its delay timer, a full batch) or a closed connection's thread ending."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - no event exists for these conditions
            await anyio.sleep(0.005)
