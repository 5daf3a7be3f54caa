"""The group-commit writer: one task, one connection, batches of queued writes.

Publishing never waits for the disk. The store's write methods put an operation on an
in-memory queue and return; one writer task takes the queue in batches and commits each
batch in one transaction. A batch is written when ``batch_size`` operations are queued,
when its oldest operation has waited ``flush_delay``, or at once when someone waits for it
(a completed run, ``flush()``, a session change). A writer that fell behind takes up to
eight batches' worth in one commit, so a backlog drains faster than it built up.

Operations keep their order: a batch writes its new runs, then its events (one
``executemany``), then provider ids and run endings, all in one transaction, so a run row is
always there before its events and its end is never committed without them. Session changes
(:class:`Call`) run alone in their own transaction, in queue order, and their errors go to
the caller. Log writes never raise: a failed batch is rolled back, logged and retried with
backoff; an operation the database refuses outright (a constraint) is isolated, logged as an
error and skipped, and the rest of its batch is written.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import aiosqlite
import anyio
import msgspec

from ..events import Event
from .errors import StoreError
from .records import StoreStats

log = logging.getLogger("runwire.store")

# durable_seq of a run with nothing left to write: any seq it has is on disk.
ALL = 1 << 62
# Errors that blame one operation's data (a constraint, a value SQLite cannot bind): that
# operation is isolated and skipped. Any other error (locked, busy, I/O, full disk, a
# damaged page) says nothing about the data: the batch is retried as it is.
_REFUSED = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    TypeError,
    ValueError,
    OverflowError,
)
# Attempts per batch once close() has begun, before giving up on what is left.
_CLOSE_ATTEMPTS = 3
_MAX_BACKOFF = 2.0
# Pages (roughly) committed before the background checkpoint runs: ~1 MB of WAL.
_CHECKPOINT_PAGES = 256

INSERT_SESSION_STUB = """
    INSERT INTO sessions (session_id, owner, provider, created_at, updated_at)
    VALUES (?, '', ?, ?, ?)
    ON CONFLICT (session_id) DO UPDATE SET updated_at = MAX(updated_at, excluded.updated_at)
"""
INSERT_RUN = """
    INSERT INTO runs (run_id, session_id, ord, provider, status, client_msg_id, started_at)
    VALUES (?, ?, ?, ?, 'running', ?, ?)
"""
INSERT_EVENT = "INSERT INTO events (run_id, seq, kind, ts, data) VALUES (?, ?, ?, ?, ?)"
SET_SESSION_PROVIDER_ID = "UPDATE sessions SET provider_session_id = ? WHERE session_id = ?"
SET_RUN_PROVIDER_ID = "UPDATE runs SET provider_session_id = ? WHERE run_id = ?"
END_RUN = """
    UPDATE runs SET status = 'completed', outcome = ?, exit_code = ?, error = ?,
        completed_at = ?, last_seq = MAX(last_seq, ?)
    WHERE run_id = ?
"""
END_RUN_SESSION = """
    UPDATE sessions SET updated_at = MAX(updated_at, ?1),
        unread_since = CASE WHEN ?2 THEN COALESCE(unread_since, ?1) ELSE unread_since END
    WHERE session_id = ?3
"""


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
    """A change someone awaits (a session edit): one transaction, its error to the caller."""

    __slots__ = ("_done", "_error", "_result", "fn")

    def __init__(self, fn: Callable[[aiosqlite.Connection], Awaitable[Any]]) -> None:
        self.fn = fn
        self._done = anyio.Event()
        self._result: Any = None
        self._error: BaseException | None = None

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
    """``flush()``: released once everything queued before it is committed."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = anyio.Event()


Op = LogOp | Call | Barrier


class _Plan:
    """A batch of log operations turned into statement parameters, once, before writing."""

    __slots__ = ("ends", "events", "last_seq", "ops", "provider_ids", "starts")

    def __init__(self, ops: list[Op], encode: Callable[[Event], str]) -> None:
        self.ops = ops
        self.starts: list[RunStart] = []
        self.events: list[tuple[str, int, str, int, str]] = []
        self.provider_ids: list[ProviderId] = []
        self.ends: list[RunEnd] = []
        self.last_seq: dict[str, int] = {}
        events, last_seq = self.events, self.last_seq
        for op in ops:
            if type(op) is Event:
                events.append((op.run_id, op.seq, op.kind, op.ts, encode(op)))
                last_seq[op.run_id] = op.seq
            elif type(op) is RunStart:
                self.starts.append(op)
            elif type(op) is RunEnd:
                self.ends.append(op)
            elif type(op) is ProviderId:
                self.provider_ids.append(op)


