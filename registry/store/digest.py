"""What a session's event log says about it, read in a few indexed queries.

:func:`read_digest` gathers the raw facts a session context is made of (runs, totals per
kind and per tool, the newest actions and errors, checkpoints, file-tool uses); turning
them into a summary, and knowing which tools touch files, is the caller's part. The
queries walk the session's runs by ``runs_by_session`` and their events by
``events_by_kind`` (totals without reading event data); newest-first reads stop at their
limit.

A completed run's events never change (the log is append-only and a run gains no events
after its ``complete``), so :class:`DigestCache` keeps the digest of a session's completed
runs and a later read only covers the runs started since: a long session costs its full
read once, then only what is new.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

from ..events import Event, read_stored
from .sql import Dialect, Fetch, marks

# A session's events (of runs after ``:after``) joined to their runs.
_EVENTS = """
    FROM runs r CROSS JOIN events e
    WHERE r.session_id = :session AND r.ord > :after AND e.run_id = r.run_id
"""
_NEWEST = " ORDER BY r.ord DESC, e.seq DESC"
# Strings in kept event data are cut to this length: a digest holds what a summary shows,
# not a file an agent wrote.
MAX_STRING = 1_000


class RunFacts(NamedTuple):
    """One run as the digest sees it (times in ms since the epoch)."""

    run_id: str
    ord: int
    status: str
    outcome: str | None
    error: str | None
    exit_code: int | None
    started_at: int
    completed_at: int | None


class ToolResult(NamedTuple):
    """The start of a tool's result: enough to tell success and what it reported."""

    is_error: bool
    content: str | None


class Digest(NamedTuple):
    """The raw facts of a session's log (or of its runs after some point). Kept events
    have their long strings cut to :data:`MAX_STRING`."""

    runs: list[RunFacts]
    """Every run, in start order."""
    kinds: dict[str, int]
    """Events per kind."""
    last_event_ts: int | None
    tools: dict[str, int]
    """``tool_use`` events per tool name."""
    actions: list[Event]
    """The newest ``tool_use`` and ``text`` events, newest first."""
    errors: list[Event]
    """The newest ``error`` events, newest first."""
    checkpoints: list[Event]
    """The newest ``checkpoint`` events, oldest first."""
    file_uses: list[Event]
    """``tool_use`` events of the named file tools, oldest first."""
    results: dict[tuple[str, str], ToolResult]
    """Per (run_id, tool_id) of a file-tool use: its result, when there is one."""

    def completed(self) -> bool:
        """Whether every run in it has completed (so it can no longer change)."""
        return all(run.status == "completed" for run in self.runs)


class Limits(NamedTuple):
    """What a digest reads: which tools change files and how many recent events to keep."""

    file_tools: frozenset[str]
    recent: int
    max_checkpoints: int


async def read_digest(
    fetch: Fetch, sql: Dialect, session_id: str, limits: Limits, *, after: int = -1
) -> Digest:
    """The digest of one session's runs whose ``ord`` is past ``after`` (default: all);
    ``fetch(query, params)`` runs a read on the store, whose dialect is ``sql``."""
    params: dict[str, Any] = {"session": session_id, "after": after}

    async def events(where: str, extra: dict[str, Any], tail: str) -> list[Event]:
        rows = await fetch(
            f"SELECT e.run_id, e.seq, e.kind, e.ts, e.data {_EVENTS} AND {where}{tail}",
            {**params, **extra},
        )
        return [
            Event(session_id, run_id, seq, kind, ts, _cut(read_stored(data)[0]))
            for run_id, seq, kind, ts, data in rows
        ]

    runs = [
        RunFacts(*row)
        for row in await fetch(
            """
            SELECT run_id, ord, status, outcome, error, exit_code, started_at, completed_at
            FROM runs WHERE session_id = :session AND ord > :after ORDER BY ord
            """,
            params,
        )
    ]
    # Grouped per run too: the index then yields each run's kinds in order, with no
    # temporary b-tree over every event of the session.
    kinds: dict[str, int] = {}
    # A row may hold a stretch of events (see ``stretch``): its span counts them.
    for kind, count in await fetch(
        f"SELECT e.kind, sum(e.span) {_EVENTS} GROUP BY r.ord, e.kind", params
    ):
        kinds[kind] = kinds.get(kind, 0) + int(count)
    last = await fetch(f"SELECT e.ts {_EVENTS}{_NEWEST} LIMIT 1", params)
    name = sql.json_text("e.data", "name")
    tools = {
        str(name): int(count)
        for name, count in await fetch(
            f"""
            SELECT {name}, count(*) {_EVENTS} AND e.kind = 'tool_use'
            GROUP BY 1
            """,
            params,
        )
        if name is not None
    }
    newest = {"limit": limits.recent}
    checkpoints = await events(
        "e.kind = 'checkpoint'", {"limit": limits.max_checkpoints}, _NEWEST + " LIMIT :limit"
    )
    checkpoints.reverse()
    file_uses: list[Event] = []
    if limits.file_tools:
        listed, names = marks("tool", sorted(limits.file_tools))
        file_uses = await events(
            f"e.kind = 'tool_use' AND {name} IN ({listed})", names, " ORDER BY r.ord, e.seq"
        )
    return Digest(
        runs=runs,
        kinds=kinds,
        last_event_ts=int(last[0][0]) if last else None,
        tools=tools,
        actions=await events("e.kind IN ('tool_use', 'text')", newest, _NEWEST + " LIMIT :limit"),
        errors=await events("e.kind = 'error'", newest, _NEWEST + " LIMIT :limit"),
        checkpoints=checkpoints,
        file_uses=file_uses,
        results=await _results(fetch, sql, file_uses),
    )


