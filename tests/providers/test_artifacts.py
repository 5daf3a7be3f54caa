"""Files touched, read from what the agents' real stream formats say about their tool uses."""

from __future__ import annotations

from typing import Any

from providers.artifacts import FILE_TOOLS, WRITTEN, FileChange, file_changes
from providers.base import Item
from providers.cli_formats import FORMATS


def feed(fmt: str, lines: list[dict[str, Any]]) -> list[Item]:
    parser = FORMATS[fmt].parser()
    items: list[Item] = []
    for line in lines:
        items += parser.feed(line)
    return items


def changes(items: list[Item]) -> list[FileChange]:
    """Every file change of the tool uses in ``items``, with their results' text."""
    results = {data["tool_id"]: data for kind, data in items if kind == "tool_result"}
    found: list[FileChange] = []
    for kind, data in items:
        if kind == "tool_use":
            result = results.get(data["tool_id"], {})
            content = result.get("content")
            found += file_changes(
                data["name"], data["input"], content if isinstance(content, str) else None
            )
    return found


def claude_turn(tool_id: str, name: str, tool_input: dict[str, Any], result: str) -> list[Any]:
    use = {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}
    answer = {"type": "tool_result", "tool_use_id": tool_id, "content": result}
    return [
        {"type": "assistant", "message": {"role": "assistant", "content": [use]}},
        {"type": "user", "message": {"role": "user", "content": [answer]}},
    ]


def test_claude_code_file_tools() -> None:
    lines = [
        *claude_turn(
            "t1",
            "Write",
            {"file_path": "/p/new.py", "content": "x"},
            "File created successfully at: /p/new.py",
        ),
        *claude_turn(
            "t2",
            "Write",
            {"file_path": "/p/old.py", "content": "y"},
            "The file /p/old.py has been updated. Here's the result of running `cat -n`...",
        ),
        *claude_turn(
            "t3", "Edit", {"file_path": "/p/a.py", "old_string": "a", "new_string": "b"}, "ok"
        ),
        *claude_turn("t4", "MultiEdit", {"file_path": "/p/b.py", "edits": []}, "ok"),
        *claude_turn("t5", "NotebookEdit", {"notebook_path": "/p/n.ipynb"}, "ok"),
        *claude_turn("t6", "Read", {"file_path": "/p/read.py"}, "contents"),
        *claude_turn("t7", "Bash", {"command": "rm -rf build"}, ""),
    ]
    assert changes(feed("claude", lines)) == [
        FileChange("/p/new.py", "created"),
        FileChange("/p/old.py", "modified"),
        FileChange("/p/a.py", "modified"),
        FileChange("/p/b.py", "modified"),
        FileChange("/p/n.ipynb", "modified"),
    ]


def test_gemini_file_tools() -> None:
    def turn(tool_id: str, name: str, parameters: dict[str, Any], output: str) -> list[Any]:
        return [
            {"type": "tool_use", "tool_name": name, "tool_id": tool_id, "parameters": parameters},
            {"type": "tool_result", "tool_id": tool_id, "status": "success", "output": output},
        ]

    lines = [
        *turn(
            "w1",
            "write_file",
            {"file_path": "/p/new.md", "content": "x"},
            "Successfully created and wrote to new file: /p/new.md.",
        ),
        *turn(
            "w2",
            "write_file",
            {"file_path": "/p/old.md", "content": "x"},
            "Successfully overwrote file: /p/old.md.",
        ),
        *turn("r1", "replace", {"file_path": "/p/c.md", "old_string": "a", "new_string": "b"}, ""),
        *turn("l1", "list_directory", {"dir_path": "."}, "Listed 2 item(s)."),
    ]
    assert changes(feed("gemini", lines)) == [
        FileChange("/p/new.md", "created"),
        FileChange("/p/old.md", "modified"),
        FileChange("/p/c.md", "modified"),
    ]


def test_codex_file_change_items() -> None:
    item = {
        "id": "item_3",
        "type": "file_change",
        "changes": [
            {"path": "notes.md", "kind": "add"},
            {"path": "README.md", "kind": "update"},
            {"path": "old.txt", "kind": {"type": "delete"}},
            {"path": "odd.txt", "kind": "rename"},
        ],
        "status": "completed",
    }
    items = feed("codex", [{"type": "item.completed", "item": item}])
    assert changes(items) == [
        FileChange("notes.md", "created"),
        FileChange("README.md", "modified"),
        FileChange("old.txt", "deleted"),
    ]


def test_a_write_whose_result_says_nothing_is_left_for_the_session_to_decide() -> None:
    assert file_changes("Write", {"file_path": "f"}) == [FileChange("f", WRITTEN)]


def test_other_tools_and_odd_inputs_touch_nothing() -> None:
    assert "Read" not in FILE_TOOLS
    odd: list[tuple[str, Any]] = [
        ("Read", {"file_path": "f"}),
        ("Edit", None),
        ("Edit", "f"),
        ("Edit", {"file_path": 5}),
        ("Edit", {"file_path": ""}),
        ("Write", {}),
        ("file_change", {"changes": "all"}),
        ("file_change", {"changes": [5, {"path": 1, "kind": "add"}, {"kind": "add"}]}),
    ]
    for name, tool_input in odd:
        assert file_changes(name, tool_input) == [], (name, tool_input)
