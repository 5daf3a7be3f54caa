"""The HTTP API: sessions, history, SSE, abort, runs, health, metrics, OpenAPI.

Every endpoint but ``/healthz`` and the static chat page authenticates, and every session
access is owner-checked by the service: another user's session is a 404 exactly like a
missing one. Errors are ``{"error": {"code", "message"}}`` with a fitting status.
Endpoints catch their own errors (rather than relying on app-level exception handlers) so
the routes behave the same when mounted inside another application.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from registry import Position, RegistryError, UnknownRun
from registry.store import ForkPoint, SessionCursor

from . import frames
from .errors import GatewayError, invalid
from .openapi import openapi_document
from .service import to_builtins
from .sse import EventStream, parse_last_event_id
from .ws import WebSocketEndpoint

if TYPE_CHECKING:
    from .app import Gateway

log = logging.getLogger("runwire.gateway")

T = TypeVar("T", bound=msgspec.Struct)
Handler = Callable[[Request, str], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]

# The browser client and chat page; StaticFiles serves nothing outside this folder.
STATIC = Path(__file__).resolve().parent / "static"
# Every method the API's routes take, for CORS preflights.
CORS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_PAGE = 200
MAX_PAGE = 1000
# A kinds filter names at most this many kinds, each like an event kind.
MAX_KINDS = 32
_KIND = re.compile(r"[A-Za-z0-9_.-]{1,64}")
Title = Annotated[str, msgspec.Meta(max_length=500)]
Name = frames.ShortText


class CreateSession(msgspec.Struct, forbid_unknown_fields=True):
    provider: Name | None = None
    title: Title | None = None


class UpdateSession(msgspec.Struct, forbid_unknown_fields=True):
    title: Title | None = None
    status: str | None = None


Note = Annotated[str, msgspec.Meta(max_length=10_000)]


class Handoff(msgspec.Struct, forbid_unknown_fields=True):
    """Handoff notes: where the work stands, for whoever continues the session."""

    summary: Note
    next_steps: Annotated[list[Note], msgspec.Meta(max_length=100)] = []
    blockers: Annotated[list[Note], msgspec.Meta(max_length=100)] = []
    context_for_next: dict[str, Any] = {}


class ForkBody(msgspec.Struct, forbid_unknown_fields=True):
    """Where to fork (default: the end) and the new session's title (default: the same)."""

    run_id: Name | None = None
    seq: Annotated[int, msgspec.Meta(ge=0, le=frames.MAX_INT)] | None = None
    title: Title | None = None


class CheckpointBody(msgspec.Struct, forbid_unknown_fields=True):
    """A point worth returning to, marked by a client in the running run."""

    label: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    data: dict[str, Any] = {}


class AbortBody(msgspec.Struct, forbid_unknown_fields=True):
    clear_queue: bool = False


def error_response(exc: GatewayError) -> JSONResponse:
    """The HTTP form of an error."""
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.field is not None:
        body["field"] = exc.field
    return JSONResponse({"error": body}, status_code=exc.status)


