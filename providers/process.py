"""Running a command in its own process group, and stopping everything it started.

The command runs in a new session (``start_new_session``), so it and every process it
spawns share one process group. Stopping sends ``SIGTERM`` to the whole group, waits up to
a grace period, then sends ``SIGKILL``. Stopping runs shielded from cancellation, with a
bound, so an abort (which is a cancellation) really cleans up.

The prompt is handed over on stdin from an anonymous temporary file and stderr goes to
another one: neither can fill a pipe and stall the command while its stdout is read, and
no task is needed to feed or drain them.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from subprocess import PIPE
from typing import IO

import anyio
import anyio.abc
import anyio.to_thread

log = logging.getLogger("runwire.providers.process")

# How often a stopping group is checked for members that outlived its leader.
_POLL = 0.02
# How long, at most, SIGKILLed members of a group are waited for.
_KILL_WAIT = 1.0


class GroupProcess:
    """A running command and its process group. Made by :func:`open_group`."""

    def __init__(self, process: anyio.abc.Process, stderr: IO[bytes]) -> None:
        self._process = process
        self._stderr = stderr
        self._stderr_read = 0
        self.pid = process.pid
        self.pgid = process.pid  # a session leader leads its own process group

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream:
        assert self._process.stdout is not None
        return self._process.stdout

    @property
    def returncode(self) -> int | None:
        """The leader's exit status once it has exited (negative: killed by that signal)."""
        return self._process.returncode

    async def wait(self) -> int:
        """Wait for the leader to exit; its exit status."""
        return await self._process.wait()

    def stderr_size(self) -> int:
        """How many bytes the group has written to stderr so far."""
        return os.fstat(self._stderr.fileno()).st_size

    def read_stderr(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of stderr not read before."""
        available = self.stderr_size() - self._stderr_read
        if available <= 0 or limit <= 0:
            return b""
        data = os.pread(self._stderr.fileno(), min(available, limit), self._stderr_read)
        self._stderr_read += len(data)
        return data

    async def stop(self, grace: float) -> None:
        """End the group: ``SIGTERM``, up to ``grace`` seconds, then ``SIGKILL``.

        Also reaps the leader. Does nothing to a group that has already ended.
        """
        if self._process.returncode is None or group_alive(self.pgid):
            _signal_group(self.pgid, signal.SIGTERM)
            with anyio.move_on_after(grace):
                await self._group_gone()
            if self._process.returncode is None or group_alive(self.pgid):
                log.info("process group %d outlived SIGTERM; sending SIGKILL", self.pgid)
                _signal_group(self.pgid, signal.SIGKILL)
                # A killed process dies a moment later, not when kill() returns.
                with anyio.move_on_after(_KILL_WAIT):
                    await self._group_gone()
        await self._process.wait()

    async def _group_gone(self) -> None:
        await self._process.wait()
        await _members_gone(self.pgid)


@asynccontextmanager
async def open_group(
    argv: Sequence[str],
    *,
    stdin: bytes,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    grace: float = 1.0,
) -> AsyncIterator[GroupProcess]:
    """Start ``argv`` in a new process group and stop the whole group on the way out.

    The way out, normal or by cancellation, sends the group ``SIGTERM`` then ``SIGKILL``
    after ``grace`` seconds if anything is still running. Raises :class:`OSError` when the
    command cannot be started.
    """
    with tempfile.TemporaryFile() as stderr_file:
        # The child gets its own copy of the stdin file; ours is closed once it started.
        # Shielded: a cancellation must not lose the handle of a process already spawned.
        with (
            await anyio.to_thread.run_sync(_spool, stdin) as stdin_file,
            anyio.CancelScope(shield=True),
        ):
            process = await anyio.open_process(
                list(argv),
                stdin=stdin_file,
                stdout=PIPE,
                stderr=stderr_file,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        group = GroupProcess(process, stderr_file)
        try:
            yield group
        finally:
            # Shielded: this also runs when the run is aborted (cancelled), and must finish.
            with anyio.move_on_after(grace + _KILL_WAIT + 1.0, shield=True):
                await group.stop(grace)
                await process.aclose()


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count).

    Zombies matter because a killed grandchild is reparented to PID 1, which may never reap
    it; signalling the group would still succeed then.
    """
    if not _group_signalable(pgid):
        return False  # no member at all, not even a zombie: the common case, one syscall
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue  # it ended while we looked
        # After the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


async def _members_gone(pgid: int) -> None:
    """Return once no process of the group is running.

    Polled: the members other than the leader are not our children, so there is nothing
    to wait on.
    """
    while True:
        if not group_alive(pgid):
            return
        await anyio.sleep(_POLL)


def exit_status(returncode: int) -> int:
    """A process exit status as a shell reports it: 128 + N when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _group_signalable(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # already gone
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)


def _spool(data: bytes) -> IO[bytes]:
    """An anonymous temporary file holding ``data``, positioned at its start."""
    spooled = tempfile.TemporaryFile()  # noqa: SIM115 (the caller closes it)
    spooled.write(data)
    spooled.flush()
    spooled.seek(0)
    return spooled
