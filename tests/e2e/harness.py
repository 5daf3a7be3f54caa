"""The e2e harness: `runwire serve` as a real subprocess on a loopback port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("RUNWIRE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKENS = {"alice": "tokA", "bob": "tokB"}
START_TIMEOUT = 30.0  # seconds for the server to print that it serves


def _runwire_command() -> list[str]:
    script = Path(sys.executable).with_name("runwire")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from gateway.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """`runwire serve` on a loopback port and a SQLite file; killable and restartable."""

    def __init__(self, db: Path, log: Path, *extra: str) -> None:
        self.db = db
        self.log = log
        self.extra = extra
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page_url(self, user: str = "alice", fragment: str = "") -> str:
        return f"{self.base}/?token={TOKENS[user]}{fragment}"

    def start(self) -> None:
        """Start the server and return once it prints that it is serving."""
        args = [
            *_runwire_command(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db",
            str(self.db),
            "--shutdown-grace",
            "1",
            *self.extra,
        ]
        for user, token in TOKENS.items():
            args += ["--token", f"{token}:{user}"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.proc = proc
        serving = threading.Event()
        threading.Thread(target=self._pump, args=(proc, serving), daemon=True).start()
        if not serving.wait(START_TIMEOUT) or proc.poll() is not None:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"runwire serve did not come up:\n{self.log.read_text()}")

    def _pump(self, proc: subprocess.Popen[bytes], serving: threading.Event) -> None:
        """Copy the server's output to the log file; flag the line announcing it serves."""
        assert proc.stdout is not None
        with self.log.open("ab") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if line.startswith(b"runwire: serving on "):
                    serving.set()
        serving.set()  # exited: start() looks at the exit status

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as in a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def api(self, path: str, user: str = "alice", body: dict[str, Any] | None = None) -> Any:
        """GET ``path`` as ``user``, or POST ``body`` to it."""
        headers = {"Authorization": f"Bearer {TOKENS[user]}", "Content-Type": "application/json"}
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read())


def save_screenshot(page: Any, tmp_path: Path, name: str, *, readme: bool = False) -> Path:
    """Save a screenshot under tmp_path; with RUNWIRE_UPDATE_SCREENSHOT=1 also for the README."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    if readme and os.environ.get("RUNWIRE_UPDATE_SCREENSHOT") == "1":
        docs = Path(__file__).resolve().parents[2] / "docs" / "screenshot.png"
        shutil.copyfile(path, docs)
    return path
