"""The PostgreSQL store: the SQLite store's sessions, runs and event log in a database that
several server processes share.

What a store does is :class:`~registry.store.logstore.LogStore`'s, the same for both
engines; this module connects it. Writes go through the same group-commit writer, on a
connection of its own that is made again whenever it is lost (writes are retried until
they are committed). Reads use a small pool, and never wait out an outage: a read whose
connection is gone, or that would have to wait for writes the database is not taking,
raises :class:`~registry.store.errors.StoreError` at once.

Unlike a SQLite file, the database may be shared by live processes, so opening with
``recover=False`` leaves runs marked ``running`` alone (another process may be driving
them), and a run start may carry the start order a shared counter gave it.

The URL's password never reaches a message or a log: the store is named by its URL with
the password masked, and driver errors are scrubbed of it.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from ..clock import Clock, SystemClock, to_ms
from .errors import StoreError
from .logstore import LogStore
from .postgres_schema import migrate
from .postgres_writer import PgTx, PostgresBackend, Unreachable
from .recovery import end_running_runs
from .schema import NewerSchema
from .sql import POSTGRES, Dialect, Params, positional
from .writer import Writer

log = logging.getLogger("runwire.store")

# pg_advisory_xact_lock key of recovery at open (the bytes of "runwire2"): two processes
# opening at once do not both end the same runs.
RECOVERY_LOCK = 0x72756E7769726532
# What a lost connection looks like to a read: the pool makes a new one, so it is retried
# once before it is an error.
_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InterfaceError,
    OSError,
)
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError, Unreachable)


class PostgresStore(LogStore):
    """Durable sessions, runs and events in a PostgreSQL database; the registry's
    :class:`~registry.Persistence`, and a drop-in for :class:`~registry.store.SQLiteStore`.

    Open with :meth:`open` and end with :meth:`close` (or ``async with``).
    """

    sql: ClassVar[Dialect] = POSTGRES
    constraint_errors = (asyncpg.IntegrityConstraintViolationError,)
    database_errors = _ERRORS

    def __init__(
        self,
        url: str,
        secrets: tuple[str, ...],
        pool: asyncpg.Pool,
        backend: PostgresBackend,
        writer: Writer,
        clock: Clock,
        next_ord: int,
        timeout: float,
    ) -> None:
        # Use open(): it migrates, recovers and starts the writer.
        super().__init__(url, writer, clock, next_ord)
        self.url = url
        """The database's URL, its password masked."""
        self._secrets = secrets
        self._pool = pool
        self._backend = backend
        self._timeout = timeout

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        clock: Clock | None = None,
        flush_delay: float = 0.02,
        batch_size: int = 1000,
        recover: bool = True,
        command_timeout: float = 10.0,
        pool_size: int = 4,
    ) -> PostgresStore:
        """Connect to the database at ``url`` (``postgresql://user:password@host/db``),
        migrate it, end the runs a dead process left running (unless ``recover`` is false:
        with several live processes on one database, another may own them), and start the
        writer.

        ``command_timeout`` bounds each connection attempt and statement (seconds);
        ``pool_size`` is the most connections reads use at once. Raises
        :class:`StoreError` naming the URL (without its password) when the database cannot
        be used.
        """
        if flush_delay < 0:
            raise ValueError("flush_delay must not be negative")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if command_timeout <= 0:
            raise ValueError("command_timeout must be positive")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        name, secrets = redact(url), _secrets(url)
        clock = clock if clock is not None else SystemClock()
        connect = partial(_connect, url, secrets, command_timeout, "runwire-writer")
        try:
            writer_db = await connect()
        except Unreachable as exc:
            raise StoreError(f"{name}: cannot connect: {exc}") from None
        pool: asyncpg.Pool | None = None
        try:
            await migrate(writer_db)
            recovered = await _recover(writer_db, to_ms(clock.now())) if recover else 0
            next_ord = int(await writer_db.fetchval("SELECT COALESCE(MAX(ord), 0) FROM runs"))
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=command_timeout,
                command_timeout=command_timeout,
                server_settings={"application_name": "runwire-reader"},
            )
        except BaseException as exc:
            writer_db.terminate()
            if pool is not None:
                pool.terminate()
            if isinstance(exc, NewerSchema):
                raise StoreError(f"{name}: {exc}") from None
            if isinstance(exc, _ERRORS):
                text = _scrub(str(exc), secrets)
                raise StoreError(f"{name}: cannot open the database: {text}") from None
            raise
        backend = PostgresBackend(writer_db, connect, name)
        writer = Writer(backend, flush_delay=flush_delay, batch_size=batch_size, impatient=True)
        writer.stats.recovered_runs = recovered
        store = cls(name, secrets, pool, backend, writer, clock, next_ord, command_timeout)
        writer.start()
        if recovered:
            log.warning("%s: ended %d runs left running by a dead process", name, recovered)
        return store

    async def max_ord(self) -> int:
        """The highest start order of any run in the database, whichever process started
        it (this process's queued starts written first). Raises :class:`StoreError` while
        the database cannot be reached."""
        await self._settle()
        rows = await self._fetch("SELECT COALESCE(MAX(ord), 0) FROM runs", {})
        return int(rows[0][0])

    def _fork_ords(self) -> None:
        # A fork keeps its source runs' start orders. Several processes share the database
        # and number starts in one shared counter this process cannot draw from inside the
        # fork's transaction; the source's orders already came from it, so they are unique
        # within the new session, in the same order, and below every order allocated later
        # by anyone: the fork's own runs will follow the copied ones.
        return None

    async def _settle(self) -> None:
        if self._closed:
            await self.flush()
        else:
            await self._writer.flush(impatient=True)

    async def _disconnect(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), self._timeout)
        except (TimeoutError, *_ERRORS):
            self._pool.terminate()
        await self._backend.close(self._timeout)

    async def _fetch(self, sql: str, params: Params) -> list[Any]:
        self._check_open()
        text, args = positional(sql, params)
        retried = False
        while True:
            try:
                async with self._pool.acquire(timeout=self._timeout) as conn:
                    return list(await conn.fetch(text, *args))
            except _LOST as exc:
                if retried:
                    raise self._read_error(exc) from None
                retried = True
            except _ERRORS as exc:
                raise self._read_error(exc) from None

    def _read_error(self, exc: BaseException) -> StoreError:
        return StoreError(f"{self.url}: reading failed: {self._error_text(exc)}")

    def _error_text(self, exc: BaseException) -> str:
        return _scrub(str(exc) or type(exc).__name__, self._secrets)


