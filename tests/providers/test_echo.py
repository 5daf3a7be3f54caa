"""The echo provider on its own: what it streams, its options, its per-instance turn state."""

from __future__ import annotations

from contextlib import aclosing, nullcontext
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import EchoProvider, each_item
from providers.base import Item
from providers.echo import BURST, EchoFailure, Pacer

from .helpers import collect, kinds, of_kind, request


async def test_streams_the_prompt_back_in_chunks_then_whole() -> None:
    items = await collect(EchoProvider(), request("hello world", options={"chunks": 4}))

    assert kinds(items) == ["session_created"] + ["text_delta"] * 4 + ["text", "complete"]
    deltas = "".join(d["text"] for d in of_kind(items, "text_delta"))
    assert deltas == "hello world (turn 1)"
    assert of_kind(items, "text") == [{"text": "hello world (turn 1)"}]
    complete = of_kind(items, "complete")[0]
    assert complete["reason"] == "done"
    assert complete["success"] is True
    assert complete["exit_code"] == 0


async def test_default_options_are_twenty_chunks() -> None:
    items = await collect(EchoProvider(), request("x" * 100, options={"delay_ms": 0}))
    assert len(of_kind(items, "text_delta")) == 20


async def test_chunk_option_repeats_the_chunk() -> None:
    items = await collect(
        EchoProvider(), request("hi", options={"chunks": 3, "chunk": "ab", "delay_ms": 0})
    )
    assert [d["text"] for d in of_kind(items, "text_delta")] == ["ab", "ab", "ab"]
    assert of_kind(items, "text") == [{"text": "ababab"}]


async def test_zero_chunks_still_replies_and_completes() -> None:
    items = await collect(EchoProvider(), request("hi", options={"chunks": 0, "tool": True}))
    assert kinds(items) == ["session_created", "tool_use", "tool_result", "text", "complete"]


async def test_tool_pair_comes_midway() -> None:
    items = await collect(
        EchoProvider(), request("hi there", options={"chunks": 4, "tool": True, "delay_ms": 0})
    )
    assert kinds(items)[1:8] == [
        "text_delta",
        "text_delta",
        "tool_use",
        "tool_result",
        "text_delta",
        "text_delta",
        "text",
    ]
    use, result = of_kind(items, "tool_use")[0], of_kind(items, "tool_result")[0]
    assert use["tool_id"] == result["tool_id"]
    assert use["input"] == {"text": "hi there"}
    assert result["is_error"] is False


async def test_resume_counts_turns_per_provider_session() -> None:
    echo = EchoProvider()
    first = await collect(echo, request("one", options={"chunks": 1}))
    pid = of_kind(first, "session_created")[0]["provider_session_id"]
    second = await collect(echo, request("two", options={"chunks": 1}, resume_id=pid))
    other = await collect(echo, request("three", options={"chunks": 1}))

    assert of_kind(second, "text") == [{"text": "two (turn 2)"}]
    assert of_kind(second, "session_created") == [{"provider_session_id": pid}]
    assert of_kind(second, "complete")[0]["turn"] == 2
    assert of_kind(other, "text") == [{"text": "three (turn 1)"}]
    assert of_kind(other, "session_created")[0]["provider_session_id"] != pid
    assert echo.turns(pid) == 2


async def test_turn_state_belongs_to_the_instance() -> None:
    first = EchoProvider()
    items = await collect(first, request("a", options={"chunks": 1}))
    pid = of_kind(items, "session_created")[0]["provider_session_id"]

    elsewhere = await collect(EchoProvider(), request("b", options={"chunks": 1}, resume_id=pid))

    assert of_kind(elsewhere, "text") == [{"text": "b (turn 1)"}]
    assert first.turns(pid) == 1


async def test_turn_state_is_bounded() -> None:
    echo = EchoProvider(max_sessions=2)
    pids = []
    for _ in range(3):
        items = await collect(echo, request("x", options={"chunks": 0}))
        pids.append(of_kind(items, "session_created")[0]["provider_session_id"])
    assert [echo.turns(pid) for pid in pids] == [0, 1, 1]


