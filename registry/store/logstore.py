"""The store's behaviour, whatever the database: :class:`LogStore`.

Everything a store does above the connection lives here once: the never-blocking write
side (queued to the group-commit :class:`~registry.store.writer.Writer`), history reads
and pages, the digest, the provider's conversation state, and the sessions. The queries
are the shared SQL of :mod:`registry.store.sql`. An engine's subclass
(:class:`~registry.store.SQLiteStore`, :class:`~registry.store.PostgresStore`) opens its
connections, gives the writer its backend, and says how a read reaches the database and
which of its errors mean what.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, Self, TypeVar

import anyio
import msgspec

from ..clock import Clock, to_ms
from ..errors import UnknownRun
from ..events import (
    COMPLETE,
    Event,
    ForkOrigin,
    Position,
    RunSummary,
    Turn,
    read_stored,
)
from ..hooks import OnDurable
from ..ids import new_session_id
from .digest import Digest, DigestCache, Limits
from .errors import StoreError
from .fork import ForkPoint, ForkRequest, write_fork
from .records import (
    SESSION_STATUSES,
    SessionCursor,
    SessionRecord,
    StoreStats,
    check_owner,
    check_title,
    run_summary,
    session_record,
    turns_of,
)
from .shared import SharedCalls
from .sql import Dialect, Params, Tx, marks
from .stretch import unpack
from .writer import ALL, ProviderId, RunEnd, RunStart, Writer

log = logging.getLogger("runwire.store")

T = TypeVar("T")

_SESSION_COLUMNS = """
    s.session_id, s.owner, s.title, s.provider, s.status, s.created_at, s.updated_at,
    s.unread_since IS NOT NULL,
    (SELECT r.run_id FROM runs r WHERE r.session_id = s.session_id AND r.status = 'running'
     ORDER BY r.ord DESC LIMIT 1),
    s.handoff, s.forked_from
"""
# Sessions after a cursor in the listing's order (newest activity, newest created, id).
_PAST_CURSOR = """
    AND (s.updated_at < :updated OR (s.updated_at = :updated
        AND (s.created_at < :created OR (s.created_at = :created AND s.session_id > :session))))
"""
_RUN_COLUMNS = """
    r.run_id, r.session_id, r.provider, r.status, r.started_at, r.completed_at,
    CASE WHEN r.status = 'running'
        THEN (SELECT COALESCE(MAX(e.seq), 0) FROM events e WHERE e.run_id = r.run_id)
        ELSE r.last_seq END,
    r.outcome
"""


def _history(sql: Dialect, columns: str) -> str:
    """A session's rows holding events from (lo ord, after lo seq) to (hi ord, before hi
    seq), in start order then seq. With runs_by_session unique, the nested loop yields that
    order: no sort. A row is a stretch of events (see ``stretch``) that may reach past
    either bound; the reader drops what does."""
    lo_seq, hi_seq, every = (sql.integer(name) for name in (":lo_seq", ":hi_seq", ":all"))
    return f"""
    SELECT {columns}
    FROM runs r CROSS JOIN events e
    WHERE r.session_id = :session AND r.ord >= :lo AND r.ord <= :hi AND e.run_id = r.run_id
        AND e.seq > (CASE WHEN r.ord = :lo THEN {lo_seq} ELSE 0 END)
        AND e.seq - e.span < (CASE WHEN r.ord = :hi THEN {hi_seq} ELSE {every} END) - 1
