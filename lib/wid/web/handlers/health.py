"""GET /health/ready: the database answers (GET /health is answered by Caddy alone)."""

from __future__ import annotations

from wid.core.errors import unavailable
from wid.store import storage
from wid.web.http import Request, Response, Router


def ready(request: Request) -> Response:
    try:
        storage.database().ping()
    except storage.DatabaseUnavailable as exc:
        raise unavailable(f"not ready: {exc}") from None
    return Response.json({"status": "ready"})


handler = Router()
handler.add("GET", "/health/ready", ready)
