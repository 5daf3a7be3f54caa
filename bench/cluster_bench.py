"""Several gateway processes on one Redis and one PostgreSQL: fan-out, latency, failover.

Starts a throwaway ``redis-server`` and PostgreSQL (:mod:`tests.servers`), then runs
``runwire serve --redis URL --database URL`` processes on this machine (echo provider) and
drives them over loopback with :mod:`bench.ws_bench`'s clients. Every subscriber checks
that it receives every event of every run it follows exactly once and in order. Figures:

- ``cluster_events_per_s_100_subs_{1,3}_procs``: one run's events/s (echo, no delay) with
  100 subscribers spread evenly over the processes, until every one has them all. The first
  process drives the run, so with 3 processes two thirds of the subscribers receive it
  through Redis.
- ``cluster_latency_p99_ms_{1,3}_procs``: publish-to-receipt p99 with 100 subscribers
  spread over the processes, receiving about 1,000 events/s from 4 paced echo runs sent
  through the processes in turn (ws_bench's method; the rate reached is reported).
- ``cluster_failover_s_lease_{10,2}``: 3 processes; a run driven by the first (echo that
  hangs), 100 subscribers on the other two; the driver is SIGKILLed; seconds from the kill
  until every subscriber has the run's ``complete``, which the log must show is the
  ``server_restart`` one a survivor appended. Only with several processes: with one, the
  subscribers' connections die with it and the figure would be its restart time.

Everything shares this machine's cores (the servers, Redis, PostgreSQL and the clients), so
the figures show the cost of the shared engine, not how far more machines would scale.

Each server's stderr goes to a file; the warnings and errors found there are reported as
``cluster_server_log_errors`` (the files are kept, and named, when there are errors).
Prints one JSON object per line: ``{"name", "value", "unit", ...details}``.

    .venv/bin/python -m bench.cluster_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from bench.chaos import UNLIMITED_SENDS, ServerProcess
from bench.ws_bench import (
    TOKEN,
    Server,
    Subscriber,
    close_all,
    echo,
    emit,
    latency,
    new_session,
    open_link,
    open_spread,
    request,
    throughput,
)
from tests.servers import postgres_server, redis_server

SUBSCRIBERS = 100
# Longest wait for a failover, as a multiple of the lease (a hang guard, not an assertion).
FAILOVER_PATIENCE = 4.0
# A log line's level in the server's text log format.
_LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")


class Cluster:
    """``count`` ``runwire serve`` processes on one Redis (under their own key prefix) and
    one PostgreSQL database; ``servers`` are the clients' view of them."""

    def __init__(
        self, directory: str, redis_url: str, database_url: str, count: int, *, lease: float
    ) -> None:
        name = f"p{count}l{lease:g}".replace(".", "_")
        flags = ["--redis", redis_url, "--database", database_url, "--redis-prefix", name]
        flags += ["--lease", f"{lease:g}", "--token", f"{TOKEN}:bench", *UNLIMITED_SENDS]
        self.lease = lease
        self.processes = [
            ServerProcess(
                os.path.join(directory, "unused.db"),
                [],
                *flags,
                log=os.path.join(directory, f"{name}-{index}.log"),
            )
            for index in range(count)
        ]

    @property
    def servers(self) -> list[Server]:
        return [Server(None, process.port) for process in self.processes]

    async def start(self) -> None:
        """Every process at once (the first to open the database creates the schema while
        the others wait for it)."""
        await asyncio.gather(*(process.start() for process in self.processes))

    async def stop(self) -> None:
        await asyncio.gather(*(process.stop() for process in self.processes))


@asynccontextmanager
async def running(cluster: Cluster) -> AsyncIterator[Cluster]:
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


async def session_log(server: Server, session_id: str) -> list[dict[str, Any]]:
    """The session's events as the log has them (up to 1,000: enough here)."""
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=server.http_url, headers=headers, timeout=30) as http:
        response = await http.get(f"/api/sessions/{session_id}/events", params={"limit": 1000})
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        return events


async def logged_end(server: Server, session_id: str, patience: float) -> list[dict[str, Any]]:
    """The session's log once it holds a ``complete`` (a survivor writes it after it
    appended it to Redis, which is what subscribers receive first)."""
    deadline = time.monotonic() + patience
    while True:
        events = await session_log(server, session_id)
        if (events and events[-1]["kind"] == "complete") or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.05)


async def failover_round(cluster: Cluster, *, subscribers: int, chunks: int) -> dict[str, float]:
    """One SIGKILL of the first process while it drives a run that the others' subscribers
    follow; the seconds until every subscriber has the run's end, and until the log has it.
    The killed process is started again afterwards."""
    driver = cluster.processes[0]
    servers = cluster.servers
    survivors = servers[1:]
    session_id = await new_session(survivors[0])
    subs = [Subscriber(ws) for ws in await open_spread(survivors, subscribers, batch=True)]
    for sub in subs:
        await request(sub.ws, {"type": "subscribe", "session_id": session_id})
    readers = [asyncio.create_task(sub.consume()) for sub in subs]
    control = await open_link(servers[0].url(batch=False))
    options = {**echo(chunks, 0), "hang": True}
    await request(
        control, {"type": "send", "session_id": session_id, "content": "go", "options": options}
    )
    published = chunks + 1  # user_message and the chunks; then the run hangs
    patience = FAILOVER_PATIENCE * cluster.lease + 30
    async with asyncio.timeout(patience):
        while True:
            if all(sub.events >= published for sub in subs):
                break
            await asyncio.sleep(0.01)
    killed_at = time.perf_counter()
    await driver.kill()
    try:
        async with asyncio.timeout(patience):
            await asyncio.gather(*readers)
    except TimeoutError:
        missing = sum(sub.completes == 0 for sub in subs)
        raise AssertionError(
            f"{missing} of {len(subs)} subscribers had no complete {patience:.0f} s after the kill"
        ) from None
    delivered_s = max(sub.done_at for sub in subs) - killed_at
    first_s = min(sub.done_at for sub in subs) - killed_at
    events = await logged_end(survivors[0], session_id, patience)
    logged_s = time.perf_counter() - killed_at
    _check_failover(events, subs, published)
    await close_all([*(sub.ws for sub in subs), control])
    await driver.start()
    return {"delivered_s": delivered_s, "first_s": first_s, "logged_s": logged_s}


