"""Delivery: reconnect from a position, late subscribers, several tabs, batching, lagged."""

from __future__ import annotations

import contextlib
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from websockets.exceptions import ConnectionClosed

from bench.chaos import small_window_socket
from gateway.settings import Settings
from providers import EchoProvider, ProviderRegistry
from registry import LocalRegistry

from .helpers import (
    Firehose,
    Served,
    StalledClient,
    assert_run_stream,
    make_settings,
    seqs,
    serve,
)


async def test_reconnects_at_random_points_receive_every_event_once(server: Served) -> None:
    rng = random.Random(6)
    owner = await server.open()
    ack = await owner.send_message(options={"chunks": 400, "delay_ms": 1})
    session_id, run_id = ack["session_id"], ack["run_id"]

    received: list[dict[str, Any]] = []
    position = 0
    reconnects = 0
    while not received or received[-1]["kind"] != "complete":
        client = await server.open()
        await client.subscribe(session_id, run_id=run_id, after_seq=position)
        stop_after = rng.randint(1, 80)
        while True:
            event = await client.next_of("event")
            received.append(event)
            position = event["seq"]
            if event["kind"] == "complete":
                break
            stop_after -= 1
            if stop_after == 0:
                break
        if received[-1]["kind"] != "complete":
            reconnects += 1
            if reconnects % 2:
                await client.close()
            else:
                client.ws.transport.abort()  # Drop the TCP connection without a close frame.
    assert reconnects >= 3
    assert_run_stream(received, run_id)
    assert len(received) == 400 + 3  # user_message, 400 chunks, text, complete


@pytest.mark.parametrize("buffer_size", [5000, 16])
async def test_late_subscriber_after_completion_gets_the_whole_run(
    tmp_path: Path, buffer_size: int
) -> None:
    settings_ = _settings(tmp_path, buffer_size=buffer_size)
    async with serve(settings_) as server, server.client() as client:
        ack = await client.send_message(options={"chunks": 100, "delay_ms": 0})
        await client.subscribe(ack["session_id"])
        first = await client.events_until_complete()
        async with server.client() as late:
            sub = await late.subscribe(ack["session_id"])
            assert sub["recovered"] is True
            assert sub["replayed"] == len(first)
            assert sub["run"]["status"] == "completed"
            events = await late.events_until_complete()
        assert events == first
        assert_run_stream(events, ack["run_id"])


async def test_late_subscriber_after_eviction_replays_the_log(tmp_path: Path) -> None:
    async with serve(_settings(tmp_path, run_ttl=0)) as server, server.client() as client:
        ack = await client.send_message(options={"chunks": 50, "delay_ms": 0})
        await client.subscribe(ack["session_id"])
        first = await client.events_until_complete()
        await client.request({"type": "unsubscribe", "session_id": ack["session_id"]})
        registry = cast(LocalRegistry, server.gateway.registry).memory
        await server.gateway.store.flush()
        registry.sweep()
        assert registry.get_run(ack["run_id"]) is None  # Evicted: only the log has it.

        async with server.client() as late:
            sub = await late.subscribe(ack["session_id"])
            assert (sub["recovered"], sub["replayed"]) == (True, len(first))
            assert await late.events_until_complete() == first
        async with server.client() as resumed:
            await resumed.subscribe(ack["session_id"], run_id=ack["run_id"], after_seq=20)
            assert seqs(await resumed.events_until_complete()) == list(range(21, len(first) + 1))


async def test_older_run_position_delivers_the_rest_then_later_runs(server: Served) -> None:
    async with server.client() as client:
        first = await client.send_message(options={"chunks": 3, "delay_ms": 0})
        session_id = first["session_id"]
        await client.subscribe(session_id)
        run1 = await client.events_until_complete()
        second = await client.send_message(session_id, options={"chunks": 3, "delay_ms": 0})
        run2 = await client.events_until_complete(second["run_id"])
    async with server.client() as late:
        await late.subscribe(session_id, run_id=first["run_id"], after_seq=2)
        events = await late.events_until_complete(second["run_id"])
    assert events == run1[2:] + run2


async def test_two_connections_on_one_session_each_get_every_event(server: Served) -> None:
    async with server.client() as tab1, server.client() as tab2:
        ack = await tab1.send_message(options={"chunks": 200, "delay_ms": 0})
        await tab1.subscribe(ack["session_id"])
        await tab2.subscribe(ack["session_id"])
        events1 = await tab1.events_until_complete()
        events2 = await tab2.events_until_complete()
    assert_run_stream(events1, ack["run_id"])
    assert events1 == events2


async def test_batch_mode_packs_frames_into_arrays(server: Served) -> None:
    async with server.client(batch=True) as client:
        ack = await client.send_message(options={"chunks": 300, "delay_ms": 0})
        await client.subscribe(ack["session_id"])
        events = await client.events_until_complete()
    assert_run_stream(events, ack["run_id"])
    assert any(message.startswith("[") for message in client.raw_messages)
    assert len(client.raw_messages) < len(events)


