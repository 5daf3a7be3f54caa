"""The ``echo`` provider: deterministic, for demos, tests and benchmarks.

It streams the prompt back as ``text_delta`` chunks, then the whole reply as one ``text``,
then ``complete``. It gives every conversation a provider session id and counts the turns
of each, so resuming a session is visible end to end: the reply ends with ``(turn N)``. A
fork's first run starts a new conversation that carries the count of its source's turns.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel

from registry import SESSION_CREATED

from .base import Burst, Item, ProviderRequest
from .options import (
    bool_option,
    int_option,
    number_option,
    optional_int_option,
    refuse_unknown,
    str_option,
)

DEFAULT_CHUNKS = 20
DEFAULT_DELAY_MS = 20.0
MAX_CHUNKS = 100_000
MAX_CHUNK_LENGTH = 10_000
MAX_DELAY_MS = 60_000.0
# The whole reply is held in memory and sent as one `text` event: keep it reasonable.
MAX_REPLY_LENGTH = 1_000_000

# Chunks published together when there is no delay between them.
BURST = 64

_KNOWN = frozenset(("chunks", "delay_ms", "chunk", "tool", "fail_after", "hang", "extra_complete"))


class EchoOptions(NamedTuple):
    """The echo provider's options, checked."""

    chunks: int = DEFAULT_CHUNKS
    """How many ``text_delta`` events."""
    delay_ms: float = DEFAULT_DELAY_MS
    """Time from one chunk to the next; 0 still yields to the event loop (every ``BURST``
    chunks)."""
    chunk: str | None = None
    """The text of every chunk; by default the reply is the prompt, cut into ``chunks``."""
    tool: bool = False
    """Emit one ``tool_use`` / ``tool_result`` pair midway."""
    fail_after: int | None = None
    """Raise after that many chunks."""
    hang: bool = False
    """After the chunks, never finish until aborted."""
    extra_complete: bool = False
    """Emit a second ``complete`` after the first (the registry must drop it)."""

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> EchoOptions:
        """Check client options; :class:`ValueError` names the first bad one."""
        refuse_unknown("echo", options, _KNOWN)
        chunks = int_option(options, "chunks", DEFAULT_CHUNKS, minimum=0, maximum=MAX_CHUNKS)
        delay = number_option(
            options, "delay_ms", DEFAULT_DELAY_MS, minimum=0, maximum=MAX_DELAY_MS
        )
        chunk = str_option(options, "chunk", min_length=1, max_length=MAX_CHUNK_LENGTH)
        if chunk is not None and len(chunk) * chunks > MAX_REPLY_LENGTH:
            raise ValueError(
                f"options.chunk: chunks x chunk length must be at most {MAX_REPLY_LENGTH}"
            )
        return cls(
            chunks=chunks,
            delay_ms=DEFAULT_DELAY_MS if delay is None else delay,
            chunk=chunk,
            tool=bool_option(options, "tool"),
            fail_after=optional_int_option(options, "fail_after", minimum=0, maximum=MAX_CHUNKS),
            hang=bool_option(options, "hang"),
            extra_complete=bool_option(options, "extra_complete"),
        )


class EchoFailure(RuntimeError):
    """The failure ``fail_after`` asks for."""


