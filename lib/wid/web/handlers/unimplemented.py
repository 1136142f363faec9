"""Routes whose handler is not built yet answer 501 in the JSON error format, never a guess."""

from __future__ import annotations

from wid.core.errors import ApiError
from wid.web.http import Request, Response


def handler(request: Request) -> Response:
    raise ApiError(501, "not_implemented", f"{request.method} {request.path} is not implemented by this proxy yet")
