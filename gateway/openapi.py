"""``GET /openapi.json``: a hand-written OpenAPI 3.1 description of the HTTP API.

The WebSocket protocol is described in ``docs/protocol.md``; here it appears only as the
``/ws`` upgrade endpoint.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/responses/Error"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _ERROR for status in (401, *statuses)}


_SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 256},
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {
                        "type": "string",
                        "enum": [
                            "BAD_FRAME",
                            "INVALID_FIELD",
                            "UNKNOWN_PROVIDER",
                            "UNAUTHORIZED",
                            "FORBIDDEN",
                            "SESSION_NOT_FOUND",
                            "NOT_FOUND",
                            "NO_ACTIVE_RUN",
                            "TOO_LARGE",
                            "RATE_LIMITED",
                            "INTERNAL",
                        ],
                    },
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "The offending field."},
                },
            }
        },
    },
    "Session": {
        "type": "object",
        "required": [
            "session_id",
            "title",
            "provider",
            "status",
            "created_at",
            "updated_at",
            "has_unread",
            "running_run_id",
            "handoff",
            "forked_from",
        ],
        "properties": {
            "session_id": {"type": "string"},
            "title": {"type": ["string", "null"]},
            "provider": {"type": "string"},
            "status": {"type": "string", "enum": ["active", "locked", "archived"]},
            "created_at": {"type": "integer", "description": "ms since the Unix epoch"},
            "updated_at": {"type": "integer", "description": "ms since the Unix epoch"},
            "has_unread": {"type": "boolean"},
            "running_run_id": {"type": ["string", "null"]},
            "handoff": {
                "oneOf": [_ref("Handoff"), {"type": "null"}],
                "description": "The handoff notes last written, or null",
            },
            "forked_from": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["session_id", "run_id", "seq"],
                        "properties": {
                            "session_id": {"type": "string"},
                            "run_id": {"type": ["string", "null"]},
                            "seq": {"type": ["integer", "null"]},
                        },
                    },
                    {"type": "null"},
                ],
                "description": "The session and position this session was forked at, or null",
            },
        },
    },
    "Handoff": {
        "type": "object",
        "required": ["summary"],
        "additionalProperties": False,
        "properties": {
            "summary": {"type": "string", "maxLength": 10000},
            "next_steps": {
                "type": "array",
                "maxItems": 100,
                "items": {"type": "string", "maxLength": 10000},
            },
            "blockers": {
                "type": "array",
                "maxItems": 100,
                "items": {"type": "string", "maxLength": 10000},
            },
            "context_for_next": {"type": "object"},
        },
    },
    "Context": {
        "type": "object",
        "description": "What the session's event log says the agent did",
        "required": [
            "session_id",
            "runs",
            "first_start",
            "last_activity",
            "duration_ms",
            "duration",
            "events",
            "tools",
            "actions",
            "errors",
            "checkpoints",
            "artifacts",
            "handoff",
        ],
        "properties": {
            "session_id": {"type": "string"},
            "runs": {
                "type": "object",
                "properties": {
                    "count": {"type": "integer"},
                    "running": {"type": "integer"},
                    "by_outcome": {
                        "type": "object",
                        "additionalProperties": {"type": "integer"},
                        "description": "done, aborted, interrupted, error, server_restart",
                    },
                },
            },
            "first_start": {"type": ["integer", "null"], "description": "ms since the epoch"},
            "last_activity": {"type": ["integer", "null"], "description": "ms since the epoch"},
            "duration_ms": {"type": "integer", "description": "summed over runs"},
            "duration": {"type": "string", "description": "for people: 45s, 3m 20s, 1h 5m"},
            "events": {
                "type": "object",
                "properties": {
                    "total": {"type": "integer"},
                    "by_kind": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
            },
            "tools": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "tool uses per tool name, most used first",
            },
            "actions": {
                "type": "array",
                "description": "the last 20 tool uses and assistant texts, newest first: "
                "run_id, seq, ts, kind, and name and input (a preview) or text",
                "items": {"type": "object"},
            },
            "errors": {
                "type": "object",
                "properties": {
                    "events": {
                        "type": "array",
                        "description": "the last 20 error events: run_id, seq, ts, message, code?",
                        "items": {"type": "object"},
                    },
                    "runs": {
                        "type": "array",
                        "description": "runs that ended in error: run_id, started_at, "
                        "completed_at, error, exit_code",
                        "items": {"type": "object"},
                    },
                },
            },
            "checkpoints": {
                "type": "array",
                "description": "checkpoint events, oldest first: run_id, seq, ts, data",
                "items": {"type": "object"},
            },
            "artifacts": {
                "type": "array",
                "description": "files the agents' file tools changed, first touched first",
                "items": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "action": {"type": "string", "enum": ["created", "modified", "deleted"]},
                        "tool": {"type": "string"},
                        "changes": {"type": "integer"},
                        "run_id": {"type": "string"},
                        "seq": {"type": "integer"},
                        "ts": {"type": "integer"},
                    },
                },
            },
            "handoff": {"oneOf": [_ref("Handoff"), {"type": "null"}]},
        },
    },
    "RunSummary": {
        "type": "object",
        "required": [
            "run_id",
            "session_id",
            "provider",
            "status",
            "started_at",
            "completed_at",
            "last_seq",
            "subscribers",
        ],
        "properties": {
            "run_id": {"type": "string"},
            "session_id": {"type": "string"},
            "provider": {"type": "string"},
            "status": {"type": "string", "enum": ["running", "completed", "queued"]},
            "started_at": {"type": ["integer", "null"]},
            "completed_at": {"type": ["integer", "null"]},
            "last_seq": {"type": "integer"},
            "subscribers": {"type": "integer"},
            "outcome": {
                "type": ["string", "null"],
                "enum": ["done", "aborted", "interrupted", "error", "server_restart", None],
            },
        },
    },
    "Event": {
        "type": "object",
        "description": "The same object as the WebSocket `event` frame.",
        "required": ["type", "session_id", "run_id", "seq", "kind", "ts", "data"],
        "properties": {
            "type": {"const": "event"},
            "session_id": {"type": "string"},
            "run_id": {"type": "string"},
            "seq": {"type": "integer", "minimum": 1},
            "kind": {"type": "string"},
            "ts": {"type": "integer"},
            "data": {"type": "object"},
        },
    },
    "Position": {
        "type": "object",
        "required": ["run_id", "seq"],
        "properties": {"run_id": {"type": "string"}, "seq": {"type": "integer"}},
    },
}


def openapi_document(root_path: str = "") -> dict[str, Any]:
    """The OpenAPI document; ``root_path`` is where the routes are mounted."""
    session = _ref("Session")
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Liveness (no authentication)",
                "security": [],
                "responses": {"200": _json({"type": "object"}, '`{"status": "ok"}`')},
            }
        },
        "/api/me": {
            "get": {
                "summary": "Who the token belongs to",
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"user": {"type": "string"}}},
                        '`{"user": "alice"}`',
                    ),
                    **_errors(),
                },
            }
        },
        "/api/providers": {
            "get": {
                "summary": "The providers a new session may use, and the default",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "providers": {"type": "array", "items": {"type": "string"}},
                                "default": {"type": "string"},
                            },
                        },
                        '`{"providers": ["echo"], "default": "echo"}`',
                    ),
                    **_errors(),
                },
            }
        },
        "/": {
            "get": {
                "summary": "The chat page (no authentication; it reads ?token= itself)",
                "security": [],
                "responses": {"200": {"description": "HTML"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(),
                },
            }
        },
        "/api/sessions": {
            "post": {
                "summary": "Create a session",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "provider": {"type": "string"},
                                    "title": {"type": "string", "maxLength": 500},
                                },
                            }
                        }
                    },
                },
                "responses": {"201": _json(session, "The new session"), **_errors(400, 413)},
            },
            "get": {
                "summary": "The caller's sessions, newest activity first",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "At most this many sessions (default: all of them)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "description": "The next value of the page before",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["sessions", "next"],
                            "properties": {
                                "sessions": {"type": "array", "items": session},
                                "next": {
                                    "type": ["string", "null"],
                                    "description": "Pass as after for the next page; null "
                                    "when there is no more (always null without a limit).",
                                },
                            },
                        },
                        "Sessions",
                    ),
                    **_errors(400),
                },
            },
        },
        "/api/sessions/{session_id}": {
            "parameters": [_SESSION_ID],
            "get": {
                "summary": "One session",
                "responses": {"200": _json(session, "The session"), **_errors(404)},
            },
            "patch": {
                "summary": "Change title and/or status",
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "title": {"type": "string", "maxLength": 500},
                                    "status": {
                                        "type": "string",
                                        "enum": ["active", "locked", "archived"],
                                    },
                                },
                            }
                        }
                    }
                },
                "responses": {"200": _json(session, "The session"), **_errors(400, 404, 413)},
            },
            "delete": {
                "summary": "Abort its run, delete it with its runs and events, push "
                "`session_deleted`",
                "responses": {"204": {"description": "Deleted"}, **_errors(404)},
            },
        },
        "/api/sessions/{session_id}/handoff": {
            "parameters": [_SESSION_ID],
            "put": {
                "summary": "Store handoff notes on the session (replacing earlier ones)",
                "requestBody": {"content": {"application/json": {"schema": _ref("Handoff")}}},
                "responses": {"200": _json(session, "The session"), **_errors(400, 404, 413)},
            },
        },
        "/api/sessions/{session_id}/context": {
            "parameters": [_SESSION_ID],
            "get": {
                "summary": "The session's context, derived from its event log",
                "responses": {"200": _json(_ref("Context"), "The context"), **_errors(404)},
            },
        },
        "/api/sessions/{session_id}/fork": {
            "parameters": [_SESSION_ID],
            "post": {
                "summary": "Fork the session at a position (default: its end) into a new one",
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "run_id": {"type": "string"},
                                    "seq": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "description": "the last event copied (0: none of "
                                        "the run); default: the run's last",
                                    },
                                    "title": {"type": "string", "maxLength": 500},
                                },
                            }
                        }
                    }
                },
                "responses": {"201": _json(session, "The new session"), **_errors(400, 404, 413)},
            },
        },
        "/api/sessions/{session_id}/checkpoint": {
            "parameters": [_SESSION_ID],
            "post": {
                "summary": "Mark a checkpoint event in the session's running run",
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["label"],
                                "additionalProperties": False,
                                "properties": {
                                    "label": {"type": "string", "minLength": 1, "maxLength": 500},
                                    "data": {"type": "object"},
                                },
                            }
                        }
                    }
                },
                "responses": {
                    "201": _json(_ref("Position"), "Where the checkpoint is: run_id and seq"),
                    **_errors(400, 404, 409, 413),
                },
            },
        },
        "/api/sessions/{session_id}/read": {
            "parameters": [_SESSION_ID],
            "post": {
                "summary": "Clear has_unread",
                "responses": {"204": {"description": "Cleared"}, **_errors(404)},
            },
        },
        "/api/sessions/{session_id}/events": {
            "parameters": [
                _SESSION_ID,
                {
                    "name": "after_run",
                    "in": "query",
                    "schema": {"type": "string", "maxLength": 256},
                },
                {"name": "after_seq", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 200},
                },
                {
                    "name": "kinds",
                    "in": "query",
                    "description": "Comma-separated event kinds to keep (default: every kind)",
                    "schema": {"type": "string"},
                },
            ],
            "get": {
                "summary": "Durable history, in order, paginated",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["events", "next"],
                            "properties": {
                                "events": {"type": "array", "items": _ref("Event")},
                                "next": {
                                    "oneOf": [_ref("Position"), {"type": "null"}],
                                    "description": "Pass as after_run/after_seq for the next "
                                    "page; null when there is no more.",
                                },
                            },
                        },
                        "A page of events",
                    ),
                    **_errors(400, 404),
                },
            },
        },
        "/api/sessions/{session_id}/stream": {
            "parameters": [
                _SESSION_ID,
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                {"name": "run_id", "in": "query", "schema": {"type": "string", "maxLength": 256}},
                {"name": "after_seq", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            ],
            "get": {
                "summary": "The session's events as Server-Sent Events (id: run_id:seq, "
                "event: kind, data: event frame); first event: subscribed; it ends with "
                "event: lagged (reconnect to resume) or event: session_deleted",
                "responses": {
                    "200": {
                        "description": "An event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 404),
                },
            },
        },
        "/api/sessions/{session_id}/abort": {
            "parameters": [_SESSION_ID],
            "post": {
                "summary": "Abort the running run",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"clear_queue": {"type": "boolean"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "session_id": {"type": "string"},
                                "run_id": {"type": "string"},
                                "last_seq": {"type": "integer"},
                            },
                        },
                        "The aborted run",
                    ),
                    **_errors(404, 409),
                },
            },
        },
        "/api/runs": {
            "get": {
                "summary": "The caller's run summaries",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["running", "all"]},
                    }
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["runs"],
                            "properties": {"runs": {"type": "array", "items": _ref("RunSummary")}},
                        },
                        "Runs",
                    ),
                    **_errors(400),
                },
            }
        },
        "/ws": {
            "get": {
                "summary": "WebSocket upgrade (protocol in docs/protocol.md); ?batch=1 packs "
                "frames into JSON arrays",
                "parameters": [
                    {"name": "batch", "in": "query", "schema": {"type": "string", "enum": ["1"]}}
                ],
                "responses": {
                    "101": {"description": "Switching protocols"},
                    "403": _ERROR,
                    **_errors(),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "runwire",
            "version": "1",
            "description": "Keeps AI chat runs alive across browser refreshes.",
        },
        "servers": [{"url": root_path or "/"}],
        "security": [{"bearer": []}, {"token": []}],
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "responses": {"Error": _json(_ref("Error"), "An error")},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    }
