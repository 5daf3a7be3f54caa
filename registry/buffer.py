"""A capped replay buffer indexed by seq.

Seqs within a run are consecutive, so the event with seq ``s`` always lives in slot
``(s - start) % capacity`` of a list, where ``start`` is the first seq the buffer was given
(1, unless it follows a run whose beginning is gone): appending at the cap overwrites one
slot (O(1), no copy) and reading from a position is a slice (O(k) for k events, no scan).
The list grows to the cap instead of being preallocated, so short runs stay small.
"""

from __future__ import annotations

from .events import Event


class ReplayBuffer:
    """The last ``capacity`` events of one run, seqs ``first_seq .. last_seq``."""

    __slots__ = ("_base", "_slots", "capacity", "last_seq")

    def __init__(self, capacity: int, start: int = 1) -> None:
        if capacity < 1:
            raise ValueError("buffer capacity must be at least 1")
        if start < 1:
            raise ValueError("a buffer starts at seq 1 or later")
        self.capacity = capacity
        self._slots: list[Event] = []
        self.last_seq = start - 1
        # The seq of slot 0 is ``_base + 1``.
        self._base = start - 1

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
            slots[(self.last_seq - self._base) % self.capacity] = event
        self.last_seq += 1

    def extend(self, events: list[Event]) -> None:
        """Add events with seqs ``last_seq + 1, + 2, ...``: :meth:`append` for each, by
        slices."""
        slots = self._slots
        cap = self.capacity
        count = len(events)
        fill = min(cap - len(slots), count)
        if fill > 0:
            slots.extend(events if fill == count else events[:fill])
        done = max(fill, 0)
        while done < count:
            # Overwrite the oldest slots, up to the end of the list, then wrap.
            slot = (self.last_seq + done - self._base) % cap
            step = min(cap - slot, count - done)
            slots[slot : slot + step] = events[done : done + step]
            done += step
        self.last_seq += count

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
        base = self._base + 1
        lo = (start - base) % cap
        hi = (stop - base) % cap
        if lo < hi:
            return slots[lo:hi]
        # The range wraps around the end of the list (or covers all of it).
        return slots[lo:] + slots[:hi]
