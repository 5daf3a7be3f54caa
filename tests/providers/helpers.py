"""Shared helpers for the provider tests: fake CLIs, a fake store, running turns."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio

from providers import CommandSpec, Provider, ProviderRequest, each_item, make_source
from providers.base import ConversationStore, Item
from providers.cli_formats import FORMATS, FormatName
from registry import Event, ForkOrigin, MemoryRegistry, NullPersistence, Turn

FAKES = Path(__file__).parent / "fakes"
OWNER = "alice"


def fake_spec(fmt: FormatName, record: Path, **overrides: Any) -> CommandSpec:
    """A command spec that runs the fake CLI for ``fmt`` with the format's real arguments."""
    settings: dict[str, Any] = {
        "format": fmt,
        "executable": sys.executable,
        "args": (str(FAKES / f"fake_{fmt}.py"), *FORMATS[fmt].args),
        "env": {"FAKE_RECORD": str(record)},
        "grace": 0.3,
        **overrides,
    }
    return CommandSpec(**settings)


def invocations(record: Path) -> list[dict[str, Any]]:
    """How the fake CLIs were started: one ``{argv, cwd, prompt}`` per run."""
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def request(
    content: str,
    *,
    options: dict[str, Any] | None = None,
    resume_id: str | None = None,
    history: list[Turn] | None = None,
) -> ProviderRequest:
    return ProviderRequest("session-1", "run-1", content, options or {}, resume_id, history or [])


async def collect(provider: Provider, req: ProviderRequest) -> list[Item]:
    """Every event of one stream, closing it properly."""
    with anyio.fail_after(30):
        async with aclosing(provider.stream(req)) as stream:  # type: ignore[type-var]
            return [item async for item in each_item(stream)]


def kinds(items: list[Item]) -> list[str]:
    return [kind for kind, _ in items]


def of_kind(items: list[Item], kind: str) -> list[dict[str, Any]]:
    return [data for k, data in items if k == kind]


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (PID 1 here may never reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != b"Z"


def pids_from(items: list[Item]) -> tuple[int, int]:
    """The ``pids <child> <grandchild>`` a fake announced in a text event."""
    for data in of_kind(items, "text"):
        if data["text"].startswith("pids "):
            _, child, grandchild = data["text"].split()
            return int(child), int(grandchild)
    raise AssertionError(f"no pids in {items}")


class FakeConversationStore(NullPersistence):
    """A registry store (no history replay) that is also a providers ConversationStore.

    It keeps the last provider session id recorded per session, and rebuilds turns from the
    events of completed runs the way the SQLite store does.
    """

    def __init__(self) -> None:
        self.provider_ids: dict[str, str] = {}
        self.forks: dict[str, ForkOrigin] = {}
        self.recorded: list[tuple[str, str, str]] = []
        self.events: dict[str, list[Event]] = defaultdict(list)
        self.resume_calls: list[str] = []

    def provider_session(self, session_id: str, run_id: str, provider_session_id: str) -> None:
        self.recorded.append((session_id, run_id, provider_session_id))
        self.provider_ids[session_id] = provider_session_id

    def append(self, event: Event) -> None:
        self.events[event.session_id].append(event)

    async def resume_id(self, session_id: str) -> str | None:
        self.resume_calls.append(session_id)
        return self.provider_ids.get(session_id)

    async def fork_origin(self, session_id: str) -> ForkOrigin | None:
        return self.forks.get(session_id)

    async def turns(self, session_id: str) -> list[Turn]:
        finished = {e.run_id for e in self.events[session_id] if e.kind == "complete"}
        turns: list[Turn] = []
        texts: dict[str, list[str]] = defaultdict(list)
        order: list[str] = []
        for event in self.events[session_id]:
            if event.run_id not in finished:
                continue
            if event.kind == "user_message":
                order.append(event.run_id)
                turns.append(Turn("user", event.data["content"]))
            elif event.kind == "text":
                texts[event.run_id].append(event.data["text"])
            elif event.kind == "complete" and texts[event.run_id]:
                turns.append(Turn("assistant", "\n".join(texts[event.run_id])))
        return turns


async def run_turn(
    registry: MemoryRegistry,
    provider: Provider,
    session_id: str,
    content: str,
    *,
    store: ConversationStore | None,
    options: dict[str, Any] | None = None,
    until: str = "complete",
) -> list[Event]:
    """Start one run through the registry and return its events once ``until`` arrives."""
    source = make_source(provider, options=options or {}, store=store)
    started = await registry.start(
        session_id, owner=OWNER, content=content, provider=provider.name, source=source
    )
    return await events_until(registry, session_id, started.run_id, until)


async def events_until(
    registry: MemoryRegistry, session_id: str, run_id: str, until: str = "complete"
) -> list[Event]:
    sub = await registry.subscribe(session_id, owner=OWNER, run_id=run_id)
    events: list[Event] = []
    try:
        with anyio.fail_after(30):
            while not any(e.kind == until for e in events):
                events.extend(e for e in await sub.next_batch() if e.run_id == run_id)
    finally:
        sub.close()
    return events


def frames(events: list[Event]) -> str:
    """Everything these events would put on the wire."""
    return "\n".join(event.frame() for event in events)
