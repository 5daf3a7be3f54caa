"""Server settings: one typed object, built by the CLI or by an embedding application."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from registry.memory import REPLAY_PAGE


@dataclass(frozen=True)
class Settings:
    """Everything the gateway is configured with. Defaults are the embedded defaults."""

    host: str = "127.0.0.1"
    port: int = 8765
    db: str = "./runwire.db"
    provider: str = "echo"
    # token -> user. Empty means: no auth configured (the CLI then makes one for `local`).
    tokens: dict[str, str] = field(default_factory=dict)
    # Browser Origins allowed on the WebSocket handshake and, by CORS, on the HTTP API,
    # besides the server's own host.
    origins: tuple[str, ...] = ()
    buffer_size: int = 5000
    run_ttl: float = 300.0
    queue_limit: int = 10
    max_frame: int = 1 << 20
    log_format: str = "text"
    # Seconds running runs get to finish on shutdown before they are aborted.
    shutdown_grace: float = 10.0
    # Seconds between server WebSocket pings.
    ping_interval: float = 20.0
    # Per-user `send` rate limit: a token bucket of `send_burst` refilled at `send_rate`/s.
    send_rate: float = 5.0
    send_burst: int = 20
    # Control frames (replies, pushes) queued to one connection. Events never queue (a
    # subscriber that falls behind the replay buffer gets `lagged`); past this bound the
    # client is not reading at all and the connection is closed (1008).
    outbound_limit: int = 1000
    # Kernel send buffer of each connection (bytes; the kernel doubles it for overhead).
    # Bounds what a client that stops reading holds before it is dropped with `lagged`.
    send_buffer: int = 256 * 1024
    # Longest wait of an event for its commit to the log. Subscribers only receive events
    # once they are on disk, so this bounds latency; larger batches commit more cheaply.
    # With several processes, delivery does not wait for the database but is batched the
    # same way: this is the longest wait of an event before its subscribers get it.
    flush_delay: float = 0.005
    # Most events a subscription reads from the log at once. A longer replay comes in
    # pages, each ended by `lagged` (SSE streams go on from page to page themselves).
    replay_page: int = REPLAY_PAGE
    # Several processes: Redis keeps the live runs and PostgreSQL the store (both, or neither:
    # one process with SQLite at `db`).
    redis: str | None = None
    database: str | None = None
    # Several processes: seconds a run's lease lasts unless its process renews it. A process
    # that dies has its runs ended by a survivor within about this long.
    lease: float = 10.0
    # Several processes: the prefix of every Redis key and channel (several deployments may
    # share one Redis server under different prefixes).
    redis_prefix: str = "runwire"

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.port <= 65535 or self.port == 0, "port must be in 0..65535"),
            (self.buffer_size >= 1, "buffer-size must be at least 1"),
            (self.run_ttl >= 0, "run-ttl must not be negative"),
            (self.queue_limit >= 0, "queue-limit must not be negative"),
            (self.max_frame >= 1024, "max-frame must be at least 1024 bytes"),
            (self.log_format in ("text", "json"), "log-format must be text or json"),
            (self.shutdown_grace >= 0, "shutdown grace must not be negative"),
            (self.send_rate > 0 and self.send_burst >= 1, "send rate limit must be positive"),
            (0 <= self.flush_delay <= 10, "flush delay must be in 0..10 seconds"),
            (self.replay_page >= 1, "replay page must be at least 1 event"),
            (self.outbound_limit >= 1, "outbound limit must be at least 1"),
            (self.ping_interval > 0, "ping interval must be positive"),
            (self.send_buffer >= 4096, "send buffer must be at least 4096 bytes"),
            (
                (self.redis is None) == (self.database is None),
                "--redis and --database go together: several processes need both",
            ),
            (
                self.redis is None or self.redis.startswith(("redis://", "rediss://", "unix://")),
                "--redis must be a redis://, rediss:// or unix:// URL",
            ),
            (
                self.database is None or self.database.startswith(("postgresql://", "postgres://")),
                "--database must be a postgresql:// URL",
            ),
            (0 < self.lease <= 3600, "lease must be in (0, 3600] seconds"),
            (bool(self.redis_prefix) and ":" not in self.redis_prefix, "bad Redis key prefix"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def clustered(self) -> bool:
        """Whether this process is one of several sharing Redis and PostgreSQL."""
        return self.redis is not None

    @property
    def loopback(self) -> bool:
        """Whether the server listens on a loopback address only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
