"""The openai provider against a real local HTTP server speaking the streaming format."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import anyio
import pytest

from providers import OpenAIProvider, OpenAISettings, ProviderConfig, default_providers
from providers.base import Item
from registry import MemoryRegistry, Turn

from .helpers import FakeConversationStore, collect, frames, kinds, of_kind, request, run_turn
from .openai_server import (
    Exchange,
    Responder,
    chunk,
    serve,
    usage_chunk,
    wait_for_disconnect,
)


def provider(base_url: str, **settings: Any) -> OpenAIProvider:
    return OpenAIProvider(
        OpenAISettings(model="gpt-4o-mini", base_url=base_url, api_key="sk-test", **settings)
    )


async def test_streams_a_reply_and_sends_the_conversation() -> None:
    async def reply(exchange: Exchange, respond: Responder) -> None:
        await respond.stream_events(
            [
                chunk("", role="assistant"),
                chunk("Hel"),
                chunk("lo"),
                chunk(finish="stop"),
                usage_chunk(),
                "[DONE]",
            ]
        )

    history = [Turn("user", "hi"), Turn("assistant", "hey")]
    async with serve(reply) as server:
        api = provider(server.base_url, system_prompt="Be brief.")
        items = await collect(
            api, request("how are you?", history=history, options={"temperature": 0.5})
        )

    assert kinds(items) == ["text_delta", "text_delta", "text", "complete"]
    assert of_kind(items, "text") == [{"text": "Hello"}]
    complete = of_kind(items, "complete")[0]
    assert complete["reason"] == "done"
    assert complete["success"] is True
    assert complete["finish_reason"] == "stop"
    assert complete["usage"] == {"prompt_tokens": 19, "completion_tokens": 2, "total_tokens": 21}

    (sent,) = server.requests
    assert sent.method == "POST"
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body == {
        "model": "gpt-4o-mini",
        "temperature": 0.5,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hey"},
            {"role": "user", "content": "how are you?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_tool_call_deltas_become_one_tool_use_per_call() -> None:
    def call(index: int, name: str | None = None, arguments: str = "", **ids: str) -> Any:
        function = (
            {"arguments": arguments} if name is None else {"name": name, "arguments": arguments}
        )
        return chunk(tool_calls=[{"index": index, **ids, "function": function}])

    async def reply(exchange: Exchange, respond: Responder) -> None:
        await respond.stream_events(
            [
                call(0, "get_weather", id="call_A", type="function"),
                call(0, arguments='{"city": "Pa'),
                call(1, "get_time", "{}", id="call_B", type="function"),
                call(0, arguments='ris"}'),
                call(2, "broken", "{nope", id="call_C"),
                call(3, "deep", "[" * 3000 + "]" * 3000, id="call_D"),
                chunk(finish="tool_calls"),
                "[DONE]",
            ]
        )

    async with serve(reply) as server:
        items = await collect(provider(server.base_url), request("weather?"))

    assert of_kind(items, "tool_use") == [
        {"tool_id": "call_A", "name": "get_weather", "input": {"city": "Paris"}},
        {"tool_id": "call_B", "name": "get_time", "input": {}},
        {"tool_id": "call_C", "name": "broken", "input": {"_raw": "{nope"}},
        {"tool_id": "call_D", "name": "deep", "input": {"_raw": "[" * 3000 + "]" * 3000}},
    ]
    assert of_kind(items, "error") == [
        {"message": "openai: tool call call_C has arguments that are not JSON"},
        {"message": "openai: tool call call_D has arguments that are not JSON"},
    ]
    assert of_kind(items, "complete")[0]["finish_reason"] == "tool_calls"
    assert of_kind(items, "complete")[0]["success"] is True


async def test_reasoning_comes_as_thinking_before_the_text() -> None:
    async def reply(exchange: Exchange, respond: Responder) -> None:
        await respond.stream_events(
            [
                chunk(reasoning="Let me "),
                chunk(reasoning="think."),
                chunk("Answer."),
                chunk(finish="stop"),
                "[DONE]",
            ]
        )

    async with serve(reply) as server:
        items = await collect(provider(server.base_url), request("q"))
    assert kinds(items) == ["thinking", "text_delta", "text", "complete"]
    assert of_kind(items, "thinking") == [{"text": "Let me think."}]


async def test_malformed_chunks_are_errors_and_the_stream_goes_on() -> None:
    async def reply(exchange: Exchange, respond: Responder) -> None:
        await respond.start()
        await respond.event(chunk("a"))
        await respond.raw(b"data: {not json\n\n")
        await respond.raw(b"data: [1, 2]\n\n")
        await respond.raw(b"data: " + b"[" * 2000 + b"]" * 2000 + b"\n\n")
        await respond.raw(b": keep-alive comment\n\nevent: ping\ndata: ")
        await respond.raw(b'{"choices": [{"index": 0, "delta": {"content": "b"}}]}\r\n\r\n')
        await respond.raw(b"data: " + b"x" * 5000 + b"\n\n")
        await respond.event(chunk(finish="stop"))
        await respond.event("[DONE]")
        await respond.end()

    async with serve(reply) as server:
        items = await collect(provider(server.base_url, max_line_bytes=4096), request("q"))
    errors = [data["message"] for data in of_kind(items, "error")]
    assert errors == [
        "openai: malformed stream chunk: {not json",
        "openai: malformed stream chunk: [1, 2]",
        "openai: malformed stream chunk: " + "[" * 200,
        "openai: skipped a stream event of 5006 bytes",
    ]
    assert of_kind(items, "text") == [{"text": "ab"}]
    assert of_kind(items, "complete")[0]["reason"] == "done"


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (
            401,
            {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
            "Incorrect API key provided",
        ),
        (
            429,
            {"error": {"message": "Rate limit reached", "type": "requests"}},
            "Rate limit reached",
        ),
        (500, b"upstream exploded", "upstream exploded"),
        (503, b"", "Error"),
    ],
)
async def test_http_errors_end_with_an_error_complete(status: int, body: Any, detail: str) -> None:
    async def reply(exchange: Exchange, respond: Responder) -> None:
        await respond.status(status, body)

    async with serve(reply) as server:
        items = await collect(provider(server.base_url), request("q"))
    assert kinds(items) == ["complete"]
    complete = items[0][1]
    assert complete["reason"] == "error"
    assert complete["success"] is False
    assert complete["http_status"] == status
    assert complete["error"] == f"openai: HTTP {status}: {detail}"


async def test_a_stream_cut_midway_is_an_error_complete() -> None:
    async def reply(exchange: Exchange, respond: Responder) -> None:
        await respond.stream_events([chunk("partial "), chunk("answ")], end=False)
        # An HTTP chunk announcing 64 bytes, of which only a few come: then the connection
        # closes.
        await respond.stream.send(b"40\r\ndata: {")

    async with serve(reply) as server:
        items = await collect(provider(server.base_url), request("q"))
    assert of_kind(items, "text") == [{"text": "partial answ"}]
    complete = of_kind(items, "complete")[0]
    assert complete["reason"] == "error"
    assert complete["error"].startswith("openai: the stream ended before the reply was complete:")


async def test_a_clean_end_without_done_needs_a_finish_reason() -> None:
    async def without_finish(exchange: Exchange, respond: Responder) -> None:
        await respond.stream_events([chunk("half")])

    async def with_finish(exchange: Exchange, respond: Responder) -> None:
        await respond.stream_events([chunk("whole"), chunk(finish="length")])

    async with serve(without_finish) as server:
        cut = await collect(provider(server.base_url), request("q"))
    async with serve(with_finish) as server:
        whole = await collect(provider(server.base_url), request("q"))
    assert cut[-1][1]["reason"] == "error"
    assert cut[-1][1]["error"] == "openai: the stream ended before the reply was complete"
    assert whole[-1][1]["reason"] == "done"
    assert whole[-1][1]["finish_reason"] == "length"


async def test_an_error_object_mid_stream_ends_the_run() -> None:
    async def reply(exchange: Exchange, respond: Responder) -> None:
        await respond.stream_events(
            [chunk("a"), {"error": {"message": "model overloaded", "code": 503}}, chunk("never")]
        )

    async with serve(reply) as server:
        items = await collect(provider(server.base_url), request("q"))
    assert "never" not in repr(items)
    complete = items[-1][1]
    assert complete["reason"] == "error"
    assert complete["error"] == "openai: the API reported an error: model overloaded"


async def test_an_unreachable_server_is_an_error_complete() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there now
    items = await collect(provider(f"http://127.0.0.1:{port}/v1"), request("q"))
    assert kinds(items) == ["complete"]
    assert items[0][1]["error"].startswith("openai: cannot reach the API:")


async def test_cancelling_closes_the_http_stream() -> None:
    async def reply(exchange: Exchange, respond: Responder) -> None:
        await respond.stream_events([chunk("thinking about it")], end=False)
        await wait_for_disconnect(exchange, respond)

    seen: list[Item] = []
    async with serve(reply) as server:
        with anyio.fail_after(10):
            with anyio.CancelScope() as scope:
                stream = provider(server.base_url).stream(request("q"))
                async with aclosing(stream):
                    async for item in stream:
                        seen.append(item)
                        scope.cancel()
            assert scope.cancelled_caught
            # The response was closed by the cancelled stream's cleanup: the server sees it.
            await server.disconnected.wait()
    assert kinds(seen) == ["text_delta"]


async def test_abort_through_the_registry_closes_the_http_stream() -> None:
    async def reply(exchange: Exchange, respond: Responder) -> None:
        await respond.stream_events([chunk("working")], end=False)
        await wait_for_disconnect(exchange, respond)

    async with serve(reply) as server, MemoryRegistry() as registry:
        api = provider(server.base_url)
        events = await run_turn(registry, api, "s1", "q", store=None, until="text_delta")
        registry.abort("s1")
        with anyio.fail_after(10):
            await server.disconnected.wait()
    assert events[-1].kind == "text_delta"


async def test_the_conversation_is_resent_on_the_next_turn() -> None:
    replies = iter(["First answer.", "Second answer."])

    async def reply(exchange: Exchange, respond: Responder) -> None:
        await respond.stream_events([chunk(next(replies)), chunk(finish="stop"), "[DONE]"])

    store = FakeConversationStore()
    async with serve(reply) as server, MemoryRegistry(store=store) as registry:
        api = provider(server.base_url)
        first = await run_turn(registry, api, "s1", "Question one?", store=store)
        second = await run_turn(registry, api, "s1", "Question two?", store=store)

    assert [e.data for e in second if e.kind == "text"] == [{"text": "Second answer."}]
    assert server.requests[1].body["messages"] == [
        {"role": "user", "content": "Question one?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Question two?"},
    ]
    assert "chatcmpl" not in frames(first + second)


async def test_history_is_capped_to_the_most_recent_turns() -> None:
    api = provider("http://127.0.0.1:9/v1", max_history_turns=2)
    history = [Turn("user", "1"), Turn("assistant", "2"), Turn("user", "3"), Turn("assistant", "4")]
    body = api.body(request("5", history=history))
    assert [m["content"] for m in body["messages"]] == ["3", "4", "5"]
    none = provider("http://127.0.0.1:9/v1", max_history_turns=0).body(
        request("5", history=history)
    )
    assert [m["content"] for m in none["messages"]] == ["5"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"model": "gpt-5-ultra"}, "model"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"base_url": "http://evil"}, "base_url"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], named: str) -> None:
    api = provider("http://127.0.0.1:9/v1", models=("gpt-4o",))
    with pytest.raises(ValueError, match=rf"options\.{named}\b"):
        api.check_options(options)


def test_a_configured_model_can_be_chosen() -> None:
    api = provider("http://127.0.0.1:9/v1", models=("gpt-4o",))
    assert api.body(request("q", options={"model": "gpt-4o"}))["model"] == "gpt-4o"
    assert "stream_options" not in provider("http://x/v1", include_usage=False).body(request("q"))


def test_settings_from_the_environment() -> None:
    assert OpenAISettings.from_env({}) is None
    settings = OpenAISettings.from_env(
        {
            "RUNWIRE_OPENAI_MODEL": "llama3.1",
            "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1",
            "OPENAI_API_KEY": "",
        }
    )
    assert settings == OpenAISettings(model="llama3.1", base_url="http://127.0.0.1:11434/v1")
    defaults = OpenAISettings.from_env({"RUNWIRE_OPENAI_MODEL": "gpt-4o", "OPENAI_API_KEY": "k"})
    assert defaults is not None
    assert defaults.base_url == "https://api.openai.com/v1"
    assert defaults.api_key == "k"
    with pytest.raises(ValueError, match="base_url"):
        OpenAISettings(model="m", base_url="ftp://x")
    with pytest.raises(ValueError, match="model"):
        OpenAISettings(model="")


def test_provider_config_from_the_environment(tmp_path: Any) -> None:
    config = ProviderConfig.from_env(
        {
            "RUNWIRE_CLAUDE_BIN": "/opt/bin/claude",
            "RUNWIRE_CLAUDE_CWD": str(tmp_path),
            "RUNWIRE_GEMINI_BIN": "gemini",
            "RUNWIRE_OPENAI_MODEL": "gpt-4o-mini",
        }
    )
    providers = config.build()
    assert providers.names() == ["echo", "claude", "gemini", "openai"]
    claude = config.commands[0]
    assert claude.argv([], "id-1") == [
        "/opt/bin/claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--resume",
        "id-1",
    ]
    assert claude.cwd == str(tmp_path)
    assert default_providers(echo=False).names() == []
