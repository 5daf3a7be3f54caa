"""Soak: many sessions, many misbehaving subscribers, for a while; nothing may be lost.

Starts the real server (its own process, SQLite file, ``echo``, a short run TTL) and, from
this process over loopback, drives ``--sessions`` sessions for ``--seconds``: each has a
sender (every ``multitask`` policy, resends with the same ``client_msg_id``, aborts at
random times) and ``--subscribers`` followers that disconnect and reconnect at random
points. Then every follower catches up, a late follower subscribes from the start after
the runs were evicted, and everything received is checked against the log
(:mod:`bench.chaos`). A warm-up of the same load comes first. Prints JSON lines;
``violations`` must be 0 and the RSS after the TTL within 20 % of the warm start.

    .venv/bin/python -m bench.soak [--seconds 60] [--sessions 200] [--subscribers 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
from dataclasses import dataclass
from typing import Any

from .chaos import (
    UNLIMITED_SENDS,
    Follower,
    Load,
    Sender,
    ServerProcess,
    Violations,
    check_received,
    runs_of,
)

USERS = [f"user{i}" for i in range(10)]
# Idle seconds after the load, past the run TTL, before the last RSS reading: the sweeper
# runs every second or so, and the allocator needs a moment to hand memory back.
SETTLE = 3.0


@dataclass
class Phase:
    """What one period of load produced."""

    events: int = 0
    runs: int = 0
    aborts: int = 0
    reconnects: int = 0
    lagged: int = 0
    peak: int = 0

    def add(self, other: Phase) -> None:
        self.events += other.events
        self.runs += other.runs
        self.aborts += other.aborts
        self.reconnects += other.reconnects
        self.lagged += other.lagged
        self.peak = max(self.peak, other.peak)


@dataclass
class Figures:
    events_delivered: int
    violations: int
    runs: int
    aborts: int
    reconnects: int
    lagged: int
    rss_boot_mb: float
    rss_start_mb: float
    rss_peak_mb: float
    rss_after_ttl_mb: float
    violation_sample: list[str]

    @property
    def rss_growth(self) -> float:
        return self.rss_after_ttl_mb / self.rss_start_mb - 1


async def soak(
    *,
    seconds: float,
    sessions: int,
    subscribers: int,
    run_ttl: float = 5.0,
    warmup: float | None = None,
    seed: int = 0,
) -> Figures:
    """Run the soak; ``warmup`` seconds (default a quarter of ``seconds``) of the same load
    come first, so the start RSS is the warm server's (its caches, imports and allocator
    arenas in use), and growth after that is what a leak would show."""
    rng = random.Random(seed)
    violations = Violations()
    with tempfile.TemporaryDirectory() as directory:
        server = ServerProcess(
            f"{directory}/soak.db",
            USERS,
            "--run-ttl",
            str(run_ttl),
            *UNLIMITED_SENDS,
        )
        await server.start()
        try:
            boot = server.rss_bytes()
            total = Phase()
            load = (rng, violations, sessions, subscribers, run_ttl)
            total.add(await _phase(server, *load, seconds / 4 if warmup is None else warmup))
            start = server.rss_bytes()
            total.add(await _phase(server, *load, seconds))
            after = server.rss_bytes()
        finally:
            await server.stop()
    return Figures(
        events_delivered=total.events,
        violations=violations.count,
        runs=total.runs,
        aborts=total.aborts,
        reconnects=total.reconnects,
        lagged=total.lagged,
        rss_boot_mb=round(boot / 2**20, 1),
        rss_start_mb=round(start / 2**20, 1),
        rss_peak_mb=round(total.peak / 2**20, 1),
        rss_after_ttl_mb=round(after / 2**20, 1),
        violation_sample=violations.sample,
    )


async def _phase(
    server: ServerProcess,
    rng: random.Random,
    violations: Violations,
    sessions: int,
    subscribers: int,
    run_ttl: float,
    seconds: float,
) -> Phase:
    """``seconds`` of load on fresh sessions, the checks, then idle past the run TTL."""
    peak = server.rss_bytes()
    owners = [USERS[i % len(USERS)] for i in range(sessions)]
    load = await Load.create(server, owners, violations, rng, subscribers=subscribers)
    load.start()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(0.5)
        peak = max(peak, server.rss_bytes())
    logs = await load.finish()
    peak = max(peak, server.rss_bytes())
    await load.check(logs, violations)
    senders = load.senders
    # Past the TTL every run is evicted: late subscribers replay from the log.
    await asyncio.sleep(run_ttl + SETTLE)
    late = await _late_followers(server, senders, logs, rng, violations)
    everyone = load.everyone + late
    return Phase(
        events=sum(f.events for f in everyone),
        runs=sum(len(runs_of(log)) for log in logs),
        aborts=sum(s.aborts for s in senders),
        reconnects=sum(f.reconnects for f in everyone),
        lagged=sum(f.lagged for f in everyone),
        peak=peak,
    )


async def _late_followers(
    server: ServerProcess,
    senders: list[Sender],
    logs: list[list[dict[str, Any]]],
    rng: random.Random,
    violations: Violations,
) -> list[Follower]:
    """A follower per session (up to 20) from the first run's seq 0, after eviction."""
    picked = [(s, log) for s, log in zip(senders, logs, strict=True) if log]
    picked = rng.sample(picked, min(20, len(picked)))
    late = [
        Follower(
            server,
            s.user,
            s.session_id,
            violations,
            random.Random(rng.random()),
            after=(log[0]["run_id"], 0),
        )
        for s, log in picked
    ]
    for follower, (_, log) in zip(late, picked, strict=True):
        follower.finish_at(log[-1]["run_id"])
    await asyncio.gather(*(f.run() for f in late))
    for follower, (_, log) in zip(late, picked, strict=True):
        check_received(follower, log)
        if sum(len(v) for v in follower.received.values()) != len(log):
            violations.add(f"late follower of {follower.session_id} did not get the whole log")
    return late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--subscribers", type=int, default=5)
    parser.add_argument("--run-ttl", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=None, help="default: seconds / 4")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    figures = asyncio.run(
        soak(
            seconds=args.seconds,
            sessions=args.sessions,
            subscribers=args.subscribers,
            run_ttl=args.run_ttl,
            warmup=args.warmup,
            seed=args.seed,
        )
    )
    details = {"seconds": args.seconds, "sessions": args.sessions}
    for name, unit in (
        ("events_delivered", "events"),
        ("violations", "count"),
        ("runs", "count"),
        ("aborts", "count"),
        ("reconnects", "count"),
        ("lagged", "count"),
        ("rss_boot_mb", "MiB"),
        ("rss_start_mb", "MiB"),
        ("rss_peak_mb", "MiB"),
        ("rss_after_ttl_mb", "MiB"),
    ):
        print(json.dumps({"name": name, "value": getattr(figures, name), "unit": unit, **details}))
    print(
        json.dumps(
            {
                "name": "rss_growth_after_ttl",
                "value": round(figures.rss_growth, 3),
                "unit": "ratio",
                "target": "<=0.2",
            }
        )
    )
    if figures.violation_sample:
        print(json.dumps({"name": "violation_sample", "value": figures.violation_sample}))


if __name__ == "__main__":
    main()
