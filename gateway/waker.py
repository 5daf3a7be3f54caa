"""Waiting on many subscriptions at once without piling up wake-up callbacks.

A subscription's :meth:`~registry.Subscription.arm` appends a callback to its session's
waiter list, which is emptied only when the session next changes. Arming a subscription on
a quiet session again on every wait would grow that list without bound, so a
:class:`Waker` remembers which subscriptions are armed and arms each at most once until it
fires.

The wake-up itself is a bare asyncio future, made only when the writer really waits: a
commit wakes every connection that follows the run, so this is paid per connection per
commit, and an event object per round (with anyio's lookup of the running library, and
asyncio's binding of it to the loop) was a measurable share of a fan-out's cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from registry import Subscription


class Waker:
    """One wake-up event for a writer, fed by its subscriptions and by explicit pokes.

    Usage, in a loop: :meth:`reset`, collect work, and when there is none, :meth:`arm` the
    subscriptions and :meth:`wait`. A poke between ``reset`` and ``wait`` is not lost.
    """

    __slots__ = ("_armed", "_poked", "_waiter")

    def __init__(self) -> None:
        self._poked = False
        self._waiter: asyncio.Future[None] | None = None
        self._armed: set[Subscription] = set()

    def reset(self) -> None:
        """Start a new round: pokes from now on end the next :meth:`wait`."""
        self._poked = False

    def poke(self) -> None:
        """Wake the writer (new control frame, close request ...)."""
        self._poked = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def arm(self, subscriptions: Iterable[Subscription]) -> bool:
        """Arm every subscription not already armed.

        Returns ``False`` when one of them has something to pull already: the caller should
        collect again instead of waiting.
        """
        for sub in subscriptions:
            if sub in self._armed:
                continue
            if not sub.arm(self._callback(sub)):
                return False
            self._armed.add(sub)
        return True

    def forget(self, sub: Subscription) -> None:
        """Stop tracking a subscription that was dropped."""
        self._armed.discard(sub)

    async def wait(self) -> None:
        """Wait until poked or until an armed subscription's session changes (if that
        happened already this round, still let other tasks run first)."""
        if self._poked:
            await asyncio.sleep(0)
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _callback(self, sub: Subscription) -> Callable[[], None]:
        def fired() -> None:
            self._armed.discard(sub)
            self.poke()

        return fired
