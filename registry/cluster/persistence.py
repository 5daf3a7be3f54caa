"""The store as a cluster process's mirror sees it: writes only for the runs it drives.

Every process mirrors the sessions it serves, but a run's events are written to the
database by one process only, the one that drives it (or, once that one died, whoever
reaped the run). Its mirror hears every event of the run in seq order, its own and those
other processes appended (an abort's ``complete``, a client's checkpoint), so writing from
the mirror keeps the log in order with a single writer per run.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from ..events import Event, Position, RunSummary
from ..hooks import OnDurable
from ..run import ALL_DURABLE
from ..store.base import Store


class OwnedPersistence:
    """A :class:`~registry.hooks.Persistence` over ``store`` that writes only the runs in
    :attr:`owned`.

    Delivery does not wait for the database (Redis, not the database, numbers events, so
    a restart cannot reuse a seq a client saw); it waits for :meth:`release` instead, which
    the cluster calls for a batch of ingested events at a time (see :class:`Release`).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.owned: set[str] = set()
        # run_id -> whether its end finds the session unwatched on every process (decided
        # in Redis where the run ended, carried with its ``complete``).
        self.unread: dict[str, bool] = {}
        self._release: OnDurable | None = None

    def run_started(
        self, run: RunSummary, *, client_msg_id: str | None, ord: int | None = None
    ) -> None:
        if run.run_id in self.owned:
            self.store.run_started(run, client_msg_id=client_msg_id, ord=ord)

    def append(self, event: Event) -> None:
        if event.run_id in self.owned:
            self.store.append(event)

    def append_many(self, events: list[Event]) -> None:
        if events and events[0].run_id in self.owned:
            self.store.append_many(events)

    def run_completed(self, run: RunSummary, *, unread: bool) -> None:
        watched_elsewhere = self.unread.pop(run.run_id, unread)
        if run.run_id in self.owned:
            self.store.run_completed(run, unread=watched_elsewhere)

    def provider_session(self, session_id: str, run_id: str, provider_session_id: str) -> None:
        if run_id in self.owned:
            self.store.provider_session(session_id, run_id, provider_session_id)

    def durable_seq(self, run_id: str) -> int:
        # Another process's run is that process's to write: nothing to wait for here.
        return self.store.durable_seq(run_id) if run_id in self.owned else ALL_DURABLE

    def watch_durable(self, callback: OnDurable) -> bool:
        self._release = callback
        return True

    def release(self, run_id: str, seq: int) -> None:
        """Let the mirror's subscribers have the run's events up to ``seq``."""
        if self._release is not None:
            self._release(run_id, seq)

    def urge(self) -> None:
        self.store.urge()

    async def find_client_msg(self, session_id: str, client_msg_id: str) -> str | None:
        return await self.store.find_client_msg(session_id, client_msg_id)

    async def latest_run(self, session_id: str) -> RunSummary | None:
        return await self.store.latest_run(session_id)

    async def read_history(
        self,
        session_id: str,
        after: Position | None,
        before: Position | None,
        limit: int | None = None,
    ) -> list[Event] | None:
        return await self.store.read_history(session_id, after, before, limit)


class Release:
    """Hands the mirror's newly ingested events to its subscribers in batches: at most
    ``delay`` seconds after the first of a batch (the single-process server's commits batch
    deliveries the same way). Many small pub/sub messages then make few WebSocket messages
    and wake each connection once per batch, not once per event."""

    def __init__(
        self,
        delay: float,
        *,
        held: Callable[[str], int | None],
        held_back: Callable[[str], int],
        limit: int,
        release: Callable[[str, int], None],
    ) -> None:
        self._delay = delay
        self._held = held
        self._held_back = held_back
        # Released at once past this many held back: a burst must not push undelivered
        # events out of the replay buffer (half of it, as the single process paces).
        self._limit = limit
        self._release = release
        self._dirty: set[str] = set()
        self._wake = anyio.Event()

    def mark(self, run_id: str) -> None:
        """The run has new events in the mirror."""
        if self._delay <= 0 or self._held_back(run_id) >= self._limit:
            self._now(run_id)
            return
        self._dirty.add(run_id)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await anyio.sleep(self._delay)
            dirty, self._dirty = self._dirty, set()
            for run_id in dirty:
                self._now(run_id)

    def _now(self, run_id: str) -> None:
        seq = self._held(run_id)
        if seq is not None:
            self._release(run_id, seq)
