"""Registry benchmark: publish rates, fan-out, tail replays and memory per buffered event.

Run: ``python -m bench.registry_bench``. Prints one JSON object per figure:
``{"name": ..., "value": ..., "unit": ...}``. Rates count from the first publish until every
subscriber has received every event.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from typing import Any

import anyio
import anyio.lowlevel

from registry import MemoryRegistry, Subscription

BUFFER = 5000
CHUNK = 500  # events published between yields to the event loop, as a busy provider would


def emit(name: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"name": name, "value": round(value, 3), "unit": unit, **extra}), flush=True)


async def _drain(sub: Subscription, total: int) -> None:
    got = 0
    while got < total:
        got += len(await sub.next_batch())


async def publish_rate(subscribers: int, events: int, *, prefill: int) -> float:
    """Events/s for ``events`` publishes reaching ``subscribers`` subscribers each."""
    reg = MemoryRegistry(buffer_size=BUFFER)
    await reg.start("s", owner="bench", content="go")
    payload = {"text": "hello world "}
    for _ in range(prefill):
        reg.publish("s", "text_delta", payload)
    subs: list[Subscription] = []
    last = _last_seq(reg)
    for _ in range(subscribers):
        subs.append(await reg.subscribe("s", owner="bench", run_id=None, after_seq=last))
    publish = reg.publish
    gc.collect()
    async with anyio.create_task_group() as tg:
        for sub in subs:
            tg.start_soon(_drain, sub, events)
        await anyio.lowlevel.checkpoint()
        start = time.perf_counter()
        sent = 0
        while sent < events:
            n = min(CHUNK, events - sent)
            for _ in range(n):
                publish("s", "text_delta", payload)
            sent += n
            await anyio.lowlevel.checkpoint()
    return events / (time.perf_counter() - start)


def _last_seq(reg: MemoryRegistry) -> int:
    run = reg.list_runs()[0]
    return run.last_seq


async def tail_replays(rounds: int) -> float:
    """Subscribes per second that replay the last 10 of 5,000 buffered events."""
    reg = MemoryRegistry(buffer_size=BUFFER)
    await reg.start("s", owner="bench", content="go")
    payload = {"text": "hello world "}
    for _ in range(BUFFER - 2):
        reg.publish("s", "text_delta", payload)
    reg.publish("s", "complete", {})
    run_id = reg.list_runs(status="all")[0].run_id
    after = BUFFER - 10
    subscribe = reg.subscribe
    gc.collect()
    start = time.perf_counter()
    for _ in range(rounds):
        sub = await subscribe("s", owner="bench", run_id=run_id, after_seq=after)
        if len(sub.pull()) != 10:
            raise AssertionError("tail replay returned the wrong number of events")
        sub.close()
    return rounds / (time.perf_counter() - start)


async def bytes_per_event(count: int, *, encoded: bool) -> float:
    """Memory per small text_delta event held in a full buffer (tracemalloc)."""
    reg = MemoryRegistry(buffer_size=count)
    await reg.start("s", owner="bench", content="go")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(count - 1):
        # A fresh dict per event, as a provider would produce, with a typical small chunk.
        event = reg.publish("s", "text_delta", {"text": f"token {i % 97} "})
        if encoded and event is not None:
            event.frame()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / (count - 1)


async def main(scale: float) -> None:
    n = int(1_000_000 * scale)
    emit("publish_at_cap_1_sub", await publish_rate(1, n, prefill=BUFFER), "events/s")
    emit(
        "publish_below_cap_1_sub", await publish_rate(1, min(n, BUFFER - 2), prefill=0), "events/s"
    )
    emit(
        "publish_100_subs",
        await publish_rate(100, int(200_000 * scale), prefill=BUFFER),
        "events/s",
        note="each event reaching all 100 subscribers",
    )
    emit("replay_tail_10_of_5000", await tail_replays(int(200_000 * scale)), "replays/s")
    emit("bytes_per_buffered_event", await bytes_per_event(BUFFER, encoded=False), "bytes")
    emit(
        "bytes_per_buffered_event_with_wire_cache",
        await bytes_per_event(BUFFER, encoded=True),
        "bytes",
        note="after the event's JSON frame was encoded for delivery",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply event counts")
    anyio.run(main, parser.parse_args().scale)
