"""A process that is killed mid-run: ``python crash_child.py DB_PATH``.

It opens the store and a MemoryRegistry, starts one run and publishes events in a loop.
After every flush it prints ``durable <session_id> <run_id> <seq>``: every event up to
``seq`` is committed. The parent kills it with SIGKILL at some point after such a line.
"""

from __future__ import annotations

import sys

import anyio
import anyio.lowlevel

from registry import MemoryRegistry
from registry.store import SQLiteStore


async def main(path: str) -> None:
    store = await SQLiteStore.open(path, flush_delay=0.001)
    session = await store.create_session(owner="ann", provider="echo")
    registry = MemoryRegistry(store=store, buffer_size=64)
    run_id = (await registry.start(session.session_id, owner="ann", content="go")).run_id
    seq = 1
    while True:
        for _ in range(25):
            event = registry.publish(session.session_id, "text_delta", {"text": f"chunk {seq}"})
            assert event is not None
            seq = event.seq
        await store.flush()
        print(f"durable {session.session_id} {run_id} {seq}", flush=True)
        # Keep publishing while the parent reads the line: the kill lands mid-batch.
        for _ in range(10):
            event = registry.publish(session.session_id, "text_delta", {"text": f"more {seq}"})
            assert event is not None
            seq = event.seq
            await anyio.lowlevel.checkpoint()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
