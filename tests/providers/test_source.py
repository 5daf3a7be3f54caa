"""The provider contract through the real MemoryRegistry: make_source, failures, abort,
resume, and provider ids that never leave the registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from providers import (
    EchoProvider,
    ProviderRegistry,
    ProviderRequest,
    UnknownProvider,
    default_providers,
    make_source,
)
from providers.base import Item
from registry import MemoryRegistry, RegistryError, Turn

from .helpers import OWNER, FakeConversationStore, events_until, frames, run_turn


class Scripted:
    """A provider that records its requests and yields what the test scripted."""

    wants_history = True

    def __init__(self, name: str, items: list[Item], *, fail: str | None = None) -> None:
        self.name = name
        self.items = items
        self.fail = fail
        self.requests: list[ProviderRequest] = []
        self.closed = anyio.Event()

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Item]:
        self.requests.append(request)
        try:
            for item in self.items:
                yield item
            if self.fail is not None:
                raise RuntimeError(self.fail)
        finally:
            self.closed.set()


async def test_echo_run_through_the_registry() -> None:
    async with MemoryRegistry() as registry:
        events = await run_turn(
            registry, EchoProvider(), "s1", "hi", store=None, options={"chunks": 3}
        )
    assert [e.kind for e in events] == [
        "user_message",
        "text_delta",
        "text_delta",
        "text_delta",
        "text",
        "complete",
    ]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[-1].data["reason"] == "done"
    assert events[-1].data["actual_session_id"] == "s1"
    assert "echo-" not in frames(events)


async def test_a_provider_that_raises_ends_with_one_error_complete() -> None:
    provider = Scripted("boom", [("text_delta", {"text": "a"})], fail="the model fell over")
    async with MemoryRegistry() as registry:
        events = await run_turn(registry, provider, "s1", "hi", store=None)
    completes = [e for e in events if e.kind == "complete"]
    assert len(completes) == 1
    assert completes[0].data["reason"] == "error"
    assert completes[0].data["success"] is False
    assert completes[0].data["error"] == "the model fell over"


async def test_echo_fail_after_through_the_registry() -> None:
    async with MemoryRegistry() as registry:
        events = await run_turn(
            registry,
            EchoProvider(),
            "s1",
            "hi",
            store=None,
            options={"chunks": 5, "fail_after": 2, "delay_ms": 0},
        )
    assert [e.kind for e in events].count("text_delta") == 2
    assert [e.kind for e in events].count("complete") == 1
    assert events[-1].data["reason"] == "error"
    assert "fail_after" in events[-1].data["error"]


async def test_a_provider_that_ends_without_complete_gets_a_done() -> None:
    provider = Scripted("quiet", [("text", {"text": "bye"})])
    async with MemoryRegistry() as registry:
        events = await run_turn(registry, provider, "s1", "hi", store=None)
    assert [e.kind for e in events] == ["user_message", "text", "complete"]
    assert events[-1].data["reason"] == "done"
    assert events[-1].data["exit_code"] == 0


async def test_a_second_complete_is_dropped() -> None:
    async with MemoryRegistry() as registry:
        events = await run_turn(
            registry,
            EchoProvider(),
            "s1",
            "hi",
            store=None,
            options={"chunks": 1, "extra_complete": True},
        )
        # Anything the session publishes later is dropped too: the run has ended.
        assert registry.publish("s1", "complete", {"reason": "done"}) is None
        again = await events_until(registry, "s1", events[0].run_id)
    assert [e.kind for e in again].count("complete") == 1
    assert "extra" not in again[-1].data


async def test_abort_stops_a_hanging_provider_with_one_aborted_complete() -> None:
    echo = EchoProvider()
    async with MemoryRegistry() as registry:
        source = make_source(echo, options={"chunks": 2, "hang": True}, store=None)
        started = await registry.start("s1", owner=OWNER, content="hi", source=source)
        await events_until(registry, "s1", started.run_id, until="text_delta")
        summary = registry.abort("s1")
        assert summary is not None
        assert registry.publish("s1", "complete", {"reason": "done"}) is None
        events = await events_until(registry, "s1", started.run_id)
    completes = [e for e in events if e.kind == "complete"]
    assert len(completes) == 1
    assert completes[0].data["aborted"] is True
    assert completes[0].data["reason"] == "aborted"


async def test_the_provider_generator_is_closed_after_its_own_complete() -> None:
    provider = Scripted(
        "closing",
        [("complete", {"reason": "done"}), ("text", {"text": "never"})],
    )
    async with MemoryRegistry() as registry:
        events = await run_turn(registry, provider, "s1", "hi", store=None)
        with anyio.fail_after(5):
            await provider.closed.wait()
    assert [e.kind for e in events] == ["user_message", "complete"]


async def test_bad_options_are_refused_before_any_run() -> None:
    with pytest.raises(ValueError, match=r"options\.chunks"):
        make_source(EchoProvider(), options={"chunks": -3}, store=None)
    with pytest.raises(ValueError, match="options must be an object"):
        make_source(EchoProvider(), options=["chunks"], store=None)  # type: ignore[arg-type]


async def test_resume_end_to_end_with_echo() -> None:
    store = FakeConversationStore()
    echo = EchoProvider()
    async with MemoryRegistry(store=store) as registry:
        first = await run_turn(registry, echo, "s1", "hello", store=store, options={"chunks": 2})
        second = await run_turn(registry, echo, "s1", "again", store=store, options={"chunks": 2})
        third = await run_turn(registry, echo, "s2", "other", store=store, options={"chunks": 2})

    assert [e.data for e in first if e.kind == "text"] == [{"text": "hello (turn 1)"}]
    assert [e.data for e in second if e.kind == "text"] == [{"text": "again (turn 2)"}]
    assert [e.data for e in third if e.kind == "text"] == [{"text": "other (turn 1)"}]
    provider_id = store.provider_ids["s1"]
    assert echo.turns(provider_id) == 2
    assert provider_id not in frames(first + second + third)
    assert store.provider_ids["s2"] not in frames(first + second + third)
    assert not any(e.kind == "session_created" for e in first + second + third)


async def test_history_is_handed_to_providers_that_want_it() -> None:
    store = FakeConversationStore()
    provider = Scripted("history", [("text", {"text": "answer"})])
    async with MemoryRegistry(store=store) as registry:
        await run_turn(registry, provider, "s1", "first question", store=store)
        await run_turn(registry, provider, "s1", "second question", store=store)

    assert provider.requests[0].history == []
    assert provider.requests[1].history == [
        Turn("user", "first question"),
        Turn("assistant", "answer"),
    ]
    assert provider.requests[1].content == "second question"
    assert provider.requests[1].session_id == "s1"


async def test_history_is_not_read_for_providers_that_do_not_want_it() -> None:
    store = FakeConversationStore()

    async def forbidden(session_id: str) -> list[Turn]:
        raise AssertionError("turns() should not be read")

    store.turns = forbidden  # type: ignore[method-assign]
    async with MemoryRegistry(store=store) as registry:
        events = await run_turn(
            registry, EchoProvider(), "s1", "hi", store=store, options={"chunks": 1}
        )
    assert events[-1].data["reason"] == "done"
    assert store.resume_calls == ["s1"]


async def test_options_reach_the_provider_as_a_copy() -> None:
    options: dict[str, Any] = {"knob": [1]}
    provider = Scripted("copy", [])
    source = make_source(provider, options=options, store=None)
    options["knob"] = "changed"
    async with MemoryRegistry() as registry:
        started = await registry.start("s1", owner=OWNER, content="x", source=source)
        await events_until(registry, "s1", started.run_id)
    assert provider.requests[0].options == {"knob": [1]}


def test_provider_registry_lookup() -> None:
    providers = default_providers()
    assert providers.names() == ["echo"]
    assert providers.default == "echo"
    assert "echo" in providers
    assert "nope" not in providers
    assert isinstance(providers.get("echo"), EchoProvider)
    with pytest.raises(UnknownProvider) as caught:
        providers.get("gpt-9")
    assert caught.value.code == "UNKNOWN_PROVIDER"
    assert isinstance(caught.value, RegistryError)
    assert "gpt-9" in str(caught.value)
    assert "echo" in str(caught.value)


def test_provider_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="echo"):
        ProviderRegistry([EchoProvider(), EchoProvider()])
    assert ProviderRegistry([]).default is None
