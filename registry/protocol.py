"""The seam between the gateway and run state.

The gateway depends on this protocol, not on :class:`~registry.memory.MemoryRegistry`, so
that an implementation keeping run state and fan-out in a shared engine (several server
processes, :mod:`registry.cluster`) can replace the in-process one without changes to the
gateway. Whatever may need a round trip to such an engine is async here; the in-process
answer (:class:`LocalRegistry`) is immediate.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, Protocol

from .events import Event, Outcome, RunSummary
from .memory import MemoryRegistry, Notice, Policy, RegistryStats, StartResult
from .sessions import Source
from .subscription import Subscription


class RunRegistry(Protocol):
    """What serving clients needs from run state."""

    stats: RegistryStats

    async def start(
        self,
        session_id: str,
        *,
        owner: str,
        content: str,
        provider: str = "",
        source: Source | None = None,
        client_msg_id: str | None = None,
        policy: Policy = "reject",
    ) -> StartResult:
        """Start, queue or find a run (see :meth:`MemoryRegistry.start`)."""
        ...

    async def publish(self, session_id: str, kind: str, data: dict[str, Any]) -> Event | None:
        """Publish to the session's running run; ``None`` when none runs."""
        ...

    async def abort(
        self, session_id: str, *, clear_queue: bool = False, reason: Outcome = "aborted"
    ) -> RunSummary | None:
        """End the running run; its summary, or ``None`` when nothing ran."""
        ...

    async def subscribe(
        self, session_id: str, *, owner: str, run_id: str | None = None, after_seq: int = 0
    ) -> Subscription:
        """Subscribe from a position (see the protocol's ``subscribe``)."""
        ...

    async def get_run(self, run_id: str) -> RunSummary | None:
        """A run's summary while run state holds it (running, or within the TTL)."""
        ...

    async def running_run_id(self, session_id: str) -> str | None:
        """The session's running run, if any."""
        ...

    async def list_runs(
        self, *, owner: str | None = None, status: Literal["running", "all"] = "running"
    ) -> list[RunSummary]:
        """Run summaries, oldest start first (``all``: also finished within the TTL and
        queued)."""
        ...

    def listen(self, callback: Callable[[Notice], None]) -> Callable[[], None]:
        """Hear every run start and finish and every session deletion, whichever process
        caused it. Returns a function to stop."""
        ...

    async def shutdown(self, reason: Outcome = "server_restart") -> int:
        """Refuse new runs; end the runs this process drives. Returns how many."""
        ...

    async def forget_session(self, session_id: str, *, owner: str) -> None:
        """A session about to be deleted: end its runs (queued ones too), drop its
        subscriptions everywhere, announce :class:`~registry.memory.SessionDeleted`, and
        return once the ended runs' writes are queued to the store ahead of the deletion."""
        ...

    def subscriber_count(self) -> int:
        """Live subscriptions served by this process."""
        ...

    def local_runs(self) -> int:
        """Running runs this process drives (all of them, for one process)."""
        ...


class LocalRegistry:
    """:class:`RunRegistry` for one process: a :class:`MemoryRegistry` behind the protocol.

    Use it as an async context manager, like the registry it wraps (:attr:`memory`).
    """

    def __init__(self, memory: MemoryRegistry) -> None:
        self.memory = memory
        self.stats = memory.stats

    async def __aenter__(self) -> LocalRegistry:
        await self.memory.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self.memory.__aexit__(exc_type, exc, tb)

    async def start(
        self,
        session_id: str,
        *,
        owner: str,
        content: str,
        provider: str = "",
        source: Source | None = None,
        client_msg_id: str | None = None,
        policy: Policy = "reject",
    ) -> StartResult:
        return await self.memory.start(
            session_id,
            owner=owner,
            content=content,
            provider=provider,
            source=source,
            client_msg_id=client_msg_id,
            policy=policy,
        )

    async def publish(self, session_id: str, kind: str, data: dict[str, Any]) -> Event | None:
        if not self.memory.is_processing(session_id):
            # Nothing runs: not a late event of a run to count as dropped, just a miss.
            return None
        return self.memory.publish(session_id, kind, data)

    async def abort(
        self, session_id: str, *, clear_queue: bool = False, reason: Outcome = "aborted"
    ) -> RunSummary | None:
        return self.memory.abort(session_id, clear_queue=clear_queue, reason=reason)

    async def subscribe(
        self, session_id: str, *, owner: str, run_id: str | None = None, after_seq: int = 0
    ) -> Subscription:
        return await self.memory.subscribe(
            session_id, owner=owner, run_id=run_id, after_seq=after_seq
        )

    async def get_run(self, run_id: str) -> RunSummary | None:
        return self.memory.get_run(run_id)

    async def running_run_id(self, session_id: str) -> str | None:
        return self.memory.running_run_id(session_id)

    async def list_runs(
        self, *, owner: str | None = None, status: Literal["running", "all"] = "running"
    ) -> list[RunSummary]:
        return self.memory.list_runs(owner=owner, status=status)

    def listen(self, callback: Callable[[Notice], None]) -> Callable[[], None]:
        return self.memory.listen(callback)

    async def shutdown(self, reason: Outcome = "server_restart") -> int:
        return self.memory.shutdown(reason)

    async def forget_session(self, session_id: str, *, owner: str) -> None:
        self.memory.abort(session_id, clear_queue=True)
        self.memory.forget_session(session_id, owner=owner)

    def subscriber_count(self) -> int:
        return self.memory.subscriber_count()

    def local_runs(self) -> int:
        return self.memory.running_count()
