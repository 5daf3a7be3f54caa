"""The HTTP API, metrics, OpenAPI, and the gateway mounted inside another app."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from gateway.app import Gateway
from gateway.frames import MAX_DEPTH, MAX_ID
from gateway.settings import Settings

from .helpers import Served, assert_run_stream, nested, serve


async def test_session_crud(server: Served) -> None:
    async with server.http() as http:
        created = await http.post("/api/sessions", json={"title": "First"})
        assert created.status_code == 201
        session = created.json()
        assert set(session) == {
            "session_id",
            "title",
            "provider",
            "status",
            "created_at",
            "updated_at",
            "has_unread",
            "running_run_id",
            "handoff",
            "forked_from",
        }
        assert (session["title"], session["provider"], session["status"]) == (
            "First",
            "echo",
            "active",
        )
        second = (await http.post("/api/sessions")).json()
        listed = (await http.get("/api/sessions")).json()["sessions"]
        assert {s["session_id"] for s in listed} == {session["session_id"], second["session_id"]}
        sid = session["session_id"]
        patched = await http.patch(f"/api/sessions/{sid}", json={"title": "Renamed"})
        assert patched.json()["title"] == "Renamed"
        assert (await http.get(f"/api/sessions/{sid}")).json()["title"] == "Renamed"
        assert (await http.delete(f"/api/sessions/{sid}")).status_code == 204
        assert (await http.get(f"/api/sessions/{sid}")).status_code == 404
        assert (await http.delete(f"/api/sessions/{sid}")).status_code == 404


async def test_sessions_are_listed_in_pages_when_a_limit_is_given(server: Served) -> None:
    async with server.http() as http, server.http("bob") as bob:
        made = [(await http.post("/api/sessions")).json()["session_id"] for _ in range(5)]
        await bob.post("/api/sessions")
        whole = (await http.get("/api/sessions")).json()
        assert whole["next"] is None
        assert sorted(s["session_id"] for s in whole["sessions"]) == sorted(made)
        listed, after = [], None
        while True:
            params = {"limit": 2} if after is None else {"limit": 2, "after": after}
            page = (await http.get("/api/sessions", params=params)).json()
            listed += page["sessions"]
            after = page["next"]
            if after is None:
                break
            assert len(page["sessions"]) == 2
        assert listed == whole["sessions"]
        # Past the last of a full page there is nothing: that page said so with next null.
        last = (await http.get("/api/sessions", params={"limit": 5})).json()
        assert (len(last["sessions"]), last["next"]) == (5, None)
        # Another user following alice's cursor sees only their own sessions.
        first = (await http.get("/api/sessions", params={"limit": 1})).json()
        theirs = (await bob.get("/api/sessions", params={"after": first["next"]})).json()
        assert all(s["session_id"] not in made for s in theirs["sessions"])
        for params in (
            {"limit": 0},
            {"limit": "x"},
            {"limit": 1001},
            {"limit": "\u00b2"},  # a digit to str.isdigit, not to int
            {"after": "nope"},
            {"after": "\u00b2.1.s_x"},
            {"after": "1.2."},
            {"after": "-1.2.s_x"},
            {"after": f"{2**64}.1.s_x"},
            {"after": "1.2." + "x" * (MAX_ID + 1)},
        ):
            response = await http.get("/api/sessions", params=params)
            assert response.status_code == 400, params
            error = response.json()["error"]
            assert (error["code"], error["field"]) == ("INVALID_FIELD", next(iter(params)))


async def test_http_errors_are_json_with_fitting_status(server: Served) -> None:
    async with server.http() as http:
        cases = [
            (await http.post("/api/sessions", json={"provider": "nope"}), 400, "UNKNOWN_PROVIDER"),
            (await http.post("/api/sessions", json={"title": 5}), 400, "INVALID_FIELD"),
            (await http.post("/api/sessions", json={"colour": "red"}), 400, "INVALID_FIELD"),
            (await http.post("/api/sessions", content=b"{nope"), 400, "BAD_FRAME"),
            (await http.post("/api/sessions", content=b"x" * (2 << 20)), 413, "TOO_LARGE"),
            (await http.get("/api/runs", params={"status": "some"}), 400, "INVALID_FIELD"),
            (await http.get("/api/nothing"), 404, "NOT_FOUND"),
            (await http.delete("/api/sessions"), 405, "METHOD_NOT_ALLOWED"),
        ]
        sid = (await http.post("/api/sessions")).json()["session_id"]
        cases += [
            (
                await http.patch(f"/api/sessions/{sid}", json={"status": "gone"}),
                400,
                "INVALID_FIELD",
            ),
            (
                await http.get(f"/api/sessions/{sid}/events", params={"limit": 0}),
                400,
                "INVALID_FIELD",
            ),
            (
                await http.get(f"/api/sessions/{sid}/events", params={"after_run": "nope"}),
                400,
                "INVALID_FIELD",
            ),
            (
                await http.get(f"/api/sessions/{sid}/events", params={"limit": "\u00b2"}),
                400,
                "INVALID_FIELD",
            ),
            (
                await http.get(f"/api/sessions/{sid}/events", params={"kinds": ""}),
                400,
                "INVALID_FIELD",
            ),
            (
                await http.get(f"/api/sessions/{sid}/events", params={"kinds": "text,a b"}),
                400,
                "INVALID_FIELD",
            ),
            (await http.post(f"/api/sessions/{sid}/abort"), 409, "NO_ACTIVE_RUN"),
        ]
        for response, status, code in cases:
            assert response.status_code == status, response.text
            assert response.json()["error"]["code"] == code, response.text
            assert response.json()["error"]["message"]
        field = (await http.post("/api/sessions", json={"title": 5})).json()["error"]["field"]
        assert field == "title"
        bad = await http.get(
            f"/api/sessions/{sid}/events", params={"kinds": ",".join(f"k{i}" for i in range(40))}
        )
        assert bad.json()["error"]["field"] == "kinds"
        foreign = await http.get(f"/api/sessions/{sid}/events", params={"after_run": "nope"})
        assert foreign.json()["error"]["message"] == (
            f"after_run: nope is not a run of session {sid}"
        )
        wrong_method = await http.delete("/api/sessions")
        assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}


async def test_an_id_past_the_frames_limit_is_named_not_echoed(server: Served) -> None:
    """Ids in paths, queries and Last-Event-ID are held to the frames' limit: one longer
    is INVALID_FIELD naming where it came from, with none of it in the message."""
    too_long, longest = "x" * (MAX_ID + 1), "x" * MAX_ID
    async with server.http() as http:
        sid = (await http.post("/api/sessions")).json()["session_id"]
        stream = f"/api/sessions/{sid}/stream"
        cases = [
            (await http.get(f"/api/sessions/{too_long}"), "session_id"),
            (await http.delete(f"/api/sessions/{too_long}"), "session_id"),
            (await http.post(f"/api/sessions/{too_long}/abort"), "session_id"),
            (await http.get(f"/api/sessions/{too_long}/events"), "session_id"),
            (
                await http.get(f"/api/sessions/{sid}/events", params={"after_run": too_long}),
                "after_run",
            ),
            (await http.get(stream, params={"run_id": too_long}), "run_id"),
            (await http.get(stream, headers={"Last-Event-ID": f"{too_long}:3"}), "Last-Event-ID"),
        ]
        for response, field in cases:
            assert response.status_code == 400, response.text
            assert response.json()["error"] == {
                "code": "INVALID_FIELD",
                "message": f"{field}: expected at most {MAX_ID} characters",
                "field": field,
            }
        # At the limit, an id is looked up like any other.
        missing = await http.get(f"/api/sessions/{longest}")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "SESSION_NOT_FOUND")
        history = await http.get(f"/api/sessions/{sid}/events", params={"after_run": longest})
        assert history.json()["error"]["message"] == (
            f"after_run: {longest} is not a run of session {sid}"
        )


async def test_history_is_paginated_in_order(server: Served) -> None:
    async with server.client() as client, server.http() as http:
        ack = await client.send_message(options={"chunks": 3, "delay_ms": 0})
        sid = ack["session_id"]
        await client.subscribe(sid)
        run1 = await client.events_until_complete()
        ack2 = await client.send_message(sid, options={"chunks": 4, "delay_ms": 0})
        run2 = await client.events_until_complete(ack2["run_id"])
        pages: list[list[dict[str, Any]]] = []
        params: dict[str, Any] = {"limit": 4}
        while True:
            body = (await http.get(f"/api/sessions/{sid}/events", params=params)).json()
            pages.append(body["events"])
            if body["next"] is None:
                break
            params = {
                "limit": 4,
                "after_run": body["next"]["run_id"],
                "after_seq": body["next"]["seq"],
            }
        assert [e for page in pages for e in page] == run1 + run2
        assert all(len(page) <= 4 for page in pages)
        assert_run_stream(run2, ack2["run_id"])


async def test_deeply_nested_bodies_get_a_clear_error(server: Served) -> None:
    """Free-form values may nest ``MAX_DEPTH`` levels; one more is ``INVALID_FIELD``
    naming the field, and a body nested past what the parser can read is ``BAD_FRAME``,
    not a server fault. Nothing of a refused body is kept."""

    async with server.http() as http:
        sid = (await http.post("/api/sessions")).json()["session_id"]
        handoff = f"/api/sessions/{sid}/handoff"
        fits = f'{{"summary":"s","context_for_next":{{"a":{nested(MAX_DEPTH - 1)}}}}}'
        assert (await http.put(handoff, content=fits)).status_code == 200
        cases = [
            (handoff, f'{{"summary":"t","context_for_next":{{"a":{nested(MAX_DEPTH)}}}}}'),
            (f"/api/sessions/{sid}/checkpoint", f'{{"label":"l","data":{{"a":{nested(900)}}}}}'),
        ]
        for path, body in cases:
            response = await http.request("PUT" if path == handoff else "POST", path, content=body)
            assert response.status_code == 400, response.text
            field = "context_for_next" if path == handoff else "data"
            assert response.json()["error"] == {
                "code": "INVALID_FIELD",
                "message": f"{field}: nested deeper than {MAX_DEPTH} levels",
                "field": field,
            }
        unreadable = f'{{"summary":"u","context_for_next":{{"a":{nested(100_000)}}}}}'
        response = await http.put(handoff, content=unreadable)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "BAD_FRAME"
        assert (await http.get(f"/api/sessions/{sid}")).json()["handoff"]["summary"] == "s"


async def test_handoff_notes(server: Served) -> None:
    notes = {
        "summary": "Parser done; tests red on Windows paths",
        "next_steps": ["fix path joins", "rerun CI"],
        "blockers": ["no Windows runner"],
        "context_for_next": {"branch": "parser", "files": ["src/parse.py"]},
    }
    async with server.http() as http:
        sid = (await http.post("/api/sessions")).json()["session_id"]
        assert (await http.get(f"/api/sessions/{sid}")).json()["handoff"] is None
        stored = await http.put(f"/api/sessions/{sid}/handoff", json=notes)
        assert stored.status_code == 200, stored.text
        assert stored.json()["handoff"] == notes
        assert (await http.get(f"/api/sessions/{sid}")).json()["handoff"] == notes
        listed = (await http.get("/api/sessions")).json()["sessions"]
        assert [s["handoff"] for s in listed] == [notes]
        only = await http.put(f"/api/sessions/{sid}/handoff", json={"summary": "short"})
        assert only.json()["handoff"] == {
            "summary": "short",
            "next_steps": [],
            "blockers": [],
            "context_for_next": {},
        }
        for body, field in [
            ({}, "summary"),
            ({"summary": 5}, "summary"),
            ({"summary": "s", "next_steps": "one"}, "next_steps"),
            ({"summary": "s", "next_steps": ["a", 2]}, "next_steps"),
            ({"summary": "s", "blockers": {"a": 1}}, "blockers"),
            ({"summary": "s", "context_for_next": []}, "context_for_next"),
            ({"summary": "s", "colour": "red"}, "colour"),
        ]:
            bad = await http.put(f"/api/sessions/{sid}/handoff", json=body)
            assert bad.status_code == 400, (body, bad.text)
            error = bad.json()["error"]
            assert error["code"] == "INVALID_FIELD"
            assert error["field"].startswith(field), (body, error)
        assert (await http.get(f"/api/sessions/{sid}")).json()["handoff"]["summary"] == "short"
    async with server.http("bob") as other:
        response = await other.put(f"/api/sessions/{sid}/handoff", json=notes)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "SESSION_NOT_FOUND"


async def test_history_filtered_by_kinds(server: Served) -> None:
    async with server.client() as client, server.http() as http:
        ack = await client.send_message(options={"chunks": 3, "delay_ms": 0, "tool": True})
        sid = ack["session_id"]
        await client.subscribe(sid)
        run = await client.events_until_complete()
        params: dict[str, str | int] = {"kinds": "tool_use,tool_result,complete", "limit": 2}
        first = (await http.get(f"/api/sessions/{sid}/events", params=params)).json()
        following = first["next"]
        params.update(after_run=following["run_id"], after_seq=following["seq"])
        second = (await http.get(f"/api/sessions/{sid}/events", params=params)).json()
        wanted = [e for e in run if e["kind"] in ("tool_use", "tool_result", "complete")]
        assert [e["kind"] for e in wanted] == ["tool_use", "tool_result", "complete"]
        assert first["events"] + second["events"] == wanted
        assert second["next"] is None
    async with server.http("bob") as other:
        response = await other.get(f"/api/sessions/{sid}/events", params={"kinds": "text"})
        assert response.status_code == 404


async def test_metrics_report_the_gateway_in_prometheus_format(server: Served) -> None:
    async with server.client() as client, server.http() as http:
        ack = await client.send_message(options={"chunks": 10, "delay_ms": 0})
        await client.subscribe(ack["session_id"])
        events = await client.events_until_complete()
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        values = _metrics(response.text)
        assert values["runwire_connections"] == 1
        assert values["runwire_subscriptions"] == 1
        assert values["runwire_running_runs"] == 0
        assert values["runwire_events_published_total"] >= len(events)
        assert values["runwire_events_delivered_total"] >= len(events)
        assert values["runwire_lagged_subscriptions_total"] == 0
        assert "runwire_store_backlog" in values
        assert "runwire_store_flushes_total" in values


def _metrics(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{[^}]*\})? (\S+)", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


async def test_openapi_describes_every_route(server: Served) -> None:
    async with server.http() as http:
        document = (await http.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    expected = {
        "/api/sessions": {"get", "post"},
        "/api/sessions/{session_id}": {"get", "patch", "delete"},
        "/api/sessions/{session_id}/read": {"post"},
        "/api/sessions/{session_id}/handoff": {"put"},
        "/api/sessions/{session_id}/context": {"get"},
        "/api/sessions/{session_id}/fork": {"post"},
        "/api/sessions/{session_id}/checkpoint": {"post"},
        "/api/sessions/{session_id}/events": {"get"},
        "/api/sessions/{session_id}/stream": {"get"},
        "/api/sessions/{session_id}/abort": {"post"},
        "/api/runs": {"get"},
        "/healthz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path


def starlette_parent(gateway: Gateway) -> Starlette:
    """The gateway's routes mounted at /chat in a Starlette app of its own."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with gateway.lifespan():
            yield

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("parent app")

    return Starlette(
        routes=[Route("/", home), Mount("/chat", routes=gateway.routes())], lifespan=lifespan
    )


