"""Migrations: from an empty file and from every earlier version, idempotent, and a newer
file refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from registry.store import MIGRATIONS, SCHEMA_VERSION, SQLiteStore, StoreError
from registry.store.schema import migrate, schema_version

from .conftest import rows

TABLES = {"sessions", "runs", "events"}


def user_version(path: Path) -> int:
    return int(rows(path, "PRAGMA user_version")[0][0])


async def test_a_new_file_gets_the_whole_schema_in_wal_mode(db_path: Path) -> None:
    store = await SQLiteStore.open(db_path)
    try:
        assert user_version(db_path) == SCHEMA_VERSION == len(MIGRATIONS)
        names = {r[0] for r in rows(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
        assert names >= TABLES
        assert rows(db_path, "PRAGMA journal_mode") == [("wal",)]
        # Connection settings of the writer: NORMAL sync (1), foreign keys, a busy timeout.
        for pragma, expected in (("synchronous", 1), ("foreign_keys", 1), ("busy_timeout", 5000)):
            found = await store._writer_db.fetch(f"PRAGMA {pragma}")
            assert found == [(expected,)], pragma
    finally:
        await store.close()


@pytest.mark.parametrize("version", range(SCHEMA_VERSION))
async def test_every_earlier_version_is_migrated_at_open(db_path: Path, version: int) -> None:
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        assert await migrate(db, target=version) == version
        assert await schema_version(db) == version
    store = await SQLiteStore.open(db_path)
    await store.close()
    assert user_version(db_path) == SCHEMA_VERSION
    names = {r[0] for r in rows(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert names >= TABLES


async def test_reopening_changes_nothing_and_keeps_the_data(db_path: Path) -> None:
    store = await SQLiteStore.open(db_path)
    record = await store.create_session(owner="ann", provider="echo", title="kept")
    await store.close()
    schema = rows(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    for _ in range(2):
        store = await SQLiteStore.open(db_path)
        assert await store.get_session(record.session_id, owner="ann") == record
        await store.close()
    assert rows(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema
    assert user_version(db_path) == SCHEMA_VERSION
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        assert await migrate(db) == 0


async def test_a_newer_schema_is_refused_and_left_alone(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer") as info:
        await SQLiteStore.open(db_path)
    assert str(db_path) in str(info.value)
    assert user_version(db_path) == SCHEMA_VERSION + 1
    assert rows(db_path, "SELECT name FROM sqlite_master") == []


async def test_a_failed_migration_leaves_the_old_version(db_path: Path) -> None:
    # A table in the way of version 1: the whole upgrade rolls back.
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE runs (x)")
    conn.close()
    with pytest.raises(StoreError, match=str(db_path)):
        await SQLiteStore.open(db_path)
    assert user_version(db_path) == 0
    assert [r[0] for r in rows(db_path, "SELECT name FROM sqlite_master")] == ["runs"]


async def test_migrate_refuses_a_target_it_does_not_know(db_path: Path) -> None:
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        with pytest.raises(ValueError, match="target"):
            await migrate(db, target=SCHEMA_VERSION + 1)


async def test_version_1_sessions_gain_empty_handoff_notes(db_path: Path) -> None:
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        await migrate(db, target=1)
        await db.execute(
            "INSERT INTO sessions (session_id, owner, provider, created_at, updated_at)"
            " VALUES ('s1', 'ann', 'echo', 1, 1)"
        )
    store = await SQLiteStore.open(db_path)
    try:
        record = await store.get_session("s1", owner="ann")
        assert record is not None
        assert record.handoff is None
    finally:
        await store.close()


async def completed_run(db: aiosqlite.Connection) -> None:
    """Session ``s1`` of ``ann`` with one completed run ``r1``, as an older version stores
    them."""
    await db.execute(
        "INSERT INTO sessions (session_id, owner, provider, created_at, updated_at)"
        " VALUES ('s1', 'ann', 'echo', 1, 1)"
    )
    await db.execute(
        "INSERT INTO runs (run_id, session_id, ord, provider, status, outcome, started_at)"
        " VALUES ('r1', 's1', 1, 'echo', 'completed', 'done', 1)"
    )


async def test_version_2_logs_gain_the_kind_index_and_fork_columns(db_path: Path) -> None:
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        await migrate(db, target=2)
        await completed_run(db)
        await db.execute(
            "INSERT INTO events (run_id, seq, kind, ts, data) VALUES ('r1', 1, 'checkpoint', 1,"
            ' \'{"label": "old"}\')'
        )
    store = await SQLiteStore.open(db_path)
    try:
        record = await store.get_session("s1", owner="ann")
        assert record is not None
        assert record.forked_from is None
        assert await store.fork_origin("s1") is None
        digest = await store.digest("s1")
        assert digest.kinds == {"checkpoint": 1}
        fork = await store.fork_session("s1", owner="ann")
        assert fork is not None
        assert fork.forked_from == {"session_id": "s1", "run_id": "r1", "seq": 1}
    finally:
        await store.close()
    indexes = {
        name for (name,) in rows(db_path, "SELECT name FROM sqlite_master WHERE type = 'index'")
    }
    assert "events_by_kind" in indexes


async def test_version_4_logs_are_read_as_before_a_row_an_event(db_path: Path) -> None:
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        await migrate(db, target=4)
        await completed_run(db)
        for seq in (1, 2, 3):
            await db.execute(
                "INSERT INTO events (run_id, seq, kind, ts, data)"
                f" VALUES ('r1', {seq}, 'text_delta', 1, '{{\"text\": \"{seq}\"}}')"
            )
    store = await SQLiteStore.open(db_path)
    try:
        history = await store.read_history("s1", None, None)
        assert history is not None
        assert [(e.seq, e.data) for e in history] == [(s, {"text": str(s)}) for s in (1, 2, 3)]
        assert (await store.digest("s1")).kinds == {"text_delta": 3}
    finally:
        await store.close()
    assert rows(db_path, "SELECT seq, span FROM events ORDER BY seq") == [(1, 1), (2, 1), (3, 1)]
    # A span the rows cannot hold is refused by the schema itself.
    conn = sqlite3.connect(db_path)
    try:
        for seq, span in ((5, 0), (9, 10)):
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(
                    "INSERT INTO events (run_id, seq, kind, ts, data, span)"
                    " VALUES ('r1', ?, 'text_delta', 1, '[]', ?)",
                    (seq, span),
                )
    finally:
        conn.close()