async def test_unsubscribe_stops_delivery(server: Served) -> None:
    async with server.client() as client:
        ack = await client.send_message(options={"chunks": 5, "delay_ms": 0, "hang": True})
        session_id = ack["session_id"]
        await client.subscribe(session_id)
        reply = await client.request({"type": "unsubscribe", "session_id": session_id})
        assert reply == {
            "type": "ack",
            "id": reply["id"],
            "op": "unsubscribe",
            "session_id": session_id,
        }
        client.backlog.clear()
        abort = await client.request({"type": "abort", "session_id": session_id})
        assert abort["op"] == "abort"
        pong = await client.request({"type": "ping"})
        assert pong["type"] == "pong"
        assert not [f for f in client.backlog if f["type"] == "event"]


async def test_a_client_that_does_not_read_gets_lagged_and_loses_nothing(tmp_path: Path) -> None:
    # Big events and a tiny replay buffer: while the client reads nothing, the writer waits
    # in send, the run overruns the subscription's cursor, and it ends with `lagged`.
    providers = ProviderRegistry([EchoProvider(), Firehose()])
    async with (
        serve(_settings(tmp_path, buffer_size=8), providers=providers) as server,
        server.http() as http,
        server.client() as sender,
    ):
        created = await http.post("/api/sessions", json={"provider": "firehose"})
        session_id = created.json()["session_id"]
        slow = StalledClient(server.url())
        await slow.open()
        try:
            await slow.send({"type": "subscribe", "id": 1, "session_id": session_id})
            ack = await sender.send_message(session_id, options={"count": 3000, "size": 8000})
            run_id = ack["run_id"]
            await sender.next_of("run_finished")  # The run ends while `slow` reads nothing.
            received: list[dict[str, Any]] = []
            lagged: dict[str, Any] | None = None
            while lagged is None:
                for frame in await slow.frames():
                    if frame["type"] == "lagged":
                        lagged = frame
                    elif frame["type"] == "event":
                        assert lagged is None
                        received.append(frame)
        finally:
            slow.close()
        last = received[-1]["seq"] if received else 0
        assert (lagged["session_id"], lagged["last_seq"]) == (session_id, last)
        assert last < 3000  # it really fell behind
        # Resubscribing from the lagged position loses nothing.
        async with server.client() as again:
            await again.subscribe(session_id, run_id=run_id, after_seq=last)
            received += await again.events_until_complete()
    assert_run_stream(received, run_id)
    assert len(received) == 3002
    assert server.gateway.stats.lagged >= 1


async def test_a_long_replay_comes_in_pages_that_resubscribing_continues(tmp_path: Path) -> None:
    """Past ``replay_page`` events from the log, a subscription delivers a page and ends
    with lagged at its last event; subscribing again from each lagged gets it all once."""
    async with serve(_settings(tmp_path, buffer_size=8, replay_page=5)) as server:
        async with server.client() as client:
            ack = await client.send_message(options={"chunks": 40, "delay_ms": 0})
            session_id, run_id = ack["session_id"], ack["run_id"]
            await client.next_of("run_finished")
        async with server.client() as client:
            received: list[dict[str, Any]] = []
            position = 0
            pages = 0
            while True:
                subscribed = await client.subscribe(session_id, run_id=run_id, after_seq=position)
                pages += 1
                page = []
                while True:
                    frame = await client.next_of("event", "lagged")
                    if frame["type"] == "lagged" or frame["kind"] == "complete":
                        break
                    page.append(frame)
                if frame["type"] == "event":
                    received += [*page, frame]
                    break
                received += page
                assert subscribed["replayed"] == len(page) == 5
                assert (frame["run_id"], frame["last_seq"]) == (run_id, page[-1]["seq"])
                position = frame["last_seq"]
    assert_run_stream(received, run_id)
    assert len(received) == 43
    # The log's 35 (the buffer holds the last 8) in 7 pages; the 7th, the log's last, goes
    # on from memory.
    assert pages == 7
    # Nobody fell behind: the metric of lagged subscriptions does not count page ends.
    assert server.gateway.stats.lagged == 0


async def test_a_connection_that_never_reads_its_replies_is_closed(tmp_path: Path) -> None:
    async with serve(_settings(tmp_path, outbound_limit=20)) as server:
        sock = await small_window_socket(server.port)
        client = await server.open(max_queue=1, sock=sock)
        big = "p" * 200_000
        with contextlib.suppress(ConnectionClosed):
            for _ in range(1000):
                await client.send({"type": "ping", "id": big})
        # The server gave up on it: reading what arrived ends with the connection closed.
        await client.closed_by_server()
        await server.gateway.hub.wait_empty()


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return replace(make_settings(str(tmp_path / "runwire.db")), **overrides)
