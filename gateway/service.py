"""Operations shared by the WebSocket and HTTP faces: owner and status checks, rate limit.

Every session access goes through :meth:`Service.session`, which asks the store with the
caller as owner: another user's session is indistinguishable from a missing one.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from providers import ProviderRegistry, make_source
from providers.artifacts import FILE_TOOLS
from registry import (
    Clock,
    Event,
    RegistryError,
    RunRegistry,
    RunSummary,
    StartResult,
    Subscription,
)
from registry.clock import to_ms
from registry.store import BadForkPoint, ForkPoint, SessionCursor, SessionRecord, Store

from .context import RECENT, build_context, fork_summary
from .errors import GatewayError, invalid, not_found
from .frames import Send
from .settings import Settings

SessionStatus = Literal["active", "locked", "archived"]
SESSION_STATUSES: tuple[SessionStatus, ...] = ("active", "locked", "archived")


class RateLimiter:
    """A token bucket per user: ``burst`` sends at once, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, user: str) -> bool:
        """Take one token from the user's bucket; ``False`` when it is empty."""
        now = self._clock.now()
        tokens, last = self._buckets.get(user, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[user] = (tokens, now)
            return False
        self._buckets[user] = (tokens - 1.0, now)
        return True

    def refund(self, user: str) -> None:
        """Give back the token of a send that turned out to cost nothing (a duplicate)."""
        bucket = self._buckets.get(user)
        if bucket is not None:
            self._buckets[user] = (min(self._burst, bucket[0] + 1.0), bucket[1])


class Service:
    """What a client can do, whichever face it uses."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: RunRegistry,
        store: Store,
        providers: ProviderRegistry,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.providers = providers
        self.clock = clock
        self.limiter = RateLimiter(settings.send_rate, settings.send_burst, clock)
        # Cleared when shutdown begins: from then on sends are refused.
        self.accepting = True

    # Sessions --------------------------------------------------------------------------

    async def session(self, user: str, session_id: str) -> SessionRecord:
        """The caller's session, or ``SESSION_NOT_FOUND`` (also for another user's)."""
        record = await self.store.get_session(session_id, owner=user)
        if record is None:
            raise not_found(session_id)
        return record

    async def session_json(self, record: SessionRecord) -> dict[str, Any]:
        """A session as the HTTP API shows it; ``running_run_id`` is live."""
        running = await self.registry.running_run_id(record.session_id)
        return _session_json(record, running)

    async def sessions_json(
        self, user: str, *, after: SessionCursor | None = None, limit: int | None = None
    ) -> tuple[list[dict[str, Any]], SessionCursor | None]:
        """The user's sessions as the HTTP API lists them, newest activity first, from past
        ``after``, ``limit`` at most; and where the next page starts (``None``: no more)."""
        records = await self.store.list_sessions(
            owner=user, after=after, limit=None if limit is None else limit + 1
        )
        following = None
        if limit is not None and len(records) > limit:
            del records[limit:]
            following = SessionCursor.of(records[-1])
        running = {r.session_id: r.run_id for r in await self.registry.list_runs(owner=user)}
        return [_session_json(r, running.get(r.session_id)) for r in records], following

    async def create_session(
        self, user: str, *, provider: str | None = None, title: str | None = None
    ) -> SessionRecord:
        """A new session of the caller, with the given or the default provider."""
        name = provider or self.settings.provider
        if name not in self.providers:
            known = ", ".join(self.providers.names())
            raise GatewayError(
                "UNKNOWN_PROVIDER", f"unknown provider {name!r} (known: {known})", field="provider"
            )
        return await self.store.create_session(owner=user, provider=name, title=title)

    async def update_session(
        self, user: str, session_id: str, *, title: str | None, status: str | None
    ) -> SessionRecord:
        if status is not None and status not in SESSION_STATUSES:
            raise invalid("status", f"expected one of {', '.join(SESSION_STATUSES)}")
        record = await self.store.update_session(session_id, owner=user, title=title, status=status)
        if record is None:
            raise not_found(session_id)
        return record

    async def set_handoff(
        self, user: str, session_id: str, handoff: dict[str, Any]
    ) -> SessionRecord:
        """Store the session's handoff notes; ``SESSION_NOT_FOUND`` for another user's."""
        record = await self.store.set_handoff(session_id, owner=user, handoff=handoff)
        if record is None:
            raise not_found(session_id)
        return record

    async def context(self, user: str, session_id: str) -> dict[str, Any]:
        """The session's context, derived from its log (see :mod:`gateway.context`)."""
        record = await self.session(user, session_id)
        digest = await self.store.digest(session_id, file_tools=FILE_TOOLS, recent=RECENT)
        return build_context(record, digest, now_ms=to_ms(self.clock.now()))

    async def fork(
        self, user: str, session_id: str, *, at: ForkPoint | None, title: str | None = None
    ) -> SessionRecord:
        """Fork the caller's session at ``at`` (``None``: its end) into a new session, and
        write the summary its provider starts from if it cannot resume the source."""
        try:
            record = await self.store.fork_session(session_id, owner=user, at=at, title=title)
        except BadForkPoint as exc:
            raise invalid(exc.field, str(exc)) from None
        if record is None:
            raise not_found(session_id)
        fork_id = record.session_id
        context = await self.context(user, fork_id)
        turns = await self.store.turns(fork_id)
        await self.store.set_fork_summary(fork_id, fork_summary(context, turns))
        return record

    async def delete_session(self, user: str, session_id: str) -> None:
        """End the session's runs and tell the owner's connections (the registry announces
        the deletion to every process), then delete it with its runs and events."""
        await self.session(user, session_id)
        await self.registry.forget_session(session_id, owner=user)
        if not await self.store.delete_session(session_id, owner=user):
            raise not_found(session_id)

    async def mark_read(self, user: str, session_id: str) -> None:
        if not await self.store.mark_read(session_id, owner=user):
            raise not_found(session_id)

    async def subscribe(
        self, user: str, session_id: str, *, run_id: str | None, after_seq: int
    ) -> Subscription:
        """Subscribe to the caller's session from a position (see the protocol).

        ``info.run`` is the session's latest run even when only the store still has it.
        """
        await self.session(user, session_id)
        sub = await self.registry.subscribe(
            session_id, owner=user, run_id=run_id, after_seq=after_seq
        )
        info = sub.info
        assert info is not None
        if info.run is None:
            try:
                latest = await self.store.latest_run(session_id)
            except BaseException:
                sub.close()
                raise
            if latest is not None:
                sub.info = msgspec.structs.replace(info, run=latest)
        return sub

    # Runs ------------------------------------------------------------------------------

    async def send(self, user: str, frame: Send) -> StartResult:
        """Start (or queue, or find) a run; creates the session when none is named."""
        if not self.accepting:
            raise GatewayError("INTERNAL", "the server is shutting down; send again after restart")
        if not self.limiter.allow(user):
            raise GatewayError("RATE_LIMITED", "too many sends; slow down and retry")
        if frame.session_id is None:
            record = await self.create_session(user, provider=frame.provider)
        else:
            record = await self.session(user, frame.session_id)
            if record.status == "locked":
                raise GatewayError("SESSION_LOCKED", f"session {record.session_id} is locked")
            if record.status == "archived":
                raise GatewayError("SESSION_ARCHIVED", f"session {record.session_id} is archived")
        try:
            provider = self.providers.get(record.provider)
            try:
                source = make_source(provider, options=frame.options, store=self.store)
            except (TypeError, ValueError) as exc:
                raise invalid("options", str(exc)) from None
            result = await self.registry.start(
                record.session_id,
                owner=user,
                content=frame.content,
                provider=record.provider,
                source=source,
                client_msg_id=frame.client_msg_id or None,
                policy=frame.multitask,
            )
        except RegistryError as exc:
            raise GatewayError.from_registry(exc) from None
        if result.status == "started":
            # Acknowledge only what a crash cannot lose: the run and its user_message are
            # committed first, so a client told `started` never finds the run missing.
            await self.store.flush()
        elif result.status == "duplicate":
            # A retry (after a reconnect, say) of a send that already went through.
            self.limiter.refund(user)
        return result

    async def abort(self, user: str, session_id: str, *, clear_queue: bool = False) -> RunSummary:
        """End the session's running run (``NO_ACTIVE_RUN`` when there is none)."""
        await self.session(user, session_id)
        summary = await self.registry.abort(session_id, clear_queue=clear_queue)
        if summary is None:
            raise GatewayError("NO_ACTIVE_RUN", f"session {session_id} has no running run")
        return summary

    async def checkpoint(self, user: str, session_id: str, data: dict[str, Any]) -> Event:
        """Mark a point in the session's running run with a ``checkpoint`` event, as a
        client (a person, an orchestrator) sees it; ``NO_ACTIVE_RUN`` when none runs."""
        await self.session(user, session_id)
        event = await self.registry.publish(session_id, "checkpoint", data)
        if event is None:
            raise GatewayError("NO_ACTIVE_RUN", f"session {session_id} has no running run")
        return event

    async def list_runs(self, user: str, status: Literal["running", "all"]) -> list[RunSummary]:
        """The caller's run summaries."""
        return await self.registry.list_runs(owner=user, status=status)


def _session_json(record: SessionRecord, running_run_id: str | None) -> dict[str, Any]:
    return {
        "session_id": record.session_id,
        "title": record.title,
        "provider": record.provider,
        "status": record.status,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "has_unread": record.has_unread,
        "running_run_id": running_run_id,
        "handoff": record.handoff,
        "forked_from": record.forked_from,
    }


def to_builtins(value: object) -> Any:
    """Structs (run summaries, records) as plain JSON-able values."""
    return msgspec.to_builtins(value)
