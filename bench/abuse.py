"""Abuse: hostile clients beside a well-behaved one; the good one must not notice.

Starts the real server (its own process, SQLite file, ``echo``, default limits) and
measures a well-behaved client's publish-to-receipt latency on a run of ``--rate``
events/s, first on the idle server, then again while, at the same time:

- a *flooder* sends malformed frames (not JSON, wrong types, unknown types, missing
  fields, huge numbers, binary frames) and now and then one over the size limit: each must
  get an ``error`` frame (the oversized one a close with 1009, after which it reconnects);
- *stallers* subscribe to a busy session and never read: their subscriptions must end
  with ``lagged`` (counted by the server's metrics) and the server's memory stay flat;
- a *spammer* sends faster than the per-user rate limit and must get ``RATE_LIMITED``;
- a *snooper* tries the good user's session ids on every frame and endpoint and must get
  not-found for each.

Prints JSON lines: the two p99 latencies and their ratio (target <= 2), and each abuser's
counts; ``violations`` must be 0 and ``server_up`` true.

    .venv/bin/python -m bench.abuse [--seconds 10] [--rate 200] [--stallers 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .chaos import (
    PATIENCE,
    ServerProcess,
    Violations,
    frames_of,
    new_session,
    open_socket,
    small_window_socket,
)

GOOD, FLOOD, STALL, SPAM, SNOOP = "good", "flood", "stall", "spam", "snoop"
MAX_FRAME = 1 << 20
BUFFER = 1000
# Events a stalled run publishes before it is ended: past the replay buffer and all that
# the buffers on the way to a staller hold (about 1 MB: the server's kernel send buffer,
# its transport's, the client's receive window and the one message it queues), at about
# 150 bytes an event, with room to spare.
STALL_EVENTS = BUFFER + 9_000
STALL_SESSIONS = 1
MALFORMED: list[str | bytes] = [
    "not json",
    "[1, 2, 3]",
    '"a string"',
    "{}",
    '{"type": 42}',
    '{"type": "no_such_type"}',
    '{"type": "send"}',
    '{"type": "send", "content": 5}',
    '{"type": "subscribe", "session_id": "x", "after_seq": -1}',
    '{"type": "subscribe", "session_id": "x", "after_seq": 1e400}',
    '{"type": "subscribe", "session_id": "x", "after_seq": 123456789012345678901234567890}',
    '{"type": "abort", "session_id": ["x"]}',
    b"\x00\x01binary",
]


@dataclass
class Counts:
    flood_frames: int = 0
    flood_errors: int = 0
    flood_1009: int = 0
    spam_sends: int = 0
    rate_limited: int = 0
    snoop_attempts: int = 0
    stall_lagged: int = 0
    stall_rss_mb: list[float] = field(default_factory=list)


async def measured_run(
    server: ServerProcess, session_id: str, events: int, rate: float
) -> list[float]:
    """Latencies (ms) of every event of one echo run of ``events`` chunks at ``rate``/s,
    checking the run arrives whole and in order."""
    latencies: list[float] = []
    async with contextlib.aclosing(_events(server, session_id, events, rate)) as stream:
        expected = 1
        async for frame, received_ms in stream:
            if frame["seq"] != expected:
                raise AssertionError(f"good client got seq {frame['seq']}, expected {expected}")
            expected += 1
            latencies.append(received_ms - frame["ts"])
    return latencies


async def _events(server: ServerProcess, session_id: str, events: int, rate: float) -> Any:
    ws = await open_socket(server, GOOD)
    try:
        await ws.send(json.dumps({"type": "subscribe", "session_id": session_id, "id": "s"}))
        options = {"chunks": events, "delay_ms": 1000 / rate}
        await ws.send(
            json.dumps(
                {"type": "send", "session_id": session_id, "content": "hi", "options": options}
            )
        )
        while True:
            async with asyncio.timeout(PATIENCE):
                message = await ws.recv()
            received_ms = time.time() * 1000
            for frame in frames_of(message):
                if frame["type"] == "error":
                    raise AssertionError(f"good client got {frame}")
                if frame["type"] == "event":
                    yield frame, received_ms
                    if frame["kind"] == "complete":
                        return
    finally:
        await ws.close()


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[int(len(ordered) * 0.99)]


async def flooder(
    server: ServerProcess, stop: asyncio.Event, counts: Counts, violations: Violations
) -> None:
    rng = random.Random(1)
    while not stop.is_set():
        ws = await open_socket(server, FLOOD, batch=False)
        try:
            while not stop.is_set():
                if rng.random() < 0.02:
                    try:
                        await ws.send("x" * (MAX_FRAME + 1))
                        async with asyncio.timeout(PATIENCE):
                            await ws.recv()
                    except ConnectionClosed as closed:
                        if closed.rcvd is None or closed.rcvd.code != 1009:
                            violations.add(f"oversized frame closed with {closed.rcvd}")
                        counts.flood_1009 += 1
                    break
                await ws.send(rng.choice(MALFORMED))
                counts.flood_frames += 1
                async with asyncio.timeout(PATIENCE):
                    reply = frames_of(await ws.recv())[0]
                if reply.get("type") == "error":
                    counts.flood_errors += 1
                else:
                    violations.add(f"malformed frame got {reply}")
                await asyncio.sleep(0.001)
        except ConnectionClosed as closed:
            violations.add(f"the flooder's connection closed: {closed}")
        finally:
            await ws.close()


async def stallers(
    server: ServerProcess, count: int, stop: asyncio.Event, counts: Counts, violations: Violations
) -> None:
    """``count`` connections that subscribe to busy sessions and stop reading; once the
    abuse is over each reads again and must find every subscription's events whole, up to
    its ``lagged``."""
    sessions = [await new_session(server, STALL) for _ in range(STALL_SESSIONS)]
    control = await open_socket(server, STALL, batch=False)
    # Long runs at a modest rate (about a thousand events/s each): soon more than the
    # replay buffer and the stallers' small socket buffers hold, so cursors are overrun
    # (by STALL_EVENTS at the latest, which the runs are let reach).
    options = {"chunks": 45_000, "delay_ms": 1, "chunk": "y" * 20}
    for session_id in sessions:
        send = {"type": "send", "session_id": session_id, "content": "go", "options": options}
        await control.send(json.dumps(send))
    sockets = []
    for _ in range(count):
        # max_queue=1: the client library stops reading the socket once a message waits;
        # a small receive buffer: the kernel does not read on for it either.
        ws = await connect(
            server.ws_url(STALL),
            sock=await small_window_socket(server.port, rcvbuf=4096),
            compression=None,
            max_queue=1,
            max_size=None,
            # A client that does not read gets no pong either: the library's own keepalive
            # would close it (1011) after 40 s on a slow machine, before it is read.
            ping_interval=None,
        )
        for session_id in sessions:
            await ws.send(json.dumps({"type": "subscribe", "session_id": session_id}))
        sockets.append(ws)
    try:
        while not stop.is_set():
            counts.stall_rss_mb.append(round(server.rss_bytes() / 2**20, 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        await _until_published(server, STALL_EVENTS)
        for session_id in sessions:
            await control.send(json.dumps({"type": "abort", "session_id": session_id}))
        for ws in sockets:
            counts.stall_lagged += await _read_to_lagged(ws, len(sessions), violations)
    finally:
        for ws in [*sockets, control]:
            ws.transport.abort()


async def _until_published(server: ServerProcess, events: int) -> None:
    """Let the stallers' runs go on (at most :data:`PATIENCE`) until each reaches seq
    ``events``: on a slow machine the echo falls short of its pace, and the abuse may end
    before the stallers were overrun. Whether they were is then checked by reading them."""
    with contextlib.suppress(TimeoutError):
        async with server.http(STALL) as http, asyncio.timeout(PATIENCE):
            while True:
                runs = (await http.get("/api/runs")).json()["runs"]
                if all(run["last_seq"] >= events for run in runs):
                    return
                await asyncio.sleep(0.1)


async def _read_to_lagged(ws: ClientConnection, sessions: int, violations: Violations) -> int:
    """Read until each of the ``sessions`` subscriptions ended; returns how many lagged."""
    expected: dict[str, int] = {}
    lagged = ended = 0
    async with asyncio.timeout(PATIENCE):
        while ended < sessions:
            for frame in frames_of(await ws.recv()):
                if frame["type"] == "event":
                    want = expected.get(frame["session_id"], 1)
                    if frame["seq"] != want:
                        violations.add(f"staller got seq {frame['seq']}, expected {want}")
                    expected[frame["session_id"]] = frame["seq"] + 1
                    if frame["kind"] == "complete":
                        violations.add("a staller got a whole run: it never fell behind")
                        ended += 1
                elif frame["type"] == "lagged":
                    delivered = expected.get(frame["session_id"], 1) - 1
                    if frame["last_seq"] != delivered:
                        violations.add(f"lagged at {frame['last_seq']}, delivered {delivered}")
                    lagged += 1
                    ended += 1
    return lagged


async def spammer(
    server: ServerProcess, stop: asyncio.Event, counts: Counts, violations: Violations
) -> None:
    session_id = await new_session(server, SPAM)
    ws = await open_socket(server, SPAM, batch=False)
    try:
        while not stop.is_set():
            await ws.send(
                json.dumps(
                    {
                        "type": "send",
                        "session_id": session_id,
                        "content": "spam",
                        "id": 1,
                        "options": {"chunks": 1},
                        "multitask": "interrupt",
                    }
                )
            )
            counts.spam_sends += 1
            while True:
                async with asyncio.timeout(PATIENCE):
                    replies = [f for f in frames_of(await ws.recv()) if f.get("id") == 1]
                if replies:
                    break
            if replies[0]["type"] == "error":
                if replies[0]["code"] == "RATE_LIMITED":
                    counts.rate_limited += 1
                else:
                    violations.add(f"spammer got {replies[0]}")
            await asyncio.sleep(0.01)
    finally:
        await ws.close()


async def snooper(
    server: ServerProcess, victim: str, stop: asyncio.Event, counts: Counts, violations: Violations
) -> None:
    ws = await open_socket(server, SNOOP, batch=False)
    frames: list[dict[str, Any]] = [
        {"type": "subscribe", "session_id": victim},
        {"type": "send", "session_id": victim, "content": "mine now"},
        {"type": "abort", "session_id": victim},
        {"type": "unsubscribe", "session_id": victim},
    ]
    paths = ["", "/events", "/stream", "/read", "/abort"]
    try:
        async with server.http(SNOOP) as http:
            while not stop.is_set():
                for frame in frames:
                    await ws.send(json.dumps({**frame, "id": "x"}))
                    async with asyncio.timeout(PATIENCE):
                        reply = frames_of(await ws.recv())[0]
                    counts.snoop_attempts += 1
                    # A send may be refused by the rate limit first: that reveals nothing.
                    if reply.get("code") not in ("SESSION_NOT_FOUND", "RATE_LIMITED"):
                        violations.add(f"snooper's {frame['type']} got {reply}")
                for path in paths:
                    method = "POST" if path in ("/read", "/abort") else "GET"
                    response = await http.request(method, f"/api/sessions/{victim}{path}")
                    counts.snoop_attempts += 1
                    if response.status_code != 404:
                        violations.add(f"snooper's {method} {path} got {response.status_code}")
                await ws.send(json.dumps({"type": "list_runs", "status": "all", "id": "r"}))
                async with asyncio.timeout(PATIENCE):
                    runs = frames_of(await ws.recv())[0]
                if any(r["session_id"] == victim for r in runs.get("runs", [])):
                    violations.add("the snooper's list_runs shows the victim's run")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.02)
    finally:
        await ws.close()


async def lagged_total(server: ServerProcess) -> float:
    async with server.http(GOOD) as http:
        text = (await http.get("/metrics")).text
    match = re.search(r"^runwire_lagged_subscriptions(?:_total)? (\S+)$", text, re.M)
    if match is None:
        raise RuntimeError("no lagged subscriptions counter in /metrics")
    return float(match.group(1))


ABUSERS = ("flood", "stall", "spam", "snoop")


async def abuse(
    *, seconds: float, rate: float, stallers_count: int, abusers: tuple[str, ...] = ABUSERS
) -> dict[str, Any]:
    violations = Violations()
    counts = Counts()
    with tempfile.TemporaryDirectory() as directory:
        # A small replay buffer and TTL: stalled subscriptions are overrun within seconds,
        # and the runs of the abuse leave memory soon after, so memory shows the bound.
        server = ServerProcess(
            f"{directory}/abuse.db",
            [GOOD, FLOOD, STALL, SPAM, SNOOP],
            "--buffer-size",
            str(BUFFER),
            "--run-ttl",
            "2",
        )
        await server.start()
        try:
            events = int(seconds * rate)
            await measured_run(server, await new_session(server, GOOD), int(rate), rate)  # warm
            idle = await measured_run(server, await new_session(server, GOOD), events, rate)
            rss_before = server.rss_bytes()
            victim = await new_session(server, GOOD)
            stop = asyncio.Event()
            chosen = {
                "flood": lambda: flooder(server, stop, counts, violations),
                "stall": lambda: stallers(server, stallers_count, stop, counts, violations),
                "spam": lambda: spammer(server, stop, counts, violations),
                "snoop": lambda: snooper(server, victim, stop, counts, violations),
            }
            tasks = [asyncio.create_task(chosen[name]()) for name in abusers]
            try:
                abused = await measured_run(server, victim, events, rate)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            lagged = await lagged_total(server)
            async with server.http(GOOD) as http:
                up = (await http.get("/healthz")).status_code == 200
            rss_after = server.rss_bytes()
        finally:
            await server.stop()
    subscriptions = stallers_count * STALL_SESSIONS if "stall" in abusers else 0
    if counts.stall_lagged < subscriptions or lagged < subscriptions:
        violations.add(f"{counts.stall_lagged} stallers saw lagged, the server counted {lagged}")
    if "spam" in abusers and counts.rate_limited == 0:
        violations.add("the spammer was never rate limited")
    return {
        "idle_p99_ms": round(p99(idle), 2),
        "abused_p99_ms": round(p99(abused), 2),
        "p99_ratio": round(p99(abused) / p99(idle), 2),
        "flood_frames": counts.flood_frames,
        "flood_errors": counts.flood_errors,
        "flood_1009_closes": counts.flood_1009,
        "stallers_lagged": counts.stall_lagged,
        "lagged_subscriptions": lagged,
        "stall_rss_mb_max": max(counts.stall_rss_mb, default=0.0),
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1),
        "spam_sends": counts.spam_sends,
        "rate_limited": counts.rate_limited,
        "snoop_attempts": counts.snoop_attempts,
        "violations": violations.count,
        "violation_sample": violations.sample,
        "server_up": up,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--stallers", type=int, default=20)
    parser.add_argument(
        "--abusers",
        default=",".join(ABUSERS),
        help="comma-separated subset of " + ",".join(ABUSERS),
    )
    args = parser.parse_args()
    abusers = tuple(name for name in args.abusers.split(",") if name)
    figures = asyncio.run(
        abuse(seconds=args.seconds, rate=args.rate, stallers_count=args.stallers, abusers=abusers)
    )
    units = {"ms": "ms", "mb": "MiB", "ratio": "ratio"}
    for name, value in figures.items():
        unit = next((u for suffix, u in units.items() if suffix in name), "count")
        line: dict[str, Any] = {"name": name, "value": value, "unit": unit}
        if name == "p99_ratio":
            line["target"] = "<=2"
        print(json.dumps(line))


if __name__ == "__main__":
    main()
