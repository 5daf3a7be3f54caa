"""The shared body of the fake agent CLIs.

Each fake parses its argv like the real CLI (for the resume id), reads the prompt from
stdin, records how it was started (argv, cwd) in the file named by ``FAKE_RECORD`` (an
environment variable the test puts in the server-side command spec) and prints a recording
of the real CLI's output. A prompt starting with ``scenario:NAME`` picks a misbehaviour.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

RECORDINGS = Path(__file__).parent / "recordings"
SLEEPER = [sys.executable, "-c", "import time\nwhile True: time.sleep(60)"]
STUBBORN_SLEEPER = [
    sys.executable,
    "-c",
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "while True: time.sleep(60)",
]


def resume_id(fmt: str, argv: list[str]) -> str | None:
    flag = "resume" if fmt == "codex" else "--resume"
    if flag in argv:
        return argv[argv.index(flag) + 1]
    return None


def recording(name: str, values: dict[str, str]) -> list[str]:
    lines = (RECORDINGS / f"{name}.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        for key, value in values.items():
            line = line.replace("{{" + key + "}}", json.dumps(value)[1:-1])
        out.append(line)
    return out


def text_line(fmt: str, text: str) -> str:
    if fmt == "claude":
        message = {"role": "assistant", "content": [{"type": "text", "text": text}]}
        return json.dumps({"type": "assistant", "message": message, "session_id": "x"})
    if fmt == "codex":
        item = {"id": "item_9", "type": "agent_message", "text": text}
        return json.dumps({"type": "item.completed", "item": item})
    return json.dumps({"type": "message", "role": "assistant", "content": text})


def out(line: str, end: str = "\n") -> None:
    sys.stdout.write(line + end)
    sys.stdout.flush()


def main(fmt: str) -> None:
    argv = sys.argv[1:]
    prompt = sys.stdin.read()
    record = os.environ.get("FAKE_RECORD")
    if record:
        with open(record, "a") as file:
            file.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "prompt": prompt}) + "\n")
    resumed = resume_id(fmt, argv)
    forked = "--fork-session" in argv
    # Like claude's --fork-session: the resumed conversation continues under a new id.
    session = str(uuid.uuid4()) if forked or not resumed else resumed
    mode = (
        "forked conversation"
        if forked
        else "resumed conversation"
        if resumed
        else "new conversation"
    )
    values = {"session": session, "prompt": prompt, "mode": mode}
    words = prompt.split()
    scenario = (
        words[0].removeprefix("scenario:") if words and words[0].startswith("scenario:") else ""
    )
    lines = recording(fmt, values)

    if scenario == "":
        for line in lines:
            out(line)
    elif scenario == "partial":
        for line in recording(f"{fmt}-partial", values):
            out(line)
    elif scenario == "error":
        for line in recording(f"{fmt}-error", values):
            out(line)
        sys.exit(1)
    elif scenario == "exit":
        out(lines[0])
        sys.stderr.write("fatal: something broke\n")
        sys.exit(int(words[1]))
    elif scenario == "noise":
        sys.stderr.write("warning: first noise line\n")
        sys.stderr.flush()
        out(lines[0])
        out("this is not JSON at all")
        out("[" * 20000 + "]" * 20000)  # JSON, nested past any recursion limit
        # A line of 5 MB, written in pieces.
        sys.stdout.write('{"type":"junk","data":"')
        for _ in range(80):
            sys.stdout.write("x" * 65536)
        out('"}')
        sys.stderr.write("warning: second noise line\n" + "e" * 40000 + "\n")
        sys.stderr.flush()
        for line in lines[1:-1]:
            out(line)
        out(lines[-1], end="")  # a partial last line: no newline
    elif scenario == "leak":
        out(lines[0])
        out(text_line(fmt, f"my session is {session}"))
        sys.stderr.write(f"debug: session {session}\n")
    elif scenario in ("hang", "stubborn"):
        sleeper = SLEEPER
        if scenario == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            sleeper = STUBBORN_SLEEPER
        child = subprocess.Popen(sleeper, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        out(lines[0])
        out(text_line(fmt, f"pids {os.getpid()} {child.pid}"))
        while True:
            time.sleep(60)
    elif scenario == "orphan":
        # A grandchild that keeps stdout open after this process exits.
        child = subprocess.Popen(SLEEPER, stdin=subprocess.DEVNULL)
        for line in lines:
            out(line)
        out(text_line(fmt, f"pids {os.getpid()} {child.pid}"))
    else:
        sys.stderr.write(f"unknown scenario {scenario}\n")
        sys.exit(2)
