"""What a session's event log says about it, read in a few indexed queries.

:func:`read_digest` gathers the raw facts a session context is made of (runs, totals per
kind and per tool, the newest actions and errors, checkpoints, file-tool uses); turning
them into a summary, and knowing which tools touch files, is the caller's part. Every
query walks the session's runs by ``runs_by_session`` and their events by ``events_by_kind``
(totals without reading event data; filtered reads seek to their kinds); the newest-first
ones stop at their limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, NamedTuple

import msgspec

from ..events import Event

Fetch = Callable[[str, Any], Awaitable[list[Any]]]

# A session's events joined to their runs; ``:session`` is bound by every query.
_EVENTS = "FROM runs r CROSS JOIN events e WHERE r.session_id = :session AND e.run_id = r.run_id"
_NEWEST = " ORDER BY r.ord DESC, e.seq DESC"
# Events read by key per query: three bound parameters each, far below SQLite's limit.
_KEYS_PER_QUERY = 500


class RunFacts(NamedTuple):
    """One run as the digest sees it (times in ms since the epoch)."""

    run_id: str
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
    """The raw facts of a session's log. Event lists hold whole events."""

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


async def read_digest(
    fetch: Fetch,
    session_id: str,
    *,
    file_tools: Collection[str],
    recent: int,
    max_checkpoints: int,
) -> Digest:
    """The digest of one session; ``fetch(sql, params)`` runs a read on the store."""
    decoder = msgspec.json.Decoder(dict[str, Any])
    params: dict[str, Any] = {"session": session_id}

    async def events(where: str, extra: dict[str, Any], tail: str) -> list[Event]:
        rows = await fetch(
            f"SELECT e.run_id, e.seq, e.kind, e.ts, e.data {_EVENTS} AND {where}{tail}",
            {**params, **extra},
        )
        return [
            Event(session_id, run_id, seq, kind, ts, decoder.decode(data))
            for run_id, seq, kind, ts, data in rows
        ]

    runs = [
        RunFacts(*row)
        for row in await fetch(
            """
            SELECT run_id, status, outcome, error, exit_code, started_at, completed_at
            FROM runs WHERE session_id = :session ORDER BY ord
            """,
            params,
        )
    ]
    # Grouped per run too: the index then yields each run's kinds in order, with no
    # temporary b-tree over every event of the session.
    kinds: dict[str, int] = {}
    for kind, count in await fetch(
        f"SELECT e.kind, count(*) {_EVENTS} GROUP BY r.ord, e.kind", params
    ):
        kinds[kind] = kinds.get(kind, 0) + count
    last = await fetch(f"SELECT e.ts {_EVENTS}{_NEWEST} LIMIT 1", params)
    newest = {"limit": recent}
    actions = await events("e.kind IN ('tool_use', 'text')", newest, _NEWEST + " LIMIT :limit")
    errors = await events("e.kind = 'error'", newest, _NEWEST + " LIMIT :limit")
    checkpoints = await events(
        "e.kind = 'checkpoint'", {"limit": max_checkpoints}, _NEWEST + " LIMIT :limit"
    )
    checkpoints.reverse()
    tools, file_uses, results = await _tool_uses(fetch, session_id, params, file_tools)
    return Digest(
        runs=runs,
        kinds=kinds,
        last_event_ts=int(last[0][0]) if last else None,
        tools=tools,
        actions=actions,
        errors=errors,
        checkpoints=checkpoints,
        file_uses=file_uses,
        results=results,
    )


async def _tool_uses(
    fetch: Fetch, session_id: str, params: dict[str, Any], file_tools: Collection[str]
) -> tuple[dict[str, int], list[Event], dict[tuple[str, str], ToolResult]]:
    """Uses per tool name, the file-tool uses, and their results.

    JSON is parsed once per ``tool_use`` and ``tool_result`` row (a two-path
    ``json_extract``); whole events are then read by key for the file-tool uses only, and
    result texts only for the whole-file writes among them.
    """
    decoder = msgspec.json.Decoder(dict[str, Any])
    heads = msgspec.json.Decoder(tuple[Any, Any])
    counts: dict[str, int] = {}
    wanted: list[tuple[str, int]] = []
    for run_id, seq, head in await fetch(
        f"""
        SELECT e.run_id, e.seq, json_extract(e.data, '$.name', '$.tool_id') {_EVENTS}
            AND e.kind = 'tool_use' ORDER BY r.ord, e.seq
        """,
        params,
    ):
        name, _ = heads.decode(head)
        if isinstance(name, str):
            counts[name] = counts.get(name, 0) + 1
            if name in file_tools:
                wanted.append((run_id, seq))
    uses = [
        Event(session_id, run_id, seq, kind, ts, decoder.decode(data))
        for run_id, seq, kind, ts, data in await _by_key(
            fetch, wanted, "e.run_id, e.seq, e.kind, e.ts, e.data"
        )
    ]
    if not uses:
        return counts, uses, {}
    run_ids = sorted({use.run_id for use in uses})
    marks = ", ".join("?" * len(run_ids))
    results: dict[tuple[str, str], tuple[int, bool]] = {}
    for run_id, seq, head in await fetch(
        f"""
        SELECT run_id, seq, json_extract(data, '$.tool_id', '$.is_error') FROM events
        WHERE run_id IN ({marks}) AND kind = 'tool_result'
        """,
        run_ids,
    ):
        tool_id, is_error = heads.decode(head)
        results[(run_id, str(tool_id))] = (seq, bool(is_error))
    found: dict[tuple[str, str], ToolResult] = {}
    texts: list[tuple[str, int]] = []
    for use in uses:
        key = (use.run_id, str(use.data.get("tool_id")))
        if key in results:
            seq, is_error = results[key]
            found[key] = ToolResult(is_error, None)
            texts.append((use.run_id, seq))
    for run_id, _seq, tool_id, content in await _by_key(
        fetch,
        texts,
        "e.run_id, e.seq, e.data ->> '$.tool_id', substr(e.data ->> '$.content', 1, 200)",
    ):
        key = (run_id, str(tool_id))
        if key in found and isinstance(content, str):
            found[key] = found[key]._replace(content=content)
    return counts, uses, found


async def _by_key(fetch: Fetch, keys: list[tuple[str, int]], columns: str) -> list[Any]:
    """``columns`` of the events at ``keys`` (run_id, seq), in the order given."""
    rows: list[Any] = []
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        chunk = keys[start : start + _KEYS_PER_QUERY]
        values = ", ".join("(?, ?, ?)" for _ in chunk)
        flat = [part for i, (run_id, seq) in enumerate(chunk) for part in (i, run_id, seq)]
        rows += await fetch(
            f"""
            WITH k(i, run_id, seq) AS (VALUES {values})
            SELECT {columns} FROM k JOIN events e ON e.run_id = k.run_id AND e.seq = k.seq
            ORDER BY k.i
            """,
            flat,
        )
    return rows
