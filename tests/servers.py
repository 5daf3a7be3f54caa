"""Real Redis and PostgreSQL servers on loopback, started for the tests that need them.

Each starter runs the Debian binary in a private temporary directory on a free port and
returns its URL; nothing is shared with a system-wide service. ``RUNWIRE_TEST_REDIS`` and
``RUNWIRE_TEST_POSTGRES`` name existing servers to use instead. PostgreSQL refuses to run as
root, so as root its cluster is owned by, and run as, the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import asyncpg

READY_WITHIN = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited during startup (code {process.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on port {port} within {READY_WITHIN} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisServer:
    """A ``redis-server`` of the test's own on a fixed loopback port, stopped and started
    again at will: with ``persistent``, an append-only file (fsync on every write) keeps
    its data across restarts; without, it comes back empty."""

    def __init__(self, directory: str, *, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
        self._cmd = [
            binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
            "--appendonly", "no", *persistence, "--dir", directory, "--loglevel", "warning",
        ]  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(self._cmd, stdout=subprocess.DEVNULL)
        _wait_for_port(self.port, self._process, "redis-server")

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process)
            self._process = None

    def kill(self) -> None:
        """SIGKILL: Redis writes nothing more (a restart loads its last snapshot, if any)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@contextlib.contextmanager
def redis_server(*, persistent: bool = False) -> Iterator[str]:
    """A throwaway ``redis-server``; yields ``redis://127.0.0.1:PORT/0``."""
    if url := os.environ.get("RUNWIRE_TEST_REDIS"):
        yield url
        return
    with owned_redis(persistent=persistent) as server:
        yield server.url


@contextlib.contextmanager
def owned_redis(*, persistent: bool = False) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` in a temporary directory, stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="runwire-redis-") as directory:
        server = RedisServer(directory, persistent=persistent)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    binary = shutil.which(name)
    if binary is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return binary


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster (trust auth on loopback only, fsync off); yields
    ``postgresql://runwire@127.0.0.1:PORT/postgres``."""
    if url := os.environ.get("RUNWIRE_TEST_POSTGRES"):
        yield url
        return
    as_root = os.geteuid() == 0
    with tempfile.TemporaryDirectory(prefix="runwire-pg-") as directory:
        data = os.path.join(directory, "data")
        os.mkdir(data, 0o700)
        prefix: list[str] = []
        if as_root:
            owner = pwd.getpwnam("postgres")
            os.chmod(directory, 0o755)
            os.chown(data, owner.pw_uid, owner.pw_gid)
            prefix = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*prefix, _postgres_bin("initdb"), "-D", data, "-U", "runwire", "-A", "trust",
             "-E", "UTF8", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        port = free_port()
        process = subprocess.Popen(
            [*prefix, _postgres_bin("postgres"), "-D", data, "-h", "127.0.0.1",
             "-p", str(port), "-k", data, "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_for_port(port, process, "postgres")
            yield f"postgresql://runwire@127.0.0.1:{port}/postgres"
        finally:
            _stop(process)


class Databases:
    """Empty databases in one server, one per test, each reset and handed to a later test
    when its test is done (creating a database costs a checkpoint: ~0.3 s a test)."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.free: list[str] = []
        self.made: list[str] = []

    def url(self, name: str) -> str:
        return self.server_url.rsplit("/", 1)[0] + f"/{name}"

    async def admin(self) -> asyncpg.Connection:
        """A connection to the server's own database. A server just started listens before
        it takes connections ("the database system is starting up"): wait that out."""
        with anyio.fail_after(30):
            while True:
                try:
                    return await asyncpg.connect(self.server_url)
                except asyncpg.CannotConnectNowError:
                    await anyio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def fresh(self) -> AsyncIterator[str]:
        """The name of an empty database, for as long as the context lasts."""
        name = self.free.pop() if self.free else await self._create()
        try:
            yield name
        finally:
            await self._reset(name)
            self.free.append(name)

    async def _create(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        admin = await self.admin()
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        self.made.append(name)
        return name

    async def _reset(self, name: str) -> None:
        """End every connection left to the database, and empty it."""
        admin = await self.admin()
        try:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.execute(
                """
                SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
                WHERE datname = $1 AND pid <> pg_backend_pid()
                """,
                name,
            )
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.url(name))
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        finally:
            await conn.close()

    async def drop_all(self) -> None:
        admin = await self.admin()
        try:
            for name in self.made:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
