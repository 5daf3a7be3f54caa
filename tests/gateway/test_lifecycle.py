"""The server as a process: crash and restart, graceful shutdown, the command line, pings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.uri import parse_uri

from gateway.settings import Settings

from .helpers import WAIT, Client, assert_run_stream, make_settings, serve

TOKEN_ARGS = ["--token", "tokA:alice", "--token", "tokB:bob"]


class Process:
    """``python -m gateway.cli serve`` on a free port."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, output: list[str]) -> None:
        self.proc = proc
        self.port = port
        self.output = output

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, token: str = "tokA") -> str:
        return f"ws://127.0.0.1:{self.port}/ws?token={token}"

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        client = Client(await connect(self.ws_url()))
        try:
            yield client
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def run_server(
    db: str, *args: str, tokens: bool = True, env: dict[str, str] | None = None
) -> AsyncIterator[Process]:
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", "0", "--db", db, *args]
    if tokens:
        cmd += TOKEN_ARGS
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "RUNWIRE_TOKENS": "", **(env or {})},
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        port = None
        async with asyncio.timeout(WAIT):
            while port is None:
                line = (await proc.stdout.readline()).decode()
                assert line, f"the server exited: {output}"
                output.append(line)
                match = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", line)
                if match:
                    port = int(match.group(1))
            if not tokens:  # The URL to open follows.
                output.append((await proc.stdout.readline()).decode())
        yield Process(proc, port, output)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_sigkill_mid_run_then_restart_delivers_persisted_events_and_server_restart(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "runwire.db")
    async with run_server(db) as server, server.client() as client:
        ack = await client.send_message(options={"chunks": 5000, "delay_ms": 2})
        session_id, run_id = ack["session_id"], ack["run_id"]
        await client.subscribe(session_id)
        seen = [await client.next_of("event") for _ in range(50)]
        # Reading history flushes the log: everything published so far is on disk.
        async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT) as http:
            response = await http.get(
                f"/api/sessions/{session_id}/events", params={"limit": 1, "token": "tokA"}
            )
            assert response.status_code == 200
        server.proc.kill()
        await server.proc.wait()
    assert server.proc.returncode == -signal.SIGKILL

    async with run_server(db) as server:
        async with server.client() as client:
            sub = await client.subscribe(session_id, run_id=run_id, after_seq=50)
            assert sub["recovered"] is True
            assert sub["is_processing"] is False
            rest = await client.events_until_complete()
        assert_run_stream(rest, run_id, start=51)
        assert rest[-1]["data"]["reason"] == "server_restart"
        async with server.client() as client:
            everything = await client.subscribe(session_id)
            assert everything["run"]["outcome"] == "server_restart"
            full = await client.events_until_complete()
            assert full == seen + rest
            runs = await client.request({"type": "list_runs"})
            assert runs["runs"] == []


async def test_a_second_server_on_a_database_in_use_refuses_and_leaves_its_runs_alone(
    tmp_path: Path,
) -> None:
    """Opening a database ends the runs it says are running (they were a crash's): a second
    server on a file in use would end the first one's live runs. It refuses instead."""
    db = str(tmp_path / "runwire.db")
    async with run_server(db) as server, server.client() as client:
        ack = await client.send_message(options={"chunks": 3, "delay_ms": 0, "hang": True})
        await client.subscribe(ack["session_id"])
        seen = [await client.next_of("event") for _ in range(4)]
        code, out, err = await _cli("serve", "--db", db, "--port", "0", *TOKEN_ARGS)
        assert code == 2
        assert out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert f"--db: {db}: the database is in use by another runwire server" in err
        # The first server's run goes on, and ends by its abort, not as crashed.
        abort = await client.request({"type": "abort", "session_id": ack["session_id"]})
        assert abort["last_seq"] == 5
        complete = await client.next_of("event")
        assert complete["data"]["reason"] == "aborted"
    assert [e["seq"] for e in seen] == [1, 2, 3, 4]
    # Once it has stopped, the file is free again.
    async with run_server(db) as server, server.client() as client:
        await client.subscribe(ack["session_id"])
        stored = await client.events_until_complete()
        assert [e["seq"] for e in stored] == [1, 2, 3, 4, 5]
        assert stored[-1]["data"]["reason"] == "aborted"


