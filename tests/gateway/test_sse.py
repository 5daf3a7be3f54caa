"""The session stream as Server-Sent Events, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from gateway.settings import Settings

from .helpers import Served, assert_run_stream


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parsed SSE messages: {"id", "event", "data"} (comments skipped)."""
    message: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if not line:
            if message:
                yield message
            message = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(": ")
            message[name] = value


async def read_until(
    response: httpx.Response, *, stop_after: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Event frames until a complete (or ``stop_after`` events); the subscribed info."""
    events: list[dict[str, Any]] = []
    subscribed: dict[str, Any] = {}
    async for message in sse_events(response):
        if message.get("event") == "subscribed":
            subscribed = json.loads(message["data"])
            continue
        frame = json.loads(message["data"])
        assert message["id"] == f"{frame['run_id']}:{frame['seq']}"
        assert message["event"] == frame["kind"]
        events.append(frame)
        if frame["kind"] == "complete" or len(events) == stop_after:
            break
    return events, subscribed


async def test_sse_resumes_with_last_event_id(server: Served) -> None:
    async with server.client() as client, server.http() as http:
        ack = await client.send_message(options={"chunks": 200, "delay_ms": 1})
        url = f"/api/sessions/{ack['session_id']}/stream"
        async with http.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            first, subscribed = await read_until(response, stop_after=40)
        assert subscribed["recovered"] is True
        last_id = f"{first[-1]['run_id']}:{first[-1]['seq']}"
        async with http.stream("GET", url, headers={"Last-Event-ID": last_id}) as response:
            rest, _ = await read_until(response)
        assert_run_stream(first + rest, ack["run_id"])
        # The query form resumes the same way.
        params = {"run_id": ack["run_id"], "after_seq": 100}
        async with http.stream("GET", url, params=params) as response:
            tail, _ = await read_until(response)
        assert tail == (first + rest)[100:]


async def test_sse_bad_last_event_id(server: Served) -> None:
    async with server.http() as http:
        sid = (await http.post("/api/sessions")).json()["session_id"]
        # b"run:\xb2": a digit to str.isdigit (a header is read as Latin-1), not to int.
        for value in (b"garbage", b"run:-1", b":5", b"run:x", b"run:\xb2"):
            response = await http.get(
                f"/api/sessions/{sid}/stream", headers={b"Last-Event-ID": value}
            )
            assert response.status_code == 400
            assert response.json()["error"]["field"] == "Last-Event-ID"
        unknown = await http.get(f"/api/sessions/{sid}/stream", params={"run_id": "nope"})
        assert unknown.status_code == 400
        assert unknown.json()["error"] == {
            "code": "INVALID_FIELD",
            "message": f"run_id: nope is not a run of session {sid}",
            "field": "run_id",
        }
        # A well-formed position of a run that is not the session's.
        foreign = await http.get(
            f"/api/sessions/{sid}/stream", headers={"Last-Event-ID": "r_other:3"}
        )
        assert foreign.status_code == 400
        assert foreign.json()["error"] == {
            "code": "INVALID_FIELD",
            "message": f"Last-Event-ID: r_other is not a run of session {sid}",
            "field": "Last-Event-ID",
        }


async def test_sse_stream_ends_on_shutdown_after_the_server_restart_complete(
    settings: Settings,
) -> None:
    from dataclasses import replace

    from .helpers import serve

    async with serve(replace(settings, shutdown_grace=0.0)) as server, server.http() as http:
        async with server.client() as client:
            ack = await client.send_message(options={"chunks": 2, "delay_ms": 0, "hang": True})
        url = f"/api/sessions/{ack['session_id']}/stream"
        async with http.stream("GET", url) as response:
            events = []
            messages = sse_events(response)
            async for message in messages:
                if message.get("event") == "text_delta":
                    break
            drain = asyncio.create_task(server.gateway.drain())
            async for message in messages:  # Ends when the server ends the stream.
                if "id" in message:
                    events.append(json.loads(message["data"]))
            await drain
        assert [e["kind"] for e in events] == ["text_delta", "complete"]
        assert events[-1]["data"]["reason"] == "server_restart"


async def test_sse_stream_of_a_deleted_session_ends_saying_so(server: Served) -> None:
    """Deleting the session ends its streams with ``session_deleted``, last, so a client
    stops rather than reconnecting to a 404; other sessions' streams go on."""
    async with server.client() as client, server.http() as http:
        doomed = await client.send_message(options={"chunks": 2, "delay_ms": 0, "hang": True})
        kept = await client.send_message(options={"chunks": 2, "delay_ms": 0, "hang": True})
        sid = doomed["session_id"]
        async with (
            http.stream("GET", f"/api/sessions/{sid}/stream") as response,
            http.stream("GET", f"/api/sessions/{kept['session_id']}/stream") as other,
        ):
            messages = sse_events(response)
            async for message in messages:
                if message.get("event") == "text_delta":
                    break
            assert (await http.delete(f"/api/sessions/{sid}")).status_code == 204
            rest = [message async for message in messages]  # Ends when the server ends it.
            assert rest[-1] == {
                "event": "session_deleted",
                "data": json.dumps(
                    {"type": "session_deleted", "session_id": sid}, separators=(",", ":")
                ),
            }
            assert all(message.get("event") == "text_delta" for message in rest[:-1])
            await http.post(f"/api/sessions/{kept['session_id']}/abort")
            events, _ = await read_until(other)
        assert events[-1]["data"]["reason"] == "aborted"


async def test_a_long_replay_streams_page_after_page_without_ending(settings: Settings) -> None:
    """A replay read from the log in pages (each ends the subscription with lagged) goes
    on within one stream: every event once, in order, and no lagged in between."""
    from dataclasses import replace

    from .helpers import serve

    paged = replace(settings, buffer_size=8, replay_page=5)
    async with serve(paged) as server, server.client() as client, server.http() as http:
        ack = await client.send_message(options={"chunks": 40, "delay_ms": 0})
        await client.next_of("run_finished")
        url = f"/api/sessions/{ack['session_id']}/stream"
        params = {"run_id": ack["run_id"], "after_seq": 0}
        async with http.stream("GET", url, params=params) as response:
            messages = [m async for m in until_complete(sse_events(response))]
    assert messages[0]["event"] == "subscribed"
    assert json.loads(messages[0]["data"])["replayed"] == 5
    events = [json.loads(m["data"]) for m in messages[1:]]
    assert [e["seq"] for e in events] == list(range(1, 44))
    assert events[-1]["kind"] == "complete"


async def until_complete(
    messages: AsyncIterator[dict[str, Any]],
) -> AsyncIterator[dict[str, Any]]:
    """``messages`` up to and including the first ``complete`` event."""
    async for message in messages:
        yield message
        if message.get("event") == "complete":
            return
