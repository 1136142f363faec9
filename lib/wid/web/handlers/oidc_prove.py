"""SSH host key attestation and the refresh chain (docs/droplets.md).

POST /v1/oidc/prove              provisioning token (Bearer) + SSHSIG over it by the host key
POST /v1/oidc/refresh            {"refresh_token"}: rotate, re-reading the Droplet's tags
POST /v1/oidc/recover/challenge  {"team_uuid", "droplet_id"}: a short-lived challenge
POST /v1/oidc/recover            {"challenge", "signature"}: a new chain for the host key first proved

Each success answers {"token", "refresh_token", "expires_at"}. Checks run cheapest first; the SSH
connection (and paramiko's import) only after the token, the nonce and the signature passed.
Every outcome is audited by jti, Droplet id and host key fingerprint, never a token.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from cryptography.fernet import InvalidToken

from wid import config
from wid.core import names
from wid.core.errors import (
    Forbidden,
    InvalidRequest,
    Unauthenticated,
    Unavailable,
    UpstreamFailed,
    UpstreamTimeout,
    WidError,
)
from wid.service import attestation, provisioning
from wid.service.provisioning import API
from wid.store import audit, encryption, refresh, storage
from wid.web.app import Router
from wid.web.errors import status_of
from wid.web.request import Request
from wid.web.response import Response

RECOVERY_CHALLENGE_TTL = 300
_CHALLENGE_PURPOSE = "wid-droplet-recovery-v1"


def _fields(request: Request, required: dict[str, type | tuple[type, ...]],
            optional: dict[str, type | tuple[type, ...]] | None = None) -> dict[str, Any]:
    body = request.json_object()
    allowed = {**required, **(optional or {})}
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}")
    for name, kind in allowed.items():
        if name not in body:
            if name in required:
                raise InvalidRequest(f"missing field {name}")
            continue
        if not isinstance(body[name], kind) or isinstance(body[name], bool):
            raise InvalidRequest(f"field {name} has the wrong type")
    return body


def _require_host_key(droplet: provisioning.Droplet, key_type: str, expected: bytes, context: dict[str, Any],
                      mismatch: str) -> str:
    """The attestation itself: the Droplet's sshd, at the public IPv4 DigitalOcean reports, presents `expected`.

    Returns that IPv4."""
    ipv4 = provisioning.require_reachable(droplet)
    context["ipv4"] = ipv4
    presented = _fetch_host_key(droplet, ipv4, key_type)
    if presented != expected:
        raise Unauthenticated(f"the {key_type} host key Droplet {droplet.id} presents over SSH at {ipv4} "
                              f"({attestation.fingerprint(presented)}) is refused: {mismatch}")
    return ipv4


def _tokens(token: str, claims: dict[str, Any], refresh_token: str) -> Response:
    return Response.json({"token": token, "refresh_token": refresh_token, "expires_at": claims["exp"]})


def _fetch_host_key(droplet: provisioning.Droplet, ipv4: str, key_type: str) -> bytes:
    settings = config.settings()
    port = settings.droplet_ssh_port
    try:
        return attestation.fetch_host_key(ipv4, port, key_type, settings.droplet_ssh_timeout)
    except attestation.HostKeyError as exc:
        message = f"cannot attest Droplet {droplet.id}: {exc}"
        if exc.kind == "timeout":
            raise UpstreamTimeout(message) from None
        if exc.kind == "unreachable":
            raise UpstreamFailed(message) from None
        raise Unauthenticated(message) from None


def _signature(text: Any, signed: bytes, namespace: str, context: dict[str, Any]) -> attestation.SshSignature:
    """The SSH signature `text` over `signed` in `namespace`, verified; its key's fingerprint goes to the audit."""
    try:
        sig = attestation.parse_sshsig(text)
    except attestation.SignatureError as exc:
        raise InvalidRequest(f"signature: {exc}") from None
    context["fingerprint"] = sig.fingerprint
    try:
        attestation.verify_sshsig(sig, signed, namespace)
    except attestation.SignatureError as exc:
        raise Unauthenticated(f"signature refused: {exc}") from None
    return sig


