"""How fast ``GET /api/sessions/{id}/context`` answers for a long agent session.

Run: ``.venv/bin/python -m bench.context_bench``. Writes one session of 50,000 events
(100 runs of an agent at work: streamed text, file edits and writes, shell commands,
errors, checkpoints) into a SQLite file through the registry, starts ``runwire serve`` on
it, and prints one JSON object per line:

- ``context_50k_events_cold_ms``: the first request after the server starts (the whole log
  is read), median of 3 starts;
- ``context_50k_events_ms_p50`` / ``_p99``: request to parsed response over loopback, 51
  requests after that first one (the completed runs' digest is then remembered);
- ``context_50k_events_bytes``: the size of the answer;
- ``fork_50k_events_ms``: ``POST /api/sessions/{id}/fork`` at the end of that session (the
  copy of every run and event, and the new session's context for its summary).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.chaos import ServerProcess
from registry import MemoryRegistry
from registry.store import SQLiteStore

USER = "bench"


def emit(name: str, value: float, unit: str) -> None:
    print(json.dumps({"name": name, "value": round(value, 3), "unit": unit}), flush=True)


def publish_run(registry: MemoryRegistry, sid: str, run: int, per_run: int) -> None:
    """One run's events: a mix like a coding agent's, ``per_run`` in all with the prompt
    and the ``complete``."""
    left = per_run - 2  # the user_message and the complete
    step = 0
    while left > 0:
        step += 1
        choice = step % 10
        if choice == 3 and left >= 2:
            tool_id = f"t{run}-{step}"
            name, tool_input = (
                (
                    "Edit",
                    {"file_path": f"src/mod{step % 40}.py", "old_string": "a", "new_string": "b"},
                )
                if step % 20 == 3
                else ("Bash", {"command": f"pytest -k case{step}"})
            )
            registry.publish(
                sid, "tool_use", {"tool_id": tool_id, "name": name, "input": tool_input}
            )
            registry.publish(
                sid, "tool_result", {"tool_id": tool_id, "content": "ok " * 20, "is_error": False}
            )
            left -= 2
        elif choice == 6 and step % 50 == 6:
            registry.publish(sid, "error", {"message": f"flaky step {step}"})
            left -= 1
        elif choice == 7 and step % 100 == 7:
            registry.publish(sid, "checkpoint", {"label": f"step {step}"})
            left -= 1
        elif choice == 9:
            registry.publish(sid, "text", {"text": "Here is what I found so far. " * 5})
            left -= 1
        else:
            registry.publish(sid, "text_delta", {"text": "a streamed token or two "})
            left -= 1
    registry.publish(sid, "complete", {"exit_code": 0, "success": True, "reason": "done"})


async def fill(path: Path, *, runs: int, per_run: int) -> str:
    """A session of ``runs * per_run`` events in the file at ``path``; its id."""
    async with await SQLiteStore.open(str(path)) as store:
        sid = (await store.create_session(owner=USER, provider="echo")).session_id
        registry = MemoryRegistry(store=store, buffer_size=1000)
        for run in range(runs):
            await registry.start(sid, owner=USER, content=f"prompt {run}")
            publish_run(registry, sid, run, per_run)
            await store.flush()
    return sid


async def timed(http: httpx.AsyncClient, url: str) -> float:
    started = time.perf_counter()
    response = await http.get(url)
    response.json()
    return (time.perf_counter() - started) * 1000


async def main(quick: bool) -> None:
    runs, per_run, repeats = (10, 500, 11) if quick else (100, 500, 51)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "context.db"
        sid = await fill(db, runs=runs, per_run=per_run)
        url = f"/api/sessions/{sid}/context"
        colds: list[float] = []
        for start in range(3):
            server = ServerProcess(str(db), [USER])
            await server.start()
            try:
                async with server.http(USER) as http:
                    started = time.perf_counter()
                    first = await http.get(url)
                    first.raise_for_status()
                    body = first.json()
                    colds.append((time.perf_counter() - started) * 1000)
                    assert body["events"]["total"] == runs * per_run, body["events"]
                    if start == 0:
                        times = [await timed(http, url) for _ in range(repeats)]
                        started = time.perf_counter()
                        forked = await http.post(f"/api/sessions/{sid}/fork")
                        forked.raise_for_status()
                        fork_ms = (time.perf_counter() - started) * 1000
            finally:
                await server.stop()
    times.sort()
    label = f"context_{runs * per_run // 1000}k_events"
    emit(f"{label}_cold_ms", statistics.median(colds), "ms")
    emit(f"{label}_ms_p50", statistics.median(times), "ms")
    emit(f"{label}_ms_p99", times[min(len(times) - 1, int(len(times) * 0.99))], "ms")
    emit(f"{label}_bytes", len(first.content), "bytes")
    emit(f"fork_{runs * per_run // 1000}k_events_ms", fork_ms, "ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small session, for a smoke run")
    asyncio.run(main(parser.parse_args().quick))
