"""Per-session state held by the in-memory registry."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .run import Run
    from .subscription import Subscription


class RunContext(NamedTuple):
    """What a source is told about the run it produces events for."""

    session_id: str
    run_id: str
    owner: str
    content: str
    client_msg_id: str | None


Pair = tuple[str, dict[str, Any]]
"""One event as a source yields it: its kind and its data."""

Source = Callable[[RunContext], AsyncIterator[Pair | list[Pair]]]
"""Produces a run's events after the ``user_message``: ``(kind, data)`` pairs, or lists of
them for events that arrived together (a burst is published in one step, with one
timestamp, which is cheaper than one pair at a time).

Cancelling the task that iterates it is the abort: a source must stop its underlying work
when cancelled. A source that raises ends its run with a ``complete`` of reason ``error``;
one that ends without a ``complete`` gets a synthetic ``done``. Pairs after a ``complete``
in the same burst are never published.
"""


class PendingStart(NamedTuple):
    """A start waiting in a session's queue (or about to run)."""

    run_id: str
    provider: str
    content: str
    client_msg_id: str | None
    source: Source | None


class SessionState:
    """One session as the registry holds it in memory.

    ``runs`` are the session's runs still in memory, oldest first; they are always the most
    recent runs of the session, because runs complete in order and are evicted in order.
    """

    __slots__ = (
        "last_run",
        "listeners",
        "msg_ids",
        "owner",
        "queue",
        "runs",
        "session_id",
        "started",
        "subscriptions",
        "waiters",
    )

    def __init__(self, session_id: str, owner: str) -> None:
        self.session_id = session_id
        self.owner = owner
        self.runs: deque[Run] = deque()
        self.subscriptions: set[Subscription] = set()
        # One-shot wake-ups (Subscription.arm), and each subscription's standing one
        # (Subscription.listen).
        self.waiters: list[Callable[[], None]] = []
        self.listeners: dict[Subscription, Callable[[], None]] = {}
        self.queue: deque[PendingStart] = deque()
        # client_msg_id -> run_id, for runs in memory and queued starts.
        self.msg_ids: dict[str, str] = {}
        # How many runs this state has started: run ordinals are 0, 1, 2 ...
        self.started = 0
        # The newest run started, even once evicted: a subscription that has read all of it
        # waits on it, and must be linked to the session's next run whenever that starts.
        self.last_run: Run | None = None

    @property
    def latest(self) -> Run | None:
        return self.runs[-1] if self.runs else None

    def wake(self) -> bool:
        """Tell every armed subscription (once) and every listening one that something
        changed; returns whether there was anyone to tell."""
        waiters, listeners = self.waiters, self.listeners
        told = bool(waiters or listeners)
        if waiters:
            self.waiters = []
            for callback in waiters:
                callback()
        if listeners:
            # A copy: a callback may close a subscription.
            for callback in list(listeners.values()):
                callback()
        return told

    def idle(self) -> bool:
        """Nothing left worth keeping in memory."""
        return not (self.runs or self.subscriptions or self.queue)
