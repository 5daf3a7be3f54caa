"""Stretches: a burst of ``text_delta`` stored as one row and read back as its events, by
every reader of the log (history, pages with kinds, turns, digest totals, forks)."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import Event, ManualClock, MemoryRegistry, Position, RunNotice, Turn
from registry.store import ForkPoint, Store, logstore
from registry.store.stretch import (
    MAX_SPAN,
    STRETCHED,
    Burst,
    StoredRow,
    burst_of,
    pack,
    unpack,
)
from registry.store.writer import EventRow

from ..fakes import json_values
from .conftest import EVENT_ROWS, Backend, expand

OWNER = "ann"


def text(n: int) -> str:
    return json.dumps({"text": f"t{n}"}, separators=(",", ":"))


def event(run_id: str, seq: int, kind: str, ts: int, value: object = None) -> Event:
    return Event("s", run_id, seq, kind, ts, {"text": f"t{seq}" if value is None else value})


def encode(e: Event) -> str:
    return e.encoded_data()


def queued(*groups: list[Event]) -> tuple[list[Event], dict[int, Burst]]:
    """The events of ``groups``, each queued together (as Writer.put_many does: bursts
    first, then frames), and their bursts."""
    bursts: dict[int, Burst] = {}
    encoder = msgspec.json.Encoder()
    for group in groups:
        for burst in burst_of(group, encoder):
            bursts[id(burst.first)] = burst
        for e in group:
            e.frame()
    return [e for group in groups for e in group], bursts


def unpacked(stored: list[StoredRow]) -> list[EventRow]:
    return [
        (run_id, seq, kind, ts, data_text)
        for run_id, last, kind, ts, data, span in stored
        for seq, _, data_text in unpack(last, span, data)
    ]


def rows_of(events: list[Event]) -> list[EventRow]:
    return [(e.run_id, e.seq, e.kind, e.ts, e.encoded_data()) for e in events]


# pack and unpack ------------------------------------------------------------------------


def test_a_burst_of_text_delta_with_one_ts_is_one_row() -> None:
    events = [event("r", seq, STRETCHED, 7) for seq in range(1, 5)]
    stored = pack(events, encode, {})
    assert stored == [("r", 4, STRETCHED, 7, f"[{','.join(text(n) for n in range(1, 5))}]", 4)]
    assert unpack(4, 4, stored[0][4]) == [
        (seq, {"text": f"t{seq}"}, text(seq)) for seq in range(1, 5)
    ]


def test_other_kinds_another_ts_another_run_or_a_gap_end_a_stretch() -> None:
    events = [
        event("r", 1, STRETCHED, 7),
        event("r", 2, STRETCHED, 7),
        event("r", 3, "text", 7),  # another kind
        event("r", 4, STRETCHED, 7),
        event("r", 5, STRETCHED, 8),  # another ts
        event("s", 6, STRETCHED, 8),  # another run
        event("s", 8, STRETCHED, 8),  # not the next seq
    ]
    stored = pack(events, encode, {})
    assert [(run, seq, span) for run, seq, _, _, _, span in stored] == [
        ("r", 2, 2),
        ("r", 3, 1),
        ("r", 4, 1),
        ("r", 5, 1),
        ("s", 6, 1),
        ("s", 8, 1),
    ]
    # A row of one event holds its data as it is, not in an array.
    assert stored[2][4] == text(4)


def test_a_stretch_holds_at_most_max_span_events() -> None:
    count = 2 * MAX_SPAN + 3
    events, bursts = queued([event("r", seq, STRETCHED, 1) for seq in range(1, count + 1)])
    assert [b.size for b in bursts.values()] == [MAX_SPAN, MAX_SPAN, 3]
    stored = pack(events, encode, bursts)
    assert [(seq, span) for _, seq, _, _, _, span in stored] == [
        (MAX_SPAN, MAX_SPAN),
        (2 * MAX_SPAN, MAX_SPAN),
        (count, 3),
    ]
    assert unpacked(stored) == rows_of(events)
    assert bursts == {}


def test_only_a_burst_all_of_text_delta_not_yet_encoded_is_encoded_at_once() -> None:
    encoder = msgspec.json.Encoder()
    assert burst_of([event("r", 1, STRETCHED, 1)], encoder) == []
    assert burst_of([event("r", 1, STRETCHED, 1), event("r", 2, "text", 1)], encoder) == []
    assert burst_of([event("r", 1, STRETCHED, 1), event("r", 2, STRETCHED, 2)], encoder) == []
    assert burst_of([event("r", 1, STRETCHED, 1), event("q", 2, STRETCHED, 1)], encoder) == []
    assert burst_of([event("r", 1, STRETCHED, 1), event("r", 3, STRETCHED, 1)], encoder) == []
    framed = [event("r", 1, STRETCHED, 1), event("r", 2, STRETCHED, 1)]
    framed[1].frame()
    assert burst_of(framed, encoder) == []
    cannot = [event("r", 1, STRETCHED, 1), event("r", 2, STRETCHED, 1, object())]
    assert burst_of(cannot, encoder) == []
    (burst,) = burst_of([event("r", 1, STRETCHED, 1), event("r", 2, STRETCHED, 1)], encoder)
    assert (burst.size, burst.text) == (2, f"[{text(1)},{text(2)}]")


def test_a_burst_is_used_only_when_the_batch_holds_all_of_it() -> None:
    events, bursts = queued(
        [event("r", seq, STRETCHED, 1) for seq in range(1, 4)],
        [event("r", seq, STRETCHED, 1) for seq in range(4, 10)],
    )
    # The batch ends inside the second burst: its first events are encoded one by one.
    stored = pack(events[:5], encode, bursts)
    assert stored == [("r", 5, STRETCHED, 1, f"[{','.join(text(n) for n in range(1, 6))}]", 5)]
    assert bursts == {}
    # A later batch that starts inside a burst encodes its events one by one too.
    assert unpacked(pack(events[5:], encode, bursts)) == rows_of(events[5:])


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["r1", "r2"]),
            st.sampled_from([STRETCHED, STRETCHED, "text", "tool_use"]),
            st.integers(1, 3),
            st.lists(st.text(max_size=5), min_size=1, max_size=40),
        ),
        max_size=12,
    ),
    st.integers(0, 50),
    st.integers(0, 50),
)
def test_packed_rows_are_the_events_in_order_and_no_more_rows_than_needed(
    drawn: list[tuple[str, str, int, list[str]]], cut_start: int, cut_end: int
) -> None:
    # Groups as a registry queues them (a burst: one run, kind mix, one ts), and a batch
    # that may start and end inside them.
    seqs = {"r1": 0, "r2": 0}
    groups = []
    for run_id, kind, ts, values in drawn:
        group = []
        for value in values:
            seqs[run_id] += 1
            group.append(event(run_id, seqs[run_id], kind, ts, value))
        groups.append(group)
    events, bursts = queued(*groups)
    batch = events[cut_start : len(events) - cut_end]
    stored = pack(batch, encode, bursts)
    assert unpacked(stored) == rows_of(batch)
    for _, _, kind, _, _, span in stored:
        assert 1 <= span <= MAX_SPAN
        assert span == 1 or kind == STRETCHED
    # Two neighbours that could have been one row are one row.
    for a, b in itertools.pairwise(stored):
        joinable = (a[0], a[2], a[3]) == (b[0], b[2], b[3]) and b[1] - b[5] == a[1]
        assert not (joinable and a[2] == STRETCHED and a[5] + b[5] <= MAX_SPAN)


def test_a_stretch_too_deep_to_take_apart_reads_as_stand_ins() -> None:
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    events = unpack(3, 2, f'[{{"text":"x"}},{deep}]')
    assert [seq for seq, _, _ in events] == [2, 3]
    assert all(data == {"unencodable": "nested too deeply to read"} for _, data, _ in events)
    assert all(json.loads(data_text) == data for _, data, data_text in events)


def test_a_stretch_of_the_wrong_length_reads_as_stand_ins() -> None:
    events = unpack(5, 3, '[{"text":"a"},{"text":"b"}]')
    assert [seq for seq, _, _ in events] == [3, 4, 5]
    assert all("damaged" in data["unencodable"] for _, data, _ in events)


# Every reader, on both engines ----------------------------------------------------------


async def burst_session(
    store: Store, clock: ManualClock, sizes: list[int], *, answer: bool = True
) -> tuple[str, list[str]]:
    """A session of completed runs, each a burst of ``size`` text_deltas with one ts, then
    (with ``answer``) a ``text``."""
    registry = MemoryRegistry(store=store, clock=clock, buffer_size=10_000)
    sid = (await store.create_session(owner=OWNER, provider="echo")).session_id
    runs = []
    for n, size in enumerate(sizes):
        runs.append((await registry.start(sid, owner=OWNER, content=f"q{n}")).run_id)
        clock.advance(1)
        for i in range(size):
            registry.publish(sid, STRETCHED, {"text": f"{n}.{i} "})
        if answer:
            registry.publish(sid, "text", {"text": f"answer {n}"})
        registry.complete_run(sid, exit_code=0)
        clock.advance(1)
    await store.flush()
    return sid, runs


async def test_a_burst_is_stored_in_few_rows_and_read_back_whole(
    backend: Backend, store: Store, clock: ManualClock
) -> None:
    sid, (run_id,) = await burst_session(store, clock, [2500])
    rows = await backend.rows(EVENT_ROWS, (run_id,))
    # SQLite stores a burst in stretches (each batch's at most MAX_SPAN long);
    # PostgreSQL's writer one row per event.
    assert len(rows) < 20 if backend.engine == "sqlite" else len(rows) == 2503
    assert [seq for seq, *_ in expand(rows)] == list(range(1, 2504))
    everything = await store.read_history(sid, None, None)
    assert everything is not None
    assert [(e.seq, e.kind) for e in everything] == [(1, "user_message")] + [
        (seq, STRETCHED) for seq in range(2, 2502)
    ] + [(2502, "text"), (2503, "complete")]
    assert [e.data["text"] for e in everything[1:2501]] == [f"0.{i} " for i in range(2500)]
    # A replayed event's frame is the one it had live.
    assert json.loads(everything[7].frame())["data"] == {"text": "0.6 "}


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
async def test_history_reads_cut_stretches_at_any_bound(
    backend: Backend, store: Store, clock: ManualClock, data: st.DataObject
) -> None:
    sizes = data.draw(st.lists(st.integers(0, 1100), min_size=1, max_size=3))
    sid, runs = await burst_session(store, clock, sizes)
    model = [
        (run_id, seq, kind, item)
        for run_id in runs
        for seq, kind, item in expand(await backend.rows(EVENT_ROWS, (run_id,)))
    ]
    order = {(run_id, seq): i for i, (run_id, seq, _, _) in enumerate(model)}

    def where(event: Event) -> tuple[str, int, str, dict[str, Any]]:
        return (event.run_id, event.seq, event.kind, event.data)

    def position(index: int) -> Position:
        run_id, seq, _, _ = model[index]
        return Position(run_id, seq)

    lo = data.draw(st.integers(-1, len(model) - 1))
    hi = data.draw(st.integers(lo + 1, len(model)))
    limit = data.draw(st.none() | st.integers(1, 1500))
    after = None if lo < 0 else position(lo)
    before = None if hi == len(model) else position(hi)
    read = await store.read_history(sid, after, before, limit)
    assert read is not None
    assert [where(e) for e in read] == model[lo + 1 : hi][:limit]

    kinds = data.draw(st.sets(st.sampled_from([STRETCHED, "text", "complete"]), min_size=1))
    size = data.draw(st.integers(1, 1500))
    pages: list[Event] = []
    at = after
    while True:
        page, at = await store.history_page(sid, after=at, limit=size, kinds=kinds)
        assert len(page) <= size
        pages.extend(page)
        if at is None:
            break
    assert [where(e) for e in pages] == [m for m in model[lo + 1 :] if m[2] in kinds]
    assert all(order[(e.run_id, e.seq)] > lo for e in pages)


async def test_turns_and_digest_totals_count_each_event_of_a_stretch(
    store: Store, clock: ManualClock
) -> None:
    sid, _ = await burst_session(store, clock, [1500, 3], answer=False)
    assert await store.turns(sid) == [
        Turn("user", "q0"),
        Turn("assistant", "".join(f"0.{i} " for i in range(1500))),
        Turn("user", "q1"),
        Turn("assistant", "0.0 0.1 0.2 ".replace("0.", "1.")),
    ]
    digest = await store.digest(sid)
    assert digest.kinds == {"user_message": 2, STRETCHED: 1503, "complete": 2}


@pytest.mark.parametrize("keep", [1, 2, 600, 1025, 1500, 1502])
async def test_a_fork_inside_a_stretch_copies_its_events_up_to_the_point(
    store: Store, clock: ManualClock, keep: int
) -> None:
    sid, (run_id,) = await burst_session(store, clock, [1500])
    source = await store.read_history(sid, None, None)
    fork = await store.fork_session(sid, owner=OWNER, at=ForkPoint(run_id, keep))
    assert fork is not None
    copied = await store.read_history(fork.session_id, None, None)
    assert source is not None
    assert copied is not None
    assert [(e.seq, e.kind, e.data) for e in copied[:keep]] == [
        (e.seq, e.kind, e.data) for e in source[:keep]
    ]
    # The run, cut short, ends interrupted right after the point.
    assert [(e.seq, e.kind) for e in copied[keep:]] == [(keep + 1, "complete")]
    digest = await store.digest(fork.session_id)
    assert sum(digest.kinds.values()) == keep + 1


# What a source yields, stored as its frames have it -------------------------------------


async def run_source(store: Store, source: Any) -> tuple[MemoryRegistry, str]:
    """Run ``source`` to its end in a new session; the registry (closed) and the run id."""
    record = await store.create_session(owner=OWNER, provider="echo")
    async with MemoryRegistry(store=store) as registry:
        finished = anyio.Event()
        registry.listen(
            lambda n: (
                finished.set() if isinstance(n, RunNotice) and n.kind == "run_finished" else None
            )
        )
        result = await registry.start(record.session_id, owner=OWNER, content="go", source=source)
        await finished.wait()
        await store.flush()
    return registry, result.run_id


async def stored_texts(backend: Backend, run_id: str) -> list[tuple[int, str]]:
    rows = await backend.rows(EVENT_ROWS, (run_id,))
    return [
        (seq, text) for last, _, data, span in rows for seq, _, text in unpack(last, span, data)
    ]


# Keys a provider might put its session id under are scrubbed, not stored as yielded.
_keys = st.text().filter(
    lambda key: key not in {"session_id", "sessionId", "actual_session_id", "provider_session_id"}
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bursts=st.lists(st.lists(st.dictionaries(_keys, json_values), min_size=1), min_size=1))
async def test_a_sources_bursts_are_stored_as_their_frames_have_them(
    backend: Backend, store: Store, bursts: list[list[dict[str, Any]]]
) -> None:
    async def source(ctx: object) -> AsyncIterator[Any]:
        for burst in bursts:
            yield [(STRETCHED, data) for data in burst]

    registry, run_id = await run_source(store, source)
    texts = await stored_texts(backend, run_id)
    frames = [json.loads(e.frame()) for e in registry._runs[run_id].buffer.read(1)]
    assert [(f["seq"], json.loads(text)) for (_, text), f in zip(texts, frames, strict=True)] == [
        (f["seq"], f["data"]) for f in frames
    ]
    yielded = [data for burst in bursts for data in burst]
    assert [json.loads(text) for _, text in texts[1:-1]] == json.loads(json.dumps(yielded))


async def test_data_changed_by_its_source_after_it_was_yielded_is_stored_as_it_was_sent(
    backend: Backend, store: Store
) -> None:
    # A sloppy source reuses its dicts: what was sent is what was yielded at the time, and
    # the log must hold the same, whether the event came alone or in a burst.
    async def source(ctx: object) -> AsyncIterator[Any]:
        a, b = {"text": ""}, {"text": ""}
        for n in range(3):
            a["text"], b["text"] = f"a{n}", f"b{n}"
            yield [(STRETCHED, a), (STRETCHED, b)]
            yield [(STRETCHED, a)]
        a["text"] = b["text"] = "changed"

    _registry, run_id = await run_source(store, source)
    texts = [json.loads(text) for _, text in await stored_texts(backend, run_id)]
    assert texts[1:-1] == [{"text": t} for n in range(3) for t in (f"a{n}", f"b{n}", f"a{n}")]


async def test_a_burst_with_data_that_is_not_json_keeps_every_seq(
    backend: Backend, store: Store
) -> None:
    async def source(ctx: object) -> AsyncIterator[Any]:
        yield [(STRETCHED, {"text": "a"}), (STRETCHED, {"bad": object()}), (STRETCHED, {})]

    _registry, run_id = await run_source(store, source)
    texts = await stored_texts(backend, run_id)
    assert [seq for seq, _ in texts] == [1, 2, 3, 4, 5]
    assert json.loads(texts[1][1]) == {"text": "a"}
    assert "unencodable" in json.loads(texts[2][1])
    assert json.loads(texts[3][1]) == {}


async def test_a_page_of_a_long_log_decodes_about_a_page_not_the_log(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, runs = await burst_session(store, clock, [3000] * 6)
    decoded: list[int] = []

    def counting(last: int, span: int, stored: str) -> list[tuple[int, dict[str, Any], str]]:
        events = unpack(last, span, stored)
        decoded.append(len(events))
        return events

    monkeypatch.setattr(logstore, "unpack", counting)
    page, after = await store.history_page(sid, after=None, limit=100)
    assert [e.seq for e in page] == list(range(1, 101))
    assert after == Position(runs[0], 100)
    assert sum(decoded) <= 101 + MAX_SPAN
    decoded.clear()
    read = await store.read_history(sid, Position(runs[1], 1500), None, 2500)
    assert read is not None
    # Each run: its user_message, 3,000 text_deltas, a text and its complete.
    assert [(e.run_id, e.seq) for e in read] == [(runs[1], s) for s in range(1501, 3004)] + [
        (runs[2], s) for s in range(1, 998)
    ]
    assert sum(decoded) <= 2500 + 2 * MAX_SPAN
