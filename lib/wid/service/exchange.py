"""Token exchange under policy, shared by POST /v1/oidc/issue (JSON) and POST /v1/oidc/token (RFC 8693).

The presented token (ours: workload or exchanged; or an external issuer's, see wid.service.issuers) is
authenticated strictly; its context (the actx of its aud) must allow `create` on /v1/oidc/issue with
the request as parameters. The issued token:

- `iss` = this proxy; `aud` and `sub` as requested; `sub` starts with `actx:{actx of the presented
  token}:` so the target context's roles can tell which context obtained it;
- `exp` = min(now + ttl, exp of the presented token): no lifetime laundering by re-exchanging;
  ttl is 1..WID_MAX_EXCHANGE_TTL (default 300 when the request names none);
- `act` (RFC 8693 4.1) = {"iss", "sub"} of the presented token, with the presented token's own `act`
  nested inside, so the whole delegation chain stays visible;
- a fresh `jti`, kind `exchanged`; extra claims only when the rule that allows the exchange names
  them in allowed_parameters (a rule without allowed_parameters, or with "*", allows none);
- never reserved claims, never a refresh or provisioning token.

The requested aud may name another context or API (cross-context exchange): the SOURCE context's
policy allows obtaining it, the TARGET context's RBAC decides what it may do there.

Every exchange and every refusal is audited (event "exchange": jti, sub, iss, actx, decision,
reason); the token itself never is.
"""

import time
from collections.abc import Callable, Mapping
from typing import Any

from wid import config
from wid.core import jose, names, tokens
from wid.core.errors import Forbidden, InvalidRequest, Unauthenticated, UnknownAudience, WidError
from wid.service import authz
from wid.store import audit, signing

ISSUE_PATH = "/v1/oidc/issue"
TOKEN_PATH = "/v1/oidc/token"  # noqa: S105 - a route, not a secret
DEFAULT_TTL = 300
MAX_BODY_BYTES = 16 * 1024
MAX_ACT_DEPTH = 8
MAX_CLAIM_NAME = 64
MAX_SUB_LENGTH = 255
# Beyond tokens.RESERVED_CLAIMS: claims with a meaning to verifiers that a caller must not assert.
RESERVED = tokens.RESERVED_CLAIMS | {"aud", "sub", "may_act", "cnf", "azp", "nonce", "auth_time", "client_id",
                                     "scope", "typ"}
_CLAIM_NAME_FIRST = names.LETTERS | {"_"}
_CLAIM_NAME_CHARACTERS = names.LETTERS_DIGITS | frozenset("_.:-")

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
# RFC 8693 3: token type identifiers (names, not secrets).
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
TOKEN_TYPE_ID = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
SUBJECT_TOKEN_TYPES = frozenset({TOKEN_TYPE_JWT, TOKEN_TYPE_ACCESS, TOKEN_TYPE_ID})
ISSUED_TOKEN_TYPES = frozenset({TOKEN_TYPE_JWT, TOKEN_TYPE_ACCESS})


class Issued:
    # A slotted class, not a NamedTuple (docs/architecture.md, "What a request imports").
    __slots__ = ("claims", "token")

    def __init__(self, token: str, claims: dict[str, Any]) -> None:
        self.token = token
        self.claims = claims

    @property
    def expires_at(self) -> int:
        return int(self.claims["exp"])

    @property
    def expires_in(self) -> int:
        return max(0, self.expires_at - int(time.time()))


class ExchangeRequest:
    """What the caller asks for: `params` is what the policy checks, exactly as the caller sent it."""

    def __init__(self, aud: str, sub: str, ttl: int, extra: dict[str, Any], params: dict[str, Any]) -> None:
        audience = tokens.parse_audience(aud)
        self.aud, self.sub, self.ttl, self.extra, self.params = aud, sub, ttl, extra, params
        self.api, self.actx = audience.api, audience.actx


# -- the two request forms ---------------------------------------------------------------------------------


