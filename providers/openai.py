"""The ``openai`` provider: OpenAI-compatible Chat Completions, streamed over httpx.

Works with OpenAI and with local servers that speak the same API (vLLM, llama.cpp server,
Ollama). The API keeps no conversation, so each run sends the session's earlier turns
(``ProviderRequest.history``) followed by the prompt. The reply streams as ``text_delta``
events, then comes whole as one ``text`` (and ``thinking`` / ``tool_use`` when the model
produced them), then ``complete``.

Failures end the run with the provider's own ``complete`` (``reason: "error"``): an HTTP
error status (its code is in the message and in ``http_status``), a connection failure, a
stream cut before ``[DONE]``, an ``error`` object sent mid-stream. A malformed chunk only
produces an ``error`` event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, cast

import anyio
import httpx

from .base import Item, ProviderRequest
from .lines import LineSplitter, Oversized
from .options import choice_option, number_option, optional_int_option, refuse_unknown

if TYPE_CHECKING:
    from .config import OpenAISettings

log = logging.getLogger("runwire.providers.openai")

_OPTIONS = frozenset(("model", "temperature", "max_tokens"))
# The reply is gathered in memory to be sent whole at the end: bound it.
_MAX_REPLY_CHARS = 16 << 20
# How much of an HTTP error body is read for its message.
_MAX_ERROR_BODY = 8192
# Cleanup of a response or client gets this long, even when the run was cancelled.
_CLOSE_TIMEOUT = 2.0


class OpenAIProvider:
    """Streams chat completions from the endpoint ``settings`` describe.

    ``transport`` replaces httpx's network transport (for embedding applications; the
    tests use a real local server).
    """

    wants_history = True

    def __init__(
        self, settings: OpenAISettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._transport = transport

    def check_options(self, options: Mapping[str, Any]) -> None:
        """``model`` (one of the configured models), ``temperature`` (0..2),
        ``max_tokens`` (1..1000000)."""
        self._parameters(options)

    def _parameters(self, options: Mapping[str, Any]) -> dict[str, Any]:
        settings = self.settings
        refuse_unknown(self.name, options, _OPTIONS)
        models = {settings.model, *settings.models}
        parameters: dict[str, Any] = {"model": choice_option(options, "model", models)}
        parameters["temperature"] = number_option(
            options, "temperature", None, minimum=0.0, maximum=2.0
        )
        parameters["max_tokens"] = optional_int_option(
            options, "max_tokens", minimum=1, maximum=1_000_000
        )
        if parameters["model"] is None:
            parameters["model"] = settings.model
        return {key: value for key, value in parameters.items() if value is not None}

    def body(self, request: ProviderRequest) -> dict[str, Any]:
        """The JSON body sent for ``request``."""
        settings = self.settings
        messages: list[dict[str, str]] = []
        if settings.system_prompt:
            messages.append({"role": "system", "content": settings.system_prompt})
        history = (
            request.history[-settings.max_history_turns :] if settings.max_history_turns else []
        )
        messages.extend({"role": turn.role, "content": turn.content} for turn in history)
        messages.append({"role": "user", "content": request.content})
        body: dict[str, Any] = {
            **self._parameters(request.options),
            "messages": messages,
            "stream": True,
        }
        if settings.include_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[Item, None]:
        """Send one chat completion request and stream the reply."""
        settings = self.settings
        body = self.body(request)
        url = settings.base_url.rstrip("/") + "/chat/completions"
        headers = {"Accept": "text/event-stream"}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        timeout = httpx.Timeout(
            settings.read_timeout, connect=settings.connect_timeout, pool=settings.connect_timeout
        )
        client = httpx.AsyncClient(timeout=timeout, transport=self._transport)
        try:
            try:
                response = await client.send(
                    client.build_request("POST", url, json=body, headers=headers), stream=True
                )
            except httpx.HTTPError as exc:
                log.warning("provider %s: request to %s failed: %r", self.name, url, exc)
                yield "complete", _failed(f"{self.name}: cannot reach the API: {_describe(exc)}")
                return
            try:
                if response.status_code != 200:
                    detail = await _error_detail(response)
                    status = response.status_code
                    log.warning("provider %s: HTTP %d from %s: %s", self.name, status, url, detail)
                    message = f"{self.name}: HTTP {status}: {detail}"
                    yield "complete", _failed(message, http_status=status)
                    return
                async with aclosing(self._read(response)) as items:
                    async for item in items:
                        yield item
            finally:
                # Closing the response closes the connection: on abort this is what stops
                # the server's work. Shielded so that it also runs when cancelled.
                with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    await response.aclose()
        finally:
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await client.aclose()

    async def _read(self, response: httpx.Response) -> AsyncGenerator[Item, None]:
        reply = _Reply(self.name)
        events = _EventStream(self.settings.max_line_bytes)
        cut: str | None = None
        try:
            # aiter_bytes is an async generator (httpx types it as an iterator): close it.
            body = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
            async with aclosing(body) as chunks:
                async for data in chunks:
                    for payload in events.feed(data):
                        for item in reply.payload(payload):
                            yield item
                        if reply.over:
                            break
                    if reply.over:
                        break
                else:
                    for payload in events.close():
                        for item in reply.payload(payload):
                            yield item
        except httpx.HTTPError as exc:
            cut = _describe(exc)
        for item in reply.finish(cut):
            yield item


class _EventStream:
    """Server-sent events: ``data:`` lines joined per event (a blank line ends one)."""

    def __init__(self, limit: int) -> None:
        self._lines = LineSplitter(limit)
        self._limit = limit
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[bytes | Oversized]:
        return self._dispatch(self._lines.feed(chunk))

    def close(self) -> list[bytes | Oversized]:
        payloads = self._dispatch(self._lines.close())
        if self._data:
            payloads.append(self._take())
        return payloads

    def _dispatch(self, lines: list[bytes | Oversized]) -> list[bytes | Oversized]:
        payloads: list[bytes | Oversized] = []
        for line in lines:
            if isinstance(line, Oversized):
                payloads.append(line)
                continue
            line = line.rstrip(b"\r")
            if not line:
                if self._data:
                    payloads.append(self._take())
                continue
            field, _, value = line.partition(b":")
            if field != b"data":
                continue  # comments (`: ping`), `event:`, `id:`, `retry:`
            value = value.removeprefix(b" ")
            self._size += len(value)
            if self._size > self._limit:
                payloads.append(Oversized(self._size))
                self._data.clear()
                self._size = 0
                continue
            self._data.append(value)
        return payloads

    def _take(self) -> bytes:
        payload = b"\n".join(self._data)
        self._data.clear()
        self._size = 0
        return payload


class _ToolCall:
    __slots__ = ("arguments", "call_id", "name")

    def __init__(self) -> None:
        self.call_id = ""
        self.name = ""
        self.arguments: list[str] = []


class _Reply:
    """Assembles a streamed chat completion and decides how the run ends."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.thinking_sent = False
        self.tools: dict[int, _ToolCall] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.done = False
        self.error: str | None = None
        self.size = 0

    @property
    def over(self) -> bool:
        """The stream has said its last word (``[DONE]``, an error, or too much)."""
        return self.done or self.error is not None

    def payload(self, payload: bytes | Oversized) -> list[Item]:
        if isinstance(payload, Oversized):
            message = f"{self.provider}: skipped a stream event of {payload.size} bytes"
            return [("error", {"message": message})]
        if payload.strip() == b"[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(payload)
        except (ValueError, RecursionError):
            return [self._malformed(payload)]
        if not isinstance(chunk, dict):
            return [self._malformed(payload)]
        if chunk.get("error") is not None:
            self.error = (
                f"{self.provider}: the API reported an error: {_error_text(chunk['error'])}"
            )
            return []
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        events: list[Item] = []
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                events.extend(self._choice(choice))
        if self.size > _MAX_REPLY_CHARS:
            self.error = f"{self.provider}: the reply is longer than {_MAX_REPLY_CHARS} characters"
        return events

    def _choice(self, choice: dict[str, Any]) -> list[Item]:
        events: list[Item] = []
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return events
        # vLLM, llama.cpp and DeepSeek send reasoning as `reasoning_content`, Ollama and
        # OpenRouter as `reasoning`.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self.reasoning.append(reasoning)
            self.size += len(reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            events.extend(self._thinking())
            self.text.append(content)
            self.size += len(content)
            events.append(("text_delta", {"text": content}))
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                self._tool_delta(call)
        return events

    def _tool_delta(self, call: dict[str, Any]) -> None:
        index = call.get("index", 0)
        if not isinstance(index, int):
            return
        tool = self.tools.setdefault(index, _ToolCall())
        if isinstance(call.get("id"), str) and call["id"]:
            tool.call_id = call["id"]
        function = call.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str) and function["name"] and not tool.name:
                tool.name = function["name"]
            if isinstance(function.get("arguments"), str):
                tool.arguments.append(function["arguments"])
                self.size += len(function["arguments"])

    def _thinking(self) -> list[Item]:
        if self.thinking_sent or not self.reasoning:
            return []
        self.thinking_sent = True
        return [("thinking", {"text": "".join(self.reasoning)})]

    def _malformed(self, payload: bytes) -> Item:
        preview = payload[:200].decode("utf-8", errors="replace")
        return ("error", {"message": f"{self.provider}: malformed stream chunk: {preview}"})

    def finish(self, cut: str | None) -> list[Item]:
        """The closing events: whole text, tool calls, then ``complete``."""
        events = self._thinking()
        if self.text:
            events.append(("text", {"text": "".join(self.text)}))
        for index in sorted(self.tools):
            events.extend(self._tool_use(index, self.tools[index]))
        extras: dict[str, Any] = {}
        if self.finish_reason is not None:
            extras["finish_reason"] = self.finish_reason
        if self.usage is not None:
            extras["usage"] = self.usage
        if self.model is not None:
            extras["model"] = self.model
        if self.error is not None:
            events.append(("complete", _failed(self.error, **extras)))
        elif self.done or (cut is None and self.finish_reason is not None):
            events.append(
                ("complete", {"exit_code": 0, "success": True, "reason": "done", **extras})
            )
        else:
            why = f": {cut}" if cut else ""
            message = f"{self.provider}: the stream ended before the reply was complete{why}"
            events.append(("complete", _failed(message, **extras)))
        return events

    def _tool_use(self, index: int, tool: _ToolCall) -> list[Item]:
        raw = "".join(tool.arguments)
        tool_id = tool.call_id or f"call_{index}"
        events: list[Item] = []
        try:
            tool_input: Any = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError):
            tool_input = {"_raw": raw}
            message = f"{self.provider}: tool call {tool_id} has arguments that are not JSON"
            events.append(("error", {"message": message}))
        events.insert(0, ("tool_use", {"tool_id": tool_id, "name": tool.name, "input": tool_input}))
        return events


async def _error_detail(response: httpx.Response) -> str:
    """The message of an HTTP error response, read with a bound."""
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= _MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass
    text = bytes(body[:_MAX_ERROR_BODY]).decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict) and parsed.get("error") is not None:
        return _error_text(parsed["error"])
    return text.strip()[:300] or response.reason_phrase or "no details"


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
    if isinstance(error, str) and error:
        return error
    return json.dumps(error)[:300]


def _describe(exc: httpx.HTTPError) -> str:
    return str(exc) or type(exc).__name__


def _failed(message: str, **extras: Any) -> dict[str, Any]:
    return {**extras, "exit_code": 1, "success": False, "reason": "error", "error": message}
