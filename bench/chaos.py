"""What the soak, crash and abuse programs share: the server as a child process, clients
that misbehave on purpose, and the checks that every delivered event is right.

The pieces:

- :class:`ServerProcess`: ``runwire serve`` in its own process (SQLite file, ``echo``),
  which can be SIGKILLed and started again on the same database and port, with its RSS.
- :class:`Follower`: a subscriber that disconnects and reconnects at random points,
  resubscribing from its last position, and checks each event as it arrives: per run,
  seq exactly one past the last one it has (no gap, no duplicate), nothing after a
  ``complete``. It keeps what it received for the final comparison with the log.
- :class:`Sender`: drives one session: sends with each ``multitask`` policy, resends
  with the same ``client_msg_id`` (which must come back ``duplicate`` with the same run),
  aborts at random times, and retries an unanswered send with its ``client_msg_id``
  after a connection loss, as a real client does.
- :func:`check_log`, :func:`check_accepted`, :func:`check_received`: the log of a
  session, read over HTTP, on its own, against what its sender was told, and against
  what each follower received.
- :class:`Load`: sessions with a sender and followers each, run, settled and checked.

Every finding is a :class:`Violations` entry; a correct server produces none.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

POLICIES = ("reject", "enqueue", "interrupt")
# Server errors a well-behaved sender may get in normal operation.
EXPECTED_ERRORS = {"RUN_IN_PROGRESS", "QUEUE_FULL", "NO_ACTIVE_RUN"}
# Server flags that lift the per-user send limit, for programs whose users send a lot.
UNLIMITED_SENDS = ("--send-rate", "1000", "--send-burst", "1000")
# How long a client waits for anything before it counts the wait as a violation.
PATIENCE = 60.0

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def token(user: str) -> str:
    return f"tok-{user}"


class Violations:
    """The findings of one program run (kept to a sample; all are counted)."""

    def __init__(self, keep: int = 20) -> None:
        self.count = 0
        self.sample: list[str] = []
        self._keep = keep

    def add(self, what: str) -> None:
        self.count += 1
        if len(self.sample) < self._keep:
            self.sample.append(what)


# The server ---------------------------------------------------------------------------


class ServerProcess:
    """``runwire serve`` as a child process, with one token per user in ``users``; its
    stderr (the server's log) is appended to the file ``log``, or discarded."""

    def __init__(self, db: str, users: Iterable[str], *flags: str, log: str | None = None) -> None:
        self.db = db
        self.users = list(users)
        self.flags = flags
        self.log = log
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, user: str, *, batch: bool = True) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?token={token(user)}" + ("&batch=1" if batch else "")

    def http(self, user: str) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token(user)}"}
        return httpx.AsyncClient(base_url=self.http_url, headers=headers, timeout=PATIENCE)

    async def start(self) -> None:
        """Start the server (on the port it had before, after a restart)."""
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port)]
        cmd += ["--db", self.db, *self.flags]
        for user in self.users:
            cmd += ["--token", f"{token(user)}:{user}"]
        stderr = asyncio.subprocess.DEVNULL
        if self.log is not None:
            stderr = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            process = await asyncio.create_subprocess_exec(
                *cmd,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "RUNWIRE_TOKENS": ""},
            )
        finally:
            if self.log is not None:
                os.close(stderr)  # the child has its own copy
        self.process = process
        assert process.stdout is not None
        async with asyncio.timeout(PATIENCE):
            while True:
                line = (await process.stdout.readline()).decode()
                if not line:
                    raise RuntimeError("the server exited during startup")
                match = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", line)
                if match:
                    self.port = int(match.group(1))
                    return

    def rss_bytes(self) -> int:
        """The server's resident memory now."""
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), PATIENCE)
        except TimeoutError:
            process.kill()
            await process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