@pytest.mark.parametrize(("after", "deltas"), [(0, 0), (2, 2), (5, 3)])
async def test_fail_after_raises_after_that_many_chunks(after: int, deltas: int) -> None:
    seen: list[str] = []

    async def drain() -> None:
        options = {"chunks": 3, "fail_after": after, "delay_ms": 0}
        async with aclosing(EchoProvider().stream(request("abc", options=options))) as stream:
            async for kind, _ in each_item(stream):
                seen.append(kind)

    with pytest.raises(EchoFailure, match="fail_after"):
        await drain()
    assert seen.count("text_delta") == deltas
    assert "complete" not in seen


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.integers(0, 3 * BURST),
    delayed=st.booleans(),
    tool=st.booleans(),
    fail_after=st.none() | st.integers(0, 3 * BURST + 1),
)
async def test_bursts_hold_the_chunks_in_order_with_the_tool_pair_before_the_middle_one(
    chunks: int, delayed: bool, tool: bool, fail_after: int | None
) -> None:
    options: dict[str, Any] = {"chunks": chunks, "tool": tool, "delay_ms": 0.001 if delayed else 0}
    if fail_after is not None:
        options["fail_after"] = fail_after
    bursts: list[list[Item]] = []
    with pytest.raises(EchoFailure) if fail_after is not None else nullcontext():
        async with aclosing(EchoProvider().stream(request("p" * 500, options=options))) as stream:
            async for item in stream:
                bursts.append(item if isinstance(item, list) else [item])

    full = "p" * 500 + " (turn 1)"
    published = chunks if fail_after is None else min(chunks, fail_after)
    items = [pair for burst in bursts for pair in burst][1:]  # after session_created
    deltas = [data["text"] for kind, data in items if kind == "text_delta"]
    assert len(deltas) == published
    assert full.startswith("".join(deltas))
    tool_kinds = ["tool_use", "tool_result"]
    if tool and (chunks // 2 < published or (chunks == 0 and fail_after is None)):
        at = kinds(items).index("tool_use")
        assert kinds(items)[at : at + 2] == tool_kinds
        assert kinds(items)[:at].count("text_delta") == chunks // 2
    else:
        assert "tool_use" not in kinds(items)
    if fail_after is None:
        assert kinds(items)[-2:] == ["text", "complete"]
    # A pause between every chunk with a delay; else at most BURST chunks between two.
    for burst in bursts[1:]:
        assert [kind for kind, _ in burst].count("text_delta") <= (1 if delayed else BURST)


@given(
    interval=st.floats(0.001, 1.0),
    lateness=st.lists(st.floats(0.0, 1.0), max_size=50),
)
def test_a_pacer_keeps_its_schedule_however_late_each_wake_up_is(
    interval: float, lateness: list[float]
) -> None:
    """Woken up to an interval late (a timer's rounding, the work between steps), step k
    is still due exactly k intervals after the start: nothing adds up."""
    pacer = Pacer(interval, 100.0)
    now = 100.0
    for k, late in enumerate(lateness, start=1):
        now += pacer.wait(now) + late * interval
        assert now - late * interval == pytest.approx(100.0 + k * interval)


def test_a_pacer_far_behind_starts_again_rather_than_bursting() -> None:
    pacer = Pacer(0.01, 0.0)
    assert pacer.wait(0.0) == pytest.approx(0.01)
    # A stall of a second: the next step is now, and the one after a whole interval on,
    # not the hundred missed steps at once.
    assert pacer.wait(1.01) == 0.0
    assert pacer.wait(1.01) == pytest.approx(0.01)


async def test_chunks_come_delay_ms_apart_on_average(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sleep overshoots (as the event loop's do, by up to its 1 ms timer resolution):
    50 chunks 4 ms apart still take 49 x 4 ms, not 49 x (4 ms + the overshoot)."""
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds + 0.0009

    monkeypatch.setattr(anyio, "current_time", lambda: clock[0])
    monkeypatch.setattr(anyio, "sleep", sleep)
    times: list[float] = []
    options = {"chunks": 50, "delay_ms": 4}
    async with aclosing(EchoProvider().stream(request("x" * 50, options=options))) as stream:
        async for _ in stream:
            times.append(clock[0])
    # session_created, then one chunk at a time (the last with text and complete).
    assert len(times) == 51
    assert times[-1] - times[1] == pytest.approx(49 * 0.004, abs=0.001)


async def test_extra_complete_emits_two() -> None:
    items = await collect(
        EchoProvider(), request("x", options={"chunks": 1, "extra_complete": True})
    )
    assert kinds(items)[-2:] == ["complete", "complete"]


async def test_hang_waits_until_cancelled() -> None:
    seen: list[str] = []
    stream = EchoProvider().stream(request("x", options={"chunks": 2, "hang": True}))
    with anyio.CancelScope() as scope:
        async with aclosing(stream):
            async for kind, _ in each_item(stream):
                seen.append(kind)
                if seen.count("text_delta") == 2:
                    # The next step is the hang; cancel while it waits.
                    scope.cancel()
    assert scope.cancelled_caught
    assert "complete" not in seen


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"chunks": -1}, "chunks"),
        ({"chunks": "3"}, "chunks"),
        ({"chunks": True}, "chunks"),
        ({"chunks": 2.5}, "chunks"),
        ({"chunks": 100_001}, "chunks"),
        ({"delay_ms": -5}, "delay_ms"),
        ({"delay_ms": "fast"}, "delay_ms"),
        ({"delay_ms": float("nan")}, "delay_ms"),
        ({"delay_ms": 10**9}, "delay_ms"),
        ({"chunk": 7}, "chunk"),
        ({"chunk": ""}, "chunk"),
        ({"chunk": "x" * 10_001}, "chunk"),
        ({"chunk": "x" * 100, "chunks": 100_000}, "chunk"),
        ({"tool": "yes"}, "tool"),
        ({"fail_after": -1}, "fail_after"),
        ({"hang": 1}, "hang"),
        ({"extra_complete": None}, "extra_complete"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_bad_options_are_refused_naming_the_option(
    options: dict[str, Any], named: str
) -> None:
    echo = EchoProvider()
    with pytest.raises(ValueError, match=rf"options\.{named}\b"):
        echo.check_options(options)
    with pytest.raises(ValueError, match=rf"options\.{named}\b"):
        await collect(echo, request("x", options=options))
