"""The upstream APIs this proxy serves, by the name tokens use (`aud = api://{API}?actx={actx}`).

Adding an upstream means a package under lib/wid/upstreams/ whose `context` module says what its
context ids look like (and a line here), its forwarding edge under lib/wid/web/forward/, and the
routes and handler that call it (Caddyfile, cgi-bin/, lib/wid/web/handlers/). Standard library only:
the exchange checks audiences with it.
"""

from __future__ import annotations

from collections.abc import Callable

from wid.core.errors import InvalidRequest
from wid.upstreams.atproto import context as atproto
from wid.upstreams.digitalocean import context as digitalocean

_CONTEXT_CHECKS: dict[str, Callable[[str], None]] = {
    digitalocean.API: digitalocean.validate_context,
    atproto.API: atproto.validate_context,
}


def known_apis() -> list[str]:
    return sorted(_CONTEXT_CHECKS)


def validate_context(api: str, actx: str) -> None:
    """InvalidRequest (unknown_api, bad_context) unless `api` is served here and `actx` is one of its contexts."""
    check = _CONTEXT_CHECKS.get(api)
    if check is None:
        raise InvalidRequest(f"unknown API {api!r}; this proxy serves {', '.join(known_apis())}", code="unknown_api")
    check(actx)
