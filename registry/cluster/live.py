"""This process's one pub/sub connection to Redis: run notices, and the live channels of
the sessions it follows.

Pub/sub delivers each message at most once and in publish order while connected; what is
published while the connection is down is lost. So the connection is never re-established
silently: when it breaks, :class:`Live` reconnects itself, subscribes again to everything,
and then calls ``on_reconnect`` so the caller can catch every followed session up from the
run streams (which keep what pub/sub dropped).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import anyio
import redis.asyncio as redis
from redis.exceptions import RedisError

from .backoff import Backoff

log = logging.getLogger("runwire.cluster")


class Live:
    """Subscribes to channels on demand and hands every message to ``on_message``.

    :meth:`run` is the task that reads; :meth:`follow` returns once the subscription is
    active, so whatever is published after it returns is delivered.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        always: str,
        on_message: Callable[[str, str], None],
        on_reconnect: Callable[[], Awaitable[None]],
    ) -> None:
        self._client = client
        self._always = always
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self._pubsub: redis.client.PubSub | None = None
        self._channels: set[str] = set()
        # Subscriptions sent and not yet confirmed, each with the event its caller waits on.
        self._confirming: dict[str, anyio.Event] = {}
        self._connected = anyio.Event()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def follow(self, channel: str) -> None:
        """Subscribe to ``channel`` (once); returns when Redis has confirmed it."""
        if channel in self._channels and channel not in self._confirming:
            return
        confirmed = self._confirming.get(channel)
        if confirmed is None:
            confirmed = self._confirming[channel] = anyio.Event()
            self._channels.add(channel)
            await self._send("subscribe", channel)
        await confirmed.wait()

    async def unfollow(self, channel: str) -> None:
        """Stop receiving ``channel``."""
        if channel in self._channels:
            self._channels.discard(channel)
            self._confirming.pop(channel, None)
            await self._send("unsubscribe", channel)

    async def _send(self, command: str, channel: str) -> None:
        pubsub = self._pubsub
        if pubsub is None or not self.connected:
            return  # The reconnect subscribes to everything in ``_channels``.
        try:
            await getattr(pubsub, command)(channel)
        except (RedisError, OSError) as exc:
            log.warning("pub/sub %s %s failed (%s); reconnecting", command, channel, exc)
            await self._drop(pubsub)

    async def run(self) -> None:
        """Read messages forever, reconnecting whenever the connection breaks."""
        backoff = Backoff()
        first = True
        while True:
            try:
                pubsub = await self._connect()
            except (RedisError, OSError) as exc:
                await backoff.after("pub/sub connecting to Redis", exc)
                continue
            backoff = Backoff()
            if not first:
                log.warning("pub/sub reconnected: catching up every followed session")
                await self._on_reconnect()
            first = False
            try:
                await self._read(pubsub)
            except (RedisError, OSError) as exc:
                log.warning("pub/sub connection lost (%s); reconnecting", exc)
            await self._drop(pubsub)

    async def _connect(self) -> redis.client.PubSub:
        pubsub = self._client.pubsub()
        channels = [self._always, *self._channels]
        try:
            await pubsub.subscribe(*channels)
        except BaseException:
            await pubsub.aclose()
            raise
        self._pubsub = pubsub
        self._connected.set()
        # Channels followed while that subscribe was on its way.
        missing = self._channels.difference(channels)
        if missing:
            await pubsub.subscribe(*missing)
        return pubsub

    async def _drop(self, pubsub: redis.client.PubSub) -> None:
        if self._pubsub is pubsub:
            self._pubsub = None
            self._connected = anyio.Event()
        with anyio.CancelScope(shield=True), contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()

    async def _read(self, pubsub: redis.client.PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = message["type"]
            channel = message["channel"]
            if kind == "message":
                self._on_message(channel, message["data"])
            elif kind == "subscribe":
                confirmed = self._confirming.pop(channel, None)
                if confirmed is not None:
                    confirmed.set()

    async def aclose(self) -> None:
        if self._pubsub is not None:
            await self._drop(self._pubsub)
        # Nobody waits for a confirmation that will never come.
        for confirmed in self._confirming.values():
            confirmed.set()
