"""Several cluster processes in one test process: each a ClusterRegistry with its own store
connection, all sharing the session's real redis-server (under a key prefix of the test's
own) and one fresh PostgreSQL database."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from registry.cluster import ClusterRegistry
from registry.store import PostgresStore
from tests.servers import Databases

# Short leases, so a dead process's runs are reaped within a test (the default is 10 s).
LEASE = 1.5
OWNER = "alice"


class Cluster:
    """Opens processes (registries) on one Redis prefix and one database. Each is an async
    context manager entered by the test itself (a registry's tasks belong to its task)."""

    def __init__(self, redis_url: str, database_url: str) -> None:
        self.redis_url = redis_url
        self.database_url = database_url
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.stores: list[PostgresStore] = []

    @contextlib.asynccontextmanager
    async def process(self, **options: Any) -> AsyncIterator[ClusterRegistry]:
        store = await PostgresStore.open(self.database_url, recover=False, flush_delay=0.002)
        self.stores.append(store)
        options.setdefault("lease", LEASE)
        options.setdefault("run_ttl", 60)
        try:
            async with ClusterRegistry(
                self.redis_url, store, prefix=self.prefix, **options
            ) as registry:
                yield registry
        finally:
            await store.close()

    async def session(self) -> str:
        """A new session of OWNER, as the gateway creates it before any run."""
        store = await PostgresStore.open(self.database_url, recover=False)
        try:
            record = await store.create_session(owner=OWNER, provider="test")
        finally:
            await store.close()
        return record.session_id


@pytest.fixture
async def cluster(redis_url: str, databases: Databases) -> AsyncIterator[Cluster]:
    async with databases.fresh() as name:
        yield Cluster(redis_url, databases.url(name))


async def eventually(condition: Callable[[], Awaitable[bool]], *, within: float = 20.0) -> None:
    """Fallback wait, bounded, for what another process does that nothing here signals
    (rows it commits to the database)."""
    with anyio.fail_after(within):
        while not await condition():  # noqa: ASYNC110 - no event crosses the process
            await anyio.sleep(0.01)
