"""The one table from domain errors (lib/wid/core/errors.py) to HTTP answers and OAuth error codes.

Domain code says what went wrong; only this module says which status, headers and OAuth `error` that
becomes. Every route answers errors as {"id", "message", "request_id"}; the RFC 8693 endpoint adds
RFC 6749 5.2's `error` and `error_description`.
"""

from __future__ import annotations

from wid.core.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    Misconfigured,
    NotFound,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnknownAudience,
    UnsupportedMediaType,
    UpstreamFailed,
    UpstreamTimeout,
    WidError,
)
from wid.log import request_id
from wid.web.response import Response

# kind of error -> (HTTP status, OAuth error of the token endpoint, status the token endpoint answers).
# Looked up along the error's class hierarchy, most specific first.
_TABLE: dict[type[WidError], tuple[int, str, int | None]] = {
    UnknownAudience: (400, "invalid_target", 400),
    InvalidRequest: (400, "invalid_request", 400),
    # RFC 8693 2.2.2: a subject token that is invalid or not acceptable is the client's invalid_request.
    Unauthenticated: (401, "invalid_request", 400),
    Forbidden: (403, "invalid_request", 400),
    NotFound: (404, "server_error", None),
    MethodNotAllowed: (405, "invalid_request", None),
    Conflict: (409, "server_error", None),
    TooLarge: (413, "invalid_request", None),
    UnsupportedMediaType: (415, "invalid_request", None),
    Misconfigured: (500, "server_error", None),
    UpstreamFailed: (502, "temporarily_unavailable", None),
    Unavailable: (503, "temporarily_unavailable", None),
    UpstreamTimeout: (504, "temporarily_unavailable", None),
    WidError: (500, "server_error", None),
}
# The RFC 6749 / RFC 8693 codes a domain error may name itself (its `code`) at the token endpoint.
OAUTH_CODES = frozenset({"invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
                         "unsupported_grant_type", "invalid_scope", "invalid_target"})
BEARER_CHALLENGE = 'Bearer error="invalid_token"'


def _entry(err: WidError) -> tuple[int, str, int | None]:
    for kind in type(err).__mro__:
        if kind in _TABLE:
            return _TABLE[kind]
    return _TABLE[WidError]


def status_of(err: WidError) -> int:
    """The HTTP status this error is answered with."""
    return _entry(err)[0]


def headers_of(err: WidError) -> dict[str, str]:
    """The headers this error's kind calls for: how to authenticate, which methods, when to retry."""
    headers: dict[str, str] = {}
    if isinstance(err, Unauthenticated):
        headers["WWW-Authenticate"] = err.challenge or BEARER_CHALLENGE
    if isinstance(err, MethodNotAllowed):
        headers["Allow"] = ", ".join(err.allowed)
    if err.retry_after is not None:
        headers["Retry-After"] = err.retry_after
    return headers


def error_response(err: WidError, extra_headers: dict[str, str] | None = None) -> Response:
    payload = {"id": err.code, "message": err.message, "request_id": request_id.get()}
    return Response.json(payload, status_of(err), {**headers_of(err), **(extra_headers or {})})


def oauth_error_response(err: WidError, extra_headers: dict[str, str] | None = None) -> Response:
    """RFC 6749 5.2 for the RFC 8693 endpoint: `error` + `error_description`, beside our own id and message.

    A failure of the client's request is 400; a failure that is not the client's keeps its own status.
    """
    status, oauth_error, oauth_status = _entry(err)
    if isinstance(err, InvalidRequest) and err.code in OAUTH_CODES:
        oauth_error = err.code
    payload = {
        "error": oauth_error,
        "error_description": err.message,
        "id": err.code,
        "message": err.message,
        "request_id": request_id.get(),
    }
    headers = {k: v for k, v in headers_of(err).items() if k != "WWW-Authenticate"}
    return Response.json(payload, oauth_status or status, {**headers, **(extra_headers or {})})
