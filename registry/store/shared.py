"""Concurrent calls with the same key share one call: the first runs, the others wait for
its result.

Clients that fall behind together resubscribe together, from the same position: lagged
tabs of one session, or every client of a run after a restart. Each would otherwise read
the same stretch of the log, and a read of thousands of events costs the database and the
event loop milliseconds apiece.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import anyio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Call(Generic[V]):
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        # Set, as a 1-tuple, once the call has returned.
        self.result: tuple[V] | None = None


class SharedCalls(Generic[K, V]):
    """Runs ``fn`` once for all the callers of :meth:`run` with equal keys at a time.

    Only for calls whose result depends on nothing but the key while they run. A caller
    that joins gets the very object the first caller got, so results must not be changed
    by their receivers. If the first call fails (or its caller is cancelled), the error
    is that caller's alone: the others make the call again, one of them first.
    """

    def __init__(self) -> None:
        self._calls: dict[K, _Call[V]] = {}

    async def run(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        while (call := self._calls.get(key)) is not None:
            await call.done.wait()
            if call.result is not None:
                return call.result[0]
        call = _Call[V]()
        self._calls[key] = call
        try:
            value = await fn()
            call.result = (value,)
            return value
        finally:
            del self._calls[key]
            call.done.set()

    def __len__(self) -> int:
        """How many calls are running."""
        return len(self._calls)
