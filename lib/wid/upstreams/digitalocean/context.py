"""DigitalOcean contexts: a context id is a team UUID (`aud = api://DigitalOcean?actx={team UUID}`).

Standard library only: lib/wid/upstreams/registry.py checks audiences with it on the exchange path.
"""

from __future__ import annotations

from wid.core import names
from wid.core.errors import InvalidRequest

API = "DigitalOcean"


def validate_context(actx: str) -> None:
    if not names.is_team_uuid(actx):
        raise InvalidRequest(f"DigitalOcean contexts are team UUIDs, got {actx!r}", code="bad_context")
