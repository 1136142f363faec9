"""Who is calling, and may they do this: the one path every JWT-authenticated route goes through.

authenticate(): a JWT of ours (strictly verified), or one from an external issuer that a role of the
token's own context names (keys fetched only from issuers on the operator's allowlist).
authorize(): the context's compiled RBAC decides; a denial is audited and answered 403 with its reason.
"""

from collections.abc import Mapping
from typing import Any

from wid import config
from wid.core import jose, tokens
from wid.core.errors import Forbidden, Unauthenticated
from wid.core.policy.engine import CompiledRbac, Decision
from wid.store import audit, signing
from wid.store import rbac as rbac_store

# Kinds of our own tokens that API routes and the exchange accept. Provisioning tokens are for
# /v1/oidc/prove only; RBAC tokens for git only.
API_KINDS = frozenset({tokens.WORKLOAD, tokens.EXCHANGED})


class Principal:
    # A slotted class, not a NamedTuple (docs/architecture.md, "What a request imports").
    __slots__ = ("actx", "api", "claims", "issuer", "rbac")

    def __init__(self, claims: dict[str, Any], issuer: str, api: str, actx: str, rbac: CompiledRbac | None) -> None:
        self.claims = claims
        self.issuer = issuer
        self.api = api
        self.actx = actx
        self.rbac = rbac  # the context's configuration in force, read once when authenticated

    @property
    def audience(self) -> str:
        return f"api://{self.api}?actx={self.actx}"


def authenticate(token: str | None, *, kinds: frozenset[str] = API_KINDS) -> Principal:
    if not token:
        raise Unauthenticated("missing bearer token")
    try:
        unverified = jose.decode(token)
    except jose.JoseError as exc:
        raise Unauthenticated(f"malformed token: {exc}") from None
    issuer = unverified.claims.get("iss")
    try:
        if issuer == config.settings().this_endpoint:
            claims = signing.verify_decoded(unverified, kinds=kinds)
            audience = tokens.parse_audience(claims.get("aud"))
            rbac = rbac_store.compiled(audience.api, audience.actx)
        else:
            from wid.service import issuers  # external issuers: discovery, JWKS cache (only for such tokens)

            claims, rbac = issuers.verify_external(unverified)
            audience = tokens.parse_audience(claims.get("aud"))
    except tokens.TokenError as exc:
        raise Unauthenticated(f"token refused: {exc}") from None
    return Principal(claims, str(issuer), audience.api, audience.actx, rbac)


def authorize(principal: Principal, method: str, path: str, params: Mapping[str, Any]) -> Decision:
    """Allow or raise 403; the compiled RBAC of the token's audience context decides."""
    rbac = principal.rbac
    if rbac is None:
        decision_reason = f"no RBAC configuration has been pushed for {principal.audience}"
        _deny(principal, method, path, decision_reason)
        raise Forbidden(decision_reason)
    decision = rbac.authorize(principal.claims, config.settings().this_endpoint, method, path, params)
    if not decision.allowed:
        _deny(principal, method, path, decision.reason)
        raise Forbidden(decision.reason)
    return decision


def _deny(principal: Principal, method: str, path: str, reason: str) -> None:
    audit.record("authorize", "deny", api=principal.api, actx=principal.actx, sub=principal.claims.get("sub"),
                 iss=principal.issuer, jti=principal.claims.get("jti"), method=method, path=path, reason=reason)
