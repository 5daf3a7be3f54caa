"""The ``command`` provider: an agent CLI run as a subprocess that prints JSON lines.

What runs is fixed by the server's :class:`~providers.config.CommandSpec`; a client only
sends the prompt (on the command's stdin, never in its argv) and may pick among the knobs
the spec lists. The output is read line by line with a bound on line length; stderr, lines
that are not JSON and lines over the bound become ``error`` events and the run goes on. The
run ends with the provider's own ``complete`` carrying the command's exit status.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncGenerator, Mapping
from contextlib import AsyncExitStack, aclosing
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from registry import SESSION_CREATED

from .base import Item, ProviderRequest, with_summary
from .cli_formats import Ending, LineParser
from .lines import Line, LineReader, Oversized
from .options import choice_option, refuse_unknown
from .process import GroupProcess, exit_status, open_group

if TYPE_CHECKING:
    from .config import CommandSpec

log = logging.getLogger("runwire.providers.command")

# How often a quiet command is looked at: for stderr, and for a leader that has exited
# while something it started still holds its stdout open.
_TICK = 0.25
# Longest text taken from one stderr or non-JSON line into an event.
_PREVIEW = 1000
# Provider session ids are masked in everything the command prints.
_MASK = "[provider-session]"
_MIN_MASKED_ID = 8

_decode = msgspec.json.Decoder().decode


def _continuation(request: ProviderRequest, *, can_fork: bool) -> tuple[str | None, bool, str]:
    """The resume id, whether to fork it, and the prompt: a fork's first run resumes its
    source's conversation with the CLI's fork option where it can, else starts a new one
    from the fork's summary."""
    origin = request.fork
    if request.resume_id is not None or origin is None:
        return request.resume_id, False, request.content
    if origin.resume_id is not None and can_fork:
        return origin.resume_id, True, request.content
    return None, False, with_summary(origin, request.content)


class CommandProvider:
    """Runs the CLI described by ``spec`` for each run. Its name is ``spec``'s name."""

    wants_history = False

    def __init__(self, spec: CommandSpec) -> None:
        self.spec = spec
        self.name = spec.provider_name

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Only the spec's knobs, with one of their listed values, are accepted."""
        self._knob_args(options)

    def _knob_args(self, options: Mapping[str, Any]) -> list[str]:
        knobs = self.spec.knobs
        refuse_unknown(self.name, options, knobs)
        extra: list[str] = []
        for key, values in knobs.items():
            value = choice_option(options, key, values)
            if value is not None:
                extra.extend(values[value])
        return extra

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[Item, None]:
        """Run the command for one turn and stream its events, then ``complete``."""
        spec = self.spec
        resume_id, fork, content = _continuation(request, can_fork=bool(spec.cli.fork))
        argv = spec.argv(self._knob_args(request.options), resume_id, fork=fork)
        mask = _Mask(resume_id)
        async with AsyncExitStack() as stack:
            try:
                group = await stack.enter_async_context(
                    open_group(
                        argv,
                        stdin=content.encode(),
                        cwd=spec.cwd,
                        env=spec.environment(),
                        grace=spec.grace,
                    )
                )
            except OSError as exc:
                log.warning("provider %s: cannot start %s: %s", self.name, argv[0], exc)
                message = f"{self.name}: cannot start the command: {exc.strerror or exc}"
                yield "complete", _failed(127, message)
                return
            parser = spec.cli.parser()
            stderr = _StderrRelay(group, spec.max_stderr_bytes)
            async with aclosing(self._read(group, parser, stderr, mask)) as items:
                async for item in items:
                    yield mask(item)
            returncode = await group.wait()
            for item in stderr.poll(final=True):
                yield mask(item)
            yield mask(("complete", self._ending(returncode, parser.ending, stderr)))

    async def _read(
        self, group: GroupProcess, parser: LineParser, stderr: _StderrRelay, mask: _Mask
    ) -> AsyncGenerator[Item, None]:
        spec = self.spec
        reader = LineReader(group.stdout, spec.max_line_bytes)
        exited_at: float | None = None
        while True:
            line: Line | None = None
            with anyio.move_on_after(_TICK):
                try:
                    line = await reader.receive()
                except anyio.EndOfStream:
                    break
            if line is not None:
                for item in self._decode(line, parser):
                    yield item
            # stderr waits until the provider session id is known, so that it can be masked
            # there too (CLIs log it), or until the end.
            if mask.known:
                for item in stderr.poll():
                    yield item
            if line is None and group.returncode is not None:
                # The command has exited but something it started keeps its stdout open:
                # give it the grace period, then stop reading (the group is stopped after).
                now = anyio.current_time()
                if exited_at is None:
                    exited_at = now
                elif now - exited_at >= spec.grace:
                    break
        for item in parser.finish():
            yield item

    def _decode(self, line: Line, parser: LineParser) -> list[Item]:
        if isinstance(line, Oversized):
            limit = self.spec.max_line_bytes
            message = f"{self.name}: skipped an output line of {line.size} bytes (limit {limit})"
            return [("error", {"message": message})]
        line = line.strip()
        if not line:
            return []
        try:
            value = _decode(line)
        except msgspec.DecodeError:
            text = _preview(line)
            return [("error", {"message": f"{self.name}: output is not JSON: {text}"})]
        except RecursionError:
            return [("error", {"message": f"{self.name}: output nested too deeply to read"})]
        try:
            return parser.feed(value)
        except Exception as exc:  # a parser bug must not end the run
            log.exception("provider %s: cannot map an output line", self.name)
            return [("error", {"message": f"{self.name}: cannot read an output line: {exc}"})]

    def _ending(self, returncode: int, ending: Ending, stderr: _StderrRelay) -> dict[str, Any]:
        status = exit_status(returncode)
        success = status == 0 and not ending.is_error
        data: dict[str, Any] = {
            **ending.extras,
            "exit_code": status,
            "success": success,
            "reason": "done" if success else "error",
        }
        if not success:
            data["error"] = ending.error or self._exit_message(returncode, stderr.last_line)
        return data

    def _exit_message(self, returncode: int, last_line: str | None) -> str:
        if returncode < 0:
            try:
                how = f"was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with code {returncode}"
        message = f"{self.name} {how}"
        return f"{message}: {last_line}" if last_line else message


