"""Routes whose handler is not built yet answer 501 in the JSON error format, never a guess."""

from __future__ import annotations

from wid.core.errors import NotImplementedHere
from wid.web.request import Request
from wid.web.response import Response


def handler(request: Request) -> Response:
    raise NotImplementedHere(f"{request.method} {request.path} is not implemented by this proxy yet")
