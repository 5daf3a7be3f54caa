"""Shared helpers for the store tests: real files in tmp_path, read back with plain sqlite3."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from registry import ManualClock
from registry.store import SQLiteStore


@pytest.fixture(autouse=True)
async def close_stores(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Close every store a test opened, even when the test failed before closing it: an
    open store's connection threads would keep the interpreter from exiting."""
    opened: list[SQLiteStore] = []
    original = SQLiteStore.open.__func__  # type: ignore[attr-defined]

    async def tracked(cls: type[SQLiteStore], *args: Any, **kwargs: Any) -> SQLiteStore:
        store: SQLiteStore = await original(cls, *args, **kwargs)
        opened.append(store)
        return store

    monkeypatch.setattr(SQLiteStore, "open", classmethod(tracked))
    yield
    for store in opened:
        await store.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "runwire.db"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def store(db_path: Path, clock: ManualClock) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(db_path, clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


def rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the file with a separate, plain sqlite3 connection: what is really on disk."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def stored_events(path: Path, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    return [
        (seq, kind, json.loads(data))
        for seq, kind, data in rows(
            path, "SELECT seq, kind, data FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
        )
    ]


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
