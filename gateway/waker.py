"""Waiting on many subscriptions at once without piling up wake-up callbacks.

A subscription's :meth:`~registry.Subscription.arm` appends a callback to its session's
waiter list, which is emptied only when the session next changes. Arming a subscription on
a quiet session again on every wait would grow that list without bound, so a
:class:`Waker` remembers which subscriptions are armed and arms each at most once until it
fires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio

from registry import Subscription


class Waker:
    """One wake-up event for a writer, fed by its subscriptions and by explicit pokes.

    Usage, in a loop: :meth:`reset`, collect work, and when there is none, :meth:`arm` the
    subscriptions and :meth:`wait`. A poke between ``reset`` and ``wait`` is not lost.
    """

    __slots__ = ("_armed", "_event")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._armed: set[Subscription] = set()

    def reset(self) -> None:
        """Start a new round: pokes from now on end the next :meth:`wait`."""
        if self._event.is_set():
            self._event = anyio.Event()

    def poke(self) -> None:
        """Wake the writer (new control frame, close request ...)."""
        self._event.set()

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
        """Wait until poked or until an armed subscription's session changes."""
        await self._event.wait()

    def _callback(self, sub: Subscription) -> Callable[[], None]:
        def fired() -> None:
            self._armed.discard(sub)
            self._event.set()

        return fired
