"""The SQLite store: sessions, runs and the append-only event log in one file.

Writes go through the group-commit :class:`~registry.store.writer.Writer` (one connection,
one task); reads use a second connection, which WAL lets run beside the writer, and a third
copies the WAL back into the file in the background. Every read that must see what was just
published flushes the writer first. One server process per file: opening ends the runs the
file says are running.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import aiosqlite
import anyio
import msgspec

from ..clock import Clock, SystemClock, to_ms
from ..errors import UnknownRun
from ..events import (
    COMPLETE,
    Event,
    ForkOrigin,
    Outcome,
    Position,
    RunStatus,
    RunSummary,
    Turn,
    complete_data,
)
from ..ids import new_session_id
from .digest import Digest, DigestCache, Limits
from .errors import StoreError
from .fork import ForkPoint, ForkRequest, write_fork
from .records import SESSION_STATUSES, SessionRecord, SessionStatus, StoreStats
from .schema import NewerSchema, migrate
from .writer import ALL, INSERT_EVENT, ProviderId, RunEnd, RunStart, Writer

log = logging.getLogger("runwire.store")

DEFAULT_PATH = "runwire.db"

_SESSION_COLUMNS = """
    s.session_id, s.owner, s.title, s.provider, s.status, s.created_at, s.updated_at,
    s.unread_since IS NOT NULL,
    (SELECT r.run_id FROM runs r WHERE r.session_id = s.session_id AND r.status = 'running'
     ORDER BY r.ord DESC LIMIT 1),
    s.handoff, s.forked_from
"""
_RUN_COLUMNS = """
    r.run_id, r.session_id, r.provider, r.status, r.started_at, r.completed_at,
    CASE WHEN r.status = 'running'
        THEN (SELECT COALESCE(MAX(e.seq), 0) FROM events e WHERE e.run_id = r.run_id)
        ELSE r.last_seq END,
    r.outcome
"""
# A session's events from (lo ord, after lo seq) to (hi ord, before hi seq), in start order
# then seq. With runs_by_session unique, the nested loop yields that order: no sort.
_HISTORY = """
    SELECT e.run_id, e.seq, e.kind, e.ts, e.data
    FROM runs r CROSS JOIN events e
    WHERE r.session_id = :session AND r.ord >= :lo AND r.ord <= :hi AND e.run_id = r.run_id
        AND e.seq > (CASE WHEN r.ord = :lo THEN :lo_seq ELSE 0 END)
        AND e.seq < (CASE WHEN r.ord = :hi THEN :hi_seq ELSE :all END)