def redact(url: str) -> str:
    """``url`` with its password (in the user part or the query) masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hosts}"
    query = "&".join(
        "password=***" if item.split("=", 1)[0].lower() == "password" else item
        for item in parts.query.split("&")
        if item
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secrets(url: str) -> tuple[str, ...]:
    """The password of ``url`` as written and as decoded, to scrub from messages."""
    parts = urlsplit(url)
    found: list[str] = []
    userinfo = parts.netloc.rpartition("@")[0]
    if ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    for item in parts.query.split("&"):
        key, _, value = item.partition("=")
        if key.lower() == "password":
            found.append(value)
    every = {secret for raw in found for secret in (raw, unquote(raw)) if secret}
    # Longest first, so a password that contains another is masked whole.
    return tuple(sorted(every, key=len, reverse=True))


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


async def _connect(
    url: str, secrets: tuple[str, ...], seconds: float, application: str
) -> asyncpg.Connection:
    """A connection for the writer, each attempt and statement bounded by ``seconds``;
    raises :class:`Unreachable` (no password in it)."""
    try:
        return await asyncpg.connect(
            url,
            timeout=seconds,
            command_timeout=seconds,
            server_settings={"application_name": application},
        )
    except (*_ERRORS, ValueError) as exc:
        raise Unreachable(_scrub(str(exc) or type(exc).__name__, secrets)) from None


async def _recover(db: asyncpg.Connection, now: int) -> int:
    """End the runs a dead process left running (see :mod:`registry.store.recovery`), one
    process at a time."""
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1)", RECOVERY_LOCK)
        return await end_running_runs(PgTx(db), now)
