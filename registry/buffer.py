"""A capped replay buffer indexed by seq.

Seqs within a run are consecutive from 1, so the event with seq ``s`` always lives in slot
``(s - 1) % capacity`` of a list: appending at the cap overwrites one slot (O(1), no copy)
and reading from a position is a slice (O(k) for k events, no scan). The list grows to the
cap instead of being preallocated, so short runs stay small.
"""

from __future__ import annotations

from .events import Event


class ReplayBuffer:
    """The last ``capacity`` events of one run, seqs ``first_seq .. last_seq``."""

    __slots__ = ("_slots", "capacity", "last_seq")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("buffer capacity must be at least 1")
        self.capacity = capacity
        self._slots: list[Event] = []
        self.last_seq = 0

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def first_seq(self) -> int:
        """The oldest seq still held (``last_seq + 1`` when empty)."""
        return self.last_seq - len(self._slots) + 1

    def append(self, event: Event) -> None:
        """Add the event with seq ``last_seq + 1``, dropping the oldest at the cap."""
        slots = self._slots
        if len(slots) < self.capacity:
            slots.append(event)
        else:
            slots[self.last_seq % self.capacity] = event
        self.last_seq += 1

    def read(self, start: int, stop: int | None = None) -> list[Event]:
        """Events with ``start <= seq < stop`` (``stop`` defaults to the end).

        ``start`` must not be older than :attr:`first_seq`; positions past the end give ``[]``.
        """
        last = self.last_seq
        if stop is None or stop > last + 1:
            stop = last + 1
        if start >= stop:
            return []
        if start < self.first_seq:
            raise IndexError(f"seq {start} is no longer buffered (oldest is {self.first_seq})")
        slots = self._slots
        cap = self.capacity
        lo = (start - 1) % cap
        hi = (stop - 1) % cap
        if lo < hi:
            return slots[lo:hi]
        # The range wraps around the end of the list (or covers all of it).
        return slots[lo:] + slots[:hi]
