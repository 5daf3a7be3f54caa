"""Serving a gateway with uvicorn, with a shutdown that drains runs and connections first.

uvicorn's own shutdown closes every WebSocket with 1012 at once and only then runs the
app's lifespan shutdown. :class:`GatewayServer` instead stops accepting connections, then
drains the gateway (runs get their grace period while their subscribers still watch, are
ended with ``server_restart``, the last frames go out, sockets close with 1012), and only
then lets uvicorn finish (lifespan shutdown: the store is flushed and closed).
"""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from providers import ProviderRegistry

from .app import Gateway, create_app
from .settings import Settings


def uvicorn_config(settings: Settings, app: Any, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration for ``settings`` (frame size limit, WebSocket pings)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        "ws": "websockets-sansio",
        "ws_max_size": settings.max_frame,
        "ws_ping_interval": settings.ping_interval,
        "ws_ping_timeout": settings.ping_interval,
        "log_config": None,
        "access_log": False,
        # The gateway's own drain bounds the shutdown; this is uvicorn's backstop.
        "timeout_graceful_shutdown": 5,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


class GatewayServer(uvicorn.Server):
    """A uvicorn server whose shutdown drains the gateway before closing connections."""

    def __init__(
        self,
        config: uvicorn.Config,
        gateway: Gateway,
        *,
        on_started: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.gateway = gateway
        self._on_started = on_started

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        # Accepted sockets inherit the listener's send buffer. A fixed one, rather than
        # the kernel's autotuning up to megabytes, bounds what a client that stops reading
        # holds per connection: its writer blocks soon, its cursors fall behind and end
        # with `lagged`, instead of megabytes of frames waiting in the kernel for it.
        for server in self.servers:
            for sock in server.sockets:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, self.gateway.settings.send_buffer
                )
        # Everything imported and built at startup lives as long as the process: keep it
        # out of the collector's full passes, which otherwise stall the loop for tens of
        # milliseconds (seen as latency spikes for every subscriber).
        gc.collect()
        gc.freeze()
        if self._on_started is not None:
            self._on_started(self.port)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # Stop accepting; open connections stay until drained.
        await self.gateway.drain(force=lambda: self.force_exit)
        await super().shutdown(sockets)


def build_server(
    settings: Settings,
    *,
    providers: ProviderRegistry | None = None,
    on_started: Callable[[int], None] | None = None,
    **overrides: Any,
) -> GatewayServer:
    """A ready-to-run server for ``settings``: ``await server.serve()``."""
    app = create_app(settings, providers=providers)
    gateway: Gateway = app.state.gateway
    return GatewayServer(uvicorn_config(settings, app, **overrides), gateway, on_started=on_started)
