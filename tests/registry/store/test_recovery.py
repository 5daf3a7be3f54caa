"""Crash recovery: runs left running get exactly one server_restart complete at open."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from pathlib import Path

import anyio
from anyio.streams.text import TextReceiveStream

from registry import MemoryRegistry, Position
from registry.store import SQLiteStore

from .conftest import Backend, rows

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = Path(__file__).resolve().parents[3]


async def completes(backend: Backend, run_id: str) -> list[tuple[int, dict[str, object]]]:
    return [(seq, data) for seq, kind, data in await backend.events(run_id) if kind == "complete"]


async def test_a_run_left_running_is_ended_once_at_open(backend: Backend) -> None:
    store = await backend.open()
    sid = (await store.create_session(owner="ann", provider="echo")).session_id
    registry = MemoryRegistry(store=store)
    run_id = (await registry.start(sid, owner="ann", content="q")).run_id
    registry.publish(sid, "text", {"text": "partial"})
    # The store closes but the run never completes: as if the server died here.
    await store.close()
    assert await backend.rows("SELECT status FROM runs") == [("running",)]

    for _ in range(2):  # a second open finds nothing left to recover
        store = await backend.open()
        try:
            summary = await store.get_run(run_id)
            assert summary is not None
            assert summary.status == "completed"
            assert summary.outcome == "server_restart"
            assert summary.last_seq == 3
            session = await store.get_session(sid, owner="ann")
            assert session is not None
            assert session.running_run_id is None
            assert session.has_unread
        finally:
            await store.close()
    assert await completes(backend, run_id) == [
        (
            3,
            {
                "exit_code": 1,
                "success": False,
                "aborted": False,
                "reason": "server_restart",
                "actual_session_id": sid,
            },
        )
    ]
    assert await backend.rows("SELECT exit_code, outcome FROM runs") == [(1, "server_restart")]


async def test_recovery_reports_how_many_runs_it_ended(backend: Backend) -> None:
    store = await backend.open()
    registry = MemoryRegistry(store=store)
    for _ in range(3):
        sid = (await store.create_session(owner="ann", provider="echo")).session_id
        await registry.start(sid, owner="ann", content="q")
    await store.close()
    store = await backend.open()
    await store.close()
    assert store.stats.recovered_runs == 3
    assert await backend.rows("SELECT COUNT(*) FROM runs WHERE status = 'running'") == [(0,)]


async def test_sigkill_mid_run_loses_nothing_that_was_flushed(db_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await anyio.open_process(
        [sys.executable, str(CHILD), str(db_path)], env=env, cwd=str(ROOT)
    )
    reports: list[tuple[str, str, int]] = []
    try:
        assert process.stdout is not None
        buffered = ""
        with anyio.fail_after(30):
            async for chunk in TextReceiveStream(process.stdout):
                buffered += chunk
                *lines, buffered = buffered.split("\n")
                for line in lines:
                    _, sid, run_id, seq = line.split()
                    reports.append((sid, run_id, int(seq)))
                if len(reports) >= 5:
                    break
        process.send_signal(signal.SIGKILL)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.aclose()
    assert process.returncode == -signal.SIGKILL
    sid, run_id, flushed = reports[-1]

    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    store = await SQLiteStore.open(db_path)
    try:
        assert store.stats.recovered_runs == 1
        history = await store.read_history(sid, None, None)
        assert history is not None
        seqs = [e.seq for e in history]
        # Every event up to the last reported flush is there, once, in order, no gap ...
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) > flushed
        assert history[0].kind == "user_message"
        assert all(e.kind == "text_delta" for e in history[1:-1])
        # ... and the run ends with exactly one complete, after the last stored event.
        assert history[-1].kind == "complete"
        assert history[-1].data["reason"] == "server_restart"
        assert [e.kind for e in history].count("complete") == 1
        summary = await store.latest_run(sid)
        assert summary is not None
        assert (summary.run_id, summary.status, summary.outcome) == (
            run_id,
            "completed",
            "server_restart",
        )
        assert summary.last_seq == seqs[-1]
        # Reads from the log work as a subscriber would use them.
        tail = await store.read_history(sid, Position(run_id, flushed), None)
        assert tail is not None
        assert tail[0].seq == flushed + 1
    finally:
        await store.close()
    assert rows(db_path, "SELECT SUM(span) FROM events") == [(len(seqs),)]
