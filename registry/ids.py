"""Identifiers: time-sortable run ids and opaque session ids."""

from __future__ import annotations

import os
import secrets

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_run_id(now_ms: int) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, as 26 Crockford base32 characters.

    Ids from different milliseconds sort by time as plain strings; 80 random bits make a
    collision across processes and restarts negligible.
    """
    value = ((now_ms & 0xFFFF_FFFF_FFFF) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_session_id() -> str:
    """An opaque, unguessable session id chosen by the server."""
    return "s_" + secrets.token_urlsafe(12)
