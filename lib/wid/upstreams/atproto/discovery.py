"""Which authorization server a PDS trusts, and whether it offers what the ATProto OAuth profile requires.

The PDS's protected-resource metadata (RFC 9728) names exactly one authorization server; that
server's metadata (RFC 8414) must name itself as issuer and offer PAR, private_key_jwt, ES256 DPoP,
PKCE S256, the `atproto` scope and `iss` in authorization responses. Every URL is checked by the
SSRF-safe client of lib/wid/upstreams/atproto/identity.py.
"""

from typing import NamedTuple
from urllib.parse import urlsplit

from wid.net.safe_http import FetchError
from wid.upstreams.atproto import identity


class AuthServer(NamedTuple):
    issuer: str
    par_endpoint: str
    authorization_endpoint: str
    token_endpoint: str
    revocation_endpoint: str | None


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def discover(pds: str) -> AuthServer:
    """The PDS's one authorization server, from its protected-resource metadata (RFC 9728) and the
    server's own metadata (RFC 8414), with what the ATProto profile requires of it checked."""
    prm_url = f"{pds}/.well-known/oauth-protected-resource"
    prm = identity.get_json(prm_url, f"the PDS's resource metadata ({prm_url})", service="atproto_pds")
    if not isinstance(prm.get("resource"), str) or not _same_url(prm["resource"], pds):
        raise FetchError(f"{prm_url} describes the resource "
                         f"{str(prm.get('resource'))[:120]!r}, not {pds}", code="pds_metadata_invalid")
    servers = prm.get("authorization_servers")
    if not isinstance(servers, list) or len(servers) != 1 or not isinstance(servers[0], str):
        raise FetchError(f"{prm_url} must name exactly one authorization server", code="pds_metadata_invalid")
    issuer = servers[0].rstrip("/")
    identity.check_url(issuer, "authorization server")
    if urlsplit(issuer).path not in ("", "/"):
        raise FetchError(f"the authorization server {issuer!r} is not an origin", code="pds_metadata_invalid")
    as_url = f"{issuer}/.well-known/oauth-authorization-server"
    meta = identity.get_json(as_url, f"the authorization server's metadata ({as_url})", service="atproto_auth")
    if meta.get("issuer") != issuer:
        raise FetchError(f"{as_url} names the issuer {str(meta.get('issuer'))[:120]!r}, "
                         f"not {issuer}", code="as_metadata_invalid")
    problems = []
    if meta.get("require_pushed_authorization_requests") is not True and \
            not isinstance(meta.get("pushed_authorization_request_endpoint"), str):
        problems.append("no pushed authorization requests")
    if "private_key_jwt" not in (meta.get("token_endpoint_auth_methods_supported") or []):
        problems.append("no private_key_jwt client authentication")
    if "ES256" not in (meta.get("dpop_signing_alg_values_supported") or []):
        problems.append("no ES256 DPoP")
    if "S256" not in (meta.get("code_challenge_methods_supported") or []):
        problems.append("no PKCE S256")
    if "atproto" not in (meta.get("scopes_supported") or []):
        problems.append("no 'atproto' scope")
    if meta.get("authorization_response_iss_parameter_supported") is not True:
        problems.append("no iss in authorization responses")
    endpoints = {}
    for name in ("pushed_authorization_request_endpoint", "authorization_endpoint", "token_endpoint"):
        value = meta.get(name)
        if not isinstance(value, str):
            problems.append(f"no {name}")
            continue
        identity.check_url(value, f"the authorization server's {name}")
        endpoints[name] = value
    revocation = meta.get("revocation_endpoint")
    if problems:
        raise FetchError(f"the authorization server {issuer} does not offer what the "
                         f"ATProto OAuth profile requires: {', '.join(problems)}", code="as_metadata_invalid")
    return AuthServer(issuer, endpoints["pushed_authorization_request_endpoint"], endpoints["authorization_endpoint"],
                      endpoints["token_endpoint"], revocation if isinstance(revocation, str) else None)