_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route, wrong method) in the API's JSON shape."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "BAD_REQUEST")
    body: dict[str, Any] = {"error": {"code": code, "message": str(exc.detail)}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def json_text(text: str, status: int = 200) -> Response:
    """A response from JSON text that is already encoded."""
    return Response(text, status_code=status, media_type="application/json")


async def read_body(request: Request, kind: type[T], max_bytes: int) -> T:
    """Decode a JSON request body into ``kind``; an empty body means all defaults."""
    length = frames.decimal(request.headers.get("content-length", ""))
    if length is not None and length > max_bytes:
        raise GatewayError("TOO_LARGE", f"request body over {max_bytes} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise GatewayError("TOO_LARGE", f"request body over {max_bytes} bytes")
    if not body.strip():
        body = b"{}"
    try:
        decoded = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        field, message = frames.field_error(str(exc))
        raise invalid(field, message) from None
    except msgspec.DecodeError as exc:
        raise GatewayError("BAD_FRAME", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise GatewayError("BAD_FRAME", f"the body is {frames.TOO_DEEP}") from None
    deep = frames.too_deep_field(decoded)
    if deep is not None:
        raise invalid(deep, f"nested deeper than {frames.MAX_DEPTH} levels")
    return decoded


def query_int(request: Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    """An integer query parameter within bounds, or ``INVALID_FIELD`` naming it."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    value = frames.decimal(raw)
    if value is None or not minimum <= value <= maximum:
        raise invalid(name, f"expected an integer from {minimum} to {maximum}")
    return value


def query_id(request: Request, name: str) -> str | None:
    """An id query parameter (``None`` when absent or empty); see :func:`frames.checked_id`."""
    raw = request.query_params.get(name)
    return frames.checked_id(name, raw) if raw else None


def query_cursor(request: Request) -> SessionCursor | None:
    """``?after=``: where an earlier page of sessions ended, as its ``next`` gave it."""
    raw = request.query_params.get("after")
    if not raw:
        return None
    updated_text, _, rest = raw.partition(".")
    created_text, _, session_id = rest.partition(".")
    updated, created = frames.decimal(updated_text), frames.decimal(created_text)
    if (
        updated is None
        or created is None
        or not session_id
        or max(updated, created) > frames.MAX_INT
    ):
        raise invalid("after", "expected the next value of an earlier page")
    return SessionCursor(updated, created, frames.checked_id("after", session_id))


def cursor_text(cursor: SessionCursor | None) -> str | None:
    """A page's end as a ``next`` value: opaque to clients, read back by :func:`query_cursor`."""
    if cursor is None:
        return None
    return f"{cursor.updated_at}.{cursor.created_at}.{cursor.session_id}"


def query_kinds(request: Request) -> frozenset[str] | None:
    """``?kinds=text,tool_use``: the event kinds to keep (``None``: every kind)."""
    raw = request.query_params.get("kinds")
    if raw is None:
        return None
    kinds = frozenset(raw.split(","))
    if not 1 <= len(kinds) <= MAX_KINDS or not all(_KIND.fullmatch(kind) for kind in kinds):
        raise invalid(
            "kinds",
            f"expected 1 to {MAX_KINDS} comma-separated event kinds (letters, digits, . _ -)",
        )
    return kinds


def run_status(request: Request) -> Any:
    status = request.query_params.get("status", "running")
    if status not in ("running", "all"):
        raise invalid("status", "expected running or all")
    return status


class HttpApi:
    """The HTTP endpoints of one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[BaseRoute]:
        """Every route of the gateway, WebSocket included."""
        api = self._api
        session = "/api/sessions/{session_id}"
        routes: list[BaseRoute] = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/", self.page, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC, check_dir=False), name="static"),
            api("/api/me", GET=self.me),
            api("/api/providers", GET=self.providers),
            api("/openapi.json", GET=self.openapi),
            api("/metrics", GET=self.metrics),
            api("/api/sessions", GET=self.list_sessions, POST=self.create_session),
            api(
                session, GET=self.get_session, PATCH=self.update_session, DELETE=self.delete_session
            ),
            api(f"{session}/read", POST=self.mark_read),
            api(f"{session}/handoff", PUT=self.set_handoff),
            api(f"{session}/context", GET=self.context),
            api(f"{session}/fork", POST=self.fork),
            api(f"{session}/checkpoint", POST=self.checkpoint),
            api(f"{session}/events", GET=self.events),
            api(f"{session}/stream", GET=self.stream),
            api(f"{session}/abort", POST=self.abort),
            api("/api/runs", GET=self.runs),
            WebSocketRoute("/ws", WebSocketEndpoint(self.gateway)),
        ]
        # One mount around them all, so a mounted gateway brings its CORS and its JSON
        # errors along; the errors are made inside CORS, so a page on an allowed origin
        # reads a 404 or 405 as such rather than as a CORS failure.
        errors = Middleware(ExceptionMiddleware, handlers={HTTPException: http_error})
        return [Mount("", routes=routes, middleware=[self._cors(), errors])]

    def _cors(self) -> Middleware:
        """CORS for the allow-listed Origins: the page that may open the WebSocket may call
        the HTTP API and open the SSE stream too (the server's own host needs none). Tokens
        travel in a header or the query, never in cookies, so no credentials are allowed."""
        return Middleware(
            CORSMiddleware,
            allow_origins=self.gateway.auth.origins,
            allow_methods=CORS_METHODS,
            allow_headers=["authorization", "content-type", "last-event-id"],
        )

    def _api(self, path: str, **handlers: Handler) -> Route:
        """One authenticated route per path, whatever its methods: a wrong method's 405
        then names all the methods the path takes in its ``Allow`` header."""
        endpoints = {method: self._authenticated(handler) for method, handler in handlers.items()}
        if "GET" in endpoints:
            endpoints["HEAD"] = endpoints["GET"]

        async def endpoint(request: Request) -> Response:
            return await endpoints[request.method](request)

        return Route(path, endpoint, methods=list(handlers))

    def _authenticated(self, handler: Handler) -> Endpoint:
        """Wrap ``handler``: authenticate, then map every failure to a JSON error."""
        gateway = self.gateway

        async def endpoint(request: Request) -> Response:
            user = gateway.auth.user(request)
            if user is None:
                return error_response(GatewayError("UNAUTHORIZED", "missing or wrong token"))
            try:
                if "session_id" in request.path_params:
                    frames.checked_id("session_id", request.path_params["session_id"])
                return await handler(request, user)
            except GatewayError as exc:
                return error_response(exc)
            except RegistryError as exc:
                if exc.code == "INTERNAL":
                    # An engine that cannot be reached now (Redis, the database).
                    log.warning("%s %s failed: %s", request.method, request.url.path, exc)
                return error_response(GatewayError.from_registry(exc))
            except Exception:
                log.exception("%s %s failed", request.method, request.url.path)
                return error_response(GatewayError("INTERNAL", "internal error"))

        endpoint.__name__ = handler.__name__
        return endpoint

    # Endpoints --------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def page(self, request: Request) -> Response:
        """The chat page (no token needed: it reads the token from its own URL)."""
        index = STATIC / "index.html"
        if not index.is_file():
            return error_response(GatewayError("NOT_FOUND", "no chat page is installed"))
        return FileResponse(index, headers={"cache-control": "no-cache"})

    async def me(self, request: Request, user: str) -> Response:
        return JSONResponse({"user": user})

    async def providers(self, request: Request, user: str) -> Response:
        """The providers a new session may use, and the server's default."""
        gateway = self.gateway
        return JSONResponse(
            {"providers": gateway.providers.names(), "default": gateway.settings.provider}
        )

    async def openapi(self, request: Request, user: str) -> Response:
        return JSONResponse(openapi_document(request.scope.get("root_path", "")))

    async def metrics(self, request: Request, user: str) -> Response:
        return Response(generate_latest(self.gateway.metrics), media_type=CONTENT_TYPE_LATEST)

    async def create_session(self, request: Request, user: str) -> Response:
        body = await read_body(request, CreateSession, self.gateway.settings.max_frame)
        service = self.gateway.service
        record = await service.create_session(user, provider=body.provider, title=body.title)
        return JSONResponse(await service.session_json(record), status_code=201)

    async def list_sessions(self, request: Request, user: str) -> Response:
        after = query_cursor(request)
        # No limit: every session, as before pages existed.
        limit = query_int(request, "limit", 0, minimum=1, maximum=MAX_PAGE) or None
        sessions, following = await self.gateway.service.sessions_json(
            user, after=after, limit=limit
        )
        return JSONResponse({"sessions": sessions, "next": cursor_text(following)})

    async def get_session(self, request: Request, user: str) -> Response:
        service = self.gateway.service
        record = await service.session(user, request.path_params["session_id"])
        return JSONResponse(await service.session_json(record))

    async def update_session(self, request: Request, user: str) -> Response:
        body = await read_body(request, UpdateSession, self.gateway.settings.max_frame)
        service = self.gateway.service
        record = await service.update_session(
            user, request.path_params["session_id"], title=body.title, status=body.status
        )
        return JSONResponse(await service.session_json(record))

    async def set_handoff(self, request: Request, user: str) -> Response:
        body = await read_body(request, Handoff, self.gateway.settings.max_frame)
        service = self.gateway.service
        record = await service.set_handoff(
            user, request.path_params["session_id"], msgspec.to_builtins(body)
        )
        return JSONResponse(await service.session_json(record))

    async def context(self, request: Request, user: str) -> Response:
        context = await self.gateway.service.context(user, request.path_params["session_id"])
        return json_text(frames.encode(context))

    async def fork(self, request: Request, user: str) -> Response:
        body = await read_body(request, ForkBody, self.gateway.settings.max_frame)
        if body.seq is not None and body.run_id is None:
            raise invalid("run_id", "required with seq")
        at = ForkPoint(body.run_id, body.seq) if body.run_id is not None else None
        service = self.gateway.service
        record = await service.fork(
            user, request.path_params["session_id"], at=at, title=body.title
        )
        return JSONResponse(await service.session_json(record), status_code=201)

    async def checkpoint(self, request: Request, user: str) -> Response:
        body = await read_body(request, CheckpointBody, self.gateway.settings.max_frame)
        data: dict[str, Any] = {"label": body.label, "source": "client"}
        if body.data:
            data["data"] = body.data
        session_id = request.path_params["session_id"]
        event = await self.gateway.service.checkpoint(user, session_id, data)
        return JSONResponse(
            {"session_id": session_id, "run_id": event.run_id, "seq": event.seq}, status_code=201
        )

    async def delete_session(self, request: Request, user: str) -> Response:
        await self.gateway.service.delete_session(user, request.path_params["session_id"])
        return Response(status_code=204)

    async def mark_read(self, request: Request, user: str) -> Response:
        await self.gateway.service.mark_read(user, request.path_params["session_id"])
        return Response(status_code=204)

    async def events(self, request: Request, user: str) -> Response:
        service = self.gateway.service
        session_id = request.path_params["session_id"]
        after_run = query_id(request, "after_run")
        after_seq = query_int(request, "after_seq", 0, minimum=0, maximum=frames.MAX_INT)
        limit = query_int(request, "limit", DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
        if after_run is None and "after_seq" in request.query_params:
            raise invalid("after_run", "required with after_seq")
        kinds = query_kinds(request)
        await service.session(user, session_id)
        after = Position(after_run, after_seq) if after_run is not None else None
        try:
            events, following = await service.store.history_page(
                session_id, after=after, limit=limit, kinds=kinds
            )
        except UnknownRun as exc:
            raise invalid("after_run", exc.detail) from None
        following_json = (
            "null"
            if following is None
            else frames.encode({"run_id": following.run_id, "seq": following.seq})
        )
        body = (
            '{"events":['
            + ",".join(event.frame() for event in events)
            + '],"next":'
            + following_json
            + "}"
        )
        return json_text(body)

    async def stream(self, request: Request, user: str) -> Response:
        gateway = self.gateway
        service = gateway.service
        if not gateway.accepting:
            raise GatewayError("INTERNAL", "the server is shutting down")
        session_id = request.path_params["session_id"]
        last_event_id = request.headers.get("last-event-id")
        run_id: str | None
        if last_event_id:
            run_id, after_seq = parse_last_event_id(last_event_id)
        else:
            run_id = query_id(request, "run_id")
            after_seq = query_int(request, "after_seq", 0, minimum=0, maximum=frames.MAX_INT)
        try:
            sub = await service.subscribe(user, session_id, run_id=run_id, after_seq=after_seq)
        except UnknownRun as exc:
            field = "Last-Event-ID" if last_event_id else "run_id"
            raise invalid(field, exc.detail) from None
        return EventStream(gateway, sub, user)

    async def abort(self, request: Request, user: str) -> Response:
        body = await read_body(request, AbortBody, self.gateway.settings.max_frame)
        session_id = request.path_params["session_id"]
        summary = await self.gateway.service.abort(user, session_id, clear_queue=body.clear_queue)
        return JSONResponse(
            {"session_id": session_id, "run_id": summary.run_id, "last_seq": summary.last_seq}
        )

    async def runs(self, request: Request, user: str) -> Response:
        summaries = await self.gateway.service.list_runs(user, run_status(request))
        return JSONResponse({"runs": to_builtins(summaries)})
