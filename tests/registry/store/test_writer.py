"""The group-commit writer, against a real database of each engine: queueing, batching,
durability, errors."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import Event, MemoryRegistry, RunNotice, RunSummary
from registry.store import SQLiteStore, Store, writer
from registry.store.sqlite_writer import (
    ROW_STEP,
    ROWS_PER_STATEMENT,
    SQLiteBackend,
    statement_sizes,
)
from registry.store.stretch import unpack
from registry.store.writer import Plan

from ..fakes import NOT_JSON
from .conftest import Backend, SQLiteFile, started, stored_events, until

ALL = 1 << 62
# What each engine raises for a change its constraints forbid.
CONSTRAINT = (sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError)


async def test_append_only_queues_and_flush_commits(backend: Backend) -> None:
    store = await backend.open(flush_delay=3600)
    try:
        registry, sid, run_id = await started(store)
        for i in range(50):
            registry.publish(sid, "text_delta", {"text": f"chunk {i}"})
        # No await since publishing: nothing can have reached the disk.
        assert store.stats.backlog == 51
        assert store.durable_seq(run_id) == 0
        await store.flush()
        assert store.stats.backlog == 0
        assert store.durable_seq(run_id) == 51
        events = await backend.events(run_id)
        assert [seq for seq, _, _ in events] == list(range(1, 52))
        assert events[0] == (1, "user_message", {"content": "hello"})
        assert events[-1] == (51, "text_delta", {"text": "chunk 49"})
        assert store.stats.events_written == 51
    finally:
        await store.close()


async def test_a_full_batch_is_written_without_waiting_for_the_delay(backend: Backend) -> None:
    store = await backend.open(flush_delay=3600, batch_size=10)
    try:
        registry, sid, run_id = await started(store)  # run start + user_message: 2 ops
        for i in range(8):
            registry.publish(sid, "text_delta", {"text": str(i)})
        # 10 operations fill a batch: written now, though the delay is an hour.
        await until(lambda: store.stats.backlog == 0)
        assert store.durable_seq(run_id) == 9
        assert store.stats.flushes == 1
        assert len(await backend.events(run_id)) == 9
    finally:
        await store.close()


async def test_a_writer_behind_takes_up_to_eight_batches_per_commit(backend: Backend) -> None:
    store = await backend.open(flush_delay=3600, batch_size=2)
    try:
        registry, sid, run_id = await started(store)
        for i in range(38):
            registry.publish(sid, "text_delta", {"text": str(i)})
        # 40 operations queued before the writer ran: group commits of 16, 16 and 8.
        await until(lambda: store.stats.flushes == 3)
        assert store.stats.backlog == 0
        assert store.durable_seq(run_id) == 39
        assert [seq for seq, _, _ in await backend.events(run_id)] == list(range(1, 40))
    finally:
        await store.close()


async def test_a_partial_batch_is_written_after_the_short_delay(backend: Backend) -> None:
    store = await backend.open(flush_delay=0.02)
    try:
        registry, sid, run_id = await started(store)
        registry.publish(sid, "text_delta", {"text": "a"})
        await until(lambda: store.durable_seq(run_id) == 2)
        assert len(await backend.events(run_id)) == 2
    finally:
        await store.close()


@pytest.mark.parametrize("watched", [True, False], ids=["subscribed", "unwatched"])
async def test_a_commit_that_woke_subscribers_is_followed_by_the_delay(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, watched: bool
) -> None:
    # Time as the writer sees it (its delay's timer still runs on real time).
    now = [1000.0]
    monkeypatch.setattr(writer, "time", SimpleNamespace(monotonic=lambda: now[0]))
    began: list[int] = []
    release = anyio.Event()
    commit = SQLiteBackend.commit

    async def slow_commit(self: SQLiteBackend, plan: Plan) -> None:
        began.append(len(plan.ops))
        await release.wait()
        await commit(self, plan)

    monkeypatch.setattr(SQLiteBackend, "commit", slow_commit)
    store = await SQLiteStore.open(str(db_path), flush_delay=10, batch_size=2)
    sid = (await store.create_session(owner="ann", provider="echo")).session_id
    registry = MemoryRegistry(store=store)
    if watched:
        sub = await registry.subscribe(sid, owner="ann")
        sub.listen(lambda: None)
    run_id = (await registry.start(sid, owner="ann", content="hello")).run_id
    await until(lambda: began == [2])  # run start + user_message: a full batch
    now[0] += 20  # the commit takes twice the delay...
    registry.publish(sid, "text_delta", {"text": "a"})  # ...while an event arrives
    release.set()
    await until(lambda: store.stats.flushes >= 1)
    if watched:
        # The delay counts from the end of the commit that woke the subscriber: the event
        # waits, though it has waited twice the delay already.
        assert began == [2]
        assert store.durable_seq(run_id) == 1
        await store.flush()
    else:
        # Nobody to serve: the event had waited its delay, so it is written at once.
        assert began == [2, 1]
    await until(lambda: store.durable_seq(run_id) == 2)
    assert began == [2, 1]


async def test_complete_is_written_at_once(backend: Backend) -> None:
    store = await backend.open(flush_delay=3600)
    try:
        registry, sid, run_id = await started(store)
        registry.publish(sid, "text", {"text": "done"})
        assert registry.complete_run(sid, exit_code=0)
        # The delay is an hour: only the complete's urgency can write this.
        await until(lambda: store.stats.backlog == 0)
        assert await backend.rows("SELECT status, outcome, exit_code, last_seq FROM runs") == [
            ("completed", "done", 0, 3)
        ]
        assert [kind for _, kind, _ in await backend.events(run_id)] == [
            "user_message",
            "text",
            "complete",
        ]
        # Its end is committed: nothing of the run is left to write.
        assert store.durable_seq(run_id) == ALL
    finally:
        await store.close()


async def test_close_writes_everything_queued(backend: Backend) -> None:
    store = await backend.open(flush_delay=3600)
    registry, sid, run_id = await started(store)
    for i in range(500):
        registry.publish(sid, "text_delta", {"text": str(i)})
    assert store.stats.backlog == 501
    await store.close()
    assert [seq for seq, _, _ in await backend.events(run_id)] == list(range(1, 502))


async def test_the_wal_is_checkpointed_beside_the_writer_and_folded_in_at_close(
    db_path: Path,
) -> None:
    store = await SQLiteStore.open(db_path)
    try:
        registry, sid, run_id = await started(store)
        # Many small commits: a few hundred pages of WAL.
        for i in range(3000):
            registry.publish(sid, "text_delta", {"text": f"a longer chunk of streamed text {i}"})
            if i % 10 == 0:
                await store.flush()
        await store.flush()
        await until(lambda: store.stats.checkpoints >= 1)
    finally:
        await store.close()
    wal = anyio.Path(f"{db_path}-wal")
    assert not await wal.exists() or (await wal.stat()).st_size == 0
    assert len(stored_events(db_path, run_id)) == 3001


_texts = st.text(st.characters(codec="utf-8"))
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=8,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    events=st.lists(
        st.tuples(
            # text_delta often: a burst of it is stored as one row (see registry.store.stretch).
            st.just("text_delta")
            | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
            st.dictionaries(_texts, _values),
        ),
        max_size=20,
    )
)
async def test_the_log_keeps_each_kind_and_data_text_as_the_frame_has_them(
    backend: Backend, events: list[tuple[str, dict[str, Any]]]
) -> None:
    # Whatever the text holds (quotes, backslashes, control characters, NUL in data,
    # non-ASCII), what the log gives back is the text of the frame.
    async with await backend.open() as store:
        registry, sid, run_id = await started(store)
        published = [registry.publish(sid, kind, data) for kind, data in events]
        await store.flush()
        stored = await backend.rows(
            "SELECT seq, kind, data, span FROM events WHERE run_id = ? AND seq > 1 ORDER BY seq",
            (run_id,),
        )
        texts = [
            (seq, kind, text)
            for last, kind, data, span in stored
            for seq, _, text in unpack(last, span, data)
        ]
        assert texts == [(e.seq, e.kind, e.encoded_data()) for e in published if e is not None]


async def test_a_backlog_is_written_whole_in_order(backend: Backend) -> None:
    # 2,500 queued events: PostgreSQL commits them at once (its commits cost a round trip);
    # SQLite one insert statement's worth at a time (1,024, 1,024, 452 = 448 + 4 rows, the
    # last two statements in one transaction), so a run's source gets room sooner.
    store = await backend.open(flush_delay=3600, batch_size=10_000)
    try:
        registry, sid, run_id = await started(store)
        flushes = store.stats.flushes
        for i in range(2500):
            registry.publish(sid, "text_delta", {"text": str(i)})
        await store.flush()
        sqlite = isinstance(backend, SQLiteFile)
        assert store.stats.flushes - flushes == (3 if sqlite else 1)
        assert store.stats.write_errors == 0  # not rescued by writing one by one
        events = await backend.events(run_id)
        assert [seq for seq, _, _ in events] == list(range(1, 2502))
        assert [data["text"] for _, _, data in events[1:]] == [str(i) for i in range(2500)]
    finally:
        await store.close()


@given(st.integers(1, 20_000), st.sampled_from([ROWS_PER_STATEMENT, 199, 64, 10]))
def test_a_batch_is_inserted_by_statements_of_few_sizes(count: int, most: int) -> None:
    sizes = statement_sizes(count, most)
    assert sum(sizes) == count
    assert all(0 < size <= most for size in sizes)
    # Whole statements first, then at most two: a multiple of the step, and fewer rows.
    step = min(ROW_STEP, most)
    rest = [size for size in sizes if size != most]
    assert sizes[: len(sizes) - len(rest)] == [most] * (len(sizes) - len(rest))
    assert len(rest) <= 2
    assert all(size % step == 0 or size < step for size in rest)


def test_every_statement_size_fits_the_statement_cache() -> None:
    # sqlite3 keeps 128 compiled statements per connection; compiling costs ~2.5 µs a row.
    sizes = {
        size
        for count in range(1, 3 * ROWS_PER_STATEMENT)
        for size in statement_sizes(count, ROWS_PER_STATEMENT)
    }
    assert len(sizes) <= 100


async def test_runs_and_events_in_order_with_one_write_per_batch(backend: Backend) -> None:
    # batch_size=1: 18 operations in commits of at most 8, split mid-run, and each commit
    # holds starts, events and ends of several runs: a run row written after its events, or
    # an end before them, would fail the foreign key or the checks below.
    store = await backend.open(batch_size=1, flush_delay=0)
    try:
        sids = [(await store.create_session(owner="ann", provider="p")).session_id for _ in "ab"]
        registry = MemoryRegistry(store=store)
        runs = [(await registry.start(sid, owner="ann", content="q")).run_id for sid in sids]
        for i in range(5):
            for sid in sids:
                registry.publish(sid, "text_delta", {"text": str(i)})
        for sid in sids:
            registry.complete_run(sid, exit_code=0)
        await store.flush()
        assert store.stats.dropped == 0
        assert store.stats.flushes == 3
        for run_id in runs:
            assert [seq for seq, _, _ in await backend.events(run_id)] == list(range(1, 8))
        assert await backend.rows("SELECT status, last_seq FROM runs ORDER BY ord") == [
            ("completed", 7),
            ("completed", 7),
        ]
    finally:
        await store.close()


async def test_a_database_that_cannot_be_written_is_retried_and_nothing_is_lost(
    backend: Backend, store_log: Any
) -> None:
    store = await backend.open(flush_delay=0, outages=True)
    try:
        registry, sid, run_id = await started(store)
        await store.flush()
        retried = store_log("retrying")
        async with backend.outage():
            for i in range(20):
                registry.publish(sid, "text_delta", {"text": str(i)})
            # Never raised into the run, even while the file is locked.
            registry.publish(sid, "session_created", {"provider_session_id": "prov-1"})
            with anyio.fail_after(10):
                await retried.seen.wait()
            assert store.stats.write_errors >= 1
            assert store.durable_seq(run_id) == 1
            assert store.stats.backlog == 20
        await store.flush()
        assert store.durable_seq(run_id) == 21
        assert [seq for seq, _, _ in await backend.events(run_id)] == list(range(1, 22))
        assert await store.resume_id(sid) == "prov-1"
        assert store.stats.dropped == 0
    finally:
        await store.close()


async def test_a_refused_write_is_logged_and_the_rest_of_its_batch_kept(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    store = await backend.open(flush_delay=3600)
    try:
        registry, sid, run_id = await started(store)
        registry.publish(sid, "text", {"text": "before"})
        # An event of a run the store never heard of: its row would break the foreign key.
        store.append(Event(sid, "RUN-NOBODY-STARTED", 1, "text", 0, {"text": "x"}))
        registry.publish(sid, "text", {"text": "after"})
        with caplog.at_level(logging.ERROR, logger="runwire.store"):
            await store.flush()
        assert "RUN-NOBODY-STARTED:1" in caplog.text
        assert "lost" in caplog.text
        assert [seq for seq, _, _ in await backend.events(run_id)] == [1, 2, 3]
        assert store.stats.dropped == 1
        # Not on disk, so never reported durable: a registry keeps it in memory.
        assert store.durable_seq("RUN-NOBODY-STARTED") == 0
        assert store.durable_seq(run_id) == 3
        # The writer carries on as normal.
        registry.publish(sid, "text", {"text": "later"})
        await store.flush()
        assert store.durable_seq(run_id) == 4
    finally:
        await store.close()


@pytest.mark.parametrize("bad_data", NOT_JSON)
async def test_data_that_is_not_json_keeps_its_seq(
    backend: Backend, caplog: pytest.LogCaptureFixture, bad_data: Callable[[], dict[str, Any]]
) -> None:
    store = await backend.open()
    try:
        registry, sid, run_id = await started(store)
        bad = registry.publish(sid, "tool_result", bad_data())
        registry.publish(sid, "text", {"text": "fine"})
        with caplog.at_level(logging.ERROR, logger="runwire.store"):
            await store.flush()
        assert "not JSON" in caplog.text
        events = await backend.events(run_id)
        assert [seq for seq, _, _ in events] == [1, 2, 3]
        assert "unencodable" in events[1][2]
        # Subscribers get the same stand-in as the log.
        assert bad is not None
        assert json.loads(bad.frame())["data"] == events[1][2]
        assert store.durable_seq(run_id) == 3
    finally:
        await store.close()


@pytest.mark.parametrize("bad_data", NOT_JSON)
async def test_data_that_is_not_json_in_a_burst_keeps_its_seq(
    backend: Backend, caplog: pytest.LogCaptureFixture, bad_data: Callable[[], dict[str, Any]]
) -> None:
    # A source's burst is encoded when it is queued: the bad event gets its stand-in
    # there, and neither the burst nor the run fails.
    store = await backend.open()
    try:
        record = await store.create_session(owner="ann", provider="echo")

        async def source(ctx: object) -> AsyncIterator[Any]:
            yield [("text", {"text": "a"}), ("tool_result", bad_data())]
            yield [("text", {"text": "b"})]

        async with MemoryRegistry(store=store) as registry:
            finished = anyio.Event()
            registry.listen(
                lambda n: (
                    finished.set()
                    if isinstance(n, RunNotice) and n.kind == "run_finished"
                    else None
                )
            )
            with caplog.at_level(logging.ERROR, logger="runwire.store"):
                result = await registry.start(
                    record.session_id, owner="ann", content="go", source=source
                )
                await finished.wait()
                await store.flush()
            assert "not JSON" in caplog.text
            events = await backend.events(result.run_id)
            kinds = [kind for _, kind, _ in events]
            assert kinds == ["user_message", "text", "tool_result", "text", "complete"]
            assert "unencodable" in events[2][2]
            buffered = registry._runs[result.run_id].buffer.read(1)
            assert json.loads(buffered[2].frame())["data"] == events[2][2]
    finally:
        await store.close()


async def test_events_cannot_be_changed_or_deleted_one_by_one(
    backend: Backend, store: Store
) -> None:
    _registry, _sid, run_id = await started(store)
    await store.flush()
    with pytest.raises(CONSTRAINT, match="append-only"):
        await backend.execute("UPDATE events SET kind = 'x'")
    with pytest.raises(CONSTRAINT, match="append-only"):
        await backend.execute("DELETE FROM events WHERE seq = 1")
    assert len(await backend.events(run_id)) == 1


async def test_writes_after_close_are_dropped_not_raised(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    store = await backend.open()
    await store.close()
    summary = RunSummary("R1", "s", "p", "running", 1, None, 0, 0)
    with caplog.at_level(logging.ERROR, logger="runwire.store"):
        store.run_started(summary, client_msg_id=None)
        store.append(Event("s", "R1", 1, "text", 1, {}))
        store.provider_session("s", "R1", "x")
        store.run_completed(summary, unread=True)
    assert "closed" in caplog.text
