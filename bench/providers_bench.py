"""Provider benchmark: what a provider costs per event, and per run.

Run: ``python -m bench.providers_bench``. Prints one JSON object per figure:
``{"name": ..., "value": ..., "unit": ...}``.

- ``echo_events_per_s``: echo (``delay_ms: 0``) driven by the registry through
  ``make_source``, from start until its ``complete`` is published.
- ``cli_lines_per_s``: JSON lines of a Claude Code recording read from a real subprocess and
  mapped to events (line reading, decoding, parsing, masking).
- ``cli_run_overhead_ms``: one whole ``command`` run of a tiny script (spawn, read, exit,
  group cleanup), median.
- ``sse_chunks_per_s``: OpenAI-style server-sent event chunks parsed (no network).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from providers import CommandProvider, CommandSpec, EchoProvider, ProviderRequest, make_source
from providers.openai import _EventStream, _Reply
from registry import MemoryRegistry, RunNotice


def emit(name: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"name": name, "value": round(value, 3), "unit": unit, **extra}), flush=True)


async def echo_rate(chunks: int) -> float:
    async with MemoryRegistry(buffer_size=chunks + 10) as registry:
        source = make_source(EchoProvider(), options={"chunks": chunks, "delay_ms": 0}, store=None)
        finished = anyio.Event()
        registry.listen(
            lambda notice: (
                finished.set()
                if isinstance(notice, RunNotice) and notice.kind == "run_finished"
                else None
            )
        )
        start = time.perf_counter()
        started = await registry.start("s", owner="bench", content="x" * 64, source=source)
        await finished.wait()
        elapsed = time.perf_counter() - start
        summary = registry.get_run(started.run_id)
        assert summary is not None
        return summary.last_seq / elapsed


def _script(directory: Path, lines: int) -> Path:
    assistant = {
        "type": "assistant",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "hello " * 20}]},
        "session_id": "00000000-0000-4000-8000-000000000000",
    }
    script = directory / "cli.py"
    script.write_text(
        "import sys\n"
        "sys.stdin.read()\n"
        f"line = {json.dumps(json.dumps(assistant))} + '\\n'\n"
        f"sys.stdout.write(line * {lines})\n"
    )
    return script


async def cli_rate(lines: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        spec = CommandSpec(
            format="claude", executable=sys.executable, args=(str(_script(Path(directory), lines)),)
        )
        provider = CommandProvider(spec)
        request = ProviderRequest("s", "r", "go", {}, None, [])
        start = time.perf_counter()
        count = 0
        async for kind, _ in provider.stream(request):
            count += kind == "text"
        elapsed = time.perf_counter() - start
        assert count == lines
        return lines / elapsed


async def cli_overhead(runs: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        spec = CommandSpec(
            format="claude", executable=sys.executable, args=(str(_script(Path(directory), 1)),)
        )
        provider = CommandProvider(spec)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            async for _item in provider.stream(ProviderRequest("s", "r", "go", {}, None, [])):
                pass
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000


def sse_rate(chunks: int) -> float:
    event = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hello "}, "finish_reason": None}],
    }
    body = (f"data: {json.dumps(event)}\n\n" * chunks + "data: [DONE]\n\n").encode()
    start = time.perf_counter()
    stream, reply = _EventStream(1 << 20), _Reply("openai")
    for offset in range(0, len(body), 16384):
        for payload in stream.feed(body[offset : offset + 16384]):
            reply.payload(payload)
    reply.finish(None)
    return chunks / (time.perf_counter() - start)


async def main(quick: bool) -> None:
    scale = 10 if quick else 1
    emit("echo_events_per_s", await echo_rate(100_000 // scale), "events/s")
    emit("cli_lines_per_s", await cli_rate(50_000 // scale), "lines/s")
    emit("cli_run_overhead_ms", await cli_overhead(20 // (2 if quick else 1)), "ms")
    emit("sse_chunks_per_s", sse_rate(100_000 // scale), "chunks/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    anyio.run(main, parser.parse_args().quick)