def parse_json_request(body: Mapping[str, Any]) -> ExchangeRequest:
    """{"aud", "sub", "ttl"?, ...extra claims}: 400 on anything malformed; the body is the policy's params."""
    reserved = sorted(key for key in body if key in RESERVED - {"aud", "sub"} or key.startswith("wid_"))
    if reserved:
        raise InvalidRequest(f"{', '.join(reserved)} cannot be requested: the issuer sets reserved claims itself")
    folded: dict[str, str] = {}
    for key in body:
        if key.casefold() in folded:
            raise InvalidRequest(f"the keys {folded[key.casefold()]!r} and {key!r} differ only by case")
        folded[key.casefold()] = key
        if not names.is_word(key, _CLAIM_NAME_FIRST, _CLAIM_NAME_CHARACTERS, MAX_CLAIM_NAME):
            raise InvalidRequest(f"claim name {key[:MAX_CLAIM_NAME]!r} must be a letter or _ followed by at most "
                                 f"{MAX_CLAIM_NAME - 1} letters, digits or _ . : -")
    aud, sub, ttl = body.get("aud"), body.get("sub"), body.get("ttl", default_ttl())
    if not isinstance(aud, str):
        raise InvalidRequest('"aud" is required: the audience of the token to issue, api://{API}?actx={actx}')
    if not isinstance(sub, str):
        raise InvalidRequest('"sub" is required: the subject of the token to issue, actx:{actx}:...')
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise InvalidRequest(f'"ttl" must be a whole number of seconds, got {str(ttl)[:40]!r}')
    extra = {key: value for key, value in body.items() if key not in {"aud", "sub", "ttl"}}
    return _checked(aud, sub, ttl, extra, dict(body))


def parse_form_request(body: bytes) -> tuple[str, str, ExchangeRequest]:
    """RFC 8693 2.1 form -> (subject_token, issued_token_type, request).

    Raises InvalidRequest whose code is the RFC 6749 5.2 error.

    `audience` (exactly one) is the aud, `scope` (exactly one value) the requested sub, and the
    non-standard `ttl` the lifetime (default 300). The policy sees {"aud", "sub", "ttl"} with the ttl
    that will be used, so the same rule serves both endpoints. Unknown parameters are ignored
    (RFC 6749 3.2); none of them becomes a claim.
    """
    try:
        from urllib.parse import parse_qsl  # RFC 8693's form: only /v1/oidc/token (docs/architecture.md)

        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the body is not application/x-www-form-urlencoded UTF-8",
                             code="invalid_request") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise InvalidRequest(f"parameter {key!r} is repeated (RFC 6749 3.2)", code="invalid_request")
        if value != "":  # "sent without a value MUST be treated as if they were omitted"
            form[key] = value
    grant_type = form.get("grant_type")
    if grant_type != GRANT_TYPE:
        if grant_type is None:
            raise InvalidRequest(f"grant_type is required: {GRANT_TYPE}", code="invalid_request")
        raise InvalidRequest(f"grant_type must be {GRANT_TYPE}", code="unsupported_grant_type")
    subject_token = form.get("subject_token")
    if subject_token is None:
        raise InvalidRequest("subject_token is required", code="invalid_request")
    subject_type = form.get("subject_token_type")
    if subject_type not in SUBJECT_TOKEN_TYPES:
        allowed = ", ".join(sorted(SUBJECT_TOKEN_TYPES))
        raise InvalidRequest(f"subject_token_type must be one of {allowed}", code="invalid_request")
    if "actor_token" in form or "actor_token_type" in form:
        raise InvalidRequest("actor_token is not supported: the presented token's iss and sub become act",
                             code="invalid_request")
    requested = form.get("requested_token_type", TOKEN_TYPE_ACCESS)
    if requested not in ISSUED_TOKEN_TYPES:
        allowed = ", ".join(sorted(ISSUED_TOKEN_TYPES))
        raise InvalidRequest(f"requested_token_type must be one of {allowed} "
                             "(no refresh or ID tokens are issued by exchange)", code="invalid_request")
    if "resource" in form:
        raise InvalidRequest("resource is not supported; send audience=api://{API}?actx={actx}", code="invalid_target")
    aud = form.get("audience")
    if aud is None:
        raise InvalidRequest("audience is required: api://{API}?actx={actx}", code="invalid_request")
    scope = form.get("scope")
    if scope is None or len(scope.split()) != 1:
        raise InvalidRequest("scope must be exactly one value: the sub of the token to issue, actx:{actx}:...",
                             code="invalid_scope")
    ttl_text = form.get("ttl", str(default_ttl()))
    if not ttl_text.isascii() or not ttl_text.isdigit() or len(ttl_text) > 9:
        raise InvalidRequest(f"ttl must be a whole number of seconds, got {ttl_text[:40]!r}", code="invalid_request")
    ttl = int(ttl_text)
    try:
        request = _checked(aud, scope, ttl, {}, {"aud": aud, "sub": scope, "ttl": ttl})
    except WidError as exc:
        code = "invalid_target" if isinstance(exc, UnknownAudience) else "invalid_request"
        raise InvalidRequest(exc.message, code=code) from None
    return subject_token, requested, request


