"""``GET /api/sessions/{id}/stream``: a session's events as Server-Sent Events.

Each event goes out as ``id: <run_id>:<seq>``, ``event: <kind>``, ``data: <event frame>``,
so a browser's ``EventSource`` resumes by itself: it reconnects with ``Last-Event-ID`` and
the stream continues right after that position. A stream that falls behind the replay
buffer ends with an ``event: lagged``; the automatic reconnect then resumes it losslessly.
A long replay read from the log in pages goes on from page to page within the stream.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from registry import Lagged, RegistryError, Subscription

from . import frames
from .connection import PULL_LIMIT
from .errors import GatewayError, invalid
from .waker import Waker

if TYPE_CHECKING:
    from .app import Gateway

log = logging.getLogger("runwire.gateway")

# How long the client waits before reconnecting after the stream ends (ms).
RETRY_MS = 1000


def parse_last_event_id(value: str) -> tuple[str, int]:
    """``<run_id>:<seq>`` as a position; ``INVALID_FIELD`` when it is not one."""
    run_id, sep, text = value.strip().rpartition(":")
    seq = frames.decimal(text)
    if not sep or not run_id or seq is None or seq > frames.MAX_INT:
        raise invalid("Last-Event-ID", "expected <run_id>:<seq>")
    return frames.checked_id("Last-Event-ID", run_id), seq


def _event_block(run_id: str, seq: int, kind: str, frame: str) -> str:
    if "\n" in kind or "\r" in kind:
        kind = kind.replace("\r", " ").replace("\n", " ")
    return f"id: {run_id}:{seq}\nevent: {kind}\ndata: {frame}\n\n"


class EventStream(Response):
    """A streaming response fed by one subscription, until the client leaves."""

    media_type = "text/event-stream"

    def __init__(self, gateway: Gateway, sub: Subscription, user: str) -> None:
        # Not Response.__init__: it would declare an empty body's Content-Length.
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})
        self._gateway = gateway
        self._sub = sub
        self._user = user
        self._waker = Waker()
        self._finishing = False

    def finish(self) -> None:
        """End the stream once everything available now is sent (server shutdown)."""
        self._finishing = True
        self._waker.poke()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self._gateway
        gateway.stream_opened(self)
        disconnected = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    nonlocal disconnected
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    disconnected = True
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                try:
                    await self._pump(send)
                except OSError:
                    disconnected = True
                tg.cancel_scope.cancel()
            if not disconnected:
                with anyio.move_on_after(2, shield=True):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._sub.close()
            gateway.stream_closed(self)

    async def _next_page(self, lag: Lagged) -> Subscription | None:
        """The stream's subscription again, from where its replay's page ended; ``None``
        when that fails (the client's reconnect then resumes from the ``lagged``)."""
        try:
            return await self._gateway.service.subscribe(
                self._user, lag.session_id, run_id=lag.run_id, after_seq=lag.last_seq
            )
        except (GatewayError, RegistryError) as exc:
            log.warning("a stream of session %s could not read on: %s", lag.session_id, exc)
            return None

    async def _pump(self, send: Send) -> None:
        sub = self._sub
        waker = self._waker
        stats = self._gateway.stats
        ping_interval = self._gateway.settings.ping_interval

        async def write(text: str) -> None:
            await send({"type": "http.response.body", "body": text.encode(), "more_body": True})

        assert sub.info is not None
        sub.listen(waker.poke)
        await write(
            f"retry: {RETRY_MS}\nevent: subscribed\ndata: {frames.subscribed(None, sub.info)}\n\n"
        )
        while True:
            waker.reset()
            try:
                events = sub.pull(PULL_LIMIT)
            except Lagged as lag:
                if sub.paged:
                    # Only a page of a long replay ended: read the next, as a client would
                    # on lagged, but without ending the stream (a reconnect costs a retry).
                    next_page = await self._next_page(lag)
                    if next_page is not None:
                        sub = self._sub = next_page
                        sub.listen(waker.poke)
                        continue
                stats.lagged += 1
                data = frames.lagged(lag.session_id, lag.run_id, lag.last_seq)
                await write(f"event: lagged\ndata: {data}\n\n")
                return
            if events:
                stats.delivered += len(events)
                await write(
                    "".join(_event_block(e.run_id, e.seq, e.kind, e.frame()) for e in events)
                )
                continue
            if self._finishing:
                return
            if sub.closed:
                # Only deleting its session closes a stream's subscription: say so, so that
                # the client stops rather than reconnecting to a 404.
                await write(
                    f"event: session_deleted\ndata: {frames.session_deleted(sub.session_id)}\n\n"
                )
                return
            with anyio.move_on_after(ping_interval) as timer:
                await waker.wait()
            if timer.cancelled_caught:
                await write(": ping\n\n")
