"""Another user's session is indistinguishable from a missing one, by frame and by HTTP."""

from __future__ import annotations

from typing import Any

from .helpers import WAIT, Served

MISSING = "s_doesnotexist000"


def _scrub(reply: dict[str, Any], session_id: str) -> dict[str, Any]:
    """A reply with ids and the session id blanked, to compare foreign with missing."""
    text = reply.get("message", "").replace(session_id, "<sid>")
    return {**reply, "id": None, "session_id": None, "message": text}


async def test_frames_on_another_users_session_look_like_a_missing_session(server: Served) -> None:
    async with server.client("alice") as alice, server.client("bob") as bob:
        ack = await alice.send_message(options={"chunks": 5, "delay_ms": 0, "hang": True})
        theirs = ack["session_id"]
        await alice.subscribe(theirs)
        frames = [
            {"type": "send", "content": "x"},
            {"type": "send", "content": "x", "multitask": "interrupt", "client_msg_id": "k"},
            {"type": "subscribe"},
            {"type": "subscribe", "run_id": ack["run_id"], "after_seq": 1},
            {"type": "unsubscribe"},
            {"type": "abort"},
            {"type": "abort", "clear_queue": True},
        ]
        for frame in frames:
            foreign = await bob.request({**frame, "session_id": theirs})
            missing = await bob.request({**frame, "session_id": MISSING})
            assert foreign["type"] == "error"
            assert foreign["code"] == "SESSION_NOT_FOUND"
            assert _scrub(foreign, theirs) == _scrub(missing, MISSING)
        runs = await bob.request({"type": "list_runs", "status": "all"})
        assert runs["runs"] == []
        # Alice's run was untouched by all that.
        mine = await alice.request({"type": "list_runs"})
        assert [r["run_id"] for r in mine["runs"]] == [ack["run_id"]]
        assert not [f for f in bob.backlog if f.get("session_id") == theirs]


async def test_http_on_another_users_session_is_404(server: Served) -> None:
    async with server.client("alice") as alice, server.http("bob") as bob, server.http() as mine:
        ack = await alice.send_message(options={"chunks": 5, "delay_ms": 0, "hang": True})
        theirs = ack["session_id"]
        requests = [
            ("GET", "", None),
            ("PATCH", "", {"status": "archived"}),
            ("DELETE", "", None),
            ("POST", "/read", None),
            ("GET", "/events", None),
            ("GET", "/context", None),
            ("POST", "/fork", None),
            ("POST", "/checkpoint", {"label": "mine now"}),
            ("PUT", "/handoff", {"summary": "mine now"}),
            ("GET", "/stream", None),
            ("POST", "/abort", None),
        ]
        for method, suffix, body in requests:
            foreign = await bob.request(method, f"/api/sessions/{theirs}{suffix}", json=body)
            missing = await bob.request(method, f"/api/sessions/{MISSING}{suffix}", json=body)
            assert foreign.status_code == missing.status_code == 404, (method, suffix)
            error = foreign.json()["error"]
            assert error["code"] == "SESSION_NOT_FOUND"
            assert error["message"].replace(theirs, "x") == missing.json()["error"][
                "message"
            ].replace(MISSING, "x")
        assert (await bob.get("/api/sessions")).json() == {"sessions": [], "next": None}
        assert (await bob.get("/api/runs", params={"status": "all"})).json() == {"runs": []}
        session = (await mine.get(f"/api/sessions/{theirs}")).json()
        assert (session["status"], session["running_run_id"]) == ("active", ack["run_id"])


async def test_every_route_but_healthz_needs_a_token(server: Served) -> None:
    async with server.http(None) as anonymous:
        assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
        for method, path in [
            ("GET", "/api/me"),
            ("GET", "/api/providers"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
            ("GET", "/api/sessions"),
            ("POST", "/api/sessions"),
            ("GET", f"/api/sessions/{MISSING}"),
            ("GET", f"/api/sessions/{MISSING}/events"),
            ("GET", f"/api/sessions/{MISSING}/context"),
            ("POST", f"/api/sessions/{MISSING}/fork"),
            ("GET", f"/api/sessions/{MISSING}/stream"),
            ("GET", "/api/runs"),
        ]:
            response = await anonymous.request(method, path)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "UNAUTHORIZED"
            wrong = await anonymous.request(
                method, path, headers={"authorization": "Bearer nope"}, timeout=WAIT
            )
            assert wrong.status_code == 401, path
