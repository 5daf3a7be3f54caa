"""What the registry makes of the ``(kind, data)`` pairs a source yields: checks, the
provider ids it scrubs, and the ``complete`` it makes valid. Shared by every registry that
drives sources (in process, or into Redis for several processes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from .events import Outcome, complete_data

OUTCOMES: frozenset[str] = frozenset(("done", "aborted", "interrupted", "error", "server_restart"))
# Keys under which a provider might put its own session id; they never leave the registry.
_ID_KEYS: frozenset[str] = frozenset(
    ("session_id", "sessionId", "actual_session_id", "provider_session_id")
)
# Where a ``session_created`` event may carry the provider's id, most explicit first.
_CREATED_KEYS = ("provider_session_id", "session_id", "sessionId", "actual_session_id")


def checked_pair(pair: Any) -> tuple[str, dict[str, Any]]:
    """A source's ``(kind, data)`` pair, or :class:`TypeError` naming what it yielded."""
    if isinstance(pair, tuple) and len(pair) == 2:
        kind, data = pair
        if isinstance(kind, str) and isinstance(data, dict):
            check_kind(kind)
            return kind, data
    raise TypeError(f"source yielded {pair!r}, not (kind, data) or a list of them")


def check_kind(kind: str) -> None:
    """Refuse a kind that a store could not keep whole: PostgreSQL refuses NUL in text (and
    refusing it whatever the store keeps the engines alike)."""
    if "\x00" in kind:
        raise TypeError(f"event kind {kind!r} holds a NUL character")


def created_id(data: dict[str, Any]) -> str | None:
    """The provider's own session id a ``session_created`` event announces, if any."""
    found = next((data[k] for k in _CREATED_KEYS if data.get(k)), None)
    return found if isinstance(found, str) else None


def needs_scrub(data: dict[str, Any]) -> bool:
    """Whether ``data`` holds a key under which a provider may put its session id."""
    return not _ID_KEYS.isdisjoint(data)


def scrub(data: dict[str, Any], session_id: str) -> dict[str, Any]:
    """A copy of ``data`` with provider session ids replaced by the app's."""
    clean = {k: v for k, v in data.items() if k != "provider_session_id"}
    for key in ("session_id", "sessionId", "actual_session_id"):
        if key in clean:
            clean[key] = session_id
    return clean


def complete_fields(data: dict[str, Any], session_id: str) -> dict[str, Any]:
    """A provider's ``complete`` data with every protocol field present and valid."""
    extra = scrub(data, session_id)
    reason = extra.get("reason")
    error = extra.get("error") if isinstance(extra.get("error"), str) else None
    exit_code = extra.get("exit_code")
    if not isinstance(exit_code, int) or isinstance(exit_code, bool):
        exit_code = None
    if reason not in OUTCOMES:
        reason = "error" if error is not None else "done"
    outcome = cast(Outcome, reason)
    success = extra.get("success") if isinstance(extra.get("success"), bool) else None
    fields = complete_data(
        session_id, reason=outcome, exit_code=exit_code, error=error, success=success
    )
    extra.update(fields)
    return extra


@asynccontextmanager
async def closing(iterator: AsyncIterator[Any]) -> AsyncIterator[None]:
    """Close an async generator on the way out, so its own cleanup runs in this task."""
    try:
        yield
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
