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
    return _encode(_ulid(now_ms))


class RunIds:
    """Makes ULID run ids that also sort in the order they were made.

    Within one millisecond a plain ULID's random part decides the order. Here an id that
    would not sort after the previous one is the previous one plus one (the ULID spec's
    monotonic mode), so runs started in the same millisecond, as an interrupt or a queued
    start is started in the millisecond its predecessor ended, still sort in start order.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def new(self, now_ms: int) -> str:
        value = _ulid(now_ms)
        if value <= self._last:
            value = self._last + 1
        self._last = value
        return _encode(value)


def _ulid(now_ms: int) -> int:
    return ((now_ms & 0xFFFF_FFFF_FFFF) << 80) | int.from_bytes(os.urandom(10), "big")


def _encode(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_session_id() -> str:
    """An opaque, unguessable session id chosen by the server."""
    return "s_" + secrets.token_urlsafe(12)
