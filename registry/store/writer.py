"""The group-commit writer: one task, one connection, batches of queued writes.

Publishing never waits for the disk. The store's write methods put an operation on an
in-memory queue and return; one writer task takes the queue in batches and commits each
batch in one transaction. A batch is written when ``batch_size`` operations are queued,
when its oldest operation has waited ``flush_delay``, or at once when someone waits for it
(a completed run, ``flush()``, a session change). A writer that fell behind takes up to
``max_batch`` operations in one commit (by default eight batches' worth), so a backlog
drains faster than it built up.

A commit that woke subscribers (see ``on_durable``) is followed by ``flush_delay`` before the
next, however long its queue waited (unless a full batch or a waiter is queued): their
delivery runs on the writer's event loop. When that loop is busy, a commit's end is seen
late, and without the pause the next commit would start at once, its wake-ups queue behind
the deliveries still running, and a round of deliveries would follow every commit of a few
events, keeping the loop saturated.

Operations keep their order: a batch writes its new runs, then its events, then provider
ids and run endings, all in one transaction, so a run row is always there before its
events and its end is never committed without them. Session changes (:class:`Call`) run
alone in their own transaction, in queue order, and their errors go to the caller. Log
writes never raise: a failed batch is rolled back, logged and retried with backoff; an
operation the database refuses outright (a constraint) is isolated, logged as an error and
skipped, and the rest of its batch is written.

All of that is this module's :class:`Writer`, whatever the database. What differs per
database is a small :class:`Backend`: how a transaction begins, how a batch's writes are
issued (in bulk, or one operation at a time), which errors blame the data, and any work
beside the writer (SQLite's WAL checkpoints). See ``sqlite_writer`` and ``postgres_writer``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol

import anyio
import msgspec

from ..events import UNENCODABLE, Event, stand_in
from ..hooks import OnDurable
from .errors import StoreError
from .records import StoreStats
from .sql import Tx
from .stretch import Burst, StoredRow, burst_of, pack

log = logging.getLogger("runwire.store")

# durable_seq of a run with nothing left to write: any seq it has is on disk.
ALL = 1 << 62
# Attempts per batch once close() has begun, before giving up on what is left.
_CLOSE_ATTEMPTS = 3
_MAX_BACKOFF = 2.0
# Failed attempts in a row after which impatient waiters are released with an error: the
# first retry comes 50 ms after the first failure, so a dropped connection that is made
# again at once costs them nothing, and a database that stays away does not hold them.
_IMPATIENT_AFTER = 2

EventRow = tuple[str, int, str, int, str]
"""An event as the log stores it: (run_id, seq, kind, ts, data as JSON text)."""


class RunStart(NamedTuple):
    """A run began (status ``running``)."""

    run_id: str
    session_id: str
    ord: int
    provider: str
    client_msg_id: str | None
    started_at: int


class RunEnd(NamedTuple):
    """A run completed; ``unread`` when nobody was subscribed to its session."""

    run_id: str
    session_id: str
    outcome: str | None
    exit_code: int | None
    error: str | None
    completed_at: int
    last_seq: int
    unread: bool


class ProviderId(NamedTuple):
    """A run announced the provider's own session id."""

    session_id: str
    run_id: str
    provider_session_id: str


LogOp = Event | RunStart | RunEnd | ProviderId


class Call:
    """A change someone awaits (a session edit): one transaction, its error to the caller.

    An impatient call is failed at once when the writer cannot reach the database, rather
    than run whenever it comes back; the writer then skips it.
    """

    __slots__ = ("_done", "_error", "_result", "fn", "impatient")

    def __init__(self, fn: Callable[[Tx], Awaitable[Any]], *, impatient: bool = False) -> None:
        self.fn = fn
        self.impatient = impatient
        self._done = anyio.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def resolve(self, result: Any) -> None:
        self._result = result
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> Any:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result


class Barrier:
    """``flush()``: released once everything queued before it is committed. An impatient
    one is released with ``error`` set when the writer cannot reach the database."""

    __slots__ = ("done", "error", "impatient")

    def __init__(self, *, impatient: bool = False) -> None:
        self.done = anyio.Event()
        self.impatient = impatient
        self.error: StoreError | None = None


Op = LogOp | Call | Barrier


