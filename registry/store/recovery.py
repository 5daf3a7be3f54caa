"""Ending the runs a dead process left running.

A run's ``complete`` is written by the process that drives it; a process that died never
wrote it. At open, each run still ``running`` gets one ``complete`` (``server_restart``)
after its last stored event, is marked completed, and its session unread (nobody was
subscribed across the crash). The caller holds the transaction, and whatever lock keeps a
second process from recovering the same runs at once.
"""

from __future__ import annotations

import msgspec

from ..events import COMPLETE, complete_data
from .sql import Tx


async def end_running_runs(tx: Tx, now: int) -> int:
    """End every run the database says is running, in ``tx``; how many there were."""
    encode = msgspec.json.Encoder().encode
    rows = await tx.fetch(
        """
        SELECT r.run_id, r.session_id,
            (SELECT COALESCE(MAX(e.seq), 0) FROM events e WHERE e.run_id = r.run_id)
        FROM runs r WHERE r.status = 'running' ORDER BY r.ord
        """,
        {},
    )
    for run_id, session_id, last in rows:
        data = complete_data(session_id, reason="server_restart", exit_code=1)
        params = {
            "run": run_id,
            "session": session_id,
            "seq": int(last) + 1,
            "kind": COMPLETE,
            "now": now,
            "data": encode(data).decode(),
        }
        await tx.execute(
            "INSERT INTO events (run_id, seq, kind, ts, data)"
            " VALUES (:run, :seq, :kind, :now, :data)",
            params,
        )
        await tx.execute(
            """
            UPDATE runs SET status = 'completed', outcome = 'server_restart', exit_code = 1,
                completed_at = :now, last_seq = :seq
            WHERE run_id = :run
            """,
            params,
        )
        await tx.execute(
            f"""
            UPDATE sessions SET updated_at = {tx.sql.greatest("updated_at", ":now")},
                unread_since = COALESCE(unread_since, :now)
            WHERE session_id = :session
            """,
            params,
        )
    return len(rows)
