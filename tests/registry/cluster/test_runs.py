"""Runs across processes: start on one, follow, abort and list on others."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as redis
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from registry import (
    Event,
    Notice,
    RunContext,
    RunInProgress,
    RunNotice,
    SessionDeleted,
    Subscription,
)
from registry.store import Store

from ..fakes import NOT_JSON
from .conftest import LEASE, OWNER, Cluster, eventually

WAIT = 20.0  # a hang guard only; nothing asserts on time


def texts(count: int, *, hang: bool = False) -> Any:
    async def source(context: RunContext) -> AsyncIterator[Any]:
        for i in range(count):
            yield [("text_delta", {"text": str(i)})]
            if i % 50 == 0:
                await anyio.lowlevel.checkpoint()
        if hang:
            await anyio.sleep_forever()

    return source


async def completed(store: Store, run_id: str) -> bool:
    """Whether the log has the run's end."""
    run = await store.get_run(run_id)
    return run is not None and run.status == "completed"


async def until_complete(sub: Subscription, runs: int = 1) -> list[Event]:
    got: list[Event] = []
    with anyio.fail_after(WAIT):
        while sum(e.kind == "complete" for e in got) < runs:
            got.extend(await sub.next_batch())
    return got


async def test_a_run_started_on_one_process_is_followed_on_another(cluster: Cluster) -> None:
    sid = await cluster.session()
    async with cluster.process() as a, cluster.process() as b:
        sub = await b.subscribe(sid, owner=OWNER)
        started = await a.start(sid, owner=OWNER, content="go", source=texts(300))
        assert started.status == "started"
        events = await until_complete(sub)
        assert [e.seq for e in events] == list(range(1, 303))
        assert {e.run_id for e in events} == {started.run_id}
        assert events[0].kind == "user_message"
        assert events[-1].data["reason"] == "done"
        # The log has the run once, written by the process that drove it.
        store = cluster.stores[1]
        await eventually(lambda: completed(store, started.run_id))
        page, _ = await store.history_page(sid, after=None, limit=1000)
        assert [e.seq for e in page] == list(range(1, 303))
        # The completed run's stream and state expire after the run TTL (60 s here).
        client = redis.Redis.from_url(cluster.redis_url)
        try:
            for kind in ("ev", "run"):
                ttl = await client.ttl(f"{cluster.prefix}:{kind}:{started.run_id}")
                assert 0 < ttl <= 60
        finally:
            await client.aclose()


@pytest.mark.parametrize("bad_data", NOT_JSON)
async def test_data_that_is_not_json_keeps_its_seq_on_every_process(
    cluster: Cluster, bad_data: Callable[[], dict[str, Any]]
) -> None:
    async def source(context: RunContext) -> AsyncIterator[Any]:
        yield [("text_delta", {"text": "a"}), ("tool_result", bad_data())]
        yield ("text_delta", {"text": "b"})

    sid = await cluster.session()
    async with cluster.process() as a, cluster.process() as b:
        sub = await b.subscribe(sid, owner=OWNER)
        started = await a.start(sid, owner=OWNER, content="go", source=source)
        events = await until_complete(sub)
        assert [(e.seq, e.kind) for e in events] == [
            (1, "user_message"),
            (2, "text_delta"),
            (3, "tool_result"),
            (4, "text_delta"),
            (5, "complete"),
        ]
        assert set(events[2].data) == {"unencodable"}
        assert events[4].data["reason"] == "done"
        store = cluster.stores[1]
        await eventually(lambda: completed(store, started.run_id))
        page, _ = await store.history_page(sid, after=None, limit=10)
        assert [e.data for e in page] == [e.data for e in events]


async def test_abort_from_another_process_stops_the_source_with_one_complete(
    cluster: Cluster,
) -> None:
    sid = await cluster.session()
    cancelled = anyio.Event()
    streaming = anyio.Event()

    async def source(context: RunContext) -> AsyncIterator[Any]:
        try:
            yield ("text", {"text": "first"})
            streaming.set()
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            # A provider that reports its own end while being stopped: dropped.
            yield ("complete", {"reason": "done", "exit_code": 0})
            raise

    async with cluster.process() as a, cluster.process() as b, cluster.process() as c:
        sub_a = await a.subscribe(sid, owner=OWNER)
        sub_c = await c.subscribe(sid, owner=OWNER)
        started = await a.start(sid, owner=OWNER, content="go", source=source)
        with anyio.fail_after(WAIT):
            await streaming.wait()
        running = await c.list_runs(owner=OWNER)
        assert [(r.run_id, r.status) for r in running] == [(started.run_id, "running")]
        assert running[0].subscribers == 2
        assert a.local_runs() == 1
        summary = await b.abort(sid)
        assert summary is not None
        assert summary.run_id == started.run_id
        with anyio.fail_after(WAIT):
            await cancelled.wait()
        for sub in (sub_a, sub_c):
            events = await until_complete(sub)
            assert [e.kind for e in events] == ["user_message", "text", "complete"]
            assert events[-1].data["reason"] == "aborted"
            assert events[-1].data["aborted"] is True
        assert await b.abort(sid) is None
        assert await c.list_runs(owner=OWNER) == []
        assert await c.list_runs(owner="bob") == []
        assert a.local_runs() == 0


