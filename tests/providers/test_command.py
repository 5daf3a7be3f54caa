"""The command provider against fake CLIs run as real subprocesses."""

from __future__ import annotations

import sys
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest

from providers import CommandProvider, CommandSpec, EchoProvider, ProviderRegistry
from providers.base import Item
from providers.cli_formats import FormatName
from registry import MemoryRegistry

from .helpers import (
    FakeConversationStore,
    alive,
    collect,
    events_until,
    fake_spec,
    frames,
    invocations,
    kinds,
    of_kind,
    pids_from,
    request,
    run_turn,
)

FORMATS: list[FormatName] = ["claude", "codex", "gemini"]


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "record.jsonl"


@pytest.mark.parametrize("fmt", FORMATS)
async def test_each_format_runs_and_completes(fmt: FormatName, record: Path) -> None:
    provider = CommandProvider(fake_spec(fmt, record))
    items = await collect(provider, request("what's in here?"))

    assert kinds(items)[0] == "session_created"
    assert of_kind(items, "text")[-1] == {"text": "You said: what's in here? (new conversation)"}
    assert "tool_use" in kinds(items)
    assert "tool_result" in kinds(items)
    assert "error" not in kinds(items)[:-1] or fmt == "codex"  # codex records an error item
    assert kinds(items)[-1] == "complete"
    complete = items[-1][1]
    assert complete["exit_code"] == 0
    assert complete["success"] is True
    assert complete["reason"] == "done"
    assert "usage" in complete
    # The prompt went over stdin, never into argv.
    (started,) = invocations(record)
    assert started["prompt"] == "what's in here?"
    assert all("what's in here?" not in arg for arg in started["argv"])


async def test_claude_reports_cost_and_duration(record: Path) -> None:
    items = await collect(CommandProvider(fake_spec("claude", record)), request("hi"))
    complete = items[-1][1]
    assert complete["cost_usd"] == 0.0123455
    assert complete["duration_ms"] == 5012


async def test_streamed_claude_deltas(record: Path) -> None:
    items = await collect(CommandProvider(fake_spec("claude", record)), request("scenario:partial"))
    assert kinds(items) == ["session_created", "text_delta", "text_delta", "text", "complete"]


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("claude", "Invalid API key · Please run /login"),
        ("codex", "stream error: unexpected status 401 Unauthorized"),
        ("gemini", "Reached max session turns for this session."),
    ],
)
async def test_a_reported_failure_ends_with_an_error_complete(
    fmt: FormatName, message: str, record: Path
) -> None:
    items = await collect(CommandProvider(fake_spec(fmt, record)), request("scenario:error"))
    complete = items[-1][1]
    assert kinds(items).count("complete") == 1
    assert complete["exit_code"] == 1
    assert complete["success"] is False
    assert complete["reason"] == "error"
    assert complete["error"] == message


async def test_a_non_zero_exit_is_the_complete_exit_code(record: Path) -> None:
    provider = CommandProvider(fake_spec("codex", record))
    items = await collect(provider, request("scenario:exit 3"))
    complete = items[-1][1]
    assert complete["exit_code"] == 3
    assert complete["success"] is False
    assert complete["reason"] == "error"
    assert complete["error"] == "codex exited with code 3: fatal: something broke"
    assert {"message": "fatal: something broke", "source": "stderr"} in of_kind(items, "error")


async def test_noise_never_fails_the_run(record: Path) -> None:
    spec = fake_spec("claude", record, max_line_bytes=64 << 10, max_stderr_bytes=4096)
    items = await collect(CommandProvider(spec), request("scenario:noise"))

    errors = [data["message"] for data in of_kind(items, "error")]
    assert "warning: first noise line" in errors
    assert "warning: second noise line" in errors
    assert "claude: output is not JSON: this is not JSON at all" in errors
    assert "claude: output nested too deeply to read" in errors
    # The 5 MB line: 23 bytes of JSON, 80 x 64 KiB of "x", 2 more bytes.
    skipped = f"claude: skipped an output line of {80 * 65536 + 25} bytes (limit 65536)"
    assert skipped in errors
    # stderr is bounded: the 40 kB line is cut to the budget and the rest is counted.
    stderr = [d["message"] for d in of_kind(items, "error") if d.get("source") == "stderr"]
    assert sum(len(m) for m in stderr) < 8000
    assert any("more bytes not shown (limit 4096)" in m for m in stderr)
    # The run went on: tools, the reply, and the partial last line (the result) were read.
    assert "tool_result" in kinds(items)
    assert of_kind(items, "text")[-1]["text"].startswith("You said: scenario:noise")
    complete = items[-1][1]
    assert complete["success"] is True
    assert complete["cost_usd"] == 0.0123455


