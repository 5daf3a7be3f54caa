"""Driving a run's source into Redis: every burst one ``APPEND``, the end one ``FINISH``.

The source is pulled only as fast as Redis takes its events and the database keeps up:
each burst is appended (the script numbers it) before the next is pulled, and a source that
gets more than half a replay buffer ahead of the database waits, so the run's stream (as
long as the buffer) still holds whatever a process that takes over would have to write.
When Redis cannot be reached the burst is retried with backoff, the source meanwhile
paused; when the run is no longer running in Redis (aborted, interrupted, or reaped) the
source is stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import msgspec

from ..clock import Clock, to_ms
from ..events import COMPLETE, SESSION_CREATED, UNENCODABLE, Outcome, complete_data, stand_in
from ..hooks import Persistence
from ..memory import RegistryStats
from ..pairs import checked_pair, closing, complete_fields, created_id, needs_scrub, scrub
from .backoff import Backoff
from .engine import Engine, EngineUnavailable
from .owned import Owned

log = logging.getLogger("runwire.cluster")

T = TypeVar("T")


class Driver:
    """Runs sources of the runs this process owns."""

    def __init__(
        self,
        engine: Engine,
        store: Persistence,
        clock: Clock,
        *,
        pace_ahead: int,
        closing: Callable[[], bool],
        gone: Callable[[Owned], Awaitable[None]],
        held: Callable[[str], int],
        stats: RegistryStats,
    ) -> None:
        self._engine = engine
        self._store = store
        self._clock = clock
        self._pace_ahead = pace_ahead
        self._closing = closing
        # Told when Redis answers that a run of ours is not running (ended elsewhere, or
        # lost with Redis's state).
        self._gone = gone
        # The highest seq of a run this process's mirror holds.
        self._held = held
        # Events refused because their run had ended (counted like the single process's).
        self._stats = stats
        self._encode = msgspec.json.Encoder().encode

    async def drive(self, owned: Owned) -> None:
        """Feed the run from its source until it completes, fails or is stopped."""
        source = owned.source
        assert source is not None
        if owned.ended.is_set():
            return  # Ended before it could start (a queued run aborted with its queue).
        ended = False
        with anyio.CancelScope() as scope:
            owned.scope = scope
            try:
                events = source(owned.context)
                async with closing(events):
                    async for item in events:
                        ended = await self._burst(owned, item if type(item) is list else [item])
                        if ended:
                            break
                        await self._pace(owned)
            except Exception as exc:
                log.warning("run %s failed: %s", owned.run_id, exc, exc_info=exc)
                await self.finish(owned, "error", error=str(exc) or type(exc).__name__)
                return
            finally:
                owned.scope = None
        if not ended and not scope.cancel_called:
            await self.finish(owned, "done", exit_code=0)

    async def _burst(self, owned: Owned, pairs: list[Any]) -> bool:
        """Append one burst; ``True`` once the run has ended (here or elsewhere)."""
        session_id = owned.session_id
        kinds: list[str] = []
        texts: list[str] = []
        for pair in pairs:
            kind, data = checked_pair(pair)
            if kind == SESSION_CREATED:
                provider_id = created_id(data)
                if provider_id is not None:
                    self._store.provider_session(session_id, owned.run_id, provider_id)
                continue
            if kind == COMPLETE:
                if kinds and not await self._append(owned, kinds, texts):
                    return True
                await self._finish_with(owned, complete_fields(data, session_id))
                return True
            if needs_scrub(data):
                data = scrub(data, session_id)
            kinds.append(kind)
            texts.append(self._text(owned, data))
        return bool(kinds) and not await self._append(owned, kinds, texts)

    async def _append(self, owned: Owned, kinds: list[str], texts: list[str]) -> bool:
        """Append a batch; ``False`` when the run is no longer running."""
        ts = to_ms(self._clock.now())
        first, _, skipped = await self._retry(
            f"appending to run {owned.run_id}",
            lambda: self._engine.append(
                owned.run_id,
                owned.session_id,
                ts,
                kinds,
                texts,
                min_seq=self._handed_out(owned),
            ),
        )
        if skipped:
            log.warning(
                "run %s: Redis came back without its seqs %d..%d (older data); numbering "
                "goes on after them (they were delivered and are written from here)",
                owned.run_id,
                first - skipped,
                first - 1,
            )
        if first == 0:
            self._stats.dropped += len(kinds)
            await self._gone(owned)
            return False
        owned.last_appended = first + len(kinds) - 1
        return True

    async def finish(
        self,
        owned: Owned,
        reason: Outcome,
        *,
        exit_code: int | None = None,
        error: str | None = None,
    ) -> int:
        """End the run with a synthetic ``complete``; its seq, or 0 when it had ended."""
        data = complete_data(owned.session_id, reason=reason, exit_code=exit_code, error=error)
        return await self._finish_with(owned, data)

    async def _finish_with(self, owned: Owned, data: dict[str, Any]) -> int:
        ts = to_ms(self._clock.now())
        text = self._encode(data).decode()
        seq = await self._retry(
            f"ending run {owned.run_id}",
            lambda: self._engine.finish(
                owned.run_id, ts, text, str(data["reason"]), min_seq=self._handed_out(owned)
            ),
        )
        if seq == 0:
            self._stats.dropped += 1
            await self._gone(owned)
        else:
            owned.last_appended = seq
        return seq

    def _handed_out(self, owned: Owned) -> int:
        """The highest seq of the run known here to have been handed out."""
        return max(owned.last_appended, self._held(owned.run_id))

    async def _pace(self, owned: Owned) -> None:
        """Hold a source that got half a buffer ahead of the database until it is a
        quarter ahead, so producing and committing overlap."""
        if owned.last_appended - self._store.durable_seq(owned.run_id) <= self._pace_ahead:
            return
        target = owned.last_appended - self._pace_ahead // 2
        woken = anyio.Event()
        owned.pacing = (target, woken)
        try:
            self._store.urge()
            if self._store.durable_seq(owned.run_id) < target:
                await woken.wait()
        finally:
            owned.pacing = None

    def _text(self, owned: Owned, data: dict[str, Any]) -> str:
        try:
            return self._encode(data).decode()
        except UNENCODABLE as exc:
            # Keep the event (a seq with no row would be a hole): record why instead.
            log.error("an event of run %s has data that is not JSON (%s)", owned.run_id, exc)
            return self._encode(stand_in(data)).decode()

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, retried with backoff while Redis is unavailable (the source waits
        meanwhile); gives up only when the registry closes."""
        backoff = Backoff()
        while True:
            try:
                return await call()
            except EngineUnavailable as exc:
                if self._closing():
                    raise
                await backoff.after(what, exc)