class Writer:
    """Owns the write connection and the task that uses it, plus a checkpoint connection
    and its task.

    :meth:`start` creates both tasks; :meth:`stop` drains the queue and ends them. They are
    asyncio tasks owned by this object rather than task group children, because the
    store's lifetime spans tasks (a server lifespan, a test fixture: open and close run in
    different tasks, which a task group forbids) and aiosqlite is asyncio-only anyway.
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        checkpointer: aiosqlite.Connection,
        path: str,
        *,
        flush_delay: float,
        batch_size: int,
    ) -> None:
        self._db = db
        self._checkpointer = checkpointer
        self._checkpoint_wanted = anyio.Event()
        self._pages = 0
        self._writer_done = False
        self._path = path
        self._flush_delay = flush_delay
        self._batch_size = batch_size
        # A writer that fell behind takes more at once: one commit for several batches'
        # worth is much cheaper than several (each commit rewrites every page it touched).
        self._max_batch = batch_size * 8
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
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._queued_events = 0
        self._settled_events = 0
        # run_id -> highest seq committed, for runs with writes still to come. A run leaves
        # once its end is committed; from then on every seq it has is on disk.
        self._durable: dict[str, int] = {}
        # run_id -> highest seq before the first event the database refused (never cleared:
        # those events are not on disk, so the registry must keep them in memory).
        self._holes: dict[str, int] = {}
        self._encoder = msgspec.json.Encoder()
        # Told (run_id, seq) after each commit that made a run durable up to seq.
        self.on_durable: Callable[[str, int], None] | None = None

    # Lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="runwire-store-writer")
        self._checkpoint_task = loop.create_task(
            self._checkpoint_forever(), name="runwire-store-checkpoint"
        )

    async def stop(self) -> None:
        """Write everything queued, then end the tasks. Completes even if cancelled."""
        tasks = [t for t in (self._task, self._checkpoint_task) if t is not None]
        if not tasks:
            return
        self._closing = True
        self._urge()
        with anyio.CancelScope(shield=True):
            await asyncio.wait(tasks[:1])
            # The writer is done: nothing more to checkpoint.
            self._writer_done = True
            self._checkpoint_wanted.set()
            await asyncio.wait(tasks)
        self._task = self._checkpoint_task = None
        for task in tasks:
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

    def track(self, run_id: str) -> None:
        """Follow a new run's durable seq until its end is committed."""
        self._durable[run_id] = 0

    def urge(self) -> None:
        """Write what is queued now rather than after the delay."""
        self._urge()

    async def call(self, fn: Callable[[aiosqlite.Connection], Awaitable[Any]]) -> Any:
        """Run ``fn`` in its own transaction after everything queued so far."""
        call = Call(fn)
        self._put_special(call)
        return await call.wait()

    async def flush(self) -> None:
        """Return once everything queued before the call is committed (or given up on)."""
        if self.settled:
            return
        barrier = Barrier()
        self._put_special(barrier)
        await barrier.done.wait()

    def _put_special(self, op: Call | Barrier) -> None:
        if self._task is None or self._closing:
            raise StoreError(f"{self._path}: the store is closing")
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
                    delay = self._since + self._flush_delay - time.monotonic()
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
            await self._write(_Plan(batch, self._encode), started)
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
        del self._queue[0]
        self._special -= 1
        self._urgent = max(0, self._urgent - 1)

    def _take_all(self) -> list[Op]:
        ops, self._queue = self._queue, []
        self._special = 0
        self._urgent = 0
        return ops

    def _encode(self, event: Event) -> str:
        try:
            return event.encoded_data()
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
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
            text = self._encoder.encode({"unencodable": repr(event.data)[:1000]}).decode()
            event.data_json = text
            return text

    # Writing ---------------------------------------------------------------------------

    async def _write(self, plan: _Plan, started: float) -> None:
        """Commit a batch, retrying transient failures; never raises a database error."""
        attempt = 0
        one_by_one = False
        while True:
            begin = time.monotonic()
            try:
                skipped = await (self._commit_each(plan) if one_by_one else self._commit(plan))
            except _REFUSED as exc:
                await self._rollback()
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
                await self._rollback()
                self.stats.write_errors += 1
                error = exc
            else:
                break
            attempt += 1
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
            await anyio.sleep(backoff)
        now = time.monotonic()
        self._committed(plan, skipped)
        stats = self.stats
        stats.flushes += 1
        stats.last_flush_ms = (now - begin) * 1000
        stats.flush_latency_ms.append((now - started) * 1000)

    async def _commit(self, plan: _Plan) -> list[Op]:
        db = self._db
        await db.execute("BEGIN IMMEDIATE")
        if plan.starts:
            await db.executemany(
                INSERT_SESSION_STUB,
                [(s.session_id, s.provider, s.started_at, s.started_at) for s in plan.starts],
            )
            await db.executemany(
                INSERT_RUN,
                [
                    (s.run_id, s.session_id, s.ord, s.provider, s.client_msg_id, s.started_at)
                    for s in plan.starts
                ],
            )
        if plan.events:
            await db.executemany(INSERT_EVENT, plan.events)
        if plan.provider_ids:
            await db.executemany(
                SET_SESSION_PROVIDER_ID,
                [(p.provider_session_id, p.session_id) for p in plan.provider_ids],
            )
            await db.executemany(
                SET_RUN_PROVIDER_ID, [(p.provider_session_id, p.run_id) for p in plan.provider_ids]
            )
        if plan.ends:
            await db.executemany(
                END_RUN,
                [
                    (e.outcome, e.exit_code, e.error, e.completed_at, e.last_seq, e.run_id)
                    for e in plan.ends
                ],
            )
            await db.executemany(
                END_RUN_SESSION, [(e.completed_at, e.unread, e.session_id) for e in plan.ends]
            )
        await db.execute("COMMIT")
        return []

    async def _commit_each(self, plan: _Plan) -> list[Op]:
        """The batch in order, each write in a savepoint; returns the writes refused."""
        db = self._db
        skipped: list[Op] = []
        events = iter(plan.events)
        await db.execute("BEGIN IMMEDIATE")
        for op in plan.ops:
            await db.execute("SAVEPOINT op")
            try:
                if type(op) is Event:
                    await db.execute(INSERT_EVENT, next(events))
                else:
                    await self._apply(op)
            except _REFUSED as exc:
                await db.execute("ROLLBACK TO op")
                log.error(
                    "%s for %s could not be written and is lost: %s", _describe(op), self._path, exc
                )
                skipped.append(op)
            await db.execute("RELEASE op")
        await db.execute("COMMIT")
        return skipped

    async def _apply(self, op: Op) -> None:
        db = self._db
        if isinstance(op, RunStart):
            await db.execute(
                INSERT_SESSION_STUB, (op.session_id, op.provider, op.started_at, op.started_at)
            )
            await db.execute(
                INSERT_RUN,
                (op.run_id, op.session_id, op.ord, op.provider, op.client_msg_id, op.started_at),
            )
        elif isinstance(op, ProviderId):
            await db.execute(SET_SESSION_PROVIDER_ID, (op.provider_session_id, op.session_id))
            await db.execute(SET_RUN_PROVIDER_ID, (op.provider_session_id, op.run_id))
        elif isinstance(op, RunEnd):
            await db.execute(
                END_RUN,
                (op.outcome, op.exit_code, op.error, op.completed_at, op.last_seq, op.run_id),
            )
            await db.execute(END_RUN_SESSION, (op.completed_at, op.unread, op.session_id))

    def _committed(self, plan: _Plan, skipped: list[Op]) -> None:
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
        # Each run written to dirties at least its leaf page; rows fill ~40 to a page.
        self._pages += len(plan.last_seq) + count // 40 + len(plan.ops) - count + 2
        if self._pages >= _CHECKPOINT_PAGES:
            self._pages = 0
            self._checkpoint_wanted.set()
        self._settled_events += count
        self.stats.events_written += count - lost
        self.stats.dropped += len(skipped)

    def _report_durable(self, committed: dict[str, int]) -> None:
        callback = self.on_durable
        if callback is None:
            return
        for run_id, seq in committed.items():
            try:
                callback(run_id, seq)
            except Exception:
                log.exception("the durable callback failed for run %s", run_id)

    async def _checkpoint_forever(self) -> None:
        """Copy the WAL back into the database beside the writer, not inside its commits.

        A PASSIVE checkpoint on its own connection blocks neither the writer nor readers,
        so a commit never pays for the copy and its fsync (tens of ms). The writer's own
        auto-checkpoint stays on at a high mark as a backstop that bounds the WAL.
        """
        while True:
            await self._checkpoint_wanted.wait()
            self._checkpoint_wanted = anyio.Event()
            if self._writer_done:
                return
            try:
                await self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self.stats.checkpoints += 1
            except sqlite3.Error as exc:
                log.warning("checkpointing %s failed: %s", self._path, exc)

    async def _run_call(self, call: Call) -> None:
        db = self._db
        try:
            await db.execute("BEGIN IMMEDIATE")
            result = await call.fn(db)
            await db.execute("COMMIT")
        except Exception as exc:
            await self._rollback()
            call.fail(exc)
        else:
            call.resolve(result)

    async def _rollback(self) -> None:
        if not self._db.in_transaction:
            return
        try:
            await self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("rolling back a failed write to %s failed: %s", self._path, exc)

    def _lose(self, ops: list[Op], why: str) -> None:
        """Give up on ``ops``: log what is lost, mark the holes, release the waiters."""
        events = [op for op in ops if type(op) is Event]
        if events:
            log.error(
                "%d events were not written to %s and are lost (%s)", len(events), self._path, why
            )
        for event in events:
            seq = event.seq - 1
            self._holes[event.run_id] = min(self._holes.get(event.run_id, seq), seq)
        self._settled_events += len(events)
        self.stats.dropped += len(ops)
        self._abandon(ops, why)

    def _abandon(self, ops: list[Op], why: str) -> None:
        for op in ops:
            if isinstance(op, Barrier):
                op.done.set()
            elif isinstance(op, Call):
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
