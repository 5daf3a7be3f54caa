"""Waiting between attempts at something an engine refuses while it is away."""

from __future__ import annotations

import logging

import anyio

log = logging.getLogger("runwire.cluster")

FIRST = 0.05
LONGEST = 2.0


class Backoff:
    """Doubling waits between attempts: 0.05 s, 0.1 s ... up to 2 s, each logged."""

    __slots__ = ("_wait",)

    def __init__(self) -> None:
        self._wait = FIRST

    async def after(self, what: str, error: BaseException) -> None:
        """Log that ``what`` failed with ``error`` and wait before the next attempt."""
        log.warning("%s failed (%s); retrying in %.2fs", what, error, self._wait)
        await anyio.sleep(self._wait)
        self._wait = min(self._wait * 2, LONGEST)
