"""POST /v1/oidc/issue (JSON, the articles' curl + jq) and POST /v1/oidc/token (RFC 8693 form).

Both run the same exchange (wid.service.exchange) and the same policy check: `create` on /v1/oidc/issue.

/v1/oidc/issue: `Authorization: Bearer <token>`, body {"aud", "sub", "ttl"?, ...extra claims} as
application/json (or curl -d's default form content type) -> 200 {"token", "expires_at"};
errors are this proxy's {"id", "message", "request_id"} with 400/401/403/413/415/503.

/v1/oidc/token: application/x-www-form-urlencoded grant_type, subject_token, subject_token_type,
audience, scope (= the requested sub), requested_token_type?, ttl? -> 200 {"access_token",
"issued_token_type", "token_type": "Bearer", "expires_in"}; errors follow RFC 6749 5.2 / RFC 8693
2.2.2: 400 {"error": "invalid_request" | "invalid_target" | "invalid_scope" | "unsupported_grant_type",
"error_description"} (an invalid subject token or a policy refusal is invalid_request, as RFC 8693
requires), plus this proxy's "id", "message" and "request_id".
"""

from __future__ import annotations

from typing import Any

from wid.core.errors import InvalidRequest, UnsupportedMediaType, WidError
from wid.service import exchange
from wid.web.app import Router
from wid.web.errors import oauth_error_response, status_of
from wid.web.request import Request
from wid.web.response import Response

_NO_STORE = {"Pragma": "no-cache"}  # Cache-Control: no-store comes with every JSON response


def issue(request: Request) -> Response:
    _no_query(request)

    def body() -> dict[str, Any]:
        request.body(limit=exchange.MAX_BODY_BYTES)
        return request.json_object()

    issued = exchange.issue_json(request.bearer_token(), body, status_of)
    return Response.json({"token": issued.token, "expires_at": issued.expires_at}, headers=_NO_STORE)


def token(request: Request) -> Response:
    try:
        _no_query(request)

        def body() -> bytes:
            if request.content_type != "application/x-www-form-urlencoded":
                raise UnsupportedMediaType(f"expected application/x-www-form-urlencoded, got {request.content_type!r}")
            return request.body(limit=exchange.MAX_BODY_BYTES)

        issued, issued_type = exchange.issue_form(body, status_of)
    except WidError as err:
        return oauth_error_response(err, _NO_STORE)
    payload = {
        "access_token": issued.token,
        "issued_token_type": issued_type,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    }
    return Response.json(payload, headers=_NO_STORE)


def _no_query(request: Request) -> None:
    if request.query_string:
        raise InvalidRequest("the exchange takes no query string; send everything in the body")


handler = Router()
handler.add("POST", exchange.ISSUE_PATH, issue)
handler.add("POST", exchange.TOKEN_PATH, token)
