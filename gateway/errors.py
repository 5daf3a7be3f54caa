"""The one exception type the gateway turns into an ``error`` frame or an HTTP error body."""

from __future__ import annotations

from registry import RegistryError

# The HTTP status that fits each protocol error code.
HTTP_STATUS: dict[str, int] = {
    "BAD_FRAME": 400,
    "UNKNOWN_TYPE": 400,
    "INVALID_FIELD": 400,
    "UNKNOWN_PROVIDER": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "SESSION_NOT_FOUND": 404,
    "NOT_FOUND": 404,
    "SESSION_LOCKED": 409,
    "SESSION_ARCHIVED": 409,
    "RUN_IN_PROGRESS": 409,
    "QUEUE_FULL": 409,
    "NO_ACTIVE_RUN": 409,
    "TOO_LARGE": 413,
    "RATE_LIMITED": 429,
    "INTERNAL": 500,
}


class GatewayError(Exception):
    """A request refused with a protocol error ``code`` and a message for humans.

    ``field`` names the offending field for ``INVALID_FIELD``.
    """

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    @property
    def status(self) -> int:
        """The HTTP status for this error."""
        return HTTP_STATUS.get(self.code, 400)

    @classmethod
    def from_registry(cls, exc: RegistryError) -> GatewayError:
        """The registry's exceptions carry their protocol code already."""
        return cls(exc.code, str(exc))


def not_found(session_id: str) -> GatewayError:
    """The same answer for a missing session and for another user's session."""
    return GatewayError("SESSION_NOT_FOUND", f"session {session_id} not found")


def invalid(field: str, message: str) -> GatewayError:
    """An ``INVALID_FIELD`` error naming ``field``."""
    return GatewayError("INVALID_FIELD", f"{field}: {message}", field=field)