def _audited(event: str, context: dict[str, Any], work: Any) -> Response:
    """Run `work`; audit any refusal with what is known so far (identifiers only)."""
    try:
        response: Response = work()
        return response
    except WidError as exc:
        audit.record(event, "deny", api=API, actx=context.get("team"), sub=context.get("sub"),
                     jti=context.get("jti"), status=status_of(exc), error=exc.code, reason=exc.message,
                     **{k: v for k, v in context.items() if k not in {"team", "sub", "jti"}})
        raise


# -- POST /v1/oidc/prove ------------------------------------------------------------------------------

def prove(request: Request) -> Response:
    context: dict[str, Any] = {}
    return _audited("prove", context, lambda: _prove(request, context))


def _prove(request: Request, context: dict[str, Any]) -> Response:
    token = request.bearer_token()
    claims, team, nonce = provisioning.verify_provisioning_token(token)
    assert token is not None
    context.update(team=team, sub=claims["sub"], jti=claims["jti"])
    body = _fields(request, {"signature": str}, {"droplet_id": (int, str)})
    record = provisioning.load_nonce(nonce)
    if record is None or record.team_uuid != team or record.jti != claims["jti"]:
        raise Unauthenticated("this provisioning token is not known to the proxy")
    if record.state == provisioning.PENDING:  # the create's answer has not come back yet: try again shortly
        raise Unavailable("the Droplet create this provisioning token was made for "
                          "has not completed yet; try again shortly",
                          code="droplet_create_in_progress", retry_after="5")
    if record.state == provisioning.FAILED:
        raise Unauthenticated("the Droplet create this provisioning token was made for failed upstream; "
                              "nothing can be proved with it")
    if "droplet_id" in body:
        droplet_id = provisioning.parse_droplet_id(body["droplet_id"])
    elif len(record.droplets) == 1:
        droplet_id = next(iter(record.droplets))
    else:
        raise InvalidRequest(f"this provisioning token covers {len(record.droplets)} Droplets: name yours with "
                             "droplet_id (from the metadata service)")
    context["droplet_id"] = droplet_id
    if droplet_id not in record.droplets:
        raise Unauthenticated(f"Droplet {droplet_id} was not created with this provisioning token")
    if record.droplets[droplet_id] is not None:
        raise Unauthenticated(f"this provisioning token has already been used by Droplet {droplet_id}")

    sig = _signature(body["signature"], token.encode(), provisioning.NAMESPACE_PROVE, context)

    droplet = provisioning.lookup_droplet(team, droplet_id)
    if droplet is None:
        raise Forbidden(f"Droplet {droplet_id} does not exist (any more) in team {team}")
    ipv4 = _require_host_key(droplet, sig.key_type, sig.public_key, context,
                             f"it is not the key that signed ({sig.fingerprint})")
    workload, workload_claims = provisioning.workload_token(team, droplet)

    now = int(time.time())
    with storage.database().transaction() as tx:
        tx.lock(f"nonce:{nonce}")
        claimed = provisioning.claim(tx, nonce, droplet_id, now)
        if claimed:
            provisioning.register_identity(tx, team, droplet_id, sig.key_type, sig.public_key, sig.fingerprint,
                                           ipv4, now)
            family, refresh_token = refresh.start_family(tx, team, droplet_id, now, config.settings().refresh_ttl)
            audit.record("prove", "allow", api=API, actx=team, sub=workload_claims["sub"], jti=workload_claims["jti"],
                         tx=tx, droplet_id=droplet_id, provisioning_jti=claims["jti"], fingerprint=sig.fingerprint,
                         ipv4=ipv4, family=family)
    if not claimed:
        raise Unauthenticated(f"this provisioning token has already been used by Droplet {droplet_id}")
    return _tokens(workload, workload_claims, refresh_token)


# -- POST /v1/oidc/refresh ------------------------------------------------------------------------------

def refresh_tokens(request: Request) -> Response:
    context: dict[str, Any] = {}
    return _audited("refresh", context, lambda: _refresh(request, context))


