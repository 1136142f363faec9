"""Issuer metadata: built from the database, written as static files that Caddy serves directly.

Verifiers fetch these on every cold start, so no Python process runs per request. Files are replaced
atomically (write then rename), whenever the key set changes and whenever this replica signs with a
key its files do not list yet (another replica may have rotated).
"""

from __future__ import annotations

import json
import os
from typing import Any

from wid import config

CLAIMS_SUPPORTED = ["iss", "aud", "sub", "iat", "nbf", "exp", "jti", "act", "droplet_id", "wid_kind"]


def openid_configuration(endpoint: str) -> dict[str, Any]:
    return {
        "issuer": endpoint,
        "jwks_uri": f"{endpoint}/.well-known/jwks",
        "token_endpoint": f"{endpoint}/v1/oidc/token",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": CLAIMS_SUPPORTED,
        "scopes_supported": ["openid"],
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"],
    }


def cache_control() -> str:
    """What Caddy sends with the static files too (Caddyfile: the same WID_JWKS_MAX_AGE)."""
    return f"public, max-age={config.settings().jwks_max_age}"


def document_path(name: str) -> str:
    """Where the published document `name` (openid-configuration, jwks) is, for Caddy to serve."""
    return os.path.join(config.settings().public_dir, ".well-known", name)


def _write(path: str, payload: dict[str, Any]) -> None:
    import tempfile  # only when keys change: not on every request that signs

    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def publish() -> list[str]:
    """Write both documents from the database; returns the published kids."""
    from wid.store import keys  # keys -> tokens -> wellknown: import late to keep the graph acyclic

    jwks = keys.published()
    if not jwks:
        jwks = [keys.public_jwk(keys.active_key().kid) or {}]
    _write(document_path("openid-configuration"), openid_configuration(config.settings().this_endpoint))
    _write(document_path("jwks"), {"keys": jwks})
    return [k["kid"] for k in jwks]


# The kids of the JWKS file as last read, by the file's identity: a signature checks its key is published
# with one stat() while the file stays the same (publish() replaces it by rename: a new inode).
_published: tuple[tuple[str, int, int, int], frozenset[str]] | None = None


def published_kids() -> frozenset[str]:
    global _published
    path = document_path("jwks")
    try:
        st = os.stat(path)
        identity = (path, st.st_ino, st.st_mtime_ns, st.st_size)
        if _published is not None and _published[0] == identity:
            return _published[1]
        with open(path, "rb") as published:
            data = json.loads(published.read())
        kids = frozenset(k["kid"] for k in data.get("keys", []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return frozenset()
    _published = (identity, kids)
    return kids


def ensure_published(kid: str) -> None:
    """Never hand out a token that verifiers could not check through our JWKS."""
    if kid not in published_kids():
        publish()
