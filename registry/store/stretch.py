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

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec

from ..events import UNENCODABLE, Event, read_stored, too_deep

STRETCHED = "text_delta"
"""The one kind stored in stretches: the token stream, nearly all of a run's events."""
MAX_SPAN = 1024
"""Most events one row holds: what a reader decodes to reach one of them stays small."""

StoredRow = tuple[str, int, str, int, str, int]
"""A row of the log: (run_id, last seq, kind, ts, data, span)."""

_items = msgspec.json.Decoder(list[msgspec.Raw]).decode
_DAMAGED = {"unencodable": "a damaged stored stretch"}
_DAMAGED_TEXT = msgspec.json.encode(_DAMAGED).decode()


class Burst(NamedTuple):
    """Events queued together that fit one stretch, with their data already encoded as
    its array (see :func:`burst_of`)."""

    first: Event
    last: Event
    size: int
    text: str


def burst_of(events: Sequence[Event], encoder: msgspec.json.Encoder) -> list[Burst]:
    """``events`` (queued together, not yet framed) as bursts of at most :data:`MAX_SPAN`,
    when they are all ``text_delta`` of one run and ``ts`` in seq order; else none.

    Encoding a list of data in one call costs a tenth of cutting each event's data out of
    its frame. It must happen when the frames are encoded, so that both hold the same
    text even if a source changes a dict after yielding it.
    """
    if len(events) < 2:
        return []
    first = events[0]
    run_id, seq, ts = first.run_id, first.seq, first.ts
    for event in events:
        if event.seq != seq or event.kind != STRETCHED or event.ts != ts:
            return []
        if event.run_id != run_id or event.wire is not None or event.data_json is not None:
            return []
        seq += 1
    bursts = []
    for start in range(0, len(events), MAX_SPAN):
        part = events[start : start + MAX_SPAN]
        if len(part) > 1:
            try:
                text = encoder.encode([event.data for event in part]).decode()
            except UNENCODABLE:
                return []  # the writer gives that event a stand-in of its own
            bursts.append(Burst(part[0], part[-1], len(part), text))
    return bursts


def pack(
    events: Sequence[Event], encode: Callable[[Event], str], bursts: dict[int, Burst]
) -> list[StoredRow]:
    """``events`` (in seq order per run) as the log stores them: each stretch of
    ``text_delta`` events of one run, in seq order and with one ``ts``, as one row of at
    most :data:`MAX_SPAN`; every other event as a row of its own.

    ``bursts`` (by the id of their first event) give the data of events queued together;
    those used are taken out. Any other event's data is ``encode(event)``.
    """
    stored: list[StoredRow] = []
    count = len(events)
    i = 0
    while i < count:
        first = events[i]
        run_id, seq, kind, ts = first.run_id, first.seq, first.kind, first.ts
        if kind != STRETCHED:
            stored.append((run_id, seq, kind, ts, encode(first), 1))
            i += 1
            continue
        parts: list[str] = []
        span = 0
        while i < count and span < MAX_SPAN:
            event = events[i]
            if event.seq != seq + span or event.kind != kind or event.ts != ts:
                break
            if event.run_id != run_id:
                break
            burst = bursts.pop(id(event), None)
            if burst is None or not _queued_whole(burst, events, i):
                parts.append(encode(event))
                span += 1
                i += 1
            elif span + burst.size > MAX_SPAN:
                bursts[id(event)] = burst  # the start of the next stretch
                break
            else:
                parts.append(burst.text[1:-1])
                span += burst.size
                i += burst.size
        stored.append(stretch_row(run_id, seq, ts, parts, span))
    return stored


def _queued_whole(burst: Burst, events: Sequence[Event], start: int) -> bool:
    """Whether ``events[start:]`` begins with all of ``burst`` (a batch may end inside one)."""
    end = start + burst.size
    return burst.first is events[start] and end <= len(events) and events[end - 1] is burst.last


def stretch_row(run_id: str, first: int, ts: int, parts: list[str], span: int) -> StoredRow:
    """The row of ``span`` ``text_delta`` events from seq ``first``: their data texts are
    ``parts`` joined by commas (one event's text, or the inside of a burst's array)."""
    if span == 1:
        return (run_id, first, STRETCHED, ts, parts[0], 1)
    return (run_id, first + span - 1, STRETCHED, ts, f"[{','.join(parts)}]", span)


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
