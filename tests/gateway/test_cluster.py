"""Several gateway processes: three ``runwire serve --redis --database`` on one Redis and one
PostgreSQL database, driven by real WebSocket and HTTP clients.

Any process serves any frame, so every check here crosses processes: a run started
through A is followed on B and C, aborted through C, listed and pushed everywhere, and
survives the SIGKILL of the process that drives it. Each trio of processes (the real
command, in child processes: :class:`bench.chaos.ServerProcess`) has a Redis key prefix and
a fresh database of its own. One trio serves the tests that kill nothing; a test that
kills a process starts its own, with a short lease so that a survivor ends the dead
process's runs quickly. Every server logs to a file, and a trio that logged an error fails
the test that stops it.

Subscribers check every event as it arrives (:class:`Received`): per run, each seq one
past the previous one, nothing after the run's one ``complete``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.chaos import UNLIMITED_SENDS, ServerProcess, history
from registry.memory import REPLAY_PAGE
from tests.servers import Databases

from .helpers import WAIT, Client, assert_run_stream
from .test_sse import read_until

# The module's trio lives in the module's event loop: its tests run there too.
pytestmark = pytest.mark.asyncio(loop_scope="module")

A, B, C = 0, 1, 2
USERS = ("alice", "bob")
# The lease of the trios whose processes get killed: short, so failover is quick.
KILL_LEASE = 2.0
# The shared trio kills nothing: the default lease, so that no run of it can be reaped
# because a loaded machine delayed a renewal.
SHARED_LEASE = 10.0
# A small replay buffer (and Redis stream): the longer runs here outgrow it, so replays
# from an old position read the log that another process wrote.
BUFFER = "64"
# Echo runs: one that streams three chunks and then runs until ended; a quick one.
HANG = {"chunks": 3, "delay_ms": 0, "hang": True}
QUICK = {"chunks": 3, "delay_ms": 0}
LONG_CHUNKS = 300


# The processes --------------------------------------------------------------------------


@dataclass
class Trio:
    """Three running gateway processes: A, B and C."""

    servers: list[ServerProcess]
    logs: list[Path]

    def client(
        self, index: int, user: str = "alice"
    ) -> contextlib.AbstractAsyncContextManager[Client]:
        return Client.connected(self.servers[index].ws_url(user))

    def http(self, index: int, user: str = "alice") -> httpx.AsyncClient:
        return self.servers[index].http(user)

    async def new_session(self, index: int, user: str = "alice") -> str:
        async with self.http(index, user) as http:
            response = await http.post("/api/sessions", json={})
            assert response.status_code == 201, response.text
            return str(response.json()["session_id"])

    def errors(self) -> list[str]:
        """The error lines the processes logged (JSON log lines)."""
        found = []
        for path in self.logs:
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    found.append(f"{path.name}: {line}")  # not a log line: a crash's output
                    continue
                if entry.get("level") in ("error", "critical"):
                    found.append(f"{path.name}: {line}")
        return found


@contextlib.asynccontextmanager
async def running_trio(
    redis_url: str, database_url: str, directory: Path, *, lease: float
) -> AsyncIterator[Trio]:
    """Start A, B and C on the database and a Redis prefix of their own; stop them after,
    and fail if any of them logged an error."""
    flags = [
        *("--redis", redis_url, "--database", database_url),
        *("--redis-prefix", f"t{uuid.uuid4().hex[:12]}", "--lease", str(lease)),
        *("--buffer-size", BUFFER, "--shutdown-grace", "0", "--log-format", "json"),
        *UNLIMITED_SENDS,
    ]
    logs = [directory / f"{name}.log" for name in "ABC"]
    servers = [
        ServerProcess(str(directory / "unused.db"), USERS, *flags, log=str(log)) for log in logs
    ]
    trio = Trio(servers, logs)
    try:
        started = await asyncio.gather(*(s.start() for s in servers), return_exceptions=True)
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        yield trio
    finally:
        await asyncio.gather(*(s.stop() for s in servers))
    assert trio.errors() == []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(
    redis_url: str, databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Trio]:
    """A, B and C for every test of the module that kills nothing (each uses sessions of
    its own)."""
    async with (
        databases.fresh() as name,
        running_trio(
            redis_url, databases.url(name), tmp_path_factory.mktemp("shared"), lease=SHARED_LEASE
        ) as trio,
    ):
        yield trio


@pytest_asyncio.fixture(loop_scope="module")
async def killable(redis_url: str, databases: Databases, tmp_path: Path) -> AsyncIterator[Trio]:
    """A, B and C of this test alone, with a short lease."""
    async with (
        databases.fresh() as name,
        running_trio(redis_url, databases.url(name), tmp_path, lease=KILL_LEASE) as trio,
    ):
        yield trio


# Following sessions ---------------------------------------------------------------------


class Received:
    """What one follower of a session got, however many connections it took, checked as
    it arrives: per run, seq 1 first and then each one past the previous one, nothing
    after the run's ``complete``. Runs are kept in arrival order."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.runs: dict[str, list[dict[str, Any]]] = {}

    def add(self, frame: dict[str, Any]) -> None:
        assert frame["session_id"] == self.session_id, frame
        run_id, seq = frame["run_id"], frame["seq"]
        events = self.runs.get(run_id)
        if events is None:
            events = self.runs[run_id] = []
            start = 0
        else:
            assert events[-1]["kind"] != "complete", f"{run_id}:{seq} after the run's complete"
            start = events[-1]["seq"]
        assert seq == start + 1, f"run {run_id}: seq {seq} after {start}"
        events.append(frame)

    def position(self) -> tuple[str, int] | None:
        if not self.runs:
            return None
        run_id = next(reversed(self.runs))
        return run_id, self.runs[run_id][-1]["seq"]

    def count(self, run_id: str) -> int:
        return len(self.runs.get(run_id, ()))

    def completed(self, run_id: str) -> bool:
        events = self.runs.get(run_id)
        return events is not None and events[-1]["kind"] == "complete"