async def test_a_send_acknowledged_as_started_survives_an_immediate_sigkill(tmp_path: Path) -> None:
    # The ack comes only once the run is committed: killing the server the moment the
    # client has it must not lose the run (its client would never see it again).
    db = str(tmp_path / "runwire.db")
    async with run_server(db) as server, server.client() as client:
        ack = await client.send_message(
            content="keep me", client_msg_id="m1", options={"chunks": 5000, "delay_ms": 2}
        )
        assert ack["status"] == "started"
        server.proc.kill()
        await server.proc.wait()
    async with run_server(db) as server, server.client() as client:
        sub = await client.subscribe(ack["session_id"])
        assert sub["run"]["run_id"] == ack["run_id"]
        events = await client.events_until_complete()
        assert events[0]["data"] == {"content": "keep me", "client_msg_id": "m1"}
        assert events[-1]["data"]["reason"] == "server_restart"
        again = await client.send_message(ack["session_id"], content="keep me", client_msg_id="m1")
        assert (again["status"], again["run_id"]) == ("duplicate", ack["run_id"])


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"chunks": 2, "delay_ms": 0, "hang": True}, "server_restart"),
        ({"chunks": 25, "delay_ms": 20}, "done"),
    ],
)
async def test_sigterm_gives_runs_a_grace_period_then_closes_with_1012(
    tmp_path: Path, options: dict[str, Any], reason: str
) -> None:
    db = str(tmp_path / "runwire.db")
    grace = "0.5" if reason == "server_restart" else "30"
    async with run_server(db, "--shutdown-grace", grace) as server, server.client() as client:
        ack = await client.send_message(options=options)
        await client.subscribe(ack["session_id"])
        first = await client.next_of("event")
        server.proc.send_signal(signal.SIGTERM)
        events = [first, *await client.events_until_complete()]
        assert_run_stream(events, ack["run_id"])
        assert events[-1]["data"]["reason"] == reason
        closed = await client.closed_by_server()
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1012
        await server.proc.wait()
    assert server.proc.returncode in (0, -signal.SIGTERM)
    async with run_server(db) as server, server.client() as client:
        await client.subscribe(ack["session_id"])
        assert await client.events_until_complete() == events


async def test_drain_refuses_new_sends_and_lets_the_run_finish(settings: Settings) -> None:
    async with serve(replace(settings, shutdown_grace=30.0)) as server, server.client() as client:
        ack = await client.send_message(options={"chunks": 2, "delay_ms": 0, "hang": True})
        session_id = ack["session_id"]
        await client.subscribe(session_id)
        server.gateway.stop_accepting()  # What drain() does first.
        drain = asyncio.create_task(server.gateway.drain())
        refused = await client.send_message(options={"chunks": 1})
        assert refused["code"] == "INTERNAL"
        assert "shutting down" in refused["message"]
        # A run that ends within the grace period ends normally (here: by abort).
        await client.request({"type": "abort", "session_id": session_id})
        events = await client.events_until_complete()
        assert events[-1]["data"]["reason"] == "aborted"
        closed = await client.closed_by_server()
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1012
        await drain


async def test_server_sends_websocket_pings(tmp_path: Path) -> None:
    settings = replace(make_settings(str(tmp_path / "db")), ping_interval=0.05)
    async with serve(settings) as server:
        uri = parse_uri(server.url())
        reader, writer = await asyncio.open_connection(uri.host, uri.port)
        protocol = ClientProtocol(uri)
        protocol.send_request(protocol.connect())
        writer.write(b"".join(protocol.data_to_send()))
        opcodes: list[Any] = []
        async with asyncio.timeout(WAIT):
            while Opcode.PING not in opcodes:
                protocol.receive_data(await reader.read(65536))
                opcodes += [getattr(event, "opcode", None) for event in protocol.events_received()]
                writer.write(b"".join(protocol.data_to_send()))  # Pongs.
        writer.close()