def _invalid_grant(message: str) -> WidError:
    return Unauthenticated(message, code="invalid_grant")


def _refresh(request: Request, context: dict[str, Any]) -> Response:
    body = _fields(request, {"refresh_token": str})
    presented = body["refresh_token"]
    if not refresh.looks_like_refresh_token(presented):
        raise _invalid_grant("refresh_token is not a refresh token of this proxy")
    record = refresh.lookup(presented)
    if record is None:
        raise _invalid_grant("refresh token is not known to this proxy")
    team, droplet_id = record.team_uuid, record.droplet_id
    context.update(team=team, droplet_id=droplet_id, family=record.family_id, generation=record.generation)
    now = int(time.time())
    if record.family_state != refresh.ACTIVE:
        raise _invalid_grant(f"this refresh token's chain was revoked ({record.revoked_reason}); the Droplet "
                             "can recover with its host key (wid-droplet recover)")
    if record.used_at is not None:
        _revoke_for_reuse(record, now)
        raise _invalid_grant("this refresh token was already used; the whole chain is now revoked. The Droplet "
                             "can recover with its host key (wid-droplet recover)")
    if record.expires_at <= now:
        raise _invalid_grant("this refresh token has expired; the Droplet can recover with its host key")

    droplet = provisioning.lookup_droplet(team, droplet_id)
    if droplet is None:
        with storage.database().transaction() as tx:
            refresh.revoke_droplet_families(tx, team, droplet_id, "droplet destroyed", now)
        raise Forbidden(f"Droplet {droplet_id} does not exist any more; its refresh chain is revoked")
    workload, workload_claims = provisioning.workload_token(team, droplet)

    outcome = "rotated"
    with storage.database().transaction() as tx:
        tx.lock(f"refresh:{record.family_id}")
        try:
            new_token, _ = refresh.rotate(tx, record, now, config.settings().refresh_ttl)
        except refresh.Reused:
            outcome = "reused"
            refresh.revoke_family(tx, record.family_id, "refresh token reused", now)
            audit.record("refresh_reuse", "deny", api=API, actx=team, tx=tx, droplet_id=droplet_id,
                         family=record.family_id, generation=record.generation, concurrent=True)
        except refresh.Revoked:
            outcome = "revoked"
        else:
            audit.record("refresh", "allow", api=API, actx=team, sub=workload_claims["sub"],
                         jti=workload_claims["jti"], tx=tx, droplet_id=droplet_id, family=record.family_id,
                         generation=record.generation + 1)
    if outcome == "reused":
        raise _invalid_grant("this refresh token was used concurrently; the whole chain is now revoked")
    if outcome == "revoked":
        raise _invalid_grant("this refresh token's chain was revoked; the Droplet can recover with its host key")
    return _tokens(workload, workload_claims, new_token)


def _revoke_for_reuse(record: refresh.RefreshRecord, now: int) -> None:
    with storage.database().transaction() as tx:
        tx.lock(f"refresh:{record.family_id}")
        refresh.revoke_family(tx, record.family_id, "refresh token reused", now)
        audit.record("refresh_reuse", "deny", api=API, actx=record.team_uuid, tx=tx, droplet_id=record.droplet_id,
                     family=record.family_id, generation=record.generation, concurrent=False)


# -- recovery: POST /v1/oidc/recover/challenge, POST /v1/oidc/recover -------------------------------------

def recover_challenge(request: Request) -> Response:
    body = _fields(request, {"team_uuid": str, "droplet_id": (int, str)})
    team = body["team_uuid"]
    if not names.is_team_uuid(team):
        raise InvalidRequest("team_uuid must be a DigitalOcean team UUID")
    droplet_id = provisioning.parse_droplet_id(body["droplet_id"])
    now = int(time.time())
    sealed = encryption.fernet().encrypt_at_time(json.dumps(
        {"purpose": _CHALLENGE_PURPOSE, "team": team, "droplet_id": droplet_id, "n": secrets.token_urlsafe(16)},
        separators=(",", ":")).encode(), now)
    audit.record("recover_challenge", "info", api=API, actx=team, droplet_id=droplet_id)
    return Response.json({"challenge": sealed.decode(), "expires_at": now + RECOVERY_CHALLENGE_TTL})