async def test_cwd_and_environment_come_from_the_spec(record: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    spec = fake_spec("gemini", record, cwd=str(workdir))
    await collect(CommandProvider(spec), request("hi"))
    (started,) = invocations(record)
    assert started["cwd"] == str(workdir)


async def test_without_inherited_environment_only_the_spec_env_is_passed(tmp_path: Path) -> None:
    script = tmp_path / "env_dump.py"
    script.write_text(
        "import json, os, sys\n"
        "sys.stdin.read()\n"
        "print(json.dumps({'type': 'assistant', 'message': {'content': "
        "[{'type': 'text', 'text': ','.join(sorted(os.environ))}]}}))\n"
    )
    spec = CommandSpec(
        format="claude",
        executable=sys.executable,
        args=(str(script),),
        env={"ONLY_THIS": "1"},
        inherit_env=False,
    )
    items = await collect(CommandProvider(spec), request("hi"))
    names = set(of_kind(items, "text")[0]["text"].split(","))
    assert "ONLY_THIS" in names
    assert "PATH" not in names


async def test_knobs_are_the_only_options(record: Path) -> None:
    spec = fake_spec(
        "codex", record, knobs={"model": {"fast": ("--model", "o4-mini"), "deep": ("-m", "o3")}}
    )
    provider = CommandProvider(spec)
    await collect(provider, request("hi", options={"model": "fast"}))
    argv = invocations(record)[0]["argv"]
    assert argv[-4:] == ["--json", "--model", "o4-mini", "-"]

    with pytest.raises(ValueError, match=r"options\.model must be one of: deep, fast"):
        provider.check_options({"model": "gpt-5"})
    with pytest.raises(ValueError, match=r"options\.executable: unknown option"):
        provider.check_options({"executable": "/bin/sh"})
    with pytest.raises(ValueError, match=r"options\.chunks: unknown option"):
        CommandProvider(fake_spec("claude", record)).check_options({"chunks": 3})


async def test_a_missing_executable_is_an_error_complete(tmp_path: Path) -> None:
    spec = CommandSpec(format="claude", executable=str(tmp_path / "no-such-cli"))
    items = await collect(CommandProvider(spec), request("hi"))
    assert kinds(items) == ["complete"]
    complete = items[0][1]
    assert complete["exit_code"] == 127
    assert complete["reason"] == "error"
    assert "cannot start the command" in complete["error"]


async def test_provider_session_ids_are_masked_in_output(record: Path) -> None:
    items = await collect(CommandProvider(fake_spec("claude", record)), request("scenario:leak"))
    session = of_kind(items, "session_created")[0]["provider_session_id"]
    rest = [item for item in items if item[0] != "session_created"]
    assert session not in repr(rest)
    assert {"text": "my session is [provider-session]"} in of_kind(items, "text")
    assert {"message": "debug: session [provider-session]", "source": "stderr"} in of_kind(
        items, "error"
    )


async def stream_until_pids(provider: CommandProvider, content: str) -> tuple[int, int]:
    """Start a run, read until the fake announces its pids, then cancel it."""
    items: list[Item] = []
    with anyio.fail_after(20):
        with anyio.CancelScope() as scope:
            async with aclosing(provider.stream(request(content))) as stream:
                async for item in stream:
                    items.append(item)
                    if item[0] == "text" and item[1]["text"].startswith("pids "):
                        child, grandchild = pids_from(items)
                        assert alive(child)
                        assert alive(grandchild)
                        scope.cancel()
    assert scope.cancelled_caught
    assert "complete" not in kinds(items)
    return pids_from(items)


@pytest.mark.parametrize("scenario", ["hang", "stubborn"])
async def test_cancelling_kills_the_child_and_its_grandchild(record: Path, scenario: str) -> None:
    provider = CommandProvider(fake_spec("claude", record, grace=0.2))
    child, grandchild = await stream_until_pids(provider, f"scenario:{scenario}")
    # The cleanup ran, shielded, before the cancelled stream returned.
    assert not alive(child)
    assert not alive(grandchild)


async def test_a_leftover_grandchild_holding_stdout_does_not_hang_the_run(record: Path) -> None:
    items = await collect(
        CommandProvider(fake_spec("gemini", record, grace=0.2)), request("scenario:orphan")
    )
    child, grandchild = pids_from(items)
    assert items[-1][0] == "complete"
    assert items[-1][1]["exit_code"] == 0
    assert not alive(child)
    assert not alive(grandchild)


async def test_abort_through_the_registry_leaves_no_process(record: Path) -> None:
    provider = CommandProvider(fake_spec("codex", record, grace=0.2))
    async with MemoryRegistry() as registry:
        store = FakeConversationStore()
        events = await run_turn(
            registry, provider, "s1", "scenario:stubborn", store=store, until="text"
        )
        (text,) = [e for e in events if e.kind == "text"]
        _, child, grandchild = text.data["text"].split()
        assert registry.abort("s1") is not None
        events = await events_until(registry, "s1", events[0].run_id)
    # Leaving the registry waits for its tasks, so the shielded cleanup has finished.
    assert not alive(int(child))
    assert not alive(int(grandchild))
    completes = [e for e in events if e.kind == "complete"]
    assert len(completes) == 1
    assert completes[0].data["reason"] == "aborted"


@pytest.mark.parametrize("fmt", FORMATS)
async def test_resume_end_to_end(fmt: FormatName, record: Path) -> None:
    store = FakeConversationStore()
    provider = CommandProvider(fake_spec(fmt, record))
    providers = ProviderRegistry([EchoProvider(), provider])
    async with MemoryRegistry(store=store) as registry:
        chosen = providers.get(fmt)
        first = await run_turn(registry, chosen, "s1", "first", store=store)
        second = await run_turn(registry, chosen, "s1", "second", store=store)

    provider_id = store.provider_ids["s1"]
    first_argv, second_argv = (run["argv"] for run in invocations(record))
    resume = ["resume", provider_id] if fmt == "codex" else ["--resume", provider_id]
    assert not set(resume) & set(first_argv)
    assert second_argv[-len(resume) - (fmt == "codex") :][: len(resume)] == resume
    assert [e.data for e in second if e.kind == "text"][-1] == {
        "text": "You said: second (resumed conversation)"
    }
    assert provider_id not in frames(first + second)
    assert second[-1].kind == "complete"
    assert second[-1].data["success"] is True
