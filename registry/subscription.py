"""A subscriber's cursor over a session's runs.

A subscription holds no queue of its own: its pending events are the slice of the run's
replay buffer between its cursor and the end. Publishing therefore costs nothing per
subscriber, and a subscriber that falls further behind than the buffer holds finds its
cursor overrun and ends with :class:`Lagged`. That is the bound on memory, whatever a
client does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import anyio
import msgspec

from .events import Event, Position, RunSummary

if TYPE_CHECKING:
    from .run import Run
    from .sessions import SessionState


class Lagged(Exception):
    """The subscription fell behind the buffer and has ended.

    Resubscribing from ``(run_id, last_seq)`` loses nothing.
    """

    def __init__(self, session_id: str, run_id: str | None, last_seq: int) -> None:
        super().__init__(f"subscription to {session_id} lagged after {run_id}:{last_seq}")
        self.session_id = session_id
        self.run_id = run_id
        self.last_seq = last_seq


class SubscriptionClosed(Exception):
    """The subscription was closed (unsubscribed) and delivers nothing more."""


class SubscribeInfo(msgspec.Struct):
    """What the protocol's ``subscribed`` frame reports."""

    session_id: str
    run: RunSummary | None
    is_processing: bool
    recovered: bool
    replayed: int
    first_available: Position | None = None


