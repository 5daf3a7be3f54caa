"""Stretches: a burst of ``text_delta`` stored as one row and read back as its events, by
every reader of the log (history, pages with kinds, turns, digest totals, forks)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import Event, ManualClock, MemoryRegistry, Position, Turn
from registry.store import ForkPoint, Store
from registry.store.stretch import MAX_SPAN, STRETCHED, pack, unpack
from registry.store.writer import EventRow

from .conftest import EVENT_ROWS, Backend, expand

OWNER = "ann"


def text(n: int) -> str:
    return json.dumps({"text": f"t{n}"}, separators=(",", ":"))


def unpacked(stored: list[tuple[str, int, str, int, str, int]]) -> list[EventRow]:
    return [
        (run_id, seq, kind, ts, data_text)
        for run_id, last, kind, ts, data, span in stored
        for seq, _, data_text in unpack(last, span, data)
    ]


# pack and unpack ------------------------------------------------------------------------


def test_a_burst_of_text_delta_with_one_ts_is_one_row() -> None:
    rows: list[EventRow] = [("r", seq, STRETCHED, 7, text(seq)) for seq in range(1, 5)]
    assert pack(rows) == [("r", 4, STRETCHED, 7, f"[{','.join(text(n) for n in range(1, 5))}]", 4)]
    assert unpack(4, 4, pack(rows)[0][4]) == [
        (seq, {"text": f"t{seq}"}, text(seq)) for seq in range(1, 5)
    ]


def test_other_kinds_another_ts_another_run_or_a_gap_end_a_stretch() -> None:
    rows: list[EventRow] = [
        ("r", 1, STRETCHED, 7, text(1)),
        ("r", 2, STRETCHED, 7, text(2)),
        ("r", 3, "text", 7, text(3)),  # another kind
        ("r", 4, STRETCHED, 7, text(4)),
        ("r", 5, STRETCHED, 8, text(5)),  # another ts
        ("s", 6, STRETCHED, 8, text(6)),  # another run
        ("s", 8, STRETCHED, 8, text(8)),  # not the next seq
    ]
    assert [(run, seq, span) for run, seq, _, _, _, span in pack(rows)] == [
        ("r", 2, 2),
        ("r", 3, 1),
        ("r", 4, 1),
        ("r", 5, 1),
        ("s", 6, 1),
        ("s", 8, 1),
    ]
    # A row of one event holds its data as it is, not in an array.
    assert pack(rows)[2][4] == text(4)


def test_a_stretch_holds_at_most_max_span_events() -> None:
    count = 2 * MAX_SPAN + 3
    rows: list[EventRow] = [("r", seq, STRETCHED, 1, text(seq)) for seq in range(1, count + 1)]
    stored = pack(rows)
    assert [(seq, span) for _, seq, _, _, _, span in stored] == [
        (MAX_SPAN, MAX_SPAN),
        (2 * MAX_SPAN, MAX_SPAN),
        (count, 3),
    ]
    assert unpacked(stored) == rows


rows_strategy = st.lists(
    st.tuples(
        st.sampled_from(["r1", "r2"]),
        st.sampled_from([STRETCHED, STRETCHED, "text", "tool_use"]),
        st.integers(1, 3),
        st.text(max_size=5),
    ),
    max_size=60,
)


@given(rows_strategy)
def test_packed_rows_are_the_events_in_order_and_no_more_rows_than_needed(
    drawn: list[tuple[str, str, int, str]],
) -> None:
    seqs = {"r1": 0, "r2": 0}
    rows: list[EventRow] = []
    for run_id, kind, ts, value in drawn:
        seqs[run_id] += 1
        rows.append((run_id, seqs[run_id], kind, ts, json.dumps({"text": value})))
    stored = pack(rows)
    assert unpacked(stored) == rows
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
