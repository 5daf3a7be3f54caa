"""The ``/ws`` endpoint: handshake checks, the reader loop and frame dispatch.

Each connection runs a reader (this module) and a writer (:mod:`gateway.connection`) in
one task group; when either ends, the other is cancelled and the connection closes. The
reader handles frames one at a time, so replies come in request order.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import anyio
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from registry import RegistryError, UnknownRun

from . import frames
from .connection import SERVICE_RESTART, TOO_BIG, Connection
from .errors import GatewayError

if TYPE_CHECKING:
    from .app import Gateway

log = logging.getLogger("runwire.gateway")

# How long a close frame may take to go out to a client that does not read.
CLOSE_TIMEOUT = 2.0


class WebSocketEndpoint:
    """An ASGI app for ``/ws`` (a class, so Starlette passes it the raw ASGI triple)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        gateway = self.gateway
        user = gateway.auth.user(websocket)
        if user is None:
            await _deny(websocket, 401, "UNAUTHORIZED", "missing or wrong token")
            return
        if not gateway.auth.origin_allowed(websocket):
            await _deny(websocket, 403, "FORBIDDEN", "this Origin may not connect")
            return
        await websocket.accept()
        if not gateway.accepting:
            await send({"type": "websocket.close", "code": SERVICE_RESTART})
            return
        conn = Connection(
            send,
            user=user,
            batch=websocket.query_params.get("batch") == "1",
            outbound_limit=gateway.settings.outbound_limit,
            stats=gateway.stats,
        )
        gateway.hub.add(conn)
        try:
            async with anyio.create_task_group() as tg:
                conn.cancel_scope = tg.cancel_scope
                tg.start_soon(_run_writer, conn, tg.cancel_scope)
                await self._read(conn, receive)
                tg.cancel_scope.cancel()
        finally:
            gateway.hub.remove(conn)
            conn.close_subscriptions()
            if conn.close_code is not None:
                # Suppressed: the client or the server may have closed it already.
                with (
                    anyio.move_on_after(CLOSE_TIMEOUT, shield=True),
                    contextlib.suppress(OSError, RuntimeError),
                ):
                    await send(
                        {
                            "type": "websocket.close",
                            "code": conn.close_code,
                            "reason": conn.close_reason,
                        }
                    )

    async def _read(self, conn: Connection, receive: Receive) -> None:
        """Receive and handle frames until the client leaves or a frame is too big."""
        max_frame = self.gateway.settings.max_frame
        dispatcher = Dispatcher(self.gateway, conn)
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                return
            if kind != "websocket.receive":
                continue
            text: str | None = message.get("text")
            data: str | bytes = text if text is not None else (message.get("bytes") or b"")
            # The server enforces this too (uvicorn's ws_max_size); this check covers hosts
            # that allow more. len() of a str counts characters, at most 4 bytes each.
            size = len(data) if isinstance(data, bytes) or len(data) * 4 <= max_frame else None
            if size is None and isinstance(data, str):
                size = len(data.encode())
            if size is not None and size > max_frame:
                conn.close(TOO_BIG, f"message over {max_frame} bytes")
                return
            await dispatcher.handle(data)


async def _run_writer(conn: Connection, scope: anyio.CancelScope) -> None:
    try:
        await conn.run_writer()
    finally:
        scope.cancel()


async def _deny(websocket: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse the handshake with an HTTP response (no upgrade) when the server allows it."""
    body = {"error": {"code": code, "message": message}}
    try:
        await websocket.send_denial_response(JSONResponse(body, status_code=status))
    except RuntimeError:
        # No denial-response extension: closing before accept is a 403 on most servers.
        await websocket.close(code=1008, reason=message)


class Dispatcher:
    """Turns one connection's frames into service calls and replies."""

    def __init__(self, gateway: Gateway, conn: Connection) -> None:
        self.gateway = gateway
        self.conn = conn

    async def handle(self, message: str | bytes) -> None:
        """Handle one client message; any failure becomes an error frame."""
        conn = self.conn
        try:
            frame = frames.decode(message)
        except frames.FrameError as exc:
            conn.push(frames.error(exc.code, exc.message, frame_id=exc.frame_id, field=exc.field))
            return
        session_id = getattr(frame, "session_id", None)
        try:
            await self._dispatch(frame)
        except GatewayError as exc:
            conn.push(
                frames.error(
                    exc.code, exc.message, frame_id=frame.id, session_id=session_id, field=exc.field
                )
            )
        except RegistryError as exc:
            field = "run_id" if isinstance(exc, UnknownRun) else None
            if exc.code == "INTERNAL":
                # An engine that cannot be reached now (Redis, the database).
                log.warning("handling a %s frame failed: %s", type(frame).__name__, exc)
            conn.push(
                frames.error(
                    exc.code, str(exc), frame_id=frame.id, session_id=session_id, field=field
                )
            )
        except Exception:
            log.exception("handling a %s frame failed", type(frame).__name__)
            conn.push(
                frames.error("INTERNAL", "internal error", frame_id=frame.id, session_id=session_id)
            )

    async def _dispatch(self, frame: frames.ClientFrame) -> None:
        conn = self.conn
        service = self.gateway.service
        user = conn.user
        if isinstance(frame, frames.Ping):
            conn.push(frames.pong(frame.id))
        elif isinstance(frame, frames.Send):
            result = await service.send(user, frame)
            conn.push(
                frames.ack(
                    frame.id, "send", result.session_id, run_id=result.run_id, status=result.status
                )
            )
        elif isinstance(frame, frames.Subscribe):
            sub = await service.subscribe(
                user, frame.session_id, run_id=frame.run_id, after_seq=frame.after_seq
            )
            assert sub.info is not None
            conn.add_subscription(sub, frames.subscribed(frame.id, sub.info))
        elif isinstance(frame, frames.Unsubscribe):
            if not conn.drop_subscription(frame.session_id):
                await service.session(user, frame.session_id)
            conn.push(frames.ack(frame.id, "unsubscribe", frame.session_id))
        elif isinstance(frame, frames.Abort):
            summary = await service.abort(user, frame.session_id, clear_queue=frame.clear_queue)
            conn.push(
                frames.ack(
                    frame.id,
                    "abort",
                    frame.session_id,
                    run_id=summary.run_id,
                    last_seq=summary.last_seq,
                )
            )
        elif isinstance(frame, frames.ListRuns):
            conn.push(frames.runs(frame.id, await service.list_runs(user, frame.status)))
