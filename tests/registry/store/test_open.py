"""Files the store cannot use give a StoreError naming the path, at open."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest

from registry import MemoryRegistry
from registry.store import DEFAULT_PATH, SQLiteStore, StoreError

from .conftest import Backend, rows, until


async def test_a_path_in_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "runwire.db"
    with pytest.raises(StoreError, match="does not exist") as info:
        await SQLiteStore.open(path)
    assert str(path) in str(info.value)
    assert not path.parent.exists()


async def test_a_read_only_file(db_path: Path) -> None:
    store = await SQLiteStore.open(db_path)
    await store.close()
    file = anyio.Path(db_path)
    before = await file.read_bytes()
    await file.chmod(0o444)
    try:
        with pytest.raises(StoreError, match="read-only") as info:
            await SQLiteStore.open(db_path)
    finally:
        await file.chmod(0o644)
    assert str(db_path) in str(info.value)
    assert await file.read_bytes() == before


async def test_a_file_that_is_not_sqlite(db_path: Path) -> None:
    file = anyio.Path(db_path)
    await file.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(StoreError, match="not a SQLite database") as info:
        await SQLiteStore.open(db_path)
    assert str(db_path) in str(info.value)
    assert (await file.read_text()).startswith("these are my notes")


async def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory") as info:
        await SQLiteStore.open(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("path", ["", ":memory:", "file:x.db?mode=memory"])
async def test_not_a_file_path(path: str) -> None:
    with pytest.raises(StoreError, match="needs a file path"):
        await SQLiteStore.open(path)


async def test_a_failed_open_leaves_no_threads_behind(db_path: Path) -> None:
    await anyio.Path(db_path).write_bytes(b"\x00garbage" * 1000)
    threads = threading.active_count()
    for _ in range(3):
        with pytest.raises(StoreError):
            await SQLiteStore.open(db_path)
    # A closed connection's thread ends just after close() returns.
    await until(lambda: threading.active_count() <= threads)


async def test_a_file_in_use_by_another_store_is_refused_and_left_alone(db_path: Path) -> None:
    """Opening ends the runs a file says are running, as a crash's: a second store on a file
    in use would end the first one's live runs. The file is locked instead, until closed."""
    first = await SQLiteStore.open(db_path)
    try:
        record = await first.create_session(owner="ann", provider="echo")
        registry = MemoryRegistry(store=first)
        run_id = (await registry.start(record.session_id, owner="ann", content="go")).run_id
        await first.flush()
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            with pytest.raises(StoreError, match="in use by another runwire server") as info:
                await SQLiteStore.open(db_path)
            assert str(db_path) in str(info.value)
        assert len(os.listdir("/proc/self/fd")) == fds
        assert rows(db_path, "SELECT status FROM runs WHERE run_id = ?", (run_id,)) == [
            ("running",)
        ]
    finally:
        await first.close()
    # Closed, the file is free: the next store ends the run the first one left running.
    second = await SQLiteStore.open(db_path)
    try:
        run = await second.get_run(run_id)
        assert run is not None
        assert run.outcome == "server_restart"
    finally:
        await second.close()


async def test_bad_settings_are_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="flush_delay"):
        await SQLiteStore.open(db_path, flush_delay=-1)
    with pytest.raises(ValueError, match="batch_size"):
        await SQLiteStore.open(db_path, batch_size=0)
    with pytest.raises(ValueError, match="busy_timeout"):
        await SQLiteStore.open(db_path, busy_timeout=-1)
    assert not await anyio.Path(db_path).exists()


async def test_the_default_path_is_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = await SQLiteStore.open()
    await store.close()
    assert DEFAULT_PATH == "runwire.db"
    assert (tmp_path / "runwire.db").is_file()
    assert rows(tmp_path / "runwire.db", "PRAGMA user_version")[0][0] >= 1


async def test_a_closed_store_refuses_reads_and_ignores_writes(backend: Backend) -> None:
    store = await backend.open()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.list_sessions(owner="ann")
    await store.flush()  # nothing to wait for
