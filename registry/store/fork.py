"""Forking a session: a new session whose log starts as a copy of another's up to a point.

The copy is made in one transaction on the writer's connection, after every event queued
before it, so a fork of a running session sees the run as far as it had gone. Copied runs
get new run ids and keep their events, times and outcomes; a run cut short by the fork
point ends in a ``complete`` with ``reason: "interrupted"`` (every run in the log ends in
exactly one). Provider session ids and ``client_msg_id`` are not copied: the fork's own
runs must never continue, or be mistaken for, the original's. What the fork's provider
needs to continue the conversation is stored as its :class:`~registry.events.ForkOrigin`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import aiosqlite
import msgspec

from ..events import COMPLETE, USER_MESSAGE, ForkOrigin, Position, complete_data
from ..ids import RunIds

_encoder = msgspec.json.Encoder()

FORK_MARK = " (fork)"
# The cut run's closing event says why it ended there.
FORK_POINT = "the session was forked at this point"


class BadForkPoint(ValueError):
    """A fork position that is not in the session; ``field`` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ForkPoint(NamedTuple):
    """Where to fork: after event ``seq`` of ``run_id`` (``None``: the run's last event;
    0: just before the run)."""

    run_id: str
    seq: int | None = None


class CopiedRun(NamedTuple):
    """One source run as a fork copies it."""

    run_id: str
    keep: int
    """Events 1 to ``keep`` are copied."""
    cut: bool
    """Whether the fork point ends it early (before its ``complete``, or while running)."""
    provider_session_id: str | None


class ForkPlan(NamedTuple):
    """What a fork copies."""

    runs: list[CopiedRun]
    """The runs copied, in start order; only the last may be cut."""
    at: Position | None
    """The fork point: copied are the source's events up to it (seq 0: none of that run's);
    ``None`` for a session with no runs."""
    exact: bool
    """Whether the last copied run is copied whole and its provider session id is not
    used by a later run of the source: resuming that id continues exactly the copy."""


class ForkRequest(NamedTuple):
    """A fork to write: of ``source`` (if ``owner``'s) into the new session ``new_id``."""

    source: str
    owner: str
    new_id: str
    title: str | None
    """The new session's title; ``None``: the source's, marked ``(fork)``."""
    at: ForkPoint | None
    now_ms: int


async def write_fork(
    db: aiosqlite.Connection, request: ForkRequest, *, allocate_ords: Callable[[int], int]
) -> bool:
    """Create the fork in the transaction of ``db``; ``False`` when the source is not the
    owner's. ``allocate_ords(n)`` reserves ``n`` start-order numbers and returns the first."""
    rows = list(
        await db.execute_fetchall(
            "SELECT provider, title, handoff FROM sessions WHERE session_id = ? AND owner = ?",
            (request.source, request.owner),
        )
    )
    if not rows:
        return False
    provider, source_title, handoff = rows[0]
    plan = await plan_fork(db, request.source, request.at)
    forked_from = {
        "session_id": request.source,
        "run_id": plan.at.run_id if plan.at else None,
        "seq": plan.at.seq if plan.at else None,
    }
    await db.execute(
        """
        INSERT INTO sessions (session_id, owner, provider, title, status, created_at,
            updated_at, handoff, forked_from)
        VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?)
        """,
        (
            request.new_id,
            request.owner,
            provider,
            request.title if request.title is not None else fork_title(source_title),
            request.now_ms,
            request.now_ms,
            handoff,
            _json(forked_from),
        ),
    )
    turns = await copy_runs(
        db,
        plan,
        session_id=request.new_id,
        first_ord=allocate_ords(len(plan.runs)),
        now_ms=request.now_ms,
    )
    resume_id = plan.runs[-1].provider_session_id if plan.exact else None
    await db.execute(
        "UPDATE sessions SET fork_origin = ? WHERE session_id = ?",
        (_json(ForkOrigin(resume_id, turns, None)._asdict()), request.new_id),
    )
    return True


def fork_title(title: str | None) -> str | None:
    """A fork's default title: its source's, marked (still at most 500 characters)."""
    return None if title is None else title[: 500 - len(FORK_MARK)] + FORK_MARK


def _json(value: Any) -> str:
    return _encoder.encode(value).decode()