async def open_socket(server: ServerProcess, user: str, *, batch: bool = True) -> ClientConnection:
    """A WebSocket to the server, retrying while it is down (a restart) for ``PATIENCE``."""
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            return await connect(
                server.ws_url(user, batch=batch), compression=None, max_size=None, open_timeout=10
            )
        except (OSError, InvalidHandshake, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def small_window_socket(
    port: int, *, host: str = "127.0.0.1", rcvbuf: int = 8192
) -> socket.socket:
    """A connected, non-blocking client socket with a small receive buffer, set before it
    connects so the kernel does not grow it: a client that stops reading stops the server's
    writes quickly (for stalled or slow clients)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def new_session(server: ServerProcess, user: str) -> str:
    """A fresh session of ``user``, over the HTTP API."""
    async with server.http(user) as http:
        response = await http.post("/api/sessions", json={})
        response.raise_for_status()
        return str(response.json()["session_id"])


def frames_of(message: str | bytes) -> list[dict[str, Any]]:
    decoded = _decode(message)
    return decoded if isinstance(decoded, list) else [decoded]


# Following a session --------------------------------------------------------------------


@dataclass
class Follower:
    """One subscriber of a session that checks everything it receives.

    ``drop_rate`` is the chance, per message received, that it closes its socket there
    and reconnects from its last position. ``after`` is where it starts: ``None`` for the
    session's latest run from seq 0 (a tab opened now), or a ``(run_id, seq)``.
    """

    server: ServerProcess
    user: str
    session_id: str
    violations: Violations
    rng: random.Random
    drop_rate: float = 0.0
    after: tuple[str, int] | None = None
    # run_id -> the events received, in order: (seq, kind, data).
    received: dict[str, list[tuple[int, str, Any]]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    events: int = 0
    reconnects: int = 0
    lagged: int = 0
    # The run whose complete ends this follower's work, once the sender is done
    # (``ends_known``); ``None`` then means the session had no run at all.
    final_run: str | None = None
    ends_known: bool = False
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    chaos: bool = True

    def position(self) -> tuple[str, int] | None:
        if not self.order:
            return self.after
        run_id = self.order[-1]
        return run_id, self.received[run_id][-1][0]

    def finish_at(self, run_id: str | None) -> None:
        """Stop once ``run_id`` has completed here (``None``: the session had no run)."""
        self.final_run = run_id
        self.ends_known = True
        self._check_caught_up()

    def _check_caught_up(self) -> None:
        if not self.ends_known:
            return
        final = self.final_run
        if final is None:
            self.caught_up.set()
            return
        events = self.received.get(final)
        if events and events[-1][1] == "complete":
            self.caught_up.set()

    async def run(self) -> None:
        """Follow until caught up with :attr:`final_run`."""
        while not self.caught_up.is_set():
            try:
                ws = await open_socket(self.server, self.user)
            except Exception as exc:
                self.violations.add(f"follower of {self.session_id} cannot connect: {exc!r}")
                return
            follow = asyncio.ensure_future(self._follow(ws))
            done = asyncio.ensure_future(self.caught_up.wait())
            try:
                await asyncio.wait((follow, done), return_when=asyncio.FIRST_COMPLETED)
            finally:
                follow.cancel()
                done.cancel()
                await ws.close()
            try:
                await follow
            except (asyncio.CancelledError, ConnectionClosed, OSError):
                pass  # Caught up, or the server went away (a crash): reconnect if needed.
            except TimeoutError:
                self.violations.add(f"follower of {self.session_id} waited {PATIENCE}s")
                return
            if not self.caught_up.is_set():
                self.reconnects += 1

    async def _follow(self, ws: ClientConnection) -> None:
        await self._subscribe(ws)
        while not self.caught_up.is_set():
            async with asyncio.timeout(PATIENCE):
                message = await ws.recv()
            for frame in frames_of(message):
                kind = frame.get("type")
                if kind == "event":
                    self._event(frame)
                elif kind == "lagged":
                    self.lagged += 1
                    await self._subscribe(ws)
                elif kind == "error":
                    self.violations.add(f"follower of {self.session_id} got {frame}")
                elif kind == "subscribed" and not frame.get("recovered", False):
                    self.violations.add(f"subscribe to {self.session_id} not recovered: {frame}")
            if self.caught_up.is_set():
                return
            if self.chaos and self.rng.random() < self.drop_rate:
                return  # Disconnect here, mid-stream.

    async def _subscribe(self, ws: ClientConnection) -> None:
        frame: dict[str, Any] = {"type": "subscribe", "session_id": self.session_id}
        position = self.position()
        if position is not None:
            frame.update(run_id=position[0], after_seq=position[1])
        await ws.send(_encode(frame).decode())

    def _event(self, frame: dict[str, Any]) -> None:
        run_id, seq = frame["run_id"], frame["seq"]
        events = self.received.get(run_id)
        if events is None:
            events = self.received[run_id] = []
            self.order.append(run_id)
            start = self.after[1] if self.after and self.after[0] == run_id else 0
        else:
            start = events[-1][0]
            if events[-1][1] == "complete":
                self.violations.add(f"event after complete: {run_id}:{seq}")
        if seq != start + 1:
            self.violations.add(f"{self.session_id} {run_id}: got seq {seq} after {start}")
        events.append((seq, frame["kind"], frame["data"]))
        self.events += 1
        self._check_caught_up()


# Driving a session ------------------------------------------------------------------------


@dataclass
class Sender:
    """Sends to one session over its own connection until told to stop.

    ``accepted`` maps each accepted ``client_msg_id`` to the run it produced.
    """

    server: ServerProcess
    user: str
    session_id: str
    violations: Violations
    rng: random.Random
    policies: tuple[str, ...] = POLICIES
    max_chunks: int = 60
    pause: float = 0.3
    accepted: dict[str, str] = field(default_factory=dict)
    aborts: int = 0
    rate_limited: int = 0
    _ws: ClientConnection | None = None
    _next_id: int = 0

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send ``frame`` and return its reply, reconnecting (and resending the same frame)
        if the connection is lost first."""
        deadline = time.monotonic() + PATIENCE
        while True:
            if self._ws is None:
                self._ws = await open_socket(self.server, self.user, batch=False)
            self._next_id += 1
            frame_id = self._next_id
            try:
                await self._ws.send(_encode({**frame, "id": frame_id}).decode())
                async with asyncio.timeout(PATIENCE):
                    while True:
                        for reply in frames_of(await self._ws.recv()):
                            if reply.get("id") == frame_id:
                                return reply
            except (ConnectionClosed, OSError):
                await self.close()
                if time.monotonic() > deadline:
                    raise

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def send(
        self, policy: str, *, client_msg_id: str | None = None, long: bool = False
    ) -> bool:
        """One send (``long``: a run of about a second); checks the ack against what was
        accepted before. ``True`` when a run started."""
        msg_id = client_msg_id or uuid.uuid4().hex
        if long:
            options = {"chunks": self.rng.randint(50, 200), "delay_ms": 5}
        else:
            options = {
                "chunks": self.rng.randint(1, self.max_chunks),
                "delay_ms": self.rng.choice((0, 1, 2, 5)),
            }
        reply = await self.request(
            {
                "type": "send",
                "session_id": self.session_id,
                "content": f"message {msg_id}",
                "options": options,
                "client_msg_id": msg_id,
                "multitask": policy,
            }
        )
        if reply["type"] == "error":
            if reply["code"] == "RATE_LIMITED":
                self.rate_limited += 1
            elif reply["code"] not in EXPECTED_ERRORS:
                self.violations.add(f"send to {self.session_id}: {reply}")
            return False
        status, run_id = reply.get("status"), str(reply.get("run_id"))
        known = self.accepted.get(msg_id)
        if known is not None and (status != "duplicate" or run_id != known):
            self.violations.add(f"resend of {msg_id} gave {status} {run_id}, not {known}")
        elif known is None and status == "duplicate":
            # Only after a lost ack: the first send was accepted after all.
            self.accepted[msg_id] = run_id
        elif known is None:
            self.accepted[msg_id] = run_id
        return status == "started"

    async def send_long(self) -> None:
        """Start a run that lasts minutes (it ends by abort, crash or shutdown)."""
        msg_id = uuid.uuid4().hex
        options = {"chunks": 100_000, "delay_ms": 5}
        send = {"type": "send", "session_id": self.session_id, "content": "long"}
        reply = await self.request({**send, "options": options, "client_msg_id": msg_id})
        if reply.get("status") != "started":
            raise RuntimeError(f"the long run did not start: {reply}")
        self.accepted[msg_id] = reply["run_id"]

    async def abort(self) -> None:
        reply = await self.request({"type": "abort", "session_id": self.session_id})
        if reply["type"] == "ack":
            self.aborts += 1
        elif reply.get("code") not in EXPECTED_ERRORS:
            self.violations.add(f"abort of {self.session_id}: {reply}")

    async def run(self, stop: asyncio.Event) -> None:
        """Send, resend, abort and pause at random until ``stop`` is set."""
        while not stop.is_set():
            action = self.rng.random()
            if action < 0.15 and self.accepted:
                await self.send("enqueue", client_msg_id=self.rng.choice(list(self.accepted)))
            elif action < 0.3:
                await self.abort()
            else:
                long = self.rng.random() < 0.25
                started = await self.send(self.rng.choice(self.policies), long=long)
                if started and long:
                    # Stop it mid-stream, or just as it completes on its own.
                    await asyncio.sleep(self.rng.random() * 1.2)
                    await self.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.random() * self.pause)

    async def settle(self) -> None:
        """Wait until the session has no running or queued run."""
        deadline = time.monotonic() + PATIENCE
        while True:
            reply = await self.request({"type": "list_runs", "status": "all"})
            busy = [
                r
                for r in reply.get("runs", [])
                if r["session_id"] == self.session_id and r["status"] in ("running", "queued")
            ]
            if not busy:
                return
            if time.monotonic() > deadline:
                self.violations.add(f"{self.session_id} still busy: {busy}")
                return
            await asyncio.sleep(0.05)


