"""Errors as values: an HTTP status, a DigitalOcean-style error id, and a message a user can act on."""

from __future__ import annotations


class ApiError(Exception):
    """Raised anywhere in a handler; rendered as {"id": ..., "message": ..., "request_id": ...}."""

    def __init__(self, status: int, error_id: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.error_id = error_id
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str = "The resource you were accessing could not be found.") -> ApiError:
    return ApiError(404, "not_found", message)


def unavailable(message: str) -> ApiError:
    return ApiError(503, "service_unavailable", message)


def bad_gateway(message: str) -> ApiError:
    return ApiError(502, "bad_gateway", message)


def gateway_timeout(message: str) -> ApiError:
    return ApiError(504, "gateway_timeout", message)
