"""ReplayBuffer: the last N events of a run, read by seq range."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry import Event
from registry.buffer import ReplayBuffer


def ev(seq: int) -> Event:
    return Event("s", "r", seq, "text", 0, {"n": seq})


def filled(capacity: int, count: int) -> tuple[ReplayBuffer, list[Event]]:
    buffer = ReplayBuffer(capacity)
    reference = [ev(seq) for seq in range(1, count + 1)]
    for event in reference:
        buffer.append(event)
    return buffer, reference


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ReplayBuffer(capacity)


def test_empty_buffer() -> None:
    buffer = ReplayBuffer(3)
    assert len(buffer) == 0
    assert buffer.last_seq == 0
    assert buffer.first_seq == 1
    assert buffer.read(1) == []
    assert buffer.read(5) == []


def test_keeps_only_the_last_n() -> None:
    buffer, reference = filled(3, 7)
    assert len(buffer) == 3
    assert (buffer.first_seq, buffer.last_seq) == (5, 7)
    assert buffer.read(5) == reference[4:]
    # A range that wraps around the end of the underlying list.
    assert [e.seq for e in buffer.read(6)] == [6, 7]
    assert [e.seq for e in buffer.read(5, 7)] == [5, 6]
    with pytest.raises(IndexError, match="seq 4 is no longer buffered"):
        buffer.read(4)


def test_events_are_shared_not_copied() -> None:
    buffer, reference = filled(4, 10)
    assert all(a is b for a, b in zip(buffer.read(7), reference[6:], strict=True))


@settings(deadline=None)  # no timing assertions, even under load
@given(
    capacity=st.integers(min_value=1, max_value=12),
    count=st.integers(min_value=0, max_value=40),
)
def test_read_equals_reference_slice(capacity: int, count: int) -> None:
    buffer, reference = filled(capacity, count)
    first = max(1, count - capacity + 1)
    assert len(buffer) == min(capacity, count)
    assert buffer.last_seq == count
    assert buffer.first_seq == first
    stops: list[int | None] = [None, *range(0, count + 3)]
    for start in range(0, count + 3):
        for stop in stops:
            end = count + 1 if stop is None else min(stop, count + 1)
            if start >= end:
                assert buffer.read(start, stop) == []
            elif start < first:
                with pytest.raises(IndexError):
                    buffer.read(start, stop)
            else:
                assert buffer.read(start, stop) == reference[start - 1 : end - 1]


@settings(deadline=None)  # no timing assertions, even under load
@given(
    capacity=st.integers(min_value=1, max_value=8),
    steps=st.lists(st.integers(min_value=0, max_value=10), max_size=12),
)
def test_interleaved_appends_and_reads(capacity: int, steps: list[int]) -> None:
    """Reading between appends (as live subscribers do) always sees the reference tail."""
    buffer = ReplayBuffer(capacity)
    reference: list[Event] = []
    for n in steps:
        for _ in range(n):
            reference.append(ev(len(reference) + 1))
            buffer.append(reference[-1])
        first = max(1, len(reference) - capacity + 1)
        assert buffer.read(first) == reference[first - 1 :]
        if first > 1:
            with pytest.raises(IndexError):
                buffer.read(first - 1)


@settings(deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=8),
    start=st.integers(min_value=1, max_value=50),
    count=st.integers(min_value=0, max_value=30),
)
def test_a_buffer_may_start_past_seq_1(capacity: int, start: int, count: int) -> None:
    """A followed run whose beginning is gone: seqs start..start+count-1, the last N kept."""
    buffer = ReplayBuffer(capacity, start)
    assert buffer.first_seq == start
    assert buffer.read(start) == []
    reference = [ev(start + i) for i in range(count)]
    for event in reference:
        buffer.append(event)
    last = start + count - 1
    first = max(start, last - capacity + 1)
    assert (buffer.first_seq, buffer.last_seq) == (first, last)
    for begin in range(first, last + 2):
        for stop in (None, begin + 1, last + 1):
            end = last + 1 if stop is None else min(stop, last + 1)
            assert buffer.read(begin, stop) == reference[begin - start : max(begin, end) - start]
    if first > 1:
        with pytest.raises(IndexError):
            buffer.read(first - 1)


@given(
    capacity=st.integers(min_value=1, max_value=12),
    start=st.integers(min_value=1, max_value=30),
    chunks=st.lists(st.integers(min_value=0, max_value=30), max_size=8),
)
def test_extend_is_append_for_each(capacity: int, start: int, chunks: list[int]) -> None:
    # Bursts of any size against any fill and wrap point: the same slots as one by one.
    extended, appended = ReplayBuffer(capacity, start), ReplayBuffer(capacity, start)
    seq = start
    for size in chunks:
        burst = [ev(s) for s in range(seq, seq + size)]
        seq += size
        extended.extend(burst)
        for event in burst:
            appended.append(event)
        assert extended.last_seq == appended.last_seq
        assert extended.first_seq == appended.first_seq
        assert extended.read(extended.first_seq) == appended.read(appended.first_seq)
