"""Test helpers: a real gateway on a loopback port, and a protocol-aware WebSocket client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from bench.chaos import small_window_socket
from gateway.app import Gateway, create_app
from gateway.server import GatewayServer, uvicorn_config
from gateway.settings import Settings
from providers import ProviderRegistry
from registry import ManualClock

TOKENS = {"tokA": "alice", "tokB": "bob"}
USER_TOKEN = {user: token for token, user in TOKENS.items()}
# A safety net against hangs only; no test asserts on time.
WAIT = 20.0


@dataclass
class Served:
    """A running gateway: where it listens and who may call it."""

    base_url: str
    ws_url: str
    tokens: dict[str, str]
    gateway: Gateway
    server: GatewayServer
    clients: list[Client] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def token(self, user: str) -> str:
        return USER_TOKEN[user]

    def http(self, user: str | None = "alice") -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {self.token(user)}"} if user else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=WAIT)

    @asynccontextmanager
    async def client(
        self, user: str = "alice", *, batch: bool = False, **options: Any
    ) -> AsyncIterator[Client]:
        client = Client(await connect(self.url(user, batch=batch), **options))
        try:
            yield client
        finally:
            await client.close()

    async def open(self, user: str = "alice", *, batch: bool = False, **options: Any) -> Client:
        """A client the test closes (or drops) itself."""
        ws = await connect(self.url(user, batch=batch), **options)
        client = Client(ws)
        self.clients.append(client)
        return client

    def url(self, user: str | None = "alice", *, batch: bool = False) -> str:
        query = []
        if user is not None:
            query.append(f"token={self.token(user)}")
        if batch:
            query.append("batch=1")
        return self.ws_url + ("?" + "&".join(query) if query else "")


class StalledClient:
    """A WebSocket client over a raw socket that reads only when told to.

    A library client keeps reading its socket in the background; this one leaves every
    byte the server sends in the kernel's (small) receive buffer until :meth:`frames`, so
    the server's writes really stall.
    """

    def __init__(self, url: str, rcvbuf: int = 8192) -> None:
        self._url = url
        self._rcvbuf = rcvbuf
        self._protocol = ClientProtocol(parse_uri(url), max_size=None)
        self._sock: socket.socket | None = None

    async def open(self) -> None:
        host, port = self._url.split("//", 1)[1].split("/", 1)[0].split(":")
        sock = await small_window_socket(int(port), host=host, rcvbuf=self._rcvbuf)
        self._sock = sock
        self._protocol.send_request(self._protocol.connect())
        await self._flush()
        while not any(isinstance(e, Response) for e in await self._receive()):
            pass

    async def send(self, frame: dict[str, Any]) -> None:
        self._protocol.send_text(json.dumps(frame).encode())
        await self._flush()

    async def frames(self) -> list[dict[str, Any]]:
        """Read what has arrived (at least one message) and decode its frames."""
        while True:
            messages = [e for e in await self._receive() if isinstance(e, Frame)]
            out = [json.loads(bytes(m.data)) for m in messages if m.opcode is Opcode.TEXT]
            if out:
                return out

    async def _receive(self) -> list[Any]:
        assert self._sock is not None
        data = await asyncio.get_running_loop().sock_recv(self._sock, 1 << 16)
        if not data:
            raise EOFError("the server closed the connection")
        self._protocol.receive_data(data)
        await self._flush()  # pongs and the like
        return list(self._protocol.events_received())

    async def _flush(self) -> None:
        assert self._sock is not None
        data = b"".join(self._protocol.data_to_send())
        if data:
            await asyncio.get_running_loop().sock_sendall(self._sock, data)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


class Firehose:
    """A test provider: ``count`` text_delta events of ``size`` characters, fast."""

    name = "firehose"

    async def stream(self, request: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        count = int(request.options.get("count", 1000))
        text = "x" * int(request.options.get("size", 100))
        for index in range(count):
            if index % 50 == 0:
                await asyncio.sleep(0)
            yield "text_delta", {"text": text}


class Scripted:
    """A test provider that plays ``options["script"]``: ``[kind, data]`` pairs, and
    ``["advance", seconds]`` to move its clock, ``["fail", message]`` to raise. Each run
    records what it was asked and announces a provider session id ``agent-<n>`` (the n-th
    request), unless ``options["no_id"]``."""

    name = "agent"

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock
        self.requests: list[Any] = []

    async def stream(self, request: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.requests.append(request)
        if not request.options.get("no_id"):
            yield "session_created", {"provider_session_id": f"agent-{len(self.requests)}"}
        for kind, data in request.options.get("script", []):
            if kind == "advance":
                assert self.clock is not None
                self.clock.advance(data)
            elif kind == "fail":
                raise RuntimeError(data)
            else:
                yield kind, data


def free_socket() -> socket.socket:
    """A listening loopback socket on a free port; connections wait in its backlog."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    return sock


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(db: str, **overrides: Any) -> Settings:
    base = Settings(
        db=db,
        tokens=dict(TOKENS),
        send_rate=10_000.0,
        send_burst=10_000,
        shutdown_grace=0.0,
    )
    return replace(base, **overrides)


