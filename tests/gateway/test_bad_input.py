"""Bad input: every malformed frame gets an error frame and the connection stays usable;
an oversized message closes with 1009; a wrong token is a 401, a foreign Origin a 403."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect
from websockets.typing import Origin

from gateway.frames import MAX_DEPTH
from gateway.settings import Settings

from .helpers import WAIT, Served, make_settings, nested, serve

# What each client frame type requires, and a valid value for every field.
REQUIRED: dict[str, dict[str, Any]] = {
    "send": {"content": "hi"},
    "subscribe": {"session_id": "s_x"},
    "unsubscribe": {"session_id": "s_x"},
    "abort": {"session_id": "s_x"},
    "list_runs": {},
    "ping": {},
}
OPTIONAL: dict[str, dict[str, Any]] = {
    "send": {
        "session_id": "s_x",
        "provider": "echo",
        "options": {},
        "client_msg_id": "m",
        "multitask": "enqueue",
    },
    "subscribe": {"run_id": "r", "after_seq": 3},
    "unsubscribe": {},
    "abort": {"clear_queue": True},
    "list_runs": {"status": "all"},
    "ping": {},
}
FIELD_KIND = {
    "content": "str",
    "session_id": "str",
    "provider": "str",
    "client_msg_id": "str",
    "run_id": "str",
    "options": "object",
    "multitask": "enum",
    "status": "enum",
    "after_seq": "seq",
    "clear_queue": "bool",
}
NULLABLE = {"session_id", "provider", "client_msg_id", "run_id"}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def wrong_value(kind: str, nullable: bool) -> st.SearchStrategy[Any]:
    """Values that a field of ``kind`` must refuse."""
    not_str = st.one_of(
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.lists(scalars, max_size=2),
        st.dictionaries(st.text(max_size=3), scalars, max_size=2),
    )
    if kind == "str":
        base = not_str
    elif kind == "object":
        base = st.one_of(st.text(max_size=5), st.integers(), st.booleans(), st.lists(scalars))
    elif kind == "enum":
        base = st.one_of(
            st.text(max_size=10).filter(
                lambda s: s not in ("reject", "enqueue", "interrupt", "running", "all")
            ),
            st.integers(),
            st.booleans(),
        )
    elif kind == "seq":
        base = st.one_of(
            st.integers(max_value=-1),
            st.integers(min_value=2**53 + 1, max_value=2**80),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=5),
            st.booleans(),
        )
    else:  # bool
        base = st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=False))
    return base if nullable else st.one_of(base, st.none())


@st.composite
def bad_field_frames(draw: st.DrawFn) -> tuple[str, str, str | None]:
    """A known frame with exactly one bad field: (message, code, field)."""
    kind = draw(st.sampled_from(sorted(REQUIRED)))
    frame: dict[str, Any] = {"type": kind, **REQUIRED[kind]}
    for name, value in OPTIONAL[kind].items():
        if draw(st.booleans()):
            frame[name] = value
    fields = sorted(set(REQUIRED[kind]) | set(OPTIONAL[kind]))
    choices = [*fields, "id"] + ([f"missing:{f}" for f in REQUIRED[kind]])
    target = draw(st.sampled_from(choices))
    if target.startswith("missing:"):
        field = target.split(":", 1)[1]
        del frame[field]
    elif target == "id":
        field = "id"
        frame["id"] = draw(
            st.one_of(
                st.booleans(),
                st.floats(allow_nan=False, allow_infinity=False),
                st.integers(min_value=2**53 + 1, max_value=2**80),
                st.lists(scalars, max_size=2),
                st.dictionaries(st.text(max_size=3), scalars, max_size=2),
            )
        )
    else:
        field = target
        nullable = field in NULLABLE and field in OPTIONAL[kind]
        frame[field] = draw(wrong_value(FIELD_KIND[field], nullable))
    if field != "id" and draw(st.booleans()):
        frame["id"] = draw(st.one_of(st.integers(-1000, 1000), st.text(max_size=8)))
    return json.dumps(frame), "INVALID_FIELD", field


@st.composite
def unknown_type_frames(draw: st.DrawFn) -> tuple[str, str, str | None]:
    kind = draw(st.text(max_size=12).filter(lambda s: s not in REQUIRED))
    extra = draw(
        st.dictionaries(st.text(max_size=5).filter(lambda k: k != "type"), json_values, max_size=3)
    )
    return json.dumps({**extra, "type": kind}), "UNKNOWN_TYPE", "type"


@st.composite
def typeless_frames(draw: st.DrawFn) -> tuple[str, str, str | None]:
    extra = draw(
        st.dictionaries(st.text(max_size=5).filter(lambda k: k != "type"), json_values, max_size=3)
    )
    if draw(st.booleans()):
        extra["type"] = draw(
            st.one_of(st.none(), st.integers(), st.booleans(), st.lists(scalars, max_size=2))
        )
        if extra["type"] is None:
            del extra["type"]
    return json.dumps(extra), "INVALID_FIELD", "type"


@st.composite
def too_deep_frames(draw: st.DrawFn) -> tuple[str, str, str | None]:
    """A ``send`` whose options nest past ``MAX_DEPTH`` (``INVALID_FIELD``), or a message
    nested deeper than any JSON parser here can read, wherever (``BAD_FRAME``)."""
    lists = draw(st.booleans())
    if draw(st.booleans()):
        # The options object itself is one level.
        inner = nested(draw(st.integers(MAX_DEPTH, 900)), lists=lists)
        frame = f'{{"type":"send","content":"hi","options":{{"a":{inner}}},"id":7}}'
        return frame, "INVALID_FIELD", "options"
    # Past any recursion limit in force: hypothesis raises it by 2,000 while a test runs.
    deep = nested(draw(st.integers(20_000, 60_000)), lists=lists)
    frame = draw(
        st.sampled_from(
            [
                deep,
                f'{{"type":"send","content":"hi","options":{{"a":{deep}}}}}',
                f'{{"type":"ping","extra":{deep}}}',
                f'{{"extra":{deep},"type":"list_runs"}}',
                f'{{"type":"subscribe","session_id":{deep}}}',
                f'{{"type":"nope","extra":{deep}}}',
            ]
        )
    )
    return frame, "BAD_FRAME", None


not_objects = st.one_of(scalars, st.lists(json_values, max_size=3)).map(
    lambda v: (json.dumps(v), "BAD_FRAME", None)
)
not_json = (
    st.text(max_size=40).filter(lambda s: not _is_json(s)).map(lambda s: (s, "BAD_FRAME", None))
)
binary = st.binary(max_size=40).map(lambda b: (b, "BAD_FRAME", None))

bad_messages = st.one_of(
    bad_field_frames(),
    unknown_type_frames(),
    typeless_frames(),
    too_deep_frames(),
    not_objects,
    not_json,
    binary,
)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class ThreadedServer:
    """A gateway in its own thread and event loop, for synchronous hypothesis tests."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ws_url = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._settings) as served:
            self.ws_url = served.url("alice")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        assert self._ready.wait(WAIT)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT)


