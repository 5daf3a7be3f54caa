"""Outages of Redis and PostgreSQL: clear errors for new requests, no silent loss, and
recovery on their own once the engine is back. Each test has a redis-server of its own to
stop and start."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from registry import Event, Lagged, RunContext, Subscription
from registry.cluster import EngineUnavailable
from registry.store import PostgresStore, StoreError
from tests.registry.store.conftest import PostgresDatabase
from tests.servers import Databases, RedisServer, owned_redis

from .conftest import OWNER, Cluster, eventually
from .test_runs import WAIT, completed

# Long enough that no lease lapses while Redis is away (that is the reaper's case).
LEASE = 5.0


class Gate:
    """A source of two phases: ``first`` events, then (once opened) ``second`` more."""

    def __init__(self, first: int, second: int) -> None:
        self.first, self.second = first, second
        self.opened = anyio.Event()

    async def source(self, context: RunContext) -> AsyncIterator[Any]:
        for i in range(self.first):
            yield ("text_delta", {"text": str(i)})
        await self.opened.wait()
        for i in range(self.second):
            yield ("text_delta", {"text": str(self.first + i)})


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
