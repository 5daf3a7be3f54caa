from __future__ import annotations

import pytest

from registry import ManualClock, MemoryRegistry

from .fakes import FakeStore


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def reg(clock: ManualClock) -> MemoryRegistry:
    """A registry with no store, driven by publish (not entered: no task group)."""
    return MemoryRegistry(clock=clock, buffer_size=8, run_ttl=60.0, queue_limit=2)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def sreg(clock: ManualClock, store: FakeStore) -> MemoryRegistry:
    """Like ``reg``, with a fake store that can replay history."""
    return MemoryRegistry(store=store, clock=clock, buffer_size=8, run_ttl=60.0, queue_limit=2)
