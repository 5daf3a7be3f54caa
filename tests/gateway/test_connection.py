"""The connection writer's batch messages (``?batch=1``): packed whole, or split by size."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.connection import BATCH_CHARS, Connection
from gateway.metrics import GatewayStats


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