"""


_EVENT_COLUMNS = "r.ord, e.run_id, e.seq, e.kind, e.ts, e.data, e.span"
_SPAN_COLUMNS = "r.ord, e.seq, e.span"


class _Bounds(NamedTuple):
    """A history read's bounds: from after seq ``lo_seq`` of the run started ``lo``-th to
    before seq ``hi_seq`` of the run started ``hi``-th."""

    lo: int
    lo_seq: int
    hi: int
    hi_seq: int

    def seqs(self, ord_: int) -> tuple[int, int]:
        """The seqs of the run started ``ord_``-th that are in: those strictly between."""
        return (self.lo_seq if ord_ == self.lo else 0), (self.hi_seq if ord_ == self.hi else ALL)


_HISTORY_ORDER = " ORDER BY r.ord, e.seq"


class LogStore(ABC):
    """Durable sessions, runs and events; the registry's :class:`~registry.Persistence`.

    Open with an engine's ``open()`` and end with :meth:`close` (or ``async with``). The
    write side (``run_started``, ``append``, ``run_completed``, ``provider_session``) only
    queues and never raises; session changes are awaited and ordered after everything
    queued before them.
    """

    # The engine's SQL dialect.
    sql: ClassVar[Dialect]
    # The engine's errors: those a session change's constraint raises (the caller explains
    # them, e.g. a taken session id), and every error of the driver (a StoreError then).
    constraint_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    database_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, name: str, writer: Writer, clock: Clock, next_ord: int) -> None:
        self._name = name
        self._writer = writer
        self._clock = clock
        self._next_ord = next_ord
        # The last stamp _now() handed out, in ms.
        self._last_stamp = 0
        self._closed = False
        self._close_done = anyio.Event()
        self._refused = 0
        # run_id -> its complete event's data, from append() until run_completed().
        self._completes: dict[str, dict[str, Any]] = {}
        self._digests = DigestCache()
        self._history_reads: SharedCalls[
            tuple[str, Position | None, Position, int | None], list[Event] | None
        ] = SharedCalls()

    # The engine's part ------------------------------------------------------------------

    @abstractmethod
    async def _fetch(self, sql: str, params: Params) -> list[Any]:
        """Run a read; a database error becomes a :class:`StoreError`."""

    @abstractmethod
    async def _disconnect(self) -> None:
        """Close the connections; the writer has stopped."""

    async def _settle(self) -> None:
        """What a read that must see every published event waits for first."""
        await self.flush()

    def _error_text(self, exc: BaseException) -> str:
        """An error as a message may show it."""
        return str(exc)

    @abstractmethod
    async def max_ord(self) -> int:
        """The highest start order any run has (0 for none)."""

    # Lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        """Write everything queued, stop the writer and close the connections. Idempotent."""
        if self._closed:
            await self._close_done.wait()
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                await self._writer.stop()
            finally:
                await self._disconnect()
                self._close_done.set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def stats(self) -> StoreStats:
        """The writer's counters; ``stats.backlog`` is the events not yet committed."""
        return self._writer.stats

    async def flush(self) -> None:
        """Return once everything queued before this call is committed."""
        if self._closed:
            # Closing writes everything: wait for that instead.
            await self._close_done.wait()
        else:
            await self._writer.flush()

    # Persistence: the write side (synchronous, queue only, never raises) ----------------

    def run_started(
        self, run: RunSummary, *, client_msg_id: str | None, ord: int | None = None
    ) -> None:
        """Queue a new run, in start order: ``ord`` when given (allocated by whoever
        numbers starts across processes), else the next of this store's own."""
        if self._refuse("run start", run.run_id):
            return
        started_at = run.started_at if run.started_at is not None else self._now()
        if ord is None:
            ord = self._allocate_ords(1)
        else:
            self._next_ord = max(self._next_ord, ord)
        self._writer.track(run.run_id)
        self._writer.put(
            RunStart(
                run.run_id, run.session_id, ord, run.provider, client_msg_id or None, started_at
            )
        )

    def append(self, event: Event) -> None:
        """Queue an event for the log."""
        if self._closed:
            self._refuse("event", event.run_id)
            return
        if event.kind == COMPLETE:
            self._completes[event.run_id] = event.data
        self._writer.put(event)

    def append_many(self, events: list[Event]) -> None:
        """Queue several events of one run for the log, in seq order."""
        if not events:
            return
        if self._closed:
            self._refuse("event", events[0].run_id)
            return
        last = events[-1]
        if last.kind == COMPLETE:  # a complete ends its run: nothing follows it
            self._completes[last.run_id] = last.data
        self._writer.put_many(events)

    def run_completed(self, run: RunSummary, *, unread: bool) -> None:
        """Queue a run's outcome and write the batch now: someone may be waiting for it."""
        data = self._completes.pop(run.run_id, None) or {}
        if self._refuse("run end", run.run_id):
            return
        exit_code = data.get("exit_code")
        error = data.get("error")
        self._writer.put(
            RunEnd(
                run.run_id,
                run.session_id,
                run.outcome,
                exit_code
                if isinstance(exit_code, int) and not isinstance(exit_code, bool)
                else None,
                error if isinstance(error, str) else None,
                run.completed_at if run.completed_at is not None else self._now(),
                run.last_seq,
                bool(unread),
            )
        )
        self._writer.urge()

    def provider_session(self, session_id: str, run_id: str, provider_session_id: str) -> None:
        """Queue the provider's own session id for the session and the run. An empty id is
        ignored: it never wipes a stored one."""
        if not provider_session_id or not isinstance(provider_session_id, str):
            return
        if self._refuse("provider session id", run_id):
            return
        self._writer.put(ProviderId(session_id, run_id, provider_session_id))

    def durable_seq(self, run_id: str) -> int:
        """The highest seq of ``run_id`` committed. A run with nothing left to write (its
        end is committed) reports every seq as committed; one with events the database
        refused never gets past the first of them."""
        return self._writer.durable_seq(run_id)

    def urge(self) -> None:
        """Write what is queued now rather than after the batching delay."""
        self._writer.urge()

    def watch_durable(self, callback: OnDurable) -> bool:
        """Report each commit to ``callback(run_id, seq)``; the registry then delivers
        events only once they are on disk."""
        self._writer.on_durable = callback
        return True

    def _refuse(self, what: str, run_id: str) -> bool:
        if not self._closed:
            return False
        self._refused += 1
        if self._refused == 1 or self._refused % 1000 == 0:
            log.error("%s: the store is closed; %s of run %s not written", self._name, what, run_id)
        return True

    # Persistence: the read side ---------------------------------------------------------

    async def find_client_msg(self, session_id: str, client_msg_id: str) -> str | None:
        """The run a ``client_msg_id`` started in the session, if any (also across restarts).

        No flush: the registry holds a run in memory until its events are on disk, and its
        start row is written before them."""
        rows = await self._fetch(
            "SELECT run_id FROM runs WHERE session_id = :session AND client_msg_id = :msg",
            {"session": session_id, "msg": client_msg_id},
        )
        return str(rows[0][0]) if rows else None

    async def latest_run(self, session_id: str) -> RunSummary | None:
        """The session's most recently started run as stored."""
        await self._settle()
        rows = await self._fetch(
            f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.session_id = :session"
            " ORDER BY r.ord DESC LIMIT 1",
            {"session": session_id},
        )
        return run_summary(rows[0]) if rows else None

    async def get_run(self, run_id: str) -> RunSummary | None:
        """A run's summary as stored (``subscribers`` is 0: the store knows of none)."""
        await self._settle()
        rows = await self._fetch(
            f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.run_id = :run", {"run": run_id}
        )
        return run_summary(rows[0]) if rows else None

    async def read_history(
        self,
        session_id: str,
        after: Position | None,
        before: Position | None,
        limit: int | None = None,
    ) -> list[Event] | None:
        """The session's events strictly after ``after`` and strictly before ``before``, runs
        in start order then seq, the first ``limit`` of them (``None``: all); ``None`` when
        ``after`` is not a run of the session.

        ``after=None`` starts at the session's first run; ``before=None`` (or a run the log
        does not have) reads to the end. Flushes first, so every published event is here.

        Equal reads with a ``before`` at the same time are one read (see :mod:`.shared`):
        the events they are for were all published before ``before``, so before the first
        of them began. Their callers then share the list and its events, which must not
        be changed. A read to the end is never shared: a later one may see more.
        """
        if before is None:
            return await self._read_history(session_id, after, before, limit)
        key = (session_id, after, before, limit)
        return await self._history_reads.run(
            key, lambda: self._read_history(session_id, after, before, limit)
        )

    async def _read_history(
        self, session_id: str, after: Position | None, before: Position | None, limit: int | None
    ) -> list[Event] | None:
        await self._settle()
        bounds = await self._bounds(session_id, after, before)
        if bounds is None:
            return None
        return await self._history(session_id, bounds, limit=limit)

    async def history_page(
        self,
        session_id: str,
        *,
        after: Position | None,
        limit: int,
        kinds: Collection[str] | None = None,
    ) -> tuple[list[Event], Position | None]:
        """Up to ``limit`` events of the session after ``after`` (``None``: from the start),
        and the position to pass for the next page, or ``None`` when there is no more.

        ``kinds``, when given, keeps only events of those kinds (the next page's position
        is then the last event returned, so pages of one filter follow on).
        Raises :class:`~registry.errors.UnknownRun` when ``after`` is not a run of the session.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        await self._settle()
        bounds = await self._bounds(session_id, after, None)
        if bounds is None:
            assert after is not None
            raise UnknownRun(session_id, after.run_id)
        events = await self._history(session_id, bounds, limit=limit + 1, kinds=kinds)
        if len(events) > limit:
            del events[limit:]
            return events, events[-1].position
        return events, None

    async def _bounds(
        self, session_id: str, after: Position | None, before: Position | None
    ) -> _Bounds | None:
        """The (ord, seq) bounds of a history read; ``None`` when ``after`` is unknown."""
        names = [p.run_id for p in (after, before) if p is not None]
        found: dict[str, int] = {}
        if names:
            listed, params = marks("run", names)
            rows = await self._fetch(
                "SELECT run_id, ord FROM runs"
                f" WHERE session_id = :session AND run_id IN ({listed})",
                {"session": session_id, **params},
            )
            found = {str(run_id): int(ord_) for run_id, ord_ in rows}
        lo, lo_seq = -1, 0
        if after is not None:
            if after.run_id not in found:
                return None
            lo, lo_seq = found[after.run_id], after.seq
        hi, hi_seq = ALL, ALL
        if before is not None and before.run_id in found:
            hi, hi_seq = found[before.run_id], before.seq
        return _Bounds(lo, lo_seq, hi, hi_seq)

    async def _history(
        self,
        session_id: str,
        bounds: _Bounds,
        *,
        limit: int | None,
        kinds: Collection[str] | None = None,
    ) -> list[Event]:
        params: dict[str, object] = {"session": session_id, **bounds._asdict(), "all": ALL}
        where = ""
        if kinds is not None:
            # One bound parameter per kind: the SQL text holds only our own names.
            listed, named = marks("kind", kinds)
            params.update(named)
            where = f" AND e.kind IN ({listed})"
        sql = _history(self.sql, _EVENT_COLUMNS) + where + _HISTORY_ORDER
        if limit is not None:
            rows_limit = limit
            if self._writer.stretches:
                span_sql = _history(self.sql, _SPAN_COLUMNS) + where + _HISTORY_ORDER
                rows_limit = await self._rows_holding(span_sql, params, bounds, limit)
            if rows_limit == 0:
                return []
            sql += " LIMIT :limit"
            params["limit"] = rows_limit
        rows = await self._fetch(sql, params)
        # The stored text goes along: a replayed event's frame is built around it rather
        # than by encoding the decoded data again.
        events: list[Event] = []
        for ord_, run_id, last, kind, ts, stored, span in rows:
            if span == 1:
                # For a row of one event, the query's bounds are exact.
                data, text = read_stored(stored)
                events.append(Event(session_id, run_id, last, kind, ts, data, None, text))
                continue
            past, short = bounds.seqs(ord_)
            events.extend(
                Event(session_id, run_id, seq, kind, ts, data, None, text)
                for seq, data, text in unpack(last, span, stored)
                if past < seq < short
            )
        # Each row holds an event or more: a limit of rows read at least ``limit`` events.
        if limit is not None:
            del events[limit:]
        return events

    async def _rows_holding(
        self, sql: str, params: dict[str, object], bounds: _Bounds, limit: int
    ) -> int:
        """How many of the rows ``sql`` reads hold its first ``limit`` events within
        ``bounds``. Read by their keys and spans alone, so that a page of a log in
        stretches decodes at most a stretch more than the page, not ``limit`` rows' worth
        of stretches."""
        rows = await self._fetch(sql + " LIMIT :limit", {**params, "limit": limit})
        count = 0
        for taken, (ord_, last, span) in enumerate(rows, 1):
            past, short = bounds.seqs(ord_)
            count += max(0, min(last, short - 1) - max(last - span, past))
            if count >= limit:
                return taken
        return len(rows)

    async def digest(
        self,
        session_id: str,
        *,
        file_tools: Collection[str] = (),
        recent: int = 20,
        max_checkpoints: int = 100,
    ) -> Digest:
        """What the session's log says about it (see :mod:`registry.store.digest`):
        ``recent`` newest actions and errors, ``max_checkpoints`` newest checkpoints, and
        every ``tool_use`` of the ``file_tools`` with its result. Flushes first; completed
        runs are read once and then remembered."""
        await self._settle()
        limits = Limits(frozenset(file_tools), recent, max_checkpoints)
        return await self._digests.read(self._fetch, self.sql, session_id, limits)

    # providers.ConversationStore --------------------------------------------------------

    async def resume_id(self, session_id: str) -> str | None:
        """The provider session id the session's next run should resume: the session's,
        or else the one recorded by its latest finished run that has one."""
        await self._settle()
        rows = await self._fetch(
            """
            SELECT COALESCE(
                (SELECT provider_session_id FROM sessions WHERE session_id = :session),
                (SELECT provider_session_id FROM runs
                 WHERE session_id = :session AND status = 'completed'
                    AND provider_session_id IS NOT NULL
                 ORDER BY ord DESC LIMIT 1))
            """,
            {"session": session_id},
        )
        value = rows[0][0] if rows else None
        return str(value) if value else None

    async def fork_origin(self, session_id: str) -> ForkOrigin | None:
        """How a forked session's provider continues its source's conversation; ``None``
        for a session that is not a fork."""
        rows = await self._fetch(
            "SELECT fork_origin FROM sessions WHERE session_id = :session",
            {"session": session_id},
        )
        if not rows or rows[0][0] is None:
            return None
        origin = msgspec.json.decode(rows[0][0], type=dict[str, Any])
        resume_id, summary = origin.get("resume_id"), origin.get("summary")
        return ForkOrigin(
            resume_id if isinstance(resume_id, str) else None,
            int(origin.get("turns") or 0),
            summary if isinstance(summary, str) else None,
        )

    async def turns(self, session_id: str) -> list[Turn]:
        """The session's finished exchanges, oldest first: each run's user message, then its
        assistant text (its ``text`` events, or else its joined ``text_delta`` chunks)."""
        await self._settle()
        rows = await self._fetch(
            """
            SELECT e.run_id, e.kind, e.seq, e.span, e.data FROM runs r CROSS JOIN events e
            WHERE r.session_id = :session AND r.status = 'completed' AND e.run_id = r.run_id
                AND e.kind IN ('user_message', 'text', 'text_delta')
            ORDER BY r.ord, e.seq
            """,
            {"session": session_id},
        )
        return turns_of(
            (run_id, kind, data)
            for run_id, kind, last, span, stored in rows
            for _, data, _ in unpack(last, span, stored)
        )

    # Sessions ---------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        owner: str,
        provider: str,
        title: str | None = None,
        session_id: str | None = None,
    ) -> SessionRecord:
        """Create an ``active`` session. Raises ``ValueError`` when ``session_id`` is taken."""
        check_owner(owner)
        if not isinstance(provider, str):
            raise ValueError("provider must be a string")
        check_title(title)
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise ValueError("session_id must be a non-empty string")
        sid = session_id or new_session_id()
        now = self._now()

        try:
            await self._change(
                """
                INSERT INTO sessions (session_id, owner, provider, title, status, created_at,
                    updated_at)
                VALUES (:session, :owner, :provider, :title, 'active', :now, :now)
                """,
                {"session": sid, "owner": owner, "provider": provider, "title": title, "now": now},
            )
        except self.constraint_errors:
            raise ValueError(f"session {sid} already exists") from None
        return SessionRecord(sid, owner, title, provider, "active", now, now, False, None)

    async def get_session(self, session_id: str, *, owner: str) -> SessionRecord | None:
        """The session, or ``None`` when it does not exist or belongs to someone else."""
        check_owner(owner)
        await self._settle()
        rows = await self._fetch(
            f"SELECT {_SESSION_COLUMNS} FROM sessions s"
            " WHERE s.session_id = :session AND s.owner = :owner",
            {"session": session_id, "owner": owner},
        )
        return session_record(rows[0]) if rows else None

    async def list_sessions(
        self, *, owner: str, after: SessionCursor | None = None, limit: int | None = None
    ) -> list[SessionRecord]:
        """The owner's sessions, most recent activity first: those past ``after`` (where an
        earlier page ended), ``limit`` at most (``None``: all).

        Pages follow the sort key, not positions, so a session created or deleted meanwhile
        shifts nothing. A session with activity after ``after`` was read moves ahead of it
        and is not listed again: the pushed ``run_started`` says so instead.
        """
        check_owner(owner)
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        await self._settle()
        params: dict[str, Any] = {"owner": owner}
        sql = f"SELECT {_SESSION_COLUMNS} FROM sessions s WHERE s.owner = :owner"
        if after is not None:
            sql += _PAST_CURSOR
            params |= {
                "updated": after.updated_at,
                "created": after.created_at,
                "session": after.session_id,
            }
        sql += " ORDER BY s.updated_at DESC, s.created_at DESC, s.session_id"
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = limit
        rows = await self._fetch(sql, params)
        return [session_record(row) for row in rows]

    async def update_session(
        self,
        session_id: str,
        *,
        owner: str,
        title: str | None = None,
        status: str | None = None,
    ) -> SessionRecord | None:
        """Change the title and/or status; ``None`` when the session is not the owner's.

        Raises ``ValueError`` for a status other than active, locked or archived.
        """
        check_owner(owner)
        check_title(title)
        if status is not None and status not in SESSION_STATUSES:
            raise ValueError(f"status must be one of {', '.join(SESSION_STATUSES)}, not {status!r}")
        if title is not None or status is not None:
            await self._change(
                f"""
                UPDATE sessions SET title = COALESCE(:title, title),
                    status = COALESCE(:status, status),
                    updated_at = {self.sql.greatest("updated_at", ":now")}
                WHERE session_id = :session AND owner = :owner
                """,
                {
                    "title": title,
                    "status": status,
                    "now": self._now(),
                    "session": session_id,
                    "owner": owner,
                },
            )
        return await self.get_session(session_id, owner=owner)

    async def set_handoff(
        self, session_id: str, *, owner: str, handoff: dict[str, Any]
    ) -> SessionRecord | None:
        """Store the session's handoff notes (replacing earlier ones); ``None`` when the
        session is not the owner's."""
        check_owner(owner)
        await self._change(
            f"""
            UPDATE sessions SET handoff = :handoff,
                updated_at = {self.sql.greatest("updated_at", ":now")}
            WHERE session_id = :session AND owner = :owner
            """,
            {
                "handoff": msgspec.json.encode(handoff).decode(),
                "now": self._now(),
                "session": session_id,
                "owner": owner,
            },
        )
        return await self.get_session(session_id, owner=owner)

    async def fork_session(
        self,
        session_id: str,
        *,
        owner: str,
        at: ForkPoint | None = None,
        title: str | None = None,
    ) -> SessionRecord | None:
        """A new session of the same owner and provider whose log is a copy of this one's up
        to ``at`` (its last event copied; ``None``: the end, as far as it has gone), with
        the same handoff notes. ``None`` when the session is not the owner's; raises
        :class:`~registry.store.fork.BadForkPoint` for a position not in it.

        See :mod:`registry.store.fork` for what is copied; the new session's
        :meth:`fork_origin` says how its provider continues (without a summary until
        :meth:`set_fork_summary`). ``title`` defaults to the source's, marked ``(fork)``.
        """
        check_owner(owner)
        check_title(title)
        request = ForkRequest(session_id, owner, new_session_id(), title, at, self._now())

        async def fork(tx: Tx) -> bool:
            return await write_fork(tx, request, allocate_ords=self._fork_ords())

        if not await self._call(fork):
            return None
        return await self.get_session(request.new_id, owner=owner)

    def _fork_ords(self) -> Callable[[int], int] | None:
        """How a fork numbers its copied runs: ``allocate(n)`` reserving ``n`` start orders
        and returning the first, or ``None`` to keep the source runs' own."""
        return self._allocate_ords

    async def set_fork_summary(self, session_id: str, summary: str) -> None:
        """Store the summary a forked session's provider starts from when it cannot resume."""
        origin = self.sql.json_set("fork_origin", "summary", ":summary")
        await self._change(
            f"""
            UPDATE sessions SET fork_origin = {origin}
            WHERE session_id = :session AND fork_origin IS NOT NULL
            """,
            {"summary": summary, "session": session_id},
        )

    async def delete_session(self, session_id: str, *, owner: str) -> bool:
        """Delete the session with its runs and events; ``False`` when it is not the owner's."""
        check_owner(owner)
        deleted = await self._change(
            "DELETE FROM sessions WHERE session_id = :session AND owner = :owner",
            {"session": session_id, "owner": owner},
        )
        self._digests.forget(session_id)
        return deleted > 0

    async def mark_read(self, session_id: str, *, owner: str) -> bool:
        """Clear the session's unread mark; ``False`` when it is not the owner's."""
        check_owner(owner)
        changed = await self._change(
            "UPDATE sessions SET unread_since = NULL"
            " WHERE session_id = :session AND owner = :owner",
            {"session": session_id, "owner": owner},
        )
        return changed > 0

    # Helpers ----------------------------------------------------------------------------

    def _allocate_ords(self, count: int) -> int:
        """Reserve ``count`` start-order numbers; the first of them."""
        first = self._next_ord + 1
        self._next_ord += count
        return first

    def _now(self) -> int:
        """The clock in ms, but always after the stamp before: by 1 ms when the clock has
        not moved on (as ``RunIds`` does for run ids). Sessions made in one millisecond, as
        a script makes them, then still list newest first in the order they were made,
        rather than in the order of their random ids."""
        self._last_stamp = max(to_ms(self._clock.now()), self._last_stamp + 1)
        return self._last_stamp

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self._name}: the store is closed")

    async def _change(self, sql: str, params: Params) -> int:
        """One statement as a session change (see :meth:`_call`); the rows it changed."""

        async def change(tx: Tx) -> int:
            return await tx.execute(sql, params)

        return await self._call(change)

    async def _call(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """Run a session change in the writer's queue. A constraint error is the caller's
        to explain; any other database error becomes a StoreError."""
        self._check_open()
        try:
            result: T = await self._writer.call(fn)
        except self.constraint_errors:
            raise
        except self.database_errors as exc:
            raise StoreError(f"{self._name}: writing failed: {self._error_text(exc)}") from exc
        return result