def merge(older: Digest, newer: Digest, limits: Limits) -> Digest:
    """One digest of ``older``'s runs followed by ``newer``'s."""
    return Digest(
        runs=older.runs + newer.runs,
        kinds=_add(older.kinds, newer.kinds),
        last_event_ts=newer.last_event_ts
        if newer.last_event_ts is not None
        else older.last_event_ts,
        tools=_add(older.tools, newer.tools),
        actions=(newer.actions + older.actions)[: limits.recent],
        errors=(newer.errors + older.errors)[: limits.recent],
        checkpoints=(older.checkpoints + newer.checkpoints)[-limits.max_checkpoints :]
        if limits.max_checkpoints
        else [],
        file_uses=older.file_uses + newer.file_uses,
        results={**older.results, **newer.results},
    )


class DigestCache:
    """The digests of sessions' completed runs, for the ``size`` sessions read last.

    Valid because completed runs never change; a deleted session must be forgotten.
    Entries are per ``Limits``: a read with other limits starts over.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[Limits, Digest]] = OrderedDict()

    async def read(self, fetch: Fetch, sql: Dialect, session_id: str, limits: Limits) -> Digest:
        """The whole session's digest: the cached completed runs plus a read of the rest."""
        entry = self._entries.get(session_id)
        cached = entry[1] if entry is not None and entry[0] == limits else None
        after = cached.runs[-1].ord if cached is not None and cached.runs else -1
        fresh = await read_digest(fetch, sql, session_id, limits, after=after)
        whole = merge(cached, fresh, limits) if cached is not None else fresh
        if whole.completed() and self.size > 0:
            self._entries[session_id] = (limits, whole)
            self._entries.move_to_end(session_id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return whole

    def forget(self, session_id: str) -> None:
        self._entries.pop(session_id, None)


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    total = dict(a)
    for key, count in b.items():
        total[key] = total.get(key, 0) + count
    return total


def _cut(value: Any) -> Any:
    """``value`` with every string longer than :data:`MAX_STRING` cut to that length."""
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING else value[:MAX_STRING]
    if isinstance(value, dict):
        return {key: _cut(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cut(item) for item in value]
    return value


async def _results(
    fetch: Fetch, sql: Dialect, uses: list[Event]
) -> dict[tuple[str, str], ToolResult]:
    """The results of ``uses``, read from only the runs they are in."""
    run_ids = sorted({use.run_id for use in uses})
    if not run_ids:
        return {}
    listed, params = marks("run", run_ids)
    rows = await fetch(
        f"""
        SELECT run_id, {sql.json_text("data", "tool_id")}, {sql.json_truth("data", "is_error")},
            substr({sql.json_text("data", "content")}, 1, 200)
        FROM events WHERE run_id IN ({listed}) AND kind = 'tool_result'
        """,
        params,
    )
    return {
        (str(run_id), str(tool_id)): ToolResult(
            bool(is_error), content if isinstance(content, str) else None
        )
        for run_id, tool_id, is_error, content in rows
        if tool_id is not None
    }
