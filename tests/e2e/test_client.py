"""runwire.js against a scripted server: the recovery paths a healthy server rarely takes.

The module runs in Chromium; its WebSocket is answered by Playwright's WebSocket routing
(a fake server in this file), so each test can send exactly the frames it needs: batches,
repeats, gaps, `lagged`, a silent or closed connection, `recovered: false`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocketRoute

STATIC = Path(__file__).resolve().parents[2] / "gateway" / "static"
ORIGIN = "http://runwire.test"
SID = "s1"
RUN = "r1"

TEST_PAGE = """<!doctype html>
<script type="module">
import { RunwireClient } from "/static/runwire.js";
window.log = [];
const record = (kind) => (...args) => window.log.push([kind, JSON.parse(JSON.stringify(args))]);
window.makeClient = (options = {}) => {
  window.client = new RunwireClient({
    token: "tok",
    backoff: { initial: 20, max: 40 },
    ...options,
    onEvent: record("event"),
    onSubscribed: record("subscribed"),
    onState: record("state"),
    onResync: record("resync"),
    onTruncated: record("truncated"),
    onLagged: record("lagged"),
    onRunStarted: record("run_started"),
    onError: (err) => window.log.push(["error", [err.code]]),
  });
  window.client.connect();
};
window.count = (kind) => window.log.filter((entry) => entry[0] === kind).length;
window.seqs = () => window.log.filter((e) => e[0] === "event").map((e) => e[1][0].seq);
window.ready = true;
</script>
"""


def event(seq: int, kind: str = "text_delta", run_id: str = RUN) -> dict[str, Any]:
    data: dict[str, Any] = {"text": f"<{seq}>"}
    if kind == "complete":
        data = {"reason": "done", "success": True, "aborted": False, "exit_code": 0}
    return {
        "type": "event",
        "session_id": SID,
        "run_id": run_id,
        "seq": seq,
        "kind": kind,
        "ts": 1,
        "data": data,
    }


class FakeServer:
    """Answers subscribe/ping/send like a server; everything else is up to the test."""

    def __init__(self) -> None:
        self.sockets: list[WebSocketRoute] = []
        self.frames: list[tuple[int, dict[str, Any]]] = []  # (connection index, frame)
        self.answer_pings_from = 0  # connection index from which pings are answered
        self.ack_sends_from = 0  # connection index from which sends are acked
        self.subscribed: dict[str, Any] = {"run": None, "is_processing": True, "replayed": 0}

    def handle(self, ws: WebSocketRoute) -> None:
        index = len(self.sockets)
        self.sockets.append(ws)
        ws.on_message(lambda message: self._on_frame(index, ws, message))

    def _on_frame(self, index: int, ws: WebSocketRoute, message: str | bytes) -> None:
        frame = json.loads(message)
        self.frames.append((index, frame))
        kind = frame["type"]
        if kind == "subscribe":
            reply = {"type": "subscribed", "id": frame["id"], "session_id": frame["session_id"]}
            ws.send(json.dumps({**reply, "recovered": True, **self.subscribed}))
        elif kind == "ping" and index >= self.answer_pings_from:
            ws.send(json.dumps({"type": "pong", "id": frame["id"]}))
        elif kind == "send" and index >= self.ack_sends_from:
            ack = {"type": "ack", "id": frame["id"], "op": "send", "session_id": SID}
            ws.send(json.dumps({**ack, "run_id": "r9", "status": "started"}))
        elif kind == "send":
            # No reply; a notice lets the test see that the send arrived.
            run = {"run_id": "r9", "session_id": SID, "status": "running"}
            ws.send(json.dumps({"type": "run_started", "session_id": SID, "run": run}))
        elif kind == "unsubscribe":
            ack = {"type": "ack", "id": frame["id"], "op": "unsubscribe", "session_id": SID}
            ws.send(json.dumps(ack))

    def push(self, *frames: dict[str, Any], batch: bool = True) -> None:
        """Send frames on the newest connection: as one array (batch=1), or one by one."""
        ws = self.sockets[-1]
        if batch:
            ws.send(json.dumps(list(frames)))
        else:
            for frame in frames:
                ws.send(json.dumps(frame))

    def sent(self, kind: str) -> list[tuple[int, dict[str, Any]]]:
        return [(i, f) for i, f in self.frames if f["type"] == kind]


@pytest.fixture
def fake(context: Any) -> tuple[Page, FakeServer]:
    server = FakeServer()
    page: Page = context.new_page()

    def serve(route: Any) -> None:
        path = route.request.url.removeprefix(ORIGIN).split("?")[0]
        if path == "/test.html":
            route.fulfill(body=TEST_PAGE, content_type="text/html")
        elif path.startswith("/static/") and (STATIC / path.removeprefix("/static/")).is_file():
            route.fulfill(path=str(STATIC / path.removeprefix("/static/")))
        else:
            route.fulfill(status=404, body="not found")

    page.route(f"{ORIGIN}/**", serve)
    page.route_web_socket(re.compile(r"^ws://runwire\.test/ws\?"), server.handle)
    page.goto(f"{ORIGIN}/test.html")
    page.wait_for_function("window.ready === true")
    return page, server


def start(page: Page, options: str = "{}") -> None:
    page.evaluate(f"makeClient({options})")
    page.evaluate(f"client.subscribe({json.dumps(SID)})")
    page.wait_for_function("count('subscribed') === 1")


def test_connects_with_token_and_batch(fake: tuple[Page, FakeServer]) -> None:
    page, server = fake
    start(page)
    assert len(server.sockets) == 1
    url = server.sockets[0].url
    assert "token=tok" in url
    assert "batch=1" in url
    assert server.sent("subscribe") == [
        (0, {"type": "subscribe", "id": 1, "session_id": SID, "after_seq": 0})
    ]


def test_batches_are_unpacked_and_repeats_dropped(fake: tuple[Page, FakeServer]) -> None:
    page, server = fake
    start(page)
    server.push(event(1, "user_message"), event(2), event(2), event(3))
    server.push(event(3), event(4), batch=False)
    page.wait_for_function("seqs().length === 4")
    server.push(event(5, "complete"))
    page.wait_for_function("seqs().length === 5")
    assert page.evaluate("seqs()") == [1, 2, 3, 4, 5]
    assert page.evaluate("client.stats.duplicates") == 2
    assert page.evaluate("client.position('s1')") == {"run_id": RUN, "seq": 5}


def test_a_gap_makes_it_resubscribe_from_its_last_position(fake: tuple[Page, FakeServer]) -> None:
    page, server = fake
    start(page)
    server.push(event(1, "user_message"), event(2), event(4))
    page.wait_for_function("count('subscribed') === 2")
    assert page.evaluate("seqs()") == [1, 2]
    # The old subscription is replaced: unsubscribe first, then from (r1, 2).
    assert [f["type"] for _, f in server.frames][-2:] == ["unsubscribe", "subscribe"]
    _, again = server.sent("subscribe")[-1]
    assert (again["run_id"], again["after_seq"]) == (RUN, 2)
    server.push(event(3), event(4))
    page.wait_for_function("seqs().length === 4")
    assert page.evaluate("client.stats.gaps") == 1


def test_lagged_resubscribes_from_the_reported_position(fake: tuple[Page, FakeServer]) -> None:
    page, server = fake
    start(page)
    server.push(event(1, "user_message"), event(2))
    server.push({"type": "lagged", "session_id": SID, "run_id": RUN, "last_seq": 2})
    page.wait_for_function("count('subscribed') === 2")
    _, again = server.sent("subscribe")[-1]
    assert (again["run_id"], again["after_seq"]) == (RUN, 2)
    assert server.sent("unsubscribe") == []  # the server already dropped it
    assert page.evaluate("count('lagged')") == 1


def test_reconnect_resumes_exactly_and_repeats_an_unanswered_send(
    fake: tuple[Page, FakeServer],
) -> None:
    page, server = fake
    server.ack_sends_from = 1  # the first connection never answers the send
    start(page)
    server.push(event(1, "user_message"), event(2), event(3))
    page.wait_for_function("seqs().length === 3")
    page.evaluate(
        "() => { window.acked = null;"
        " client.send({session_id: 's1', content: 'hi'}).then((ack) => { window.acked = ack; }); }"
    )
    page.wait_for_function("count('run_started') === 1")

    server.sockets[0].close(code=1012, reason="restart")
    page.wait_for_function("window.acked !== null && count('subscribed') === 2")

    states = page.evaluate("log.filter((e) => e[0] === 'state').map((e) => e[1][0])")
    assert states == ["connecting", "connected", "reconnecting", "connected"]
    _, (_, second) = server.sent("subscribe")
    assert (second["run_id"], second["after_seq"]) == (RUN, 3)
    (i1, send1), (i2, send2) = server.sent("send")
    assert (i1, i2) == (0, 1)
    assert send1["client_msg_id"] == send2["client_msg_id"]
    assert page.evaluate("window.acked.status") == "started"


def test_a_silent_connection_is_dropped_and_replaced(fake: tuple[Page, FakeServer]) -> None:
    page, server = fake
    start(page, "{pingInterval: 50, pingTimeout: 100}")
    # The first connection goes dead while the browser still thinks it open; its replacement
    # is healthy, so the client settles on it (a second dead one would be replaced in turn).
    server.answer_pings_from = 1
    page.wait_for_function("client.stats.connects === 2 && count('subscribed') === 2")
    assert server.sent("ping")[0][0] == 0


def test_a_refresh_resumes_from_the_stored_position(fake: tuple[Page, FakeServer]) -> None:
    page, server = fake
    start(page)
    server.push(*(event(seq) for seq in range(1, 6)))
    page.wait_for_function("seqs().length === 5")

    page.reload()  # pagehide stores the position
    page.wait_for_function("window.ready === true")
    start(page)
    _, resumed = server.sent("subscribe")[-1]
    assert (resumed["run_id"], resumed["after_seq"]) == (RUN, 5)
    server.push(event(5), event(6))  # an overlap is dropped
    page.wait_for_function("seqs().length === 1")
    assert page.evaluate("seqs()") == [6]


def test_not_recovered_asks_for_history_and_accepts_the_jump(fake: tuple[Page, FakeServer]) -> None:
    page, server = fake
    server.subscribed = {
        "run": None,
        "is_processing": True,
        "replayed": 0,
        "recovered": False,
        "first_available": {"run_id": RUN, "seq": 10},
    }
    page.evaluate("makeClient()")
    page.evaluate(f"client.subscribe('s1', {{run_id: '{RUN}', after_seq: 2}})")
    page.wait_for_function("count('resync') === 1")
    assert page.evaluate("log.find((e) => e[0] === 'resync')[1][1].reason") == "not_recovered"
    server.push(event(10), event(11))
    page.wait_for_function("seqs().length === 2")
    assert page.evaluate("client.stats.gaps") == 0


def test_a_run_that_ended_without_its_complete_is_reported(fake: tuple[Page, FakeServer]) -> None:
    page, server = fake
    start(page)
    server.push(event(1, "user_message"), event(2), event(3))
    page.wait_for_function("seqs().length === 3")
    # The server restarts: the run is over, and nothing after (r1, 3) exists any more.
    server.subscribed = {"run": None, "is_processing": False, "replayed": 0}
    server.sockets[0].close(code=1012)
    page.wait_for_function("count('truncated') === 1")
    truncated = page.evaluate("log.find((e) => e[0] === 'truncated')[1]")
    assert truncated == [SID, {"run_id": RUN, "last_seq": 3}]


def test_an_error_frame_rejects_its_request_and_is_reported(fake: tuple[Page, FakeServer]) -> None:
    page, server = fake
    server.ack_sends_from = 99
    start(page)
    page.evaluate(
        "() => { window.failed = null;"
        " client.send({session_id: 's1', content: 'x'})"
        ".catch((e) => { window.failed = e.code; }); }"
    )
    page.wait_for_function("count('run_started') === 1")
    (_, send) = server.sent("send")[0]
    server.push(
        {"type": "error", "id": send["id"], "code": "RUN_IN_PROGRESS", "message": "busy"},
        batch=False,
    )
    page.wait_for_function("window.failed !== null")
    assert page.evaluate("window.failed") == "RUN_IN_PROGRESS"
    assert page.evaluate("log.filter((e) => e[0] === 'error').map((e) => e[1][0])") == [
        "RUN_IN_PROGRESS"
    ]
