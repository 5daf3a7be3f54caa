"""Forking a session: a new session whose log starts as a copy of another's up to a point.

The copy is made in one transaction on the writer's connection, after every event queued
before it, so a fork of a running session sees the run as far as it had gone. Copied runs
get new run ids and keep their events, times and outcomes; a run cut short by the fork
point ends in a ``complete`` with ``reason: "interrupted"`` (every run in the log ends in
exactly one). Provider session ids and ``client_msg_id`` are not copied: the fork's own
runs must never continue, or be mistaken for, the original's. What the fork's provider
needs to continue the conversation is stored as its :class:`~registry.events.ForkOrigin`.

Copied runs get start orders from the store's allocator, or keep their source runs' own
(what PostgreSQL does, see :class:`~registry.store.PostgresStore`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from ..events import COMPLETE, USER_MESSAGE, ForkOrigin, Position, complete_data
from ..ids import RunIds
from .sql import Tx
from .stretch import stretch_row, unpack

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
    ord: int
    """The source run's start order."""
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
    tx: Tx, request: ForkRequest, *, allocate_ords: Callable[[int], int] | None
) -> bool:
    """Create the fork in the transaction ``tx``; ``False`` when the source is not the
    owner's. ``allocate_ords(n)`` reserves ``n`` start-order numbers and returns the first;
    ``None`` keeps the source runs' start orders."""
    rows = await tx.fetch(
        "SELECT provider, title, handoff FROM sessions WHERE session_id = :session"
        " AND owner = :owner",
        {"session": request.source, "owner": request.owner},
    )
    if not rows:
        return False
    provider, source_title, handoff = rows[0]
    plan = await plan_fork(tx, request.source, request.at)
    forked_from = {
        "session_id": request.source,
        "run_id": plan.at.run_id if plan.at else None,
        "seq": plan.at.seq if plan.at else None,
    }
    await tx.execute(
        """
        INSERT INTO sessions (session_id, owner, provider, title, status, created_at,
            updated_at, handoff, forked_from)
        VALUES (:session, :owner, :provider, :title, 'active', :now, :now, :handoff, :from)
        """,
        {
            "session": request.new_id,
            "owner": request.owner,
            "provider": provider,
            "title": request.title if request.title is not None else fork_title(source_title),
            "now": request.now_ms,
            "handoff": handoff,
            "from": _json(forked_from),
        },
    )
    if allocate_ords is None:
        ords = [run.ord for run in plan.runs]
    else:
        first = allocate_ords(len(plan.runs))
        ords = list(range(first, first + len(plan.runs)))
    turns = await copy_runs(tx, plan, session_id=request.new_id, ords=ords, now_ms=request.now_ms)
    resume_id = plan.runs[-1].provider_session_id if plan.exact else None
    await tx.execute(
        "UPDATE sessions SET fork_origin = :origin WHERE session_id = :session",
        {"origin": _json(ForkOrigin(resume_id, turns, None)._asdict()), "session": request.new_id},
    )
    return True


def fork_title(title: str | None) -> str | None:
    """A fork's default title: its source's, marked (still at most 500 characters)."""
    return None if title is None else title[: 500 - len(FORK_MARK)] + FORK_MARK


def _json(value: Any) -> str:
    return _encoder.encode(value).decode()


async def plan_fork(tx: Tx, session_id: str, at: ForkPoint | None) -> ForkPlan:
    """Which runs and events a fork at ``at`` (``None``: the end) copies."""
    runs = [
        _SourceRun(str(run_id), int(ord_), int(last), status == "completed", provider_id)
        for run_id, ord_, provider_id, last, status in await tx.fetch(
            """
            SELECT r.run_id, r.ord, r.provider_session_id,
                (SELECT COALESCE(MAX(e.seq), 0) FROM events e WHERE e.run_id = r.run_id),
                r.status
            FROM runs r WHERE r.session_id = :session ORDER BY r.ord
            """,
            {"session": session_id},
        )
    ]
    if not runs:
        if at is not None:
            raise BadForkPoint("run_id", f"session {session_id} has no runs")
        return ForkPlan([], None, False)
    if at is None:
        index, keep = len(runs) - 1, runs[-1].last
    else:
        found = [i for i, run in enumerate(runs) if run.run_id == at.run_id]
        if not found:
            raise BadForkPoint("run_id", f"{at.run_id} is not a run of session {session_id}")
        index = found[0]
        keep = runs[index].last if at.seq is None else at.seq
        if not 0 <= keep <= runs[index].last:
            raise BadForkPoint("seq", f"expected 0 to {runs[index].last} (the run's last seq)")
    copied = [
        CopiedRun(run.run_id, run.ord, run.last, not run.done, run.provider_id)
        for run in runs[:index]
    ]
    cut = runs[index]
    if keep > 0:
        copied.append(
            CopiedRun(cut.run_id, cut.ord, keep, keep < cut.last or not cut.done, cut.provider_id)
        )
    point = Position(cut.run_id, keep)
    if not copied:
        return ForkPlan([], point, False)
    tail = copied[-1]
    later = {run.provider_id for run in runs[len(copied) :]}
    exact = not tail.cut and tail.provider_session_id is not None
    return ForkPlan(copied, point, exact and tail.provider_session_id not in later)


