"""Who is calling (bearer token) and whether a browser page may open a socket (Origin)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection


def _normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, without path or trailing slash."""
    parts = urlsplit(origin.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


class Authenticator:
    """Maps a request's token to its user and checks browser Origins.

    Tokens come from ``Authorization: Bearer <token>`` or ``?token=<token>`` (browsers cannot
    set headers on a WebSocket).
    """

    def __init__(self, tokens: Mapping[str, str], origins: Iterable[str] = ()) -> None:
        self._tokens = [(token.encode(), user) for token, user in tokens.items()]
        self.origins = frozenset(_normalize_origin(o) for o in origins)
        """The allow-listed Origins, as browsers send them (lower case, no path)."""

    def user(self, conn: HTTPConnection) -> str | None:
        """The user the request's token belongs to, or ``None`` for no or a wrong token."""
        token = self._token(conn)
        if token is None:
            return None
        offered = token.encode()
        found: str | None = None
        # Compare against every token in constant time, so timing reveals nothing.
        for known, user in self._tokens:
            if hmac.compare_digest(offered, known):
                found = user
        return found

    @staticmethod
    def _token(conn: HTTPConnection) -> str | None:
        header = conn.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        return conn.query_params.get("token") or None

    def origin_allowed(self, conn: HTTPConnection) -> bool:
        """Whether a WebSocket handshake's ``Origin`` may connect.

        No ``Origin`` header means a non-browser client, which is allowed; a browser page
        is allowed from the server's own host or from an Origin in the allow-list.
        """
        origin = conn.headers.get("origin")
        if origin is None:
            return True
        normalized = _normalize_origin(origin)
        if normalized in self.origins:
            return True
        host = conn.headers.get("host")
        return host is not None and urlsplit(normalized).netloc == host.lower()
