"""The connection writer: it delivers every subscription's events once, in order, waking
only for what changed; and its batch messages (``?batch=1``) are packed whole, or split by
size."""

from __future__ import annotations

import itertools
import json
from typing import Any
from unittest.mock import patch

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.connection import BATCH_CHARS, PULL_LIMIT, Connection
from gateway.metrics import GatewayStats
from registry import Event, MemoryRegistry, Subscription

SESSIONS = ("s0", "s1", "s2")


async def written(texts: list[str], *, batch: bool) -> list[str]:
    """The messages a connection sends for one round of ``texts``."""
    sent: list[str] = []

    async def send(message: Any) -> None:
        sent.append(message["text"])

    connection = Connection(send, user="u", batch=batch, outbound_limit=10, stats=GatewayStats())
    await connection._write(texts)
    return sent


def frame(size: int, index: int) -> str:
    """A JSON object of exactly ``size`` characters (at least 10)."""
    head = f'{{"i":{index},"p":"'
    return head + "x" * (size - len(head) - 2) + '"}'


@given(st.lists(st.integers(10, BATCH_CHARS // 3), min_size=2, max_size=12))
async def test_batches_hold_every_frame_once_in_order_within_the_size_limit(
    sizes: list[int],
) -> None:
    texts = [frame(size, index) for index, size in enumerate(sizes)]
    messages = await written(texts, batch=True)
    groups: list[list[str]] = []
    for message in messages:
        assert len(message) <= BATCH_CHARS
        decoded = json.loads(message)
        parts = decoded if isinstance(decoded, list) else [decoded]
        groups.append([json.dumps(part, separators=(",", ":")) for part in parts])
    assert [text for group in groups for text in group] == texts
    # A message ends only where the next frame would not have fitted.
    for group, after in itertools.pairwise(groups):
        assert len("[" + ",".join([*group, after[0]]) + "]") > BATCH_CHARS


async def test_a_frame_bigger_than_the_limit_goes_alone() -> None:
    small, big = frame(100, 0), frame(BATCH_CHARS + 10, 1)
    assert await written([small, big, small], batch=True) == [small, big, small]


async def test_small_rounds_are_one_message_and_unbatched_ones_a_message_per_frame() -> None:
    texts = [frame(50, index) for index in range(3)]
    assert await written(texts, batch=True) == ["[" + ",".join(texts) + "]"]
    assert await written(texts, batch=False) == texts


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("extra", [0, 1])
async def test_a_round_is_one_message_up_to_the_limit_exactly(count: int, extra: int) -> None:
    # ``count`` frames whose batch message (brackets and commas included) is the limit,
    # plus ``extra`` characters.
    length = BATCH_CHARS + extra - (2 + count - 1)
    sizes = [length // count] * count
    sizes[-1] += length - sum(sizes)
    texts = [frame(size, index) for index, size in enumerate(sizes)]
    messages = await written(texts, batch=True)
    assert len(messages) == (1 if extra == 0 else 2)
    assert all(len(message) <= BATCH_CHARS for message in messages)


STEPS = st.lists(
    st.tuples(
        st.sampled_from(("publish", "publish", "settle", "resubscribe")),
        st.integers(0, len(SESSIONS) - 1),
        st.integers(1, 5),
    ),
    max_size=30,
)


@given(steps=STEPS, batch=st.booleans(), limit=st.sampled_from((2, PULL_LIMIT)))
async def test_a_writer_delivers_each_event_of_each_subscription_once_in_order(
    steps: list[tuple[str, int, int]], batch: bool, limit: int
) -> None:
    """Several subscriptions of one connection, with events published to any of them
    between writer rounds and subscriptions replaced from the client's last position:
    whenever the writer has nothing left to do, the client has every event so far (also
    when it takes only ``limit`` events of a subscription per round)."""
    with patch("gateway.connection.PULL_LIMIT", limit):
        await deliver(steps, batch=batch)


async def deliver(steps: list[tuple[str, int, int]], *, batch: bool) -> None:
    reg = MemoryRegistry(buffer_size=1000)
    sent: list[str] = []

    async def send(message: Any) -> None:
        sent.append(message["text"])

    conn = Connection(send, user="u", batch=batch, outbound_limit=100, stats=GatewayStats())
    run_ids = {s: (await reg.start(s, owner="u", content="hi")).run_id for s in SESSIONS}
    received: dict[str, list[int]] = {s: [] for s in SESSIONS}
    subscribed: dict[str, int] = dict.fromkeys(SESSIONS, 0)

    def read() -> None:
        for message in sent:
            decoded = json.loads(message)
            for frame in decoded if isinstance(decoded, list) else [decoded]:
                if frame["type"] == "event":
                    assert subscribed[frame["session_id"]], "an event before its subscribed"
                    received[frame["session_id"]].append(frame["seq"])
                else:
                    assert frame["type"] == "subscribed"
                    subscribed[frame["session_id"]] += 1
        sent.clear()

    async def subscribe(session_id: str) -> None:
        after = received[session_id][-1] if received[session_id] else 0
        sub = await reg.subscribe(
            session_id, owner="u", run_id=run_ids[session_id], after_seq=after
        )
        conn.add_subscription(sub, json.dumps({"type": "subscribed", "session_id": session_id}))

    def check_all_delivered() -> None:
        read()
        for session_id, seqs in received.items():
            last = reg.get_run(run_ids[session_id])
            assert last is not None
            assert seqs == list(range(1, last.last_seq + 1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.run_writer)
        for session_id in SESSIONS:
            await subscribe(session_id)
        for step, index, count in steps:
            session_id = SESSIONS[index]
            if step == "publish":
                for i in range(count):
                    reg.publish(session_id, "text", {"text": f"t{i}"})
            elif step == "settle":
                await anyio.wait_all_tasks_blocked()
                check_all_delivered()
            else:
                read()  # the client's position, as it would resubscribe from it
                await subscribe(session_id)
        await anyio.wait_all_tasks_blocked()
        check_all_delivered()
        tg.cancel_scope.cancel()


async def test_a_round_leaves_the_subscriptions_of_quiet_sessions_alone() -> None:
    reg = MemoryRegistry()
    sent: list[str] = []

    async def send(message: Any) -> None:
        sent.append(message["text"])

    conn = Connection(send, user="u", batch=True, outbound_limit=100, stats=GatewayStats())
    pulls = dict.fromkeys(SESSIONS, 0)
    pull = Subscription.pull

    def counted(sub: Subscription, limit: int | None = None) -> list[Event]:
        pulls[sub.session_id] += 1
        return pull(sub, limit)

    for session_id in SESSIONS:
        await reg.start(session_id, owner="u", content="hi")
        sub = await reg.subscribe(session_id, owner="u")
        conn.add_subscription(sub, json.dumps({"type": "subscribed", "session_id": session_id}))
    with patch.object(Subscription, "pull", counted):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.run_writer)
            await anyio.wait_all_tasks_blocked()
            before = dict(pulls)
            for i in range(5):
                reg.publish("s0", "text", {"text": f"t{i}"})
                await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert pulls["s0"] - before["s0"] == 5  # a pull a round: ready() tells it is drained
    assert [pulls[s] - before[s] for s in SESSIONS[1:]] == [0, 0]
    assert len(sent) == 1 + 5  # the subscribed frames and first events, then a round each
