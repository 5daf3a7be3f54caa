"""The writer's wake-up: no poke is lost between ``reset`` and ``wait``, a listening
subscription wakes it round after round, and a cancelled wait leaves the waker usable."""

from __future__ import annotations

import asyncio

from gateway.waker import Waker
from registry import MemoryRegistry, Subscription


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


def drain(sub: Subscription) -> None:
    while sub.pull():
        pass


async def test_a_listening_subscription_wakes_the_writer_every_round() -> None:
    reg = MemoryRegistry(buffer_size=8)
    await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice")
    waker = Waker()
    sub.listen(waker.poke)
    for round_ in range(3):
        drain(sub)
        waker.reset()
        waiting = asyncio.create_task(waker.wait())
        await yield_a_few_times()
        assert not waiting.done()
        reg.publish("s1", "text", {"text": f"t{round_}"})
        await asyncio.wait_for(waiting, 10)  # a guard against a hang, not a timing check
