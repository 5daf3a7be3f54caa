"""The writer's wake-up: no poke is lost between ``reset`` and ``wait``, and a cancelled wait
leaves the waker usable."""

from __future__ import annotations

import asyncio

from gateway.waker import Waker


async def yield_a_few_times() -> None:
    """Let every ready task run (not a timed sleep: the loop just goes round)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_poke_before_the_wait_ends_it_at_once() -> None:
    waker = Waker()
    waker.reset()
    waker.poke()
    await waker.wait()


async def test_a_wait_lasts_until_the_next_poke() -> None:
    waker = Waker()
    waker.poke()
    waker.reset()  # the earlier poke belongs to the round that is over
    waiting = asyncio.create_task(waker.wait())
    await yield_a_few_times()
    assert not waiting.done()
    waker.poke()
    await waiting


async def test_a_cancelled_wait_leaves_the_waker_usable() -> None:
    waker = Waker()
    waiting = asyncio.create_task(waker.wait())
    await yield_a_few_times()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled()
    waker.poke()  # nobody waits: nothing to resolve, and no error
    await waker.wait()
