"""Which files an agent's tool use touched, read from the tool's normalized input.

The supported agents name their file tools differently: Claude Code has ``Write``,
``Edit``, ``MultiEdit`` and ``NotebookEdit``; Gemini CLI has ``write_file`` and
``replace``; Codex reports a ``file_change`` item listing each path with ``add``,
``update`` or ``delete`` (see :mod:`providers.cli_formats`). Each becomes
:class:`FileChange` entries with one of three actions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

Action = Literal["created", "modified", "deleted"]
# A whole-file write: a new file or an overwrite, told apart by the tool's result.
WRITTEN = "written"

_PATH_FIELD = {
    "Write": "file_path",
    "Edit": "file_path",
    "MultiEdit": "file_path",
    "NotebookEdit": "notebook_path",
    "write_file": "file_path",
    "replace": "file_path",
}
_WRITES = frozenset(("Write", "write_file"))
_CODEX_KINDS: dict[str, Action] = {"add": "created", "update": "modified", "delete": "deleted"}
CODEX_FILE_CHANGE = "file_change"

FILE_TOOLS: frozenset[str] = frozenset((*_PATH_FIELD, CODEX_FILE_CHANGE))
"""Tool names whose inputs say which files they change."""


class FileChange(NamedTuple):
    """One file a tool use changed. ``action`` is ``written`` for a whole-file write
    whose result did not say whether the file was new."""

    path: str
    action: str


def file_changes(name: str, tool_input: Any, result: str | None = None) -> list[FileChange]:
    """The files one tool use changed; ``[]`` for other tools or inputs of another shape.

    ``result`` is the start of the tool's result text: Claude Code's ``Write`` says "File
    created successfully" for a new file, Gemini's ``write_file`` "created and wrote to new
    file" (an overwrite says "updated" or "overwrote").
    """
    if not isinstance(tool_input, Mapping):
        return []
    if name == CODEX_FILE_CHANGE:
        return _codex_changes(tool_input.get("changes"))
    field = _PATH_FIELD.get(name)
    path = tool_input.get(field) if field is not None else None
    if not isinstance(path, str) or not path:
        return []
    if name in _WRITES:
        return [FileChange(path, _write_action(result))]
    return [FileChange(path, "modified")]


def _write_action(result: str | None) -> str:
    text = (result or "").lower()
    if "created" in text or "new file" in text:
        return "created"
    if "updated" in text or "overwrote" in text:
        return "modified"
    return WRITTEN


def _codex_changes(changes: Any) -> list[FileChange]:
    if not isinstance(changes, list):
        return []
    found: list[FileChange] = []
    for change in changes:
        if not isinstance(change, Mapping):
            continue
        path, kind = change.get("path"), change.get("kind")
        # Newer codex versions send the kind as an object: {"type": "add"}.
        if isinstance(kind, Mapping):
            kind = kind.get("type")
        if isinstance(path, str) and path and kind in _CODEX_KINDS:
            found.append(FileChange(path, _CODEX_KINDS[kind]))
    return found