def _checked(aud: str, sub: str, ttl: int, extra: dict[str, Any], params: dict[str, Any]) -> ExchangeRequest:
    try:
        request = ExchangeRequest(aud, sub, ttl, extra, params)
    except tokens.TokenError as exc:
        raise UnknownAudience(f"aud: {exc}") from None
    try:
        tokens.sub_context(sub)
    except tokens.TokenError as exc:
        raise InvalidRequest(f"sub: {exc}") from None
    if len(sub) > MAX_SUB_LENGTH or not sub.isprintable():
        raise InvalidRequest(f"sub must be at most {MAX_SUB_LENGTH} printable characters")
    limit = max_ttl()
    if not 0 < ttl <= limit:
        raise InvalidRequest(f"ttl must be between 1 and {limit} seconds (WID_MAX_EXCHANGE_TTL), got {ttl}")
    return request


def max_ttl() -> int:
    settings = config.settings()
    return max(1, min(settings.max_exchange_ttl, settings.max_token_ttl))


def default_ttl() -> int:
    return min(DEFAULT_TTL, max_ttl())


def _validate_target(api: str, actx: str) -> None:
    """The target API must be one this proxy serves, and actx a valid context of it.

    Only for another context than the presented token's (whose context is known: its RBAC exists),
    which keeps the upstream packages out of the common exchange.
    """
    from wid.upstreams import registry

    try:
        registry.validate_context(api, actx)
    except WidError as exc:
        raise UnknownAudience(f"aud: {exc.message}") from None


# -- the exchange ----------------------------------------------------------------------------------------------


# How the web edge answers an error (lib/wid/web/errors.py): its status is recorded with each refusal.
StatusOf = Callable[[WidError], int]


def issue_json(presented: str | None, body: Callable[[], Mapping[str, Any]], status_of: StatusOf) -> Issued:
    """POST /v1/oidc/issue: the Bearer token, then the JSON body (read only once the token is good)."""
    principal: authz.Principal | None = None
    request: ExchangeRequest | None = None
    try:
        principal = authz.authenticate(presented)
        _require_matching_role(principal)
        request = parse_json_request(body())
        return _issue(principal, request, ISSUE_PATH)
    except WidError as exc:
        _audit_refusal(presented, principal, request, exc, ISSUE_PATH, status_of(exc))
        raise


def issue_form(body: Callable[[], bytes], status_of: StatusOf) -> tuple[Issued, str]:
    """POST /v1/oidc/token: RFC 8693 form -> (issued token, issued_token_type). Errors are domain errors;
    the handler renders them as RFC 6749 5.2 errors."""
    presented: str | None = None
    principal: authz.Principal | None = None
    request: ExchangeRequest | None = None
    try:
        presented, issued_type, request = parse_form_request(body())
        principal = authz.authenticate(presented)
        _require_matching_role(principal)
        return _issue(principal, request, TOKEN_PATH), issued_type
    except WidError as exc:
        _audit_refusal(presented, principal, request, exc, TOKEN_PATH, status_of(exc))
        raise


