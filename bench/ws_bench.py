"""WebSocket gateway benchmark: throughput, fan-out, latency and a reconnect storm.

Starts ``runwire serve`` in its own process (SQLite file in a temporary directory, the echo
provider, default settings) and drives it from this process over loopback with the
``picows`` client (no compression; see :class:`Link`). Every subscriber checks that it
receives every event of every run it follows exactly once and in order; the subscribers
of one measurement read each distinct message once between them (the server sends them
the same ones) and each checks it against its own position, so that this one process
does not bound what is measured. This process's garbage collector pauses while a
measurement runs, as ``timeit``'s does: its pauses would count as the server's latency.

Prints one JSON object per line: ``{"name", "value", "unit", ...details}``. Each
throughput figure and the latency is the median of three runs (``values`` lists all
three). A throughput figure also gives the CPU seconds the server and this client used
while it was measured (``server_cpu_s``, ``client_cpu_s``): both share one machine, so a
figure that falls short with the two adding up to every core was bound by the machine
rather than by waiting.

    .venv/bin/python -m bench.ws_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

import httpx
import msgspec
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

TOKEN = "bench"
# Runs of each throughput figure; the median is reported (see :func:`median_of`).
RUNS = 3
# The echo provider refuses replies longer than this.
MAX_REPLY = 1_000_000
# Largest message the client takes (a replay page can be big; the server bounds them).
MAX_MESSAGE = 2**30


class Frame(msgspec.Struct):
    """The fields of a server frame the benchmark looks at (the rest is skipped)."""

    type: str
    run_id: str | None = None
    session_id: str | None = None
    seq: int = 0
    kind: str = ""
    ts: int = 0
    id: int | str | None = None
    last_seq: int = 0
    code: str = ""
    message: str = ""


class EventFrame(msgspec.Struct, tag_field="type", tag="event", gc=False):
    """The fields of an ``event`` frame that :func:`stretches_of` reads."""

    run_id: str
    seq: int
    kind: str
    ts: int


_decode = msgspec.json.Decoder(list[Frame] | Frame).decode
# Nearly every message of a stream is events only (one, or an array): decoding just these
# fields, with ``type`` matched as a tag, costs the client less of the shared machine.
_decode_events = msgspec.json.Decoder(list[EventFrame] | EventFrame).decode


@dataclass
class Server:
    process: asyncio.subprocess.Process | None
    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, *, batch: bool) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?token={TOKEN}" + ("&batch=1" if batch else "")


@asynccontextmanager
async def run_server(directory: str, *flags: str) -> AsyncIterator[Server]:
    """``runwire serve`` as a child process on a free port."""
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", "0"]
    cmd += ["--db", os.path.join(directory, "bench.db"), "--token", f"{TOKEN}:bench", *flags]
    process = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        port = None
        while port is None:
            line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
            if not line:
                raise RuntimeError("the server exited during startup")
            match = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", line)
            if match:
                port = int(match.group(1))
        yield Server(process, port)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


class Reader(Protocol):
    """What a :class:`Link` hands its messages to once it has one."""

    def receive(self, message: bytes) -> None: ...

    def disconnected(self) -> None: ...


class Link(WSListener):
    """One WebSocket connection of the client, on ``picows``.

    The client shares the machine with the server it measures, so it should cost as little
    of it as it can: ``picows`` parses frames in C, and a :class:`Reader` gets each message
    as it is read, with no task switch between (the ``websockets`` client cost a third more
    CPU a message here, and a run where it fell behind counted that as the server's latency).
    Until a reader is set, messages queue for :meth:`recv`.
    """

    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self._reader: Reader | None = None
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._parts: list[bytes] = []

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if kind not in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            return  # pings are answered by picows itself
        data = frame.get_payload_as_bytes()
        if not frame.fin:
            self._parts.append(data)
            return
        if self._parts:
            data = b"".join([*self._parts, data])
            self._parts.clear()
        if self._reader is None:
            self._inbox.put_nowait(data)
        else:
            self._reader.receive(data)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._inbox.put_nowait(None)
        if self._reader is not None:
            self._reader.disconnected()

    def read_with(self, reader: Reader) -> None:
        """From now on hand every message to ``reader``, first those queued."""
        inbox = self._inbox
        while not inbox.empty():
            message = inbox.get_nowait()
            if message is None:
                inbox.put_nowait(None)  # for recv(), as on_ws_disconnected leaves it
                reader.disconnected()
                break
            reader.receive(message)
        self._reader = reader

    def send(self, text: str) -> None:
        if self.transport is None:
            raise ConnectionError("not connected")
        self.transport.send(WSMsgType.TEXT, text.encode())

    async def recv(self) -> bytes:
        """The next message, when no reader is set."""
        message = await self._inbox.get()
        if message is None:
            self._inbox.put_nowait(None)  # closed for every later call too
            raise ConnectionError("the server closed the connection")
        return message

    async def close(self) -> None:
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        transport.send_close(WSCloseCode.OK)
        transport.disconnect()
        await transport.wait_disconnected()


async def open_link(url: str) -> Link:
    """A connected :class:`Link` to ``url``."""
    _, link = await ws_connect(Link, url, max_frame_size=MAX_MESSAGE)
    assert isinstance(link, Link)
    return link


class Stretch(NamedTuple):
    """The next stretch of one run's events: seqs ``first`` to ``first + length - 1`` of
    ``run_id`` in order, with no ``complete`` among them."""

    run_id: str
    first: int
    length: int
    ts: list[int]


Stretched = tuple[Stretch, ...]
"""A message of events only, read as one stretch per run (nearly every message of a
stream: a batch holds each subscription's events in a row)."""


def stretches_of(message: bytes) -> Stretched | None:
    """``message`` read as stretches; ``None`` for any other message (with anything but
    events, a ``complete``, a run's seqs not consecutive, or a run in two places)."""
    try:
        events = _decode_events(message)
    except msgspec.ValidationError:
        return None  # Not events only.
    if not isinstance(events, list):
        # One event alone (every message of an unbatched stream): no lists to build.
        if events.kind == "complete":
            return None
        return (Stretch(events.run_id, events.seq, 1, [events.ts]),)
    stretches: list[Stretch] = []
    for run_id, group in itertools.groupby(events, key=attrgetter("run_id")):
        run = list(group)
        first, count = run[0].seq, len(run)
        if [e.seq for e in run] != list(range(first, first + count)) or "complete" in [
            e.kind for e in run
        ]:
            return None
        stretches.append(Stretch(run_id, first, count, [e.ts for e in run]))
    if not stretches or len({s.run_id for s in stretches}) < len(stretches):
        return None
    return tuple(stretches)


Reading = Stretched | list[Frame]
"""A message as a subscriber checks it: in bulk as stretches when it is, else frame by
frame."""


def read(message: bytes) -> Reading:
    """``message`` as stretches when it is, else as its frames."""
    stretched = stretches_of(message)
    return read_frames(message) if stretched is None else stretched


def read_frames(message: bytes) -> list[Frame]:
    decoded = _decode(message)
    return decoded if isinstance(decoded, list) else [decoded]


class Readings:
    """The messages of one measurement as read once, shared by its subscribers.

    The server sends every subscriber of a run the same messages (the same events, woken
    by the same commit), and all the subscribers live in this one process, on the machine
    the server runs on: reading each distinct message once, instead of once per
    subscriber, leaves that CPU to the server being measured. Each subscriber still checks
    every message against its own position.
    """

    def __init__(self, limit_bytes: int = 32 * 2**20) -> None:
        self._limit = limit_bytes
        self._bytes = 0
        self._read: dict[bytes, Reading] = {}

    def get(self, message: bytes) -> Reading:
        known = self._read.get(message)
        if known is not None:
            return known
        reading = read(message)
        if self._bytes + len(message) > self._limit:
            # Subscribers move on together: what they read long ago will not come again.
            self._read.clear()
            self._bytes = 0
        self._read[message] = reading
        self._bytes += len(message)
        return reading


@dataclass
class Subscriber:
    """One connection following ``runs`` runs; checks every event and resubscribes after
    ``lagged`` (losing nothing). Subscribers given one :class:`Readings` share their
    reading of messages that are alike. A :class:`Reader` of its link once it consumes."""

    ws: Link
    runs: int = 1
    next_seq: dict[str, int] = field(default_factory=dict)
    events: int = 0
    completes: int = 0
    lagged: int = 0
    first_at: float = 0.0
    done_at: float = 0.0
    latencies: list[float] | None = None
    readings: Readings | None = None
    _done: asyncio.Future[None] | None = field(default=None, init=False, repr=False)

    def subscribe(self, session_id: str, run_id: str | None = None, after: int = 0) -> None:
        frame: dict[str, Any] = {"type": "subscribe", "session_id": session_id}
        if run_id is not None:
            frame.update(run_id=run_id, after_seq=after)
        self.ws.send(json.dumps(frame))

    async def consume(self) -> None:
        """Read until ``runs`` runs completed; raises what the check found wrong."""
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
            self.ws.read_with(self)
        await self._done

    def receive(self, message: bytes) -> None:
        """Check one message (as its link reads it)."""
        done = self._done
        if done is None or done.done():
            return
        try:
            if self._check(message):
                self.done_at = time.perf_counter()
                done.set_result(None)
        except Exception as exc:
            done.set_exception(exc)

    def disconnected(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionError("the connection closed before the end"))

    def _check(self, message: bytes) -> bool:
        """Count a message's events, checking each; whether ``runs`` runs have completed."""
        latencies = self.latencies
        next_seq = self.next_seq
        readings = self.readings
        received_ms = time.time() * 1000
        reading = read(message) if readings is None else readings.get(message)
        if isinstance(reading, tuple):
            if self.take(reading, received_ms):
                return False
            reading = read_frames(message)
        # Anything else is checked frame by frame.
        for frame in reading:
            if frame.type == "event":
                run_id = frame.run_id or ""
                expected = next_seq.get(run_id, 1)
                if frame.seq != expected:
                    raise AssertionError(f"got {frame}, expected seq {expected}")
                next_seq[run_id] = expected + 1
                if self.events == 0:
                    self.first_at = time.perf_counter()
                self.events += 1
                if latencies is not None:
                    latencies.append(received_ms - frame.ts)
                if frame.kind == "complete":
                    self.completes += 1
                    if self.completes == self.runs:
                        return True
            elif frame.type == "lagged":
                self.lagged += 1
                assert frame.session_id is not None
                self.subscribe(frame.session_id, frame.run_id, frame.last_seq)
            elif frame.type == "error":
                raise AssertionError(f"error frame: {message!r}")
        return False

    def take(self, stretches: Stretched, received_ms: float) -> bool:
        """Count a message's stretches in bulk if each starts where this subscriber is in
        its run, so that the client's checking costs the shared machine less; returns
        ``False``, having taken nothing, otherwise (the message is then checked frame by
        frame)."""
        next_seq = self.next_seq
        if any(stretch.first != next_seq.get(stretch.run_id, 1) for stretch in stretches):
            return False
        if self.events == 0:
            self.first_at = time.perf_counter()
        latencies = self.latencies
        for run_id, first, length, ts in stretches:
            next_seq[run_id] = first + length
            self.events += length
            if latencies is not None:
                latencies.extend([received_ms - t for t in ts])
        return True


async def request(ws: Link, frame: dict[str, Any]) -> Frame:
    """Send a frame and wait for its reply (other frames are skipped)."""
    frame = {**frame, "id": "r"}
    ws.send(json.dumps(frame))
    while True:
        decoded = _decode(await ws.recv())
        for reply in decoded if isinstance(decoded, list) else (decoded,):
            if reply.id == "r":
                if reply.type == "error":
                    raise RuntimeError(
                        f"request {frame['type']} failed: {reply.code} {reply.message}"
                    )
                return reply


async def new_session(server: Server) -> str:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=30) as http:
        response = await http.post("/api/sessions", headers={"authorization": f"Bearer {TOKEN}"})
        response.raise_for_status()
        return str(response.json()["session_id"])


def echo(chunks: int, delay_ms: float) -> dict[str, Any]:
    """Echo options for a run of ``chunks + 3`` events (user_message, chunks, text,
    complete)."""
    size = max(1, min(20, MAX_REPLY // max(chunks, 1)))
    return {"chunks": chunks, "delay_ms": delay_ms, "chunk": "x" * size}


async def open_clients(server: Server, count: int, *, batch: bool) -> list[Link]:
    limit = asyncio.Semaphore(50)

    async def one() -> Link:
        async with limit:
            return await open_link(server.url(batch=batch))

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def open_spread(servers: Sequence[Server], count: int, *, batch: bool) -> list[Link]:
    """``count`` connections spread evenly over ``servers`` (the first ones get one more
    when it does not divide)."""
    share, extra = divmod(count, len(servers))
    groups = await asyncio.gather(
        *(
            open_clients(server, share + (index < extra), batch=batch)
            for index, server in enumerate(servers)
        )
    )
    return [ws for group in groups for ws in group]


async def close_all(sockets: list[Link]) -> None:
    """Close every socket, ignoring those already gone."""
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


class Followed(NamedTuple):
    """What :func:`follow_runs` measured."""

    subs: list[Subscriber]
    seconds: float
    """From the first send to the last subscriber's last ``complete``."""
    server_cpu_s: float | None
    """CPU seconds the servers used meanwhile (``None`` where that cannot be read)."""
    client_cpu_s: float
    """CPU seconds this process used meanwhile."""


async def follow_runs(
    servers: Sequence[Server],
    *,
    chunks: int,
    delay_ms: float,
    batch: bool,
    subscribers: int,
    sessions: int = 1,
    latencies: bool = False,
) -> Followed:
    """``sessions`` fresh sessions, each followed live by every one of ``subscribers``
    connections; then one echo run in each, all at once.

    The connections are spread evenly over ``servers`` (several processes of one
    deployment), and session ``i``'s run is sent through ``servers[i % len(servers)]``,
    which drives it.
    """
    session_ids = [await new_session(servers[0]) for _ in range(sessions)]
    sockets = await open_spread(servers, subscribers, batch=batch)
    # One subscriber has nobody to share its reading with.
    readings = Readings() if subscribers > 1 else None
    subs = [
        Subscriber(ws, runs=sessions, latencies=[] if latencies else None, readings=readings)
        for ws in sockets
    ]
    for sub in subs:
        for session_id in session_ids:
            await request(sub.ws, {"type": "subscribe", "session_id": session_id})
    readers = [asyncio.create_task(sub.consume()) for sub in subs]
    controls = [await open_link(server.url(batch=False)) for server in servers[:sessions]]
    server_cpu, client_cpu = servers_cpu_seconds(servers), time.process_time()
    started = time.perf_counter()
    with collector_paused():
        for index, session_id in enumerate(session_ids):
            options = echo(chunks, delay_ms)
            await request(
                controls[index % len(controls)],
                {"type": "send", "session_id": session_id, "content": "go", "options": options},
            )
        await asyncio.gather(*readers)
    elapsed = max(sub.done_at for sub in subs) - started
    client_cpu = time.process_time() - client_cpu
    server_end = servers_cpu_seconds(servers)
    server_cpu = None if server_cpu is None or server_end is None else server_end - server_cpu
    for sub in subs:
        assert sub.events == sessions * (chunks + 3), "every subscriber gets every event"
    await close_all([*sockets, *controls])
    return Followed(subs, elapsed, server_cpu, client_cpu)


@contextmanager
def collector_paused() -> Iterator[None]:
    """This process's cyclic garbage collector off while a measurement runs, as ``timeit``
    does. Its collections of the client's live objects (every subscriber's state, the
    readings they share) took 20-200 ms here in the middle of a run: every subscriber would
    count that pause of the client as latency of the server. The server collects as usual.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.collect()


def servers_cpu_seconds(servers: Sequence[Server]) -> float | None:
    """CPU seconds the servers' processes have used so far, or ``None`` where one cannot be
    read (a server this process did not start, or no Linux ``/proc``)."""
    total = 0.0
    for server in servers:
        used = None if server.process is None else cpu_seconds(server.process.pid)
        if used is None:
            return None
        total += used
    return total


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU seconds process ``pid`` has used, from Linux's ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return stat_cpu_seconds(file.read(), os.sysconf("SC_CLK_TCK"))
    except OSError:
        return None


def stat_cpu_seconds(stat: str, ticks_per_s: int) -> float:
    """User plus system time from the text of a ``/proc/PID/stat``."""
    # The command name (the second field) may hold spaces and parentheses: the fields are
    # counted from its closing one; utime and stime are the 14th and 15th.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_s


async def throughput(
    servers: Sequence[Server], *, chunks: int, batch: bool, subscribers: int
) -> dict[str, Any]:
    """Events/s of one run (``delay_ms`` 0), counted until every subscriber has all."""
    followed = await follow_runs(
        servers, chunks=chunks, delay_ms=0, batch=batch, subscribers=subscribers
    )
    events = followed.subs[0].events
    server_cpu = followed.server_cpu_s
    return {
        "value": round(events / followed.seconds),
        "events": events,
        "subscribers": subscribers,
        "seconds": round(followed.seconds, 3),
        "lagged": sum(s.lagged for s in followed.subs),
        "server_cpu_s": None if server_cpu is None else round(server_cpu, 3),
        "client_cpu_s": round(followed.client_cpu_s, 3),
    }


async def paced_delay(
    servers: Sequence[Server],
    *,
    rate: float,
    sessions: int,
    subscribers: int,
    trial: float = 1.0,
) -> tuple[float, float]:
    """The echo ``delay_ms`` that makes ``sessions`` runs together publish about ``rate``
    events/s with ``subscribers`` connections following them, and the rate its trial
    reached.

    Echo keeps its chunks on a schedule ``delay_ms`` apart, so the first trial normally
    reaches ``rate``. A loaded machine may not: runs of about ``trial`` seconds under the
    same load, scaled by measured over wanted rate until within 5 %, find the delay that
    does. The correction is a ratio, not a difference, so a machine that cannot reach
    ``rate`` ends with a small delay rather than none (a flood, which would measure
    queueing, not latency); trials stop once a shorter delay no longer raises the rate
    (the machine is saturated). The reported ``events_per_s`` tells what was reached.
    """
    delay_ms = 1000 * sessions / rate
    previous = measured = 0.0
    for _ in range(5):
        chunks = max(1, int(rate * trial / sessions))
        subs, *_ = await follow_runs(
            servers,
            chunks=chunks,
            delay_ms=delay_ms,
            batch=True,
            subscribers=subscribers,
            sessions=sessions,
        )
        received = subs[0]
        measured = received.events / (received.done_at - received.first_at)
        close = abs(measured - rate) <= rate * 0.05
        saturated = measured < rate and measured <= previous * 1.05
        if close or saturated:
            break
        previous = measured
        delay_ms *= measured / rate
    return delay_ms, measured


async def latency(
    servers: Sequence[Server],
    *,
    subscribers: int,
    seconds: float,
    rate: float,
    sessions: int = 4,
    trial: float = 1.0,
) -> dict[str, Any]:
    """Publish-to-receipt latency with ``subscribers`` connections receiving about ``rate``
    events/s in all (from ``sessions`` concurrent echo runs, since one echo run cannot be
    paced finely: its delay is a sleep between chunks), for about ``seconds`` after
    ``trial``-second runs that find the pace (see :func:`paced_delay`).

    Latency is the client's receive time minus the event's ``ts`` (set when the registry
    published it; whole milliseconds, so on average 0.5 ms too high).
    """
    delay_ms, reached = await paced_delay(
        servers, rate=rate, sessions=sessions, subscribers=subscribers, trial=trial
    )
    chunks = max(1, int(seconds * min(rate, reached) / sessions))
    subs, *_ = await follow_runs(
        servers,
        chunks=chunks,
        delay_ms=delay_ms,
        batch=True,
        subscribers=subscribers,
        sessions=sessions,
        latencies=True,
    )
    samples = sorted(x for sub in subs for x in (sub.latencies or []))
    received = subs[0]
    return {
        "value": round(samples[int(len(samples) * 0.99)], 2),
        "p50_ms": round(statistics.median(samples), 2),
        "max_ms": round(samples[-1], 2),
        "events_per_s": round(received.events / (received.done_at - received.first_at)),
        "runs": sessions,
        "echo_delay_ms": round(delay_ms, 3),
        "samples": len(samples),
        "subscribers": subscribers,
        "lagged": sum(s.lagged for s in subs),
    }


async def reconnect_storm(server: Server, *, clients: int, events: int) -> dict[str, Any]:
    """``clients`` connections subscribe from seq 0 to a completed run at once; seconds
    from the first connect until every one has every event."""
    session_id = await new_session(server)
    (watcher_ws,) = await open_clients(server, 1, batch=True)
    watcher = Subscriber(watcher_ws)
    watcher.subscribe(session_id)
    control = await open_link(server.url(batch=False))
    ack = await request(
        control,
        {"type": "send", "session_id": session_id, "content": "x", "options": echo(events - 3, 0)},
    )
    await watcher.consume()
    assert ack.run_id is not None
    started = time.perf_counter()
    with collector_paused():
        sockets = await open_clients(server, clients, batch=True)
        readings = Readings()
        storm = [Subscriber(ws, readings=readings) for ws in sockets]

        async def one(sub: Subscriber) -> None:
            sub.subscribe(session_id, ack.run_id, 0)
            await sub.consume()

        await asyncio.gather(*(one(sub) for sub in storm))
    elapsed = time.perf_counter() - started
    assert all(sub.events == events for sub in storm)
    await close_all([*sockets, control, watcher.ws])
    return {"value": round(elapsed, 3), "clients": clients, "events": events}


async def median_of(times: int, measure: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """The middle one of ``times`` measurements, with every value in measured order in
    ``values``: on a shared host, a single run can fall on a moment when another tenant
    takes the cores."""
    results = [await measure() for _ in range(times)]
    middle = sorted(results, key=lambda result: float(result["value"]))[times // 2]
    return {**middle, "values": [result["value"] for result in results]}


def emit(name: str, unit: str, *, value: float, **details: Any) -> None:
    print(json.dumps({"name": name, "value": value, "unit": unit, **details}), flush=True)


async def main(quick: bool) -> None:
    scale = 0.1 if quick else 1.0
    big = int(100_000 * scale)
    with tempfile.TemporaryDirectory() as directory:
        async with run_server(directory) as server:
            result = await median_of(
                RUNS, lambda: throughput([server], chunks=big, batch=True, subscribers=1)
            )
            emit(
                "ws_events_per_s_1_sub_batched", "events/s", target=">=200000", batch=True, **result
            )
            result = await median_of(
                RUNS, lambda: throughput([server], chunks=big, batch=False, subscribers=1)
            )
            emit("ws_events_per_s_1_sub", "events/s", target=">=40000", batch=False, **result)
            result = await median_of(
                RUNS, lambda: throughput([server], chunks=big // 4, batch=True, subscribers=100)
            )
            emit(
                "ws_fanout_100_subs_events_per_s",
                "events/s",
                target=">=10000",
                batch=True,
                **result,
            )
            result = await median_of(
                RUNS, lambda: latency([server], subscribers=100, seconds=10 * scale, rate=1000)
            )
            emit("ws_latency_p99_ms", "ms", target="<=25", batch=True, **result)
            result = await reconnect_storm(server, clients=500, events=1000)
            emit("reconnect_storm_s", "s", target="<=5", batch=True, **result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the work, for a smoke run")
    asyncio.run(main(parser.parse_args().quick))