@pytest.fixture(scope="module")
def threaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    db = str(tmp_path_factory.mktemp("bad") / "runwire.db")
    with ThreadedServer(make_settings(db)) as server:
        yield server


@pytest.fixture(scope="module")
def connection(threaded: ThreadedServer) -> Iterator[ClientConnection]:
    with sync_connect(threaded.ws_url) as ws:
        yield ws


def _frame(ws: ClientConnection) -> dict[str, Any]:
    value = json.loads(ws.recv(timeout=WAIT))
    assert isinstance(value, dict)
    return value


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=bad_messages)
def test_every_bad_frame_gets_an_error_and_the_connection_still_works(
    connection: ClientConnection, case: tuple[str | bytes, str, str | None]
) -> None:
    message, code, field = case
    connection.send(message)
    reply = _frame(connection)
    assert reply["type"] == "error", (message, reply)
    assert reply["code"] == code, (message, reply)
    if field is not None:
        assert reply["field"] == field, (message, reply)
    if code == "INVALID_FIELD":
        assert reply["message"].startswith(f"{field}: "), (message, reply)
    if code == "INVALID_FIELD" and field != "id" and isinstance(message, str):
        sent = json.loads(message)
        if isinstance(sent.get("id"), int | str) and not isinstance(sent.get("id"), bool):
            assert reply["id"] == sent["id"]
    connection.send(json.dumps({"type": "ping", "id": "alive"}))
    assert _frame(connection) == {"type": "pong", "id": "alive"}


@pytest.mark.parametrize("value", ["1e400", "[1, -1e400]", '{"b": 1e999}'])
def test_a_bad_value_inside_options_names_options(connection: ClientConnection, value: str) -> None:
    """msgspec cannot name the key it failed in (it writes ``options[...]``): the error
    names the field up to there."""
    connection.send(f'{{"type":"send","content":"hi","options":{{"a":{value}}},"id":3}}')
    assert _frame(connection) == {
        "type": "error",
        "id": 3,
        "code": "INVALID_FIELD",
        "message": "options: Number out of range",
        "field": "options",
    }


