"""Every open WebSocket connection, by owner, for pushes that a sidebar relies on.

``run_started``, ``run_finished`` and ``session_deleted`` go to every connection of the
session's owner, whether or not it subscribed, so a client never polls for them. Each push
is encoded once and the same text is queued on every connection.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio

from registry import Notice, RunNotice

from . import frames
from .connection import Connection


class Hub:
    """Connections keyed by user."""

    def __init__(self) -> None:
        self._by_owner: dict[str, set[Connection]] = {}
        self._count = 0
        # Created on demand: a hub is built before any event loop runs.
        self._empty: anyio.Event | None = None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Connection]:
        for connections in list(self._by_owner.values()):
            yield from list(connections)

    def add(self, conn: Connection) -> None:
        self._by_owner.setdefault(conn.user, set()).add(conn)
        self._count += 1

    def remove(self, conn: Connection) -> None:
        connections = self._by_owner.get(conn.user)
        if connections is None or conn not in connections:
            return
        connections.discard(conn)
        if not connections:
            del self._by_owner[conn.user]
        self._count -= 1
        if self._count == 0 and self._empty is not None:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Return once no connection is open."""
        while self._count:
            self._empty = anyio.Event()
            await self._empty.wait()

    def push(self, owner: str, text: str) -> None:
        """Queue ``text`` on every connection of ``owner``."""
        for conn in list(self._by_owner.get(owner, ())):
            conn.push(text)

    def notice(self, notice: Notice) -> None:
        """Registry listener: tell the owner's connections that a run started or finished,
        or that a session was deleted."""
        if isinstance(notice, RunNotice):
            if notice.owner in self._by_owner:
                self.push(notice.owner, frames.run_notice(notice.kind, notice.run))
        else:
            self.session_deleted(notice.owner, notice.session_id)

    def session_deleted(self, owner: str, session_id: str) -> None:
        """Drop the owner's subscriptions to the session and tell every connection."""
        text = frames.session_deleted(session_id)
        for conn in list(self._by_owner.get(owner, ())):
            conn.drop_subscription(session_id)
            conn.push(text)
