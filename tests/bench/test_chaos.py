"""Short runs of the soak, crash and abuse programs, so they cannot rot, and the checks
they rely on, shown to catch what they are for.

Each program starts the real server in its own process and drives it over loopback; the
figures they print are measured by running them in full (``python -m bench.soak`` ...).
Only counts are asserted here, never times.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from bench.abuse import abuse
from bench.chaos import Follower, ServerProcess, Violations, check_accepted, check_log
from bench.chaos import check_received as check_follower
from bench.crash import crash
from bench.soak import soak


async def test_soak_short_run_finds_nothing_wrong() -> None:
    figures = await soak(seconds=3, sessions=6, subscribers=2, run_ttl=1, warmup=1, seed=1)
    assert figures.violation_sample == []
    assert figures.violations == 0
    assert figures.runs > 0
    assert figures.events_delivered > figures.runs
    assert figures.reconnects > 0
    assert figures.aborts > 0


async def test_crash_short_run_recovers_every_client() -> None:
    figures = await crash(crashes=2, sessions=4, subscribers=2, max_load_s=1.0, seed=1)
    assert figures.violation_sample == []
    assert figures.crashes == 2
    # Each round's long run was running at the kill.
    assert figures.server_restart_completes >= 2
    assert figures.events_checked > 0


async def test_abuse_short_run_keeps_the_server_up_and_every_limit() -> None:
    figures = await abuse(seconds=5, rate=100, stallers_count=3)
    assert figures["violation_sample"] == []
    assert figures["server_up"] is True
    assert figures["flood_errors"] == figures["flood_frames"] > 0
    assert figures["stallers_lagged"] == figures["lagged_subscriptions"] == 3
    assert figures["rate_limited"] > 0
    assert figures["snoop_attempts"] > 0


# The checks themselves: each must flag what it exists to catch.


def event(
    run_id: str, seq: int, kind: str = "text_delta", data: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "type": "event",
        "session_id": "s",
        "run_id": run_id,
        "seq": seq,
        "kind": kind,
        "ts": 0,
        "data": data if data is not None else {"text": str(seq)},
    }


def run_log(run_id: str, length: int, msg_id: str = "m") -> list[dict[str, Any]]:
    events = [event(run_id, 1, "user_message", {"content": "x", "client_msg_id": msg_id})]
    events += [event(run_id, seq) for seq in range(2, length)]
    events.append(event(run_id, length, "complete", {"reason": "done"}))
    return events


def follower(violations: Violations) -> Follower:
    return Follower(ServerProcess(":memory:", []), "u", "s", violations, random.Random(0))


@pytest.mark.parametrize(
    ("seqs", "problem"),
    [([1, 2, 4], "seq 4 after 2"), ([1, 2, 2], "seq 2 after 2"), ([2], "seq 2 after 0")],
)
def test_a_follower_flags_gaps_and_duplicates(seqs: list[int], problem: str) -> None:
    violations = Violations()
    watcher = follower(violations)
    for seq in seqs:
        watcher._event(event("r1", seq))
    assert any(problem in v for v in violations.sample), violations.sample


def test_a_follower_flags_an_event_after_complete() -> None:
    violations = Violations()
    watcher = follower(violations)
    for frame in run_log("r1", 3):
        watcher._event(frame)
    watcher._event(event("r1", 4, "complete"))
    assert any("after complete" in v for v in violations.sample)


def test_received_content_must_match_the_log() -> None:
    violations = Violations()
    watcher = follower(violations)
    log = run_log("r1", 4)
    for frame in log:
        watcher._event({**frame, "data": {"other": 1}} if frame["seq"] == 2 else frame)
    check_follower(watcher, log)
    assert any("differs from the log" in v for v in violations.sample)


def test_a_follower_that_missed_a_later_run_is_flagged() -> None:
    violations = Violations()
    watcher = follower(violations)
    log = run_log("r1", 3) + run_log("r2", 3, "m2") + run_log("r3", 3, "m3")
    for frame in log:
        if frame["run_id"] != "r2":
            watcher._event(frame)
    check_follower(watcher, log)
    assert any("missed runs" in v for v in violations.sample)


def test_the_log_checks_flag_two_completes_and_lost_sends() -> None:
    violations = Violations()
    log = run_log("r1", 3)
    check_log("s", [*log, event("r1", 4, "complete")], violations)
    assert any("2 completes" in v for v in violations.sample)
    check_accepted("s", log, {"m": "r1", "lost": "r9"}, violations)
    assert any("lost -> r9 is not in the log" in v for v in violations.sample)
