"""Who may read or push an RBAC repo over git smart HTTP.

git sends HTTP Basic credentials from its credential helper; the user name is ignored and the
password is one of:

- a DigitalOcean API token (what the articles' helper prints, `doctl auth token`): the team is
  resolved with `GET /v2/account` and the token opens that team's repo, `/_rbac/DigitalOcean/{team}`
  (also served at `/`). Pushing also needs the token to be allowed to create Droplets in the team,
  as the articles require. DigitalOcean has no endpoint that lists a token's scopes, so the check is
  a request the API must refuse either way: `POST /v2/droplets` with an empty body. The API checks
  the token's scope before the body, so a token without `droplet:create` gets 403, and a token with
  it gets 422 (a Droplet needs a name, size and image), and nothing is created.
- a JWT issued by this proxy whose audience is the repo's context, `api://{API}?actx={actx}`:
  - an `rbac` token (issued to a context's admin after sign-in, or by `wid token --kind rbac`)
    reads and pushes its own context's repo;
  - a workload or exchanged token needs the context's policy to grant it: `read` on
    `/_rbac/{API}/{actx}` to clone and fetch, `create` on `/_rbac/{API}/{actx}` to push
    (`path "/_rbac/DigitalOcean/{actx}" { capabilities = ["read", "create"] }`).
  Tokens of other issuers (GitHub Actions...) are refused here.

A token never opens another context's repo. Failures are Unauthenticated (with a Basic challenge, so
git asks its credential helper) or 403, with a message git shows to the user.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from wid import config
from wid.core import jose, tokens
from wid.core.errors import Forbidden, Unauthenticated, Unavailable, UpstreamFailed, WidError
from wid.log import log

REALM = "wid RBAC repositories"
DIGITALOCEAN = "DigitalOcean"
GIT_KINDS = frozenset({tokens.RBAC, tokens.WORKLOAD, tokens.EXCHANGED})
_JWT = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'


def challenge(message: str) -> WidError:
    """Not authenticated, asking git for (other) credentials: Basic, with a token as the password."""
    return Unauthenticated(message, challenge=CHALLENGE)


@dataclass(frozen=True)
class GitAccess:
    """An authenticated caller and the repo context it may use."""

    api: str
    actx: str
    method: str  # "digitalocean_token" or "jwt"
    write: bool
    sub: str | None = None
    iss: str | None = None
    jti: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def password_from(authorization: str | None) -> str | None:
    """The secret of an `Authorization: Basic` (or `Bearer`) header, or None when there is none."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() != "basic":
        raise challenge(f"unsupported authorization scheme {scheme!r}; use Basic with the token as the password")
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise challenge("malformed Basic credentials") from None
    _, sep, password = decoded.partition(":")
    if not sep or not password:
        raise challenge("no password in the Basic credentials; the password must be a DigitalOcean token "
                        "or a token issued by this proxy")
    return password


def authenticate(authorization: str | None, target: tuple[str, str] | None, *, write: bool) -> GitAccess:
    """Check the credentials for reading (or, with `write`, pushing) the repo of `target` (API, actx).

    `target` None means the repo at `/`: the DigitalOcean team of a DigitalOcean token, or the
    audience context of a JWT.
    """
    secret = password_from(authorization)
    if not secret:
        raise challenge("authentication required: git's credential helper must supply a DigitalOcean token "
                        "(or a token issued by this proxy) as the password")
    if _JWT.match(secret):
        return _jwt(secret, target, write)
    return _digitalocean(secret, target, write)


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _digitalocean(token: str, target: tuple[str, str] | None, write: bool) -> GitAccess:
    from wid.upstreams.digitalocean import account as do_account

    if target is not None and target[0] != DIGITALOCEAN:
        raise Forbidden(f"a DigitalOcean token opens DigitalOcean teams' repos only; {target[0]} repos need a "
                        "token issued by this proxy for that context")
    try:
        account = do_account.account_for_token(token)
    except WidError as err:
        if isinstance(err, Unauthenticated):
            raise challenge("DigitalOcean rejected the token (GET /v2/account answered 401): wrong, expired "
                            "or revoked") from None
        raise
    if target is not None and target[1] != account.team_uuid:
        raise Forbidden(f"this DigitalOcean token belongs to team {account.team_uuid}, not to the team of this "
                        "repo; a token opens only its own team's repo")
    if write:
        _require_droplet_create(token, account.team_uuid)
    detail = {"email": account.email, "team_name": account.team_name, "token_sha256": _fingerprint(token)}
    return GitAccess(DIGITALOCEAN, account.team_uuid, "digitalocean_token", write,
                     sub=f"digitalocean:{account.email or 'unknown'}", detail=detail)


def _require_droplet_create(token: str, team: str) -> None:
    """Does the token hold droplet:create? A Droplet create request the API refuses either way tells."""
    from wid.upstreams.digitalocean import account as do_account

    status, _ = do_account.api_json("POST", "/v2/droplets", token, body={})
    if status in (400, 422):
        return  # past the scope check, refused for the empty body: the token may create Droplets
    if status == 403:
        raise Forbidden(f"this DigitalOcean token may not create Droplets in team {team} (it lacks the "
                        "droplet:create scope); configuring the proxy needs a token that can")
    if status == 401:
        raise challenge("DigitalOcean rejected the token (POST /v2/droplets answered 401)")
    if status == 429:
        raise Unavailable("DigitalOcean is rate limiting this token; try again shortly",
                          code="upstream_rate_limited", retry_after="30")
    if 200 <= status < 300:
        # Cannot happen with an empty body; if the API ever accepted it, say so loudly.
        log("droplet_create_check_created", level="error", team=team, status=status)
        return
    raise UpstreamFailed(f"DigitalOcean answered {status} to the Droplet-create permission check")


def _jwt(token: str, target: tuple[str, str] | None, write: bool) -> GitAccess:
    from wid.service import authz

    this = config.settings().this_endpoint
    try:
        unverified = jose.decode(token)
    except jose.JoseError as exc:
        raise challenge(f"malformed token: {exc}") from None
    if unverified.claims.get("iss") != this:
        raise challenge(f"only tokens issued by this proxy ({this}) or DigitalOcean tokens open RBAC repos")
    try:
        principal = authz.authenticate(token, kinds=GIT_KINDS)
    except Unauthenticated as err:
        raise challenge(err.message) from None
    api, actx = target if target is not None else (principal.api, principal.actx)
    if (principal.api, principal.actx) != (api, actx):
        raise Forbidden(f"the token's audience is {principal.audience}, not this repo's "
                        f"(api://{api}?actx={actx}); a token opens only its own context's repo")
    claims = principal.claims
    kind = claims.get(tokens.KIND_CLAIM)
    if kind == tokens.RBAC:
        try:
            obtained_by = tokens.sub_context(claims.get("sub"))
        except tokens.TokenError:
            obtained_by = None
        if obtained_by != actx:
            raise Forbidden("an rbac token opens only the repo of the context that obtained it (sub actx)")
    else:
        authz.authorize(principal, "POST" if write else "GET", f"/_rbac/{api}/{actx}", {})
    return GitAccess(api, actx, "jwt", write, sub=claims.get("sub"), iss=principal.issuer, jti=claims.get("jti"),
                     detail={"kind": kind})