class Plan:
    """A batch of log operations sorted by what they write, once, before writing."""

    __slots__ = (
        "_encode",
        "_rows",
        "ends",
        "events",
        "last_seq",
        "ops",
        "provider_ids",
        "starts",
        "stored",
    )

    def __init__(
        self,
        ops: list[Op],
        encode: Callable[[Event], str],
        bursts: dict[int, Burst] | None = None,
    ) -> None:
        self.ops = ops
        self.starts: list[RunStart] = []
        self.events: list[Event] = []
        self.provider_ids: list[ProviderId] = []
        self.ends: list[RunEnd] = []
        self.last_seq: dict[str, int] = {}
        self._encode = encode
        self._rows: list[EventRow] | None = None
        events, last_seq = self.events, self.last_seq
        for op in ops:
            if type(op) is Event:
                events.append(op)
                last_seq[op.run_id] = op.seq
            elif type(op) is RunStart:
                self.starts.append(op)
            elif type(op) is RunEnd:
                self.ends.append(op)
            elif type(op) is ProviderId:
                self.provider_ids.append(op)
        self.stored: list[StoredRow] | None = None
        """The events as stretches (see ``stretch``), for a writer that stores them; made
        now, so the batch's bursts are taken whichever way it is written."""
        if bursts is not None:
            self.stored = pack(events, encode, bursts)

    def rows(self) -> list[EventRow]:
        """Each event as a row of its own."""
        if self._rows is None:
            encode = self._encode
            self._rows = [(e.run_id, e.seq, e.kind, e.ts, encode(e)) for e in self.events]
        return self._rows


class Statements(NamedTuple):
    """A database's statements for the log operations, each taking the parameters below in
    this order (``?`` or ``$n``, whichever the database binds)."""

    session_stub: str
    """(session_id, provider, started_at, started_at): a session row for a new run's session,
    if it has none, else its ``updated_at`` moved on."""
    run: str
    """(run_id, session_id, ord, provider, client_msg_id, started_at)."""
    events: str
    """:data:`EventRow`."""
    session_provider_id: str
    """(provider_session_id, session_id)."""
    run_provider_id: str
    """(provider_session_id, run_id)."""
    end_run: str
    """(outcome, exit_code, error, completed_at, last_seq, run_id)."""
    end_session: str
    """(completed_at, unread, session_id)."""


