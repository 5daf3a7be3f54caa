"""A writer's wake-up: poked by its subscriptions' listeners and by new control frames.

The wake-up itself is a bare asyncio future, made only when the writer really waits: a
commit wakes every connection that follows the run, so this is paid per connection per
commit, and an event object per round (with anyio's lookup of the running library, and
asyncio's binding of it to the loop) was a measurable share of a fan-out's cost.
"""

from __future__ import annotations

import asyncio


class Waker:
    """One wake-up event for a writer, fed by pokes.

    Usage, in a loop: :meth:`reset`, collect work, and when there is none, :meth:`wait`. A
    poke between ``reset`` and ``wait`` is not lost.
    """

    __slots__ = ("_poked", "_waiter")

    def __init__(self) -> None:
        self._poked = False
        self._waiter: asyncio.Future[None] | None = None

    def reset(self) -> None:
        """Start a new round: pokes from now on end the next :meth:`wait`."""
        self._poked = False

    def poke(self) -> None:
        """Wake the writer (a subscription's session changed, a new control frame ...)."""
        self._poked = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Wait until poked (if that happened already this round, still let other tasks
        run first)."""
        if self._poked:
            await asyncio.sleep(0)
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None
