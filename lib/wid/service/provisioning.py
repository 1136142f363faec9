"""Provisioning tokens and their nonces, the Droplet lookup, and the workload identity a Droplet gets.

Life of a nonce (table provisioning_nonces, docs/droplets.md):

  pending  stored before the upstream `POST /v2/droplets`; cannot be proved
  bound    the upstream created Droplets; their ids are in provisioning_droplets, each provable once
  failed   the upstream refused, failed or timed out; nothing can ever be proved with it

Standard library and `cryptography` only (through tokens): this module is on the prove and refresh paths.
"""

import json
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from wid import config
from wid.core import names, tokens
from wid.core.errors import Forbidden, InvalidRequest, Unauthenticated, Unavailable, UpstreamFailed
from wid.store import signing, storage
from wid.upstreams.digitalocean import api as upstream_digitalocean

API = upstream_digitalocean.API
PROVISIONING_TTL = 15 * 60
WORKLOAD_TTL = 15 * 60
# ssh-keygen -Y sign namespaces: one per purpose, so a signature made for one is useless for the other.
NAMESPACE_PROVE = "droplet-provisioning@wid"
NAMESPACE_RECOVER = "droplet-recovery@wid"
OIDC_SUB_TAG = "oidc-sub:"
PENDING, BOUND, FAILED = "pending", "bound", "failed"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
_SUB_PART = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_DROPLET_ID = 2**53


# -- the identity a Droplet's tags give it ----------------------------------------------------------

def parse_oidc_sub_tags(tags: Iterable[Any]) -> list[tuple[str, str]]:
    """(key, value) of every `oidc-sub:{key}:{value}` tag; a malformed one raises ValueError.

    key and value are non-empty, hold no ':' (DigitalOcean tags allow letters, digits, '_', '-' and
    ':'), and key is not `actx` (the context prefix is the proxy's to set).
    """
    parts: set[tuple[str, str]] = set()
    for tag in tags:
        if not isinstance(tag, str) or not tag.startswith(OIDC_SUB_TAG):
            continue
        rest = tag[len(OIDC_SUB_TAG):].split(":")
        if len(rest) != 2 or not all(_SUB_PART.match(p) for p in rest):
            raise ValueError(f"tag {tag!r} is not of the form oidc-sub:{{key}}:{{value}} "
                             f"(letters, digits, '_' and '-' only in key and value)")
        if rest[0].lower() == "actx":
            raise ValueError(f"tag {tag!r} may not set actx: the proxy prefixes the team's context itself")
        parts.add((rest[0], rest[1]))
    return sorted(parts)


def subject_for(team_uuid: str, tags: Iterable[Any]) -> str:
    """The workload identity `sub`: `actx:{team}:` + the `oidc-sub:` tags, sorted, joined with ':'.

    `oidc-sub:role:web` -> `actx:{team}:role:web`; with `oidc-sub:env:prod` too ->
    `actx:{team}:env:prod:role:web` (sorted by key, then value; the order of tags never matters).
    """
    try:
        parts = parse_oidc_sub_tags(tags)
    except ValueError as exc:
        raise Forbidden(f"cannot derive the Droplet's identity: {exc}") from None
    if not parts:
        raise Forbidden("the Droplet has no oidc-sub:{key}:{value} tag, so it has no workload identity; "
                        "tag it, for example oidc-sub:role:my-role")
    return f"actx:{team_uuid}:" + ":".join(f"{k}:{v}" for k, v in parts)


def workload_token(team_uuid: str, droplet: "Droplet") -> tuple[str, dict[str, Any]]:
    sub = subject_for(team_uuid, droplet.tags)
    return signing.sign({"aud": f"api://{API}?actx={team_uuid}", "sub": sub, "droplet_id": droplet.id},
                        kind=tokens.WORKLOAD, lifetime=WORKLOAD_TTL)


# -- the Droplet, as DigitalOcean reports it ---------------------------------------------------------

class Droplet(NamedTuple):
    id: int
    status: str
    public_ipv4: str | None
    tags: list[str]


def parse_droplet_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest("droplet_id must be a positive integer")
    text = str(value)
    if not text.isdigit() or not 0 < int(text) < MAX_DROPLET_ID:
        raise InvalidRequest("droplet_id must be a positive integer")
    return int(text)