def batch_writes(
    statements: Statements, plan: Plan, events: Sequence[tuple[Any, ...]]
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The statements of a batch, each with its rows of parameters, in the order they must
    be written: run starts, ``events`` (the batch's events as the database stores them),
    provider ids, run ends."""
    writes: list[tuple[str, list[tuple[Any, ...]]]] = []
    for ops in (plan.starts, None, plan.provider_ids, plan.ends):
        if ops is None:
            if events:
                writes.append((statements.events, list(events)))
            continue
        # Each operation of a kind writes the same statements: one executemany apiece.
        each = [op_writes(statements, op, None) for op in ops]
        if each:
            writes.extend(
                (statement, [writes_of[i][1] for writes_of in each])
                for i, (statement, _) in enumerate(each[0])
            )
    return writes


def op_writes(
    statements: Statements, op: LogOp, row: EventRow | None
) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements, with their parameters, that write one operation (an event's
    ``row`` given)."""
    if row is not None:
        return [(statements.events, row)]
    if isinstance(op, RunStart):
        return [
            (statements.session_stub, (op.session_id, op.provider, op.started_at, op.started_at)),
            (
                statements.run,
                (op.run_id, op.session_id, op.ord, op.provider, op.client_msg_id, op.started_at),
            ),
        ]
    if isinstance(op, ProviderId):
        return [
            (statements.session_provider_id, (op.provider_session_id, op.session_id)),
            (statements.run_provider_id, (op.provider_session_id, op.run_id)),
        ]
    if isinstance(op, RunEnd):
        return [
            (
                statements.end_run,
                (op.outcome, op.exit_code, op.error, op.completed_at, op.last_seq, op.run_id),
            ),
            (statements.end_session, (op.completed_at, op.unread, op.session_id)),
        ]
    return []


class Backend(Protocol):
    """One database connection as the writer uses it: only ever from the writer's task,
    one statement at a time."""

    name: str
    """What the messages name: a file path, or a URL without its password."""

    refused: tuple[type[Exception], ...]
    """Errors that blame one operation's data (a constraint, a value the database cannot
    store): that operation is isolated and skipped. Any other error says nothing about the
    data, and the batch is retried as it is."""

    stretches: bool
    """Whether a batch's events are written as stretches (:attr:`Plan.stored`) rather than
    a row each (:meth:`Plan.rows`)."""

    async def begin(self) -> Tx:
        """Begin a write transaction (connecting first, if the connection was lost); the
        handle a :class:`Call` is given."""
        ...

    async def execute(self, statement: str) -> None:
        """A statement without parameters: ``COMMIT``, ``SAVEPOINT op`` and the like."""
        ...

    async def commit(self, plan: Plan) -> None:
        """Every write of ``plan``, in bulk, in one transaction, committed (see the module
        docstring for the order)."""
        ...

    async def apply(self, op: LogOp, row: EventRow | None) -> None:
        """One operation in the open transaction; ``row`` is an event's stored form."""
        ...

    async def rollback(self) -> None:
        """End a failed transaction, if one is open. Never raises."""
        ...

    def committed(self, plan: Plan) -> None:
        """Called after each committed batch."""
        ...

    def start(self, stats: StoreStats) -> None:
        """Start any work beside the writer."""
        ...

    async def stop(self) -> None:
        """End that work; the writer has written its last."""
        ...


class Writer:
    """Owns the queue and the task that writes it through a :class:`Backend`.

    :meth:`start` creates the task; :meth:`stop` drains the queue and ends it. It is an
    asyncio task owned by this object rather than a task group child, because the store's
    lifetime spans tasks (a server lifespan, a test fixture: open and close run in
    different tasks, which a task group forbids) and both drivers are asyncio-only anyway.

    With ``impatient``, session changes fail with a :class:`StoreError` instead of waiting
    while the database cannot be reached (see :meth:`flush` for reads).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        flush_delay: float,
        batch_size: int,
        max_batch: int | None = None,
        impatient: bool = False,
    ) -> None:
        self._backend = backend
        self._path = backend.name
        self._flush_delay = flush_delay
        self._batch_size = batch_size
        self._impatient_calls = impatient
        # A writer that fell behind takes more at once: one commit for several batches'
        # worth saves a commit's round trip each (PostgreSQL). SQLite's commits are cheap
        # and its runs wait for them, so it passes a smaller bound (see SQLiteStore.open).
        self._max_batch = batch_size * 8 if max_batch is None else max_batch
        self.stats = StoreStats(self)
        self._queue: list[Op] = []
        # Calls and barriers in the queue: when none, a batch needs no scan for them.
        self._special = 0
        self._signal = anyio.Event()
        self._idle = False
        # How many operations at the head of the queue someone waits for: write them now.
        self._urgent = 0
        self._busy = False
        # time.monotonic() by which the oldest queued operation had arrived.
        self._since = 0.0
        # time.monotonic() when the last commit that woke subscribers ended.
        self._woke = 0.0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._queued_events = 0
        self._settled_events = 0
        # run_id -> highest seq committed, for runs with writes still to come. A run leaves
        # once its end is committed; from then on every seq it has is on disk.
        self._durable: dict[str, int] = {}
        # run_id -> highest seq before the first event the database refused (never cleared:
        # those events are not on disk, so the registry must keep them in memory).
        self._holes: dict[str, int] = {}
        self._encoder = msgspec.json.Encoder()
        # Bursts of queued events whose data is already their stretch's array, by the id of
        # their first event (kept alive by the entry); None when the backend has no use
        # for them. Taken out by the Plan of their batch, or when they are lost.
        self._bursts: dict[int, Burst] | None = {} if backend.stretches else None
        # Failed attempts in a row of the batch being written, and the last error.
        self._failures = 0
        self._failure = ""
        # Impatient calls and barriers in the queue, released when the database is away.
        self._impatient: set[Call | Barrier] = set()
        # Set to cut a retry's backoff short.
        self._retry_now = anyio.Event()
        # Told (run_id, seq) after each commit that made a run durable up to seq; it says
        # whether that woke anyone, and then the next commit waits (see the module's doc).
        self.on_durable: OnDurable | None = None

    # Lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="runwire-store-writer"
        )
        self._backend.start(self.stats)

    async def stop(self) -> None:
        """Write everything queued, then end the task. Completes even if cancelled."""
        task = self._task
        if task is None:
            return
        self._closing = True
        self._urge()
        with anyio.CancelScope(shield=True):
            await asyncio.wait([task])
            # The writer is done: nothing more to do beside it.
            await self._backend.stop()
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("the store's %s task failed", task.get_name(), exc_info=task.exception())

    # Queueing (synchronous, never blocks) ----------------------------------------------

    def put(self, op: LogOp) -> None:
        """Queue a log write. The hot path: an append and two checks."""
        queue = self._queue
        queue.append(op)
        if type(op) is Event:
            self._queued_events += 1
        if self._idle:
            self._wake()
        elif len(queue) == self._batch_size:
            self._signal.set()

    def put_many(self, events: list[Event]) -> None:
        """Queue several events (a burst): :meth:`put` for each, in one step.

        Their frames are encoded now rather than when their batch is written: a source is
        producing now while the database commits earlier events, whereas between two
        commits the database waits for whatever the writer still has to do. So is the data
        of a burst of ``text_delta`` as a stretch's array (see ``stretch``).
        """
        bursts = self._bursts
        if bursts is not None and events:
            for burst in burst_of(events, self._encoder):
                bursts[id(burst.first)] = burst
        for event in events:
            if event.wire is None:
                self._frame(event)
        queue = self._queue
        before = len(queue)
        queue.extend(events)
        self._queued_events += len(events)
        if self._idle:
            self._wake()
        elif before < self._batch_size <= len(queue):
            self._signal.set()

    def track(self, run_id: str) -> None:
        """Follow a new run's durable seq until its end is committed."""
        self._durable[run_id] = 0

    def urge(self) -> None:
        """Write what is queued now rather than after the delay."""
        self._urge()

    async def call(self, fn: Callable[[Tx], Awaitable[Any]]) -> Any:
        """Run ``fn`` in its own transaction after everything queued so far."""
        call = Call(fn, impatient=self._impatient_calls)
        self._put_special(call)
        return await call.wait()

    async def flush(self, *, impatient: bool = False) -> None:
        """Return once everything queued before the call is committed (or given up on).

        With ``impatient`` (a read that wants what was published, not an outage's worth of
        waiting), raise :class:`StoreError` instead while the database cannot be reached.
        """
        if self.settled:
            return
        barrier = Barrier(impatient=impatient)
        self._put_special(barrier)
        await barrier.done.wait()
        if barrier.error is not None:
            raise barrier.error

    def _put_special(self, op: Call | Barrier) -> None:
        if self._task is None or self._closing:
            raise StoreError(f"{self._path}: the store is closing")
        if op.impatient:
            self._impatient.add(op)
            if self._failures >= _IMPATIENT_AFTER:
                # Try the database now rather than after the backoff: the waiter gets its
                # answer (or the error) at once, and a database that is back serves it.
                self._retry_now.set()
        self._queue.append(op)
        self._special += 1
        self._urge()

    def _wake(self) -> None:
        self._idle = False
        self._since = time.monotonic()
        self._signal.set()

    def _urge(self) -> None:
        self._urgent = len(self._queue)
        if self._idle:
            self._wake()
        else:
            self._signal.set()

    # State -----------------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """Nothing queued and nothing being written."""
        return not self._queue and not self._busy

    @property
    def stretches(self) -> bool:
        """Whether the log may hold stretches (see ``stretch``): this backend writes them."""
        return self._backend.stretches

    @property
    def backlog(self) -> int:
        return self._queued_events - self._settled_events

    def durable_seq(self, run_id: str) -> int:
        seq = self._durable.get(run_id, ALL)
        hole = self._holes.get(run_id)
        return seq if hole is None else min(seq, hole)

    # The task --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._signal = anyio.Event()
                    self._idle = True
                    await self._signal.wait()
                    continue
                if not (self._urgent or self._closing or len(self._queue) >= self._batch_size):
                    delay = max(self._since, self._woke) + self._flush_delay - time.monotonic()
                    if delay > 0:
                        self._signal = anyio.Event()
                        with anyio.move_on_after(delay):
                            await self._signal.wait()
                        continue
                await self._step()
        finally:
            # Only reached with a non-empty queue if the task itself was cancelled: release
            # whoever waits, so nothing hangs on a writer that is gone.
            self._lose(self._take_all(), "the store's writer stopped")

    async def _step(self) -> None:
        """Take the next batch (or call, or barrier) off the queue and carry it out."""
        queue = self._queue
        head = queue[0]
        if isinstance(head, Barrier):
            self._pop_special()
            head.done.set()
            return
        if isinstance(head, Call):
            self._pop_special()
            if head.done:  # an impatient call already failed: its caller has moved on
                return
            self._busy = True
            try:
                await self._run_call(head)
            finally:
                self._busy = False
            return
        batch = self._take_batch()
        started = self._since
        self._since = time.monotonic()
        self._busy = True
        try:
            await self._write(Plan(batch, self._encode, self._bursts), started)
        except Exception:
            # A bug, not a database error (those are handled inside): keep the writer alive.
            log.exception("the store's writer failed on a batch of %d writes", len(batch))
            self._lose(batch, "internal error")
        finally:
            self._busy = False

    def _take_batch(self) -> list[Op]:
        queue = self._queue
        end = min(len(queue), self._max_batch)
        if self._special:
            for index in range(end):
                if isinstance(queue[index], Call | Barrier):
                    end = index
                    break
        self._urgent = max(0, self._urgent - end)
        if end == len(queue):
            self._queue = []
            return queue
        batch = queue[:end]
        del queue[:end]
        return batch

    def _pop_special(self) -> None:
        op = self._queue.pop(0)
        assert isinstance(op, Call | Barrier)
        self._impatient.discard(op)
        self._special -= 1
        self._urgent = max(0, self._urgent - 1)

    def _take_all(self) -> list[Op]:
        ops, self._queue = self._queue, []
        self._special = 0
        self._urgent = 0
        self._impatient.clear()
        return ops

    def _frame(self, event: Event) -> None:
        try:
            event.frame()
        except UNENCODABLE:
            self._encode(event)  # logs it and gives the event its stand-in

    def _encode(self, event: Event) -> str:
        try:
            return event.encoded_data()
        except UNENCODABLE as exc:
            # Keep the seq: an event the registry published must have a row, or replay has
            # a hole. Its data cannot be JSON, so record why instead.
            log.error(
                "event %s:%d of session %s has data that is not JSON (%s); stored without it",
                event.run_id,
                event.seq,
                event.session_id,
                exc,
            )
            # Subscribers get the same stand-in as the log, not an encoding error.
            text = self._encoder.encode(stand_in(event.data)).decode()
            event.data_json = text
            return text

    # Writing ---------------------------------------------------------------------------

    async def _write(self, plan: Plan, started: float) -> None:
        """Commit a batch, retrying transient failures; never raises a database error."""
        refused = self._backend.refused
        attempt = 0
        one_by_one = False
        while True:
            begin = time.monotonic()
            try:
                skipped = await (self._commit_each(plan) if one_by_one else self._commit(plan))
            except refused as exc:
                await self._backend.rollback()
                self.stats.write_errors += 1
                if not one_by_one:
                    # Something in the batch is refused outright: find it, write the rest.
                    log.warning(
                        "a batch for %s was refused (%s); writing it one by one", self._path, exc
                    )
                    one_by_one = True
                    continue
                error: Exception = exc
            except Exception as exc:
                await self._backend.rollback()
                self.stats.write_errors += 1
                error = exc
            else:
                break
            attempt += 1
            self._failed(error)
            if self._closing and attempt >= _CLOSE_ATTEMPTS:
                log.error("giving up writing to %s while closing: %s", self._path, error)
                self._lose(plan.ops, str(error))
                self._lose(self._take_all(), str(error))
                return
            backoff = min(0.05 * 2 ** (attempt - 1), _MAX_BACKOFF)
            log.warning(
                "writing %d operations to %s failed (%s); retrying in %.2fs",
                len(plan.ops),
                self._path,
                error,
                backoff,
            )
            self._retry_now = anyio.Event()
            with anyio.move_on_after(backoff):
                await self._retry_now.wait()
        now = time.monotonic()
        if self._failures:
            if self._failures >= _IMPATIENT_AFTER:
                log.warning("writing to %s works again", self._path)
            self._failures = 0
        self._committed(plan, skipped)
        stats = self.stats
        stats.flushes += 1
        stats.last_flush_ms = (now - begin) * 1000
        stats.flush_latency_ms.append((now - started) * 1000)

    async def _commit(self, plan: Plan) -> list[Op]:
        await self._backend.commit(plan)
        return []

    async def _commit_each(self, plan: Plan) -> list[Op]:
        """The batch in order, each write in a savepoint; returns the writes refused."""
        backend = self._backend
        skipped: list[Op] = []
        events = iter(plan.rows())
        await backend.begin()
        for op in plan.ops:
            await backend.execute("SAVEPOINT op")
            try:
                if type(op) is Event:
                    await backend.apply(op, next(events))
                elif isinstance(op, RunStart | RunEnd | ProviderId):
                    await backend.apply(op, None)
            except backend.refused as exc:
                await backend.execute("ROLLBACK TO op")
                log.error(
                    "%s for %s could not be written and is lost: %s", _describe(op), self._path, exc
                )
                skipped.append(op)
            await backend.execute("RELEASE op")
        await backend.execute("COMMIT")
        return skipped

    def _committed(self, plan: Plan, skipped: list[Op]) -> None:
        durable = self._durable
        holes = self._holes
        for op in skipped:
            if type(op) is Event:
                holes[op.run_id] = min(holes.get(op.run_id, op.seq - 1), op.seq - 1)
        for run_id, seq in plan.last_seq.items():
            if run_id in durable:
                durable[run_id] = seq
        for end in plan.ends:
            durable.pop(end.run_id, None)
        self._report_durable(plan.last_seq)
        count = len(plan.events)
        lost = sum(1 for op in skipped if type(op) is Event)
        self._backend.committed(plan)
        self._settled_events += count
        self.stats.events_written += count - lost
        self.stats.dropped += len(skipped)

    def _report_durable(self, committed: dict[str, int]) -> None:
        callback = self.on_durable
        if callback is None:
            return
        woke = False
        for run_id, seq in committed.items():
            try:
                woke = bool(callback(run_id, seq)) or woke
            except Exception:
                log.exception("the durable callback failed for run %s", run_id)
        if woke:
            self._woke = time.monotonic()

    async def _run_call(self, call: Call) -> None:
        backend = self._backend
        try:
            tx = await backend.begin()
            result = await call.fn(tx)
            await backend.execute("COMMIT")
        except Exception as exc:
            await backend.rollback()
            call.fail(exc)
        else:
            call.resolve(result)

    def _failed(self, error: Exception) -> None:
        """Count a failed attempt; past a few in a row, release the impatient waiters."""
        self._failures += 1
        self._failure = str(error)
        if self._failures < _IMPATIENT_AFTER or not self._impatient:
            return
        failure = self._unreachable()
        for op in self._impatient:
            if isinstance(op, Barrier):
                op.error = failure
                op.done.set()
            else:
                op.fail(failure)
        self._impatient.clear()

    def _unreachable(self) -> StoreError:
        return StoreError(
            f"{self._path}: the database cannot be written to now (writes are kept and "
            f"retried): {self._failure}"
        )

    def _lose(self, ops: list[Op], why: str) -> None:
        """Give up on ``ops``: log what is lost, mark the holes, release the waiters."""
        events = [op for op in ops if type(op) is Event]
        if events:
            log.error(
                "%d events were not written to %s and are lost (%s)", len(events), self._path, why
            )
        bursts = self._bursts or {}
        for event in events:
            seq = event.seq - 1
            self._holes[event.run_id] = min(self._holes.get(event.run_id, seq), seq)
            bursts.pop(id(event), None)
        self._settled_events += len(events)
        self.stats.dropped += len(ops)
        self._abandon(ops, why)

    def _abandon(self, ops: list[Op], why: str) -> None:
        for op in ops:
            if isinstance(op, Barrier):
                op.done.set()
            elif isinstance(op, Call) and not op.done:
                op.fail(StoreError(f"{self._path}: not written: {why}"))


def _describe(op: Op) -> str:
    if isinstance(op, Event):
        return f"event {op.run_id}:{op.seq} ({op.kind}) of session {op.session_id}"
    if isinstance(op, RunStart):
        return f"the start of run {op.run_id} of session {op.session_id}"
    if isinstance(op, RunEnd):
        return f"the end of run {op.run_id} of session {op.session_id}"
    if isinstance(op, ProviderId):
        return f"the provider session id of run {op.run_id}"
    return type(op).__name__
