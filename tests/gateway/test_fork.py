"""POST /api/sessions/{id}/fork over a real server: the new session, its copied history,
its first run continuing the source, and the source left as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from providers import EchoProvider, ProviderRegistry

from .helpers import Client, Scripted, Served, serve


@pytest.fixture
def agent() -> Scripted:
    return Scripted()


@pytest.fixture
async def served(settings: Settings, agent: Scripted) -> AsyncIterator[Served]:
    app = create_app(settings, providers=ProviderRegistry([EchoProvider(), agent]))
    async with serve(settings, app=app, gateway=app.state.gateway) as running:
        yield running


async def turn(client: Client, sid: str, content: str, **options: Any) -> list[dict[str, Any]]:
    ack = await client.send_message(sid, content=content, options=options)
    assert ack["type"] == "ack", ack
    await client.subscribe(sid, ack["run_id"])
    events = await client.events_until_complete(ack["run_id"])
    return [event for event in events if event["run_id"] == ack["run_id"]]


async def history(http: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    response = await http.get(f"/api/sessions/{sid}/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


def shape(events: list[dict[str, Any]]) -> list[tuple[int, str, Any]]:
    """Events without their run ids and session ids: what a transcript shows."""
    out = []
    for event in events:
        data = {k: v for k, v in event["data"].items() if k != "actual_session_id"}
        out.append((event["seq"], event["kind"], data))
    return out


async def fork(http: httpx.AsyncClient, sid: str, **body: Any) -> dict[str, Any]:
    response = await http.post(f"/api/sessions/{sid}/fork", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


ECHO = {"chunks": 2, "delay_ms": 0}


async def test_a_fork_at_the_end_copies_the_history_and_continues(served: Served) -> None:
    client = await served.open()
    notes = {"summary": "s", "next_steps": ["n"], "blockers": [], "context_for_next": {"k": 1}}
    async with served.http() as http:
        source = (await http.post("/api/sessions", json={"title": "Plan"})).json()["session_id"]
        await turn(client, source, "one", **ECHO)
        await turn(client, source, "two", **ECHO)
        await http.put(f"/api/sessions/{source}/handoff", json=notes)
        before = await history(http, source)
        session = await fork(http, source)
        fork_id = session["session_id"]
        copied = await history(http, fork_id)
        assert session["forked_from"] == {
            "session_id": source,
            "run_id": before[-1]["run_id"],
            "seq": before[-1]["seq"],
        }
        assert (session["title"], session["provider"], session["handoff"]) == (
            "Plan (fork)",
            "echo",
            notes,
        )
        assert (await http.get(f"/api/sessions/{fork_id}")).json()["forked_from"] == session[
            "forked_from"
        ]
        assert (await http.get(f"/api/sessions/{source}")).json()["forked_from"] is None
        reply = await turn(client, fork_id, "three", **ECHO)
        assert await history(http, source) == before

    assert shape(copied) == shape(before)
    assert {e["session_id"] for e in copied} == {fork_id}
    assert not {e["run_id"] for e in copied} & {e["run_id"] for e in before}
    assert copied[-1]["data"]["actual_session_id"] == fork_id
    assert [e["data"]["text"] for e in reply if e["kind"] == "text"] == ["three (turn 3)"]
    # A subscriber to the fork gets the copied history, then the fork's own run.
    replay = await served.open()
    await replay.subscribe(fork_id, copied[0]["run_id"])
    got = [await replay.next_of("event") for _ in range(len(copied) + len(reply))]
    assert shape(got) == shape(copied + reply)


async def test_a_fork_inside_an_aborted_run(served: Served) -> None:
    client = await served.open()
    async with served.http() as http:
        source = (await http.post("/api/sessions")).json()["session_id"]
        await turn(client, source, "done first", **ECHO)
        ack = await client.send_message(source, content="stop me", options={**ECHO, "hang": True})
        await client.subscribe(source, ack["run_id"])
        while (await client.next_of("event"))["seq"] < 3:
            pass
        await client.request({"type": "abort", "session_id": source})
        aborted = await client.events_until_complete(ack["run_id"])
        assert aborted[-1]["data"]["reason"] == "aborted"
        session = await fork(http, source, run_id=ack["run_id"], seq=2)
        copied = await history(http, session["session_id"])
        runs = (await http.get("/api/runs", params={"status": "all"})).json()["runs"]

    assert session["forked_from"] == {"session_id": source, "run_id": ack["run_id"], "seq": 2}
    cut = [e for e in copied if e["run_id"] == copied[-1]["run_id"]]
    assert [(e["seq"], e["kind"]) for e in cut] == [
        (1, "user_message"),
        (2, "text_delta"),
        (3, "complete"),
    ]
    assert cut[-1]["data"]["reason"] == "interrupted"
    assert cut[-1]["data"]["actual_session_id"] == session["session_id"]
    assert not [r for r in runs if r["session_id"] == session["session_id"]]


async def test_a_fork_of_a_running_session_takes_it_as_far_as_it_went(served: Served) -> None:
    client = await served.open()
    async with served.http() as http:
        source = (await http.post("/api/sessions")).json()["session_id"]
        ack = await client.send_message(source, content="long", options={**ECHO, "hang": True})
        await client.subscribe(source, ack["run_id"])
        while (await client.next_of("event"))["seq"] < 3:
            pass
        session = await fork(http, source)
        copied = await history(http, session["session_id"])
        still = (await http.get(f"/api/sessions/{source}")).json()["running_run_id"]
        await client.request({"type": "abort", "session_id": source})

    assert still == ack["run_id"]
    assert session["forked_from"]["seq"] == 3
    assert session["running_run_id"] is None
    assert [e["kind"] for e in copied] == ["user_message", "text_delta", "text_delta", "complete"]
    assert copied[-1]["data"]["reason"] == "interrupted"


async def test_forks_of_forks_and_the_summary_for_a_provider_that_cannot_resume(
    served: Served, agent: Scripted
) -> None:
    client = await served.open()
    write = ["tool_use", {"tool_id": "w", "name": "Write", "input": {"file_path": "a.py"}}]
    async with served.http() as http:
        source = (await http.post("/api/sessions", json={"provider": "agent"})).json()
        sid = source["session_id"]
        await turn(client, sid, "build it", script=[write, ["text", {"text": "Built a.py"}]])
        await turn(client, sid, "test it", script=[["text", {"text": "Tests pass"}]])
        first = await fork(http, sid)
        copied_run = (await history(http, first["session_id"]))[-1]["run_id"]
        await turn(client, first["session_id"], "in the first fork")
        await turn(client, first["session_id"], "first fork again")
        second = await fork(http, first["session_id"], run_id=copied_run)
        await turn(client, second["session_id"], "in the second fork")

    exact, resumed, summarized = agent.requests[2:]
    # The first fork's first run is told the source's provider id to resume; its next
    # run resumes the id the fork's own first run announced.
    assert (exact.resume_id, exact.fork.resume_id, exact.fork.turns) == (None, "agent-2", 2)
    assert (resumed.resume_id, resumed.fork) == ("agent-3", None)
    # The second fork copies runs that hold no provider id: it gets the summary.
    assert summarized.fork.resume_id is None
    assert summarized.fork.turns == 2
    summary = summarized.fork.summary
    assert "Write (1)" in summary
    assert "a.py (created)" in summary
    assert "User: test it" in summary
    assert "Assistant: Tests pass" in summary
    assert second["forked_from"]["session_id"] == first["session_id"]


async def test_a_fork_of_a_session_whose_provider_id_was_never_recorded(
    served: Served, agent: Scripted
) -> None:
    client = await served.open()
    async with served.http() as http:
        sid = (await http.post("/api/sessions", json={"provider": "agent"})).json()["session_id"]
        failed = await turn(client, sid, "crash", script=[["fail", "before its id"]], no_id=True)
        assert failed[-1]["data"]["reason"] == "error"
        session = await fork(http, sid)
        await turn(client, session["session_id"], "again")
        context = (await http.get(f"/api/sessions/{session['session_id']}/context")).json()

    origin = agent.requests[-1].fork
    assert origin.resume_id is None
    assert origin.turns == 1
    assert "1 error" in origin.summary
    assert context["runs"]["by_outcome"]["error"] == 1


async def test_fork_positions_are_checked_and_sessions_owner_checked(served: Served) -> None:
    client = await served.open()
    async with served.http() as http:
        sid = (await http.post("/api/sessions")).json()["session_id"]
        empty = await fork(http, sid)
        assert empty["forked_from"] == {"session_id": sid, "run_id": None, "seq": None}
        events = await turn(client, sid, "one", **ECHO)
        run_id = events[0]["run_id"]
        before = await fork(http, sid, run_id=run_id, seq=0, title="Before")
        assert before["title"] == "Before"
        assert await history(http, before["session_id"]) == []
        cases = [
            ({"run_id": "r_nope"}, "run_id"),
            ({"run_id": run_id, "seq": len(events) + 1}, "seq"),
            ({"run_id": run_id, "seq": -1}, "seq"),
            ({"seq": 2}, "run_id"),
            ({"run_id": 5}, "run_id"),
            ({"colour": "red"}, "colour"),
        ]
        for body, field in cases:
            bad = await http.post(f"/api/sessions/{sid}/fork", json=body)
            assert bad.status_code == 400, (body, bad.text)
            assert bad.json()["error"]["code"] == "INVALID_FIELD"
            assert bad.json()["error"]["field"].startswith(field), (body, bad.json())
        unknown = await http.post(f"/api/sessions/{sid}/fork", json={"run_id": "r_nope"})
        # Worded as every endpoint words a run that is not the session's.
        assert unknown.json()["error"]["message"] == (
            f"run_id: r_nope is not a run of session {sid}"
        )
        assert (await http.post("/api/sessions/nope/fork")).status_code == 404
        sessions = (await http.get("/api/sessions")).json()["sessions"]
    assert len(sessions) == 3
    async with served.http("bob") as other:
        response = await other.post(f"/api/sessions/{sid}/fork")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "SESSION_NOT_FOUND"
        assert (await other.get("/api/sessions")).json()["sessions"] == []
