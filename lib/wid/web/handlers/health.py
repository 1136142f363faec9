"""GET /health/ready: the database answers (GET /health is answered by Caddy alone)."""

from __future__ import annotations

from wid.core.errors import Unavailable
from wid.store import storage
from wid.web.app import Router
from wid.web.request import Request
from wid.web.response import Response


def ready(request: Request) -> Response:
    try:
        storage.database().ping()
    except storage.DatabaseUnavailable as exc:
        raise Unavailable(f"not ready: {exc}") from None
    return Response.json({"status": "ready"})


handler = Router()
handler.add("GET", "/health/ready", ready)
