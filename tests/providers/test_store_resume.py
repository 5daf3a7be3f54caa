"""Resume end to end with the real SQLite store: two turns of one session, for each kind
of provider, across a restart (the store is closed and opened again between the turns)."""

from __future__ import annotations

from pathlib import Path

from providers import CommandProvider, EchoProvider, OpenAIProvider, OpenAISettings, Provider
from registry import Event, MemoryRegistry
from registry.store import SQLiteStore

from .helpers import fake_spec, frames, invocations, run_turn
from .openai_server import Exchange, Responder, chunk, serve


async def one_turn(path: Path, provider: Provider, content: str) -> list[Event]:
    """A server lifetime: open the store, run one turn, close everything."""
    store = await SQLiteStore.open(path)
    try:
        async with MemoryRegistry(store=store) as registry:
            return await run_turn(registry, provider, "s1", content, store=store)
    finally:
        await store.close()


async def test_echo_resumes_its_conversation(tmp_path: Path) -> None:
    echo = EchoProvider()
    path = tmp_path / "runwire.db"
    first = await one_turn(path, echo, "hello")
    second = await one_turn(path, echo, "again")

    assert [e.data["text"] for e in first if e.kind == "text"] == ["hello (turn 1)"]
    assert [e.data["text"] for e in second if e.kind == "text"] == ["again (turn 2)"]
    assert "echo-" not in frames(first + second)


async def test_claude_gets_resume_with_the_recorded_id(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    provider = CommandProvider(fake_spec("claude", record))
    path = tmp_path / "runwire.db"
    first = await one_turn(path, provider, "first")
    second = await one_turn(path, provider, "second")

    first_argv, second_argv = (run["argv"] for run in invocations(record))
    assert "--resume" not in first_argv
    provider_id = second_argv[second_argv.index("--resume") + 1]
    assert provider_id
    assert provider_id not in frames(first + second)
    assert [e.data for e in second if e.kind == "text"][-1] == {
        "text": "You said: second (resumed conversation)"
    }


async def test_openai_is_sent_the_stored_conversation(tmp_path: Path) -> None:
    replies = iter(["Paris.", "About 2.1 million."])

    async def reply(exchange: Exchange, respond: Responder) -> None:
        await respond.stream_events([chunk(next(replies)), chunk(finish="stop"), "[DONE]"])

    path = tmp_path / "runwire.db"
    async with serve(reply) as server:
        api = OpenAIProvider(OpenAISettings(model="m", base_url=server.base_url))
        await one_turn(path, api, "Capital of France?")
        await one_turn(path, api, "Its population?")

    assert server.requests[1].body["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Its population?"},
    ]