# The command line ----------------------------------------------------------------------


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RUNWIRE_TOKENS": "", **(env or {})},
    )
    try:
        async with asyncio.timeout(WAIT):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # a server that started when it should have refused
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_help_explains_every_flag() -> None:
    code, out, _ = await _cli("--help")
    assert code == 0
    assert "serve" in out
    code, out, _ = await _cli("serve", "--help")
    assert code == 0
    for flag in (
        "--host",
        "--port",
        "--db",
        "--provider",
        "--token",
        "--origin",
        "--buffer-size",
        "--run-ttl",
        "--queue-limit",
        "--max-frame",
        "--log-format",
        "--shutdown-grace",
        "--send-rate",
        "--send-burst",
        "--redis",
        "--database",
        "--lease",
        "--redis-prefix",
    ):
        assert flag in out


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "x"],
        ["--port", "70000"],
        ["--buffer-size", "0"],
        ["--run-ttl", "-1"],
        ["--queue-limit", "many"],
        ["--max-frame", "12"],
        ["--log-format", "xml"],
        ["--token", "nocolon"],
        ["--token", "same:alice", "--token", "same:bob"],
        ["--origin", "not a url"],
        ["--send-rate", "0"],
        ["--send-rate", "fast"],
        ["--send-burst", "0"],
        ["--nonsense"],
        ["--redis", "redis://127.0.0.1:1/0"],
        ["--database", "postgresql://x@127.0.0.1:1/db"],
        ["--redis", "http://x", "--database", "postgresql://x@127.0.0.1:1/db"],
        ["--redis", "redis://127.0.0.1:1/0", "--database", "mysql://x"],
        ["--lease", "0"],
        ["--redis-prefix", "a:b"],
    ],
)
async def test_bad_flag_is_a_one_line_error_with_exit_code_2(
    args: list[str], tmp_path: Path
) -> None:
    code, out, err = await _cli("serve", "--db", str(tmp_path / "db"), *args)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "error" in err