@pytest.mark.parametrize("lists", [True, False])
def test_options_may_nest_up_to_max_depth(connection: ClientConnection, lists: bool) -> None:
    """The depth limit is where it says: options of exactly ``MAX_DEPTH`` levels pass the
    frame check (and fail later, on the session that does not exist)."""
    options = f'{{"a":{nested(MAX_DEPTH - 1, lists=lists)}}}'
    connection.send(f'{{"type":"send","session_id":"s_x","content":"hi","options":{options}}}')
    assert _frame(connection)["code"] == "SESSION_NOT_FOUND"
    too_deep = f'{{"a":{nested(MAX_DEPTH, lists=lists)}}}'
    connection.send(f'{{"type":"send","session_id":"s_x","content":"hi","options":{too_deep}}}')
    reply = _frame(connection)
    assert (reply["code"], reply["field"]) == ("INVALID_FIELD", "options")
    assert reply["message"] == f"options: nested deeper than {MAX_DEPTH} levels"


async def test_oversized_message_closes_with_1009(tmp_path: Path) -> None:
    settings_ = replace(make_settings(str(tmp_path / "db")), max_frame=4096)
    async with serve(settings_) as server, server.client() as client:
        pong = await client.request({"type": "ping", "id": "x" * 3000})
        assert pong["type"] == "pong"
        await client.send({"type": "ping", "id": "x" * 5000})
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_app_level_size_check_also_closes_with_1009(tmp_path: Path) -> None:
    # When the server in front allows more than max_frame, the gateway still refuses.
    settings_ = replace(make_settings(str(tmp_path / "db")), max_frame=4096)
    async with serve(settings_, ws_max_size=1 << 20) as server, server.client() as client:
        await client.send({"type": "ping", "id": "x" * 5000})
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_wrong_or_missing_token_is_refused_with_401(server: Served) -> None:
    for url in (server.url(None), server.ws_url + "?token=wrong"):
        with pytest.raises(InvalidStatus) as refused:
            await connect(url)
        assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        await connect(server.url(None), additional_headers={"Authorization": "Bearer nope"})
    assert refused.value.response.status_code == 401
    async with connect(server.url(None), additional_headers={"Authorization": "Bearer tokA"}):
        pass


async def test_origin_allow_list(tmp_path: Path) -> None:
    settings_ = replace(make_settings(str(tmp_path / "db")), origins=("https://app.example",))
    async with serve(settings_) as server:
        with pytest.raises(InvalidStatus) as refused:
            await connect(server.url(), origin=Origin("https://evil.example"))
        assert refused.value.response.status_code == 403
        host = server.base_url.removeprefix("http://")
        for origin in (Origin(f"http://{host}"), Origin("https://app.example"), None):
            async with connect(server.url(), origin=origin) as ws:
                await ws.send(json.dumps({"type": "ping", "id": 1}))
                assert json.loads(await ws.recv()) == {"type": "pong", "id": 1}


async def test_the_origin_allow_list_is_the_http_apis_cors_policy(tmp_path: Path) -> None:
    """What Chromium enforces in tests/e2e/test_cross_origin.py, header by header."""
    settings_ = replace(make_settings(str(tmp_path / "db")), origins=("https://App.example/",))
    async with serve(settings_) as server, server.http(None) as http:
        preflight = {
            "access-control-request-method": "PATCH",
            "access-control-request-headers": "authorization, content-type",
        }
        path = "/api/sessions/s1"
        allowed = await http.options(path, headers={"origin": "https://app.example", **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "PATCH" in allowed.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in allowed.headers
        foreign = await http.options(path, headers={"origin": "https://evil.example", **preflight})
        assert foreign.status_code == 400
        assert "access-control-allow-origin" not in foreign.headers
        # Errors are readable too: the page can show why it was refused.
        refused = await http.get("/api/sessions", headers={"origin": "https://app.example"})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "https://app.example"
        hidden = await http.get("/api/sessions", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in hidden.headers
        # So are Starlette's own: no such route or file, a method the route does not take.
        own = {"origin": "https://app.example", "authorization": f"Bearer {server.token('alice')}"}
        for method, missing, status in (
            ("GET", "/api/nothing", 404),
            ("GET", "/static/nothing.js", 404),
            ("DELETE", "/api/sessions", 405),
        ):
            response = await http.request(method, missing, headers=own)
            assert response.status_code == status, missing
            assert response.headers["access-control-allow-origin"] == "https://app.example"
            assert response.json()["error"]["code"] in ("NOT_FOUND", "METHOD_NOT_ALLOWED")
