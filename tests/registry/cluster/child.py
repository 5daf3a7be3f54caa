"""A cluster process to be killed: it starts a run that streams COUNT events and then hangs,
prints ``ready <run_id>`` once they are all in Redis, and waits to be SIGKILLed.

    python -m tests.registry.cluster.child REDIS_URL DATABASE_URL PREFIX SESSION COUNT LEASE
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio

from registry import RunContext
from registry.cluster import ClusterRegistry
from registry.store import PostgresStore


async def main(argv: list[str]) -> None:
    redis_url, database_url, prefix, session_id, count, lease = argv
    store = await PostgresStore.open(database_url, recover=False)

    async def source(context: RunContext) -> AsyncIterator[Any]:
        for i in range(int(count)):
            yield ("text_delta", {"text": str(i)})
        await anyio.sleep_forever()

    async with ClusterRegistry(redis_url, store, prefix=prefix, lease=float(lease)) as registry:
        sub = await registry.subscribe(session_id, owner="alice")
        started = await registry.start(session_id, owner="alice", content="go", source=source)
        seen = 0
        while seen < int(count) + 1:
            seen += len(await sub.next_batch())
        print("ready", started.run_id, flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