def fastapi_parent(gateway: Gateway) -> Starlette:
    """The same in a FastAPI app, the way FastAPI mounts a sub-application."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with gateway.lifespan():
            yield

    parent = FastAPI(lifespan=lifespan)

    @parent.get("/", response_class=PlainTextResponse)
    async def home() -> str:
        return "parent app"

    parent.mount("/chat", Starlette(routes=gateway.routes()))
    return parent


@pytest.mark.parametrize("make_parent", [starlette_parent, fastapi_parent])
async def test_routes_mount_under_a_prefix_in_a_parent_app(
    settings: Settings, make_parent: Callable[[Gateway], Starlette]
) -> None:
    gateway = Gateway(settings)
    parent = make_parent(gateway)
    async with serve(settings, app=parent, gateway=gateway, prefix="/chat") as server:
        async with server.http() as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            created = await http.post("/api/sessions")
            assert created.status_code == 201
            document = (await http.get("/openapi.json")).json()
            assert document["servers"] == [{"url": "/chat"}]
            # The gateway's errors keep its JSON shape inside another app.
            missing = await http.get("/api/nothing")
            assert (missing.status_code, missing.json()["error"]["code"]) == (404, "NOT_FOUND")
        async with server.client() as client:
            ack = await client.send_message(created.json()["session_id"], options={"chunks": 2})
            await client.subscribe(ack["session_id"])
            assert_run_stream(await client.events_until_complete(), ack["run_id"])
        async with server.http() as http:
            root = await http.get(server.base_url.removesuffix("/chat") + "/")
            assert root.text == "parent app"


async def test_chat_page_and_static_files_need_no_token_and_stay_in_their_folder(
    server: Served,
) -> None:
    async with server.http(None) as anonymous:
        page = await anonymous.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        script = await anonymous.get("/static/runwire.js")
        assert script.status_code == 200
        for path in (
            "/static/../http.py",
            "/static/%2e%2e/http.py",
            "/static/..%2fhttp.py",
            "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
            "/static//etc/passwd",
        ):
            response = await anonymous.get(path)
            assert response.status_code == 404, path
            assert "import" not in response.text


async def test_providers_lists_the_offered_providers_and_the_default(server: Served) -> None:
    async with server.http() as http:
        body = (await http.get("/api/providers")).json()
    assert body["default"] == "echo"
    assert "echo" in body["providers"]
    assert body["providers"] == server.gateway.providers.names()