class _SourceRun(NamedTuple):
    run_id: str
    ord: int
    last: int
    done: bool
    provider_id: str | None


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
    SELECT :run, :session, :ord, provider, 'completed', 'interrupted', 1, :error, :last,
        started_at, :now
    FROM runs WHERE run_id = :source
"""
# The complete's actual_session_id names the session it is in.
_COPY_EVENTS = """
    INSERT INTO events (run_id, seq, kind, ts, data, span)
    SELECT :run, seq, kind, ts,
        CASE WHEN kind = 'complete' THEN {complete} ELSE data END, span
    FROM events WHERE run_id = :source AND seq <= :keep
"""
# The stretch (see ``stretch``) that holds the fork point's event and later ones.
_CUT_STRETCH = """
    SELECT seq, ts, data, span FROM events
    WHERE run_id = :source AND seq > :keep AND seq - span < :keep
"""


async def _copy_cut_stretch(tx: Tx, params: dict[str, Any]) -> None:
    """Copy the events up to ``keep`` of the stretch the fork point cuts, if it cuts one."""
    for last, ts, stored, span in await tx.fetch(_CUT_STRETCH, params):
        kept = [text for seq, _, text in unpack(last, span, stored) if seq <= params["keep"]]
        run_id, seq, kind, ts, data, count = stretch_row(
            params["run"], last - span + 1, ts, kept, len(kept)
        )
        await tx.execute(
            "INSERT INTO events (run_id, seq, kind, ts, data, span)"
            " VALUES (:run, :seq, :kind, :ts, :data, :span)",
            {"run": run_id, "seq": seq, "kind": kind, "ts": ts, "data": data, "span": count},
        )


async def copy_runs(
    tx: Tx, plan: ForkPlan, *, session_id: str, ords: list[int], now_ms: int
) -> int:
    """Copy the planned runs into ``session_id`` with the start orders ``ords``; returns how
    many user prompts they hold."""
    run_ids = RunIds()
    copy_events = _COPY_EVENTS.format(
        complete=tx.sql.json_set("data", "actual_session_id", ":session")
    )
    for ord_, run in zip(ords, plan.runs, strict=True):
        params: dict[str, Any] = {
            "run": run_ids.new(now_ms),
            "session": session_id,
            "ord": ord_,
            "source": run.run_id,
            "keep": run.keep,
        }
        if run.cut:
            extra = {"error": FORK_POINT, "last": run.keep + 1, "now": now_ms}
            await tx.execute(_COPY_CUT_RUN, {**params, **extra})
        else:
            await tx.execute(_COPY_RUN, params)
        await tx.execute(copy_events, params)
        await _copy_cut_stretch(tx, params)
        if run.cut:
            data = complete_data(session_id, reason="interrupted", error=FORK_POINT)
            await tx.execute(
                "INSERT INTO events (run_id, seq, kind, ts, data)"
                " VALUES (:run, :seq, :kind, :ts, :data)",
                {
                    "run": params["run"],
                    "seq": run.keep + 1,
                    "kind": COMPLETE,
                    "ts": now_ms,
                    "data": _json(data),
                },
            )
    rows = await tx.fetch(
        """
        SELECT count(*) FROM runs r CROSS JOIN events e
        WHERE r.session_id = :session AND e.run_id = r.run_id AND e.kind = :kind
        """,
        {"session": session_id, "kind": USER_MESSAGE},
    )
    return int(rows[0][0])