def recover(request: Request) -> Response:
    context: dict[str, Any] = {}
    return _audited("recover", context, lambda: _recover(request, context))


def _open_challenge(challenge: str) -> tuple[str, int]:
    try:
        opened = json.loads(encryption.fernet().decrypt(challenge.encode(), ttl=RECOVERY_CHALLENGE_TTL))
    except (InvalidToken, ValueError, UnicodeError):
        raise Unauthenticated("recovery challenge is invalid or expired; ask for a new one") from None
    if not isinstance(opened, dict) or opened.get("purpose") != _CHALLENGE_PURPOSE:
        raise Unauthenticated("recovery challenge is invalid")
    team, droplet_id = opened.get("team"), opened.get("droplet_id")
    if not isinstance(team, str) or not isinstance(droplet_id, int):
        raise Unauthenticated("recovery challenge is invalid")
    return team, droplet_id


def _recover(request: Request, context: dict[str, Any]) -> Response:
    body = _fields(request, {"challenge": str, "signature": str})
    challenge = body["challenge"]
    if len(challenge) > 1024:
        raise InvalidRequest("challenge is too long")
    team, droplet_id = _open_challenge(challenge)
    context.update(team=team, droplet_id=droplet_id)
    anchor = provisioning.identity(team, droplet_id)
    if anchor is None:
        raise Forbidden(f"Droplet {droplet_id} never proved a host key to this proxy, so it cannot recover; "
                        "it needs a new provisioning token (create the Droplet through the proxy)")
    sig = _signature(body["signature"], challenge.encode(), provisioning.NAMESPACE_RECOVER, context)
    if sig.public_key != anchor.host_key:
        raise Unauthenticated(f"the signing key ({sig.fingerprint}) is not the host key Droplet {droplet_id} first "
                              f"proved ({anchor.fingerprint})")
    droplet = provisioning.lookup_droplet(team, droplet_id)
    now = int(time.time())
    if droplet is None:
        with storage.database().transaction() as tx:
            refresh.revoke_droplet_families(tx, team, droplet_id, "droplet destroyed", now)
        raise Forbidden(f"Droplet {droplet_id} does not exist any more")
    ipv4 = _require_host_key(droplet, anchor.host_key_type, anchor.host_key, context,
                             "recovery needs the key it first proved")
    workload, workload_claims = provisioning.workload_token(team, droplet)

    digest = hashlib.sha256(challenge.encode()).hexdigest()
    with storage.database().transaction() as tx:
        tx.execute("DELETE FROM recovery_challenges_used WHERE expires_at < ?", (now,))
        fresh = tx.execute("INSERT INTO recovery_challenges_used (challenge_hash, team_uuid, droplet_id, used_at, "
                           "expires_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (challenge_hash) DO NOTHING "
                           "RETURNING challenge_hash",
                           (digest, team, droplet_id, now, now + RECOVERY_CHALLENGE_TTL + 60))
        if fresh:
            revoked = refresh.revoke_droplet_families(tx, team, droplet_id, "recovered with the host key", now)
            family, refresh_token = refresh.start_family(tx, team, droplet_id, now, config.settings().refresh_ttl)
            provisioning.touch_identity(tx, team, droplet_id, ipv4, now)
            audit.record("recover", "allow", api=API, actx=team, sub=workload_claims["sub"], jti=workload_claims["jti"],
                         tx=tx, droplet_id=droplet_id, fingerprint=sig.fingerprint, ipv4=ipv4, family=family,
                         revoked_families=revoked)
    if not fresh:
        raise Unauthenticated("this recovery challenge was already used; ask for a new one")
    return _tokens(workload, workload_claims, refresh_token)


handler = Router()
handler.add("POST", "/v1/oidc/prove", prove)
handler.add("POST", "/v1/oidc/refresh", refresh_tokens)
handler.add("POST", "/v1/oidc/recover/challenge", recover_challenge)
handler.add("POST", "/v1/oidc/recover", recover)