"""
_HISTORY_ORDER = " ORDER BY r.ord, e.seq"


class SQLiteStore:
    """Durable sessions, runs and events; the registry's :class:`~registry.Persistence`.

    Open with :meth:`open` and end with :meth:`close` (or ``async with``). The write side
    (``run_started``, ``append``, ``run_completed``, ``provider_session``) only queues and
    never raises; session changes are awaited and ordered after everything queued before
    them.
    """

    def __init__(
        self,
        path: str,
        connections: tuple[aiosqlite.Connection, ...],
        reader_db: aiosqlite.Connection,
        writer: Writer,
        clock: Clock,
        next_ord: int,
    ) -> None:
        # Use open(): it migrates, recovers and starts the writer.
        self.path = path
        self._connections = connections
        self._reader = reader_db
        self._writer = writer
        self._clock = clock
        self._next_ord = next_ord
        self._closed = False
        self._close_done = anyio.Event()
        self._refused = 0
        # run_id -> its complete event's data, from append() until run_completed().
        self._completes: dict[str, dict[str, Any]] = {}
        self._decoder = msgspec.json.Decoder(dict[str, Any])
        self._digests = DigestCache()

    # Lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        clock: Clock | None = None,
        flush_delay: float = 0.02,
        batch_size: int = 1000,
        busy_timeout: float = 5.0,
    ) -> SQLiteStore:
        """Open (or create) the database at ``path``: migrate it, end the runs a crash left
        running, and start the writer. Raises :class:`StoreError` naming the path when the
        file cannot be used."""
        if flush_delay < 0:
            raise ValueError("flush_delay must not be negative")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if busy_timeout < 0:
            raise ValueError("busy_timeout must not be negative")
        name = os.fspath(path)
        _check_path(name)
        clock = clock if clock is not None else SystemClock()
        writer_db = await _connect(name, busy_timeout)
        others: list[aiosqlite.Connection] = []
        try:
            await _setup_writer(writer_db, name)
            recovered = await _recover(writer_db, to_ms(clock.now()))
            next_ord = await _max_ord(writer_db)
            reader_db = await _connect(name, busy_timeout)
            others.append(reader_db)
            await reader_db.execute("PRAGMA query_only = ON")
            checkpoint_db = await _connect(name, busy_timeout)
            others.append(checkpoint_db)
        except BaseException as exc:
            for db in (writer_db, *others):
                await db.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{name}: cannot open the database: {exc}") from exc
            raise
        writer = Writer(
            writer_db, checkpoint_db, name, flush_delay=flush_delay, batch_size=batch_size
        )
        writer.stats.recovered_runs = recovered
        store = cls(name, (writer_db, *others), reader_db, writer, clock, next_ord)
        writer.start()
        if recovered:
            log.warning("%s: ended %d runs left running by a crash", name, recovered)
        return store

    async def close(self) -> None:
        """Write everything queued, stop the writer and close the file. Idempotent."""
        if self._closed:
            await self._close_done.wait()
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                await self._writer.stop()
            finally:
                # The writer's connection goes last: closing the last connection folds the
                # WAL back into the file.
                for db in reversed(self._connections):
                    await db.close()
                self._close_done.set()

    async def __aenter__(self) -> SQLiteStore:
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

    def run_started(self, run: RunSummary, *, client_msg_id: str | None) -> None:
        """Queue a new run, in start order."""
        if self._refuse("run start", run.run_id):
            return
        started_at = run.started_at if run.started_at is not None else self._now()
        self._writer.track(run.run_id)
        self._writer.put(
            RunStart(
                run.run_id,
                run.session_id,
                self._allocate_ords(1),
                run.provider,
                client_msg_id or None,
                started_at,
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

    def watch_durable(self, callback: Callable[[str, int], None]) -> bool:
        """Report each commit to ``callback(run_id, seq)``; the registry then delivers
        events only once they are on disk."""
        self._writer.on_durable = callback
        return True

    def _refuse(self, what: str, run_id: str) -> bool:
        if not self._closed:
            return False
        self._refused += 1
        if self._refused == 1 or self._refused % 1000 == 0:
            log.error("%s: the store is closed; %s of run %s not written", self.path, what, run_id)
        return True

    # Persistence: the read side ---------------------------------------------------------

    async def find_client_msg(self, session_id: str, client_msg_id: str) -> str | None:
        """The run a ``client_msg_id`` started in the session, if any (also across restarts).

        No flush: the registry holds a run in memory until its events are on disk, and its
        start row is written before them."""
        rows = await self._fetch(
            "SELECT run_id FROM runs WHERE session_id = ? AND client_msg_id = ?",
            (session_id, client_msg_id),
        )
        return str(rows[0][0]) if rows else None

    async def latest_run(self, session_id: str) -> RunSummary | None:
        """The session's most recently started run as stored."""
        await self.flush()
        rows = await self._fetch(
            f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.session_id = ? ORDER BY r.ord DESC LIMIT 1",
            (session_id,),
        )
        return _run_summary(rows[0]) if rows else None

    async def get_run(self, run_id: str) -> RunSummary | None:
        """A run's summary as stored (``subscribers`` is 0: the store knows of none)."""
        await self.flush()
        rows = await self._fetch(f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.run_id = ?", (run_id,))
        return _run_summary(rows[0]) if rows else None

    async def read_history(
        self, session_id: str, after: Position | None, before: Position | None
    ) -> list[Event] | None:
        """The session's events strictly after ``after`` and strictly before ``before``, runs
        in start order then seq; ``None`` when ``after`` is not a run of the session.

        ``after=None`` starts at the session's first run; ``before=None`` (or a run the log
        does not have) reads to the end. Flushes first, so every published event is here.
        """
        await self.flush()
        ords = await self._ords(session_id, after, before)
        if ords is None:
            return None
        lo, lo_seq, hi, hi_seq = ords
        return await self._history(session_id, lo, lo_seq, hi, hi_seq, limit=None)

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
        await self.flush()
        ords = await self._ords(session_id, after, None)
        if ords is None:
            assert after is not None
            raise UnknownRun(session_id, after.run_id)
        lo, lo_seq, hi, hi_seq = ords
        events = await self._history(
            session_id, lo, lo_seq, hi, hi_seq, limit=limit + 1, kinds=kinds
        )
        if len(events) > limit:
            del events[limit:]
            return events, events[-1].position
        return events, None

    async def _ords(
        self, session_id: str, after: Position | None, before: Position | None
    ) -> tuple[int, int, int, int] | None:
        """The (ord, seq) bounds of a history read; ``None`` when ``after`` is unknown."""
        names = [p.run_id for p in (after, before) if p is not None]
        found: dict[str, int] = {}
        if names:
            marks = ", ".join("?" * len(names))
            rows = await self._fetch(
                f"SELECT run_id, ord FROM runs WHERE session_id = ? AND run_id IN ({marks})",
                (session_id, *names),
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
        return lo, lo_seq, hi, hi_seq

    async def _history(
        self,
        session_id: str,
        lo: int,
        lo_seq: int,
        hi: int,
        hi_seq: int,
        *,
        limit: int | None,
        kinds: Collection[str] | None = None,
    ) -> list[Event]:
        params: dict[str, object] = {
            "session": session_id,
            "lo": lo,
            "lo_seq": lo_seq,
            "hi": hi,
            "hi_seq": hi_seq,
            "all": ALL,
        }
        sql = _HISTORY
        if kinds is not None:
            # One bound parameter per kind: the SQL text holds only our own names.
            names = [f"kind{i}" for i in range(len(kinds))]
            params.update(zip(names, kinds, strict=True))
            sql += f" AND e.kind IN ({', '.join(':' + name for name in names)})"
        sql += _HISTORY_ORDER
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = limit
        rows = await self._fetch(sql, params)
        decode = self._decoder.decode
        return [
            Event(session_id, run_id, seq, kind, ts, decode(data))
            for run_id, seq, kind, ts, data in rows
        ]

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
        await self.flush()
        limits = Limits(frozenset(file_tools), recent, max_checkpoints)
        return await self._digests.read(self._fetch, session_id, limits)

    # providers.ConversationStore --------------------------------------------------------

    async def resume_id(self, session_id: str) -> str | None:
        """The provider session id the session's next run should resume: the session's,
        or else the one recorded by its latest finished run that has one."""
        await self.flush()
        rows = await self._fetch(
            """
            SELECT COALESCE(
                (SELECT provider_session_id FROM sessions WHERE session_id = ?1),
                (SELECT provider_session_id FROM runs
                 WHERE session_id = ?1 AND status = 'completed' AND provider_session_id IS NOT NULL
                 ORDER BY ord DESC LIMIT 1))
            """,
            (session_id,),
        )
        value = rows[0][0] if rows else None
        return str(value) if value else None

    async def fork_origin(self, session_id: str) -> ForkOrigin | None:
        """How a forked session's provider continues its source's conversation; ``None``
        for a session that is not a fork."""
        rows = await self._fetch(
            "SELECT fork_origin FROM sessions WHERE session_id = ?", (session_id,)
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
        await self.flush()
        rows = await self._fetch(
            """
            SELECT e.run_id, e.kind, e.data FROM runs r CROSS JOIN events e
            WHERE r.session_id = ? AND r.status = 'completed' AND e.run_id = r.run_id
                AND e.kind IN ('user_message', 'text', 'text_delta')
            ORDER BY r.ord, e.seq
            """,
            (session_id,),
        )
        turns: list[Turn] = []
        current: str | None = None
        texts: list[str] = []
        deltas: list[str] = []

        def close_run() -> None:
            answer = "\n".join(texts) if texts else "".join(deltas)
            if answer:
                turns.append(Turn("assistant", answer))

        for run_id, kind, raw in rows:
            if run_id != current:
                if current is not None:
                    close_run()
                current, texts, deltas = run_id, [], []
            data = self._decoder.decode(raw)
            if kind == "user_message":
                content = data.get("content")
                if isinstance(content, str):
                    turns.append(Turn("user", content))
                continue
            text = data.get("text")
            if isinstance(text, str):
                (texts if kind == "text" else deltas).append(text)
        if current is not None:
            close_run()
        return turns

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
        _check_owner(owner)
        if not isinstance(provider, str):
            raise ValueError("provider must be a string")
        _check_title(title)
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise ValueError("session_id must be a non-empty string")
        sid = session_id or new_session_id()
        now = self._now()

        async def insert(db: aiosqlite.Connection) -> None:
            await db.execute(
                """
                INSERT INTO sessions (session_id, owner, provider, title, status, created_at,
                    updated_at)
                VALUES (?, ?, ?, ?, 'active', ?, ?)
                """,
                (sid, owner, provider, title, now, now),
            )

        try:
            await self._call(insert)
        except sqlite3.IntegrityError:
            raise ValueError(f"session {sid} already exists") from None
        return SessionRecord(sid, owner, title, provider, "active", now, now, False, None)

    async def get_session(self, session_id: str, *, owner: str) -> SessionRecord | None:
        """The session, or ``None`` when it does not exist or belongs to someone else."""
        _check_owner(owner)
        await self.flush()
        rows = await self._fetch(
            f"SELECT {_SESSION_COLUMNS} FROM sessions s WHERE s.session_id = ? AND s.owner = ?",
            (session_id, owner),
        )
        return _session_record(rows[0]) if rows else None

    async def list_sessions(self, *, owner: str) -> list[SessionRecord]:
        """The owner's sessions, most recent activity first."""
        _check_owner(owner)
        await self.flush()
        rows = await self._fetch(
            f"""
            SELECT {_SESSION_COLUMNS} FROM sessions s WHERE s.owner = ?
            ORDER BY s.updated_at DESC, s.created_at DESC, s.session_id
            """,
            (owner,),
        )
        return [_session_record(row) for row in rows]

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
        _check_owner(owner)
        _check_title(title)
        if status is not None and status not in SESSION_STATUSES:
            raise ValueError(f"status must be one of {', '.join(SESSION_STATUSES)}, not {status!r}")
        if title is not None or status is not None:
            now = self._now()

            async def update(db: aiosqlite.Connection) -> None:
                await db.execute(
                    """
                    UPDATE sessions SET title = COALESCE(?, title), status = COALESCE(?, status),
                        updated_at = MAX(updated_at, ?)
                    WHERE session_id = ? AND owner = ?
                    """,
                    (title, status, now, session_id, owner),
                )

            await self._call(update)
        return await self.get_session(session_id, owner=owner)

    async def set_handoff(
        self, session_id: str, *, owner: str, handoff: dict[str, Any]
    ) -> SessionRecord | None:
        """Store the session's handoff notes (replacing earlier ones); ``None`` when the
        session is not the owner's."""
        _check_owner(owner)
        text = msgspec.json.encode(handoff).decode()
        now = self._now()

        async def update(db: aiosqlite.Connection) -> None:
            await db.execute(
                """
                UPDATE sessions SET handoff = ?, updated_at = MAX(updated_at, ?)
                WHERE session_id = ? AND owner = ?
                """,
                (text, now, session_id, owner),
            )

        await self._call(update)
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
        _check_owner(owner)
        _check_title(title)
        new_id = new_session_id()
        now = self._now()

        async def fork(db: aiosqlite.Connection) -> bool:
            return await write_fork(
                db,
                ForkRequest(session_id, owner, new_id, title, at, now),
                allocate_ords=self._allocate_ords,
            )

        if not await self._call(fork):
            return None
        return await self.get_session(new_id, owner=owner)

    async def set_fork_summary(self, session_id: str, summary: str) -> None:
        """Store the summary a forked session's provider starts from when it cannot resume."""

        async def update(db: aiosqlite.Connection) -> None:
            await db.execute(
                """
                UPDATE sessions SET fork_origin = json_set(fork_origin, '$.summary', ?)
                WHERE session_id = ? AND fork_origin IS NOT NULL
                """,
                (summary, session_id),
            )

        await self._call(update)

    async def delete_session(self, session_id: str, *, owner: str) -> bool:
        """Delete the session with its runs and events; ``False`` when it is not the owner's."""
        _check_owner(owner)

        async def delete(db: aiosqlite.Connection) -> bool:
            cursor = await db.execute(
                "DELETE FROM sessions WHERE session_id = ? AND owner = ?", (session_id, owner)
            )
            return cursor.rowcount > 0

        deleted = bool(await self._call(delete))
        self._digests.forget(session_id)
        return deleted

    async def mark_read(self, session_id: str, *, owner: str) -> bool:
        """Clear the session's unread mark; ``False`` when it is not the owner's."""
        _check_owner(owner)

        async def clear(db: aiosqlite.Connection) -> bool:
            cursor = await db.execute(
                "UPDATE sessions SET unread_since = NULL WHERE session_id = ? AND owner = ?",
                (session_id, owner),
            )
            return cursor.rowcount > 0

        return bool(await self._call(clear))

    # Helpers ----------------------------------------------------------------------------

    def _allocate_ords(self, count: int) -> int:
        """Reserve ``count`` start-order numbers; the first of them."""
        first = self._next_ord + 1
        self._next_ord += count
        return first

    def _now(self) -> int:
        return to_ms(self._clock.now())

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: the store is closed")

    async def _call(self, fn: Any) -> Any:
        """Run a session change in the writer's queue. A constraint error is the caller's
        to explain; any other database error becomes a StoreError."""
        self._check_open()
        try:
            return await self._writer.call(fn)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: writing failed: {exc}") from exc

    async def _fetch(self, sql: str, params: Any) -> list[Any]:
        self._check_open()
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: reading failed: {exc}") from exc


def _check_owner(owner: str) -> None:
    if not isinstance(owner, str) or not owner:
        raise ValueError("owner must be a non-empty string")


def _check_title(title: str | None) -> None:
    if title is not None and not isinstance(title, str):
        raise ValueError("title must be a string or null")


def _session_record(row: Any) -> SessionRecord:
    sid, owner, title, provider, status, created_at, updated_at, unread, running = row[:9]
    handoff, forked_from = row[9:]
    return SessionRecord(
        sid,
        owner,
        title,
        provider,
        cast(SessionStatus, status),
        created_at,
        updated_at,
        bool(unread),
        running,
        msgspec.json.decode(handoff) if handoff is not None else None,
        msgspec.json.decode(forked_from) if forked_from is not None else None,
    )


def _run_summary(row: Any) -> RunSummary:
    run_id, session_id, provider, status, started_at, completed_at, last_seq, outcome = row
    return RunSummary(
        run_id=run_id,
        session_id=session_id,
        provider=provider,
        status=cast(RunStatus, status),
        started_at=started_at,
        completed_at=completed_at,
        last_seq=last_seq,
        subscribers=0,
        outcome=cast(Outcome | None, outcome),
    )


# Opening ------------------------------------------------------------------------------


def _check_path(path: str) -> None:
    """Refuse, with a clear message, paths SQLite would fail on obscurely (or not at all)."""
    if path in ("", ":memory:") or path.startswith("file:"):
        raise StoreError(f"{path or '(empty)'}: the store needs a file path")
    file = Path(path)
    parent = file.parent
    if not parent.is_dir():
        raise StoreError(f"{path}: cannot create the database: directory {parent} does not exist")
    if file.is_dir():
        raise StoreError(f"{path}: is a directory, not a database file")
    if file.exists():
        # Checked on the mode bits, not with access(): root may write anything, but a file
        # made read-only says "do not write here".
        if not file.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            raise StoreError(f"{path}: the database file is read-only")
        if not os.access(file, os.R_OK | os.W_OK):
            raise StoreError(f"{path}: no permission to read and write the database file")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{path}: cannot create the database: directory {parent} is not writable")


async def _connect(path: str, busy_timeout: float) -> aiosqlite.Connection:
    try:
        db = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the database: {exc}") from exc
    try:
        # PRAGMA takes no bound parameters; these are our own integers.
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        await db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        await db.close()
        raise StoreError(f"{path}: cannot open the database: {exc}") from exc
    return db


async def _setup_writer(db: aiosqlite.Connection, path: str) -> None:
    """WAL, NORMAL sync, then the schema; every failure becomes a StoreError naming the file."""
    try:
        async with db.execute("PRAGMA journal_mode = WAL") as cursor:
            row = await cursor.fetchone()
        if row is None or str(row[0]).lower() != "wal":
            raise StoreError(f"{path}: cannot switch the database to WAL mode")
        await db.execute("PRAGMA synchronous = NORMAL")
        # Checkpoints run beside the writer (see Writer); this is only the backstop that
        # bounds the WAL (~40 MB) should they fall behind under a constant stream of commits.
        await db.execute("PRAGMA wal_autocheckpoint = 10000")
        await migrate(db)
    except NewerSchema as exc:
        raise StoreError(f"{path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise StoreError(f"{path}: the file is not a SQLite database") from exc
        if "readonly" in str(exc):
            raise StoreError(f"{path}: the database file is read-only") from exc
        raise StoreError(f"{path}: cannot open the database: {exc}") from exc


async def _max_ord(db: aiosqlite.Connection) -> int:
    async with db.execute("SELECT COALESCE(MAX(ord), 0) FROM runs") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def _recover(db: aiosqlite.Connection, now: int) -> int:
    """End every run a crash left running: one ``complete`` (server_restart) after its last
    stored event. Returns how many runs were ended."""
    encode = msgspec.json.Encoder().encode
    await db.execute("BEGIN IMMEDIATE")
    try:
        rows = list(
            await db.execute_fetchall(
                """
                SELECT r.run_id, r.session_id,
                    (SELECT COALESCE(MAX(e.seq), 0) FROM events e WHERE e.run_id = r.run_id)
                FROM runs r WHERE r.status = 'running' ORDER BY r.ord
                """
            )
        )
        for run_id, session_id, last in rows:
            seq = int(last) + 1
            data = complete_data(session_id, reason="server_restart", exit_code=1)
            await db.execute(INSERT_EVENT, (run_id, seq, COMPLETE, now, encode(data).decode()))
            await db.execute(
                """
                UPDATE runs SET status = 'completed', outcome = 'server_restart', exit_code = 1,
                    completed_at = ?, last_seq = ?
                WHERE run_id = ?
                """,
                (now, seq, run_id),
            )
            # Nobody was subscribed across the crash: the session has news.
            await db.execute(
                """
                UPDATE sessions SET updated_at = MAX(updated_at, ?1),
                    unread_since = COALESCE(unread_since, ?1)
                WHERE session_id = ?2
                """,
                (now, session_id),
            )
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    return len(rows)