class EchoProvider:
    """Echoes the prompt. Turn counts live on the instance, one per provider session.

    ``max_sessions`` bounds that state: the least recently used conversation is forgotten
    first (resuming a forgotten one counts from 1 again).
    """

    wants_history = False

    def __init__(self, *, name: str = "echo", max_sessions: int = 10_000) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.name = name
        self.max_sessions = max_sessions
        self._turns: OrderedDict[str, int] = OrderedDict()

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise :class:`ValueError` naming the first bad option."""
        EchoOptions.parse(options)

    def turns(self, provider_session_id: str) -> int:
        """How many turns the provider session has had (0 if unknown)."""
        return self._turns.get(provider_session_id, 0)

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[Item | Burst, None]:
        """Echo ``request.content``; see :class:`EchoOptions` for the knobs."""
        options = EchoOptions.parse(request.options)
        carried = request.fork.turns if request.fork is not None else 0
        provider_session_id, turn = self._next_turn(request.resume_id, carried)
        yield SESSION_CREATED, {"provider_session_id": provider_session_id}

        if options.chunk is not None:
            pieces = [options.chunk] * options.chunks
        else:
            pieces = _cut(f"{request.content} (turn {turn})", options.chunks)
        # The tool pair goes in just before the middle chunk (nowhere without ``tool``).
        midway = len(pieces) // 2 if options.tool else -1
        delay = options.delay_ms / 1000
        fail_after = options.fail_after
        count = len(pieces) if fail_after is None else min(fail_after, len(pieces))
        # Chunks between two pauses go out as one burst: with no delay, up to BURST of them
        # between scheduling points (so a fast run neither starves the loop nor dodges an
        # abort, and subscribers get events in batches, as from a provider whose output
        # arrives in bursts); with a delay, each chunk alone.
        size = 1 if delay > 0 else BURST
        pacer: Pacer | None = None
        burst: Burst = []
        for start in range(0, count, size):
            if start:
                yield burst
                if delay > 0:
                    if pacer is None:
                        pacer = Pacer(delay, anyio.current_time())
                    await anyio.sleep(pacer.wait(anyio.current_time()))
                else:
                    await anyio.lowlevel.checkpoint()
            end = min(start + size, count)
            burst = [("text_delta", {"text": piece}) for piece in pieces[start:end]]
            if start <= midway < end:
                burst[midway - start : midway - start] = _tool_pair(request.content)
        if fail_after is not None:
            if burst:
                yield burst
            raise EchoFailure(f"echo failed after {count} chunks, as asked (fail_after)")
        if options.tool and not pieces:
            burst.extend(_tool_pair(request.content))
        if options.hang:
            if burst:
                yield burst
                burst = []
            await anyio.sleep_forever()

        done = {"reason": "done", "exit_code": 0, "success": True, "turn": turn}
        burst.append(("text", {"text": "".join(pieces)}))
        burst.append(("complete", done))
        yield burst
        if options.extra_complete:
            yield "complete", {**done, "extra": True}

    def _next_turn(self, resume_id: str | None, carried: int) -> tuple[str, int]:
        """The conversation to continue and its turn number; a new conversation starts
        after ``carried`` turns (those a fork holds from its source)."""
        provider_session_id = resume_id or f"echo-{uuid.uuid4().hex}"
        turn = self._turns.pop(provider_session_id, 0 if resume_id else carried) + 1
        self._turns[provider_session_id] = turn
        while len(self._turns) > self.max_sessions:
            self._turns.popitem(last=False)
        return provider_session_id, turn


class Pacer:
    """When each step of a series ``interval`` seconds apart is due.

    Sleeping *until* each step, rather than *for* the interval after the last one, keeps the
    rate exact: the event loop rounds a sleep to its timer's resolution (1 ms) and the work
    between sleeps takes time too, which would otherwise add up step after step.
    """

    def __init__(self, interval: float, start: float) -> None:
        self.interval = interval
        self._due = start

    def wait(self, now: float) -> float:
        """Seconds to sleep, from ``now``, until the next step is due (0 if it is past).

        A step more than an interval late (a stalled loop, say) starts the schedule again
        from ``now`` rather than making up for the missed steps in a burst.
        """
        due = self._due + self.interval
        if now - due > self.interval:
            due = now
        self._due = due
        return max(0.0, due - now)


def _cut(text: str, parts: int) -> list[str]:
    """``text`` in ``parts`` consecutive pieces of nearly equal length."""
    size = len(text)
    return [text[size * i // parts : size * (i + 1) // parts] for i in range(parts)]


def _tool_pair(content: str) -> list[Item]:
    tool_id = "echo-tool-1"
    return [
        ("tool_use", {"tool_id": tool_id, "name": "echo", "input": {"text": content}}),
        ("tool_result", {"tool_id": tool_id, "content": content, "is_error": False}),
    ]
