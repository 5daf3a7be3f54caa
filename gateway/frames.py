"""The protocol's frames: client frames decoded with msgspec, server frames encoded to text.

Client frames are a tagged union on ``type``; one decode validates a frame completely.
Anything that does not decode is classified again, slowly, into the protocol's error codes
(``BAD_FRAME``, ``UNKNOWN_TYPE``, ``INVALID_FIELD`` naming the field), keeping the frame's
``id`` when it has a usable one so the error can be matched to its request.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import msgspec

from registry import RunSummary, SubscribeInfo

from .errors import GatewayError, invalid

# Integers on the wire stay within what every JSON client can represent exactly.
MAX_INT = 2**53
# How deeply a client's free-form values (send ``options``, a handoff's
# ``context_for_next``, a checkpoint's ``data``) may nest. Deep enough for any real use,
# and far from the interpreter's recursion limit, which msgspec and ``repr`` obey: a value
# accepted here can always be encoded, stored and read back, wherever in the stack.
MAX_DEPTH = 64
# What a message nested past the parser's own limit (the interpreter's) is told.
TOO_DEEP = "nested too deeply to read"
FrameId = str | Annotated[int, msgspec.Meta(ge=-MAX_INT, le=MAX_INT)] | None
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
# The longest id (session, run, provider, client message) a client may name.
MAX_ID = 256
ShortText = Annotated[str, msgspec.Meta(max_length=MAX_ID)]
Multitask = Literal["reject", "enqueue", "interrupt"]


def decimal(text: str) -> int | None:
    """``text`` as a non-negative integer written in ASCII digits, else ``None``.

    ``str.isdigit`` alone also admits digits ``int`` refuses (``"²"``), which a client
    could put in a URL or a header.
    """
    return int(text) if text.isascii() and text.isdigit() else None


def checked_id(field: str, value: str) -> str:
    """An id a client named in a URL or a header, held to the frames' limit: past
    :data:`MAX_ID` characters it is ``INVALID_FIELD`` (rather than a not-found that would
    echo all of it back)."""
    if len(value) > MAX_ID:
        raise invalid(field, f"expected at most {MAX_ID} characters")
    return value


class Send(msgspec.Struct, tag="send", tag_field="type", kw_only=True):
    """Start a run (``multitask`` decides what happens when one is running)."""

    content: str
    id: FrameId = None
    session_id: ShortText | None = None
    provider: ShortText | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    client_msg_id: ShortText | None = None
    multitask: Multitask = "reject"


class Subscribe(msgspec.Struct, tag="subscribe", tag_field="type", kw_only=True):
    """Receive a session's events from a position, then live."""

    session_id: ShortText
    id: FrameId = None
    run_id: ShortText | None = None
    after_seq: Seq = 0


class Unsubscribe(msgspec.Struct, tag="unsubscribe", tag_field="type", kw_only=True):
    """Stop receiving a session's events."""

    session_id: ShortText
    id: FrameId = None


class Abort(msgspec.Struct, tag="abort", tag_field="type", kw_only=True):
    """End the session's running run now."""

    session_id: ShortText
    id: FrameId = None
    clear_queue: bool = False


class ListRuns(msgspec.Struct, tag="list_runs", tag_field="type", kw_only=True):
    """Ask for the caller's run summaries."""

    id: FrameId = None
    status: Literal["running", "all"] = "running"


class Ping(msgspec.Struct, tag="ping", tag_field="type", kw_only=True):
    """Application-level keepalive; answered with ``pong``."""

    id: FrameId = None


ClientFrame = Send | Subscribe | Unsubscribe | Abort | ListRuns | Ping
CLIENT_TYPES = frozenset(("send", "subscribe", "unsubscribe", "abort", "list_runs", "ping"))

