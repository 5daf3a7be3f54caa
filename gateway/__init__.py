"""runwire's gateway: the Starlette app serving WebSocket, HTTP and SSE clients.

``create_app(settings)`` returns a ready app; :class:`Gateway` holds one server's state
and gives its routes and lifespan to mount in an existing Starlette or FastAPI app.
"""

from .app import Gateway, create_app
from .settings import Settings

__all__ = ["Gateway", "Settings", "create_app"]