def lookup_droplet(team_uuid: str, droplet_id: int) -> Droplet | None:
    """GET /v2/droplets/{id} with the team's token; None when DigitalOcean says it does not exist."""
    response = upstream_digitalocean.send_as_team(team_uuid, "GET", f"/v2/droplets/{droplet_id}", body=None,
                                                  headers={"Accept": "application/json"})
    status = response.status
    raw = response.read(limit=1024 * 1024)
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    if status == 404:
        return None
    if status in (401, 403):
        raise UpstreamFailed(f"DigitalOcean refused team {team_uuid}'s token ({status}) when reading Droplet "
                             f"{droplet_id}; an admin may need to authorize the proxy again at "
                             f"{config.settings().this_endpoint}/",
                             code="upstream_authorization")
    if status == 429:
        raise Unavailable("DigitalOcean's rate limit was reached; try again shortly",
                          code="upstream_rate_limited", retry_after="30")
    if status != 200 or not isinstance(payload, dict) or not isinstance(payload.get("droplet"), dict):
        raise UpstreamFailed(f"DigitalOcean answered {status} to GET /v2/droplets/{droplet_id}")
    droplet = payload["droplet"]
    if droplet.get("id") != droplet_id:
        raise UpstreamFailed(f"DigitalOcean answered GET /v2/droplets/{droplet_id} with another Droplet")
    public = None
    for net in (droplet.get("networks") or {}).get("v4") or []:
        if isinstance(net, dict) and net.get("type") == "public" and isinstance(net.get("ip_address"), str):
            public = net["ip_address"]
            break
    tags = [t for t in droplet.get("tags") or [] if isinstance(t, str)]
    return Droplet(droplet_id, str(droplet.get("status") or ""), public, tags)


def require_reachable(droplet: Droplet) -> str:
    """The public IPv4 the proxy attests over SSH, or a clear error (retryable while the Droplet is new)."""
    if droplet.public_ipv4:
        return droplet.public_ipv4
    if droplet.status == "new":
        raise Unavailable(f"Droplet {droplet.id} is still being created and has no public "
                          "IPv4 address yet; try again shortly", code="droplet_not_ready", retry_after="10")
    raise Forbidden(f"Droplet {droplet.id} has no public IPv4 address; the proxy attests a Droplet by connecting "
                    "to SSH on its public IPv4")


# -- provisioning tokens and nonces ------------------------------------------------------------------

class Provisioning(NamedTuple):
    nonce: str
    team_uuid: str
    token: str
    claims: dict[str, Any]


def new_provisioning(team_uuid: str) -> Provisioning:
    """A provisioning token with a fresh nonce (not stored yet: see store_pending)."""
    nonce = secrets.token_urlsafe(32)
    token, claims = signing.sign({"aud": f"api://{API}?actx={team_uuid}",
                                  "sub": f"actx:{team_uuid}:role:provisioning:nonce:{nonce}"},
                                 kind=tokens.PROVISIONING, lifetime=PROVISIONING_TTL)
    return Provisioning(nonce, team_uuid, token, claims)


