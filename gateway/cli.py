"""The ``runwire`` command.

``runwire serve`` runs the gateway on its embedded defaults (127.0.0.1:8765, ./runwire.db,
the echo provider). Every flag has a help text; a bad value is a one-line error and exit
code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import NoReturn
from urllib.parse import urlsplit

from providers import ProviderConfig
from registry.store import SQLiteStore, Store, StoreError

from . import logs
from .server import build_server
from .settings import Settings

TOKENS_ENV = "RUNWIRE_TOKENS"
LOCAL_USER = "local"
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _token(value: str) -> tuple[str, str]:
    token, sep, user = value.rpartition(":")
    if not sep or not token or not user:
        raise argparse.ArgumentTypeError(f"expected TOKEN:USER, got {value!r}")
    return token, user


def _origin(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise argparse.ArgumentTypeError(
            f"expected an origin like https://host:port, got {value!r}"
        )
    return value.rstrip("/")


def _port(value: str) -> int:
    number = _int(value)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, got {value}")
    return number


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def _positive_int(value: str) -> int:
    number = _int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def _non_negative_int(value: str) -> int:
    number = _int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return number


def _rate(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number per second, got {value!r}") from None
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The ``runwire`` argument parser."""
    parser = _Parser(
        prog="runwire",
        description="Keeps AI chat runs alive across browser refreshes: a WebSocket, HTTP "
        "and SSE gateway over a run registry and a SQLite event log (or, for several "
        "processes, Redis and PostgreSQL).",
        epilog="Run `runwire serve --help` for the server's flags.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the server. With no token configured on a loopback address, a "
        "random token for user `local` is made and the URL to open is printed.",
    )
    defaults = Settings()
    serve.add_argument(
        "--host", default=defaults.host, help="address to listen on (default %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=defaults.port,
        help="port to listen on; 0 picks a free one (default %(default)s)",
    )
    serve.add_argument(
        "--db",
        default=defaults.db,
        help="SQLite database file of a single process; not used with --database "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="several processes: the Redis server that keeps live runs and numbers their "
        "events (redis://host:6379/0, rediss:// or unix://; one server, not Redis Cluster); "
        "needs --database",
    )
    serve.add_argument(
        "--database",
        metavar="URL",
        help="several processes: the PostgreSQL database that keeps sessions and the event "
        "log (postgresql://user:password@host/db); needs --redis",
    )
    serve.add_argument(
        "--redis-prefix",
        default=defaults.redis_prefix,
        metavar="PREFIX",
        help="several processes: the prefix of every Redis key and channel, so several "
        "deployments can share one Redis (default %(default)s)",
    )
    serve.add_argument(
        "--lease",
        type=_seconds,
        default=defaults.lease,
        metavar="SECONDS",
        help="several processes: when a process dies, another ends its runs with "
        "server_restart within this long (default %(default)s)",
    )
    serve.add_argument(
        "--provider",
        default=defaults.provider,
        help="default provider for new sessions (default %(default)s)",
    )
    serve.add_argument(
        "--token",
        dest="tokens",
        action="append",
        type=_token,
        default=[],
        metavar="TOKEN:USER",
        help=f"accept TOKEN as USER; repeatable. Also {TOKENS_ENV}=tokA:alice,tokB:bob",
    )
    serve.add_argument(
        "--origin",
        dest="origins",
        action="append",
        type=_origin,
        default=[],
        metavar="URL",
        help="a browser Origin allowed to open WebSockets and call the HTTP API (CORS) "
        "besides the server's own host; repeatable",
    )
    serve.add_argument(
        "--buffer-size",
        type=_positive_int,
        default=defaults.buffer_size,
        help="events kept in memory per run for replay; with several processes also "
        "about the length of each run's event stream in Redis (default %(default)s)",
    )
    serve.add_argument(
        "--run-ttl",
        type=_seconds,
        default=defaults.run_ttl,
        help="seconds a completed run stays in memory, and with several processes in Redis "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--queue-limit",
        type=_non_negative_int,
        default=defaults.queue_limit,
        help="queued sends per session (default %(default)s)",
    )
    serve.add_argument(
        "--max-frame",
        type=_positive_int,
        default=defaults.max_frame,
        help="largest inbound WebSocket message in bytes; a larger one closes the socket with "
        "1009 (default %(default)s)",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=defaults.log_format,
        help="log lines as text or JSON (default %(default)s)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=defaults.shutdown_grace,
        help="seconds running runs get to finish on SIGTERM/Ctrl-C before they are ended "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--send-rate",
        type=_rate,
        default=defaults.send_rate,
        help="sends per second each user may make, on average, counted by each process; "
        "faster ones get RATE_LIMITED (default %(default)s)",
    )
    serve.add_argument(
        "--send-burst",
        type=_positive_int,
        default=defaults.send_burst,
        help="sends a user may make at once before --send-rate applies (default %(default)s)",
    )
    return parser


