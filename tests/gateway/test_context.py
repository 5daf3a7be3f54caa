"""GET /api/sessions/{id}/context: what a session's log says the agent did."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.app import create_app
from gateway.context import duration_text
from gateway.settings import Settings
from providers import EchoProvider, ProviderRegistry
from registry import ManualClock

from .helpers import Client, Scripted, Served, serve


def use(tool_id: str, name: str, **tool_input: Any) -> list[Any]:
    return ["tool_use", {"tool_id": tool_id, "name": name, "input": tool_input}]


def result(tool_id: str, content: str = "ok", is_error: bool = False) -> list[Any]:
    return ["tool_result", {"tool_id": tool_id, "content": content, "is_error": is_error}]


WORK = [
    use("t1", "Write", file_path="/p/new.py", content="print(1)"),
    result("t1", "File created successfully at: /p/new.py"),
    use("t2", "Edit", file_path="/p/new.py", old_string="1", new_string="2"),
    result("t2"),
    use("t3", "Edit", file_path="/p/bad.py", old_string="x", new_string="y"),
    result("t3", "String to replace not found", is_error=True),
    use("t4", "Bash", command="pytest"),
    result("t4", "1 failed"),
    ["error", {"message": "lint failed", "code": "E1"}],
    ["checkpoint", {"label": "tests green"}],
    ["text", {"text": "All done"}],
    ["advance", 3_900],
]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def served(settings: Settings, clock: ManualClock) -> AsyncIterator[Served]:
    providers = ProviderRegistry([EchoProvider(), Scripted(clock)])
    app = create_app(settings, providers=providers, clock=clock)
    async with serve(settings, app=app, gateway=app.state.gateway) as running:
        yield running


async def run(client: Client, sid: str, script: list[Any]) -> dict[str, Any]:
    ack = await client.send_message(sid, content="go", options={"script": script})
    assert ack["type"] == "ack", ack
    await client.subscribe(sid, ack["run_id"])
    events = await client.events_until_complete(ack["run_id"])
    return events[-1]


async def test_the_context_of_an_agent_session(served: Served, clock: ManualClock) -> None:
    client = await served.open()
    async with served.http() as http:
        sid = (await http.post("/api/sessions", json={"provider": "agent"})).json()["session_id"]
        started = clock.now()
        assert (await run(client, sid, WORK))["data"]["reason"] == "done"
        first = (await http.get(f"/api/sessions/{sid}/events")).json()["events"]
        run1 = first[0]["run_id"]
        clock.advance(60)
        failed = await run(client, sid, [["text", {"text": "Trying again"}], ["fail", "boom"]])
        assert failed["data"]["reason"] == "error"
        run2 = failed["run_id"]
        notes = {"summary": "half way", "next_steps": ["fix lint"]}
        assert (await http.put(f"/api/sessions/{sid}/handoff", json=notes)).status_code == 200
        response = await http.get(f"/api/sessions/{sid}/context")
        assert response.status_code == 200, response.text
        context = response.json()

    assert context["session_id"] == sid
    assert context["runs"] == {
        "count": 2,
        "running": 0,
        "by_outcome": {"done": 1, "aborted": 0, "interrupted": 0, "error": 1, "server_restart": 0},
    }
    assert context["first_start"] == int(started * 1000)
    assert context["last_activity"] == failed["ts"]
    assert context["duration_ms"] == 3_900_000
    assert context["duration"] == "1h 5m"
    by_kind = context["events"]["by_kind"]
    assert by_kind == {
        "tool_result": 4,
        "tool_use": 4,
        "complete": 2,
        "text": 2,
        "user_message": 2,
        "checkpoint": 1,
        "error": 1,
    }
    assert context["events"]["total"] == sum(by_kind.values())
    assert context["tools"] == {"Edit": 2, "Bash": 1, "Write": 1}
    actions = context["actions"]
    assert [(a["kind"], a.get("name") or a["text"]) for a in actions] == [
        ("text", "Trying again"),
        ("text", "All done"),
        ("tool_use", "Bash"),
        ("tool_use", "Edit"),
        ("tool_use", "Edit"),
        ("tool_use", "Write"),
    ]
    assert [a["run_id"] for a in actions] == [run2] + [run1] * 5
    assert all(a["seq"] > b["seq"] for a, b in itertools.pairwise(actions[1:]))
    assert actions[2]["input"] == "command=pytest"
    assert context["errors"]["events"] == [
        {"run_id": run1, "seq": 10, "ts": actions[1]["ts"], "message": "lint failed", "code": "E1"}
    ]
    [error_run] = context["errors"]["runs"]
    assert (error_run["run_id"], error_run["error"]) == (run2, "boom")
    [checkpoint] = context["checkpoints"]
    assert (checkpoint["run_id"], checkpoint["seq"], checkpoint["data"]) == (
        run1,
        11,
        {"label": "tests green"},
    )
    # The failed Edit of bad.py changed nothing; new.py was created, then edited.
    assert context["artifacts"] == [
        {
            "path": "/p/new.py",
            "action": "created",
            "tool": "Edit",
            "changes": 2,
            "run_id": run1,
            "seq": 4,
            "ts": actions[3]["ts"],
        }
    ]
    assert context["handoff"] == {**notes, "blockers": [], "context_for_next": {}}


async def test_artifacts_follow_a_file_through_the_session(served: Served) -> None:
    client = await served.open()
    script = [
        use("a", "Write", file_path="f.txt"),
        result("a", "done"),
        use("b", "file_change", changes=[{"path": "f.txt", "kind": "delete"}]),
        result("b", "delete f.txt"),
        use("c", "write_file", file_path="g.txt"),
        result("c", "Successfully overwrote file: g.txt."),
        use("d", "Write", file_path="f.txt"),
        result("d", "done"),
    ]
    async with served.http() as http:
        sid = (await http.post("/api/sessions", json={"provider": "agent"})).json()["session_id"]
        await run(client, sid, script)
        artifacts = (await http.get(f"/api/sessions/{sid}/context")).json()["artifacts"]
    # A write with no telling result creates a file the session had not seen (or had
    # deleted), and modifies one it had.
    assert [(a["path"], a["action"], a["changes"], a["seq"]) for a in artifacts] == [
        ("f.txt", "created", 3, 8),
        ("g.txt", "modified", 1, 6),
    ]


async def test_only_the_newest_twenty_actions_and_errors(served: Served) -> None:
    client = await served.open()
    script = [["text", {"text": f"t{i}"}] for i in range(25)]
    script += [["error", {"message": f"e{i}"}] for i in range(25)]
    async with served.http() as http:
        sid = (await http.post("/api/sessions", json={"provider": "agent"})).json()["session_id"]
        await run(client, sid, script)
        context = (await http.get(f"/api/sessions/{sid}/context")).json()
    assert [a["text"] for a in context["actions"]] == [f"t{i}" for i in range(24, 4, -1)]
    assert [e["message"] for e in context["errors"]["events"]] == [
        f"e{i}" for i in range(24, 4, -1)
    ]
    assert context["events"]["by_kind"]["text"] == 25


async def test_a_running_run_counts_up_to_now(served: Served, clock: ManualClock) -> None:
    client = await served.open()
    async with served.http() as http:
        sid = (await http.post("/api/sessions", json={"provider": "echo"})).json()["session_id"]
        ack = await client.send_message(sid, options={"hang": True, "chunks": 2, "delay_ms": 0})
        await client.subscribe(sid, ack["run_id"])
        while (await client.next_of("event"))["seq"] < 3:
            pass
        clock.advance(75)
        context = (await http.get(f"/api/sessions/{sid}/context")).json()
        await client.request({"type": "abort", "session_id": sid})
    assert context["runs"]["count"] == context["runs"]["running"] == 1
    assert context["duration"] == "1m 15s"
    assert context["events"]["by_kind"] == {"text_delta": 2, "user_message": 1}


async def test_an_empty_session_and_another_users(served: Served) -> None:
    async with served.http() as http:
        sid = (await http.post("/api/sessions")).json()["session_id"]
        context = (await http.get(f"/api/sessions/{sid}/context")).json()
        assert (await http.get("/api/sessions/nope/context")).status_code == 404
    assert context["runs"]["count"] == 0
    assert (context["first_start"], context["last_activity"]) == (None, None)
    assert (context["duration_ms"], context["duration"]) == (0, "0s")
    assert context["events"] == {"total": 0, "by_kind": {}}
    assert context["actions"] == context["artifacts"] == context["checkpoints"] == []
    async with served.http("bob") as other:
        response = await other.get(f"/api/sessions/{sid}/context")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "SESSION_NOT_FOUND"


def test_duration_text() -> None:
    cases = {
        0: "0s",
        999: "0s",
        45_000: "45s",
        200_000: "3m 20s",
        3_900_000: "1h 5m",
        (2 * 86_400 + 3 * 3_600 + 59) * 1000: "2d 3h",
        -5: "0s",
    }
    assert {ms: duration_text(ms) for ms in cases} == cases


async def test_a_client_marks_a_checkpoint_in_the_running_run(served: Served) -> None:
    client = await served.open()
    async with served.http() as http:
        sid = (await http.post("/api/sessions", json={"provider": "echo"})).json()["session_id"]
        url = f"/api/sessions/{sid}/checkpoint"
        idle = await http.post(url, json={"label": "nothing runs"})
        assert idle.status_code == 409
        assert idle.json()["error"]["code"] == "NO_ACTIVE_RUN"
        ack = await client.send_message(sid, options={"hang": True, "chunks": 2, "delay_ms": 0})
        await client.subscribe(sid, ack["run_id"])
        marked = await http.post(url, json={"label": "tests green", "data": {"commit": "abc"}})
        assert marked.status_code == 201, marked.text
        where = marked.json()
        for body, field in [
            ({}, "label"),
            ({"label": ""}, "label"),
            ({"label": "x", "at": 1}, "at"),
        ]:
            bad = await http.post(url, json=body)
            assert bad.status_code == 400, (body, bad.text)
            assert bad.json()["error"]["field"].startswith(field)
        while True:
            event = await client.next_of("event")
            if event["kind"] == "checkpoint":
                break
        await client.request({"type": "abort", "session_id": sid})
        context = (await http.get(f"/api/sessions/{sid}/context")).json()
    async with served.http("bob") as other:
        assert (await other.post(url, json={"label": "mine"})).status_code == 404

    assert (where["run_id"], where["seq"]) == (ack["run_id"], event["seq"])
    assert event["data"] == {"label": "tests green", "source": "client", "data": {"commit": "abc"}}
    [checkpoint] = context["checkpoints"]
    assert (checkpoint["run_id"], checkpoint["seq"]) == (ack["run_id"], event["seq"])
