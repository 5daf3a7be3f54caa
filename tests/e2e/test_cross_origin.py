"""A chat UI served from another origin: allow-listed with ``--origin``, its page uses the
HTTP API, the SSE stream and the WebSocket of a real `runwire serve`; any other origin's
page is stopped by the browser. Chromium enforces CORS here, not the test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from .harness import TOKENS, Server

# Everything a sidebar-and-transcript UI does, from its own origin: create, rename, a run
# over the WebSocket followed over SSE, the runs list, delete. Returns what it saw.
USE_THE_API = """
async ({base, token}) => {
  const headers = {Authorization: `Bearer ${token}`, "Content-Type": "application/json"};
  const call = async (method, path, body) => {
    const response = await fetch(base + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    return [response.status, response.status === 204 ? null : await response.json()];
  };
  const [created, session] = await call("POST", "/api/sessions", {title: "from afar"});
  const id = session.session_id;
  const [patched, renamed] = await call("PATCH", `/api/sessions/${id}`, {title: "renamed"});
  const kinds = [];
  const streamed = new Promise((resolve, reject) => {
    const source = new EventSource(`${base}/api/sessions/${id}/stream?token=${token}`);
    source.addEventListener("complete", () => { source.close(); resolve(); });
    for (const kind of ["user_message", "text_delta", "text"]) {
      source.addEventListener(kind, (message) => kinds.push(JSON.parse(message.data).kind));
    }
    source.onerror = () => { source.close(); reject(new Error("the stream failed")); };
  });
  const ws = new WebSocket(`${base.replace("http", "ws")}/ws?token=${token}`);
  const ack = await new Promise((resolve, reject) => {
    ws.onopen = () => ws.send(JSON.stringify({
      type: "send", id: 1, session_id: id, content: "hi there",
      options: {chunks: 3, delay_ms: 0},
    }));
    ws.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      if (frame.id === 1) resolve(frame);
    };
    ws.onerror = () => reject(new Error("the WebSocket failed"));
  });
  ws.close();
  await streamed;
  const [listed, runs] = await call("GET", "/api/runs?status=all");
  const [deleted] = await call("DELETE", `/api/sessions/${id}`);
  const [gone, missing] = await call("GET", `/api/sessions/${id}`);
  return {
    created, patched, title: renamed.title, ack: ack.status, kinds,
    listed, runs: runs.runs.length, deleted, gone, code: missing.error.code,
  };
}
"""

# The same with runwire.js, imported from the server as docs/client.md shows: its default
# endpoint is the server the module came from.
USE_THE_CLIENT = """
async ({base, token}) => {
  const { RunwireClient } = await import(`${base}/static/runwire.js`);
  const seen = [];
  let finished;
  const done = new Promise((resolve) => { finished = resolve; });
  const client = new RunwireClient({
    token,
    onEvent: (event) => {
      seen.push(event.seq);
      if (event.kind === "complete") finished();
    },
  });
  client.connect();
  const session = await client.http("/api/sessions", {method: "POST", body: {title: "t"}});
  const id = session.session_id;
  await client.subscribe(id, {after_seq: 0});
  const ack = await client.send({session_id: id, content: "hi", options: {chunks: 5, delay_ms: 0}});
  await done;
  const { events } = await client.history(id);
  client.close();
  return {ack: ack.status, seen, stored: events.map((event) => event.seq)};
}
"""

# The same first call, from a page whose origin is not allow-listed.
TRY_THE_API = """
async ({base, token}) => {
  const attempts = {
    create: () => fetch(`${base}/api/sessions`, {
      method: "POST",
      headers: {Authorization: `Bearer ${token}`, "Content-Type": "application/json"},
      body: "{}",
    }),
    // A simple request (no preflight): the server answers, the browser hides the answer.
    list: () => fetch(`${base}/api/sessions?token=${token}`),
  };
  const results = {};
  for (const [name, attempt] of Object.entries(attempts)) {
    try {
      results[name] = (await attempt()).status;
    } catch (error) {
      results[name] = error.name;
    }
  }
  return results;
}
"""


class Blank(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>ui</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def ui_port() -> Iterator[int]:
    """A real loopback server for the UI's page (Chromium lets only a page on a local
    address reach a loopback one without asking the user). As ``localhost`` and as
    ``127.0.0.1`` it is two origins."""
    pages = ThreadingHTTPServer(("127.0.0.1", 0), Blank)
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    try:
        yield pages.server_address[1]
    finally:
        pages.shutdown()
        pages.server_close()


@pytest.fixture
def server(tmp_path: Path, ui_port: int) -> Iterator[Server]:
    allowed = f"http://localhost:{ui_port}"
    srv = Server(tmp_path / "runwire.db", tmp_path / "server.log", "--origin", allowed)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def page_at(context: Any, origin: str) -> Page:
    page: Page = context.new_page()
    page.goto(f"{origin}/index.html")
    return page


def test_an_allow_listed_origin_uses_the_http_api_sse_and_websocket(
    context: Any, server: Server, ui_port: int
) -> None:
    page = page_at(context, f"http://localhost:{ui_port}")
    seen = page.evaluate(USE_THE_API, {"base": server.base, "token": TOKENS["alice"]})
    assert seen == {
        "created": 201,
        "patched": 200,
        "title": "renamed",
        "ack": "started",
        "kinds": ["user_message", "text_delta", "text_delta", "text_delta", "text"],
        "listed": 200,
        "runs": 1,
        "deleted": 204,
        "gone": 404,
        "code": "SESSION_NOT_FOUND",
    }


def test_an_allow_listed_origin_runs_runwire_js_from_the_server(
    context: Any, server: Server, ui_port: int
) -> None:
    page = page_at(context, f"http://localhost:{ui_port}")
    seen = page.evaluate(USE_THE_CLIENT, {"base": server.base, "token": TOKENS["alice"]})
    every = list(range(1, 9))  # user_message, 5 chunks, text, complete
    assert seen == {"ack": "started", "seen": every, "stored": every}


def test_any_other_origin_is_stopped_by_the_browser(
    context: Any, server: Server, ui_port: int
) -> None:
    page = page_at(context, f"http://127.0.0.1:{ui_port}")
    results = page.evaluate(TRY_THE_API, {"base": server.base, "token": TOKENS["alice"]})
    assert results == {"create": "TypeError", "list": "TypeError"}
    # Refused at the preflight: nothing was created.
    assert server.api("/api/sessions") == {"sessions": [], "next": None}
