"""Outages of Redis and PostgreSQL: clear errors for new requests, no silent loss, and
recovery on their own once the engine is back. Each test has a redis-server of its own to
stop and start."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import asyncpg
import pytest
import redis.asyncio as redis

from registry import Event, Lagged, RunContext, Subscription
from registry.cluster import EngineUnavailable
from registry.store import PostgresStore, StoreError
from tests.registry.store.conftest import PostgresDatabase
from tests.servers import Databases, RedisServer, owned_redis

from .conftest import OWNER, Cluster, eventually
from .test_runs import WAIT, child_process, completed

# Long enough that no lease lapses while Redis is away (that is the reaper's case).
LEASE = 5.0
# A killed process's runs are taken over after this.
CHILD_LEASE = 1.5


class Gate:
    """A source in phases: ``counts[0]`` events, then ``counts[1]`` more once
    ``opened[0]`` is set, and so on."""

    def __init__(self, *counts: int) -> None:
        self.counts = counts
        self.openings = [anyio.Event() for _ in counts[1:]]

    @property
    def opened(self) -> anyio.Event:
        return self.openings[0]

    async def source(self, context: RunContext) -> AsyncIterator[Any]:
        sent = 0
        for phase, count in enumerate(self.counts):
            if phase:
                await self.openings[phase - 1].wait()
            for _ in range(count):
                yield ("text_delta", {"text": str(sent)})
                sent += 1


async def read(sub: Subscription, count: int, got: list[Event]) -> None:
    """Read until ``got`` holds ``count`` events (a hang guard, not a timing check)."""
    with anyio.fail_after(WAIT):
        while len(got) < count:
            got.extend(await sub.next_batch())


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    with owned_redis(persistent=True) as server:
        yield server


@pytest.fixture
def empty_redis() -> Iterator[RedisServer]:
    with owned_redis() as server:
        yield server


@pytest.fixture
async def database(databases: Databases) -> AsyncIterator[str]:
    async with databases.fresh() as name:
        yield databases.url(name)


async def test_a_redis_restart_with_its_data_loses_nothing(
    persistent_redis: RedisServer, database: str
) -> None:
    cluster = Cluster(persistent_redis.url, database)
    sid = await cluster.session()
    gate = Gate(20, 30)
    async with cluster.process(lease=LEASE) as a, cluster.process(lease=LEASE) as b:
        sub = await b.subscribe(sid, owner=OWNER)
        started = await a.start(sid, owner=OWNER, content="go", source=gate.source)
        got: list[Event] = []
        await read(sub, 21, got)
        persistent_redis.stop()
        # New requests get a clear error while Redis is away.
        with pytest.raises(EngineUnavailable, match="Redis"):
            await b.list_runs(owner=OWNER)
        with pytest.raises(EngineUnavailable, match="Redis"):
            await b.start(sid, owner=OWNER, content="again", policy="enqueue")
        # The source goes on meanwhile: its next appends wait for Redis.
        gate.opened.set()
        persistent_redis.start()
        await read(sub, 52, got)
        assert [e.seq for e in got] == list(range(1, 53))
        assert got[-1].kind == "complete"
        assert got[-1].data["reason"] == "done"
        store = cluster.stores[0]
        await eventually(lambda: completed(store, started.run_id))
        page, _ = await store.history_page(sid, after=None, limit=100)
        assert [e.seq for e in page] == list(range(1, 53))


async def test_a_redis_that_comes_back_empty_ends_runs_without_a_silent_loss(
    empty_redis: RedisServer, database: str
) -> None:
    """Redis restarted without its data: the driving process ends its run after the last
    seq it appended (no seq a client saw is reused) and writes that end to the log; a
    subscriber on another process gets the end, or ``lagged`` and then the end."""
    cluster = Cluster(empty_redis.url, database)
    sid = await cluster.session()
    gate = Gate(20, 5)
    async with cluster.process(lease=LEASE) as a, cluster.process(lease=LEASE) as b:
        sub = await b.subscribe(sid, owner=OWNER)
        started = await a.start(sid, owner=OWNER, content="go", source=gate.source)
        got: list[Event] = []
        await read(sub, 21, got)
        empty_redis.stop()
        empty_redis.start()
        gate.opened.set()  # its next append finds the run gone from Redis
        lags: list[str | None] = []
        with anyio.fail_after(WAIT):
            while not got or got[-1].kind != "complete":
                try:
                    got.extend(await sub.next_batch())
                except Lagged as lag:
                    lags.append(lag.run_id)
                    sub = await b.subscribe(
                        sid, owner=OWNER, run_id=lag.run_id, after_seq=lag.last_seq
                    )
        assert [e.seq for e in got] == list(range(1, 23))
        assert got[-1].data["reason"] == "server_restart"
        assert set(lags) <= {started.run_id}
        store = cluster.stores[0]
        await eventually(lambda: completed(store, started.run_id))
        page, _ = await store.history_page(sid, after=None, limit=100)
        assert [e.seq for e in page] == list(range(1, 23))
        # The next run starts normally: start orders continue the database's.
        sub = await b.subscribe(sid, owner=OWNER)
        again = await a.start(sid, owner=OWNER, content="again", source=Gate(1, 0).source)
        assert again.status == "started"


async def test_a_database_outage_pauses_writing_and_loses_nothing(
    redis_url: str, databases: Databases
) -> None:
    async with databases.fresh() as name:
        db = PostgresDatabase(databases.url(name), databases.server_url, name)
        cluster = Cluster(redis_url, db.url)
        sid = await cluster.session()
        gate = Gate(10, 40)
        async with cluster.process(lease=LEASE) as a, cluster.process(lease=LEASE) as b:
            sub = await b.subscribe(sid, owner=OWNER)
            started = await a.start(sid, owner=OWNER, content="go", source=gate.source)
            got: list[Event] = []
            await read(sub, 11, got)
            async with db.outage():
                # Live delivery goes on (Redis has it); the log waits for the database.
                gate.opened.set()
                await read(sub, 52, got)
                with pytest.raises(StoreError, match="not currently accepting connections"):
                    await PostgresStore.open(db.url, recover=False, command_timeout=2)
            assert [e.seq for e in got] == list(range(1, 53))
            store = cluster.stores[1]
            await eventually(lambda: completed(store, started.run_id))
            page, _ = await store.history_page(sid, after=None, limit=100)
            assert [e.seq for e in page] == list(range(1, 53))


async def test_a_redis_back_with_older_data_never_numbers_a_seq_twice(
    empty_redis: RedisServer, database: str
) -> None:
    """Redis restarted from a snapshot taken earlier in the run (it has forgotten the last
    seqs it handed out): numbering goes on after the last seq handed out, so every event
    is delivered and written once."""
    cluster = Cluster(empty_redis.url, database)
    sid = await cluster.session()
    gate = Gate(20, 10, 10)
    async with cluster.process(lease=LEASE) as a, cluster.process(lease=LEASE) as b:
        sub = await b.subscribe(sid, owner=OWNER)
        started = await a.start(sid, owner=OWNER, content="go", source=gate.source)
        got: list[Event] = []
        await read(sub, 21, got)
        client = redis.Redis(port=empty_redis.port)
        await client.save()  # the snapshot: the run at seq 21
        await client.aclose()
        gate.openings[0].set()
        await read(sub, 31, got)
        empty_redis.kill()
        empty_redis.start()  # back from the snapshot: the run at seq 21 again
        gate.openings[1].set()
        await read(sub, 42, got)
        assert [e.seq for e in got] == list(range(1, 43))
        assert [e.data.get("text") for e in got[1:41]] == [str(i) for i in range(40)]
        assert got[-1].data["reason"] == "done"
        store = cluster.stores[0]
        await eventually(lambda: completed(store, started.run_id))
        page, _ = await store.history_page(sid, after=None, limit=100)
        assert [e.seq for e in page] == list(range(1, 43))
        assert [e.data.get("text") for e in page[1:41]] == [str(i) for i in range(40)]
        # A process that follows the run only now: its stream skips the forgotten seqs,
        # the log fills them in.
        async with cluster.process(lease=LEASE) as c:
            late = await c.subscribe(sid, owner=OWNER, run_id=started.run_id, after_seq=0)
            assert late.info is not None
            assert late.info.recovered
            again: list[Event] = []
            await read(late, 42, again)
            assert [(e.seq, e.data.get("text")) for e in again] == [
                (e.seq, e.data.get("text")) for e in got
            ]


@contextlib.asynccontextmanager
async def database_away(db: PostgresDatabase) -> AsyncIterator[None]:
    """The database takes no connection and every one it had is ended."""
    admin = await asyncpg.connect(db.admin_url)
    try:
        await admin.execute(f'ALTER DATABASE "{db.name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = $1",
            db.name,
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{db.name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_taking_over_a_dead_process_run_survives_a_database_outage(
    redis_url: str, databases: Databases
) -> None:
    """A survivor ends a killed process's run while the database is away: the end reaches
    subscribers at once, and waiting to write it holds up nothing else (the survivor's own
    run keeps its lease through an outage longer than the lease); it is written once the
    database is back."""
    async with databases.fresh() as name:
        db = PostgresDatabase(databases.url(name), databases.server_url, name)
        cluster = Cluster(redis_url, db.url)
        sid, own = await cluster.session(), await cluster.session()
        async with cluster.process(lease=CHILD_LEASE) as b:
            sub = await b.subscribe(sid, owner=OWNER)
            own_sub = await b.subscribe(own, owner=OWNER)
            gate = Gate(2, 2)
            async with (
                child_process(cluster, sid, CHILD_LEASE) as child,
                database_away(db),
            ):
                mine = await b.start(own, owner=OWNER, content="mine", source=gate.source)
                await child.kill()
                events: list[Event] = []
                with anyio.fail_after(WAIT):
                    while not events or events[-1].kind != "complete":
                        events.extend(await sub.next_batch())
                assert events[-1].data["reason"] == "server_restart"
                # Not a synchronization: the outage must outlast several leases.
                await anyio.sleep(2 * CHILD_LEASE)
                gate.opened.set()
                got: list[Event] = []
                await read(own_sub, 6, got)
            assert [(e.run_id, e.seq) for e in got] == [(mine.run_id, s) for s in range(1, 7)]
            assert got[-1].data["reason"] == "done"
            store = cluster.stores[0]
            await eventually(lambda: completed(store, child.run_id))
            page, _ = await store.history_page(sid, after=None, limit=100)
            assert [e.seq for e in page] == list(range(1, 43))