def _issue(principal: authz.Principal, request: ExchangeRequest, endpoint: str) -> Issued:
    presented_sub = str(principal.claims["sub"])
    if (request.api, request.actx) != (principal.api, principal.actx):
        _validate_target(request.api, request.actx)
    if tokens.sub_context(request.sub) != principal.actx:
        raise Forbidden(f"sub must start with actx:{principal.actx}: (the context of the presented token), "
                        f"got {request.sub[:80]!r}")
    decision = authz.authorize(principal, "POST", ISSUE_PATH, request.params)
    if request.extra and not decision.restricts_parameters:
        names = ", ".join(sorted(request.extra))
        raise Forbidden(f"extra claims ({names}) must be named in allowed_parameters of the rule that allows the "
                        f"exchange; {decision.unrestricted_by}")
    now = int(time.time())
    remaining = int(principal.claims["exp"]) - now
    lifetime = min(request.ttl, remaining)
    if lifetime <= 0:
        raise Unauthenticated("token refused: the presented token has expired")
    act: dict[str, Any] = {"iss": principal.issuer, "sub": presented_sub}
    prior = principal.claims.get("act")
    if prior is not None:
        act["act"] = _prior_act(prior)
    token, claims = signing.sign({**request.extra, "aud": request.aud, "sub": request.sub, "act": act},
                                 kind=tokens.EXCHANGED, lifetime=lifetime, now=now)
    audit.record("exchange", "allow", api=principal.api, actx=principal.actx, sub=presented_sub,
                 iss=principal.issuer, jti=_text(principal.claims.get("jti")), endpoint=endpoint,
                 issued_jti=claims["jti"], issued_aud=request.aud, issued_sub=request.sub, exp=claims["exp"],
                 ttl=request.ttl, extra_claims=sorted(request.extra), roles=list(decision.roles),
                 policy=decision.policy, rule=decision.rule, reason=decision.reason)
    return Issued(token, claims)


def _require_matching_role(principal: authz.Principal) -> None:
    """A valid token that matches no role of its context identifies nobody here: 401, like a bad token
    (for example a GitHub token from another workflow than the role's job_workflow_ref)."""
    rbac = principal.rbac
    if rbac is not None and not rbac.matching_roles(principal.claims, config.settings().this_endpoint):
        raise Unauthenticated(f"token refused: no role of context {principal.audience} matches the token "
                              "(its iss, aud and sub together with every other claim the role names)")


def _prior_act(prior: Any, depth: int = 1) -> dict[str, Any]:
    """The presented token's act, reduced to its iss/sub chain; a chain too deep is refused."""
    if not isinstance(prior, dict):
        raise Forbidden("the presented token's act claim is not an object")
    if depth >= MAX_ACT_DEPTH:
        raise Forbidden(f"delegation chain is longer than {MAX_ACT_DEPTH} exchanges")
    chain: dict[str, Any] = {key: prior[key] for key in ("iss", "sub") if isinstance(prior.get(key), str)}
    if prior.get("act") is not None:
        chain["act"] = _prior_act(prior["act"], depth + 1)
    return chain


def _text(value: Any, limit: int = 256) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:limit]


def _audit_refusal(presented: str | None, principal: authz.Principal | None, request: ExchangeRequest | None,
                   exc: WidError, endpoint: str, status: int) -> None:
    """Who tried (verified when authentication succeeded, else as the token claims it), and why not."""
    detail: dict[str, Any] = {"endpoint": endpoint, "status": status, "reason": exc.message[:500]}
    if principal is not None:
        claims, verified = principal.claims, True
    else:
        claims, verified = {}, False
        if presented:
            try:
                claims = jose.decode(presented).claims
            except jose.JoseError:
                claims = {}
    if request is not None:
        detail.update(requested_aud=request.aud, requested_sub=_text(request.sub), ttl=request.ttl)
    api = actx = None
    if principal is not None:
        api, actx = principal.api, principal.actx
    else:
        try:
            audience = tokens.parse_audience(claims.get("aud"))
            api, actx = audience.api, audience.actx
        except tokens.TokenError:
            pass
    detail["verified"] = verified
    try:
        audit.record("exchange", "deny", api=api, actx=actx, sub=_text(claims.get("sub")), iss=_text(claims.get("iss")),
                     jti=_text(claims.get("jti")), **detail)
    except Exception as audit_error:  # the refusal stands even when it cannot be written down
        from wid.log import log

        log("audit_failed", level="error", error=type(audit_error).__name__, detail=str(audit_error)[:200])
