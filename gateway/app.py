"""The gateway as a library: a :class:`Gateway` holding registry, store and providers, and
:func:`create_app` returning a ready Starlette app.

To mount the routes inside an existing Starlette or FastAPI app, share one gateway::

    gateway = Gateway(settings)
    app = Starlette(routes=[Mount("/chat", routes=gateway.routes())],
                    lifespan=lambda app: gateway.lifespan())
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from providers import ProviderRegistry, default_providers
from registry import Clock, LocalRegistry, MemoryRegistry, Notice, RunRegistry, SystemClock
from registry.store import SQLiteStore, Store

from .auth import Authenticator
from .connection import SERVICE_RESTART
from .http import HttpApi
from .hub import Hub
from .metrics import GatewayStats, build_registry
from .service import Service
from .settings import Settings
from .sse import EventStream

if TYPE_CHECKING:
    from registry.cluster import ClusterRegistry

log = logging.getLogger("runwire.gateway")

# After the runs are ended on shutdown: how long connections get to send their last frames.
CLOSE_GRACE = 5.0


class Gateway:
    """One runwire server's state: settings, auth, connections, and while its
    :meth:`lifespan` runs, the store, the registry and the service."""

    def __init__(
        self,
        settings: Settings,
        *,
        providers: ProviderRegistry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.providers = providers if providers is not None else default_providers()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.auth = Authenticator(settings.tokens, settings.origins)
        self.hub = Hub()
        self.stats = GatewayStats()
        self.streams: set[EventStream] = set()
        self._streams_empty: anyio.Event | None = None
        self.metrics: CollectorRegistry = build_registry(self)
        self._service: Service | None = None
        self._store: Store | None = None
        self._drained: anyio.Event | None = None

    # State -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the lifespan has started and not yet ended."""
        return self._service is not None

    @property
    def service(self) -> Service:
        if self._service is None:
            raise RuntimeError("the gateway is not running: enter Gateway.lifespan() first")
        return self._service

    @property
    def registry(self) -> RunRegistry:
        return self.service.registry

    @property
    def store(self) -> Store:
        return self.service.store

    @property
    def accepting(self) -> bool:
        """Whether new connections and sends are accepted (not shutting down)."""
        return self._service is not None and self._service.accepting

    def stream_opened(self, stream: EventStream) -> None:
        self.streams.add(stream)
        self.stats.sse_streams = len(self.streams)

    def stream_closed(self, stream: EventStream) -> None:
        self.streams.discard(stream)
        self.stats.sse_streams = len(self.streams)
        if not self.streams and self._streams_empty is not None:
            self._streams_empty.set()

    def routes(self) -> list[BaseRoute]:
        """The HTTP, SSE and WebSocket routes, to mount anywhere."""
        return HttpApi(self).routes()

    # Lifecycle -------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Open the store, run the registry, serve; on the way out, :meth:`drain`."""
        if self.settings.provider not in self.providers:
            known = ", ".join(self.providers.names()) or "none"
            raise ValueError(
                f"default provider {self.settings.provider!r} is not offered ({known})"
            )
        store = await self._open_store()
        self._drained = None
        try:
            registry = self._registry(store)
            async with registry:
                stop_listening = registry.listen(self.hub.notice)
                self._store = store
                self._service = Service(
                    settings=self.settings,
                    registry=registry,
                    store=store,
                    providers=self.providers,
                    clock=self.clock,
                )
                try:
                    yield
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.drain()
                    stop_listening()
        finally:
            self._service = None
            self._store = None
            with anyio.CancelScope(shield=True):
                await store.close()

    async def _open_store(self) -> Store:
        settings = self.settings
        if settings.database is None:
            return await SQLiteStore.open(
                settings.db, clock=self.clock, flush_delay=settings.flush_delay
            )
        # Imported here: a process on SQLite never loads the PostgreSQL driver.
        from registry.store import PostgresStore

        # Runs left running belong to other live processes: Redis tells which are dead.
        return await PostgresStore.open(
            settings.database,
            clock=self.clock,
            flush_delay=settings.flush_delay,
            recover=not settings.clustered,
        )

    def _registry(self, store: Store) -> LocalRegistry | ClusterRegistry:
        settings = self.settings
        if settings.redis is not None:
            # Imported here: a single process never loads the Redis client.
            from registry.cluster import ClusterRegistry

            return ClusterRegistry(
                settings.redis,
                store,
                clock=self.clock,
                buffer_size=settings.buffer_size,
                run_ttl=settings.run_ttl,
                queue_limit=settings.queue_limit,
                lease=settings.lease,
                prefix=settings.redis_prefix,
                delivery_delay=settings.flush_delay,
                replay_page=settings.replay_page,
            )
        return LocalRegistry(
            MemoryRegistry(
                store=store,
                clock=self.clock,
                buffer_size=settings.buffer_size,
                run_ttl=settings.run_ttl,
                queue_limit=settings.queue_limit,
                replay_page=settings.replay_page,
            )
        )

    def stop_accepting(self) -> None:
        """Refuse new sends, WebSocket connections and streams from now on (shutdown)."""
        if self._service is not None:
            self._service.accepting = False

    async def drain(self, *, force: Callable[[], bool] = lambda: False) -> None:
        """Shut down gracefully. Idempotent; concurrent callers wait for the first.

        New sends and connections are refused; running runs get ``shutdown_grace`` seconds
        to finish (less if ``force()`` turns true), then are ended with ``server_restart``;
        connections send what they still have and close with 1012; the store is flushed.
        """
        if self._drained is not None:
            await self._drained.wait()
            return
        self._drained = anyio.Event()
        try:
            service = self._service
            if service is None:
                return
            self.stop_accepting()
            registry = service.registry
            with anyio.move_on_after(self.settings.shutdown_grace):
                await _runs_finished(registry, force)
            ended = await registry.shutdown("server_restart")
            if ended:
                log.warning("shutdown: ended %d running runs with server_restart", ended)
            # Subscribers only get what is on disk: commit the ends before the last sends.
            with anyio.move_on_after(CLOSE_GRACE):
                await service.store.flush()
            for conn in self.hub:
                conn.finish(SERVICE_RESTART, "server restart")
            for stream in list(self.streams):
                stream.finish()
            with anyio.move_on_after(CLOSE_GRACE):
                await self.hub.wait_empty()
                while self.streams:
                    self._streams_empty = anyio.Event()
                    await self._streams_empty.wait()
            for conn in self.hub:
                conn.close(SERVICE_RESTART, "server restart")
            await service.store.flush()
        finally:
            self._drained.set()


async def _runs_finished(registry: RunRegistry, force: Callable[[], bool]) -> None:
    """Return once this process drives no run (or ``force()`` is true; checked every
    0.1 s)."""
    changed = anyio.Event()

    def on_notice(notice: Notice) -> None:
        changed.set()

    stop = registry.listen(on_notice)
    try:
        # A finished run may start the session's next queued one: look again each time.
        while registry.local_runs() and not force():
            with anyio.move_on_after(0.1):
                await changed.wait()
            changed = anyio.Event()
    finally:
        stop()


def create_app(
    settings: Settings | None = None,
    *,
    providers: ProviderRegistry | None = None,
    clock: Clock | None = None,
) -> Starlette:
    """A Starlette app serving one :class:`Gateway` (``app.state.gateway``)."""
    gateway = Gateway(settings or Settings(), providers=providers, clock=clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with gateway.lifespan():
            yield

    app = Starlette(routes=gateway.routes(), lifespan=lifespan)
    app.state.gateway = gateway
    return app
