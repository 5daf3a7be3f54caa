"""The in-process run registry: one server process, runs and fan-out in memory.

All state changes happen in synchronous code on the event loop, so every operation is
atomic with respect to the others: a subscription registers its cursor in the same step
that fixes its replay, and a ``complete`` cannot interleave with another.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, NamedTuple

import anyio
import anyio.abc

from .clock import Clock, SystemClock
from .errors import QueueFull, RunInProgress, ShuttingDown, UnknownRun
from .events import (
    COMPLETE,
    SESSION_CREATED,
    USER_MESSAGE,
    Event,
    Outcome,
    Position,
    RunSummary,
    complete_data,
)
from .hooks import NullPersistence, Persistence, has_history
from .ids import RunIds
from .pairs import (
    check_kind,
    checked_pair,
    closing,
    complete_fields,
    created_id,
    needs_scrub,
    scrub,
)
from .run import Run
from .sessions import PendingStart, RunContext, SessionState, Source
from .subscription import SubscribeInfo, Subscription

log = logging.getLogger("runwire.registry")

Policy = Literal["reject", "enqueue", "interrupt"]
StartStatus = Literal["started", "queued", "duplicate"]

_POLICIES: frozenset[str] = frozenset(("reject", "enqueue", "interrupt"))
# Kinds the registry acts on when a source yields them, rather than just numbering them.
_ACTED_ON: frozenset[str] = frozenset((COMPLETE, SESSION_CREATED))


class StartResult(NamedTuple):
    """The answer to :meth:`MemoryRegistry.start`."""

    session_id: str
    run_id: str
    status: StartStatus


class RunNotice(NamedTuple):
    """A run started or finished; pushed to listeners (the gateway tells the owner)."""

    kind: Literal["run_started", "run_finished"]
    owner: str
    run: RunSummary


class SessionDeleted(NamedTuple):
    """A session was deleted; pushed to listeners (the gateway tells the owner)."""

    owner: str
    session_id: str


Notice = RunNotice | SessionDeleted
"""What listeners hear about."""


class RegistryStats:
    """Counters for metrics. Plain integers: reading them is free. (Lagged subscriptions
    are counted by whoever reads them, where the ``Lagged`` is raised.)"""

    __slots__ = ("dropped", "evicted", "published", "runs_completed", "runs_started")

    def __init__(self) -> None:
        self.published = 0
        self.dropped = 0
        self.runs_started = 0
        self.runs_completed = 0
        self.evicted = 0


# Most events one subscription reads from the log at once (about 0.7 KB each in memory).
REPLAY_PAGE = 10_000


class MemoryRegistry:
    """Runs keyed by the app's session id, with seqs, replay buffers and subscriptions.

    Use it as an async context manager: inside, runs with a :data:`Source` are driven by
    tasks of the registry's own task group, and a single sweeper evicts finished runs.
    Runs without a source are driven by calling :meth:`publish`.
    """

    def __init__(
        self,
        *,
        store: Persistence | None = None,
        clock: Clock | None = None,
        buffer_size: int = 5000,
        run_ttl: float = 300.0,
        queue_limit: int = 10,
        replay_page: int = REPLAY_PAGE,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if replay_page < 1:
            raise ValueError("replay_page must be at least 1")
        if run_ttl < 0:
            raise ValueError("run_ttl must not be negative")
        if queue_limit < 0:
            raise ValueError("queue_limit must not be negative")
        self._store: Persistence = store if store is not None else NullPersistence()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.buffer_size = buffer_size
        self.run_ttl = run_ttl
        self.queue_limit = queue_limit
        self.replay_page = replay_page
        self.stats = RegistryStats()
        self._sessions: dict[str, SessionState] = {}
        self._runs: dict[str, Run] = {}
        self._running: dict[str, Run] = {}
        # Completed runs in completion order, with their completion time: the eviction queue.
        self._finished: deque[tuple[float, Run]] = deque()
        self._listeners: list[Callable[[Notice], None]] = []
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closing = False
        self._run_ids = RunIds()
        self._gated = self._store.watch_durable(self._on_durable)
        self._pace_ahead = max(1, buffer_size // 2)

    # Lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> MemoryRegistry:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._sweep_forever)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.shutdown()
        task_group, self._task_group = self._task_group, None
        assert task_group is not None
        task_group.cancel_scope.cancel()
        return await task_group.__aexit__(exc_type, exc, tb)

    def shutdown(self, reason: Outcome = "server_restart") -> int:
        """Refuse new runs and end every running run with ``complete`` (``reason``).

        Queued starts were acknowledged with a ``run_id``, so they are not dropped: each
        becomes a run that ends at once with the same reason, and the client finds its
        message and how it ended. Returns how many running runs were ended.
        """
        self._closing = True
        ended = 0
        for run in list(self._running.values()):
            if self._finish(run, reason=reason):
                ended += 1
        for state in list(self._sessions.values()):
            self._end_queued(state, self._take_queue(state), reason)
        return ended

    def listen(self, callback: Callable[[Notice], None]) -> Callable[[], None]:
        """Call ``callback`` for every run start and finish and every session deletion
        announced to :meth:`forget_session`. Returns a function to stop."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

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
        """Start a run for the session, or queue it, or find it already started.

        With a ``client_msg_id`` already used in the session (in memory or in the store),
        nothing starts and the original run is returned as ``duplicate``. Otherwise, when a
        run is running: ``reject`` raises :class:`RunInProgress`; ``enqueue`` queues the
        start (bounded: :class:`QueueFull`); ``interrupt`` ends the running run with
        ``reason: "interrupted"`` and starts this one at once.
        """
        if policy not in _POLICIES:
            # Anything unrecognised would otherwise fall through to ``interrupt``.
            raise ValueError(f"policy must be reject, enqueue or interrupt, not {policy!r}")
        if self._closing:
            raise ShuttingDown()
        if source is not None and self._task_group is None:
            raise RuntimeError("runs with a source need the registry entered: `async with`")
        if client_msg_id:
            original = await self._find_duplicate(session_id, client_msg_id)
            if original is not None:
                return StartResult(session_id, original, "duplicate")
            if self._closing:
                raise ShuttingDown()
        state = self._state(session_id, owner)
        pending = PendingStart(self._new_run_id(), provider, content, client_msg_id, source)
        running = self._running.get(session_id)
        if running is not None:
            if policy == "reject":
                raise RunInProgress(session_id, running.run_id)
            if policy == "enqueue":
                if len(state.queue) >= self.queue_limit:
                    raise QueueFull(session_id, self.queue_limit)
                self._remember(state, pending)
                state.queue.append(pending)
                return StartResult(session_id, pending.run_id, "queued")
            # interrupt: put this start first in line; ending the run starts it.
            self._remember(state, pending)
            state.queue.appendleft(pending)
            self._finish(running, reason="interrupted")
            return StartResult(session_id, pending.run_id, "started")
        self._remember(state, pending)
        self._launch(state, pending)
        self.sweep()
        return StartResult(session_id, pending.run_id, "started")

    async def _find_duplicate(self, session_id: str, client_msg_id: str) -> str | None:
        state = self._sessions.get(session_id)
        if state is not None and client_msg_id in state.msg_ids:
            return state.msg_ids[client_msg_id]
        stored = await self._store.find_client_msg(session_id, client_msg_id)
        if stored is not None:
            return stored
        # Look again: a concurrent start may have taken the id while the store answered.
        state = self._sessions.get(session_id)
        if state is not None and client_msg_id in state.msg_ids:
            return state.msg_ids[client_msg_id]
        return None

    def _remember(self, state: SessionState, pending: PendingStart) -> None:
        if pending.client_msg_id:
            state.msg_ids[pending.client_msg_id] = pending.run_id

    def _launch(self, state: SessionState, pending: PendingStart) -> Run:
        now = self._now_ms()
        run = self._new_run(state, pending.run_id, pending.provider, now, pending.client_msg_id)
        self._store.run_started(run.summary(), client_msg_id=pending.client_msg_id)
        data: dict[str, Any] = {"content": pending.content}
        if pending.client_msg_id:
            data["client_msg_id"] = pending.client_msg_id
        self._append(run, USER_MESSAGE, data, now)
        self._notify("run_started", run)
        if pending.source is not None:
            assert self._task_group is not None
            context = RunContext(
                state.session_id, run.run_id, state.owner, pending.content, pending.client_msg_id
            )
            self._task_group.start_soon(self._drive, run, pending.source, context)
        return run

    def _new_run(
        self,
        state: SessionState,
        run_id: str,
        provider: str,
        started_at: int,
        client_msg_id: str | None,
        first_seq: int = 1,
    ) -> Run:
        """A running run, the session's newest, with nothing buffered yet."""
        run = Run(state, run_id, provider, started_at, self.buffer_size, client_msg_id, first_seq)
        if self._gated:
            run.durable = 0
        state.started += 1
        # Not ``state.latest``: that may have been evicted while a subscription waits on it.
        previous = state.last_run
        if previous is not None:
            previous.next = run
        state.last_run = run
        state.runs.append(run)
        self._runs[run.run_id] = run
        self._running[state.session_id] = run
        self.stats.runs_started += 1
        return run

    async def _drive(self, run: Run, source: Source, context: RunContext) -> None:
        """Feed a run from its source until it completes, fails or is cancelled."""
        with anyio.CancelScope() as scope:
            run.cancel_scope = scope
            if run.done:
                return
            try:
                events = source(context)
                async with closing(events):
                    async for item in events:
                        # A burst (a list of pairs) is published with one timestamp.
                        burst = item if type(item) is list else [item]
                        ts = self._now_ms()
                        done = self._publish_burst(run, burst, 0, ts)
                        while done < len(burst) and run.status == "running":
                            await self._until_durable(run)
                            done = self._publish_burst(run, burst, done, self._now_ms())
                        if run.status != "running":
                            break
            except Exception as exc:
                log.warning("run %s failed: %s", run.run_id, exc, exc_info=exc)
                self._finish(run, reason="error", error=str(exc) or type(exc).__name__)
                return
        if not run.done and not scope.cancel_called:
            self._finish(run, reason="done", exit_code=0)

    # Publishing ------------------------------------------------------------------------

    def publish(self, session_id: str, kind: str, data: dict[str, Any]) -> Event | None:
        """Publish an event to the session's running run.

        Returns the numbered event, or ``None`` when it was not delivered: there is no
        running run (a late event, a duplicate ``complete``), or the kind is
        ``session_created`` (recorded, never delivered). A kind holding a NUL character
        raises :class:`TypeError`.
        """
        check_kind(kind)
        run = self._running.get(session_id)
        if run is None:
            self.stats.dropped += 1
            # A late event belongs to the run that last ended; count it there too.
            state = self._sessions.get(session_id)
            if state is not None and state.latest is not None:
                state.latest.dropped += 1
            return None
        return self._publish(run, kind, data)

    def _publish(
        self, run: Run, kind: str, data: dict[str, Any], ts: int | None = None
    ) -> Event | None:
        if run.status != "running":
            run.dropped += 1
            self.stats.dropped += 1
            return None
        if kind == COMPLETE:
            return self._complete(run, data, cancel=False)
        if kind == SESSION_CREATED:
            pid = created_id(data)
            if pid is not None:
                self._record_provider_id(run, pid)
            return None
        if needs_scrub(data):
            data = scrub(data, run.session.session_id)
        return self._append(run, kind, data, self._now_ms() if ts is None else ts)

    def _publish_burst(self, run: Run, burst: list[Any], start: int, ts: int) -> int:
        """Publish a source's pairs ``burst[start:]`` in order, as far as the pacing window
        lets the run get ahead of the disk; returns where it stopped (``len(burst)`` once
        all are published; earlier when the window is full or the run ended).

        Plain events, nearly all of a stream, are numbered and handed to the buffer and the
        store together; anything the registry acts on goes through :meth:`_publish`.
        """
        if run.status != "running":
            # Ended (aborted, say) before its source saw the cancellation: late, dropped.
            late = len(burst) - start
            run.dropped += late
            self.stats.dropped += late
            return len(burst)
        room = self._pace_ahead + 1 - (run.buffer.last_seq - run.durable)
        end = min(len(burst), start + room)
        state = run.session
        session_id, run_id = state.session_id, run.run_id
        seq = run.buffer.last_seq
        events: list[Event] = []
        index = start
        try:
            while index < end:
                kind, data = checked_pair(burst[index])
                index += 1
                if kind in _ACTED_ON or needs_scrub(data):
                    self._add(run, events)
                    events = []
                    self._publish(run, kind, data, ts)
                    if run.status != "running":
                        return index
                    seq = run.buffer.last_seq
                    continue
                seq += 1
                events.append(Event(session_id, run_id, seq, kind, ts, data))
        finally:
            # Also when a bad pair raised: the good ones before it are published.
            self._add(run, events)
        return end

    def _add(self, run: Run, events: list[Event]) -> None:
        """Buffer, store and announce a running run's next events, numbered in order."""
        if not events:
            return
        run.buffer.extend(events)
        self._store.append_many(events)
        self.stats.published += len(events)
        state = run.session
        if (state.waiters or state.listeners) and events[0].seq <= run.durable:
            state.wake()

    def _append(
        self, run: Run, kind: str, data: dict[str, Any], ts: int, data_json: str | None = None
    ) -> Event:
        state = run.session
        event = Event(
            state.session_id, run.run_id, run.buffer.last_seq + 1, kind, ts, data, None, data_json
        )
        run.buffer.append(event)
        self._store.append(event)
        self.stats.published += 1
        if (state.waiters or state.listeners) and event.seq <= run.durable:
            # Not before it is durable: a wake-up for an undeliverable event is wasted.
            state.wake()
        return event

    async def _until_durable(self, run: Run) -> None:
        """Hold a source that outran the disk until the next commit makes room.

        Subscribers only get what is on disk, so a source far ahead of the store would
        push undelivered events out of the buffer. Going on as soon as there is room, not
        when everything is written, keeps the source producing while the store commits.
        """
        target = run.buffer.last_seq - self._pace_ahead
        woken = anyio.Event()
        run.pacing = (target, woken)
        try:
            self._store.urge()
            if run.durable < target:
                await woken.wait()
        finally:
            run.pacing = None

    def _on_durable(self, run_id: str, seq: int) -> bool:
        """The store committed ``run_id`` up to ``seq``: let subscribers have those events.
        Returns whether anyone was told."""
        run = self._runs.get(run_id)
        if run is None or seq <= run.durable:
            return False
        run.durable = seq
        woke = run.session.wake()
        if run.pacing is not None and seq >= run.pacing[0]:
            run.pacing[1].set()
        return woke

    def record_provider_session(self, session_id: str, provider_session_id: str) -> bool:
        """Record the provider-native id on the session's running (or latest) run."""
        run = self._running.get(session_id)
        if run is None:
            state = self._sessions.get(session_id)
            run = state.latest if state is not None else None
        if run is None or not provider_session_id:
            return False
        self._record_provider_id(run, provider_session_id)
        return True

    def _record_provider_id(self, run: Run, provider_session_id: str) -> None:
        # The first id is stored, the same id again is a no-op, a different one replaces it.
        if not provider_session_id or provider_session_id == run.provider_session_id:
            return
        run.provider_session_id = provider_session_id
        try:
            self._store.provider_session(run.session.session_id, run.run_id, provider_session_id)
        except Exception:
            log.exception("recording the provider session id of run %s failed", run.run_id)

    # Completing runs -------------------------------------------------------------------

    def abort(
        self, session_id: str, *, clear_queue: bool = False, reason: Outcome = "aborted"
    ) -> RunSummary | None:
        """End the running run with ``complete`` (``aborted: true``) and stop its source.

        Returns the ended run's summary, or ``None`` when nothing was running (a no-op).
        With ``clear_queue`` the session's queued starts are not started: each becomes a
        run that ends at once with the same reason (they were acknowledged with a run_id).
        """
        state = self._sessions.get(session_id)
        queued = self._take_queue(state) if state is not None and clear_queue else []
        run = self._running.get(session_id)
        if run is not None:
            self._finish(run, reason=reason)
        if state is not None:
            self._end_queued(state, queued, reason)
        return run.summary() if run is not None else None

    @staticmethod
    def _take_queue(state: SessionState) -> list[PendingStart]:
        queued = list(state.queue)
        state.queue.clear()
        return queued

    def _end_queued(self, state: SessionState, queued: list[PendingStart], reason: Outcome) -> None:
        """Turn taken-out queued starts into runs that end at once with ``reason``.

        Called with nothing running, and with the queue already emptied, so that ending
        one of them cannot start the next for real.
        """
        for pending in queued:
            self._finish(self._launch(state, pending._replace(source=None)), reason=reason)

    def complete_run(
        self, session_id: str, *, exit_code: int = 1, error: str | None = None
    ) -> bool:
        """End the running run with a synthetic ``complete`` (the crash path).

        Returns ``False``, and does nothing, when no run is running.
        """
        run = self._running.get(session_id)
        if run is None:
            return False
        reason: Outcome = "error" if (error is not None or exit_code != 0) else "done"
        return self._finish(run, reason=reason, exit_code=exit_code, error=error)

    def _finish(
        self,
        run: Run,
        *,
        reason: Outcome,
        exit_code: int | None = None,
        error: str | None = None,
    ) -> bool:
        data = complete_data(
            run.session.session_id, reason=reason, exit_code=exit_code, error=error
        )
        return self._complete(run, data, cancel=True) is not None

    def _complete(
        self,
        run: Run,
        data: dict[str, Any],
        *,
        cancel: bool,
        ts: int | None = None,
        data_json: str | None = None,
        checked: bool = False,
    ) -> Event | None:
        if run.status != "running":
            run.dropped += 1
            self.stats.dropped += 1
            return None
        state = run.session
        if not checked:
            data = complete_fields(data, state.session_id)
        now = self._now_ms() if ts is None else ts
        event = self._append(run, COMPLETE, data, now, data_json)
        run.status = "completed"
        run.outcome = data["reason"]
        run.completed_at = now
        del self._running[state.session_id]
        self._finished.append((self._clock.now(), run))
        self.stats.runs_completed += 1
        summary = run.summary()
        self._store.run_completed(summary, unread=not state.subscriptions)
        self._notify("run_finished", run, summary)
        if cancel and run.cancel_scope is not None:
            run.cancel_scope.cancel()
        self._start_next(state)
        return event

    def _start_next(self, state: SessionState) -> None:
        while state.queue and not self._closing and state.session_id not in self._running:
            pending = state.queue.popleft()
            if pending.source is not None and self._task_group is None:
                log.error("queued run %s has a source but the registry is closed", pending.run_id)
                continue
            self._launch(state, pending)

    def _notify(
        self,
        kind: Literal["run_started", "run_finished"],
        run: Run,
        summary: RunSummary | None = None,
    ) -> None:
        if self._listeners:
            self._announce(RunNotice(kind, run.session.owner, summary or run.summary()))

    def _announce(self, notice: Notice) -> None:
        for listener in list(self._listeners):
            try:
                listener(notice)
            except Exception:
                log.exception("run listener failed")

    # Following runs numbered elsewhere ------------------------------------------------

    def adopt(
        self,
        session_id: str,
        *,
        owner: str,
        run_id: str,
        provider: str,
        started_at: int,
        client_msg_id: str | None = None,
        first_seq: int = 1,
        ord: int | None = None,
    ) -> None:
        """Follow a run that another engine starts and numbers (several processes share
        run state in Redis; this registry then mirrors it for local subscribers).

        The run becomes the session's newest, running, with nothing buffered before
        ``first_seq`` (a longer run's start may be gone from the engine); its events come
        through :meth:`ingest`. The store hears of it as of a run started here (``ord``:
        its start order, allocated by the engine).
        """
        state = self._state(session_id, owner)
        if session_id in self._running:
            raise RuntimeError(f"session {session_id} already has a running run")
        if run_id in self._runs:
            raise RuntimeError(f"run {run_id} is already followed")
        run = self._new_run(state, run_id, provider, started_at, client_msg_id, first_seq)
        self._store.run_started(run.summary(), client_msg_id=client_msg_id, ord=ord)
        self._notify("run_started", run)

    def ingest(
        self,
        run_id: str,
        seq: int,
        kind: str,
        ts: int,
        data: dict[str, Any],
        data_json: str | None = None,
    ) -> bool:
        """Add an event of a followed run, numbered ``seq`` elsewhere (``data_json``: its
        data as the engine holds it, reused for the wire and the log).

        Idempotent: an event already held, or of a run not followed, changes nothing.
        Returns ``False`` only for a gap (``seq`` is past the next one): the caller must
        fetch what is missing first. A ``complete`` ends the run as here.
        """
        run = self._runs.get(run_id)
        if run is None or seq <= run.buffer.last_seq or run.status != "running":
            return True
        if seq != run.buffer.last_seq + 1:
            return False
        if kind == COMPLETE:
            # Made complete and valid where it was numbered.
            self._complete(run, data, cancel=True, ts=ts, data_json=data_json, checked=True)
        else:
            self._append(run, kind, data, ts, data_json)
        return True

    def drop_session(self, session_id: str) -> None:
        """Forget a followed session whose events were lost where they are numbered: each
        subscription ends with :class:`Lagged` once it has what it can still have (its
        client resubscribes and gets what the log has). No run is ended here."""
        state = self._sessions.pop(session_id, None)
        if state is None:
            return
        for sub in list(state.subscriptions):
            sub._lag()
        state.wake()
        if self._running.get(session_id) in state.runs:
            del self._running[session_id]
        for run in state.runs:
            if self._runs.get(run.run_id) is run:
                del self._runs[run.run_id]
        state.runs.clear()

    def held_back(self, run_id: str) -> int:
        """How many events of the run are held here but not yet deliverable (not durable, or
        for a followed run not yet released)."""
        run = self._runs.get(run_id)
        return max(0, run.buffer.last_seq - run.durable) if run is not None else 0

    def following(self, run_id: str) -> int | None:
        """The last seq held of a followed (or local) run, or ``None`` when it is not here."""
        run = self._runs.get(run_id)
        return run.buffer.last_seq if run is not None else None

    def session_runs(self, session_id: str) -> list[str]:
        """The session's runs held in memory, oldest first."""
        state = self._sessions.get(session_id)
        return [run.run_id for run in state.runs] if state is not None else []

    def has_session(self, session_id: str) -> bool:
        """Whether the session has state here (runs, subscriptions or queued starts)."""
        return session_id in self._sessions

    def session_subscribers(self) -> dict[str, int]:
        """Live subscriptions per session that has any."""
        sessions = self._sessions.items()
        return {sid: len(state.subscriptions) for sid, state in sessions if state.subscriptions}

    # Subscribing -----------------------------------------------------------------------

    async def subscribe(
        self,
        session_id: str,
        *,
        owner: str,
        run_id: str | None = None,
        after_seq: int = 0,
    ) -> Subscription:
        """Subscribe to the session from a position; see the protocol's ``subscribe``.

        The subscription is registered before anything is awaited, so events published
        while the replay is read from the store are neither missed nor doubled. Its
        :attr:`Subscription.info` holds what the ``subscribed`` frame reports.
        """
        if after_seq < 0:
            raise ValueError("after_seq must be >= 0")
        state = self._state(session_id, owner)
        target: Run | None = None
        if run_id is None:
            target = state.latest
        else:
            target = self._runs.get(run_id)
            if target is not None and target.session is not state:
                raise UnknownRun(session_id, run_id)
        if (
            target is not None
            and after_seq + 1 >= target.buffer.first_seq
            and _memory_start(target) is target
        ):
            # Everything asked for is in memory.
            after = min(after_seq, target.last_seq)
            sub = Subscription(state, target, after + 1, (target.run_id, after))
            state.subscriptions.add(sub)
            sub.info = self._info(state, sub, recovered=True)
            return sub
        return await self._subscribe_from_log(state, target, run_id, after_seq)

    async def _subscribe_from_log(
        self, state: SessionState, target: Run | None, run_id: str | None, after_seq: int
    ) -> Subscription:
        # Delivery from memory starts at the boundary: the oldest buffered event of the
        # target run, or else of the session's oldest run in memory, or else its next run;
        # but of a later run instead if that one's buffer no longer reaches back to seq 1.
        first = target if target is not None else (state.runs[0] if state.runs else None)
        boundary = _memory_start(first) if first is not None else None
        if boundary is not None:
            buffer = boundary.buffer
            start_seq = buffer.first_seq
            if len(buffer) == buffer.capacity and not boundary.done and has_history(self._store):
                # A running run's full buffer drops its oldest event on every publish: a
                # cursor there would be overrun by the first event published while the store
                # is read or the replay is sent. Start it halfway in; the store supplies the
                # rest. A completed run's buffer no longer changes: the store reads less.
                start_seq += buffer.capacity // 2
            sub = Subscription(state, boundary, start_seq, (run_id, after_seq))
            before: Position | None = Position(boundary.run_id, start_seq)
        else:
            sub = Subscription(state, None, 1, (run_id, after_seq))
            before = None
        state.subscriptions.add(sub)
        if not has_history(self._store):
            sub.info = self._info(state, sub, recovered=False, first_available=before)
            return sub
        read = self._store.read_history
        # One past the page: whether the log goes on after it.
        page = self.replay_page + 1
        try:
            if run_id is None:
                # The latest run is the one in memory when there is one: the store's newest
                # may not be written yet.
                latest_id = target.run_id if target is not None else None
                if latest_id is None:
                    latest = await self._store.latest_run(state.session_id)
                    latest_id = latest.run_id if latest is not None else None
                after = Position(latest_id, after_seq) if latest_id is not None else None
                # No run in the log either: the session has no events yet.
                events = [] if after is None else await read(state.session_id, after, before, page)
            else:
                events = await read(state.session_id, Position(run_id, after_seq), before, page)
        except BaseException:
            sub.close()
            raise
        if events is None:
            sub.close()
            raise UnknownRun(state.session_id, run_id or "")
        read_count = len(events)
        events = self._unseen(state, sub, events)
        # The log goes on past a page, and memory does not continue it: delivery ends after
        # the page with ``lagged``, and subscribing again from there reads the next one, so
        # a replay holds at most a page in memory however long the history. (Where memory
        # does continue it, it left at most a page of the read.)
        page_end = read_count == page and len(events) == read_count
        if page_end:
            del events[self.replay_page :]
        requested = Position(run_id, after_seq) if run_id is not None else after
        memory = None
        if sub._run is not None and not page_end:
            memory = Position(sub._run.run_id, sub._next)
        hole = _first_hole(events, requested, memory)
        if hole is not None:
            # Events the client asked for exist nowhere any more (lost where they were
            # numbered before they were written): delivery starts after the hole.
            log.error("session %s: events before %s are lost", state.session_id, hole)
            cut = next((i for i, e in enumerate(events) if e.position == hole), len(events))
            sub._set_prefix(events[cut:], page_end=page_end)
            sub.info = self._info(state, sub, recovered=False, first_available=hole)
            return sub
        sub._set_prefix(events, page_end=page_end)
        sub.info = self._info(state, sub, recovered=True)
        return sub

    def _unseen(self, state: SessionState, sub: Subscription, events: list[Event]) -> list[Event]:
        """Drop log events that the cursor will deliver from memory anyway.

        The log read may have included events of runs that started (or were flushed) while
        it ran; the cursor delivers those from memory.
        """
        start = sub._run
        start_seq = sub._next
        keep: list[Event] = []
        for event in events:
            run = self._runs.get(event.run_id)
            if run is not None and run.session is state:
                if start is None and run.ordinal >= sub._want:
                    continue
                if start is not None and (
                    run.ordinal > start.ordinal or (run is start and event.seq >= start_seq)
                ):
                    continue
            keep.append(event)
        return keep

    def _info(
        self,
        state: SessionState,
        sub: Subscription,
        *,
        recovered: bool,
        first_available: Position | None = None,
    ) -> SubscribeInfo:
        latest = state.latest
        return SubscribeInfo(
            session_id=state.session_id,
            run=latest.summary() if latest is not None else None,
            is_processing=state.session_id in self._running,
            recovered=recovered,
            replayed=sub.pending(),
            first_available=first_available,
        )

    # Queries ---------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunSummary | None:
        """The run's summary while it is in memory (running, or completed within the TTL)."""
        run = self._runs.get(run_id)
        return run.summary() if run is not None else None

    def is_processing(self, session_id: str) -> bool:
        """Whether the session has a running run."""
        return session_id in self._running

    def running_run_id(self, session_id: str) -> str | None:
        run = self._running.get(session_id)
        return run.run_id if run is not None else None

    def list_runs(
        self, *, owner: str | None = None, status: Literal["running", "all"] = "running"
    ) -> list[RunSummary]:
        """Run summaries, oldest start first: running ones, or every run in memory and
        every queued start (``status="all"``), optionally only the owner's."""
        runs = self._running.values() if status == "running" else self._runs.values()
        out = [r.summary() for r in runs if owner is None or r.session.owner == owner]
        out.sort(key=lambda s: s.started_at or 0)
        if status == "all":
            for state in self._sessions.values():
                if owner is not None and state.owner != owner:
                    continue
                for pending in state.queue:
                    out.append(
                        RunSummary(
                            run_id=pending.run_id,
                            session_id=state.session_id,
                            provider=pending.provider,
                            status="queued",
                            started_at=None,
                            completed_at=None,
                            last_seq=0,
                            subscribers=len(state.subscriptions),
                        )
                    )
        return out

    def running_count(self) -> int:
        """How many runs are running."""
        return len(self._running)

    def subscriber_count(self) -> int:
        """Live subscriptions across all sessions (for metrics)."""
        return sum(len(s.subscriptions) for s in self._sessions.values())

    def queued(self, session_id: str) -> int:
        state = self._sessions.get(session_id)
        return len(state.queue) if state is not None else 0

    # Eviction --------------------------------------------------------------------------

    def sweep(self) -> int:
        """Evict completed runs older than the TTL whose events are all on disk.

        Returns how many runs were evicted. Cheap when there is nothing to do: it looks at
        the oldest completed run only.
        """
        horizon = self._clock.now() - self.run_ttl
        finished = self._finished
        evicted = 0
        while finished and finished[0][0] <= horizon:
            run = finished[0][1]
            if self._store.durable_seq(run.run_id) < run.last_seq:
                break  # Not on disk yet: the buffer must keep it. Try again later.
            finished.popleft()
            self._evict(run)
            evicted += 1
        self.stats.evicted += evicted
        return evicted

    def _evict(self, run: Run) -> None:
        state = run.session
        # Identity checks: an old run never removes a newer one that replaced it.
        if self._runs.get(run.run_id) is run:
            del self._runs[run.run_id]
        if run in state.runs:
            state.runs.remove(run)
        if run.client_msg_id and state.msg_ids.get(run.client_msg_id) == run.run_id:
            del state.msg_ids[run.client_msg_id]
        if state.idle() and self._sessions.get(state.session_id) is state:
            del self._sessions[state.session_id]

    async def _sweep_forever(self) -> None:
        interval = min(max(self.run_ttl / 4, 0.05), 30.0) if math.isfinite(self.run_ttl) else 30.0
        while True:
            await anyio.sleep(interval)
            self.sweep()
            self._drop_idle_sessions()

    def _drop_idle_sessions(self) -> None:
        idle = [sid for sid, state in self._sessions.items() if state.idle()]
        for sid in idle:
            del self._sessions[sid]

    def forget_session(self, session_id: str, *, owner: str | None = None) -> None:
        """Drop a deleted session: end its run, close its subscriptions, forget its runs.

        With ``owner``, listeners then hear :class:`SessionDeleted` (the owner's other tabs
        drop the session).
        """
        state = self._sessions.pop(session_id, None)
        if state is not None:
            state.queue.clear()
            run = self._running.get(session_id)
            if run is not None:
                self._finish(run, reason="aborted")
            for sub in list(state.subscriptions):
                sub.close()
            for run in state.runs:
                if self._runs.get(run.run_id) is run:
                    del self._runs[run.run_id]
            state.runs.clear()
        if owner is not None:
            self._announce(SessionDeleted(owner, session_id))

    # Helpers ---------------------------------------------------------------------------

    def _state(self, session_id: str, owner: str) -> SessionState:
        state = self._sessions.get(session_id)
        if state is None:
            state = self._sessions[session_id] = SessionState(session_id, owner)
        return state

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    def _new_run_id(self) -> str:
        return self._run_ids.new(self._now_ms())


def _first_hole(
    events: list[Event], after: Position | None, memory: Position | None
) -> Position | None:
    """Where the log's ``events`` (read from ``after`` on), then memory from ``memory``,
    first skip something: the position delivery resumes at, or ``None`` when nothing is
    missing. Within a run seqs go up by one; a run is followed by the next one only after
    its ``complete``, and the next one starts at seq 1."""
    run_id, seq, ended = (after.run_id, after.seq, True) if after is not None else (None, 0, True)
    for event in events:
        if event.run_id == run_id:
            if event.seq != seq + 1:
                return event.position
        elif event.seq != 1 or not ended:
            return event.position
        run_id, seq, ended = event.run_id, event.seq, event.kind == COMPLETE
    if memory is not None:
        if memory.run_id == run_id:
            if memory.seq > seq + 1:
                return memory
        elif memory.seq != 1 or not ended:
            return memory
    return None


def _memory_start(first: Run) -> Run:
    """The run whose oldest buffered event starts what memory holds without a gap from
    ``first`` on: the newest later run whose buffer lost its start, else ``first``."""
    start = first
    run = first.next
    while run is not None:
        if run.buffer.first_seq > 1:
            start = run
        run = run.next
    return start
