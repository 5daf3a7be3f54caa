"""The seam between the gateway and run state.

The gateway depends on this protocol, not on :class:`~registry.memory.MemoryRegistry`, so
that an implementation keeping run state and fan-out in a shared engine (for several server
processes) can replace the in-memory one without changes to the gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from .events import Event, Outcome, RunSummary
from .memory import Policy, RegistryStats, RunNotice, StartResult
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
    ) -> StartResult: ...

    def publish(self, session_id: str, kind: str, data: dict[str, object]) -> Event | None: ...

    def abort(
        self, session_id: str, *, clear_queue: bool = False, reason: Outcome = "aborted"
    ) -> RunSummary | None: ...

    def complete_run(
        self, session_id: str, *, exit_code: int = 1, error: str | None = None
    ) -> bool: ...

    async def subscribe(
        self, session_id: str, *, owner: str, run_id: str | None = None, after_seq: int = 0
    ) -> Subscription: ...

    def get_run(self, run_id: str) -> RunSummary | None: ...

    def is_processing(self, session_id: str) -> bool: ...

    def running_run_id(self, session_id: str) -> str | None: ...

    def list_runs(
        self, *, owner: str | None = None, status: Literal["running", "all"] = "running"
    ) -> list[RunSummary]: ...

    def listen(self, callback: Callable[[RunNotice], None]) -> Callable[[], None]: ...

    def shutdown(self, reason: Outcome = "server_restart") -> int: ...

    def forget_session(self, session_id: str) -> None: ...

    def subscriber_count(self) -> int: ...
