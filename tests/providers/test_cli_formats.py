"""Each CLI format's recorded output mapped to runwire's event kinds (no processes)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers.base import Item
from providers.cli_formats import FORMATS, LineParser

from .helpers import FAKES

SESSION = "0199a213-81c0-7800-8aa1-bbab2a035a53"


def parse(recording: str, *, prompt: str = "hi") -> tuple[list[Item], LineParser]:
    fmt = recording.split("-")[0]
    parser = FORMATS[fmt].parser()
    items: list[Item] = []
    text = (FAKES / "recordings" / f"{recording}.jsonl").read_text()
    text = text.replace("{{session}}", SESSION).replace("{{prompt}}", prompt)
    text = text.replace("{{mode}}", "new conversation")
    for line in text.splitlines():
        items += parser.feed(json.loads(line))
    items += parser.finish()
    return items, parser


def test_claude_stream_json() -> None:
    items, parser = parse("claude")
    assert items == [
        ("session_created", {"provider_session_id": SESSION}),
        ("thinking", {"text": "The user wants the files listed first."}),
        (
            "tool_use",
            {
                "tool_id": "toolu_01Ab5RkLq2mH8nVx7TzPw3Ey",
                "name": "Bash",
                "input": {"command": "ls", "description": "List files in the project"},
            },
        ),
        (
            "tool_use",
            {
                "tool_id": "toolu_01Cd7SmNr4pJ0qXz9VbRy5Gw",
                "name": "Read",
                "input": {"file_path": "/srv/project/secret.txt"},
            },
        ),
        (
            "tool_result",
            {
                "tool_id": "toolu_01Ab5RkLq2mH8nVx7TzPw3Ey",
                "content": "README.md\nsrc",
                "is_error": False,
            },
        ),
        (
            "tool_result",
            {
                "tool_id": "toolu_01Cd7SmNr4pJ0qXz9VbRy5Gw",
                "content": "permission denied",
                "is_error": True,
            },
        ),
        ("text", {"text": "You said: hi (new conversation)"}),
    ]
    ending = parser.ending
    assert ending.seen
    assert not ending.is_error
    assert ending.extras["cost_usd"] == 0.0123455
    assert ending.extras["duration_ms"] == 5012
    assert ending.extras["num_turns"] == 3
    assert ending.extras["usage"]["output_tokens"] == 83


def test_claude_partial_messages_stream_deltas_then_the_whole_text() -> None:
    items, _ = parse("claude-partial")
    assert items[1:] == [
        ("text_delta", {"text": "Hello "}),
        ("text_delta", {"text": "there"}),
        ("text", {"text": "Hello there"}),
    ]


def test_claude_error_result() -> None:
    items, parser = parse("claude-error")
    assert [kind for kind, _ in items] == ["session_created"]
    assert parser.ending.is_error
    assert parser.ending.error == "Invalid API key · Please run /login"


def use(tool_id: str, name: str, tool_input: Any) -> Item:
    return ("tool_use", {"tool_id": tool_id, "name": name, "input": tool_input})


def result(tool_id: str, content: str, is_error: bool = False) -> Item:
    return ("tool_result", {"tool_id": tool_id, "content": content, "is_error": is_error})


def test_codex_exec_json() -> None:
    items, parser = parse("codex")
    changes = [{"path": "notes.md", "kind": "add"}, {"path": "README.md", "kind": "update"}]
    assert items == [
        ("session_created", {"provider_session_id": SESSION}),
        ("thinking", {"text": "**Listing the project files**"}),
        use("item_1", "command_execution", {"command": "bash -lc ls"}),
        result("item_1", "README.md\nsrc\n"),
        use("item_2", "command_execution", {"command": "bash -lc 'cat missing'"}),
        result("item_2", "cat: missing: No such file or directory\n", is_error=True),
        use("item_3", "file_change", {"changes": changes}),
        result("item_3", "add notes.md\nupdate README.md"),
        use("item_4", "docs.search", {"q": "runwire"}),
        result("item_4", "Found 3 matches."),
        ("status", {"text": "web search: runwire protocol"}),
        ("status", {"text": "[x] Read the docs\n[ ] Answer"}),
        ("error", {"message": "command output truncated"}),
        ("text", {"text": "You said: hi (new conversation)"}),
    ]
    assert parser.ending.seen
    assert not parser.ending.is_error
    assert parser.ending.extras == {
        "usage": {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122}
    }


def test_codex_failed_turn() -> None:
    items, parser = parse("codex-error")
    assert items[1:] == [
        ("error", {"message": "Reconnecting... 1/5"}),
        ("error", {"message": "stream error: unexpected status 401 Unauthorized"}),
    ]
    assert parser.ending.is_error
    assert parser.ending.error == "stream error: unexpected status 401 Unauthorized"


def test_codex_stream_error_without_a_turn_end_is_the_error_message() -> None:
    parser = FORMATS["codex"].parser()
    parser.feed({"type": "error", "message": "stream error: broken pipe"})
    parser.finish()
    assert not parser.ending.seen
    assert parser.ending.error == "stream error: broken pipe"


def test_codex_legacy_item_type_field() -> None:
    parser = FORMATS["codex"].parser()
    line = {
        "type": "item.completed",
        "item": {"id": "item_3", "item_type": "assistant_message", "text": "hello"},
    }
    assert parser.feed(line) == [("text", {"text": "hello"})]


def test_gemini_stream_json() -> None:
    items, parser = parse("gemini")
    read_id = "read_file-1760954401300-9c8d7e"
    list_id = "list_directory-1760954401200-4f1a2b"
    assert items == [
        ("session_created", {"provider_session_id": SESSION}),
        use(list_id, "list_directory", {"dir_path": "."}),
        result(list_id, "Listed 2 item(s)."),
        use(read_id, "read_file", {"absolute_path": "/srv/project/missing"}),
        result(read_id, "File not found: /srv/project/missing", is_error=True),
        ("text_delta", {"text": "You said: "}),
        ("text_delta", {"text": "hi (new conversation)"}),
        ("text", {"text": "You said: hi (new conversation)"}),
    ]
    assert parser.ending.seen
    assert not parser.ending.is_error
    assert parser.ending.extras["duration_ms"] == 2200
    assert parser.ending.extras["usage"]["output_tokens"] == 300


def test_gemini_error_result() -> None:
    items, parser = parse("gemini-error")
    assert items[1:] == [("error", {"message": "Loop detected, stopping execution"})]
    assert parser.ending.is_error
    assert parser.ending.error == "Reached max session turns for this session."


def test_gemini_whole_message_after_deltas_flushes_them_first() -> None:
    parser = FORMATS["gemini"].parser()
    items = parser.feed({"type": "message", "role": "assistant", "content": "a", "delta": True})
    items += parser.feed({"type": "message", "role": "assistant", "content": "whole"})
    assert items == [
        ("text_delta", {"text": "a"}),
        ("text", {"text": "a"}),
        ("text", {"text": "whole"}),
    ]
    assert parser.finish() == []


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize(
    "line",
    [
        None,
        42,
        "text",
        [],
        {},
        {"type": 7},
        {"type": "assistant", "message": "nope"},
        {"type": "assistant", "message": {"content": [1, None, {"type": "text"}]}},
        {"type": "user", "message": {"content": "a plain prompt"}},
        {"type": "item.completed", "item": None},
        {"type": "item.completed", "item": {"type": "mcp_tool_call", "result": 3}},
        {"type": "tool_use"},
        {"type": "result", "stats": []},
        {"type": "system", "subtype": "init", "session_id": 5},
        {"type": "thread.started", "thread_id": ""},
        {"type": "brand_new_kind", "data": {"x": 1}},
    ],
)
def test_odd_lines_never_raise(fmt: str, line: Any) -> None:
    parser = FORMATS[fmt].parser()
    for kind, data in parser.feed(line):
        assert isinstance(kind, str)
        assert isinstance(data, dict)
        assert kind != "session_created"
    parser.finish()


def test_argv_per_format() -> None:
    claude, codex, gemini = FORMATS["claude"], FORMATS["codex"], FORMATS["gemini"]
    assert claude.argv(claude.args, [], "abc") == [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--resume",
        "abc",
    ]
    assert codex.argv(codex.args, ["--model", "o3"], None) == [
        "exec",
        "--json",
        "--model",
        "o3",
        "-",
    ]
    assert codex.argv(codex.args, [], "t1") == ["exec", "--json", "resume", "t1", "-"]
    assert gemini.argv(("--x",), [], "g1") == ["--x", "--resume", "g1"]
