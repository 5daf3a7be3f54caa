"""Holding a run's source back while the log falls behind it.

Subscribers only receive events once they are on disk, and a run keeps only its last
``buffer_size`` events in memory. A source that produces faster than the store commits
(the echo provider with no delay; any fast provider on a slow disk) would push events out
of the buffer before anyone could have them, and every subscriber would end with
``lagged``. So the gateway paces each source by the log: once more than ``ahead`` of its
events are not yet durable, it waits for the store to commit what is queued.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from registry import RunContext, Source


class DurableLog(Protocol):
    """What pacing needs from the store (:class:`registry.store.SQLiteStore`)."""

    def durable_seq(self, run_id: str) -> int: ...

    async def flush(self) -> None: ...


def paced(source: Source, log: DurableLog, *, ahead: int) -> Source:
    """``source``, waiting for the log whenever more than ``ahead`` events are not durable."""

    async def run(context: RunContext) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        events = source(context)
        # Items yielded so far, plus the user_message the registry published itself: an
        # upper bound on the run's last seq (a `session_created` is never published).
        produced = 1
        try:
            async for item in events:
                yield item
                produced += 1
                if produced - log.durable_seq(context.run_id) > ahead:
                    await log.flush()
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    return run
