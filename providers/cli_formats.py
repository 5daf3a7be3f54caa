"""The JSON-line output formats of agent CLIs, mapped to runwire's event kinds.

Each format knows how to ask its CLI to resume a conversation and how to read what it
prints: a :class:`LineParser` turns each decoded JSON line into zero or more events and
remembers what the stream said about its ending (:class:`Ending`). Line types a parser
does not know are skipped: CLIs add new ones over time. See ``docs/providers.md`` for
example lines of every format.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

from registry import SESSION_CREATED

from .base import Item

FormatName = Literal["claude", "codex", "gemini"]


@dataclass
class Ending:
    """What the stream said about how the turn ended (its last ``result``-like line)."""

    seen: bool = False
    is_error: bool = False
    error: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    """Extra ``complete`` fields: ``cost_usd``, ``duration_ms``, ``usage``, ``num_turns``."""


class LineParser(Protocol):
    """Per-run state that maps a CLI's JSON lines to events."""

    ending: Ending

    def feed(self, line: Any) -> list[Item]:
        """The events for one decoded JSON line (any JSON value)."""
        ...

    def finish(self) -> list[Item]:
        """Events still pending at the end of the output."""
        ...


@dataclass(frozen=True)
class CliFormat:
    """How to run one kind of agent CLI and read its output."""

    name: FormatName
    executable: str
    """The usual executable name, looked up on ``PATH``."""
    args: tuple[str, ...]
    """The arguments that make it print JSON lines and read the prompt from stdin."""
    resume: tuple[str, ...]
    """Arguments to resume a conversation; ``{id}`` stands for the provider session id."""
    trailing: tuple[str, ...] = ()
    """Arguments after everything else (codex: ``-``, read the prompt from stdin)."""
    fork: tuple[str, ...] = ()
    """Arguments after the resume arguments that continue a copy of the conversation under
    a new id, leaving the original as it was (claude: ``--fork-session``); empty when the
    CLI has none."""

    def argv(
        self, base: tuple[str, ...], extra: list[str], resume_id: str | None, *, fork: bool = False
    ) -> list[str]:
        """The arguments after the executable: ``base``, knob arguments, resume (forking
        the conversation when ``fork``), trailer."""
        args = [*base, *extra]
        if resume_id is not None:
            args += [part.replace("{id}", resume_id) for part in self.resume]
            if fork:
                args += self.fork
        return [*args, *self.trailing]

    def parser(self) -> LineParser:
        """Fresh state for reading one run's output."""
        parsers: dict[str, type[LineParser]] = {
            "claude": ClaudeParser,
            "codex": CodexParser,
            "gemini": GeminiParser,
        }
        return parsers[self.name]()


# Claude Code ---------------------------------------------------------------------------


class ClaudeParser:
    """``claude -p --output-format stream-json --verbose``.

    ``system``/``init`` carries the session id; ``assistant`` messages carry ``text``,
    ``thinking`` and ``tool_use`` content blocks; ``user`` messages carry ``tool_result``
    blocks; ``stream_event`` lines (with ``--include-partial-messages``) carry text deltas;
    the final ``result`` line carries the outcome, cost and duration.
    """

    def __init__(self) -> None:
        self.ending = Ending()

    def feed(self, line: Any) -> list[Item]:
        if not isinstance(line, dict):
            return []
        kind = line.get("type")
        if kind == "system":
            session = line.get("session_id")
            if line.get("subtype") == "init" and isinstance(session, str) and session:
                return [(SESSION_CREATED, {"provider_session_id": session})]
            return []
        if kind == "assistant":
            return _claude_assistant(_blocks(line))
        if kind == "user":
            return _claude_tool_results(_blocks(line))
        if kind == "stream_event":
            return _claude_delta(line.get("event"))
        if kind == "result":
            self._end(line)
        return []

    def finish(self) -> list[Item]:
        return []

    def _end(self, line: dict[str, Any]) -> None:
        ending = self.ending
        ending.seen = True
        subtype = line.get("subtype")
        ending.is_error = bool(line.get("is_error")) or (
            isinstance(subtype, str) and subtype.startswith("error")
        )
        if ending.is_error:
            result = line.get("result")
            errors = line.get("errors")
            if isinstance(result, str) and result:
                ending.error = result
            elif isinstance(errors, list) and errors:
                ending.error = "; ".join(str(e) for e in errors)
            else:
                ending.error = str(subtype or "claude reported an error")
        _copy_number(line, "total_cost_usd", ending.extras, "cost_usd")
        _copy_number(line, "duration_ms", ending.extras, "duration_ms")
        _copy_number(line, "num_turns", ending.extras, "num_turns")
        if isinstance(line.get("usage"), dict):
            ending.extras["usage"] = line["usage"]


def _blocks(line: dict[str, Any]) -> list[Any]:
    message = line.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, list) else []


def _claude_assistant(blocks: list[Any]) -> list[Item]:
    events: list[Item] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            events.append(("text", {"text": block["text"]}))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            events.append(("thinking", {"text": block["thinking"]}))
        elif kind in ("tool_use", "server_tool_use"):
            events.append(
                (
                    "tool_use",
                    {
                        "tool_id": str(block.get("id", "")),
                        "name": str(block.get("name", "")),
                        "input": block.get("input", {}),
                    },
                )
            )
    return events


