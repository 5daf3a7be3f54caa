"""A tiny OpenAI-compatible HTTP server on 127.0.0.1 for the openai provider tests.

It speaks real HTTP/1.1 over a real socket: the response to a streaming request uses
chunked transfer encoding with server-sent events (``data: {...}``, ``data: [DONE]``), as
the OpenAI API does, so a test can also cut a response in the middle of the body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream


@dataclass
class Exchange:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class Responder:
    """Writes one HTTP response on a connection."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream

    async def status(self, code: int, body: Any, reason: str = "Error") -> None:
        """A complete, non-streaming response."""
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        await self.stream.send(head.encode() + payload)

    async def start(self) -> None:
        """The head of a streaming response."""
        await self.stream.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )

    async def event(self, data: Any) -> None:
        """One server-sent event: a JSON chunk, or the string ``[DONE]``."""
        text = data if isinstance(data, str) else json.dumps(data)
        await self.raw(f"data: {text}\n\n".encode())

    async def raw(self, data: bytes) -> None:
        """Body bytes as one HTTP chunk."""
        await self.stream.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def end(self) -> None:
        """The last chunk: the body is complete."""
        await self.stream.send(b"0\r\n\r\n")

    async def stream_events(self, events: list[Any], *, end: bool = True) -> None:
        await self.start()
        for item in events:
            await self.event(item)
        if end:
            await self.end()


Handler = Callable[[Exchange, Responder], Awaitable[None]]


@dataclass
class FakeOpenAI:
    handler: Handler
    base_url: str = ""
    requests: list[Exchange] = field(default_factory=list)
    disconnected: anyio.Event = field(default_factory=anyio.Event)
    """Set when a client went away while a handler was still writing or waiting."""

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                exchange = await _read_request(stream)
                self.requests.append(exchange)
                await self.handler(exchange, Responder(stream))
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.disconnected.set()


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[FakeOpenAI]:
    """Run the server on a free port of 127.0.0.1 for the duration of the block."""
    server = FakeOpenAI(handler)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server.base_url = f"http://127.0.0.1:{port}/v1"
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            group.cancel_scope.cancel()


async def wait_for_disconnect(exchange: Exchange, responder: Responder) -> None:
    """Keep the connection open until the client closes it."""
    while True:
        await responder.stream.receive()


async def _read_request(stream: anyio.abc.SocketStream) -> Exchange:
    buffered = BufferedByteReceiveStream(stream)
    head = (await buffered.receive_until(b"\r\n\r\n", 65536)).decode()
    request_line, *header_lines = head.split("\r\n")
    method, path, _ = request_line.split(" ")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await buffered.receive_exactly(length) if length else b""
    return Exchange(method, path, headers, json.loads(body) if body else None)


def chunk(
    content: str | None = None,
    *,
    finish: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    reasoning: str | None = None,
    role: str | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` as OpenAI sends it."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-Cabc123",
        "object": "chat.completion.chunk",
        "created": 1760954400,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_560af6e559",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def usage_chunk() -> dict[str, Any]:
    """The last chunk with ``stream_options.include_usage``: no choices, the usage."""
    return {
        "id": "chatcmpl-Cabc123",
        "object": "chat.completion.chunk",
        "created": 1760954400,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {"prompt_tokens": 19, "completion_tokens": 2, "total_tokens": 21},
    }
