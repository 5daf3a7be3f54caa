"""runwire's gateway: the Starlette app serving WebSocket, HTTP and SSE clients."""
