"""A session's context: what the agent did, what it touched, where it stopped.

Derived from the event log alone (the store's :class:`~registry.store.Digest`) plus the
session's handoff notes, so there is no second record to keep in step. The same context
makes the summary a fork hands to a provider that cannot continue the conversation itself.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from providers.artifacts import WRITTEN, file_changes
from registry import Event, Turn
from registry.store import Digest, SessionRecord

# Actions and errors shown; texts in them are cut to this many characters.
RECENT = 20
PREVIEW = 300
OUTCOMES = ("done", "aborted", "interrupted", "error", "server_restart")


def duration_text(ms: int) -> str:
    """A duration for people: ``45s``, ``3m 20s``, ``1h 5m``, ``2d 3h``."""
    seconds = max(0, ms) // 1000
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


def build_context(record: SessionRecord, digest: Digest, *, now_ms: int) -> dict[str, Any]:
    """The ``GET /api/sessions/{id}/context`` body."""
    runs = digest.runs
    by_outcome = Counter(run.outcome for run in runs if run.outcome is not None)
    duration = sum((run.completed_at or now_ms) - run.started_at for run in runs)
    ends = [run.completed_at for run in runs if run.completed_at is not None]
    if digest.last_event_ts is not None:
        ends.append(digest.last_event_ts)
    return {
        "session_id": record.session_id,
        "runs": {
            "count": len(runs),
            "running": sum(run.status == "running" for run in runs),
            "by_outcome": {outcome: by_outcome[outcome] for outcome in OUTCOMES},
        },
        "first_start": runs[0].started_at if runs else None,
        "last_activity": max(ends, default=None),
        "duration_ms": duration,
        "duration": duration_text(duration),
        "events": {"total": sum(digest.kinds.values()), "by_kind": _by_count(digest.kinds)},
        "tools": _by_count(digest.tools),
        "actions": [_action(event) for event in digest.actions],
        "errors": {
            "events": [_error(event) for event in digest.errors],
            "runs": [
                {
                    "run_id": run.run_id,
                    "started_at": run.started_at,
                    "completed_at": run.completed_at,
                    "error": run.error,
                    "exit_code": run.exit_code,
                }
                for run in runs
                if run.outcome == "error"
            ],
        },
        "checkpoints": [{**_where(event), "data": event.data} for event in digest.checkpoints],
        "artifacts": artifacts(digest),
        "handoff": record.handoff,
    }


def artifacts(digest: Digest) -> list[dict[str, Any]]:
    """The files the session's tool uses changed, in the order first touched; each with its
    net action over the session and the last tool use (run_id, seq) that changed it.

    A failed tool use changed nothing and is left out. A file created in the session and
    then edited stays ``created``; one deleted last is ``deleted``.
    """
    files: dict[str, dict[str, Any]] = {}
    for use in digest.file_uses:
        result = digest.results.get((use.run_id, str(use.data.get("tool_id", ""))))
        if result is not None and result.is_error:
            continue
        name = str(use.data.get("name", ""))
        for change in file_changes(name, use.data.get("input"), result and result.content):
            seen = files.get(change.path)
            action = change.action
            if action == WRITTEN:
                action = (
                    "modified" if seen is not None and seen["action"] != "deleted" else "created"
                )
            if seen is not None and seen["action"] == "created" and action == "modified":
                action = "created"
            files[change.path] = {
                "path": change.path,
                "action": action,
                "tool": name,
                "changes": (seen["changes"] if seen else 0) + 1,
                **_where(use),
            }
    return list(files.values())


def _by_count(counts: dict[str, int]) -> dict[str, int]:
    """Most frequent first, then by name: the order a reader wants."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _where(event: Event) -> dict[str, Any]:
    return {"run_id": event.run_id, "seq": event.seq, "ts": event.ts}


def _preview(value: Any, limit: int = PREVIEW) -> str:
    """``value`` as text of at most ``limit`` characters, an ellipsis marking a cut."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _action(event: Event) -> dict[str, Any]:
    data = event.data
    if event.kind == "tool_use":
        return {
            **_where(event),
            "kind": "tool_use",
            "name": data.get("name"),
            "input": _preview(_input_text(data.get("input"))),
        }
    return {**_where(event), "kind": event.kind, "text": _preview(data.get("text", ""))}


def _input_text(tool_input: Any) -> str:
    """A tool input in one line: the fields that say what it acted on come first."""
    if not isinstance(tool_input, dict):
        return str(tool_input)
    parts = [f"{key}={value}" for key, value in tool_input.items() if isinstance(value, str)]
    others = [key for key, value in tool_input.items() if not isinstance(value, str)]
    return ", ".join(parts + others)


def _error(event: Event) -> dict[str, Any]:
    entry = {**_where(event), "message": _preview(event.data.get("message", ""))}
    if "code" in event.data:
        entry["code"] = event.data["code"]
    return entry


# How much of the source a fork's summary repeats.
SUMMARY_TURNS = 6
SUMMARY_FILES = 20
SUMMARY_TEXT = 500


def fork_summary(context: dict[str, Any], turns: list[Turn]) -> str:
    """The first message of a fork whose provider cannot resume its source: what the
    session did up to the fork point, from its context and its last exchanges."""
    runs = context["runs"]
    outcomes = ", ".join(f"{n} {outcome}" for outcome, n in runs["by_outcome"].items() if n)
    lines = [
        "This conversation continues an earlier session, forked at this point. "
        "What happened there:",
        f"- {runs['count']} run{'' if runs['count'] == 1 else 's'} "
        f"({outcomes or 'none finished'}) over {context['duration']}.",
    ]
    handoff = context.get("handoff")
    if handoff:
        lines.append(f"- Handoff summary: {handoff['summary']}")
        lines += [f"- Next step: {step}" for step in handoff.get("next_steps", [])]
        lines += [f"- Blocker: {blocker}" for blocker in handoff.get("blockers", [])]
    if context["tools"]:
        used = ", ".join(f"{name} ({n})" for name, n in context["tools"].items())
        lines.append(f"- Tools used: {used}.")
    files = context["artifacts"][-SUMMARY_FILES:]
    if files:
        lines.append(
            "- Files changed: " + ", ".join(f"{a['path']} ({a['action']})" for a in files) + "."
        )
    errors = context["errors"]["events"][:3]
    if errors:
        lines.append("- Recent errors: " + "; ".join(e["message"] for e in errors) + ".")
    if turns:
        lines.append("Last exchanges:")
        for turn in turns[-SUMMARY_TURNS:]:
            lines.append(f"{turn.role.capitalize()}: {_preview(turn.content, SUMMARY_TEXT)}")
    return "\n".join(lines)
