"""Exceptions the registry raises to its callers.

Each carries the protocol error ``code`` so a gateway can turn it into an ``error`` frame
without a lookup table of its own.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class: a request the registry refused, with a protocol error code."""

    code = "INTERNAL"


class RunInProgress(RegistryError):
    """A run is already running for the session and the policy is ``reject``."""

    code = "RUN_IN_PROGRESS"

    def __init__(self, session_id: str, run_id: str) -> None:
        super().__init__(f"session {session_id} already has run {run_id} running")
        self.session_id = session_id
        self.run_id = run_id


class QueueFull(RegistryError):
    """The session's queue of pending starts is at its bound."""

    code = "QUEUE_FULL"

    def __init__(self, session_id: str, limit: int) -> None:
        super().__init__(f"session {session_id} already has {limit} queued sends")
        self.session_id = session_id
        self.limit = limit


class UnknownRun(RegistryError):
    """A subscription named a ``run_id`` that is not a run of the session."""

    code = "INVALID_FIELD"

    def __init__(self, session_id: str, run_id: str) -> None:
        self.detail = f"{run_id} is not a run of session {session_id}"
        """What is wrong, for a message that names the field holding the run id."""
        super().__init__(f"run_id: {self.detail}")
        self.session_id = session_id
        self.run_id = run_id


class ShuttingDown(RegistryError):
    """The registry no longer accepts new runs."""

    code = "INTERNAL"

    def __init__(self) -> None:
        super().__init__("the server is shutting down and accepts no new runs")