# Checking against the log -----------------------------------------------------------------


async def history(server: ServerProcess, user: str, session_id: str) -> list[dict[str, Any]]:
    """Every stored event of the session, in order, over the HTTP API."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    async with server.http(user) as http:
        while True:
            response = await http.get(f"/api/sessions/{session_id}/events", params=params)
            response.raise_for_status()
            page = response.json()
            events.extend(page["events"])
            following = page["next"]
            if following is None:
                return events
            params = {
                "limit": 1000,
                "after_run": following["run_id"],
                "after_seq": following["seq"],
            }


def runs_of(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        runs.setdefault(event["run_id"], []).append(event)
    return runs


def check_log(session_id: str, events: list[dict[str, Any]], violations: Violations) -> None:
    """Each run in the log: seq 1..n, a ``user_message`` first, one ``complete``, last."""
    for run_id, run in runs_of(events).items():
        seqs = [e["seq"] for e in run]
        if seqs != list(range(1, len(run) + 1)):
            violations.add(f"log of {session_id} {run_id} has seqs {seqs[:5]}...")
        if run[0]["kind"] != "user_message":
            violations.add(f"log of {run_id} starts with {run[0]['kind']}")
        completes = sum(e["kind"] == "complete" for e in run)
        if completes != 1 or run[-1]["kind"] != "complete":
            violations.add(f"log of {run_id} has {completes} completes, last {run[-1]['kind']}")


def check_accepted(
    session_id: str, events: list[dict[str, Any]], accepted: dict[str, str], violations: Violations
) -> None:
    """Every accepted send produced exactly one run, and no run came from nowhere."""
    runs = runs_of(events)
    by_msg = {run[0]["data"].get("client_msg_id"): run_id for run_id, run in runs.items()}
    for msg_id, run_id in accepted.items():
        if by_msg.get(msg_id) != run_id:
            violations.add(f"accepted {msg_id} -> {run_id} is not in the log of {session_id}")
    if len(runs) != len(accepted):
        violations.add(f"{session_id}: {len(runs)} runs in the log, {len(accepted)} accepted")


def check_received(follower: Follower, events: list[dict[str, Any]]) -> None:
    """What the follower received is the log's content, each run to its ``complete``."""
    runs = runs_of(events)
    for run_id, got in follower.received.items():
        stored = runs.get(run_id)
        if stored is None:
            follower.violations.add(f"received run {run_id} is not in the log")
            continue
        for seq, kind, data in got:
            if seq > len(stored) or (stored[seq - 1]["kind"], stored[seq - 1]["data"]) != (
                kind,
                data,
            ):
                follower.violations.add(f"received {run_id}:{seq} differs from the log")
                break
        if got and got[-1][1] != "complete":
            follower.violations.add(f"follower of {run_id} stopped at seq {got[-1][0]}")
    # Runs are delivered in start order, and none the follower should have seen is missing.
    log_order = [r for r in runs if r in follower.received]
    if log_order != follower.order:
        follower.violations.add(f"runs of {follower.session_id} out of order")
    if follower.order:
        later = list(runs)[list(runs).index(follower.order[0]) :]
        if later != follower.order:
            follower.violations.add(f"follower of {follower.session_id} missed runs")


