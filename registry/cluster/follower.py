"""Keeping a process's mirror of the sessions it follows equal to what Redis holds.

A followed session's live channel brings every appended batch (a header line, then one line
of data JSON per event) and :meth:`Follower.on_message` applies it to the mirror in order.
Applying never guesses: a batch that does not follow what the mirror holds (a message lost
to a reconnect, a run the mirror never saw start) makes the session catch up from the run
streams first, holding whatever pub/sub delivers meanwhile in a backlog, and only then goes
on. Following starts the same way: subscribe on pub/sub (confirmed), then catch up, so
nothing published in between is missed. A run Redis no longer holds (it restarted empty)
can no longer be caught up: the session's subscribers end with ``lagged`` and resubscribe
from their positions, served by the log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import msgspec

from ..events import read_stored
from ..memory import MemoryRegistry
from .backoff import Backoff
from .engine import Engine, EngineUnavailable, StoredEvent
from .live import Live
from .persistence import OwnedPersistence

log = logging.getLogger("runwire.cluster")

# How long a request waits for a session to be followed (subscribed and caught up).
FOLLOW_TIMEOUT = 10.0
# A session no longer needed is still followed this long (seconds): no churn of pub/sub
# subscriptions for a client that resubscribes at once.
FOLLOW_GRACE = 5.0
# Events read from a run's stream per request while catching up.
_PAGE = 1000

_decode_header = msgspec.json.Decoder(tuple[str, int, int, list[str], Any, Any]).decode


class _Follow:
    """A session this process follows on pub/sub."""

    __slots__ = ("backlog", "ready", "used")

    def __init__(self) -> None:
        # Messages held while the session is caught up from the streams; None when live.
        self.backlog: list[str] | None = []
        self.ready = anyio.Event()
        # When a request last needed it (anyio.current_time()).
        self.used = anyio.current_time()


class Follower:
    """The sessions followed on ``live`` and mirrored in ``mirror``."""

    def __init__(
        self,
        engine: Engine,
        live: Live,
        mirror: MemoryRegistry,
        persist: OwnedPersistence,
        *,
        spawn: Callable[[Callable[[str], Coroutine[Any, Any, None]], str], None],
        lost_run: Callable[[str], Awaitable[None]],
        ingested: Callable[[str], None],
    ) -> None:
        self._engine = engine
        self._live = live
        self._mirror = mirror
        self._persist = persist
        # Starts a background task (the registry's task group).
        self._spawn = spawn
        # Told of a running run Redis no longer has, before its subscribers are dropped.
        self._lost_run = lost_run
        # Told of a run with new events in the mirror (their delivery is released in
        # batches).
        self._ingested = ingested
        self._follows: dict[str, _Follow] = {}
        self._prefix = engine.key("live", "")

    def followed(self) -> list[str]:
        return list(self._follows)

    def recently_used(self, session_id: str) -> bool:
        """Followed, and being caught up or used by a request within ``FOLLOW_GRACE``."""
        follow = self._follows.get(session_id)
        if follow is None:
            return False
        return not follow.ready.is_set() or anyio.current_time() - follow.used < FOLLOW_GRACE

    async def follow(self, session_id: str) -> None:
        """Return once the session is followed: subscribed on pub/sub and caught up.
        Raises :class:`EngineUnavailable` when Redis does not allow that in time."""
        follow = self._follows.get(session_id)
        if follow is not None:
            follow.used = anyio.current_time()
        else:
            follow = self._follows[session_id] = _Follow()
            try:
                with anyio.fail_after(FOLLOW_TIMEOUT):
                    await self._live.follow(self._engine.key("live", session_id))
                await self._catch_up(session_id)
            except BaseException as exc:
                self._follows.pop(session_id, None)
                follow.ready.set()
                if isinstance(exc, TimeoutError):
                    raise EngineUnavailable("follow", exc) from None
                raise
        try:
            with anyio.fail_after(FOLLOW_TIMEOUT):
                await follow.ready.wait()
        except TimeoutError as exc:
            raise EngineUnavailable("follow", exc) from None
        if session_id not in self._follows:
            raise EngineUnavailable("follow", RuntimeError("the session could not be followed"))

    async def unfollow(self, session_id: str) -> None:
        """Stop following a session nobody here needs any more."""
        if self._follows.pop(session_id, None) is not None:
            await self._live.unfollow(self._engine.key("live", session_id))

    def on_message(self, channel: str, message: str) -> None:
        """A live channel's message: apply it, or hold it while the session catches up."""
        session_id = channel[len(self._prefix) :]
        follow = self._follows.get(session_id)
        if follow is None:
            return
        if follow.backlog is not None:
            follow.backlog.append(message)
            return
        if not self._apply(session_id, message):
            # A gap: catch up from the streams, holding what arrives meanwhile.
            follow.backlog = [message]
            follow.ready = anyio.Event()
            self._spawn(self.catch_up, session_id)

    async def catch_up_all(self) -> None:
        """After a pub/sub reconnect: what was published meanwhile is only in the streams.
        Every followed session holds its messages from now on and catches up (in tasks of
        its own, so the connection is read meanwhile)."""
        for session_id, follow in list(self._follows.items()):
            if follow.backlog is None:
                follow.backlog = []
                follow.ready = anyio.Event()
                self._spawn(self.catch_up, session_id)

    async def catch_up(self, session_id: str) -> None:
        """Catch a session up, retrying with backoff while Redis cannot be reached."""
        backoff = Backoff()
        while session_id in self._follows:
            try:
                await self._catch_up(session_id)
                return
            except EngineUnavailable as exc:
                await backoff.after(f"catching up session {session_id}", exc)

    # Applying ----------------------------------------------------------------------------

    def _apply(self, session_id: str, message: str) -> bool:
        """Apply one pub/sub message to the mirror; ``False`` on a gap."""
        head, _, body = message.partition("\n")
        run_id, first, ts, kinds, start, end = _decode_header(head)
        mirror = self._mirror
        if start is not None and mirror.following(run_id) is None:
            if mirror.is_processing(session_id):
                return False  # The previous run's complete was missed.
            mirror.adopt(
                session_id,
                owner=start["owner"],
                run_id=run_id,
                provider=start.get("provider") or "",
                started_at=ts,
                client_msg_id=start.get("client_msg_id") or None,
                first_seq=first,
                ord=start.get("ord"),
            )
        elif mirror.following(run_id) is None:
            return False  # A run this mirror never saw start: read it from its stream.
        if end is not None:
            self._persist.unread[run_id] = not end.get("watched", False)
        texts = body.split("\n")
        for offset, kind in enumerate(kinds):
            data, text = read_stored(texts[offset])
            if not mirror.ingest(run_id, first + offset, kind, ts, data, text):
                return False
        self._ingested(run_id)
        return True

    # Catching up from the streams ----------------------------------------------------------

    async def _catch_up(self, session_id: str) -> None:
        """Bring the mirror of a followed session up to the streams, then apply what pub/sub
        delivered meanwhile; repeats while those leave a gap."""
        follow = self._follows.get(session_id)
        while follow is not None and follow.backlog is not None:
            await self._read_streams(session_id)
            backlog, follow.backlog = follow.backlog, None
            for message in backlog:
                if follow.backlog is not None:
                    follow.backlog.append(message)
                elif not self._apply(session_id, message):
                    follow.backlog = [message]
        if follow is not None:
            follow.ready.set()

    async def _read_streams(self, session_id: str) -> None:
        engine = self._engine
        mirror = self._mirror
        run_ids = await engine.session_runs(session_id)
        held = mirror.session_runs(session_id)
        for run_id in held:
            gone = mirror.is_processing(session_id) and run_id not in run_ids
            if gone and await engine.run(run_id) is None:
                await self._lost_run(run_id)
                self._drop(session_id, f"run {run_id} is gone from Redis")
                held = []
                break
        if held and held[-1] in run_ids:
            run_ids = run_ids[run_ids.index(held[-1]) :]
        for run_id in run_ids:
            if not await self._read_run(session_id, run_id):
                return

    async def _read_run(self, session_id: str, run_id: str) -> bool:
        """Bring one run of the session up to its stream (adopting it if new); ``False``
        when the mirror had to drop the session."""
        engine = self._engine
        mirror = self._mirror
        last = mirror.following(run_id)
        if last is None:
            fields = await engine.run(run_id)
            if fields is None or fields.get("status") == "queued":
                return True
            if mirror.is_processing(session_id):
                self._drop(session_id, "a run ended with no trace of its end")
                return False
            events = await self._stream(run_id, 0)
            # From the stream's last unbroken stretch on: anything older (trimmed, or
            # forgotten by a Redis back with older data) is the log's to replay.
            start = next(
                (
                    i
                    for i in range(len(events) - 1, 0, -1)
                    if events[i].seq != events[i - 1].seq + 1
                ),
                0,
            )
            events = events[start:]
            first = events[0].seq if events else int(fields["last_seq"]) + 1
            mirror.adopt(
                session_id,
                owner=fields["owner"],
                run_id=run_id,
                provider=fields.get("provider", ""),
                started_at=int(fields.get("started_at") or 0),
                client_msg_id=fields.get("client_msg_id") or None,
                first_seq=first,
                ord=int(fields["ord"]) if fields.get("ord") else None,
            )
        else:
            events = await self._stream(run_id, last)
        for event in events:
            data, text = read_stored(event.data)
            ingested = self._mirror.ingest(run_id, event.seq, event.kind, event.ts, data, text)
            if not ingested:
                held = self._mirror.following(run_id)
                self._drop(session_id, f"run {run_id} lost seqs after {held} from Redis")
                return False
        self._ingested(run_id)
        return True

    async def _stream(self, run_id: str, after: int) -> list[StoredEvent]:
        """The run's stream after seq ``after``, read in pages."""
        events: list[StoredEvent] = []
        while page := await self._engine.events(run_id, after, limit=_PAGE):
            events.extend(page)
            after = page[-1].seq
        return events

    def _drop(self, session_id: str, why: str) -> None:
        """Events Redis no longer has: the session's subscribers resubscribe (and get what
        the log has); what this process should have written is reported lost."""
        log.error("session %s: %s; its subscribers must resubscribe", session_id, why)
        for run_id in self._mirror.session_runs(session_id):
            if run_id in self._persist.owned:
                log.error("run %s: events not yet written to the database are lost", run_id)
        self._mirror.drop_session(session_id)