_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)
_encoder = msgspec.json.Encoder()
_AT = re.compile(r"\s*- at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"missing required field `([^`]*)`")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")


class FrameError(GatewayError):
    """A client frame that could not be decoded; ``frame_id`` is its ``id`` if usable."""

    def __init__(
        self, code: str, message: str, *, frame_id: str | int | None, field: str | None = None
    ) -> None:
        super().__init__(code, message, field=field)
        self.frame_id = frame_id


def decode(message: str | bytes) -> ClientFrame:
    """Decode one client message into a frame, or raise :class:`FrameError`."""
    if isinstance(message, bytes):
        raise FrameError(
            "BAD_FRAME", "binary messages are not accepted: send JSON text", frame_id=None
        )
    try:
        frame = _decoder.decode(message)
    except msgspec.ValidationError as exc:
        raise _classify(message, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise FrameError("BAD_FRAME", f"not valid JSON: {exc}", frame_id=None) from None
    except RecursionError:
        raise FrameError("BAD_FRAME", TOO_DEEP, frame_id=None) from None
    field = too_deep_field(frame)
    if field is not None:
        message = f"{field}: nested deeper than {MAX_DEPTH} levels"
        raise FrameError("INVALID_FIELD", message, frame_id=frame.id, field=field)
    return frame


def too_deep_field(struct: msgspec.Struct) -> str | None:
    """The first field of a decoded ``struct`` whose value nests deeper than
    :data:`MAX_DEPTH` (containers count, scalars do not), or ``None``."""
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        if isinstance(value, dict | list) and _depth_over(value, MAX_DEPTH):
            return name
    return None


def _depth_over(value: dict[Any, Any] | list[Any], limit: int) -> bool:
    """Whether ``value`` holds containers nested more than ``limit`` deep (itself is 1).
    Iterative: the point is to measure what recursion could not."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _classify(message: str, text: str) -> FrameError:
    """Turn a validation error into the protocol's most specific error."""
    try:
        # The stdlib parser, because it accepts what msgspec's untyped decoder refuses
        # (numbers out of float range), so the frame's id and type can still be read.
        raw = json.loads(message)
    except ValueError:
        return FrameError("BAD_FRAME", f"unreadable frame: {text}", frame_id=None)
    except RecursionError:
        return FrameError("BAD_FRAME", TOO_DEEP, frame_id=None)
    if not isinstance(raw, dict):
        return FrameError("BAD_FRAME", "a frame must be a JSON object", frame_id=None)
    frame_id = raw.get("id")
    if not _usable_id(frame_id):
        frame_id = None
    kind = raw.get("type")
    if kind is None:
        return FrameError("INVALID_FIELD", "type: required", frame_id=frame_id, field="type")
    if not isinstance(kind, str):
        return FrameError(
            "INVALID_FIELD", "type: expected a string", frame_id=frame_id, field="type"
        )
    if kind not in CLIENT_TYPES:
        return FrameError(
            "UNKNOWN_TYPE", f"unknown frame type {kind[:64]!r}", frame_id=frame_id, field="type"
        )
    field, text = field_error(text)
    if field == "id":
        frame_id = None
    return FrameError("INVALID_FIELD", f"{field}: {text}", frame_id=frame_id, field=field)


def _usable_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, str) or (isinstance(value, int) and abs(value) <= MAX_INT)


def field_error(text: str) -> tuple[str, str]:
    """The field path and the message of a msgspec validation error's text."""
    at = _AT.search(text)
    if at is not None:
        # ``[...]`` stands for some key of an object: the path is exact only before it.
        path = at.group(1).split("[...]", 1)[0]
        return path or "frame", text[: at.start()]
    missing = _MISSING.search(text)
    if missing is not None:
        return missing.group(1), "required"
    unknown = _UNKNOWN.search(text)
    if unknown is not None:
        return unknown.group(1), "unknown field"
    return "frame", text


# Server frames ---------------------------------------------------------------------------


def encode(frame: dict[str, Any]) -> str:
    """A server frame as JSON text."""
    return _encoder.encode(frame).decode()


def ack(frame_id: str | int | None, op: str, session_id: str, **fields: Any) -> str:
    """The direct reply to ``send``, ``unsubscribe`` and ``abort``."""
    return encode({"type": "ack", "id": frame_id, "op": op, "session_id": session_id, **fields})


def error(
    code: str,
    message: str,
    *,
    frame_id: str | int | None = None,
    session_id: str | None = None,
    field: str | None = None,
) -> str:
    """An ``error`` frame; ``id``, ``session_id`` and ``field`` only when known."""
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if frame_id is not None:
        frame["id"] = frame_id
    if session_id is not None:
        frame["session_id"] = session_id
    if field is not None:
        frame["field"] = field
    return encode(frame)


def subscribed(frame_id: str | int | None, info: SubscribeInfo) -> str:
    """The reply to ``subscribe``, sent before any of the subscription's events."""
    frame: dict[str, Any] = {
        "type": "subscribed",
        "id": frame_id,
        "session_id": info.session_id,
        "run": info.run,
        "is_processing": info.is_processing,
        "recovered": info.recovered,
        "replayed": info.replayed,
    }
    if info.first_available is not None:
        run_id, seq = info.first_available
        frame["first_available"] = {"run_id": run_id, "seq": seq}
    return encode(frame)


def runs(frame_id: str | int | None, summaries: list[RunSummary]) -> str:
    """The reply to ``list_runs``."""
    return encode({"type": "runs", "id": frame_id, "runs": summaries})


def pong(frame_id: str | int | None) -> str:
    """The reply to ``ping``."""
    return encode({"type": "pong", "id": frame_id})


def lagged(session_id: str, run_id: str | None, last_seq: int) -> str:
    """A subscription was dropped; resubscribing from ``(run_id, last_seq)`` loses nothing."""
    return encode(
        {"type": "lagged", "session_id": session_id, "run_id": run_id, "last_seq": last_seq}
    )


def run_notice(kind: Literal["run_started", "run_finished"], run: RunSummary) -> str:
    """``run_started`` / ``run_finished``, pushed to every connection of the owner."""
    return encode({"type": kind, "session_id": run.session_id, "run": run})


def session_deleted(session_id: str) -> str:
    """Pushed to every connection of the owner when a session is deleted."""
    return encode({"type": "session_deleted", "session_id": session_id})


def batch(texts: list[str]) -> str:
    """Several frames packed as one JSON array message (``?batch=1``)."""
    return "[" + ",".join(texts) + "]"