async def catch_up(followers: list[Follower], final_run: str | None) -> None:
    """Tell followers where the session ends and wait until each got there."""
    for follower in followers:
        follower.chaos = False
        follower.finish_at(final_run)
    try:
        async with asyncio.timeout(PATIENCE):
            await asyncio.gather(*(f.caught_up.wait() for f in followers))
    except TimeoutError:
        for follower in followers:
            if not follower.caught_up.is_set():
                follower.violations.add(
                    f"follower of {follower.session_id} stuck at {follower.position()}"
                )
                # Counted; now let it end, so the program reports instead of hanging.
                follower.caught_up.set()


# A whole load ----------------------------------------------------------------------------


@dataclass
class Load:
    """Fresh sessions, each with a :class:`Sender` and followers, run and then checked.

    Use: :meth:`create`, :meth:`start`, let it run, :meth:`finish` (stop sending, let
    every run end and every follower catch up; returns each session's log), :meth:`check`.
    """

    senders: list[Sender]
    followers: list[list[Follower]]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _sending: list[asyncio.Task[None]] = field(default_factory=list)
    _following: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def create(
        cls,
        server: ServerProcess,
        owners: list[str],
        violations: Violations,
        rng: random.Random,
        *,
        subscribers: int,
        **sender_options: Any,
    ) -> Load:
        senders = [
            Sender(
                server,
                user,
                await new_session(server, user),
                violations,
                random.Random(rng.random()),
                **sender_options,
            )
            for user in owners
        ]
        followers = [
            [
                Follower(
                    server, s.user, s.session_id, violations, random.Random(rng.random()), 0.02
                )
                for _ in range(subscribers)
            ]
            for s in senders
        ]
        return cls(senders, followers)

    @property
    def everyone(self) -> list[Follower]:
        return [f for group in self.followers for f in group]

    def start(self, *, quiet: int = 0) -> None:
        """Start following every session, and sending to all but the first ``quiet``."""
        self._following = [asyncio.create_task(f.run()) for f in self.everyone]
        self._sending = [asyncio.create_task(s.run(self.stop)) for s in self.senders[quiet:]]

    async def finish(self) -> list[list[dict[str, Any]]]:
        """Stop sending; once every run has ended and every follower has caught up with
        its session's log, return the logs (one per session, in order)."""
        self.stop.set()
        await asyncio.gather(*self._sending)
        senders = self.senders
        await asyncio.gather(*(s.settle() for s in senders))
        logs = [await history(s.server, s.user, s.session_id) for s in senders]
        for group, log in zip(self.followers, logs, strict=True):
            await catch_up(group, log[-1]["run_id"] if log else None)
        await asyncio.gather(*self._following)
        return logs

    async def check(self, logs: list[list[dict[str, Any]]], violations: Violations) -> None:
        """Every check of :mod:`bench.chaos` on every session; closes the senders."""
        for sender, group, log in zip(self.senders, self.followers, logs, strict=True):
            await sender.close()
            check_log(sender.session_id, log, violations)
            check_accepted(sender.session_id, log, sender.accepted, violations)
            for follower in group:
                check_received(follower, log)
