"""Issuer metadata when Caddy has no static file to serve yet (first start, or a fresh replica)."""

from __future__ import annotations

import json

from wid.store import wellknown
from wid.web.app import Router
from wid.web.request import Request
from wid.web.response import Response


def _serve(name: str) -> Response:
    wellknown.publish()
    with open(wellknown.document_path(name), "rb") as document:
        data = document.read()
    json.loads(data)  # what we hand out must be JSON, even if the file was tampered with
    return Response(200, data, [("Content-Type", "application/json"), ("Cache-Control", wellknown.cache_control())])


def openid_configuration(request: Request) -> Response:
    return _serve("openid-configuration")


def jwks(request: Request) -> Response:
    return _serve("jwks")


handler = Router()
handler.add("GET", "/.well-known/openid-configuration", openid_configuration)
handler.add("GET", "/.well-known/jwks", jwks)