async def test_bad_tokens_env_and_unusable_db_are_one_line_errors(tmp_path: Path) -> None:
    code, _, err = await _cli("serve", env={"RUNWIRE_TOKENS": "a:b,broken"})
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "RUNWIRE_TOKENS" in err
    # One token for two users, across the environment and a flag; the token is not shown.
    code, _, err = await _cli(
        "serve", "--token", "tokS3cret:bob", env={"RUNWIRE_TOKENS": "tokS3cret:alice"}
    )
    assert code == 2
    assert err.strip().splitlines() == [
        "runwire: error: --token, RUNWIRE_TOKENS: one token is given for both 'alice' and "
        "'bob'; a token names one user"
    ]
    (tmp_path / "dir.db").mkdir()
    code, _, err = await _cli("serve", "--db", str(tmp_path / "dir.db"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "--db" in err


async def test_unreachable_engines_are_one_line_errors_naming_the_flag(
    postgres_url: str, tmp_path: Path
) -> None:
    """Redis or PostgreSQL that cannot be reached: the flag is named, the password is not."""
    secret = "postgresql://runwire:s3cret@127.0.0.1:1/nowhere"
    code, _, err = await _cli("serve", "--redis", "redis://127.0.0.1:1/0", "--database", secret)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "--database" in err
    assert "s3cret" not in err
    code, _, err = await _cli(
        "serve", "--redis", "redis://:pw@127.0.0.1:1/0", "--database", postgres_url
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "--redis" in err
    assert "cannot reach Redis" in err
    assert ":pw@" not in err


async def test_an_address_that_cannot_be_listened_on_is_a_one_line_error(tmp_path: Path) -> None:
    """Checked before the database is touched: nothing is created or recovered."""
    db = tmp_path / "runwire.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await _cli("serve", "--port", str(port), "--db", str(db), *TOKEN_ARGS)
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1, err
    assert f"--port: cannot listen on 127.0.0.1:{port}: Address already in use" in err
    # TEST-NET-1: an address no machine here has.
    code, out, err = await _cli("serve", "--host", "192.0.2.1", "--db", str(db), *TOKEN_ARGS)
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1, err
    assert "--host: cannot listen on 192.0.2.1:8765: " in err
    assert not db.exists()


async def test_non_loopback_without_token_refuses_to_start(tmp_path: Path) -> None:
    code, _, err = await _cli("serve", "--host", "0.0.0.0", "--db", str(tmp_path / "db"))
    assert code == 2
    assert "without a token" in err


async def test_loopback_without_token_prints_a_url_with_a_fresh_token(tmp_path: Path) -> None:
    async with run_server(str(tmp_path / "db"), tokens=False) as server:
        text = "".join(server.output)
        match = re.search(r"Open: (http://127\.0\.0\.1:\d+/)\?token=(\S+)", text)
        assert match is not None, text
        token = match.group(2)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT) as http:
            ok = await http.get("/api/sessions", params={"token": token})
            assert ok.status_code == 200
            assert (await http.get("/api/me", params={"token": token})).json()["user"] == "local"
            assert (await http.get("/api/sessions", params={"token": "x"})).status_code == 401


async def test_tokens_from_the_environment(tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", "0", "--db", db]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "RUNWIRE_TOKENS": "tokE:erin, tokF:frank"},
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT):
            line = (await proc.stdout.readline()).decode()
        port = re.search(r":(\d+)/", line)
        assert port is not None
        assert "token=" not in line
        async with httpx.AsyncClient(timeout=WAIT) as http:
            base = f"http://127.0.0.1:{port.group(1)}"
            for token, user in (("tokE", "erin"), ("tokF", "frank")):
                response = await http.get(
                    f"{base}/api/me", headers={"authorization": f"Bearer {token}"}
                )
                assert response.json()["user"] == user
    finally:
        proc.kill()
        await proc.wait()


async def test_agent_clis_are_enabled_from_the_environment(tmp_path: Path) -> None:
    fake = str(Path(__file__).parents[1] / "providers" / "fakes" / "fake_claude.py")
    env = {"RUNWIRE_CLAUDE_BIN": fake}
    async with (
        run_server(str(tmp_path / "db.sqlite"), env=env) as server,
        httpx.AsyncClient(
            base_url=server.base_url, headers={"authorization": "Bearer tokA"}
        ) as http,
    ):
        body = (await http.get("/api/providers")).json()
    assert body == {"providers": ["echo", "claude"], "default": "echo"}


async def test_an_unconfigured_default_provider_is_a_one_line_error(tmp_path: Path) -> None:
    code, _, err = await _cli("serve", "--db", str(tmp_path / "db"), "--provider", "claude")
    assert code == 2
    assert "--provider: 'claude' is not configured (available: echo)" in err
    assert len(err.strip().splitlines()) == 1, err


# Runs in a fresh interpreter (this one has loaded everything already): a gateway on its
# defaults goes through its lifespan and one echo run; then the modules it loaded.
_SINGLE_PROCESS = """
import asyncio, json, sys
from gateway import Gateway, Settings
from gateway.frames import Send

async def main() -> None:
    gateway = Gateway(Settings(db=sys.argv[1], tokens={"t": "alice"}))
    async with gateway.lifespan():
        service = gateway.service
        send = Send(content="hi", options={"chunks": 2, "delay_ms": 0})
        started = await service.send("alice", send)
        sub = await service.subscribe("alice", started.session_id, run_id=None, after_seq=0)
        kinds = []
        async for batch in sub:
            kinds += [event.kind for event in batch]
            if "complete" in kinds:
                break
    loaded = sorted({name.split(".")[0] for name in sys.modules} & {"asyncpg", "httpx", "redis"})
    print(json.dumps({"run": started.status, "kinds": kinds, "loaded": loaded}))

asyncio.run(main())
"""


async def test_a_single_process_on_its_defaults_loads_no_client_it_does_not_use(
    tmp_path: Path,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SINGLE_PROCESS,
        str(tmp_path / "runwire.db"),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 0
    result = json.loads(out)
    assert result["run"] == "started"
    assert result["kinds"][-1] == "complete"
    assert result["loaded"] == []


def test_what_is_imported_on_first_use_is_still_exported_by_its_package() -> None:
    import providers
    import registry.store
    from providers.openai import OpenAIProvider
    from registry.store.postgres import PostgresStore

    assert registry.store.PostgresStore is PostgresStore
    assert providers.OpenAIProvider is OpenAIProvider
    with pytest.raises(AttributeError, match="NoSuchStore"):
        registry.store.NoSuchStore  # noqa: B018
    with pytest.raises(AttributeError, match="NoSuchProvider"):
        providers.NoSuchProvider  # noqa: B018