def _claude_tool_results(blocks: list[Any]) -> list[Item]:
    events: list[Item] = []
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            events.append(
                (
                    "tool_result",
                    {
                        "tool_id": str(block.get("tool_use_id", "")),
                        "content": _content_text(block.get("content")),
                        "is_error": bool(block.get("is_error")),
                    },
                )
            )
    return events


def _claude_delta(event: Any) -> list[Item]:
    if not isinstance(event, dict) or event.get("type") != "content_block_delta":
        return []
    delta = event.get("delta")
    if isinstance(delta, dict) and delta.get("type") == "text_delta":
        text = delta.get("text")
        if isinstance(text, str) and text:
            return [("text_delta", {"text": text})]
    return []


# OpenAI Codex CLI ----------------------------------------------------------------------


class CodexParser:
    """``codex exec --json`` (and ``codex exec --json resume <id>``).

    ``thread.started`` carries the thread id (the session id); ``item.started`` /
    ``item.completed`` carry items (``agent_message``, ``reasoning``,
    ``command_execution``, ``file_change``, ``mcp_tool_call``, ``web_search``,
    ``todo_list``, ``error``); ``turn.completed`` ends the turn with token usage,
    ``turn.failed`` ends it with an error; a top-level ``error`` is a stream error.
    """

    def __init__(self) -> None:
        self.ending = Ending()
        self._started: set[str] = set()  # tool items whose tool_use was already emitted
        self._last_error: str | None = None

    def feed(self, line: Any) -> list[Item]:
        if not isinstance(line, dict):
            return []
        kind = line.get("type")
        if kind == "thread.started":
            thread = line.get("thread_id")
            if isinstance(thread, str) and thread:
                return [(SESSION_CREATED, {"provider_session_id": thread})]
        elif kind in ("item.started", "item.updated", "item.completed"):
            item = line.get("item")
            if isinstance(item, dict):
                return self._item(kind, item)
        elif kind == "turn.completed":
            self.ending.seen = True
            self.ending.is_error = False
            self.ending.error = None
            if isinstance(line.get("usage"), dict):
                self.ending.extras["usage"] = line["usage"]
        elif kind == "turn.failed":
            self.ending.seen = True
            self.ending.is_error = True
            self.ending.error = _message(line.get("error")) or "codex reported a failed turn"
        elif kind == "error":
            message = _message(line) or "codex reported an error"
            self._last_error = message
            return [("error", {"message": message})]
        return []

    def finish(self) -> list[Item]:
        if not self.ending.seen and self._last_error is not None:
            self.ending.error = self._last_error
        return []

    def _item(self, phase: str, item: dict[str, Any]) -> list[Item]:
        item_id = str(item.get("id", ""))
        # Older codex versions call the field `item_type` and messages `assistant_message`.
        kind = item.get("type", item.get("item_type"))
        done = phase == "item.completed"
        if kind in ("agent_message", "assistant_message"):
            return [("text", {"text": str(item.get("text", ""))})] if done else []
        if kind == "reasoning":
            return [("thinking", {"text": str(item.get("text", ""))})] if done else []
        if kind == "command_execution":
            command = {"command": item.get("command")}
            return self._tool(item_id, "command_execution", command, item, done, _command_result)
        if kind == "mcp_tool_call":
            name = f"{item.get('server', '')}.{item.get('tool', '')}".strip(".")
            arguments = item.get("arguments") if item.get("arguments") is not None else {}
            return self._tool(item_id, name or "mcp_tool_call", arguments, item, done, _mcp_result)
        if kind == "file_change":
            changes = {"changes": item.get("changes", [])}
            return self._tool(item_id, "file_change", changes, item, done, _change_result)
        if kind == "web_search" and done:
            return [("status", {"text": f"web search: {item.get('query', '')}"})]
        if kind == "todo_list":
            return [("status", {"text": _todo_text(item.get("items"))})]
        if kind == "error" and done:
            return [("error", {"message": _message(item) or "codex reported an error"})]
        return []

    def _tool(
        self,
        item_id: str,
        name: str,
        tool_input: Any,
        item: dict[str, Any],
        done: bool,
        result: Callable[[dict[str, Any]], tuple[str, bool]],
    ) -> list[Item]:
        events: list[Item] = []
        if item_id not in self._started:
            self._started.add(item_id)
            events.append(("tool_use", {"tool_id": item_id, "name": name, "input": tool_input}))
        if done:
            self._started.discard(item_id)
            content, is_error = result(item)
            events.append(
                ("tool_result", {"tool_id": item_id, "content": content, "is_error": is_error})
            )
        return events


def _command_result(item: dict[str, Any]) -> tuple[str, bool]:
    code = item.get("exit_code")
    failed = item.get("status") == "failed" or (isinstance(code, int) and code != 0)
    return str(item.get("aggregated_output") or ""), failed


