"""Injectable time, so TTLs and timestamps are testable without sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of wall-clock time in seconds since the Unix epoch."""

    def now(self) -> float: ...


class SystemClock:
    """The real clock: :func:`time.time`."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to. For tests."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds


def to_ms(seconds: float) -> int:
    """Seconds since the epoch as integer milliseconds, the protocol's timestamp unit."""
    return int(seconds * 1000)