def store_pending(p: Provisioning) -> None:
    now = int(time.time())
    with storage.database().transaction() as tx:
        # Expired nonces can never be proved again (their tokens are expired too): forget them.
        horizon = now - PROVISIONING_TTL - 3600
        tx.execute("DELETE FROM provisioning_droplets WHERE nonce IN "
                   "(SELECT nonce FROM provisioning_nonces WHERE expires_at < ?)", (horizon,))
        tx.execute("DELETE FROM provisioning_nonces WHERE expires_at < ?", (horizon,))
        tx.execute("INSERT INTO provisioning_nonces (nonce, team_uuid, jti, state, created_at, expires_at) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   (p.nonce, p.team_uuid, p.claims["jti"], PENDING, now, int(p.claims["exp"])))


def bind(p: Provisioning, droplet_ids: Sequence[int]) -> None:
    """The upstream created these Droplets: each may now prove once with this nonce."""
    with storage.database().transaction() as tx:
        tx.lock(f"nonce:{p.nonce}")
        for droplet_id in droplet_ids:
            tx.execute("INSERT INTO provisioning_droplets (droplet_id, nonce, team_uuid) VALUES (?, ?, ?)",
                       (droplet_id, p.nonce, p.team_uuid))
        tx.execute("UPDATE provisioning_nonces SET state = ? WHERE nonce = ? AND state = ?", (BOUND, p.nonce, PENDING))


def fail(p: Provisioning, reason: str) -> None:
    with storage.database().transaction() as tx:
        tx.execute("UPDATE provisioning_nonces SET state = ?, failure = ? WHERE nonce = ?",
                   (FAILED, reason[:500], p.nonce))


class NonceRecord(NamedTuple):
    nonce: str
    team_uuid: str
    jti: str
    state: str
    expires_at: int
    droplets: dict[int, int | None]  # droplet id -> proved_at


def verify_provisioning_token(token: str | None) -> tuple[dict[str, Any], str, str]:
    """(claims, team, nonce) of a valid provisioning token of ours; 401 otherwise."""
    if not token:
        raise Unauthenticated("missing bearer token: send the provisioning token from user_data")
    try:
        claims = signing.verify(token, kinds={tokens.PROVISIONING})
        audience = tokens.parse_audience(claims["aud"])
    except tokens.TokenError as exc:
        raise Unauthenticated(f"provisioning token refused: {exc}") from None
    if audience.api != API or not names.is_team_uuid(audience.actx):
        raise Unauthenticated("provisioning token is not for a DigitalOcean team")
    prefix = f"actx:{audience.actx}:role:provisioning:nonce:"
    sub = claims.get("sub", "")
    nonce = sub[len(prefix):] if isinstance(sub, str) and sub.startswith(prefix) else ""
    if not _NONCE.match(nonce):
        raise Unauthenticated("provisioning token has no nonce for its team")
    return claims, audience.actx, nonce


def load_nonce(nonce: str) -> NonceRecord | None:
    with storage.database().transaction(write=False) as tx:
        row = tx.one("SELECT nonce, team_uuid, jti, state, expires_at FROM provisioning_nonces WHERE nonce = ?",
                     (nonce,))
        if row is None:
            return None
        rows = tx.execute("SELECT droplet_id, proved_at FROM provisioning_droplets WHERE nonce = ? "
                          "ORDER BY droplet_id", (nonce,))
    return NonceRecord(row[0], row[1], row[2], row[3], int(row[4]), {int(r[0]): r[1] for r in rows})


def claim(tx: storage.Transaction, nonce: str, droplet_id: int, now: int) -> bool:
    """Mark (nonce, Droplet) proved; False if it already was. Atomic, even across replicas."""
    rows = tx.execute("UPDATE provisioning_droplets SET proved_at = ? WHERE nonce = ? AND droplet_id = ? "
                      "AND proved_at IS NULL RETURNING droplet_id", (now, nonce, droplet_id))
    return len(rows) == 1


# -- Droplet identities: the host key first proven for each Droplet ---------------------------------

class Identity(NamedTuple):
    team_uuid: str
    droplet_id: int
    host_key_type: str
    host_key: bytes
    fingerprint: str


def register_identity(tx: storage.Transaction, team_uuid: str, droplet_id: int, key_type: str, host_key: bytes,
                      fingerprint: str, ipv4: str, now: int) -> None:
    tx.execute("INSERT INTO droplet_identities (team_uuid, droplet_id, host_key_type, host_key, host_key_sha256, "
               "public_ipv4, first_proved_at, last_proved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (team_uuid, droplet_id, key_type, host_key, fingerprint, ipv4, now, now))


def touch_identity(tx: storage.Transaction, team_uuid: str, droplet_id: int, ipv4: str, now: int) -> None:
    tx.execute("UPDATE droplet_identities SET public_ipv4 = ?, last_proved_at = ? WHERE team_uuid = ? "
               "AND droplet_id = ?", (ipv4, now, team_uuid, droplet_id))


def identity(team_uuid: str, droplet_id: int) -> Identity | None:
    with storage.database().transaction(write=False) as tx:
        row = tx.one("SELECT host_key_type, host_key, host_key_sha256 FROM droplet_identities WHERE team_uuid = ? "
                     "AND droplet_id = ?", (team_uuid, droplet_id))
    if row is None:
        return None
    return Identity(team_uuid, droplet_id, row[0], bytes(row[1]), row[2])