async def plan_fork(db: aiosqlite.Connection, session_id: str, at: ForkPoint | None) -> ForkPlan:
    """Which runs and events a fork at ``at`` (``None``: the end) copies."""
    runs = [
        (str(run_id), int(last), status == "completed", provider_id)
        for run_id, provider_id, last, status in await db.execute_fetchall(
            """
            SELECT r.run_id, r.provider_session_id,
                (SELECT COALESCE(MAX(e.seq), 0) FROM events e WHERE e.run_id = r.run_id),
                r.status
            FROM runs r WHERE r.session_id = ? ORDER BY r.ord
            """,
            (session_id,),
        )
    ]
    if not runs:
        if at is not None:
            raise BadForkPoint("run_id", f"session {session_id} has no runs")
        return ForkPlan([], None, False)
    if at is None:
        index, keep = len(runs) - 1, runs[-1][1]
    else:
        found = [i for i, run in enumerate(runs) if run[0] == at.run_id]
        if not found:
            raise BadForkPoint("run_id", f"run {at.run_id} is not a run of session {session_id}")
        index = found[0]
        keep = runs[index][1] if at.seq is None else at.seq
        if not 0 <= keep <= runs[index][1]:
            raise BadForkPoint("seq", f"expected 0 to {runs[index][1]} (the run's last seq)")
    copied = [CopiedRun(run_id, last, not done, pid) for run_id, last, done, pid in runs[:index]]
    run_id, last, done, provider_id = runs[index]
    if keep > 0:
        copied.append(CopiedRun(run_id, keep, keep < last or not done, provider_id))
    point = Position(run_id, keep)
    if not copied:
        return ForkPlan([], point, False)
    tail = copied[-1]
    later = {run[3] for run in runs[len(copied) :]}
    exact = not tail.cut and tail.provider_session_id is not None
    return ForkPlan(copied, point, exact and tail.provider_session_id not in later)


_COPY_RUN = """
    INSERT INTO runs (run_id, session_id, ord, provider, status, outcome, exit_code, error,
        last_seq, started_at, completed_at)
    SELECT :run, :session, :ord, provider, 'completed', outcome, exit_code, error, last_seq,
        started_at, completed_at
    FROM runs WHERE run_id = :source
"""
_COPY_CUT_RUN = """
    INSERT INTO runs (run_id, session_id, ord, provider, status, outcome, exit_code, error,
        last_seq, started_at, completed_at)
    SELECT :run, :session, :ord, provider, 'completed', 'interrupted', 1, :error, :keep + 1,
        started_at, :now
    FROM runs WHERE run_id = :source
"""
# The complete's actual_session_id names the session it is in.
_COPY_EVENTS = """
    INSERT INTO events (run_id, seq, kind, ts, data)
    SELECT :run, seq, kind, ts,
        CASE WHEN kind = 'complete' THEN json_set(data, '$.actual_session_id', :session)
        ELSE data END
    FROM events WHERE run_id = :source AND seq <= :keep
"""


async def copy_runs(
    db: aiosqlite.Connection, plan: ForkPlan, *, session_id: str, first_ord: int, now_ms: int
) -> int:
    """Copy the planned runs into ``session_id``; returns how many user prompts they hold."""
    run_ids = RunIds()
    for offset, run in enumerate(plan.runs):
        params: dict[str, Any] = {
            "run": run_ids.new(now_ms),
            "session": session_id,
            "ord": first_ord + offset,
            "source": run.run_id,
            "keep": run.keep,
            "error": FORK_POINT,
            "now": now_ms,
        }
        await db.execute(_COPY_CUT_RUN if run.cut else _COPY_RUN, params)
        await db.execute(_COPY_EVENTS, params)
        if run.cut:
            data = complete_data(session_id, reason="interrupted", error=FORK_POINT)
            await db.execute(
                "INSERT INTO events (run_id, seq, kind, ts, data) VALUES (?, ?, ?, ?, ?)",
                (params["run"], run.keep + 1, COMPLETE, now_ms, _json(data)),
            )
    rows = list(
        await db.execute_fetchall(
            """
            SELECT count(*) FROM runs r CROSS JOIN events e
            WHERE r.session_id = ? AND e.run_id = r.run_id AND e.kind = ?
            """,
            (session_id, USER_MESSAGE),
        )
    )
    return int(rows[0][0])
