"""The SQLite writer's connection thread: jobs in order on one thread, results and errors
back to the caller, a failed connection reported, and nothing left running after close."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from registry.store.sqlite_thread import WriterConnection


def no_setup(conn: sqlite3.Connection) -> None:
    pass


async def test_jobs_run_in_order_on_one_thread_of_its_own(tmp_path: Path) -> None:
    db = await WriterConnection.open(str(tmp_path / "a.db"), no_setup)
    try:
        await db.execute("CREATE TABLE t (n INTEGER)")
        threads: set[int] = set()

        def insert(conn: sqlite3.Connection, n: int) -> None:
            threads.add(threading.get_ident())
            conn.execute("INSERT INTO t VALUES (?)", (n,))

        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(db.call, lambda conn, n=n: insert(conn, n))
        assert await db.fetch("SELECT n FROM t ORDER BY rowid") == [(n,) for n in range(50)]
        assert len(threads) == 1
        assert threading.get_ident() not in threads
        assert await db.execute("DELETE FROM t WHERE n < 10") == 10
    finally:
        await db.close()


async def test_an_error_reaches_the_caller_and_the_connection_goes_on(tmp_path: Path) -> None:
    db = await WriterConnection.open(str(tmp_path / "a.db"), no_setup)
    try:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await db.fetch("SELECT * FROM missing")
        assert await db.fetch("SELECT 1") == [(1,)]
    finally:
        await db.close()


async def test_setup_runs_on_the_connection_and_its_failure_is_raised(tmp_path: Path) -> None:
    def wal(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode = WAL")

    db = await WriterConnection.open(str(tmp_path / "a.db"), wal)
    try:
        assert await db.fetch("PRAGMA journal_mode") == [("wal",)]
    finally:
        await db.close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("NOT SQL")

    with pytest.raises(sqlite3.OperationalError, match="syntax error"):
        await WriterConnection.open(str(tmp_path / "b.db"), broken)


async def test_a_file_that_cannot_be_opened_is_raised(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        await WriterConnection.open(str(tmp_path / "missing" / "a.db"), no_setup)


async def test_close_waits_for_queued_jobs_and_ends_the_thread(tmp_path: Path) -> None:
    db = await WriterConnection.open(str(tmp_path / "a.db"), no_setup)
    await db.execute("CREATE TABLE t (n INTEGER)")
    async with anyio.create_task_group() as tg:
        tg.start_soon(db.execute, "INSERT INTO t VALUES (1)")
        tg.start_soon(db.close)
    assert not any(t.name == "runwire-sqlite-writer" for t in threading.enumerate())
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        await db.fetch("SELECT 1")
    check = sqlite3.connect(tmp_path / "a.db")
    try:
        assert check.execute("SELECT n FROM t").fetchall() == [(1,)]
    finally:
        check.close()
