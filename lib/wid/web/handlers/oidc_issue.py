"""POST /v1/oidc/issue (JSON, the articles' curl + jq) and POST /v1/oidc/token (RFC 8693 form).

Both run the same exchange (wid.exchange) and the same policy check: `create` on /v1/oidc/issue.

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

from wid.core.errors import ApiError
from wid.log import request_id
from wid.service import exchange
from wid.web.http import Request, Response, Router

_NO_STORE = {"Pragma": "no-cache"}  # Cache-Control: no-store comes with every JSON response


def issue(request: Request) -> Response:
    _no_query(request)

    def body() -> dict[str, Any]:
        request.body(limit=exchange.MAX_BODY_BYTES)
        return request.json_object()

    issued = exchange.issue_json(request.bearer_token(), body)
    return Response.json({"token": issued.token, "expires_at": issued.expires_at}, headers=_NO_STORE)


def token(request: Request) -> Response:
    try:
        _no_query(request)

        def body() -> bytes:
            if request.content_type != "application/x-www-form-urlencoded":
                raise ApiError(415, "unsupported_media_type",
                               f"expected application/x-www-form-urlencoded, got {request.content_type!r}")
            return request.body(limit=exchange.MAX_BODY_BYTES)

        issued, issued_type = exchange.issue_form(body)
    except ApiError as err:
        return _oauth_error(err)
    payload = {
        "access_token": issued.token,
        "issued_token_type": issued_type,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    }
    return Response.json(payload, headers=_NO_STORE)


def _no_query(request: Request) -> None:
    if request.query_string:
        raise ApiError(400, "bad_request", "the exchange takes no query string; send everything in the body")


def _oauth_error(err: ApiError) -> Response:
    """RFC 6749 5.2: `error` + `error_description`, status 400 unless the failure is not the client's."""
    if isinstance(err, exchange.OAuthError):
        status, code = err.status, err.error
    elif isinstance(err, exchange.TargetError):
        status, code = 400, "invalid_target"
    elif err.status in (401, 403):
        status, code = 400, "invalid_request"  # RFC 8693 2.2.2: invalid or unacceptable subject token
    elif err.status in (413, 415, 405):
        status, code = err.status, "invalid_request"
    elif err.status == 400:
        status, code = 400, "invalid_request"
    elif err.status in (502, 503, 504):
        status, code = err.status, "temporarily_unavailable"
    else:
        status, code = err.status, "server_error"
    payload = {
        "error": code,
        "error_description": err.message,
        "id": err.error_id,
        "message": err.message,
        "request_id": request_id.get(),
    }
    headers = {key: value for key, value in err.headers.items() if key.lower() != "www-authenticate"}
    return Response.json(payload, status, {**headers, **_NO_STORE})


handler = Router()
handler.add("POST", exchange.ISSUE_PATH, issue)
handler.add("POST", exchange.TOKEN_PATH, token)