def _mcp_result(item: dict[str, Any]) -> tuple[str, bool]:
    error = _message(item.get("error"))
    if error is not None or item.get("status") == "failed":
        return error or "tool call failed", True
    result = item.get("result")
    content = result.get("content") if isinstance(result, dict) else None
    return _content_text(content), False


def _change_result(item: dict[str, Any]) -> tuple[str, bool]:
    changes = item.get("changes")
    lines = [
        f"{change.get('kind', '?')} {change.get('path', '?')}"
        for change in (changes if isinstance(changes, list) else [])
        if isinstance(change, dict)
    ]
    return "\n".join(lines), item.get("status") == "failed"


def _todo_text(items: Any) -> str:
    if not isinstance(items, list):
        return "plan"
    return "\n".join(
        f"[{'x' if entry.get('completed') else ' '}] {entry.get('text', '')}"
        for entry in items
        if isinstance(entry, dict)
    )


# Gemini CLI ----------------------------------------------------------------------------


class GeminiParser:
    """``gemini --output-format stream-json``.

    ``init`` carries the session id; ``message`` lines carry user and assistant content
    (assistant chunks have ``delta: true``); ``tool_use`` / ``tool_result`` pair by
    ``tool_id``; ``error`` is a non-fatal warning; ``result`` ends the turn with stats.
    Streamed assistant chunks are also gathered into one ``text`` when the message ends.
    """

    def __init__(self) -> None:
        self.ending = Ending()
        self._deltas: list[str] = []

    def feed(self, line: Any) -> list[Item]:
        if not isinstance(line, dict):
            return []
        kind = line.get("type")
        if kind == "message":
            return self._message(line)
        events = self._flush()
        if kind == "init":
            session = line.get("session_id")
            if isinstance(session, str) and session:
                events.append((SESSION_CREATED, {"provider_session_id": session}))
        elif kind == "tool_use":
            events.append(
                (
                    "tool_use",
                    {
                        "tool_id": str(line.get("tool_id", "")),
                        "name": str(line.get("tool_name", "")),
                        "input": line.get("parameters", {}),
                    },
                )
            )
        elif kind == "tool_result":
            failed = line.get("status") == "error"
            output = line.get("output")
            content = output if isinstance(output, str) else _message(line.get("error")) or ""
            events.append(
                (
                    "tool_result",
                    {
                        "tool_id": str(line.get("tool_id", "")),
                        "content": content,
                        "is_error": failed,
                    },
                )
            )
        elif kind == "error":
            events.append(("error", {"message": _message(line) or "gemini reported an error"}))
        elif kind == "result":
            self._end(line)
        return events

    def finish(self) -> list[Item]:
        return self._flush()

    def _message(self, line: dict[str, Any]) -> list[Item]:
        content = line.get("content")
        if line.get("role") != "assistant" or not isinstance(content, str):
            return []  # the user message is the prompt echoed back
        if line.get("delta"):
            self._deltas.append(content)
            return [("text_delta", {"text": content})]
        return [*self._flush(), ("text", {"text": content})]

    def _flush(self) -> list[Item]:
        if not self._deltas:
            return []
        text = "".join(self._deltas)
        self._deltas.clear()
        return [("text", {"text": text})]

    def _end(self, line: dict[str, Any]) -> None:
        ending = self.ending
        ending.seen = True
        ending.is_error = line.get("status") == "error"
        if ending.is_error:
            ending.error = _message(line.get("error")) or "gemini reported an error"
        stats = line.get("stats")
        if isinstance(stats, dict):
            ending.extras["usage"] = stats
            _copy_number(stats, "duration_ms", ending.extras, "duration_ms")


# Shared helpers ------------------------------------------------------------------------


def _message(value: Any) -> str | None:
    """The ``message`` of an error-like object (or the value itself if it is a string)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        message = value.get("message")
        if isinstance(message, str) and message:
            return message
    return None


def _content_text(content: Any) -> str:
    """Tool output as text: a string, or the text of a list of content blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif isinstance(block, dict):
                parts.append(f"[{block.get('type', 'content')}]")
            else:
                parts.append(str(block))
        return "\n".join(parts)
    return json.dumps(content, ensure_ascii=False)


def _copy_number(source: Mapping[str, Any], key: str, target: dict[str, Any], name: str) -> None:
    value = source.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        target[name] = value


CLAUDE = CliFormat(
    name="claude",
    executable="claude",
    args=("-p", "--output-format", "stream-json", "--verbose"),
    resume=("--resume", "{id}"),
    fork=("--fork-session",),
)
CODEX = CliFormat(
    name="codex",
    executable="codex",
    args=("exec", "--json"),
    resume=("resume", "{id}"),
    trailing=("-",),
)
GEMINI = CliFormat(
    name="gemini",
    executable="gemini",
    args=("--output-format", "stream-json"),
    resume=("--resume", "{id}"),
)

FORMATS: Mapping[str, CliFormat] = MappingProxyType(
    {fmt.name: fmt for fmt in (CLAUDE, CODEX, GEMINI)}
)
"""Every supported format by name."""