@asynccontextmanager
async def serve(
    settings: Settings,
    *,
    providers: ProviderRegistry | None = None,
    app: Any = None,
    gateway: Gateway | None = None,
    prefix: str = "",
    **config: Any,
) -> AsyncIterator[Served]:
    """Run a gateway with uvicorn in this event loop until the block ends."""
    if app is None:
        app = create_app(settings, providers=providers)
        gateway = app.state.gateway
    assert gateway is not None
    sock = free_socket()
    port = sock.getsockname()[1]
    started = asyncio.Event()
    server = GatewayServer(
        uvicorn_config(settings, app, port=port, log_level="warning", **config),
        gateway,
        on_started=lambda _port: started.set(),
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(WAIT):
            await asyncio.wait(
                [task, asyncio.ensure_future(started.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
        if task.done():
            task.result()
            raise RuntimeError("the server stopped during startup")
        served = Served(
            base_url=f"http://127.0.0.1:{port}{prefix}",
            ws_url=f"ws://127.0.0.1:{port}{prefix}/ws",
            tokens=dict(TOKENS),
            gateway=gateway,
            server=server,
        )
        try:
            yield served
        finally:
            for client in served.clients:
                await client.close()
    finally:
        server.should_exit = True
        async with asyncio.timeout(WAIT):
            await task
        sock.close()


_ids = itertools.count(1)


class Client:
    """A WebSocket client that speaks the protocol: requests with ids, event collection."""

    REPLIES = frozenset(("ack", "subscribed", "runs", "pong", "error"))

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._pending: deque[dict[str, Any]] = deque()
        # Frames read while waiting for something else, in arrival order.
        self.backlog: list[dict[str, Any]] = []
        self.raw_messages: list[str] = []

    @classmethod
    @asynccontextmanager
    async def connected(cls, url: str, **options: Any) -> AsyncIterator[Client]:
        """A client of the server at ``url`` (``ws://host:port/ws?token=...``), closed when
        the block ends."""
        client = cls(await connect(url, **options))
        try:
            yield client
        finally:
            await client.close()

    async def close(self) -> None:
        """Close gracefully, reading meanwhile so the server's close frame gets through
        (a client whose message queue is full stops reading its socket)."""

        async def drain() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await self.ws.recv()

        async with asyncio.timeout(WAIT):
            await asyncio.gather(self.ws.close(), drain())

    async def closed_by_server(self) -> ConnectionClosed:
        """Read until the server closes the connection; the close."""
        try:
            while True:
                await self.recv()
        except ConnectionClosed as closed:
            return closed

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        """The next frame (arrays from ``batch=1`` are unpacked)."""
        if self._pending:
            return self._pending.popleft()
        async with asyncio.timeout(WAIT):
            message = await self.ws.recv()
        assert isinstance(message, str)
        self.raw_messages.append(message)
        value = json.loads(message)
        if isinstance(value, list):
            assert value, "an empty batch"
            self._pending.extend(value)
            return self._pending.popleft()
        assert isinstance(value, dict)
        return value

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send ``frame`` with a fresh id and return the direct reply to it."""
        frame_id = frame.setdefault("id", next(_ids))
        await self.send(frame)
        while True:
            reply = await self.recv()
            if reply.get("type") in self.REPLIES and reply.get("id") == frame_id:
                return reply
            self.backlog.append(reply)

    async def send_message(self, session_id: str | None = None, **fields: Any) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "send", "content": fields.pop("content", "hello")}
        if session_id is not None:
            frame["session_id"] = session_id
        frame.update(fields)
        return await self.request(frame)

    async def subscribe(
        self, session_id: str, run_id: str | None = None, after_seq: int = 0
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "subscribe", "session_id": session_id}
        if run_id is not None:
            frame["run_id"] = run_id
        if after_seq:
            frame["after_seq"] = after_seq
        reply = await self.request(frame)
        assert reply["type"] == "subscribed", reply
        return reply

    async def next_of(self, *types: str) -> dict[str, Any]:
        """The next frame of one of ``types`` (from the backlog first); others are kept."""
        for index, frame in enumerate(self.backlog):
            if frame.get("type") in types:
                return self.backlog.pop(index)
        while True:
            frame = await self.recv()
            if frame.get("type") in types:
                return frame
            self.backlog.append(frame)

    async def events_until_complete(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Events (backlog first) until a ``complete`` (of ``run_id`` if given)."""
        events: list[dict[str, Any]] = []
        while True:
            frame = await self.next_of("event")
            events.append(frame)
            if frame["kind"] == "complete" and (run_id is None or frame["run_id"] == run_id):
                return events


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


def assert_run_stream(events: list[dict[str, Any]], run_id: str, start: int = 1) -> None:
    """Events of one run: seq ``start``, ``start+1`` ... ending in exactly one complete."""
    assert all(event["run_id"] == run_id for event in events)
    assert seqs(events) == list(range(start, start + len(events)))
    completes = [event for event in events if event["kind"] == "complete"]
    assert len(completes) == 1
    assert events[-1]["kind"] == "complete"


def nested(depth: int, *, lists: bool = True) -> str:
    """JSON text of ``depth`` containers, each the only item of the one around it."""
    if lists:
        return "[" * depth + "]" * depth
    return '{"k":' * (depth - 1) + "{}" + "}" * (depth - 1)