class Subscription:
    """Delivers a session's events once each, in order, from a position, then live.

    Use :meth:`next_batch` (or ``async for batch in sub``) in a task. To multiplex many
    subscriptions in one writer, :meth:`listen` to each once and :meth:`pull` from those
    that were told of a change since they last returned ``[]``; or :meth:`pull` until it
    returns ``[]`` and then :meth:`arm` a one-shot wake-up.
    """

    __slots__ = (
        "_lagged",
        "_last_run",
        "_last_seq",
        "_next",
        "_page_end",
        "_prefix",
        "_run",
        "_session",
        "_want",
        "closed",
        "info",
        "session_id",
    )

    def __init__(
        self,
        session: SessionState,
        run: Run | None,
        next_seq: int,
        last: tuple[str | None, int],
    ) -> None:
        self.session_id = session.session_id
        self._session = session
        # Cursor: the run being read and the next seq to deliver from it. With no run, the
        # subscription waits for the session's run of ordinal ``_want``.
        self._run = run
        self._next = next_seq
        self._want = session.started
        self._prefix: list[Event] = []
        # The prefix is a page of a longer replay: after it, lag rather than read memory.
        self._page_end = False
        self._last_run, self._last_seq = last
        self._lagged: Lagged | None = None
        self.closed = False
        self.info: SubscribeInfo | None = None

    @property
    def paged(self) -> bool:
        """Whether delivery ends after a page of a longer replay from the log (then with
        :class:`Lagged` at the page's last event: subscribing again from there continues)."""
        return self._page_end

    @property
    def position(self) -> tuple[str | None, int]:
        """The last position delivered (or the requested one, before any delivery)."""
        return self._last_run, self._last_seq

    def pending(self) -> int:
        """How many events are available to :meth:`pull` right now, across runs."""
        count = len(self._prefix)
        if self._page_end:
            return count
        run, nxt = self._run, self._next
        if run is None:
            run = self._first_wanted()
            nxt = 1
        while run is not None:
            end = min(run.buffer.last_seq, run.durable)
            count += max(0, end - max(nxt, run.buffer.first_seq) + 1)
            run, nxt = run.next, 1
        return count

    def ready(self) -> bool:
        """Whether :meth:`pull` would return something (or raise :class:`Lagged`)."""
        if self._prefix or self._lagged is not None:
            return True
        run = self._run
        if run is None:
            return self._first_wanted() is not None or self._missed()
        nxt = self._next
        if nxt <= run.buffer.last_seq:
            return nxt <= run.durable
        return run.done and run.next is not None

    def pull(self, limit: int | None = None) -> list[Event]:
        """Take the events available now, at most ``limit``; ``[]`` when there are none.

        Raises :class:`Lagged` (once, after delivering everything still deliverable) when
        the cursor was overrun, or after the last event of a replay's page, and then the
        subscription is closed.
        """
        if self.closed:
            return []
        out: list[Event] = []
        if self._prefix:
            out = self._take_prefix(limit)
        while not self._page_end and (limit is None or len(out) < limit):
            run = self._run
            if run is None:
                run = self._first_wanted()
                if run is None:
                    if self._missed():
                        self._lag()
                    break
                if run.ordinal != self._want:
                    # The run this subscription waited for was evicted before it was read.
                    self._lag()
                    break
                self._run, self._next = run, 1
            buffer = run.buffer
            nxt = self._next
            # Deliver only what is durable, so no client sees an event a crash could lose.
            end = buffer.last_seq if buffer.last_seq <= run.durable else run.durable
            if nxt <= end:
                if nxt < buffer.first_seq:
                    self._lag()
                    break
                stop = end + 1 if limit is None else min(end + 1, nxt + limit - len(out))
                chunk = buffer.read(nxt, stop)
                if out:
                    out.extend(chunk)
                else:
                    out = chunk
                self._next = nxt + len(chunk)
                continue
            if nxt > buffer.last_seq and run.done and run.next is not None:
                self._run, self._next = run.next, 1
                continue
            break
        if out:
            last = out[-1]
            self._last_run, self._last_seq = last.run_id, last.seq
            if self._page_end and not self._prefix:
                self._lag()  # resubscribing from here reads the next page
        elif self._lagged is not None:
            lagged = self._lagged
            self.close()
            raise lagged
        return out

    def arm(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` once when the session next changes.

        Returns ``False`` (and arms nothing) when there is already something to pull or
        the subscription is closed: the caller should pull instead of waiting.
        """
        if self.closed or self.ready():
            return False
        self._session.waiters.append(callback)
        return True

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the session changes, until this subscription closes,
        and once when it closes (replacing any earlier listener).

        What :meth:`pull` would return changes only with such a call. So a writer that,
        after each call, pulls from the subscription until it has nothing (``pull``
        returns ``[]``, or :meth:`ready` is false) misses nothing. Unlike :meth:`arm`,
        nothing is renewed per wait: a writer of many subscriptions pays per change, not
        per subscription per round.
        """
        if self.closed:
            callback()
            return
        self._session.listeners[self] = callback

    async def next_batch(self, limit: int | None = None) -> list[Event]:
        """Wait for and return the next events. Raises :class:`Lagged` or
        :class:`SubscriptionClosed` when the subscription ends."""
        while True:
            batch = self.pull(limit)
            if batch:
                return batch
            if self.closed:
                raise SubscriptionClosed(self.session_id)
            changed = anyio.Event()
            if self.arm(changed.set):
                await changed.wait()

    def __aiter__(self) -> AsyncIterator[list[Event]]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[Event]]:
        try:
            while True:
                yield await self.next_batch()
        except SubscriptionClosed:
            return

    def close(self) -> None:
        """Stop delivering. Idempotent."""
        if not self.closed:
            self.closed = True
            self._prefix = []
            session = self._session
            session.subscriptions.discard(self)
            listener = session.listeners.pop(self, None)
            # Wake a task blocked in next_batch, or a listening writer, so it sees the close.
            session.wake()
            if listener is not None:
                listener()

    # Internal --------------------------------------------------------------------------

    def _set_prefix(self, events: list[Event], *, page_end: bool = False) -> None:
        self._prefix = events
        self._page_end = page_end and bool(events)

    def _take_prefix(self, limit: int | None) -> list[Event]:
        prefix = self._prefix
        if limit is None or len(prefix) <= limit:
            self._prefix = []
            return prefix
        self._prefix = prefix[limit:]
        return prefix[:limit]

    def _first_wanted(self) -> Run | None:
        for run in self._session.runs:
            if run.ordinal >= self._want:
                return run
        return None

    def _missed(self) -> bool:
        """With no run to read in memory: whether the run this subscription waits for
        already started (and so was evicted before it was read)."""
        return self._session.started > self._want

    def _lag(self) -> None:
        self._lagged = Lagged(self.session_id, self._last_run, self._last_seq)
