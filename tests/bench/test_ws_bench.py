"""The WebSocket benchmark's subscriber check: it counts every event once and in order,
and a gap, a duplicate or an event out of order fails it, whether a message is checked
in bulk or frame by frame, and whether subscribers share their reading of messages. Also
how it reads the CPU time a server used, and that it pauses only its own collector."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from bench.ws_bench import (
    Reader,
    Readings,
    Server,
    Subscriber,
    collector_paused,
    cpu_seconds,
    median_of,
    open_link,
    servers_cpu_seconds,
    stat_cpu_seconds,
)

from .test_chaos import event as ev


class Messages:
    """Stands in for a client's link: hands its reader the given messages, then closes."""

    def __init__(self, messages: list[Any]) -> None:
        self.messages = [json.dumps(m).encode() for m in messages]
        self.sent: list[dict[str, Any]] = []

    def read_with(self, reader: Reader) -> None:
        for message in self.messages:
            reader.receive(message)
        reader.disconnected()

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))


async def consume(
    messages: list[Any], runs: int = 1, readings: Readings | None = None
) -> Subscriber:
    sub = Subscriber(Messages(messages), runs=runs, readings=readings)  # type: ignore[arg-type]
    await sub.consume()
    return sub


async def test_stretches_single_frames_and_two_runs_are_all_counted() -> None:
    sub = await consume(
        [
            [ev("a", 1), ev("a", 2), ev("a", 3)],  # a stretch: checked in bulk
            ev("a", 4),  # a single frame
            [ev("a", 5), ev("b", 1), {"type": "pong"}, ev("b", 2)],  # two runs and a reply
            [ev("a", 6), ev("a", 7), ev("b", 3)],  # two runs' stretches: in bulk
            [ev("a", 8, "complete"), ev("b", 4)],
            [ev("b", 5), ev("b", 6, "complete")],
        ],
        runs=2,
    )
    assert sub.events == 14
    assert sub.next_seq == {"a": 9, "b": 7}
    assert sub.completes == 2


@pytest.mark.parametrize(
    "messages",
    [
        [[ev("a", 1), ev("a", 3)]],  # a gap inside a stretch
        [[ev("a", 1), ev("a", 2)], [ev("a", 2), ev("a", 3)]],  # a duplicate across messages
        [[ev("a", 2), ev("a", 3)]],  # not from the start
        [[ev("a", 1), ev("a", 2)], ev("a", 4)],  # a gap before a single frame
        [[ev("a", 1), ev("b", 2)]],  # consecutive seqs, but of two runs
        [[ev("a", 1), ev("b", 1), ev("a", 3)]],  # a gap among two runs' events
        [[ev("a", 1), ev("a", 2), ev("b", 2)]],  # one of two runs' stretches starts late
        [[ev("a", 1), ev("b", 1)], [ev("a", 2), ev("b", 1)]],  # a duplicate in one run
        [[ev("a", 1), {"type": "pong"}, ev("a", 3)]],  # a gap around a reply
    ],
)
@pytest.mark.parametrize("shared", [False, True])
async def test_a_gap_a_duplicate_or_a_wrong_start_fails(messages: list[Any], shared: bool) -> None:
    readings = Readings() if shared else None
    with pytest.raises(AssertionError, match="expected seq"):
        await consume(messages, readings=readings)


async def test_subscribers_sharing_their_reading_each_check_their_own_position() -> None:
    readings = Readings()
    messages = [[ev("a", 1), ev("a", 2)], [ev("a", 3), ev("a", 4)], [ev("a", 5, "complete")]]
    for _ in range(3):
        sub = await consume(messages, readings=readings)
        assert (sub.events, sub.next_seq, sub.completes) == (5, {"a": 6}, 1)
    # The same stretch again, already read, is still a duplicate for this subscriber.
    with pytest.raises(AssertionError, match="expected seq"):
        await consume([*messages[:2], messages[1], messages[2]], readings=readings)


async def test_after_lagged_it_resubscribes_from_its_position_and_goes_on() -> None:
    lagged = {"type": "lagged", "session_id": "s", "run_id": "a", "last_seq": 2}
    messages = [[ev("a", 1), ev("a", 2)], lagged, [ev("a", 3), ev("a", 4, "complete")]]
    link = Messages(messages)
    sub = Subscriber(link)  # type: ignore[arg-type]
    await sub.consume()
    assert (sub.events, sub.lagged) == (4, 1)
    assert link.sent == [{"type": "subscribe", "session_id": "s", "run_id": "a", "after_seq": 2}]


async def test_a_connection_that_closes_before_the_end_fails_the_subscriber() -> None:
    with pytest.raises(ConnectionError):
        await consume([[ev("a", 1), ev("a", 2)]])


async def test_a_link_reads_whole_messages_queued_then_handed_to_its_reader() -> None:
    # A real WebSocket server on loopback: a fragmented message, a ping, a plain one, close.
    async def handler(ws: ServerConnection) -> None:
        assert await ws.recv() == "hello"
        await ws.send(["[1,", "2]"])
        await ws.ping()
        await ws.send("[3]")
        await ws.send("[4]")
        await ws.close()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        link = await open_link(f"ws://127.0.0.1:{port}/")
        link.send("hello")
        assert await link.recv() == b"[1,2]"
        assert await link.recv() == b"[3]"

        class Collect:
            def __init__(self) -> None:
                self.got: list[bytes] = []
                self.closed = asyncio.Event()

            def receive(self, message: bytes) -> None:
                self.got.append(message)

            def disconnected(self) -> None:
                self.closed.set()

        reader = Collect()
        link.read_with(reader)
        await reader.closed.wait()
        assert reader.got == [b"[4]"]
        with pytest.raises(ConnectionError):
            await link.recv()
        await link.close()


async def test_shared_reading_is_forgotten_past_its_size_limit() -> None:
    readings = Readings(limit_bytes=200)
    messages = [[ev("a", 1), ev("a", 2)], [ev("a", 3), ev("a", 4)], [ev("a", 5, "complete")]]
    for _ in range(2):
        sub = await consume(messages, readings=readings)
        assert sub.events == 5
    assert readings._bytes <= 200


def test_cpu_time_is_read_past_a_command_name_with_spaces_and_parentheses() -> None:
    stat = "4242 (uvi (x) y) S 1 4242 4242 0 -1 4194560 810 0 0 0 250 57 3 1 20 0 3 0 9"
    assert stat_cpu_seconds(stat, 100) == pytest.approx(3.07)


def test_cpu_time_of_a_process_agrees_with_its_own_clock() -> None:
    used = cpu_seconds(os.getpid())
    assert used is not None
    assert used == pytest.approx(time.process_time(), abs=0.1)


def test_cpu_time_is_none_where_it_cannot_be_read() -> None:
    assert cpu_seconds(-1) is None
    assert servers_cpu_seconds([Server(None, 1)]) is None


async def test_median_of_reports_the_middle_run_and_every_value() -> None:
    values = iter([5, 1, 9])

    async def measure() -> dict[str, Any]:
        value = next(values)
        return {"value": value, "seconds": value * 10}

    assert await median_of(3, measure) == {"value": 5, "seconds": 50, "values": [5, 1, 9]}


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_paused_while_measuring_and_then_as_it_was(enabled: bool) -> None:
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled
        with pytest.raises(KeyError), collector_paused():
            raise KeyError("a measurement that fails")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