class _StderrRelay:
    """Turns the command's stderr into ``error`` events, up to a byte budget per run."""

    def __init__(self, group: GroupProcess, budget: int) -> None:
        self._group = group
        self._budget = budget
        self._read = 0
        self._partial = b""
        self.last_line: str | None = None

    def poll(self, *, final: bool = False) -> list[Item]:
        data = self._group.read_stderr(self._budget - self._read)
        self._read += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = b"" if final else lines.pop()
        events: list[Item] = []
        for raw in lines:
            text = _preview(raw.strip())
            if text:
                self.last_line = text
                events.append(("error", {"message": text, "source": "stderr"}))
        if final:
            hidden = self._group.stderr_size() - self._read
            if hidden > 0:
                message = f"stderr: {hidden} more bytes not shown (limit {self._budget})"
                events.append(("error", {"message": message, "source": "stderr"}))
        return events


class _Mask:
    """Replaces provider session ids in event data, so no event can reveal one."""

    def __init__(self, resume_id: str | None) -> None:
        self._ids: set[str] = set()
        self._add(resume_id)

    @property
    def known(self) -> bool:
        """Whether an id to mask is known yet."""
        return bool(self._ids)

    def _add(self, provider_session_id: Any) -> None:
        if isinstance(provider_session_id, str) and len(provider_session_id) >= _MIN_MASKED_ID:
            self._ids.add(provider_session_id)

    def __call__(self, item: Item) -> Item:
        kind, data = item
        if kind == SESSION_CREATED:
            self._add(data.get("provider_session_id"))
            return item
        if not self._ids:
            return item
        return kind, self._scrub(data)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for provider_session_id in self._ids:
                if provider_session_id in value:
                    value = value.replace(provider_session_id, _MASK)
            return value
        if isinstance(value, dict):
            return {key: self._scrub(inner) for key, inner in value.items()}
        if isinstance(value, list):
            return [self._scrub(inner) for inner in value]
        return value


def _failed(exit_code: int, message: str) -> dict[str, Any]:
    return {"exit_code": exit_code, "success": False, "reason": "error", "error": message}


def _preview(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return text if len(text) <= _PREVIEW else text[:_PREVIEW] + "..."
