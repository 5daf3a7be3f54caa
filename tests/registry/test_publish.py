"""Publishing: numbering, stamping, scrubbing provider ids and recording them."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry import Event, ManualClock, MemoryRegistry

from .fakes import FakeStore, drain, json_values, kinds, positions

ID_KEYS = ["session_id", "sessionId", "actual_session_id", "provider_session_id"]


async def test_seqs_count_from_the_user_message(reg: MemoryRegistry, clock: ManualClock) -> None:
    result = await reg.start("s1", owner="alice", content="hello")
    sub = await reg.subscribe("s1", owner="alice")
    published = []
    for i in range(5):
        clock.advance(1.5)
        event = reg.publish("s1", "text_delta", {"text": str(i)})
        assert event is not None
        published.append(event)
    events = drain(sub)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[0].kind == "user_message"
    assert events[0].data == {"content": "hello"}
    assert events[1:] == published
    assert all(e.session_id == "s1" and e.run_id == result.run_id for e in events)
    assert [e.ts for e in events] == [1_700_000_000_000 + 1500 * i for i in range(6)]
    assert reg.stats.published == 6
    summary = reg.get_run(result.run_id)
    assert summary is not None
    assert summary.last_seq == 6


async def test_each_run_counts_from_one(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="a")
    reg.publish("s1", "text", {"text": "x"})
    reg.publish("s1", "complete", {})
    second = await reg.start("s1", owner="alice", content="b")
    event = reg.publish("s1", "text", {"text": "y"})
    assert event is not None
    assert (event.run_id, event.seq) == (second.run_id, 2)


async def test_frame_is_the_protocol_event(reg: MemoryRegistry, clock: ManualClock) -> None:
    result = await reg.start("s1", owner="alice", content="hi")
    event = reg.publish("s1", "tool_use", {"tool_id": "t1", "name": "ls", "input": {"a": [1]}})
    assert event is not None
    assert json.loads(event.frame()) == {
        "type": "event",
        "session_id": "s1",
        "run_id": result.run_id,
        "seq": 2,
        "kind": "tool_use",
        "ts": int(clock.now() * 1000),
        "data": {"tool_id": "t1", "name": "ls", "input": {"a": [1]}},
    }
    assert event.frame() is event.frame()


@given(
    ids=st.tuples(st.text(), st.text(), st.text()),
    seq=st.integers(min_value=1),
    ts=st.integers(min_value=0),
    data=st.dictionaries(st.text(), json_values, max_size=4),
)
def test_frame_is_the_json_of_its_fields(
    ids: tuple[str, str, str], seq: int, ts: int, data: dict[str, object]
) -> None:
    # Whatever the strings hold (quotes, control characters, non-ASCII), the frame parses
    # back, and the data text cut from it is the data's JSON.
    session_id, run_id, kind = ids
    event = Event(session_id, run_id, seq, kind, ts, data)
    assert json.loads(event.frame()) == {
        "type": "event",
        "session_id": session_id,
        "run_id": run_id,
        "seq": seq,
        "kind": kind,
        "ts": ts,
        "data": json.loads(json.dumps(data)),
    }
    assert event.data_json is None  # The frame holds it; a buffered event keeps one copy.
    text = event.encoded_data()
    assert json.loads(text) == json.loads(json.dumps(data))


async def test_publish_refuses_a_kind_with_a_nul(reg: MemoryRegistry) -> None:
    await reg.start("s1", owner="alice", content="go")
    with pytest.raises(TypeError, match="NUL"):
        reg.publish("s1", "te\x00xt", {"text": "x"})
    assert reg.stats.published == 1  # only the user_message


async def test_publish_without_a_running_run_is_dropped(reg: MemoryRegistry) -> None:
    assert reg.publish("nobody", "text", {"text": "x"}) is None
    assert reg.stats.dropped == 1
    assert reg.stats.published == 0


@pytest.mark.parametrize("key", ID_KEYS)
async def test_provider_ids_never_reach_events(reg: MemoryRegistry, key: str) -> None:
    await reg.start("s1", owner="alice", content="hi")
    sub = await reg.subscribe("s1", owner="alice")
    data = {"text": "x", key: "prov-123"}
    event = reg.publish("s1", "status", data)
    assert event is not None
    if key == "provider_session_id":
        assert event.data == {"text": "x"}
    else:
        assert event.data == {"text": "x", key: "s1"}
    assert data[key] == "prov-123", "the caller's dict is not modified"
    complete = reg.publish("s1", "complete", {key: "prov-123", "reason": "done"})
    assert complete is not None
    assert complete.data["actual_session_id"] == "s1"
    delivered = drain(sub)
    assert kinds(delivered) == ["user_message", "status", "complete"]
    assert all("prov-123" not in e.frame() for e in delivered)


@pytest.mark.parametrize(
    "data",
    [
        {"provider_session_id": "prov-1"},
        {"session_id": "prov-1"},
        {"sessionId": "prov-1"},
        {"actual_session_id": "prov-1"},
        {"provider_session_id": "prov-1", "session_id": "other"},
    ],
)
async def test_session_created_records_and_is_never_delivered(
    sreg: MemoryRegistry, store: FakeStore, data: dict[str, str]
) -> None:
    result = await sreg.start("s1", owner="alice", content="hi")
    sub = await sreg.subscribe("s1", owner="alice")
    assert sreg.publish("s1", "session_created", data) is None
    event = sreg.publish("s1", "text", {"text": "x"})
    assert event is not None
    assert event.seq == 2, "session_created takes no seq"
    assert store.provider_ids == [("s1", result.run_id, "prov-1")]
    delivered = drain(sub)
    assert kinds(delivered) == ["user_message", "text"]
    assert [e.kind for e in store.events] == ["user_message", "text"]
    assert sreg.stats.dropped == 0


async def test_provider_id_first_stored_same_ignored_different_replaces(
    sreg: MemoryRegistry, store: FakeStore
) -> None:
    result = await sreg.start("s1", owner="alice", content="hi")
    sreg.publish("s1", "session_created", {"session_id": "prov-1"})
    sreg.publish("s1", "session_created", {"session_id": "prov-1"})
    assert sreg.record_provider_session("s1", "prov-1")
    assert store.provider_ids == [("s1", result.run_id, "prov-1")]
    sreg.publish("s1", "session_created", {"session_id": "prov-2"})
    assert store.provider_ids[-1] == ("s1", result.run_id, "prov-2")
    assert len(store.provider_ids) == 2
    assert sreg._runs[result.run_id].provider_session_id == "prov-2"


async def test_record_provider_session_uses_the_latest_run(
    sreg: MemoryRegistry, store: FakeStore
) -> None:
    assert not sreg.record_provider_session("s1", "prov-0"), "no run to record it on"
    run_id = (await sreg.start("s1", owner="alice", content="hi")).run_id
    sreg.publish("s1", "complete", {})
    # A provider may announce its id only as it finishes; the completed run takes it.
    assert sreg.record_provider_session("s1", "prov-9")
    assert store.provider_ids == [("s1", run_id, "prov-9")]
    assert not sreg.record_provider_session("s1", "")
    assert len(store.provider_ids) == 1


async def test_a_failing_store_hook_is_logged_and_the_run_goes_on(
    sreg: MemoryRegistry, store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.fail_provider_session = True
    result = await sreg.start("s1", owner="alice", content="hi")
    with caplog.at_level(logging.ERROR, logger="runwire.registry"):
        assert sreg.publish("s1", "session_created", {"session_id": "prov-1"}) is None
    assert store.provider_ids == [("s1", result.run_id, "prov-1")]
    assert "provider session id" in caplog.text
    assert "disk on fire" in caplog.text
    assert sreg.running_run_id("s1") == result.run_id
    event = sreg.publish("s1", "text", {"text": "still here"})
    assert event is not None
    assert event.seq == 2
    assert sreg._runs[result.run_id].provider_session_id == "prov-1"


async def test_session_created_after_complete_is_dropped(
    sreg: MemoryRegistry, store: FakeStore
) -> None:
    await sreg.start("s1", owner="alice", content="hi")
    sreg.publish("s1", "complete", {})
    assert sreg.publish("s1", "session_created", {"session_id": "prov-1"}) is None
    assert store.provider_ids == []
    assert sreg.stats.dropped == 1


async def test_store_gets_every_event_in_order(sreg: MemoryRegistry, store: FakeStore) -> None:
    sub = await sreg.subscribe("s1", owner="alice")
    await sreg.start("s1", owner="alice", content="hi")
    sreg.publish("s1", "text", {"text": "a"})
    sreg.publish("s1", "complete", {})
    await sreg.start("s1", owner="alice", content="again")
    assert store.events == drain(sub)
    assert positions(store.events)[-1][1] == 1
