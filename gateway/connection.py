"""One WebSocket client: its subscriptions, its outbound control frames and its writer.

A connection has exactly one writer task. It multiplexes every subscription of the
connection: each round it pulls what each *ready* subscription has (up to a limit, for
fairness), then takes the queued control frames (replies, pushes), and sends the lot, one
frame per message, or with ``?batch=1`` the whole round as one JSON array message. A
subscription is ready from its start until a pull finds nothing, and again whenever its
listener hears that its session changed (the registry tells only of deliverable events:
with a store, once per commit, so commits are the batches). So a round costs nothing for a
subscription whose session is quiet, and with nothing to send the writer just sleeps. A
subscription's ``subscribed`` frame is held with it and sent right before its first
events. Events go before control frames, so a run's ``complete`` usually precedes its
``run_finished``.

Backpressure: the writer awaits each send, and the server's transport stops accepting
writes while the client does not read. Meanwhile nothing queues per event: subscriptions
are cursors into the run's bounded replay buffer, so a slow client's cursors fall behind
and end with ``Lagged`` (a ``lagged`` frame, then the client resubscribes from the log).
Control frames do queue, so their queue is bounded too: past ``outbound_limit`` the
client is not reading at all and the connection is closed (1008).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import anyio
from starlette.types import Send

from registry import Lagged, Subscription

from . import frames
from .waker import Waker

if TYPE_CHECKING:
    from .metrics import GatewayStats

log = logging.getLogger("runwire.gateway")

# Events taken from one subscription per writer round: bounds a message and keeps several
# subscriptions (and control frames) of one connection fair to each other.
PULL_LIMIT = 1000
# Largest batch message (characters): clients often cap a message at 1 MiB.
BATCH_CHARS = 256 * 1024

# Close codes.
POLICY_VIOLATION = 1008
TOO_BIG = 1009
SERVICE_RESTART = 1012


class Connection:
    """Per-connection state; the endpoint in :mod:`gateway.ws` drives it."""

    def __init__(
        self,
        send: Send,
        *,
        user: str,
        batch: bool,
        outbound_limit: int,
        stats: GatewayStats,
    ) -> None:
        self.user = user
        self.batch = batch
        self._send = send
        self._outbound_limit = outbound_limit
        self._stats = stats
        self._control: deque[str] = deque()
        self._subs: dict[str, Subscription] = {}
        # Subscriptions that may have something to pull (a dict: an ordered set).
        self._ready: dict[Subscription, None] = {}
        # `subscribed` frames not yet sent, by subscription.
        self._headers: dict[Subscription, str] = {}
        self._waker = Waker()
        self._finish_code: int | None = None
        # The close code to send when the connection ends; None: the client closed it.
        self.close_code: int | None = None
        self.close_reason = ""
        self.cancel_scope: anyio.CancelScope | None = None

    # Called by the reader, the hub and the gateway (never block) -------------------------

    def push(self, text: str) -> None:
        """Queue a control frame (a reply or a push) for the writer."""
        if len(self._control) >= self._outbound_limit:
            log.warning("closing a connection of %s: it does not read its frames", self.user)
            self._control.clear()
            self.close(POLICY_VIOLATION, "outbound queue full: the client does not read")
            return
        self._control.append(text)
        self._waker.poke()

    def add_subscription(self, sub: Subscription, subscribed: str) -> None:
        """Start delivering ``sub``; its ``subscribed`` frame goes out before its events.

        A subscription of this connection to the same session is replaced.
        """
        self.drop_subscription(sub.session_id)
        self._subs[sub.session_id] = sub
        self._headers[sub] = subscribed
        ready = self._ready
        poke = self._waker.poke

        def changed() -> None:
            ready[sub] = None
            poke()

        changed()
        sub.listen(changed)

    def drop_subscription(self, session_id: str) -> bool:
        """Close this connection's subscription to the session, if it has one."""
        sub = self._subs.pop(session_id, None)
        if sub is None:
            return False
        sub.close()  # its listener's last call marks it ready: forget it after
        self._forget(sub)
        return True

    def _forget(self, sub: Subscription) -> None:
        self._ready.pop(sub, None)
        header = self._headers.pop(sub, None)
        if header is not None:
            # Its subscribe frame still gets its reply.
            self.push(header)

    def has_subscription(self, session_id: str) -> bool:
        return session_id in self._subs

    @property
    def subscription_count(self) -> int:
        return len(self._subs)

    def finish(self, code: int, reason: str = "") -> None:
        """Close after everything available now has been sent (server shutdown)."""
        if self._finish_code is None:
            self._finish_code = code
            self.close_reason = reason
            self._waker.poke()

    def close(self, code: int, reason: str = "") -> None:
        """Close now, dropping whatever is queued."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def close_subscriptions(self) -> None:
        for session_id in list(self._subs):
            self.drop_subscription(session_id)

    # The writer -------------------------------------------------------------------------

    async def run_writer(self) -> None:
        """Send control frames and events until finished or the client goes away."""
        waker = self._waker
        while True:
            waker.reset()
            texts = self._collect()
            if texts:
                try:
                    await self._write(texts)
                except OSError:
                    return  # The client went away; the reader sees the disconnect too.
                continue
            if self._finish_code is not None:
                if self.close_code is None:
                    self.close_code = self._finish_code
                return
            await waker.wait()

    def _collect(self) -> list[str]:
        texts: list[str] = []
        if self._ready:
            self._collect_events(texts)
        control = self._control
        if control:
            texts.extend(control)
            control.clear()
        return texts

    def _collect_events(self, texts: list[str]) -> None:
        headers = self._headers
        ready = self._ready
        delivered = 0
        for sub in list(ready):
            if headers:
                header = headers.pop(sub, None)
                if header is not None:
                    texts.append(header)
            try:
                events = sub.pull(PULL_LIMIT)
            except Lagged as lag:
                self._remove(sub)
                if not sub.paged:  # a long replay's page ending is no client falling behind
                    self._stats.lagged += 1
                texts.append(frames.lagged(lag.session_id, lag.run_id, lag.last_seq))
                continue
            if events:
                delivered += len(events)
                # The cached frame when there is one (the store encodes a burst as it
                # queues it), sparing a call per event per subscriber.
                texts.extend([event.wire or event.frame() for event in events])
                if not sub.ready():
                    del ready[sub]  # spares the next round a pull that finds nothing
            elif sub.closed:
                # Closed elsewhere (the session was deleted): nothing more will come.
                self._remove(sub)
            else:
                del ready[sub]  # until its listener hears of a change
        self._stats.delivered += delivered

    def _remove(self, sub: Subscription) -> None:
        """Forget a subscription that ended by itself (lagged, or closed elsewhere)."""
        if self._subs.get(sub.session_id) is sub:
            del self._subs[sub.session_id]
        self._forget(sub)

    async def _write(self, texts: list[str]) -> None:
        send = self._send
        if self.batch and len(texts) > 1:
            # Joined first and split only when too big (rare): measuring every frame
            # beforehand costs more than the occasional second join.
            message = frames.batch(texts)
            if len(message) <= BATCH_CHARS:
                await send({"type": "websocket.send", "text": message})
                self._stats.messages += 1
                return
            for chunk in _batches(texts):
                message = frames.batch(chunk) if len(chunk) > 1 else chunk[0]
                await send({"type": "websocket.send", "text": message})
                self._stats.messages += 1
            return
        for text in texts:
            await send({"type": "websocket.send", "text": text})
        self._stats.messages += len(texts)


def _batches(texts: list[str]) -> list[list[str]]:
    """``texts`` in runs whose batch message is at most ``BATCH_CHARS`` characters (a
    bigger frame alone)."""
    chunks: list[list[str]] = []
    chunk: list[str] = []
    # The message's length so far: the brackets, and a comma before all but the first.
    size = 1
    for text in texts:
        if chunk and size + len(text) + 1 > BATCH_CHARS:
            chunks.append(chunk)
            chunk, size = [], 1
        chunk.append(text)
        size += len(text) + 1
    chunks.append(chunk)
    return chunks