async def subscribe(client: Client, received: Received) -> dict[str, Any]:
    """Subscribe from the follower's last position (the session's latest run from seq 0
    before it has any)."""
    position = received.position()
    if position is None:
        reply = await client.subscribe(received.session_id)
    else:
        reply = await client.subscribe(received.session_id, *position)
    assert reply["recovered"] is True, reply
    return reply


async def follow(client: Client, received: Received, done: Callable[[], bool]) -> None:
    """Read the client's events into ``received`` until ``done()``; after ``lagged``,
    resubscribe from the last position, as a client does."""
    while not done():
        frame = await client.next_of("event", "lagged")
        if frame["type"] == "lagged":
            assert frame["session_id"] == received.session_id
            await subscribe(client, received)
        else:
            received.add(frame)


async def until_complete(client: Client, received: Received, run_id: str) -> list[dict[str, Any]]:
    await follow(client, received, lambda: received.completed(run_id))
    return received.runs[run_id]


async def until_count(client: Client, received: Received, run_id: str, count: int) -> None:
    """Follow until the run has ``count`` events here, or has completed."""
    await follow(
        client,
        received,
        lambda: received.count(run_id) >= count or received.completed(run_id),
    )


async def push(client: Client, kind: str, session_id: str) -> dict[str, Any]:
    """The next ``kind`` push about the session (pushes about others are skipped)."""
    while True:
        frame = await client.next_of(kind)
        if frame["session_id"] == session_id:
            return frame


async def leg(trio: Trio, index: int, received: Received, run_id: str, take: int) -> dict[str, Any]:
    """Subscribe on process ``index`` from the last position, take ``take`` events of the
    run (fewer if it completes) and disconnect; the ``subscribed`` reply."""
    async with trio.client(index) as client:
        reply = await subscribe(client, received)
        await until_count(client, received, run_id, received.count(run_id) + take)
        return reply


