"""Domain errors: what went wrong, in words a user can act on. The web edge alone picks the HTTP status.

Each class names a kind of failure; `code` is the stable machine-readable id callers see (the `id` of
the JSON error body), defaulting to the kind's own. lib/wid/web/errors.py holds the one table from these
kinds to HTTP statuses and OAuth error codes.
"""

from __future__ import annotations


class WidError(Exception):
    """Base of every error the service reports to a caller; never carries a secret."""

    code = "server_error"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int | str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = None if retry_after is None else str(retry_after)


class InvalidRequest(WidError):
    """The request itself is malformed or names something that cannot be (the caller must change it)."""

    code = "bad_request"


class Unauthenticated(WidError):
    """No credential, or one that is not valid here (expired, wrong issuer, wrong kind, unknown key).

    `challenge` is how the caller should authenticate instead (HTTP's WWW-Authenticate), when not a bearer token.
    """

    code = "unauthorized"

    def __init__(self, message: str, *, code: str | None = None, challenge: str | None = None) -> None:
        super().__init__(message, code=code)
        self.challenge = challenge


class Forbidden(WidError):
    """A valid credential that may not do this (policy, ownership, a team not connected)."""

    code = "forbidden"


class NotFound(WidError):
    code = "not_found"


class MethodNotAllowed(WidError):
    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: list[str] | tuple[str, ...], code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.allowed = tuple(allowed)


class Conflict(WidError):
    code = "conflict"


class TooLarge(WidError):
    code = "request_too_large"


class UnsupportedMediaType(WidError):
    code = "unsupported_media_type"


class Unavailable(WidError):
    """This proxy or something it depends on cannot answer now; the same request may succeed later."""

    code = "service_unavailable"


class UpstreamFailed(WidError):
    """An upstream (DigitalOcean, an authorization server, a PDS) answered with a failure or not at all."""

    code = "bad_gateway"


class UpstreamTimeout(WidError):
    code = "gateway_timeout"


class Misconfigured(WidError):
    """The server's own configuration is wrong; the message names the setting."""

    code = "misconfigured"


class UnknownAudience(InvalidRequest):
    """A requested audience names no API or context this proxy serves (RFC 8693's invalid_target)."""
