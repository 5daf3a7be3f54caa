"""A cluster process's background duties, on one timer.

- Renew this process's heartbeat and the leases of the runs it drives; a lease found lost
  means a survivor ended the run (or Redis lost it): stop its source.
- Reap: a running run whose lease lapsed lost its process; end it with ``server_restart``
  (one process wins, in Redis) and write what the dead process had not written of it.
  Likewise take over a completed run whose process died before writing its end.
- Tell Redis which ended runs of ours are written (so nobody else writes them), and how many
  subscriptions each session has here (for ``has_unread`` and run summaries).
- Stop following sessions nobody here needs any more.

Timing, for a configured lease ``L``: a lease key lives ``0.6 L`` in Redis and is renewed
every ``0.2 L`` (two renewals may fail before it lapses), and survivors look for lapsed ones
every ``0.2 L``. A process that dies therefore has its runs ended between ``0.4 L`` and
``0.8 L`` after its death: always within the lease.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import msgspec

from ..clock import to_ms
from ..errors import RegistryError
from ..events import Event, complete_data, read_stored
from ..store.base import Store
from .backoff import Backoff
from .engine import Engine, EngineUnavailable, StoredEvent, summary_of

if TYPE_CHECKING:
    from .registry import ClusterRegistry

log = logging.getLogger("runwire.cluster")

_PAGE = 1000
# Fractions of the configured lease (see the module docstring).
LEASE_KEY = 0.6
RENEW_EVERY = 0.2
REAP_EVERY = 0.2
# The timer's tick: settled runs and watch counts go to Redis at least this often.
_TICK = 0.25


class Upkeep:
    """The duties above for one :class:`~registry.cluster.ClusterRegistry`."""

    def __init__(self, cluster: ClusterRegistry, engine: Engine, store: Store) -> None:
        self._cluster = cluster
        self._engine = engine
        self._store = store
        self._settled: list[str] = []
        # Runs of dead processes being written here.
        self._writing: set[str] = set()
        self._watch_sent: dict[str, int] = {}
        lease = cluster.lease
        self._tick = min(_TICK, lease * RENEW_EVERY)
        self._renew_every = lease * RENEW_EVERY
        self._reap_every = lease * REAP_EVERY

    def settled(self, run_id: str) -> None:
        """Our run's end is written; Redis hears of it on the next tick."""
        self._settled.append(run_id)

    async def run(self) -> None:
        clock = anyio.current_time
        next_renew = next_reap = clock()
        while True:
            now = clock()
            try:
                if now >= next_renew:
                    next_renew = now + self._renew_every
                    await self._renew()
                if now >= next_reap:
                    next_reap = now + self._reap_every
                    await self._reap()
                self._cluster.settle_ready()
                await self.report_settled()
                await self.sync_watch()
                await self._unfollow_idle()
            except RegistryError as exc:
                # An engine away (Redis, the database): the next tick tries again.
                log.warning("cluster upkeep: %s", exc)
            await anyio.sleep(self._tick)

    async def _renew(self) -> None:
        for run_id in await self._engine.renew(self._cluster.leases()):
            await self._cluster.lease_lost(run_id)

    async def report_settled(self) -> None:
        """Tell Redis which ended runs of ours are written."""
        if self._settled:
            settled, self._settled = self._settled, []
            try:
                await self._engine.settled(settled)
            except EngineUnavailable:
                self._settled.extend(settled)
                raise

    async def sync_watch(self) -> None:
        """Send the subscription counts that changed since last time."""
        counts = self._cluster.mirror.session_subscribers()
        changed = {sid: n for sid, n in counts.items() if self._watch_sent.get(sid) != n}
        changed.update({sid: 0 for sid in self._watch_sent if sid not in counts})
        if not changed:
            return
        await self._engine.watch(changed)
        self._watch_sent = counts

    async def _unfollow_idle(self) -> None:
        cluster = self._cluster
        for session_id in cluster.followed():
            if not cluster.needs(session_id):
                await cluster.unfollow(session_id)

    # Taking over dead processes' runs ----------------------------------------------------

    async def _reap(self) -> None:
        engine = self._engine
        orphans, claimed = await engine.orphans()
        for run_id, session_id in orphans:
            ts = to_ms(self._cluster.clock.now())
            data = complete_data(session_id, reason="server_restart", exit_code=1)
            held = self._cluster.mirror.following(run_id) or 0
            if await engine.reap(run_id, ts, msgspec.json.encode(data).decode(), min_seq=held):
                log.warning("run %s lost its process: ended with server_restart", run_id)
                claimed.append(run_id)
        for run_id in claimed:
            self._take_over(run_id)

    def _take_over(self, run_id: str) -> None:
        """Write a dead process's run in a task of its own, retried until it is written:
        waiting for the database must not hold up lease renewal."""
        if run_id not in self._writing:
            self._writing.add(run_id)
            self._cluster.spawn(self._write_until_done, run_id)

    async def _write_until_done(self, run_id: str) -> None:
        backoff = Backoff()
        try:
            while True:
                try:
                    await self.write_rest(run_id)
                    return
                except RegistryError as exc:
                    await backoff.after(f"writing run {run_id}", exc)
        finally:
            self._writing.discard(run_id)

    async def write_rest(self, run_id: str) -> None:
        """Write to the database what it lacks of a run whose process died: its start, the
        events after the last one stored, and its end; then it is settled."""
        engine = self._engine
        store = self._store
        fields = await engine.run(run_id)
        if fields is None:
            log.error("run %s: gone from Redis before its end was written; lost", run_id)
            await engine.settled([run_id])
            return
        summary = summary_of(run_id, fields)
        stored = await store.get_run(run_id)
        if stored is None:
            store.run_started(
                summary,
                client_msg_id=fields.get("client_msg_id") or None,
                ord=int(fields["ord"]) if fields.get("ord") else None,
            )
        last = stored.last_seq if stored is not None else 0
        while True:
            events = await engine.events(run_id, last, limit=_PAGE)
            if not events:
                break
            if events[0].seq != last + 1:
                log.error(
                    "run %s: events %d..%d are gone from Redis and were never written; lost",
                    run_id,
                    last + 1,
                    events[0].seq - 1,
                )
            for event in events:
                store.append(_event(summary.session_id, run_id, event))
            last = events[-1].seq
        if summary.status == "completed" and (stored is None or stored.status != "completed"):
            store.run_completed(summary, unread=fields.get("watched") != "1")
        await store.flush()
        await engine.settled([run_id])


def _event(session_id: str, run_id: str, stored: StoredEvent) -> Event:
    data, text = read_stored(stored.data)
    return Event(session_id, run_id, stored.seq, stored.kind, stored.ts, data, None, text)