async def hop(
    trio: Trio, received: Received, run_id: str, route: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """Follow the run through the processes of ``route`` in turn: on each, subscribe from
    the last position, take that many events and disconnect; then on the last process,
    resubscribe once more and read to the run's complete."""
    for index, take in route:
        await leg(trio, index, received, run_id, take)
    async with trio.client(route[-1][0]) as client:
        await subscribe(client, received)
        return await until_complete(client, received, run_id)


# Reading state --------------------------------------------------------------------------


async def eventually(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``condition()``, for what another process commits to the database:
    nothing signals that across processes, so this is a bounded polling fallback."""
    with anyio.fail_after(WAIT):
        while not await condition():  # noqa: ASYNC110 - no event crosses the process
            await anyio.sleep(0.02)


async def stored_run(trio: Trio, index: int, session_id: str, run_id: str) -> list[dict[str, Any]]:
    """The run's events in the log, read through process ``index`` once its ``complete``
    is there (the process that drives the run, or reaped it, writes them)."""
    events: list[dict[str, Any]] = []

    async def written() -> bool:
        nonlocal events
        log = await history(trio.servers[index], "alice", session_id)
        events = [event for event in log if event["run_id"] == run_id]
        return bool(events) and events[-1]["kind"] == "complete"

    await eventually(written)
    return events


async def session_json(trio: Trio, index: int, session_id: str) -> dict[str, Any]:
    async with trio.http(index) as http:
        response = await http.get(f"/api/sessions/{session_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


async def ws_runs(client: Client, status: str = "running") -> list[dict[str, Any]]:
    reply = await client.request({"type": "list_runs", "status": status})
    assert reply["type"] == "runs", reply
    runs: list[dict[str, Any]] = reply["runs"]
    return runs


async def http_runs(
    trio: Trio, index: int, status: str, user: str = "alice"
) -> list[dict[str, Any]]:
    async with trio.http(index, user) as http:
        response = await http.get("/api/runs", params={"status": status})
        assert response.status_code == 200, response.text
        runs: list[dict[str, Any]] = response.json()["runs"]
        return runs


def of_session(runs: list[dict[str, Any]], session_id: str) -> list[dict[str, Any]]:
    return [run for run in runs if run["session_id"] == session_id]


def outcomes(runs: list[dict[str, Any]]) -> list[tuple[str, str, str | None, int]]:
    """(run_id, status, outcome, last_seq) of each run, by run id (time-sortable)."""
    return sorted((r["run_id"], r["status"], r.get("outcome"), r["last_seq"]) for r in runs)


# 1. Following a run on other processes ---------------------------------------------------


async def test_a_run_started_through_a_reaches_subscribers_on_b_and_c_once(shared: Trio) -> None:
    session_id = await shared.new_session(C)
    async with shared.client(A) as a, shared.client(B) as b, shared.client(C) as c:
        followers = {b: Received(session_id), c: Received(session_id)}
        for client, received in followers.items():
            reply = await subscribe(client, received)
            assert (reply["run"], reply["is_processing"]) == (None, False)
        ack = await a.send_message(session_id, options={"chunks": 200, "delay_ms": 1})
        assert ack["status"] == "started"
        run_id = ack["run_id"]
        got = [await until_complete(client, r, run_id) for client, r in followers.items()]
        for events in got:
            assert_run_stream(events, run_id)
            assert len(events) == 203  # user_message, 200 chunks, text, complete
            assert events[0]["data"] == {"content": "hello"}
            assert events[-1]["data"]["reason"] == "done"
        # Redis numbers and stamps each event once: every process delivers the same frames.
        assert got[0] == got[1]
        # A late subscriber on any process gets the whole run (much of it from the log).
        for index in (A, B, C):
            async with shared.client(index) as late:
                received = Received(session_id)
                reply = await subscribe(late, received)
                assert reply["is_processing"] is False
                assert (reply["run"]["run_id"], reply["run"]["status"]) == (run_id, "completed")
                assert await until_complete(late, received, run_id) == got[0]
        # The log, written by A, read through B: the same run.
        assert await stored_run(shared, B, session_id, run_id) == got[0]
        # As Server-Sent Events through C.
        async with (
            shared.http(C) as http,
            http.stream("GET", f"/api/sessions/{session_id}/stream") as response,
        ):
            streamed, _ = await read_until(response)
        assert streamed == got[0]


async def test_a_subscriber_hopping_between_processes_gets_every_event_once(
    shared: Trio,
) -> None:
    """Disconnect mid-stream and resubscribe with the last position on another process,
    several times: the union is the run, each event once."""
    session_id = await shared.new_session(A)
    async with shared.client(A) as a, shared.client(C) as c:
        pace = Received(session_id)
        await subscribe(c, pace)
        ack = await a.send_message(session_id, options={"chunks": LONG_CHUNKS, "delay_ms": 2})
        run_id = ack["run_id"]
        received = Received(session_id)
        await leg(shared, B, received, run_id, 10)
        # Away for a while: back once the run is far past the replay buffer, so what it
        # missed comes mostly from the log that A writes.
        await until_count(c, pace, run_id, 200)
        reply = await leg(shared, C, received, run_id, 40)
        assert reply["replayed"] >= 190
        route = [(A, 5), (B, 30), (C, 1), (A, 30)]
        events = await hop(shared, received, run_id, route)
        assert_run_stream(events, run_id)
        assert len(events) == LONG_CHUNKS + 3
        assert events == await stored_run(shared, C, session_id, run_id)


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    start=st.sampled_from((A, B, C)),
    # Each hop moves to one of the two other processes and takes that many events there.
    hops=st.lists(st.tuples(st.sampled_from((1, 2)), st.integers(1, 120)), min_size=1, max_size=6),
)
async def test_random_hops_between_processes_lose_and_repeat_nothing(
    shared: Trio, start: int, hops: list[tuple[int, int]]
) -> None:
    session_id = await shared.new_session(start)
    async with shared.client(start) as sender:
        ack = await sender.send_message(session_id, options={"chunks": 150, "delay_ms": 1})
    run_id = ack["run_id"]
    route = []
    index = start
    for step, take in hops:
        index = (index + step) % 3
        route.append((index, take))
    events = await hop(shared, Received(session_id), run_id, route)
    assert_run_stream(events, run_id)
    assert len(events) == 153


async def test_a_replay_longer_than_a_page_comes_in_pages_from_another_process(
    shared: Trio,
) -> None:
    """A run of two and a bit replay pages, written by A and long gone from the buffers:
    from seq 0 on B it comes a page at a time, each ending in ``lagged`` at its last
    event, and resubscribing from there gets the rest, every event once."""
    chunks = 2 * REPLAY_PAGE + 500
    session_id = await shared.new_session(A)
    async with shared.client(A) as a:
        await a.send_message(session_id, options={"chunks": chunks, "delay_ms": 0})
        finished = await push(a, "run_finished", session_id)
    run_id = finished["run"]["run_id"]
    received = Received(session_id)
    replayed = []
    async with shared.client(B) as b:
        replayed.append((await subscribe(b, received))["replayed"])
        while not received.completed(run_id):
            frame = await b.next_of("event", "lagged")
            if frame["type"] == "event":
                received.add(frame)
                continue
            assert (frame["run_id"], frame["last_seq"]) == (run_id, received.count(run_id))
            replayed.append((await subscribe(b, received))["replayed"])
    assert_run_stream(received.runs[run_id], run_id)
    assert len(received.runs[run_id]) == chunks + 3
    assert replayed == [REPLAY_PAGE, REPLAY_PAGE, chunks + 3 - 2 * REPLAY_PAGE]


# 2. Abort --------------------------------------------------------------------------------


async def test_abort_through_c_ends_a_run_started_through_a_once_everywhere(
    shared: Trio,
) -> None:
    session_id = await shared.new_session(A)
    async with shared.client(A) as a, shared.client(B) as b, shared.client(C) as c:
        clients = (a, b, c)
        followers = {client: Received(session_id) for client in clients}
        for client, received in followers.items():
            await subscribe(client, received)
        ack = await a.send_message(session_id, options=HANG)
        run_id = ack["run_id"]
        for client, received in followers.items():
            await until_count(client, received, run_id, 4)  # the run now hangs
        # A client's checkpoint through B joins the run that A drives.
        async with shared.http(B) as http:
            response = await http.post(
                f"/api/sessions/{session_id}/checkpoint", json={"label": "here"}
            )
        assert response.status_code == 201, response.text
        assert response.json() == {"session_id": session_id, "run_id": run_id, "seq": 5}
        reply = await c.request({"type": "abort", "session_id": session_id})
        assert reply["type"] == "ack", reply
        assert (reply["op"], reply["run_id"], reply["last_seq"]) == ("abort", run_id, 6)
        for client, received in followers.items():
            events = await until_complete(client, received, run_id)
            assert_run_stream(events, run_id)
            assert [e["kind"] for e in events[3:]] == ["text_delta", "checkpoint", "complete"]
            assert events[4]["data"] == {"label": "here", "source": "client"}
            assert events[-1]["data"]["aborted"] is True
            assert events[-1]["data"]["reason"] == "aborted"
        assert await stored_run(shared, C, session_id, run_id) == events
        for index, client in enumerate(clients):
            assert of_session(await ws_runs(client), session_id) == []
            assert of_session(await http_runs(shared, index, "running"), session_id) == []
            [run] = of_session(await http_runs(shared, index, "all"), session_id)
            assert (run["run_id"], run["status"], run["outcome"]) == (
                run_id,
                "completed",
                "aborted",
            )
            again = await client.request({"type": "abort", "session_id": session_id})
            assert again["code"] == "NO_ACTIVE_RUN"
        # Nothing more of the run: the next one follows its complete on every process.
        ack = await b.send_message(session_id, options=QUICK)
        for client, received in followers.items():
            assert_run_stream(await until_complete(client, received, ack["run_id"]), ack["run_id"])
            assert list(received.runs) == [run_id, ack["run_id"]]


async def test_abort_racing_the_providers_own_complete_never_yields_two(shared: Trio) -> None:
    session_id = await shared.new_session(A)
    async with shared.client(A) as a, shared.client(B) as b, shared.client(C) as c:
        followers = {client: Received(session_id) for client in (a, b, c)}
        for client, received in followers.items():
            await subscribe(client, received)
        run_ids = []
        # Short runs, with and without pauses: the provider's own complete comes before
        # the abort, or after it, or while it is being handled.
        shapes = [(0, 0), (1, 0), (5, 0), (1, 1), (2, 2), (3, 1), (5, 1), (10, 1)] * 2
        for chunks, delay_ms in shapes:
            options = {"chunks": chunks, "delay_ms": delay_ms, "extra_complete": True}
            ack = await a.send_message(session_id, options=options)
            assert ack["status"] == "started", ack
            run_id = ack["run_id"]
            run_ids.append(run_id)
            # Right behind the send, through another process: the abort lands before,
            # during or after the provider's own complete (and the extra one).
            reply = await c.request({"type": "abort", "session_id": session_id})
            for client, received in followers.items():
                events = await until_complete(client, received, run_id)
                assert_run_stream(events, run_id)
                end = events[-1]
                if reply["type"] == "ack":
                    assert (reply["run_id"], reply["last_seq"]) == (run_id, end["seq"])
                    assert end["data"]["reason"] == "aborted"
                else:
                    assert reply["code"] == "NO_ACTIVE_RUN", reply
                    assert end["data"]["reason"] == "done"
                    assert len(events) == chunks + 3
        # Each run once, in order, on every process; the log has each with one complete.
        stored = [await stored_run(shared, B, session_id, run_id) for run_id in run_ids]
        for received in followers.values():
            assert list(received.runs) == run_ids
            assert list(received.runs.values()) == stored


async def test_abort_with_clear_queue_ends_the_runs_queued_through_other_processes(
    shared: Trio,
) -> None:
    session_id = await shared.new_session(A)
    async with shared.client(A) as a, shared.client(B) as b, shared.client(C) as c:
        received = Received(session_id)
        await subscribe(a, received)
        first = await a.send_message(session_id, options=HANG)
        queued = [
            await client.send_message(session_id, multitask="enqueue", options=QUICK)
            for client in (b, c)
        ]
        assert [ack["status"] for ack in queued] == ["queued", "queued"]
        async with shared.http(A) as http:
            response = await http.post(
                f"/api/sessions/{session_id}/abort", json={"clear_queue": True}
            )
        assert response.status_code == 200, response.text
        assert response.json()["run_id"] == first["run_id"]
        order = [first["run_id"], *(ack["run_id"] for ack in queued)]
        await until_complete(a, received, order[-1])
        assert list(received.runs) == order
        # The queued runs never ran: each is its prompt and an aborted complete.
        for run_id in order[1:]:
            events = received.runs[run_id]
            assert [e["kind"] for e in events] == ["user_message", "complete"]
            assert events[-1]["data"]["reason"] == "aborted"
        for run_id in order:
            assert await stored_run(shared, B, session_id, run_id) == received.runs[run_id]
        for index in (A, B, C):
            runs = of_session(await http_runs(shared, index, "all"), session_id)
            assert {(r["status"], r["outcome"]) for r in runs} == {("completed", "aborted")}
            assert len(runs) == 3


# 3. Listing runs, and isolation ------------------------------------------------------------


async def test_every_process_lists_the_running_run_to_its_owner_only(shared: Trio) -> None:
    session_id = await shared.new_session(A)
    async with (
        shared.client(A) as a,
        shared.client(B) as b,
        shared.client(C) as c,
        shared.client(B, "bob") as bob_b,
    ):
        ack = await a.send_message(session_id, options=HANG)
        run_id = ack["run_id"]
        # One subscriber on B and one on C: the summaries count both, on every process.
        for client in (b, c):
            received = Received(session_id)
            reply = await subscribe(client, received)
            assert reply["is_processing"] is True
            assert (reply["run"]["run_id"], reply["run"]["status"]) == (run_id, "running")
        for index, client in enumerate((a, b, c)):
            for runs in (await ws_runs(client), await http_runs(shared, index, "running")):
                [run] = of_session(runs, session_id)
                assert (run["run_id"], run["status"], run["provider"]) == (
                    run_id,
                    "running",
                    "echo",
                )
                assert (run["completed_at"], run["subscribers"]) == (None, 2)
            session = await session_json(shared, index, session_id)
            assert session["running_run_id"] == run_id
        # Bob, on any process, sees none of it and cannot touch it.
        for index in (A, B, C):
            async with shared.client(index, "bob") as bob, shared.http(index, "bob") as http:
                assert await ws_runs(bob, "all") == []
                assert await http_runs(shared, index, "all", "bob") == []
                assert (await http.get("/api/sessions")).json() == {"sessions": [], "next": None}
                for frame in (
                    {"type": "subscribe"},
                    {"type": "subscribe", "run_id": run_id, "after_seq": 1},
                    {"type": "abort"},
                    {"type": "send", "content": "x"},
                    {"type": "send", "content": "x", "multitask": "interrupt"},
                    {"type": "send", "content": "x", "multitask": "enqueue"},
                ):
                    reply = await bob.request({**frame, "session_id": session_id})
                    assert (reply["type"], reply["code"]) == ("error", "SESSION_NOT_FOUND")
                for method, path in (
                    ("GET", ""),
                    ("GET", "/events"),
                    ("POST", "/abort"),
                    ("DELETE", ""),
                ):
                    response = await http.request(method, f"/api/sessions/{session_id}{path}")
                    assert response.status_code == 404, (method, path)
        # Alice's run is untouched, and still running everywhere.
        for index in (A, B, C):
            [run] = of_session(await http_runs(shared, index, "running"), session_id)
            assert run["run_id"] == run_id
        await c.request({"type": "abort", "session_id": session_id})
        await push(b, "run_finished", session_id)
        # Pushes about Alice's run went to her connections only: Bob's connection on the
        # same process answers a ping with nothing of hers queued before the pong.
        assert (await bob_b.request({"type": "ping"}))["type"] == "pong"
        assert [f for f in bob_b.backlog if f.get("session_id") == session_id] == []


# 4. Multitask and idempotency across processes ---------------------------------------------


async def test_reject_enqueue_and_interrupt_hold_across_processes(shared: Trio) -> None:
    session_id = await shared.new_session(A)
    async with shared.client(A) as a, shared.client(B) as b, shared.client(C) as c:
        followers = {client: Received(session_id) for client in (a, c)}
        for client, received in followers.items():
            await subscribe(client, received)
        first = await a.send_message(session_id, content="1", options=HANG)
        for client, received in followers.items():
            await until_count(client, received, first["run_id"], 4)  # the run now hangs
        refused = await b.send_message(session_id, content="x", options=QUICK)
        assert (refused["type"], refused["code"]) == ("error", "RUN_IN_PROGRESS")
        assert refused["session_id"] == session_id
        queued = await b.send_message(
            session_id, content="2", multitask="enqueue", options={**HANG, "chunks": 2}
        )
        assert queued["status"] == "queued", queued
        for index in (A, B, C):
            runs = of_session(await http_runs(shared, index, "all"), session_id)
            assert [(r["run_id"], r["status"]) for r in runs] in (
                [(first["run_id"], "running"), (queued["run_id"], "queued")],
                [(queued["run_id"], "queued"), (first["run_id"], "running")],
            )
        # The running run ends (aborted through C): the queued one starts, driven by B.
        await c.request({"type": "abort", "session_id": session_id})
        for client, received in followers.items():
            await until_count(client, received, queued["run_id"], 3)
        # An interrupt through C ends it and starts the new run at once.
        jumped = await c.send_message(session_id, content="3", multitask="interrupt", options=QUICK)
        assert jumped["status"] == "started", jumped
        order = [first["run_id"], queued["run_id"], jumped["run_id"]]
        for client, received in followers.items():
            await until_complete(client, received, jumped["run_id"])
            assert list(received.runs) == order
            streams = list(received.runs.values())
            for run_id, events in zip(order, streams, strict=True):
                assert_run_stream(events, run_id)
            assert [events[0]["data"]["content"] for events in streams] == ["1", "2", "3"]
            ends = [events[-1]["data"] for events in streams]
            assert [(e["reason"], e["aborted"]) for e in ends] == [
                ("aborted", True),
                ("interrupted", True),
                ("done", False),
            ]
        expected = [
            (first["run_id"], "completed", "aborted", 5),
            (queued["run_id"], "completed", "interrupted", 4),
            (jumped["run_id"], "completed", "done", 6),
        ]
        for index in (A, B, C):
            assert (
                outcomes(of_session(await http_runs(shared, index, "all"), session_id)) == expected
            )


async def test_a_resent_client_msg_id_is_a_duplicate_on_every_process(shared: Trio) -> None:
    session_id = await shared.new_session(A)
    async with shared.client(A) as a, shared.client(B) as b, shared.client(C) as c:
        received = Received(session_id)
        await subscribe(b, received)
        first = await a.send_message(session_id, client_msg_id="m1", options=HANG)
        assert first["status"] == "started"
        # While it runs: a resend through another process, whatever its policy, finds it
        # (and an interrupt resent does not interrupt it).
        for client, policy in ((b, "reject"), (c, "enqueue"), (b, "interrupt")):
            again = await client.send_message(
                session_id, client_msg_id="m1", content="other", multitask=policy
            )
            assert (again["status"], again["run_id"]) == ("duplicate", first["run_id"])
        # A queued send is found on another process too.
        queued = await c.send_message(
            session_id, client_msg_id="m2", multitask="enqueue", options=QUICK
        )
        assert queued["status"] == "queued"
        again = await a.send_message(session_id, client_msg_id="m2", multitask="enqueue")
        assert (again["status"], again["run_id"]) == ("duplicate", queued["run_id"])
        await until_count(b, received, first["run_id"], 4)
        assert (await b.request({"type": "abort", "session_id": session_id}))["type"] == "ack"
        await until_complete(b, received, queued["run_id"])
        assert list(received.runs) == [first["run_id"], queued["run_id"]]
        assert received.runs[first["run_id"]][-1]["data"]["reason"] == "aborted"
        assert received.runs[first["run_id"]][0]["data"] == {
            "content": "hello",
            "client_msg_id": "m1",
        }
        # After both completed, on every process.
        for client in (a, b, c):
            for msg_id, original in (("m1", first), ("m2", queued)):
                again = await client.send_message(session_id, client_msg_id=msg_id)
                assert (again["status"], again["run_id"]) == ("duplicate", original["run_id"])
        # A new id starts a new run.
        fresh = await c.send_message(session_id, client_msg_id="m3", options=QUICK)
        assert fresh["status"] == "started"
        await until_complete(b, received, fresh["run_id"])
        assert len(received.runs) == 3


# 5. Pushes -------------------------------------------------------------------------------


async def test_run_pushes_reach_the_owners_connections_on_every_process(shared: Trio) -> None:
    async with shared.client(A) as a, shared.client(B) as b, shared.client(C) as c:
        ack = await a.send_message(options=QUICK)
        session_id, run_id = ack["session_id"], ack["run_id"]
        for client in (a, b, c):  # none of them subscribed
            started = await push(client, "run_started", session_id)
            assert (started["run"]["run_id"], started["run"]["status"]) == (run_id, "running")
            finished = await push(client, "run_finished", session_id)
            run = finished["run"]
            assert (run["run_id"], run["status"], run["outcome"]) == (run_id, "completed", "done")
            assert run["last_seq"] == 6


async def test_deleting_a_session_through_c_tells_the_owners_connections_on_a_and_b(
    shared: Trio,
) -> None:
    session_id = await shared.new_session(A)
    async with shared.client(A) as a, shared.client(B) as b, shared.client(C) as c:
        received = Received(session_id)
        await subscribe(a, received)
        ack = await a.send_message(session_id, options=HANG)  # driven by A, running
        await until_count(a, received, ack["run_id"], 4)
        async with shared.http(C) as http:
            response = await http.delete(f"/api/sessions/{session_id}")
            assert response.status_code == 204, response.text
        for client in (a, b):
            assert await push(client, "session_deleted", session_id) == {
                "type": "session_deleted",
                "session_id": session_id,
            }
        for index, client in enumerate((a, b, c)):
            assert of_session(await ws_runs(client), session_id) == []
            async with shared.http(index) as http:
                response = await http.get(f"/api/sessions/{session_id}")
                assert response.status_code == 404
                response = await http.get(f"/api/sessions/{session_id}/events")
                assert response.status_code == 404
            for frame in ({"type": "subscribe"}, {"type": "send", "content": "x"}):
                reply = await client.request({**frame, "session_id": session_id})
                assert reply["code"] == "SESSION_NOT_FOUND"
        # Its runs went with it: no process lists them any more (as with one process).
        for index in (A, B, C):
            assert of_session(await http_runs(shared, index, "all"), session_id) == []


# 6. A process dies -------------------------------------------------------------------------


async def test_sigkill_of_the_driving_process_ends_its_run_once_on_the_survivors(
    killable: Trio,
) -> None:
    trio = killable
    session_id = await trio.new_session(B)
    async with trio.client(A) as a, trio.client(B) as b, trio.client(C) as c:
        followers = {b: Received(session_id), c: Received(session_id)}
        for client, received in followers.items():
            await subscribe(client, received)
        # A run that streams until ended, driven by A; killed mid-stream.
        ack = await a.send_message(session_id, options={"chunks": 100_000, "delay_ms": 2})
        run_id = ack["run_id"]
        for client, received in followers.items():
            await until_count(client, received, run_id, 100)
        await trio.servers[A].kill()
        got = [await until_complete(client, r, run_id) for client, r in followers.items()]
        for events in got:
            assert_run_stream(events, run_id)
            assert events[-1]["data"]["reason"] == "server_restart"
            assert events[-1]["data"]["success"] is False
        assert got[0] == got[1]
        # The survivor that reaped the run wrote what A had not: the log has it whole.
        assert await stored_run(trio, B, session_id, run_id) == got[0]
        async with trio.client(C) as late:
            received = Received(session_id)
            await subscribe(late, received)
            assert await until_complete(late, received, run_id) == got[0]
        for index in (B, C):
            [run] = of_session(await http_runs(trio, index, "all"), session_id)
            assert (run["status"], run["outcome"]) == ("completed", "server_restart")
            assert run["last_seq"] == len(got[0])
        # The lease is gone: a send through B starts the session's next run.
        again = await b.send_message(session_id, options=QUICK)
        assert again["status"] == "started", again
        for client, received in followers.items():
            await until_complete(client, received, again["run_id"])
            assert list(received.runs) == [run_id, again["run_id"]]


async def test_a_hanging_run_of_a_killed_process_ends_on_the_last_survivor(
    killable: Trio,
) -> None:
    """Kill A while its run hangs, then B while the run sent through B hangs: C ends each
    with server_restart, and its subscribers had been marked as watching."""
    trio = killable
    session_id = await trio.new_session(C)
    async with trio.client(A) as a, trio.client(B) as b, trio.client(C) as c:
        received = Received(session_id)
        await subscribe(c, received)
        run_ids = []
        for index, sender in ((A, a), (B, b)):
            ack = await sender.send_message(session_id, options=HANG)
            run_id = ack["run_id"]
            run_ids.append(run_id)
            await until_count(c, received, run_id, 4)
            await trio.servers[index].kill()
            events = await until_complete(c, received, run_id)
            assert_run_stream(events, run_id)
            assert len(events) == 5
            assert events[-1]["data"]["reason"] == "server_restart"
            assert await stored_run(trio, C, session_id, run_id) == events
        last = await c.send_message(session_id, options=QUICK)
        await until_complete(c, received, last["run_id"])
        assert list(received.runs) == [*run_ids, last["run_id"]]
        # Someone was subscribed when each run ended: the session is not unread.
        assert (await session_json(trio, C, session_id))["has_unread"] is False


# 7. Unread marks ---------------------------------------------------------------------------


async def test_has_unread_follows_subscriptions_on_any_process(shared: Trio) -> None:
    watched = await shared.new_session(A)
    unwatched = await shared.new_session(A)
    async with shared.client(A) as a, shared.client(C) as c:
        received = Received(watched)
        await subscribe(c, received)
        # Both runs driven by A, the watched one first (A writes their ends in order).
        ack = await a.send_message(watched, options=QUICK)
        await until_complete(c, received, ack["run_id"])
        ack = await a.send_message(unwatched, options=QUICK)
        await push(a, "run_finished", unwatched)

        async def unread() -> bool:
            return bool((await session_json(shared, B, unwatched))["has_unread"])

        await eventually(unread)
        assert (await session_json(shared, B, watched))["has_unread"] is False
        async with shared.http(C) as http:
            assert (await http.post(f"/api/sessions/{unwatched}/read")).status_code == 204
        assert (await session_json(shared, A, unwatched))["has_unread"] is False
