"""Benchmarks of the SQLite store, on a file in a temporary directory.

Run: ``.venv/bin/python -m bench.store_bench``. Prints one JSON object per line:

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
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from registry import ManualClock, MemoryRegistry
from registry.store import SQLiteStore

OWNER = "bench"


def emit(name: str, value: float, unit: str) -> None:
    print(json.dumps({"name": name, "value": round(value, 3), "unit": unit}), flush=True)


async def sessions(store: SQLiteStore, count: int) -> list[str]:
    return [
        (await store.create_session(owner=OWNER, provider="bench")).session_id for _ in range(count)
    ]


async def throughput(path: Path, *, runs: int, per_run: int) -> float:
    """Sustained events/s through the registry until everything is committed."""
    store = await SQLiteStore.open(path)
    try:
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
    finally:
        await store.close()


async def latency(path: Path, *, rate: float, seconds: float) -> tuple[float, float, int]:
    """(p50, p99, samples) of per-batch append-to-commit latency at ``rate`` events/s."""
    store = await SQLiteStore.open(path)
    try:
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
    finally:
        await store.close()


async def replay(path: Path, *, events: int, repeats: int) -> float:
    """Median ms to replay an evicted run of ``events`` events from the log."""
    clock = ManualClock()
    store = await SQLiteStore.open(path, clock=clock)
    try:
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
    finally:
        await store.close()


async def main(quick: bool) -> None:
    trials = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="runwire-bench-") as tmp:
        folder = Path(tmp)
        rates = []
        for n in range(trials):
            # Each phase starts clean: the last one's registry (cyclic garbage) would
            # otherwise be collected in the middle of this one's measurement.
            gc.collect()
            per_run = 500 if quick else 3000
            rates.append(await throughput(folder / f"rate{n}.db", runs=100, per_run=per_run))
        emit("events_persisted_per_s", statistics.median(rates), "events/s")
        emit("events_persisted_per_s_min", min(rates), "events/s")
        p99s, p50s = [], []
        for n in range(trials):
            gc.collect()
            p50, p99, _ = await latency(
                folder / f"latency{n}.db", rate=20_000, seconds=1.0 if quick else 3.0
            )
            p50s.append(p50)
            p99s.append(p99)
        emit("flush_latency_p99_ms", statistics.median(p99s), "ms")
        emit("flush_latency_p99_ms_max", max(p99s), "ms")
        emit("flush_latency_p50_ms", statistics.median(p50s), "ms")
        gc.collect()
        replay_ms = await replay(folder / "replay.db", events=5000, repeats=21)
        emit("replay_from_log_5000_ms", replay_ms, "ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    anyio.run(main, parser.parse_args().quick)
