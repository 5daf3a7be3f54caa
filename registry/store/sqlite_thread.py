"""The SQLite writer's connection, on a thread of its own that the event loop hands work to.

The ``sqlite3`` module lets go of the GIL while SQLite works, so the writer's thread can
write a batch while the event loop goes on publishing and delivering. But the thread needs
the GIL to *take* a job, and a busy event loop lets go of the GIL and takes it back many
times a millisecond (every poll of its sockets): each time, the waiting thread is woken
only to find the GIL taken again, so it may wait until the loop runs out of work. The
writer would then write only while the loop waits for it, and the two would take turns
instead of working side by side.

So :meth:`WriterConnection.call` hands over: after queuing a job it holds the event loop,
for the fraction of a millisecond the thread takes to wake, until the thread has taken the
job. SQLite then works on the writer's thread while the loop goes on. (aiosqlite, which the
store's other connections use, has no such handover.)

Giving the GIL back is the other half: the thread takes it again after each statement, so a
job should be one statement where it can (see ``sqlite_writer``'s bulk insert).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Longest the event loop is held while the thread takes a job (it normally takes ~0.1 ms;
# this only bounds a thread that is stuck, or a machine that is overloaded).
_HANDOVER = 0.002


class _Job:
    __slots__ = ("fn", "future", "taken")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]
    ) -> None:
        self.fn = fn
        self.future = future
        self.taken = threading.Event()


class WriterConnection:
    """One ``sqlite3`` connection, confined to its own thread; :meth:`call` runs a function
    on it. Jobs run one at a time, in the order they were queued."""

    def __init__(self, path: str, setup: Callable[[sqlite3.Connection], None]) -> None:
        self.path = path
        self._setup = setup
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._work, name="runwire-sqlite-writer", daemon=True
        )
        self._closed = False

    @classmethod
    async def open(cls, path: str, setup: Callable[[sqlite3.Connection], None]) -> WriterConnection:
        """Connect to ``path`` (autocommit) on a new thread and run ``setup`` there.
        Raises what connecting or ``setup`` raised."""
        connection = cls(path, setup)
        connection._thread.start()
        try:
            await connection.call(lambda conn: None)
        except BaseException:
            await connection.close()
            raise
        return connection

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the thread and return what it returns (or raise what
        it raised). Cancelling the caller does not stop a job the thread has taken."""
        if self._closed:
            raise sqlite3.ProgrammingError(f"{self.path}: the connection is closed")
        job = _Job(fn, asyncio.get_running_loop().create_future())
        self._jobs.put(job)
        job.taken.wait(_HANDOVER)
        result: T = await job.future
        return result

    async def execute(self, statement: str, params: Any = ()) -> int:
        """One statement; returns its row count."""
        return await self.call(lambda conn: conn.execute(statement, params).rowcount)

    async def fetch(self, query: str, params: Any = ()) -> list[Any]:
        """The rows of a query."""
        return await self.call(lambda conn: conn.execute(query, params).fetchall())

    async def close(self) -> None:
        """Close the connection once the jobs queued before are done, and end the thread."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        # Joining blocks: wait for the thread's last job without holding the loop.
        await asyncio.to_thread(self._thread.join)

    def _work(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
        except Exception as exc:
            self._fail_all(exc)
            return
        try:
            self._setup(conn)
        except Exception as exc:
            conn.close()
            self._fail_all(exc)
            return
        try:
            while (job := self._jobs.get()) is not None:
                job.taken.set()
                try:
                    result = job.fn(conn)
                except BaseException as exc:
                    _settle(job.future, None, exc)
                else:
                    _settle(job.future, result, None)
        finally:
            conn.close()

    def _fail_all(self, error: BaseException) -> None:
        """The connection could not be made: every job, now and later, fails with why."""
        while (job := self._jobs.get()) is not None:
            job.taken.set()
            _settle(job.future, None, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Resolve ``future`` from the thread, on its loop (unless the loop is gone)."""

    def resolve() -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    # A closed loop raises RuntimeError: nobody is waiting any more.
    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(resolve)
