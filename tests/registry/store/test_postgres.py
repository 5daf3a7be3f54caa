"""What only the PostgreSQL store has to get right: a database shared by live processes
(concurrent opens, runs another process drives, run starts recorded twice), connections
lost under the writer and the reads, migrations, and URLs whose password must not leak."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from registry import Event, RunSummary
from registry.store import PostgresStore, StoreError
from registry.store.postgres import redact
from registry.store.postgres_schema import SCHEMA_VERSION, migrate
from tests.servers import Databases, free_port

from .conftest import PostgresDatabase, started


@pytest.fixture
async def backend(databases: Databases) -> AsyncIterator[PostgresDatabase]:
    """Only PostgreSQL here."""
    async with databases.fresh() as name:
        yield PostgresDatabase(databases.url(name), databases.server_url, name)


OWNER = "ann"
PASSWORD = "s3cret!pw"


async def seqs(backend: PostgresDatabase, run_id: str) -> list[int]:
    return [seq for seq, _, _ in await backend.events(run_id)]


# Opening and migrating -------------------------------------------------------------------


async def test_concurrent_opens_migrate_once(backend: PostgresDatabase) -> None:
    conns = [await asyncpg.connect(backend.url) for _ in range(4)]
    ran: list[int] = []
    try:
        async with anyio.create_task_group() as tg:
            for conn in conns:

                async def one(conn: asyncpg.Connection = conn) -> None:
                    ran.append(await migrate(conn))

                tg.start_soon(one)
    finally:
        for conn in conns:
            await conn.close()
    # One of them migrated, the others waited for it and found nothing to do.
    assert sorted(ran) == [0, 0, 0, SCHEMA_VERSION]
    assert await backend.rows("SELECT version FROM runwire_schema") == [(SCHEMA_VERSION,)]


async def test_stores_opened_at_once_share_the_database(backend: PostgresDatabase) -> None:
    stores: list[Any] = []

    async def one() -> None:
        stores.append(await backend.open(recover=False))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    try:
        created = [await store.create_session(owner=OWNER, provider="echo") for store in stores]
        for store in stores:
            assert {s.session_id for s in await store.list_sessions(owner=OWNER)} == {
                s.session_id for s in created
            }
    finally:
        for store in stores:
            await store.close()
    assert await backend.rows("SELECT version FROM runwire_schema") == [(SCHEMA_VERSION,)]


async def test_reopening_changes_nothing_and_keeps_the_data(backend: PostgresDatabase) -> None:
    store = await backend.open()
    record = await store.create_session(owner=OWNER, provider="echo", title="kept")
    await store.close()
    schema_sql = """
        SELECT table_name, column_name, data_type FROM information_schema.columns
        WHERE table_schema = 'public' ORDER BY 1, 2
    """
    schema = await backend.rows(schema_sql)
    for _ in range(2):
        store = await backend.open()
        assert await store.get_session(record.session_id, owner=OWNER) == record
        await store.close()
    assert await backend.rows(schema_sql) == schema
    conn = await asyncpg.connect(backend.url)
    try:
        assert await migrate(conn) == 0
    finally:
        await conn.close()


async def test_a_newer_schema_is_refused_and_left_alone(backend: PostgresDatabase) -> None:
    await backend.execute("CREATE TABLE runwire_schema (version INTEGER NOT NULL)")
    await backend.execute("INSERT INTO runwire_schema VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer") as info:
        await backend.open()
    assert backend.label in str(info.value)
    assert await backend.rows("SELECT to_regclass('sessions') IS NULL") == [(True,)]


async def test_a_failed_migration_leaves_the_old_version(backend: PostgresDatabase) -> None:
    # A table in the way of version 1: the whole upgrade rolls back.
    await backend.execute("CREATE TABLE runs (x INTEGER)")
    with pytest.raises(StoreError, match="cannot open the database"):
        await backend.open()
    assert await backend.rows(
        "SELECT to_regclass('runwire_schema') IS NULL, to_regclass('sessions') IS NULL"
    ) == [(True, True)]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"flush_delay": -1}, "flush_delay"),
        ({"batch_size": 0}, "batch_size"),
        ({"command_timeout": 0}, "command_timeout"),
        ({"pool_size": 0}, "pool_size"),
    ],
)
async def test_bad_settings_are_refused(
    backend: PostgresDatabase, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        await backend.open(**options)
    assert await backend.rows("SELECT to_regclass('sessions') IS NULL") == [(True,)]


# Several processes on one database --------------------------------------------------------


async def test_recover_false_leaves_the_runs_another_process_drives(
    backend: PostgresDatabase,
) -> None:
    live = await backend.open()
    registry, sid, run_id = await started(live)
    registry.publish(sid, "text", {"text": "partial"})
    await live.flush()
    other = await backend.open(recover=False)
    try:
        assert other.stats.recovered_runs == 0
        running = await other.get_run(run_id)
        assert running is not None
        assert (running.status, running.last_seq) == ("running", 2)
        # The live process goes on and ends its run itself: exactly one complete.
        registry.publish(sid, "text", {"text": "more"})
        registry.complete_run(sid, exit_code=0)
        await live.flush()
        history = await other.read_history(sid, None, None)
        assert history is not None
        assert [e.kind for e in history] == ["user_message", "text", "text", "complete"]
        assert history[-1].data["reason"] == "done"
    finally:
        await other.close()
        await live.close()


async def test_only_an_open_that_recovers_ends_a_dead_processs_runs(
    backend: PostgresDatabase,
) -> None:
    dead = await backend.open()
    _registry, sid, run_id = await started(dead)
    await dead.close()  # its run never completes: as if the process died
    for recover, status in ((False, "running"), (True, "completed"), (True, "completed")):
        store = await backend.open(recover=recover)
        try:
            summary = await store.get_run(run_id)
            assert summary is not None
            assert summary.status == status
        finally:
            await store.close()
    assert [kind for _, kind, _ in await backend.events(run_id)] == ["user_message", "complete"]
    session = await backend.rows("SELECT unread_since IS NOT NULL FROM sessions")
    assert session == [(True,)]
    assert sid


async def test_a_run_start_recorded_again_is_written_once(backend: PostgresDatabase) -> None:
    first = await backend.open()
    second = await backend.open(recover=False)
    try:
        summary = RunSummary("R1", "s_shared", "echo", "running", 5, None, 0, 0)
        first.run_started(summary, client_msg_id="m-1", ord=7)
        first.append(Event("s_shared", "R1", 1, "user_message", 5, {"content": "q"}))
        await first.flush()
        # A process that takes the run over cannot know its start was written: it records
        # it again (session stub included), and goes on.
        second.run_started(summary, client_msg_id="m-1", ord=7)
        second.append(Event("s_shared", "R1", 2, "text", 6, {"text": "a"}))
        await second.flush()
        for store in (first, second):
            assert (store.stats.dropped, store.stats.write_errors) == (0, 0)
        assert await backend.rows("SELECT run_id, ord, status, client_msg_id FROM runs") == [
            ("R1", 7, "running", "m-1")
        ]
        assert await backend.rows("SELECT session_id FROM sessions") == [("s_shared",)]
        assert await seqs(backend, "R1") == [1, 2]
        assert await second.find_client_msg("s_shared", "m-1") == "R1"
    finally:
        await second.close()
        await first.close()


async def test_max_ord_counts_every_process_runs(backend: PostgresDatabase) -> None:
    first = await backend.open()
    second = await backend.open(recover=False)
    try:
        assert await first.max_ord() == 0
        first.run_started(RunSummary("R1", "s", "p", "running", 1, None, 0, 0), client_msg_id=None)
        second.run_started(
            RunSummary("R2", "s", "p", "running", 2, None, 0, 0), client_msg_id=None, ord=40
        )
        await second.flush()
        assert await first.max_ord() == 40
    finally:
        await second.close()
        await first.close()


# Lost connections ------------------------------------------------------------------------


async def test_the_writer_reconnects_after_its_backend_is_killed(
    backend: PostgresDatabase, store_log: Any
) -> None:
    store = await backend.open(flush_delay=0)
    admin = await asyncpg.connect(backend.admin_url)
    try:
        registry, sid, run_id = await started(store)
        reconnected = store_log("connected to")
        for round_ in range(3):
            for i in range(40):
                registry.publish(sid, "text_delta", {"text": f"{round_}.{i}"})
            assert await backend.kill(admin, "runwire-writer") == 1
            for i in range(40):
                registry.publish(sid, "text_delta", {"text": f"{round_}.{i} after"})
            await store.flush()
        registry.complete_run(sid, exit_code=0)
        await store.flush()
        assert reconnected.seen.is_set()
        # Nothing lost, nothing written twice.
        assert await seqs(backend, run_id) == list(range(1, 243))
        assert await backend.rows("SELECT count(*) FROM events") == [(242,)]
        assert store.stats.dropped == 0
        assert store.stats.events_written == 242
    finally:
        await admin.close()
        await store.close()


async def test_a_commit_whose_answer_is_lost_is_written_once(
    backend: PostgresDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await backend.open(flush_delay=3600)
    try:
        registry, sid, run_id = await started(store)
        for i in range(20):
            registry.publish(sid, "text", {"text": str(i)})
        writer = store._backend  # type: ignore[attr-defined]
        real = writer.execute

        async def commit_then_lose_the_connection(statement: str) -> None:
            await real(statement)
            if statement == "COMMIT":
                monkeypatch.undo()
                # The server committed; the client never hears so.
                writer.connection.terminate()
                raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")

        monkeypatch.setattr(writer, "execute", commit_then_lose_the_connection)
        registry.complete_run(sid, exit_code=0)
        await store.flush()
        assert store.stats.write_errors == 1
        assert await seqs(backend, run_id) == list(range(1, 23))
        assert store.stats.dropped == 0
        assert store.durable_seq(run_id) == 1 << 62
        assert await backend.rows("SELECT status, last_seq FROM runs") == [("completed", 22)]
    finally:
        await store.close()


async def test_reads_while_the_database_is_away_raise_instead_of_waiting(
    backend: PostgresDatabase, store_log: Any
) -> None:
    store = await backend.open()
    admin = await asyncpg.connect(backend.admin_url)
    try:
        registry, sid, run_id = await started(store)
        registry.publish(sid, "text", {"text": "before"})
        await store.flush()
        retried = store_log("retrying")
        async with backend.outage():
            await backend.kill(admin, "runwire-reader")
            with anyio.fail_after(30):  # a guard: the reads must not hang
                # A read that needs no flush: its pooled connection is gone.
                with pytest.raises(StoreError, match="reading failed") as info:
                    await store.find_client_msg(sid, "m")
                assert backend.label in str(info.value)
                # Reads that must see queued writes do not wait for the database either.
                registry.publish(sid, "text", {"text": "during"})
                await retried.seen.wait()
                with pytest.raises(StoreError, match="cannot be written to now"):
                    await store.read_history(sid, None, None)
                with pytest.raises(StoreError):
                    await store.get_session(sid, owner=OWNER)
                with pytest.raises(StoreError, match=backend.outage_words):
                    await store.create_session(owner=OWNER, provider="echo")
        # Back: the queued event is written and reads work again.
        history = await store.read_history(sid, None, None)
        assert history is not None
        assert [e.data.get("text") for e in history] == [None, "before", "during"]
        assert [s.session_id for s in await store.list_sessions(owner=OWNER)] == [sid]
        assert run_id == history[0].run_id
    finally:
        await admin.close()
        await store.close()


# Passwords ---------------------------------------------------------------------------------


def test_redact_masks_the_password_wherever_it_is() -> None:
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db?password=pw&sslmode=off") == (
        "postgresql://u@h/db?password=***&sslmode=off"
    )
    assert redact("postgresql://u:p%40ss@h1:1,h2:2/db") == "postgresql://u:***@h1:1,h2:2/db"
    assert redact("postgresql://h/db") == "postgresql://h/db"


async def test_the_password_never_reaches_a_message_or_a_log(
    backend: PostgresDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    # The test server trusts loopback: it ignores the password, so the store opens with it.
    url = backend.url.replace("runwire@", "runwire:s3cret%21pw@")
    caplog.set_level(logging.DEBUG)
    store = await PostgresStore.open(url)
    try:
        assert store.url == backend.url.replace("runwire@", "runwire:***@")
        registry, sid, _run_id = await started(store)
        async with backend.outage():
            registry.publish(sid, "text", {"text": "x"})
            with pytest.raises(StoreError) as info:
                await store.create_session(owner=OWNER, provider="echo")
        await store.flush()
    finally:
        await store.close()
    with pytest.raises(StoreError, match="cannot connect") as unreachable:
        await PostgresStore.open(f"postgresql://runwire:{PASSWORD}@127.0.0.1:{free_port()}/db")
    for text in (str(info.value), str(unreachable.value), caplog.text):
        assert "s3cret" not in text
    assert "***" in str(unreachable.value)
