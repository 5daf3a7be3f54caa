"""Runs through the gateway: abort, idempotency, multitask policies, session status, pushes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from providers import EchoProvider, ProviderRegistry
from registry import LocalRegistry

from .helpers import Served, assert_run_stream, make_settings, serve

HANG = {"chunks": 2, "delay_ms": 0, "hang": True}


class Stoppable:
    """A provider that streams one event, then waits until cancelled, and says so."""

    name = "stoppable"

    def __init__(self) -> None:
        self.stopped: anyio.Event | None = None

    async def stream(self, request: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.stopped = anyio.Event()
        try:
            yield "text_delta", {"text": "working"}
            await anyio.sleep_forever()
        finally:
            self.stopped.set()


async def test_abort_by_frame_completes_once_for_every_subscriber_and_stops_provider(
    tmp_path: Path,
) -> None:
    stoppable = Stoppable()
    providers = ProviderRegistry([EchoProvider(), stoppable])
    async with (
        serve(make_settings(str(tmp_path / "db")), providers=providers) as server,
        server.client() as tab1,
        server.client() as tab2,
    ):
        ack = await tab1.send_message(provider="stoppable")
        session_id, run_id = ack["session_id"], ack["run_id"]
        await tab1.subscribe(session_id)
        await tab2.subscribe(session_id)
        # user_message, text_delta: the provider is running.
        seen = {tab1: [], tab2: [await tab2.next_of("event"), await tab2.next_of("event")]}
        reply = await tab2.request({"type": "abort", "session_id": session_id})
        assert (reply["type"], reply["op"]) == ("ack", "abort")
        assert (reply["session_id"], reply["run_id"], reply["last_seq"]) == (session_id, run_id, 3)
        assert stoppable.stopped is not None
        await stoppable.stopped.wait()
        for tab in (tab1, tab2):
            events = seen[tab] + await tab.events_until_complete()
            assert_run_stream(events, run_id)
            assert events[-1]["data"]["aborted"] is True
            assert events[-1]["data"]["reason"] == "aborted"
        runs = await tab1.request({"type": "list_runs"})
        assert runs["runs"] == []
        again = await tab1.request({"type": "abort", "session_id": session_id})
        assert again["code"] == "NO_ACTIVE_RUN"
        # Nothing more arrives for the run: a ping's pong is the next frame.
        tab1.backlog = [f for f in tab1.backlog if f["type"] != "run_finished"]
        pong = await tab1.request({"type": "ping"})
        assert pong["type"] == "pong"
        assert not [f for f in tab1.backlog if f["type"] == "event"]


async def test_abort_by_http(server: Served) -> None:
    async with server.client() as client, server.http() as http:
        ack = await client.send_message(options=HANG)
        session_id = ack["session_id"]
        response = await http.post(f"/api/sessions/{session_id}/abort")
        assert response.status_code == 200
        body = response.json()
        assert (body["session_id"], body["run_id"]) == (session_id, ack["run_id"])
        await client.subscribe(session_id)
        events = await client.events_until_complete()
        assert events[-1]["data"]["reason"] == "aborted"
        assert body["last_seq"] == events[-1]["seq"]
        again = await http.post(f"/api/sessions/{session_id}/abort")
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "NO_ACTIVE_RUN"
        runs = await http.get("/api/runs")
        assert runs.json() == {"runs": []}


@pytest.mark.parametrize("chunks", [0, 1, 2, 5, 20])
async def test_abort_racing_the_providers_own_complete_never_yields_two(
    server: Served, chunks: int
) -> None:
    async with server.client() as client:
        options = {"chunks": chunks, "delay_ms": 0, "extra_complete": True}
        ack = await client.send_message(options=options)
        session_id = ack["session_id"]
        # The abort goes out right behind the send: it lands before, during or after the
        # provider's own complete (and the extra one the option asks for).
        await client.send({"type": "abort", "session_id": session_id, "id": "race"})
        reply = await client.next_of("ack", "error")
        assert reply["id"] == "race"
        assert reply.get("code", "NO_ACTIVE_RUN") == "NO_ACTIVE_RUN"
        await client.subscribe(session_id)
        events = await client.events_until_complete()
        assert_run_stream(events, ack["run_id"])
        pong = await client.request({"type": "ping"})
        assert pong["type"] == "pong"
        assert not [f for f in client.backlog if f["type"] == "event"]


async def test_idempotent_send_returns_the_original_run(tmp_path: Path) -> None:
    settings = replace(make_settings(str(tmp_path / "db")), run_ttl=0)
    async with serve(settings) as server, server.client() as client:
        first = await client.send_message(options={"chunks": 3, "delay_ms": 0})
        session_id = first["session_id"]
        again = await client.send_message(session_id, client_msg_id="m1", options={"chunks": 2})
        assert again["status"] == "started"
        duplicate = await client.send_message(session_id, client_msg_id="m1", content="other")
        assert duplicate["status"] == "duplicate"
        assert duplicate["run_id"] == again["run_id"]
        await client.subscribe(session_id, run_id=again["run_id"])
        events = await client.events_until_complete(again["run_id"])
        assert events[0]["data"] == {"content": "hello", "client_msg_id": "m1"}
        # After eviction the store remembers the id.
        registry = cast(LocalRegistry, server.gateway.registry).memory
        await server.gateway.store.flush()
        registry.sweep()
        assert registry.get_run(again["run_id"]) is None
        async with server.client() as other:
            later = await other.send_message(session_id, client_msg_id="m1")
            assert (later["status"], later["run_id"]) == ("duplicate", again["run_id"])


async def test_reject_policy_refuses_a_second_send(server: Served) -> None:
    async with server.client() as client:
        ack = await client.send_message(options=HANG)
        reply = await client.send_message(ack["session_id"])
        assert reply["type"] == "error"
        assert reply["code"] == "RUN_IN_PROGRESS"
        assert reply["session_id"] == ack["session_id"]


async def test_enqueue_policy_runs_in_order_and_is_bounded(tmp_path: Path) -> None:
    settings = replace(make_settings(str(tmp_path / "db")), queue_limit=1)
    async with serve(settings) as server, server.client() as client:
        first = await client.send_message(options=HANG)
        session_id = first["session_id"]
        queued = await client.send_message(
            session_id, multitask="enqueue", options={"chunks": 2, "delay_ms": 0}
        )
        assert queued["status"] == "queued"
        full = await client.send_message(session_id, multitask="enqueue")
        assert full["code"] == "QUEUE_FULL"
        runs = await client.request({"type": "list_runs", "status": "all"})
        statuses = {run["run_id"]: run["status"] for run in runs["runs"]}
        assert statuses == {first["run_id"]: "running", queued["run_id"]: "queued"}
        await client.subscribe(session_id)
        await client.request({"type": "abort", "session_id": session_id})
        run1 = await client.events_until_complete(first["run_id"])
        run2 = await client.events_until_complete(queued["run_id"])
        assert_run_stream(run1, first["run_id"])
        assert_run_stream(run2, queued["run_id"])
        assert run2[-1]["data"]["reason"] == "done"


async def test_interrupt_policy_ends_the_running_run_and_starts_the_new_one(server: Served) -> None:
    async with server.client() as client:
        first = await client.send_message(options=HANG)
        session_id = first["session_id"]
        await client.subscribe(session_id)
        second = await client.send_message(
            session_id, multitask="interrupt", options={"chunks": 2, "delay_ms": 0}
        )
        assert second["status"] == "started"
        run1 = await client.events_until_complete(first["run_id"])
        run2 = await client.events_until_complete(second["run_id"])
    assert_run_stream(run1, first["run_id"])
    assert run1[-1]["data"]["aborted"] is True
    assert run1[-1]["data"]["reason"] == "interrupted"
    assert_run_stream(run2, second["run_id"])


async def test_locked_session_refuses_sends_but_lets_the_run_finish(server: Served) -> None:
    async with server.client() as client, server.http() as http:
        ack = await client.send_message(options={"chunks": 20, "delay_ms": 5})
        session_id = ack["session_id"]
        await client.subscribe(session_id)
        patched = await http.patch(f"/api/sessions/{session_id}", json={"status": "locked"})
        assert patched.json()["status"] == "locked"
        refused = await client.send_message(session_id, multitask="enqueue")
        assert refused["code"] == "SESSION_LOCKED"
        events = await client.events_until_complete()
        assert events[-1]["data"]["reason"] == "done"


async def test_archived_session_is_read_only_but_readable(server: Served) -> None:
    async with server.client() as client, server.http() as http:
        ack = await client.send_message(options={"chunks": 3, "delay_ms": 0})
        session_id = ack["session_id"]
        await client.subscribe(session_id)
        events = await client.events_until_complete()
        await http.patch(f"/api/sessions/{session_id}", json={"status": "archived"})
        refused = await client.send_message(session_id)
        assert refused["code"] == "SESSION_ARCHIVED"
        async with server.client() as reader:
            await reader.subscribe(session_id)
            assert await reader.events_until_complete() == events
        history = await http.get(f"/api/sessions/{session_id}/events")
        assert history.json()["events"] == events


async def test_run_started_finished_and_session_deleted_reach_every_connection_of_owner(
    server: Served,
) -> None:
    async with (
        server.client() as alice1,
        server.client() as alice2,
        server.client("bob") as bob,
        server.http() as http,
    ):
        ack = await alice1.send_message(options={"chunks": 2, "delay_ms": 0})
        session_id, run_id = ack["session_id"], ack["run_id"]
        for tab in (alice1, alice2):
            started = await tab.next_of("run_started")
            assert (started["session_id"], started["run"]["run_id"]) == (session_id, run_id)
            finished = await tab.next_of("run_finished")
            assert finished["run"]["status"] == "completed"
            assert finished["run"]["outcome"] == "done"
        await alice2.subscribe(session_id)
        deleted = await http.delete(f"/api/sessions/{session_id}")
        assert deleted.status_code == 204
        for tab in (alice1, alice2):
            assert await tab.next_of("session_deleted") == {
                "type": "session_deleted",
                "session_id": session_id,
            }
        assert (await http.get(f"/api/sessions/{session_id}")).status_code == 404
        # Bob heard nothing of it: his next frame is the reply to his ping.
        pong = await bob.request({"type": "ping", "id": "b"})
        assert pong == {"type": "pong", "id": "b"}
        assert bob.backlog == []


async def test_delete_aborts_the_running_run(server: Served) -> None:
    async with server.client() as client, server.http() as http:
        ack = await client.send_message(options=HANG)
        finished_wait = client.next_of("run_finished")
        await http.delete(f"/api/sessions/{ack['session_id']}")
        finished = await finished_wait
        assert finished["run"]["outcome"] == "aborted"
        runs = await client.request({"type": "list_runs"})
        assert runs["runs"] == []


async def test_has_unread_when_a_run_completes_unwatched(server: Served) -> None:
    async with server.client() as client, server.http() as http:
        ack = await client.send_message(options={"chunks": 2, "delay_ms": 0})
        session_id = ack["session_id"]
        await client.next_of("run_finished")
        await server.gateway.store.flush()
        assert (await http.get(f"/api/sessions/{session_id}")).json()["has_unread"] is True
        assert (await http.post(f"/api/sessions/{session_id}/read")).status_code == 204
        assert (await http.get(f"/api/sessions/{session_id}")).json()["has_unread"] is False
        # Watched while it completes: not unread.
        await client.subscribe(session_id)
        again = await client.send_message(session_id, options={"chunks": 2, "delay_ms": 0})
        await client.events_until_complete(again["run_id"])
        await server.gateway.store.flush()
        assert (await http.get(f"/api/sessions/{session_id}")).json()["has_unread"] is False


async def test_list_runs_shows_running_runs_with_subscribers(server: Served) -> None:
    async with server.client() as client, server.http() as http:
        ack = await client.send_message(options=HANG)
        await client.subscribe(ack["session_id"])
        # user_message and HANG's text_deltas, then the run hangs: both listings see it idle.
        for _ in range(1 + HANG["chunks"]):
            await client.next_of("event")
        runs = await client.request({"type": "list_runs"})
        assert [r["run_id"] for r in runs["runs"]] == [ack["run_id"]]
        assert runs["runs"][0]["subscribers"] == 1
        assert runs["runs"][0]["status"] == "running"
        assert runs["runs"][0]["last_seq"] == 1 + HANG["chunks"]
        response = await http.get("/api/runs", params={"status": "running"})
        assert response.json()["runs"] == runs["runs"]
        session = (await http.get(f"/api/sessions/{ack['session_id']}")).json()
        assert session["running_run_id"] == ack["run_id"]


async def test_send_rate_limit(tmp_path: Path) -> None:
    settings = replace(make_settings(str(tmp_path / "db")), send_rate=0.001, send_burst=2)
    async with serve(settings) as server, server.client() as client:
        for _ in range(2):
            assert (await client.send_message(options={"chunks": 0}))["type"] == "ack"
        limited = await client.send_message(options={"chunks": 0})
        assert limited["code"] == "RATE_LIMITED"
        async with server.client("bob") as bob:  # Per user.
            first = await bob.send_message(options={"chunks": 0}, client_msg_id="m1")
            assert first["type"] == "ack"
            # Retries of a send that went through cost nothing: bob's second token is left.
            for _ in range(3):
                again = await bob.send_message(
                    session_id=first["session_id"], options={"chunks": 0}, client_msg_id="m1"
                )
                assert (again["status"], again["run_id"]) == ("duplicate", first["run_id"])
            assert (await bob.send_message(options={"chunks": 0}))["type"] == "ack"
            assert (await bob.send_message(options={"chunks": 0}))["code"] == "RATE_LIMITED"


async def test_unknown_provider_and_bad_options(server: Served) -> None:
    async with server.client() as client:
        unknown = await client.send_message(provider="nope")
        assert unknown["code"] == "UNKNOWN_PROVIDER"
        bad = await client.send_message(options={"chunks": "many"})
        assert bad["code"] == "INVALID_FIELD"
        assert "chunks" in bad["message"]
