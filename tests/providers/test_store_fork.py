"""A fork's first run continues its source's conversation, with the real SQLite store:
Claude Code resumes with --fork-session, echo carries the turn count, an OpenAI-compatible
API is sent the earlier turns up to the fork point, and otherwise the summary leads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from providers import CommandProvider, EchoProvider, OpenAIProvider, OpenAISettings, Provider
from registry import Event, MemoryRegistry
from registry.store import ForkPoint, SQLiteStore

from .helpers import OWNER, fake_spec, frames, invocations, run_turn
from .openai_server import Exchange, Responder, chunk, serve


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(tmp_path / "runwire.db")
    try:
        yield opened
    finally:
        await opened.close()


class Chat:
    """Turns of sessions through one registry on the store."""

    def __init__(self, store: SQLiteStore, registry: MemoryRegistry, provider: Provider) -> None:
        self.store, self.registry, self.provider = store, registry, provider

    async def new(self) -> str:
        record = await self.store.create_session(owner=OWNER, provider=self.provider.name)
        return record.session_id

    async def turn(self, session_id: str, content: str) -> list[Event]:
        return await run_turn(self.registry, self.provider, session_id, content, store=self.store)

    async def fork(self, session_id: str, at: ForkPoint | None = None) -> str:
        record = await self.store.fork_session(session_id, owner=OWNER, at=at)
        assert record is not None
        return record.session_id


def texts(events: list[Event]) -> list[str]:
    return [e.data["text"] for e in events if e.kind == "text"]


async def test_claude_forks_its_conversation_with_fork_session(
    tmp_path: Path, store: SQLiteStore
) -> None:
    record = tmp_path / "record.jsonl"
    async with MemoryRegistry(store=store) as registry:
        chat = Chat(store, registry, CommandProvider(fake_spec("claude", record)))
        source = await chat.new()
        await chat.turn(source, "first")
        fork = await chat.fork(source)
        forked = await chat.turn(fork, "in the fork")
        again = await chat.turn(fork, "fork again")
        original = await chat.turn(source, "in the source")

    runs = invocations(record)
    provider_id = runs[1]["argv"][runs[1]["argv"].index("--resume") + 1]
    assert "--fork-session" in runs[1]["argv"]
    assert texts(forked)[-1] == "You said: in the fork (forked conversation)"
    # The fork's own conversation has its own id from then on, resumed without forking.
    fork_id = runs[2]["argv"][runs[2]["argv"].index("--resume") + 1]
    assert fork_id != provider_id
    assert "--fork-session" not in runs[2]["argv"]
    assert texts(again)[-1] == "You said: fork again (resumed conversation)"
    # The source goes on with its own conversation.
    assert runs[3]["argv"][runs[3]["argv"].index("--resume") + 1] == provider_id
    assert "--fork-session" not in runs[3]["argv"]
    assert provider_id not in frames(forked + again + original)


async def test_claude_starts_from_the_summary_when_the_point_cannot_be_resumed(
    tmp_path: Path, store: SQLiteStore
) -> None:
    record = tmp_path / "record.jsonl"
    async with MemoryRegistry(store=store) as registry:
        chat = Chat(store, registry, CommandProvider(fake_spec("claude", record)))
        source = await chat.new()
        first = await chat.turn(source, "first")
        await chat.turn(source, "second")
        # The conversation's id now holds the second turn too: resuming it is not the
        # state after the first, so the fork starts over from its summary.
        fork = await chat.fork(source, ForkPoint(first[0].run_id))
        await store.set_fork_summary(fork, "SUMMARY of the first turn")
        await chat.turn(fork, "go on")

    fork_run = invocations(record)[2]
    assert "--resume" not in fork_run["argv"]
    assert fork_run["prompt"] == "SUMMARY of the first turn\n\n---\n\ngo on"


async def test_echo_carries_the_turn_count_of_the_fork_point(store: SQLiteStore) -> None:
    async with MemoryRegistry(store=store) as registry:
        chat = Chat(store, registry, EchoProvider())
        source = await chat.new()
        runs = [await chat.turn(source, word) for word in ("one", "two", "three")]
        fork = await chat.fork(source, ForkPoint(runs[1][0].run_id))
        in_fork = [await chat.turn(fork, word) for word in ("a", "b")]
        in_source = await chat.turn(source, "four")
        # A fork of the fork, inside its own turn: the copied prompt counts.
        inner = await chat.fork(fork, ForkPoint(in_fork[0][0].run_id, 1))
        in_inner = await chat.turn(inner, "x")

    assert [texts(run)[-1] for run in in_fork] == ["a (turn 3)", "b (turn 4)"]
    assert texts(in_source) == ["four (turn 4)"]
    assert texts(in_inner) == ["x (turn 4)"]


async def test_openai_is_sent_the_turns_up_to_the_fork_point(store: SQLiteStore) -> None:
    replies = iter(["Paris.", "About 2.1 million.", "Lyon is second."])

    async def reply(exchange: Exchange, respond: Responder) -> None:
        await respond.stream_events([chunk(next(replies)), chunk(finish="stop"), "[DONE]"])

    async with serve(reply) as server, MemoryRegistry(store=store) as registry:
        api = OpenAIProvider(OpenAISettings(model="m", base_url=server.base_url))
        chat = Chat(store, registry, api)
        source = await chat.new()
        first = await chat.turn(source, "Capital of France?")
        await chat.turn(source, "Its population?")
        fork = await chat.fork(source, ForkPoint(first[0].run_id))
        await chat.turn(fork, "And the second city?")

    assert server.requests[2].body["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And the second city?"},
    ]
