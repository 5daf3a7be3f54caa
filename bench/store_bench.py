"""Benchmarks of the stores: SQLite on a file in a temporary directory, and PostgreSQL.

Run: ``.venv/bin/python -m bench.store_bench [--postgres URL]``. Prints one JSON object per
line. The PostgreSQL figures are the same measures with ``_postgres`` after the name; they
run on the server at ``--postgres URL`` (its user must be allowed to create databases: each
measure gets one of its own, dropped after), or else on a throwaway server started from
``tests.servers`` when PostgreSQL is installed (fsync off: it measures the store and the
protocol, not a disk), and not at all otherwise.

- ``events_persisted_per_s``: 100 concurrent runs publish through ``MemoryRegistry`` into
  the store; events divided by the time from the first publish until ``flush()`` returns.
  Median of 3 trials (``_min``: the worst).
- ``flush_latency_p99_ms``: at 20,000 events/s offered for 3 s, the 99th percentile over
  committed batches of the oldest operation's age at commit. Each sample is its batch's
  worst append-to-commit time, so this bounds the per-event p99 from above. Median of 3
  trials (``_max``: the worst).
- ``replay_from_log_5000_ms``: median of 21 times ``MemoryRegistry.subscribe`` plus
  ``pull`` delivering the 5,000 events of an evicted run, read from the log.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from registry import Clock, ManualClock, MemoryRegistry
from registry.store import PostgresStore, SQLiteStore, Store

OWNER = "bench"

# Opens a fresh, empty store named for its measure (and clock), for as long as it lasts.
Fresh = Callable[[str, Clock | None], contextlib.AbstractAsyncContextManager[Store]]


def emit(name: str, value: float, unit: str) -> None:
    print(json.dumps({"name": name, "value": round(value, 3), "unit": unit}), flush=True)


def sqlite_stores(folder: Path) -> Fresh:
    @contextlib.asynccontextmanager
    async def fresh(name: str, clock: Clock | None) -> AsyncIterator[Store]:
        store = await SQLiteStore.open(folder / f"{name}.db", clock=clock)
        try:
            yield store
        finally:
            await store.close()

    return fresh


def postgres_stores(server_url: str) -> Fresh:
    @contextlib.asynccontextmanager
    async def fresh(name: str, clock: Clock | None) -> AsyncIterator[Store]:
        database = f"bench_{name}_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'CREATE DATABASE "{database}"')
            url = server_url.rsplit("/", 1)[0] + f"/{database}"
            try:
                store = await PostgresStore.open(url, clock=clock)
                try:
                    yield store
                finally:
                    await store.close()
            finally:
                await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        finally:
            await admin.close()

    return fresh


async def sessions(store: Store, count: int) -> list[str]:
    return [
        (await store.create_session(owner=OWNER, provider="bench")).session_id for _ in range(count)
    ]


async def throughput(fresh: Fresh, name: str, *, runs: int, per_run: int) -> float:
    """Sustained events/s through the registry until everything is committed."""
    async with fresh(name, None) as store:
        sids = await sessions(store, runs)
        registry = MemoryRegistry(store=store, buffer_size=1000)
        for sid in sids:
            await registry.start(sid, owner=OWNER, content="go")
        await store.flush()

        async def publish(sid: str) -> None:
            for i in range(per_run):
                registry.publish(sid, "text_delta", {"text": f"token {i} of a streamed reply "})
                if i % 50 == 49:
                    await anyio.lowlevel.checkpoint()

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for sid in sids:
                tg.start_soon(publish, sid)
        await store.flush()
        elapsed = time.perf_counter() - start
        for sid in sids:
            registry.complete_run(sid, exit_code=0)
        return runs * per_run / elapsed


async def latency(
    fresh: Fresh, name: str, *, rate: float, seconds: float
) -> tuple[float, float, int]:
    """(p50, p99, samples) of per-batch append-to-commit latency at ``rate`` events/s."""
    async with fresh(name, None) as store:
        sids = await sessions(store, 100)
        registry = MemoryRegistry(store=store, buffer_size=1000)
        for sid in sids:
            await registry.start(sid, owner=OWNER, content="go")
        await store.flush()
        store.stats.flush_latency_ms.clear()
        published = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            due = int(elapsed * rate)
            while published < due:
                registry.publish(sids[published % len(sids)], "text_delta", {"text": "token "})
                published += 1
            await anyio.sleep(0.001)
        await store.flush()
        samples = sorted(store.stats.flush_latency_ms)
        for sid in sids:
            registry.complete_run(sid, exit_code=0)
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        return statistics.median(samples), p99, len(samples)


async def replay(fresh: Fresh, *, events: int, repeats: int) -> float:
    """Median ms to replay an evicted run of ``events`` events from the log."""
    clock = ManualClock()
    async with fresh("replay", clock) as store:
        (sid,) = await sessions(store, 1)
        registry = MemoryRegistry(store=store, clock=clock, run_ttl=1, buffer_size=1000)
        run_id = (await registry.start(sid, owner=OWNER, content="go")).run_id
        for i in range(events - 2):  # plus the user_message and the complete
            registry.publish(sid, "text_delta", {"text": f"token {i} of a streamed reply "})
        registry.complete_run(sid, exit_code=0)
        await store.flush()
        clock.advance(2)
        assert registry.sweep() == 1, "the run was not evicted"
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            sub = await registry.subscribe(sid, owner=OWNER, run_id=run_id, after_seq=0)
            got: list[Any] = []
            while batch := sub.pull():
                got.extend(batch)
            times.append((time.perf_counter() - start) * 1000)
            sub.close()
            assert len(got) == events, len(got)
            assert got[-1].seq == events
        return statistics.median(times)


async def measure(fresh: Fresh, suffix: str, *, quick: bool) -> None:
    """Every measure on the stores ``fresh`` opens; names end in ``suffix``."""
    trials = 1 if quick else 3
    rates = []
    for n in range(trials):
        # Each phase starts clean: the last one's registry (cyclic garbage) would
        # otherwise be collected in the middle of this one's measurement.
        gc.collect()
        per_run = 500 if quick else 3000
        rates.append(await throughput(fresh, f"rate{n}", runs=100, per_run=per_run))
    emit(f"events_persisted_per_s{suffix}", statistics.median(rates), "events/s")
    emit(f"events_persisted_per_s_min{suffix}", min(rates), "events/s")
    p99s, p50s = [], []
    for n in range(trials):
        gc.collect()
        p50, p99, _ = await latency(
            fresh, f"latency{n}", rate=20_000, seconds=1.0 if quick else 3.0
        )
        p50s.append(p50)
        p99s.append(p99)
    emit(f"flush_latency_p99_ms{suffix}", statistics.median(p99s), "ms")
    emit(f"flush_latency_p99_ms_max{suffix}", max(p99s), "ms")
    emit(f"flush_latency_p50_ms{suffix}", statistics.median(p50s), "ms")
    gc.collect()
    replay_ms = await replay(fresh, events=5000, repeats=21)
    emit(f"replay_from_log_5000_ms{suffix}", replay_ms, "ms")


@contextlib.contextmanager
def postgres_server(url: str | None) -> Iterator[str | None]:
    """``url``, or a throwaway server's, or ``None`` when none can be started."""
    if url is not None:
        yield url
        return
    with contextlib.ExitStack() as stack:
        started: str | None = None
        try:
            from tests.servers import postgres_server as throwaway

            started = stack.enter_context(throwaway())
        except (ImportError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"# no PostgreSQL figures: {exc}", flush=True)
        yield started


async def main(quick: bool, postgres: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="runwire-bench-") as tmp:
        await measure(sqlite_stores(Path(tmp)), "", quick=quick)
    with postgres_server(postgres) as url:
        if url is not None:
            await measure(postgres_stores(url), "_postgres", quick=quick)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument("--postgres", metavar="URL", help="measure PostgreSQL on this server too")
    args = parser.parse_args()
    anyio.run(main, args.quick, args.postgres)