def _env_tokens(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    raw = os.environ.get(TOKENS_ENV, "").strip()
    if not raw:
        return []
    pairs = []
    for item in raw.split(","):
        try:
            pairs.append(_token(item.strip()))
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{TOKENS_ENV}: {exc}")
    return pairs


def _tokens(parser: argparse.ArgumentParser, pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Token to user, from ``--token`` and the environment together. A token given for two
    users is an error: whichever won, one of them would act as the other."""
    tokens: dict[str, str] = {}
    for token, user in pairs:
        if tokens.setdefault(token, user) != user:
            parser.error(
                f"--token, {TOKENS_ENV}: one token is given for both {tokens[token]!r} and "
                f"{user!r}; a token names one user"
            )
    return tokens


def _check_address(settings: Settings) -> tuple[str, str] | None:
    """Bind the address once, so a port in use or a host this machine does not have is a
    clear error, the flag and why, before anything else is touched. uvicorn binds for itself
    afterwards; a port taken in between still fails there, in its log."""
    host, port = settings.host, settings.port
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as sock:
                # As uvicorn binds: a port whose last connections linger may be reused.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
    except OSError as exc:
        flag = "--port" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else "--host"
        return flag, f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _check_storage(settings: Settings) -> tuple[str, str] | None:
    """Open the store (and reach Redis) once, so a bad --db, --database or --redis is a
    clear error before serving: the flag and what is wrong with it."""

    async def probe() -> tuple[str, str] | None:
        if settings.database is None:
            store: Store = await SQLiteStore.open(settings.db)
            await store.close()
            return None
        # Imported here, as the app does: only several processes use these.
        import redis.asyncio as redis
        from redis.exceptions import RedisError

        from registry.store import PostgresStore

        store = await PostgresStore.open(settings.database, recover=False)
        await store.close()
        assert settings.redis is not None
        client = redis.Redis.from_url(settings.redis)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            return "--redis", f"{_masked(settings.redis)}: cannot reach Redis: {exc}"
        finally:
            await client.aclose()
        return None

    flag = "--database" if settings.database is not None else "--db"
    try:
        return asyncio.run(probe())
    except (StoreError, OSError, ValueError) as exc:
        return flag, str(exc)


def _masked(url: str) -> str:
    """A URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``runwire`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    tokens = _tokens(parser, [*_env_tokens(parser), *args.tokens])
    try:
        settings = Settings(
            host=args.host,
            port=args.port,
            db=args.db,
            provider=args.provider,
            tokens=tokens,
            origins=tuple(args.origins),
            buffer_size=args.buffer_size,
            run_ttl=args.run_ttl,
            queue_limit=args.queue_limit,
            max_frame=args.max_frame,
            log_format=args.log_format,
            shutdown_grace=args.shutdown_grace,
            send_rate=args.send_rate,
            send_burst=args.send_burst,
            redis=args.redis,
            database=args.database,
            lease=args.lease,
            redis_prefix=args.redis_prefix,
        )
    except ValueError as exc:
        parser.error(str(exc))
    generated: str | None = None
    if not settings.tokens:
        if not settings.loopback:
            parser.error(
                f"refusing to listen on {settings.host} without a token: anyone who can reach "
                f"it could use it. Pass --token TOKEN:USER or set {TOKENS_ENV}."
            )
        generated = secrets.token_urlsafe(24)
        settings = replace(settings, tokens={generated: LOCAL_USER})
    problem = _check_address(settings) or _check_storage(settings)
    if problem is not None:
        parser.error(f"{problem[0]}: {problem[1]}")
    # Agent CLIs and OpenAI-compatible APIs are enabled by the environment (docs/providers.md).
    providers = ProviderConfig.from_env().build()
    if settings.provider not in providers:
        parser.error(
            f"--provider: {settings.provider!r} is not configured "
            f"(available: {', '.join(providers.names())})"
        )
    logs.configure(settings.log_format)

    def announce(port: int) -> None:
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        base = f"http://{host}:{port}/"
        if generated is not None:
            print(f"runwire: serving on {base}\nOpen: {base}?token={generated}", flush=True)
        else:
            print(f"runwire: serving on {base}", flush=True)

    server = build_server(settings, providers=providers, on_started=announce)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled, once the shutdown is complete.
        return 130
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
