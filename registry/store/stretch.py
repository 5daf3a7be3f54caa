"""How the log stores a burst of streamed text: one row for the stretch, not one per event.

A run streams its answer as ``text_delta`` events, often hundreds in a millisecond, and a
row per event made committing them about half of the CPU an event cost the server. So the
SQLite writer stores consecutive ``text_delta`` events of one run that share a ``ts`` and
a batch as one row (see :func:`pack`):

- ``seq`` is the stretch's *last* seq and ``span`` how many events it holds, so the row
  holds seqs ``seq - span + 1 .. seq``;
- ``data`` is the JSON array of their data, each element as the event's own data text.

Every other event is a row of its own with ``span`` 1, as are all rows written before
stretches existed. Keyed by its last seq, a stretch is found by the same index seek as an
event: the rows with ``seq > after`` are exactly those holding an event after ``after``,
and ``MAX(seq)`` is still a run's last seq. Kinds are per row, so kind filters and the kind
index work unchanged; counts add up ``span``. A reader turns a row back into its events
with :func:`unpack` and drops those outside its bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..events import read_stored, too_deep
from .writer import EventRow

STRETCHED = "text_delta"
"""The one kind stored in stretches: the token stream, nearly all of a run's events."""
MAX_SPAN = 1024
"""Most events one row holds: what a reader decodes to reach one of them stays small."""

StoredRow = tuple[str, int, str, int, str, int]
"""A row of the log: (run_id, last seq, kind, ts, data, span)."""

_items = msgspec.json.Decoder(list[msgspec.Raw]).decode
_DAMAGED = {"unencodable": "a damaged stored stretch"}
_DAMAGED_TEXT = msgspec.json.encode(_DAMAGED).decode()


def pack(rows: Sequence[EventRow]) -> list[StoredRow]:
    """``rows`` (in seq order per run) as the log stores them: each stretch of
    ``text_delta`` events of one run, in seq order and with one ``ts``, as one row of at
    most :data:`MAX_SPAN`; every other event as a row of its own."""
    stored: list[StoredRow] = []
    count = len(rows)
    i = 0
    while i < count:
        run_id, seq, kind, ts, data = rows[i]
        end = i + 1
        if kind == STRETCHED:
            most = min(count, i + MAX_SPAN)
            while end < most:
                row = rows[end]
                if row[1] != seq + end - i or row[2] != kind or row[3] != ts or row[0] != run_id:
                    break
                end += 1
        if end == i + 1:
            stored.append((run_id, seq, kind, ts, data, 1))
        else:
            texts = ",".join([row[4] for row in rows[i:end]])
            stored.append((run_id, seq + end - i - 1, kind, ts, f"[{texts}]", end - i))
        i = end
    return stored


def unpack(seq: int, span: int, stored: str) -> list[tuple[int, dict[str, Any], str]]:
    """The events of a row: ``(seq, data, data text)`` for each, in seq order.

    As for a row of one event (see :func:`~registry.events.read_stored`), data too deep to
    decode here is read as a stand-in rather than ending a replay: a stretch that holds
    such data is all stand-ins, since its array cannot be taken apart either. So is one
    whose array is not ``span`` long, which only a file changed by hand can hold.
    """
    if span == 1:
        return [(seq, *read_stored(stored))]
    first = seq - span + 1
    try:
        items = _items(stored)
    except RecursionError:
        return [(first + i, *too_deep()) for i in range(span)]
    if len(items) != span:
        return [(first + i, dict(_DAMAGED), _DAMAGED_TEXT) for i in range(span)]
    return [(first + i, *read_stored(bytes(item).decode())) for i, item in enumerate(items)]
