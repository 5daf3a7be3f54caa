"""A state machine interleaving everything the registry does, checked after every step.

Runs are driven by ``publish`` (no sources), so every step is synchronous apart from the
``start`` and ``subscribe`` coroutines; those run to completion on a loop of the machine's
own (an ``asyncio.Runner``), which is sound because nothing else runs on it. The ground
truth is the store's log: every event the registry published, in order.

Invariants, after every step:
- the log: in each run, seqs 1, 2, 3 ... from the user_message, at most one complete and
  nothing after it; a session's next run starts only after its previous one completed;
- no provider-native id in any event;
- every subscription delivered exactly the log's events from its requested position on
  (or, when not recovered, from ``first_available``), none skipped or repeated, across runs,
  until it lagged (at the last position it delivered, and only when the next event was
  really gone from memory) or was closed;
- a listening subscription whose listener was not called since it last pulled ``[]`` has
  nothing to pull (so a writer that pulls only when told misses nothing), and one whose
  ``ready()`` is false has nothing to pull either;
- is_processing, list_runs, the queues and the counters agree with the log;
- a run leaves memory only once completed for the TTL and durable in the store.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from registry import (
    Event,
    Lagged,
    ManualClock,
    MemoryRegistry,
    QueueFull,
    RunInProgress,
    Subscription,
)
from registry.memory import REPLAY_PAGE

from .fakes import FakeStore, Recorder

SESSIONS = ("s1", "s2")
OWNERS = {"s1": "alice", "s2": "bob"}
ID_KEYS = ("session_id", "sessionId", "actual_session_id", "provider_session_id")
KINDS = ("text", "text_delta", "status", "error", "tool_use", "session_created", "complete")
TTL = 10.0
QUEUE_LIMIT = 2
# How a subscriber reads: everything after every step; only when a rule says so; or,
# after every step, only if its listener was called since it last pulled nothing.
PACES = ("fast", "slow", "listening")


class Tracked:
    """A subscription under test and what it has delivered."""

    def __init__(self, sub: Subscription, session_id: str, anchor: int, pace: str) -> None:
        self.sub = sub
        self.session_id = session_id
        self.anchor = anchor  # index in the session's log of the first event it owes
        self.pace = pace
        self.slow = pace == "slow"
        self.told = False
        if pace == "listening":
            sub.listen(self.hear)
        self.start_position = sub.position
        self.delivered: list[Event] = []

    def hear(self) -> None:
        self.told = True


def pos(event: Event) -> tuple[str, int]:
    return (event.run_id, event.seq)


class RegistryMachine(RuleBasedStateMachine):
    """The registry without a store: positions older than memory are not recovered."""

    with_store = False

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = ManualClock()
        self.store: FakeStore | Recorder = (
            FakeStore(auto_durable=False) if self.with_store else Recorder()
        )
        self.reg: MemoryRegistry
        self.subs: list[Tracked] = []
        self.msg_ids: dict[tuple[str, str], str] = {}
        self.dropped = 0
        self.checked = 0  # log events already checked
        self.last_seq: dict[str, int] = {}
        self.complete_ts: dict[str, int] = {}
        self.session_runs: dict[str, list[str]] = {s: [] for s in SESSIONS}
        self.counter = 0
        self.reads = 0

    def teardown(self) -> None:
        self.runner.close()

    @property
    def log(self) -> list[Event]:
        return self.store.events

    def session_log(self, session_id: str) -> list[Event]:
        return [e for e in self.log if e.session_id == session_id]

    def next_id(self) -> int:
        self.counter += 1
        return self.counter

    @initialize(
        buffer_size=st.integers(min_value=4, max_value=8),
        texts=st.integers(min_value=0, max_value=10),
        watchers=st.lists(st.sampled_from(PACES), max_size=2),
        replay_page=st.sampled_from((1, 2, 3, REPLAY_PAGE)),
    )
    def begin(self, buffer_size: int, texts: int, watchers: list[str], replay_page: int) -> None:
        """A registry with a run going in s1 (so that most examples have one) and possibly
        subscribers (of any pace) that watch s1 from its very start. A small
        ``replay_page`` makes most replays from the store come in pages."""
        self.reg = MemoryRegistry(
            store=self.store,
            clock=self.clock,
            buffer_size=buffer_size,
            run_ttl=TTL,
            queue_limit=QUEUE_LIMIT,
            replay_page=replay_page,
        )
        for pace in watchers:
            self.add_sub("s1", None, 0, pace)
        self.start("s1", "reject", None)
        self.publish_many("s1", texts, None)

    # Runs ------------------------------------------------------------------------------

    @rule(
        session_id=st.sampled_from(SESSIONS),
        policy=st.sampled_from(("reject", "enqueue", "interrupt")),
        msg_id=st.none() | st.sampled_from(("m1", "m2", "m3")),
    )
    def start(self, session_id: str, policy: Any, msg_id: str | None) -> None:
        reg = self.reg
        running = reg.running_run_id(session_id)
        queued = reg.queued(session_id)
        known = self.msg_ids.get((session_id, msg_id)) if msg_id else None
        try:
            result = self.runner.run(
                reg.start(
                    session_id,
                    owner=OWNERS[session_id],
                    content=f"c{self.next_id()}",
                    provider="fake",
                    client_msg_id=msg_id,
                    policy=policy,
                )
            )
        except RunInProgress as exc:
            self.check_refused(policy, running, exc.run_id)
            return
        except QueueFull:
            self.check_queue_full(policy, running, queued)
            return
        event(f"start: {result.status}")
        if result.status == "duplicate":
            assert known is not None
            assert result.run_id == known
            return
        if known is not None:
            # Only a run no longer known anywhere frees its client_msg_id.
            assert reg.get_run(known) is None
            assert all(r.run_id != known for r in reg.list_runs(status="all"))
            if isinstance(self.store, FakeStore):
                assert known not in self.store.run_ids(session_id)
        if msg_id:
            self.msg_ids[(session_id, msg_id)] = result.run_id
        if result.status == "queued":
            assert policy == "enqueue"
            assert running is not None
            assert reg.queued(session_id) == queued + 1
            return
        assert result.status == "started"
        assert reg.running_run_id(session_id) == result.run_id
        if running is not None:
            assert policy == "interrupt"
            old = reg.get_run(running)
            assert old is not None
            assert (old.status, old.outcome) == ("completed", "interrupted")
            assert reg.queued(session_id) == queued

    def check_refused(self, policy: str, running: str | None, named: str) -> None:
        assert policy == "reject"
        assert running is not None
        assert named == running

    def check_queue_full(self, policy: str, running: str | None, queued: int) -> None:
        assert policy == "enqueue"
        assert running is not None
        assert queued == QUEUE_LIMIT

    @rule(
        session_id=st.sampled_from(SESSIONS),
        kind=st.sampled_from(KINDS),
        leak=st.sampled_from((None, *ID_KEYS)),
    )
    def publish(self, session_id: str, kind: str, leak: str | None) -> None:
        reg = self.reg
        running = reg.running_run_id(session_id)
        before = len(self.log)
        previous = self.last_seq_of(running) if running is not None else 0
        data: dict[str, Any] = {"text": f"t{self.next_id()}"}
        if leak is not None:
            data[leak] = f"prov-{self.next_id()}"
        if kind == "session_created":
            data = {"session_id": f"prov-{self.next_id()}"}
        event = reg.publish(session_id, kind, data)
        if running is None:
            assert event is None
            self.dropped += 1
            return
        if kind == "session_created":
            assert event is None
            assert len(self.log) == before
            return
        assert event is not None
        assert pos(event) == (running, previous + 1)
        assert event.kind == kind
        if kind == "complete":
            summary = reg.get_run(running)
            assert summary is not None
            assert summary.status == "completed"

    @rule(
        session_id=st.sampled_from(SESSIONS),
        count=st.integers(min_value=1, max_value=12),
        leak=st.sampled_from((None, *ID_KEYS)),
    )
    def publish_many(self, session_id: str, count: int, leak: str | None) -> None:
        """A burst of deltas: overflows small buffers and overruns slow subscribers."""
        running = self.reg.running_run_id(session_id)
        if running is None:
            return
        previous = self.last_seq_of(running)
        for i in range(count):
            data: dict[str, Any] = {"text": str(i)}
            if leak is not None:
                data[leak] = f"prov-{self.next_id()}"
            event = self.reg.publish(session_id, "text_delta", data)
            assert event is not None
            assert pos(event) == (running, previous + i + 1)

    def last_seq_of(self, run_id: str) -> int:
        return max((e.seq for e in self.log if e.run_id == run_id), default=0)

    @rule(session_id=st.sampled_from(SESSIONS), clear_queue=st.booleans())
    def abort(self, session_id: str, clear_queue: bool) -> None:
        running = self.reg.running_run_id(session_id)
        summary = self.reg.abort(session_id, clear_queue=clear_queue)
        if running is None:
            assert summary is None
            return
        assert summary is not None
        assert (summary.run_id, summary.outcome) == (running, "aborted")
        if clear_queue:
            assert self.reg.queued(session_id) == 0
            assert self.reg.running_run_id(session_id) is None

    @rule(session_id=st.sampled_from(SESSIONS))
    def provider_complete_after_abort(self, session_id: str) -> None:
        self.reg.abort(session_id, clear_queue=True)
        assert self.reg.publish(session_id, "complete", {"reason": "done"}) is None
        self.dropped += 1

    @rule(session_id=st.sampled_from(SESSIONS))
    def duplicate_complete(self, session_id: str) -> None:
        if self.reg.queued(session_id):
            return  # the queue's next run would take the second complete as its own
        running = self.reg.running_run_id(session_id)
        first = self.reg.publish(session_id, "complete", {"exit_code": 0})
        second = self.reg.publish(session_id, "complete", {"exit_code": 0})
        assert second is None
        self.dropped += 1 if first is not None else 2
        assert (first is None) == (running is None)

    @rule(session_id=st.sampled_from(SESSIONS), error=st.booleans())
    def complete_run(self, session_id: str, error: bool) -> None:
        running = self.reg.running_run_id(session_id)
        done = self.reg.complete_run(session_id, exit_code=1, error="crash" if error else None)
        assert done is (running is not None)

    @rule(session_id=st.sampled_from(SESSIONS))
    def record_provider_session(self, session_id: str) -> None:
        before = len(self.log)
        self.reg.record_provider_session(session_id, f"prov-{self.next_id()}")
        assert len(self.log) == before

    # Time ------------------------------------------------------------------------------

    @rule(seconds=st.sampled_from((0.5, 3.0, TTL / 2, TTL + 1)))
    def advance_and_sweep(self, seconds: float) -> None:
        self.clock.advance(seconds)
        if self.reg.sweep():
            event("evicted")

    @rule()
    def flush_and_sweep(self) -> None:
        """Everything durable: every run completed a TTL ago must go."""
        if isinstance(self.store, FakeStore):
            self.store.flush()
        self.reg.sweep()
        now_ms = int(self.clock.now() * 1000)
        for run_id, ts in self.complete_ts.items():
            if now_ms - ts > TTL * 1000 + 1:
                assert self.reg.get_run(run_id) is None

    # Subscriptions ---------------------------------------------------------------------

    @rule(
        session_id=st.sampled_from(SESSIONS),
        which=st.integers(min_value=-2, max_value=8),
        extra=st.integers(min_value=0, max_value=10),
        pace=st.sampled_from(PACES),
    )
    def subscribe(self, session_id: str, which: int, extra: int, pace: str) -> None:
        runs = self.session_runs[session_id]
        run_id: str | None
        if which == -2 or not runs:
            run_id = None  # the latest run
            last = self.last_seq_of(runs[-1]) if runs else 0
        elif which == -1:
            run_id = runs[-1]
            last = self.last_seq_of(run_id)
        else:
            run_id = runs[which % len(runs)]
            last = self.last_seq_of(run_id)
        after_seq = min(extra, last + 1)
        self.add_sub(session_id, run_id, after_seq, pace)

    def add_sub(self, session_id: str, run_id: str | None, after_seq: int, pace: str) -> None:
        sub = self.runner.run(
            self.reg.subscribe(
                session_id, owner=OWNERS[session_id], run_id=run_id, after_seq=after_seq
            )
        )
        info = sub.info
        assert info is not None
        event(f"subscribe: recovered={info.recovered} replayed>0={info.replayed > 0}")
        if isinstance(self.store, FakeStore) and len(self.store.history_calls) > self.reads:
            self.reads = len(self.store.history_calls)
            event("subscribe: read the store")
        assert info.session_id == session_id
        assert info.is_processing == self.reg.is_processing(session_id)
        assert info.replayed == sub.pending()
        events = self.session_log(session_id)
        if info.recovered:
            assert info.first_available is None
            runs = self.session_runs[session_id]
            if run_id is None and runs:
                run_id = runs[-1]
            if run_id is None:
                anchor = 0
            else:
                key = (runs.index(run_id), after_seq)
                anchor = sum(1 for e in events if (runs.index(e.run_id), e.seq) <= key)
        else:
            assert not self.with_store, "a store recovers every position"
            first = info.first_available
            if first is None:
                anchor = len(events)
            else:
                anchor = [pos(e) for e in events].index((first.run_id, first.seq))
        tracked = Tracked(sub, session_id, anchor, pace)
        self.subs.append(tracked)
        if not tracked.slow:
            # Nothing was published since it subscribed: it has no reason to lag, but for
            # the end of a replay's page (and then it subscribed again, from there).
            self.pull(tracked)
            assert tracked in self.subs or tracked.sub.paged, "lagged right after subscribing"

    @rule(index=st.integers(min_value=0))
    def unsubscribe(self, index: int) -> None:
        if not self.subs:
            return
        tracked = self.subs.pop(index % len(self.subs))
        tracked.sub.close()
        assert tracked.sub.pull() == []

    @rule(index=st.integers(min_value=0), limit=st.none() | st.integers(1, 3))
    def pull_slow(self, index: int, limit: int | None) -> None:
        slow = [t for t in self.subs if t.slow]
        if not slow:
            return
        self.pull(slow[index % len(slow)], limit)

    def pull(self, tracked: Tracked, limit: int | None = None) -> None:
        events = self.session_log(tracked.session_id)
        drained = False  # ready() said nothing is left
        while True:
            try:
                batch = tracked.sub.pull(limit)
            except Lagged as lag:
                assert not drained, "lagged after ready() said nothing was left"
                self.lagged(tracked, lag, events)
                return
            assert not (drained and batch), "events after ready() said nothing was left"
            if not batch:
                if limit is None:
                    # Pulled dry: it has delivered every event of the log that it owes.
                    owed = len(events) - tracked.anchor
                    assert len(tracked.delivered) == owed
                return
            assert limit is None or len(batch) <= limit
            start = tracked.anchor + len(tracked.delivered)
            expected = events[start : start + len(batch)]
            assert [pos(e) for e in batch] == [pos(e) for e in expected]
            assert all(e is x for e, x in zip(batch, expected, strict=True))
            tracked.delivered += batch
            if limit is not None:
                return
            drained = not tracked.sub.ready()

    def lagged(self, tracked: Tracked, lag: Lagged, events: list[Event]) -> None:
        event("lagged")
        self.subs.remove(tracked)
        assert tracked.sub.closed
        assert lag.session_id == tracked.session_id
        if tracked.delivered:
            assert (lag.run_id, lag.last_seq) == pos(tracked.delivered[-1])
        else:
            assert (lag.run_id, lag.last_seq) == tracked.start_position
        info = tracked.sub.info
        assert info is not None
        if tracked.sub.paged:
            # A replay's page ended: it delivered a whole page from the store, no more.
            event("lagged after a replay's page")
            assert self.with_store
            assert len(tracked.delivered) == info.replayed == self.reg.replay_page
        else:
            # It lagged for a reason: the next event it owed is gone from memory.
            owed = events[tracked.anchor + len(tracked.delivered)]
            run = self.reg._runs.get(owed.run_id)
            assert run is None or run.buffer.first_seq > owed.seq
        if lag.run_id is not None:
            # What a client does next: resubscribe from the position it was given.
            event("resubscribed after lagged")
            self.add_sub(tracked.session_id, lag.run_id, lag.last_seq, tracked.pace)
            if self.with_store:
                assert self.subs[-1].sub.info.recovered  # type: ignore[union-attr]

    # Invariants ------------------------------------------------------------------------

    @invariant()
    def log_is_well_formed(self) -> None:
        if not hasattr(self, "reg"):
            return
        for ev in self.log[self.checked :]:
            run_id = ev.run_id
            assert ev.session_id in SESSIONS
            assert "prov-" not in ev.frame()
            assert run_id not in self.complete_ts, "nothing after a run's complete"
            assert ev.seq == self.last_seq.get(run_id, 0) + 1
            self.last_seq[run_id] = ev.seq
            if ev.seq == 1:
                assert ev.kind == "user_message"
                runs = self.session_runs[ev.session_id]
                assert not runs or runs[-1] in self.complete_ts, "one running run per session"
                runs.append(run_id)
            else:
                assert ev.kind != "user_message"
            assert ev.kind != "session_created"
            if ev.kind == "complete":
                assert ev.data["actual_session_id"] == ev.session_id
                assert isinstance(ev.data["aborted"], bool)
                self.complete_ts[run_id] = ev.ts
        self.checked = len(self.log)

    @invariant()
    def subscriptions_deliver_the_log(self) -> None:
        for tracked in list(self.subs):
            if tracked.pace == "fast":
                self.pull(tracked)
            elif tracked.pace == "listening":
                if tracked.told:
                    tracked.told = False  # before the pull: a call during it counts again
                    self.pull(tracked)
                else:
                    assert tracked.sub.pull() == [], "something to pull, and nobody was told"

    @invariant()
    def queries_agree_with_the_log(self) -> None:
        if not hasattr(self, "reg"):
            return
        reg = self.reg
        running = set()
        for session_id, runs in self.session_runs.items():
            open_run = runs[-1] if runs and runs[-1] not in self.complete_ts else None
            assert reg.running_run_id(session_id) == open_run
            assert reg.is_processing(session_id) == (open_run is not None)
            if open_run is not None:
                running.add(open_run)
        assert {r.run_id for r in reg.list_runs()} == running
        listed = reg.list_runs(status="all")
        assert sum(r.status == "queued" for r in listed) == sum(reg.queued(s) for s in SESSIONS)
        for summary in listed:
            if summary.status == "queued":
                continue
            assert summary.last_seq == self.last_seq[summary.run_id]
            assert (summary.status == "completed") == (summary.run_id in self.complete_ts)
        assert reg.subscriber_count() == len(self.subs)
        assert reg.stats.published == len(self.log)
        assert reg.stats.dropped == self.dropped

    @invariant()
    def eviction_is_earned(self) -> None:
        if not hasattr(self, "reg"):
            return
        now_ms = int(self.clock.now() * 1000)
        for runs in self.session_runs.values():
            for run_id in runs:
                if self.reg.get_run(run_id) is not None:
                    continue
                assert run_id in self.complete_ts, "a running run is never evicted"
                assert now_ms - self.complete_ts[run_id] >= TTL * 1000 - 1
                if isinstance(self.store, FakeStore):
                    assert self.store.durable_seq(run_id) >= self.last_seq[run_id]


class RegistryWithStoreMachine(RegistryMachine):
    """The same, with a store: every position is recovered; eviction waits for durability."""

    with_store = True


SETTINGS = settings(
    max_examples=300,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestRegistry = RegistryMachine.TestCase
TestRegistry.settings = SETTINGS
TestRegistryWithStore = RegistryWithStoreMachine.TestCase
TestRegistryWithStore.settings = SETTINGS
