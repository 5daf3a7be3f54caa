"""Deferring writers' wake-ups to a shared tick, so a fast run does not wake them per event.

A session wakes its armed subscribers on every published event. With a store, subscribers
only receive events once they are committed, so most of those wake-ups find nothing to
send: with a hundred subscribers and a fast run, a hundred useless task switches per
event. A wake-up for events not deliverable yet is therefore deferred: it only marks its
writer as due, and one task wakes all due writers together at the next tick (every
``interval`` seconds on the loop clock). Wake-ups for deliverable events (a commit, a
completed run, a closed subscription) and replies are not deferred; the store's group
commit is what batches events then.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio


class Ticker:
    """Calls the due callbacks at the next multiple of ``interval`` (0: at once)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._due: list[Callable[[], None]] = []
        self._wanted: anyio.Event | None = None

    def defer(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` at the next tick (immediately when not running or interval 0)."""
        if self._wanted is None:
            callback()
            return
        self._due.append(callback)
        if len(self._due) == 1:
            self._wanted.set()

    async def run(self) -> None:
        """Deliver ticks until cancelled; while it runs, :meth:`defer` defers."""
        if self.interval <= 0:
            return
        try:
            while True:
                self._wanted = anyio.Event()
                if self._due:
                    self._wanted.set()
                await self._wanted.wait()
                interval = self.interval
                await anyio.sleep(interval - anyio.current_time() % interval)
                due, self._due = self._due, []
                for callback in due:
                    callback()
        finally:
            # Nothing may stay deferred once ticks stop.
            self._wanted = None
            due, self._due = self._due, []
            for callback in due:
                callback()