async def test_policies_and_idempotency_hold_across_processes(cluster: Cluster) -> None:
    sid = await cluster.session()
    async with cluster.process() as a, cluster.process() as b:
        sub = await a.subscribe(sid, owner=OWNER)
        first = await a.start(sid, owner=OWNER, content="1", source=texts(1, hang=True))
        with pytest.raises(RunInProgress):
            await b.start(sid, owner=OWNER, content="2", source=texts(1))
        queued = await b.start(
            sid, owner=OWNER, content="3", source=texts(2), policy="enqueue", client_msg_id="m3"
        )
        assert queued.status == "queued"
        again = await a.start(
            sid, owner=OWNER, content="3", source=texts(2), policy="enqueue", client_msg_id="m3"
        )
        assert (again.status, again.run_id) == ("duplicate", queued.run_id)
        # Interrupt from a: the hanging run ends, a's new run goes first, b's queued one after.
        jumped = await a.start(sid, owner=OWNER, content="4", source=texts(3), policy="interrupt")
        assert jumped.status == "started"
        events = await until_complete(sub, runs=3)
        by_run: dict[str, list[Event]] = {}
        for event in events:
            by_run.setdefault(event.run_id, []).append(event)
        assert list(by_run) == [first.run_id, jumped.run_id, queued.run_id]
        assert by_run[first.run_id][-1].data["reason"] == "interrupted"
        assert [e.data.get("content") for e in (r[0] for r in by_run.values())] == ["1", "4", "3"]
        assert len(by_run[queued.run_id]) == 4  # user_message, 2 texts, complete
        for run in by_run.values():
            assert [e.seq for e in run] == list(range(1, len(run) + 1))
        # Once written, the database remembers the client_msg_id on any process.
        store = cluster.stores[0]
        await eventually(lambda: completed(store, queued.run_id))
        later = await b.start(sid, owner=OWNER, content="3", client_msg_id="m3", source=texts(1))
        assert (later.status, later.run_id) == ("duplicate", queued.run_id)


async def test_notices_and_deletions_reach_every_process(cluster: Cluster) -> None:
    sid = await cluster.session()
    async with cluster.process() as a, cluster.process() as b:
        heard: list[Notice] = []
        both = anyio.Event()
        deleted = anyio.Event()

        def hear(notice: Notice) -> None:
            heard.append(notice)
            if len(heard) == 2:
                both.set()
            if isinstance(notice, SessionDeleted):
                deleted.set()

        a_deleted = anyio.Event()
        b.listen(hear)
        a.listen(lambda n: a_deleted.set() if isinstance(n, SessionDeleted) else None)
        sub = await a.subscribe(sid, owner=OWNER)
        started = await a.start(sid, owner=OWNER, content="go", source=texts(2))
        await until_complete(sub)
        with anyio.fail_after(WAIT):
            await both.wait()
        assert [(n.kind, n.run.run_id) for n in heard if isinstance(n, RunNotice)] == [
            ("run_started", started.run_id),
            ("run_finished", started.run_id),
        ]
        finished = heard[1]
        assert isinstance(finished, RunNotice)
        assert (finished.owner, finished.run.outcome, finished.run.last_seq) == (OWNER, "done", 4)
        await b.forget_session(sid, owner=OWNER)
        with anyio.fail_after(WAIT):
            await deleted.wait()
            await a_deleted.wait()
        assert heard[-1] == SessionDeleted(OWNER, sid)
        assert sub.closed


async def test_a_late_subscriber_replays_past_the_stream_from_the_log(cluster: Cluster) -> None:
    sid = await cluster.session()
    async with cluster.process(buffer_size=16) as a, cluster.process(buffer_size=16) as b:
        sub = await a.subscribe(sid, owner=OWNER)
        started = await a.start(sid, owner=OWNER, content="go", source=texts(200))
        await until_complete(sub)
        await cluster.stores[0].flush()
        late = await b.subscribe(sid, owner=OWNER, run_id=started.run_id, after_seq=3)
        assert late.info is not None
        assert late.info.recovered
        events = await until_complete(late)
        assert [e.seq for e in events] == list(range(4, 203))


class Child(NamedTuple):
    """A process driving one run (tests/registry/cluster/child.py), to be killed."""

    run_id: str
    process: Process

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@contextlib.asynccontextmanager
async def child_process(cluster: Cluster, session_id: str, lease: float) -> AsyncIterator[Child]:
    """A process that drives a run of 40 events and then hangs, once they are all in
    Redis; SIGKILLed at the latest on the way out."""
    args = [cluster.redis_url, cluster.database_url, cluster.prefix, session_id, "40", str(lease)]
    process = await anyio.open_process(
        [sys.executable, "-m", "tests.registry.cluster.child", *args], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        with anyio.fail_after(WAIT):
            reader = BufferedByteReceiveStream(process.stdout)
            line = (await reader.receive_until(b"\n", 1000)).decode()
        assert line.startswith("ready "), line
        child = Child(line.split()[1], process)
        yield child
    finally:
        await Child("", process).kill()


async def killed_child(cluster: Cluster, session_id: str, lease: float) -> str:
    """:func:`child_process`, SIGKILLed at once; the id of the run it drove."""
    async with child_process(cluster, session_id, lease) as child:
        await child.kill()
        return child.run_id


async def test_a_killed_processes_run_is_ended_by_a_survivor(cluster: Cluster) -> None:
    """SIGKILL the process driving a run: within the lease a survivor appends the run's one
    complete (server_restart), its subscribers get it, and the log has the whole run."""
    sid = await cluster.session()
    async with cluster.process() as b:
        sub = await b.subscribe(sid, owner=OWNER)
        run_id = await killed_child(cluster, sid, LEASE)
        events = await until_complete(sub)
        assert [e.seq for e in events] == list(range(1, 43))
        assert events[-1].data["reason"] == "server_restart"
        # The survivor wrote what the dead process had not: the whole run, once.
        store = cluster.stores[0]
        await eventually(lambda: completed(store, run_id))
        run = await store.get_run(run_id)
        assert run is not None
        assert (run.outcome, run.last_seq) == ("server_restart", 42)
        page, _ = await store.history_page(sid, after=None, limit=100)
        assert [e.seq for e in page] == list(range(1, 43))
