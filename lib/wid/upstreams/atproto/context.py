"""ATProto contexts: a context id is a DID (`aud = api://ATProto?actx={DID}`).

A `did:plc:` (24 base32 characters) or a `did:web:` naming a host (no port, no path, so the id never
holds a ':' after its method). Standard library only: lib/wid/upstreams/registry.py checks audiences
with it on the exchange path.
"""

from __future__ import annotations

import re

from wid.core.errors import InvalidRequest

API = "ATProto"
DID_PLC = re.compile(r"^did:plc:[a-z2-7]{24}$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DID_WEB = re.compile(rf"^did:web:(?=.{{4,120}}$){_LABEL}(?:\.{_LABEL})+$")


def is_did_context(actx: str) -> bool:
    return bool(DID_PLC.match(actx) or DID_WEB.match(actx))


def validate_context(actx: str) -> None:
    if not is_did_context(actx):
        raise InvalidRequest(f"ATProto contexts are DIDs: did:plc:{{24 base32 characters}} or "
                             f"did:web:{{host name}}, got {actx[:100]!r}", code="bad_context")