def _check_failover(events: list[dict[str, Any]], subs: list[Subscriber], published: int) -> None:
    """The log holds the whole run, once, ended by a survivor's ``server_restart``; every
    subscriber received exactly that run (each checked its seqs as they came)."""
    seqs = [event["seq"] for event in events]
    assert seqs == list(range(1, published + 2)), f"log seqs {seqs[:3]}..{seqs[-3:]}"
    end = events[-1]
    assert end["kind"] == "complete", f"the log ends with {end['kind']}"
    assert end["data"].get("reason") == "server_restart", f"complete data {end['data']}"
    for sub in subs:
        assert sub.events == published + 1, f"a subscriber got {sub.events} events"
        assert sub.next_seq == {end["run_id"]: published + 2}, "a subscriber got another run"


async def failover(
    directory: str, redis_url: str, database_url: str, *, lease: float, rounds: int
) -> dict[str, Any]:
    """``rounds`` failovers of a 3-process cluster with ``lease``."""
    cluster = Cluster(directory, redis_url, database_url, 3, lease=lease)
    results = []
    async with running(cluster):
        for _ in range(rounds):
            results.append(await failover_round(cluster, subscribers=SUBSCRIBERS, chunks=10))
    delivered = sorted(r["delivered_s"] for r in results)
    return {
        "value": round(statistics.median(delivered), 2),
        "lease_s": lease,
        "rounds_s": [round(x, 2) for x in delivered],
        "first_subscriber_s": round(statistics.median(r["first_s"] for r in results), 2),
        "logged_s": round(statistics.median(r["logged_s"] for r in results), 2),
        "processes": 3,
        "subscribers": SUBSCRIBERS,
        # A lease key lives 0.6 of the lease and is renewed every 0.2; survivors look for
        # lapsed ones every 0.2: the end comes between 0.4 and 0.8 of the lease after the kill.
        "expected_s": [round(lease * 0.4, 2), round(lease * 0.8, 2)],
    }


def log_findings(directory: str) -> tuple[int, dict[str, int], list[str]]:
    """Errors, counts per level and a sample of the warning and error lines in the
    servers' logs."""
    counts: dict[str, int] = {}
    sample: list[str] = []
    for path in sorted(glob.glob(os.path.join(directory, "*.log"))):
        with open(path, errors="replace") as lines:
            for line in lines:
                match = _LEVEL.search(line)
                level = match.group(1) if match else "Traceback" if "Traceback" in line else ""
                if not level:
                    continue
                counts[level] = counts.get(level, 0) + 1
                if len(sample) < 10:
                    sample.append(f"{os.path.basename(path)}: {line.strip()[:300]}")
    errors = sum(n for level, n in counts.items() if level != "WARNING")
    return errors, counts, sample


async def measure(directory: str, *, quick: bool) -> None:
    """Every figure, on servers logging into ``directory``."""
    scale = 0.1 if quick else 1.0
    with redis_server() as redis_url, postgres_server() as database_url:
        for count in (1, 3):
            cluster = Cluster(directory, redis_url, database_url, count, lease=10)
            async with running(cluster):
                servers = cluster.servers
                result = await throughput(
                    servers, chunks=int(25_000 * scale), batch=True, subscribers=SUBSCRIBERS
                )
                emit(
                    f"cluster_events_per_s_100_subs_{count}_procs",
                    "events/s",
                    processes=count,
                    batch=True,
                    **result,
                )
                result = await latency(
                    servers,
                    subscribers=SUBSCRIBERS,
                    seconds=10 * scale,
                    rate=1000,
                    trial=0.3 if quick else 1.0,
                )
                emit(
                    f"cluster_latency_p99_ms_{count}_procs",
                    "ms",
                    processes=count,
                    batch=True,
                    **result,
                )
        for lease in (2,) if quick else (10, 2):
            rounds = 1 if quick or lease >= 10 else 3
            result = await failover(directory, redis_url, database_url, lease=lease, rounds=rounds)
            emit(f"cluster_failover_s_lease_{lease:g}", "s", **result)


async def main(quick: bool) -> None:
    """The figures, then what the servers logged; the logs are kept (and named) when a
    step failed or they hold errors."""
    directory = tempfile.mkdtemp(prefix="runwire-cluster-bench-")
    try:
        await measure(directory, quick=quick)
    except BaseException:
        print(f"# the servers' logs are kept in {directory}", file=sys.stderr, flush=True)
        raise
    errors, counts, sample = log_findings(directory)
    kept = directory if errors else None
    emit(
        "cluster_server_log_errors", "lines", value=errors, levels=counts, sample=sample, logs=kept
    )
    if kept is None:
        with contextlib.suppress(OSError):
            shutil.rmtree(directory)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the work, for a smoke run")
    asyncio.run(main(parser.parse_args().quick))
