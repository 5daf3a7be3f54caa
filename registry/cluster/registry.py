"""Run state shared by several server processes: Redis numbers and fans out, each process
mirrors what its clients follow.

Redis holds what must be one across processes (:mod:`.scripts`): which run a session is
running (a lease), the seqs (allocated in the same atomic step as each event's ``XADD``),
the queue, the ``client_msg_id`` of each send, exactly one ``complete`` per run. Each
process follows the sessions its clients subscribe to, and those whose runs it drives, on
pub/sub, and keeps them in an in-process :class:`~registry.MemoryRegistry` used as a mirror
(:meth:`~registry.MemoryRegistry.adopt`, :meth:`~registry.MemoryRegistry.ingest`): its
subscriptions, replay buffers and log replay serve local clients exactly as on one
process, and one pub/sub message per batch serves any number of them. A gap (a message lost
to a reconnect) is filled from the run's stream before anything after it is applied.

Following a session and keeping its mirror equal to Redis is :mod:`.follower`'s part. The
process that accepted a send drives its run (:mod:`.driver`) and writes the run's log to
the database from its mirror, in seq order, whoever appended the events
(:mod:`.persistence`). Processes renew their runs' leases; a process whose lease lapsed
(it died) has its runs ended by a survivor with ``server_restart``, and the survivor writes
whatever the dead one had not (:mod:`.upkeep`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.abc
import msgspec
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..clock import Clock, SystemClock, to_ms
from ..errors import QueueFull, RunInProgress, ShuttingDown
from ..events import COMPLETE, USER_MESSAGE, Event, Outcome, RunSummary, complete_data
from ..ids import RunIds
from ..memory import (
    REPLAY_PAGE,
    MemoryRegistry,
    Notice,
    Policy,
    RegistryStats,
    RunNotice,
    SessionDeleted,
    StartResult,
)
from ..run import ALL_DURABLE
from ..sessions import RunContext, Source
from ..store.base import Store
from ..store.errors import StoreError
from ..subscription import Subscription
from .driver import Driver
from .engine import Engine, EngineUnavailable, Timing, summary_of
from .follower import FOLLOW_TIMEOUT, Follower
from .live import Live
from .owned import Owned
from .persistence import OwnedPersistence, Release
from .upkeep import LEASE_KEY, Upkeep

log = logging.getLogger("runwire.cluster")

_POLICIES = frozenset(("reject", "enqueue", "interrupt"))
# Longest wait for Redis to answer a command or take a connection (seconds).
REDIS_TIMEOUT = 5.0
# How often a deletion looks whether the runs it ended are written (seconds).
SETTLE_POLL = 0.02
_decode_notice = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


class ClusterRegistry:
    """:class:`~registry.RunRegistry` for one of several processes sharing Redis and a
    database. Use it as an async context manager.

    ``lease``: a dead process's runs are ended by another within this many seconds (see
    :mod:`.upkeep` for the timing). ``delivery_delay``: longest wait of an event that reached
    this process before its subscribers get it (events go out in batches). ``prefix``: of
    every Redis key and channel.
    """

    def __init__(
        self,
        redis_url: str,
        store: Store,
        *,
        clock: Clock | None = None,
        buffer_size: int = 5000,
        run_ttl: float = 300.0,
        queue_limit: int = 10,
        lease: float = 10.0,
        prefix: str = "runwire",
        process_id: str | None = None,
        delivery_delay: float = 0.005,
        replay_page: int = REPLAY_PAGE,
    ) -> None:
        if lease <= 0:
            raise ValueError("lease must be positive")
        self._redis_url = redis_url
        self._store = store
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.queue_limit = queue_limit
        self.lease = lease
        self.process_id = process_id or uuid.uuid4().hex[:12]
        self._timing = Timing(
            lease_ms=int(lease * LEASE_KEY * 1000), ttl=max(1, int(run_ttl)), maxlen=buffer_size
        )
        self._prefix = prefix
        self._persist = OwnedPersistence(store)
        self._release = Release(
            delivery_delay,
            held=lambda run_id: self.mirror.following(run_id),
            held_back=lambda run_id: self.mirror.held_back(run_id),
            limit=max(1, buffer_size // 2),
            release=self._persist.release,
        )
        self.mirror = MemoryRegistry(
            store=self._persist,
            clock=self._clock,
            buffer_size=buffer_size,
            run_ttl=run_ttl,
            queue_limit=queue_limit,
            replay_page=replay_page,
        )
        self.stats: RegistryStats = self.mirror.stats
        self._listeners: list[Callable[[Notice], None]] = []
        self._owned: dict[str, Owned] = {}
        self._run_ids = RunIds()
        self._closing = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._clients: list[redis.Redis] = []
        self._engine: Engine | None = None
        self._live: Live | None = None
        self._driver: Driver | None = None
        self._upkeep: Upkeep | None = None
        self._follower: Follower | None = None

    # Lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> ClusterRegistry:
        # Every command is bounded: a Redis that hangs is an outage, not a stuck process.
        client = redis.Redis.from_url(
            self._redis_url,
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )
        # The pub/sub connection never reconnects behind our back: a reconnect must be seen,
        # to catch up what was published meanwhile. (Its blocking read waits without limit.)
        listener = redis.Redis.from_url(
            self._redis_url,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )
        self._clients = [client, listener]
        engine = self._engine = Engine(
            client, prefix=self._prefix, proc=self.process_id, timing=self._timing
        )
        self._driver = Driver(
            engine,
            self._store,
            self._clock,
            pace_ahead=max(1, self.mirror.buffer_size // 2),
            closing=lambda: self._closing,
            gone=self.check_gone,
            held=lambda run_id: self.mirror.following(run_id) or 0,
            stats=self.stats,
        )
        live = self._live = Live(
            listener,
            always=engine.notice_channel,
            on_message=self._on_message,
            on_reconnect=self._catch_up_all,
        )
        self._follower = Follower(
            engine,
            live,
            self.mirror,
            self._persist,
            spawn=self.spawn,
            lost_run=self._lost_run,
            ingested=self._release.mark,
        )
        self._upkeep = Upkeep(self, engine, self._store)
        try:
            await engine.seed_ord(await self._store.max_ord())
            await engine.renew([])
        except BaseException:
            await self._close_clients()
            raise
        self._store.watch_durable(self._on_durable)
        self.mirror.listen(self._on_mirror)
        await self.mirror.__aenter__()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._live.run)
        self._task_group.start_soon(self._upkeep.run)
        self._task_group.start_soon(self._release.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if not self._closing:
            with anyio.CancelScope(shield=True):
                await self.shutdown()
        task_group, self._task_group = self._task_group, None
        assert task_group is not None
        task_group.cancel_scope.cancel()
        try:
            await task_group.__aexit__(None, None, None)
        finally:
            try:
                await self.mirror.__aexit__(None, None, None)
            finally:
                with anyio.CancelScope(shield=True):
                    if self._live is not None:
                        await self._live.aclose()
                    await self._close_clients()
        return None

    async def _close_clients(self) -> None:
        for client in self._clients:
            await client.aclose()
        self._clients = []

    def spawn(self, fn: Callable[[str], Coroutine[Any, Any, None]], name: str) -> None:
        """Run ``fn(name)`` in a task of the registry's own."""
        if self._task_group is not None:
            self._task_group.start_soon(fn, name)

    async def _catch_up_all(self) -> None:
        await self.follower.catch_up_all()

    @property
    def follower(self) -> Follower:
        if self._follower is None:
            raise RuntimeError("the cluster registry is not running: `async with` it first")
        return self._follower

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the cluster registry is not running: `async with` it first")
        return self._engine

    def listen(self, callback: Callable[[Notice], None]) -> Callable[[], None]:
        """Hear every run start and finish and every session deletion, on any process."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    async def shutdown(self, reason: Outcome = "server_restart") -> int:
        """Refuse new runs and end the runs this process drives with ``reason``; returns
        how many. Their ends are written before this returns (bounded by the lease)."""
        self._closing = True
        driver = self._driver
        running = [o for o in self._owned.values() if o.running]
        ended = 0
        for owned in running:
            if owned.scope is not None:
                owned.scope.cancel()
            if driver is not None:
                try:
                    if await driver.finish(owned, reason):
                        ended += 1
                except EngineUnavailable as exc:
                    log.error("shutdown: run %s could not be ended (%s)", owned.run_id, exc)
        with anyio.move_on_after(self.lease):
            for owned in running:
                await owned.ended.wait()
            # Their ends are written now, so no survivor has to take them over.
            await self._store.flush()
            self.settle_ready()
            if self._upkeep is not None:
                try:
                    await self._upkeep.report_settled()
                except EngineUnavailable as exc:
                    log.warning("shutdown: settled runs not reported (%s)", exc)
        return ended

    # Starting runs ---------------------------------------------------------------------

    async def start(
        self,
        session_id: str,
        *,
        owner: str,
        content: str,
        provider: str = "",
        source: Source | None = None,
        client_msg_id: str | None = None,
        policy: Policy = "reject",
    ) -> StartResult:
        """Start, queue or find a run, across processes (see the protocol's ``send``).

        The run is driven here, and ``started`` is answered once this process's mirror has
        its ``user_message`` (so the caller may flush the store to make it durable).
        """
        if policy not in _POLICIES:
            raise ValueError(f"policy must be reject, enqueue or interrupt, not {policy!r}")
        if self._closing:
            raise ShuttingDown()
        if client_msg_id:
            original = await self._store.find_client_msg(session_id, client_msg_id)
            if original is not None:
                return StartResult(session_id, original, "duplicate")
        await self.follower.follow(session_id)
        now = to_ms(self._clock.now())
        run_id = self._run_ids.new(now)
        context = RunContext(session_id, run_id, owner, content, client_msg_id)
        owned = Owned(context, source, provider=provider, started_at=now)
        self._owned[run_id] = owned
        self._persist.owned.add(run_id)
        user_message: dict[str, Any] = {"content": content}
        if client_msg_id:
            user_message["client_msg_id"] = client_msg_id
        try:
            status, found = await self._start(
                session_id, owner, provider, now, run_id, user_message, client_msg_id, policy
            )
        except BaseException:
            self._disown(run_id)
            raise
        if status not in ("started", "queued"):
            self._disown(run_id)
        if status == "busy":
            raise RunInProgress(session_id, found)
        if status == "full":
            raise QueueFull(session_id, self.queue_limit)
        if status == "duplicate":
            return StartResult(session_id, found, "duplicate")
        if status == "started":
            try:
                with anyio.fail_after(FOLLOW_TIMEOUT):
                    await owned.adopted.wait()
            except TimeoutError as exc:
                # It is started and will be driven once heard of; the client may resend
                # with its client_msg_id to learn of it.
                raise EngineUnavailable("start", exc) from None
            return StartResult(session_id, run_id, "started")
        return StartResult(session_id, run_id, "queued")

    async def _start(
        self,
        session_id: str,
        owner: str,
        provider: str,
        now: int,
        run_id: str,
        user_message: dict[str, Any],
        client_msg_id: str | None,
        policy: str,
    ) -> tuple[str, str]:
        engine = self.engine
        for _ in range(2):
            status, found = await engine.start(
                run_id=run_id,
                session_id=session_id,
                owner=owner,
                provider=provider,
                ts=now,
                user_message=_encode(user_message).decode(),
                client_msg_id=client_msg_id,
                policy=policy,
                queue_limit=self.queue_limit,
                orphan_data=self._complete_text(session_id, "server_restart"),
                interrupt_data=self._complete_text(session_id, "interrupted"),
            )
            if status != "noord":
                return status, found
            # Redis lost its state (restarted empty): start orders continue the database's.
            await engine.seed_ord(await self._store.max_ord())
        raise EngineUnavailable("start", RuntimeError("the start-order counter is missing"))

    def _disown(self, run_id: str) -> None:
        self._owned.pop(run_id, None)
        self._persist.owned.discard(run_id)

    @staticmethod
    def _complete_text(session_id: str, reason: Outcome) -> str:
        return _encode(complete_data(session_id, reason=reason)).decode()

    # Other changes ---------------------------------------------------------------------

    async def publish(self, session_id: str, kind: str, data: dict[str, Any]) -> Event | None:
        """Append an event to the session's running run, wherever it is driven; ``None``
        when nothing runs. (Its driver's process writes it to the log.)"""
        if kind in (COMPLETE, USER_MESSAGE):
            raise ValueError(f"{kind} events are the registry's own")
        ts = to_ms(self._clock.now())
        text = _encode(data).decode()
        running, held = self._known_running(session_id)
        first, run_id, _ = await self.engine.append(
            running, session_id, ts, [kind], [text], min_seq=held
        )
        if first == 0 and running:
            # The mirror is behind (that run ended): whichever run runs now.
            first, run_id, _ = await self.engine.append("", session_id, ts, [kind], [text])
        if first == 0:
            return None
        return Event(session_id, run_id, first, kind, ts, data)

    async def abort(
        self, session_id: str, *, clear_queue: bool = False, reason: Outcome = "aborted"
    ) -> RunSummary | None:
        """End the session's running run wherever it is driven (its driver stops when it
        hears of the ``complete``)."""
        ts = to_ms(self._clock.now())
        running, held = self._known_running(session_id)
        ended = await self.engine.abort(
            session_id,
            ts,
            self._complete_text(session_id, reason),
            reason,
            clear_queue=clear_queue,
            known=(running, held) if running else None,
        )
        if ended is None:
            return None
        run_id, _ = ended
        return await self.get_run(run_id)

    def _known_running(self, session_id: str) -> tuple[str, int]:
        """The session's running run as this process's mirror holds it, and its last seq
        here (``("", 0)`` when none): the floor below which Redis must not number again."""
        run_id = self.mirror.running_run_id(session_id)
        if run_id is None:
            return "", 0
        return run_id, self.mirror.following(run_id) or 0

    async def forget_session(self, session_id: str, *, owner: str) -> None:
        """End the session's runs and drop its state in Redis; every process (this one
        too) hears :class:`SessionDeleted` over pub/sub. Returns once the ended runs' logs
        are written by the processes that drive them (bounded by the lease), so deleting
        the session's rows next leaves no write behind."""
        ts = to_ms(self._clock.now())
        data = self._complete_text(session_id, "aborted")
        ended = await self.engine.delete(session_id, owner, ts, data)
        with anyio.move_on_after(self.lease):
            while ended:
                ended = await self.engine.unsettled(ended)
                if ended:
                    await anyio.sleep(SETTLE_POLL)  # written by other processes: no event

    # Subscribing and queries -------------------------------------------------------------

    async def subscribe(
        self, session_id: str, *, owner: str, run_id: str | None = None, after_seq: int = 0
    ) -> Subscription:
        """Subscribe from a position: the session is followed (caught up from Redis) and
        the mirror serves the subscription, reading the log for what Redis no longer has."""
        await self.follower.follow(session_id)
        sub = await self.mirror.subscribe(
            session_id, owner=owner, run_id=run_id, after_seq=after_seq
        )
        # Every process now sees this session watched (for has_unread and summaries).
        upkeep = self._upkeep
        if upkeep is not None:
            await upkeep.sync_watch()
        return sub

    async def get_run(self, run_id: str) -> RunSummary | None:
        held = self.mirror.get_run(run_id)
        if held is not None and held.status == "completed":
            return held
        fields = await self.engine.run(run_id)
        if fields is None:
            return held
        subscribers = held.subscribers if held is not None else 0
        return summary_of(run_id, fields, subscribers)

    async def running_run_id(self, session_id: str) -> str | None:
        return await self.engine.running_run_id(session_id)

    async def list_runs(
        self, *, owner: str | None = None, status: Literal["running", "all"] = "running"
    ) -> list[RunSummary]:
        """The owner's runs on every process (an owner is required: Redis indexes runs by
        owner)."""
        if owner is None:
            raise ValueError("the cluster lists runs by owner")
        return await self.engine.runs(owner, status)

    def subscriber_count(self) -> int:
        return self.mirror.subscriber_count()

    def local_runs(self) -> int:
        return sum(1 for owned in self._owned.values() if owned.running)

    # Following sessions ----------------------------------------------------------------

    def followed(self) -> list[str]:
        return self.follower.followed()

    async def unfollow(self, session_id: str) -> None:
        await self.follower.unfollow(session_id)

    def needs(self, session_id: str) -> bool:
        """Whether this process still needs to follow the session: a request used it
        lately, or it has state for it here, or it drives a run of it."""
        return (
            self.follower.recently_used(session_id)
            or self.mirror.has_session(session_id)
            or any(owned.session_id == session_id for owned in self._owned.values())
        )

    def _on_message(self, channel: str, data: str) -> None:
        if channel == self.engine.notice_channel:
            self._on_notice(data)
        else:
            self.follower.on_message(channel, data)

    async def _lost_run(self, run_id: str) -> None:
        owned = self._owned.get(run_id)
        if owned is not None:
            await self._vanished(owned)

    # Notices ---------------------------------------------------------------------------

    def _on_notice(self, text: str) -> None:
        notice = _decode_notice(text)
        kind = notice.get("kind")
        owner = str(notice.get("owner") or "")
        if kind == "session_deleted":
            session_id = str(notice.get("session_id") or "")
            self.mirror.forget_session(session_id)
            for owned in [o for o in self._owned.values() if o.session_id == session_id]:
                if owned.scope is not None:
                    owned.scope.cancel()
            self._announce(SessionDeleted(owner, session_id))
        elif kind in ("run_started", "run_finished"):
            run = msgspec.convert(notice["run"], RunSummary)
            self._announce(RunNotice(kind, owner, run))

    def _announce(self, notice: Notice) -> None:
        for listener in list(self._listeners):
            try:
                listener(notice)
            except Exception:
                log.exception("run listener failed")

    def _on_mirror(self, notice: Notice) -> None:
        """The mirror adopted or ended a run: drive it when it is ours, stop driving it
        when it ended."""
        if not isinstance(notice, RunNotice):
            return
        owned = self._owned.get(notice.run.run_id)
        if owned is None:
            return
        if notice.kind == "run_started":
            owned.adopted.set()
            if owned.source is not None and self._task_group is not None:
                if self._closing:
                    self._task_group.start_soon(self._end_unstarted, owned)
                else:
                    assert self._driver is not None
                    self._task_group.start_soon(self._driver.drive, owned)
        else:
            owned.ended.set()
            if owned.scope is not None:
                owned.scope.cancel()
            self._settle_if_durable(owned.run_id)

    async def _end_unstarted(self, owned: Owned) -> None:
        assert self._driver is not None
        try:
            await self._driver.finish(owned, "server_restart")
        except EngineUnavailable as exc:
            log.error("run %s could not be ended on shutdown (%s)", owned.run_id, exc)

    # Durability --------------------------------------------------------------------------

    def _on_durable(self, run_id: str, seq: int) -> None:
        owned = self._owned.get(run_id)
        if owned is None:
            return
        pacing = owned.pacing
        if pacing is not None and seq >= pacing[0]:
            pacing[1].set()
        if owned.ended.is_set():
            self._settle_if_durable(run_id)

    def _settle_if_durable(self, run_id: str) -> None:
        """A run of ours whose end is committed: nobody has anything left to write. (The
        writer stops tracking a run once its end is committed: every seq is durable.)"""
        owned = self._owned.get(run_id)
        if owned is None or not owned.ended.is_set():
            return
        if self._store.durable_seq(run_id) < ALL_DURABLE:
            return
        self._disown(run_id)
        if self._upkeep is not None:
            self._upkeep.settled(run_id)

    def settle_ready(self) -> None:
        """Settle every ended run of ours whose end is committed by now (a commit that held
        only a run's end reports no seq, so this is also checked periodically)."""
        for run_id in [r for r, o in self._owned.items() if o.ended.is_set()]:
            self._settle_if_durable(run_id)

    def leases(self) -> list[tuple[str, str]]:
        """(session, run) of every run this process drives."""
        return [(o.session_id, o.run_id) for o in self._owned.values() if o.running]

    async def lease_lost(self, run_id: str) -> None:
        """Our run's lease is gone: another process ended it (its source is stopped), or
        Redis lost it (it is ended here)."""
        owned = self._owned.get(run_id)
        if owned is None:
            return
        if owned.scope is not None:
            log.warning("run %s lost its lease; its source is stopped", run_id)
            owned.scope.cancel()
        await self.check_gone(owned)

    async def check_gone(self, owned: Owned) -> None:
        """Redis answered that our run is not running: if it does not know the run at all,
        it lost it, and the run is ended here."""
        if await self.engine.run(owned.run_id) is None:
            await self._vanished(owned)

    async def _vanished(self, owned: Owned) -> None:
        """Redis lost a running run of ours (it restarted empty): end it in the log, and put
        its end back in Redis so every process's subscribers hear of it. The end takes the
        seq after the last one this process appended, so no seq a client saw is reused;
        events Redis took but never sent back are reported lost."""
        if owned.ended.is_set():
            return
        owned.ended.set()
        if owned.scope is not None:
            owned.scope.cancel()
        run_id, session_id = owned.run_id, owned.session_id
        held = self.mirror.following(run_id) or 0
        seq = max(held, owned.last_appended) + 1
        if owned.last_appended > held:
            log.error(
                "run %s: events %d..%d reached Redis but never came back before Redis lost "
                "them; they are lost",
                run_id,
                held + 1,
                owned.last_appended,
            )
        log.error("run %s: Redis lost its state; ended with server_restart at seq %d", run_id, seq)
        ts = to_ms(self._clock.now())
        data = complete_data(
            session_id, reason="server_restart", exit_code=1, error="run state was lost"
        )
        summary = RunSummary(
            run_id=run_id,
            session_id=session_id,
            provider=owned.provider,
            status="completed",
            started_at=owned.started_at,
            completed_at=ts,
            last_seq=seq,
            subscribers=0,
            outcome="server_restart",
        )
        # Written here, not through the mirror, which cannot take a seq past a gap.
        self._persist.owned.discard(run_id)
        self._store.append(Event(session_id, run_id, seq, COMPLETE, ts, data))
        self._store.run_completed(summary, unread=True)
        try:
            await self._store.flush()
            await self.engine.restore_end(
                summary,
                owner=owned.context.owner,
                seq=seq,
                ts=ts,
                data=_encode(data).decode(),
                ord=None,
            )
        except (EngineUnavailable, StoreError) as exc:
            log.error("run %s: its end could not be announced: %s", run_id, exc)
