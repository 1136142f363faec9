"""What the proxy's OAuth clients share (DigitalOcean's web flow, ATProto's confidential client)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wid.core.errors import InvalidRequest
from wid.store import audit

if TYPE_CHECKING:
    from wid.store import browser_state


class TokenEndpointError(Exception):
    """The token endpoint refused (RFC 6749 5.2): `error` is the OAuth error code (invalid_grant, invalid_client...)."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(f"{error}: {description}" if description else error)
        self.status = status
        self.error = error
        self.description = description


def consume_state(binding: browser_state.Binding, state: str | None, cookie_header_value: str | None, *, api: str,
                  event: str, start_again: str) -> dict[str, Any]:
    """What the flow `state` belongs to remembered: once, before it expires, from the browser it was issued to.

    Else the refusal is audited as `event` and raised as invalid_state (400), its message ending with
    start_again (where the user starts over).
    """
    # Here only: browser_state loads http.cookies, which a forwarded API call (api.py imports this module for
    # TokenEndpointError) must not pay for.
    from wid.store import browser_state

    try:
        return browser_state.consume(binding, state, cookie_header_value)
    except browser_state.StateError as exc:
        audit.record(event, "deny", api=api, reason=str(exc))
        raise InvalidRequest(f"{exc}; {start_again}", code="invalid_state") from None
