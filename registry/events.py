"""The event model: what a run produces, and its one canonical JSON form.

An :class:`Event` is created once by the registry when it is published and then shared:
the replay buffer, every subscriber and the store all hold the same object. Its wire form
(the protocol's ``event`` frame) is encoded at most once, on first use, and cached, so a
hundred subscribers cost one encoding. It is cached as ``str`` because WebSocket text
messages are ``str`` at the ASGI boundary.
"""

from __future__ import annotations

import reprlib
from typing import Any, Literal, NamedTuple

import msgspec

# Event kinds with a meaning to the registry. Providers may emit other kinds; they pass through.
USER_MESSAGE = "user_message"
COMPLETE = "complete"
SESSION_CREATED = "session_created"

Outcome = Literal["done", "aborted", "interrupted", "error", "server_restart"]
RunStatus = Literal["running", "completed", "queued"]

_json = msgspec.json.Encoder()

UNENCODABLE: tuple[type[Exception], ...] = (
    TypeError,
    ValueError,
    msgspec.EncodeError,
    # Nested deeper than the interpreter's recursion limit, which the encoder obeys.
    RecursionError,
)
"""What encoding data that cannot be JSON raises."""


class Emit(NamedTuple):
    """One event as a source produces it: a kind and its data, not yet numbered."""

    kind: str
    data: dict[str, Any]


class Turn(NamedTuple):
    """One side of an earlier exchange, for providers that keep no server-side conversation."""

    role: Literal["user", "assistant"]
    content: str


class ForkOrigin(NamedTuple):
    """How a forked session's first run continues the conversation it was forked from."""

    resume_id: str | None
    """The source's provider session id, when resuming it (with the provider's own fork
    option) gives exactly the conversation up to the fork point; else ``None``."""
    turns: int
    """How many user prompts the fork holds from its source."""
    summary: str | None
    """What happened up to the fork point, for a provider that cannot resume it."""


class Position(NamedTuple):
    """Where an event stands: the run and the seq inside it."""

    run_id: str
    seq: int


class Event(msgspec.Struct, tag_field="type", tag="event", omit_defaults=True, gc=False):
    """A published event. ``seq`` is 1, 2, 3 ... within ``run_id``.

    Encoded as it is, it is the protocol's ``event`` frame: the tag is its ``type``, and the
    two caches after ``data`` are left out while they are unset.
    """

    session_id: str
    run_id: str
    seq: int
    kind: str
    ts: int
    data: dict[str, Any]
    wire: str | None = None
    data_json: str | None = None

    @property
    def position(self) -> Position:
        return Position(self.run_id, self.seq)

    def encoded_data(self) -> str:
        """``data`` as JSON text: cut from the wire frame, which is encoded once and cached
        (the log row and the frame share one encoding), unless it came already encoded.
        Raises one of :data:`UNENCODABLE` for data that is not JSON."""
        text = self.data_json
        if text is None:
            wire = self.frame()
            # ``data`` is the frame's last field, and no string before it can hold an
            # unescaped quote, so the first ``,"data":`` is its key.
            text = wire[wire.index(_DATA_KEY) + len(_DATA_KEY) : -1]
        return text

    def frame(self) -> str:
        """The protocol ``event`` frame as JSON text, encoded once and cached.

        ``data`` is encoded inside the frame in the same pass, or inserted as it is when it
        came already encoded (``data_json``: from another process, or a stand-in for data
        that is not JSON).
        """
        wire = self.wire
        if wire is None:
            text = self.data_json
            if text is None:
                wire = _json.encode(self).decode()
            else:
                raw = _RawFrame(
                    self.session_id, self.run_id, self.seq, self.kind, self.ts, msgspec.Raw(text)
                )
                wire = _json.encode(raw).decode()
                # The frame holds the text now; a buffered event keeps one copy, not two.
                self.data_json = None
            self.wire = wire
        return wire


_DATA_KEY = ',"data":'


class _RawFrame(msgspec.Struct, tag_field="type", tag="event", gc=False):
    """An event's frame around data that is already JSON text."""

    session_id: str
    run_id: str
    seq: int
    kind: str
    ts: int
    data: msgspec.Raw


class RunSummary(msgspec.Struct, omit_defaults=False):
    """The protocol's run summary."""

    run_id: str
    session_id: str
    provider: str
    status: RunStatus
    started_at: int | None
    completed_at: int | None
    last_seq: int
    subscribers: int
    outcome: Outcome | None = None


def stand_in(data: dict[str, Any]) -> dict[str, Any]:
    """What is kept and sent instead of ``data`` that cannot be JSON: a readable account
    of it, so the event keeps its seq."""
    try:
        text = repr(data)[:1000]
    except RecursionError:
        # ``repr`` recurses as the encoder does; this one stops a few levels down.
        text = reprlib.repr(data)
    return {"unencodable": text}


# What a reader makes of stored data it cannot decode; see :func:`read_stored`.
_TOO_DEEP = {"unencodable": "nested too deeply to read"}
_TOO_DEEP_TEXT = _json.encode(_TOO_DEEP).decode()


decode_data = msgspec.json.Decoder(dict[str, Any]).decode
"""Stored or received ``data`` text as a dict (see :func:`read_stored` for text too deep)."""


def read_stored(text: str) -> tuple[dict[str, Any], str]:
    """Stored ``data`` text decoded, and the text an event's frame should carry.

    That is ``text`` itself, unless it nests too deeply to decode here: it was encoded
    nearer the top of the stack than this reader runs, and the decoder obeys the
    interpreter's recursion limit. Then both are a stand-in, so a replay goes on.
    """
    try:
        return decode_data(text), text
    except RecursionError:
        return too_deep()


def too_deep() -> tuple[dict[str, Any], str]:
    """The stand-in :func:`read_stored` gives for data too deep to decode, and its text."""
    return dict(_TOO_DEEP), _TOO_DEEP_TEXT


def complete_data(
    session_id: str,
    *,
    reason: Outcome = "done",
    exit_code: int | None = None,
    error: str | None = None,
    success: bool | None = None,
) -> dict[str, Any]:
    """The ``data`` of a ``complete`` event, with every field the protocol requires."""
    aborted = reason in ("aborted", "interrupted")
    if exit_code is None:
        exit_code = 0 if reason == "done" else 1
    if success is None:
        success = reason == "done" and exit_code == 0 and error is None
    data: dict[str, Any] = {
        "exit_code": exit_code,
        "success": success,
        "aborted": aborted,
        "reason": reason,
        "actual_session_id": session_id,
    }
    if error is not None:
        data["error"] = error
    return data
