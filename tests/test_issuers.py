"""External issuers (wid.issuers) in-process against the GitHub OIDC stand-in: which issuers are
trusted, discovery and JWKS fetching, the shared cache, refetch limits, failures, token checks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.standins.github_oidc import GitHubOIDCStandIn
from wid import config
from wid.core.errors import WidError
from wid.core.rbac import compiler as rbac_compile
from wid.service import authz, issuers
from wid.store import rbac as rbac_store
from wid.store import storage
from wid.web.errors import status_of

TEAM = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
OTHER_TEAM = "0c2b8a7a-51d4-4e8f-8e6a-3b9d2c4e5500"
AUD = f"api://DigitalOcean?actx={TEAM}"
WORKFLOW = "octo-org/octo-repo/.github/workflows/do-wid.yml@refs/heads/main"


def gha_files(issuer: str) -> dict[str, bytes]:
    role = (f'role "gha" {{\n  iss = "{issuer}"\n  aud = "api://DigitalOcean?actx={{actx}}"\n'
            f'  sub = "repo:octo-org/octo-repo:ref:refs/heads/main"\n  job_workflow_ref = "{WORKFLOW}"\n'
            f'  policies = ["p"]\n}}\n')
    return {"gha-roles/gha.hcl": role.encode(),
            "policies/p.hcl": b'path "/v1/oidc/issue" {\n  capabilities = ["create"]\n}\n'}


def plain_files() -> dict[str, bytes]:
    return {"roles/w.hcl": b'role "w" {\n  aud = "api://DigitalOcean?actx={actx}"\n  sub = "actx:{actx}:role:w"\n'
                           b'  policies = ["p"]\n}\n',
            "policies/p.hcl": b'path "/v1/oidc/issue" {\n  capabilities = ["create"]\n}\n'}


def install(team: str, files: dict[str, bytes]) -> None:
    # The stand-in issuers are GitHub-shaped: GitHub's owner rules apply to whatever issuer a file names.
    issuers = {line.split('"')[1] for line in b"".join(files.values()).decode().splitlines() if "iss" in line
               and line.split("=")[0].strip() == "iss"}
    compiled = rbac_compile.compile_tree(files, api="DigitalOcean", actx=team,
                                         owner_claims={issuer: ("github",) for issuer in issuers})
    with storage.database().transaction() as tx:
        rbac_store.install(tx, "DigitalOcean", team, compiled, "0" * 40)


def new_process() -> None:
    """What a fresh CGI process sees: no per-process memo, only the database."""
    storage.close_all()


def fetches(stand_in: GitHubOIDCStandIn) -> tuple[int, int]:
    return (len(stand_in.requests_to("/.well-known/openid-configuration")),
            len(stand_in.requests_to("/.well-known/jwks")))


def set_cache(issuer: str, **columns: int) -> None:
    with storage.database().transaction() as tx:
        for column, value in columns.items():
            tx.execute(f"UPDATE issuer_cache SET {column} = ? WHERE issuer = ?", (value, issuer))  # noqa: S608
    new_process()


def cache_row(issuer: str) -> tuple[object, ...] | None:
    with storage.database().transaction(write=False) as tx:
        return tx.one("SELECT jwks, fetched_at, fresh_until, attempt_at, error FROM issuer_cache WHERE issuer = ?",
                      (issuer,))


def refused(token: str, status: int = 401) -> WidError:
    with pytest.raises(WidError) as caught:
        authz.authenticate(token)
    assert status_of(caught.value) == status, caught.value.message
    return caught.value


@pytest.fixture
def gh() -> Iterator[GitHubOIDCStandIn]:
    with GitHubOIDCStandIn() as server:
        yield server


@pytest.fixture
def trusted(app_env: Path, gh: GitHubOIDCStandIn, monkeypatch: pytest.MonkeyPatch) -> GitHubOIDCStandIn:
    """The stand-in on the allowlist (plain HTTP on loopback), named by a role of TEAM."""
    monkeypatch.setenv("WID_TRUSTED_ISSUERS", f"{gh.issuer} https://token.actions.githubusercontent.com")
    monkeypatch.setenv("WID_ALLOW_INSECURE_ISSUERS", "1")
    monkeypatch.setenv("WID_ISSUER_FETCH_TIMEOUT", "1")
    config.settings.cache_clear()
    install(TEAM, gha_files(gh.issuer))
    return gh


def mint(gh: GitHubOIDCStandIn, **overrides: Any) -> str:
    return gh.mint(AUD, job_workflow_ref=WORKFLOW, **overrides)


# -- the good path and the shared cache ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_github_token_verifies_and_keys_are_shared_across_processes(backend: str, gh: GitHubOIDCStandIn,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WID_TRUSTED_ISSUERS", gh.issuer)
    monkeypatch.setenv("WID_ALLOW_INSECURE_ISSUERS", "1")
    config.settings.cache_clear()
    install(TEAM, gha_files(gh.issuer))
    principal = authz.authenticate(mint(gh))
    assert (principal.issuer, principal.api, principal.actx) == (gh.issuer, "DigitalOcean", TEAM)
    assert principal.claims["job_workflow_ref"] == WORKFLOW
    assert fetches(gh) == (1, 1)
    authz.authenticate(mint(gh))  # the process memo
    new_process()
    authz.authenticate(mint(gh))  # another process: the database
    assert fetches(gh) == (1, 1)
    row = cache_row(gh.issuer)
    assert row is not None and row[4] is None
    assert [k["kid"] for k in json.loads(str(row[0]))] == [gh.kid]
    assert "x5c" not in str(row[0])  # only the public members we verify with are kept


def test_fresh_for_the_jwks_max_age(trusted: GitHubOIDCStandIn) -> None:
    authz.authenticate(mint(trusted))
    row = cache_row(trusted.issuer)
    assert row is not None
    assert int(str(row[2])) - int(str(row[1])) == 3600  # the stand-in's Cache-Control: max-age=3600


@pytest.mark.parametrize("header,seconds", [
    (None, issuers.DEFAULT_CACHE_SECONDS),
    ("public, max-age=3600", 3600),
    ("max-age=5", issuers.MIN_CACHE_SECONDS),
    ("max-age=999999999", issuers.MAX_CACHE_SECONDS),
    ("no-store", issuers.MIN_CACHE_SECONDS),
    ("private, no-cache", issuers.MIN_CACHE_SECONDS),
    ('max-age="120"', 120),
    ("s-maxage=7200", issuers.DEFAULT_CACHE_SECONDS),
    ("max-age=abc", issuers.DEFAULT_CACHE_SECONDS),
])
def test_cache_control_within_bounds(header: str | None, seconds: int) -> None:
    assert issuers.cache_seconds(header) == seconds


def test_concurrent_cold_cache(trusted: GitHubOIDCStandIn) -> None:
    tokens = [mint(trusted) for _ in range(8)]
    errors: list[BaseException] = []

    def run(token: str) -> None:
        try:
            authz.authenticate(token)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert fetches(trusted)[1] <= 8


# -- which issuers: refused before anything is fetched ---------------------------------------------------------


def test_issuer_off_the_allowlist_is_never_fetched(app_env: Path, gh: GitHubOIDCStandIn,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WID_ALLOW_INSECURE_ISSUERS", "1")
    config.settings.cache_clear()  # default allowlist: GitHub's real issuer only
    install(TEAM, gha_files(gh.issuer))  # a role names it (compiled without the allowlist check)
    error = refused(mint(gh))
    assert "not trusted" in error.message
    assert gh.requests == []


def test_issuer_named_only_by_another_context_is_never_fetched(trusted: GitHubOIDCStandIn) -> None:
    install(OTHER_TEAM, plain_files())
    for team in (OTHER_TEAM, "00000000-0000-4000-8000-000000000000"):  # roles without it; no RBAC at all
        error = refused(trusted.mint(f"api://DigitalOcean?actx={team}", job_workflow_ref=WORKFLOW))
        assert "names issuer" in error.message
    assert trusted.requests == []


def test_token_claiming_an_allowlisted_issuer_is_checked_against_its_own_context(trusted: GitHubOIDCStandIn) -> None:
    install(OTHER_TEAM, plain_files())
    forged = trusted.mint(f"api://DigitalOcean?actx={OTHER_TEAM}", iss="https://token.actions.githubusercontent.com")
    refused(forged)
    assert trusted.requests == []


@pytest.mark.parametrize("aud", ["https://github.com/octo-org", f"{AUD}&actx={OTHER_TEAM}", [AUD]])
def test_github_default_or_bad_audience_is_refused_without_fetch(trusted: GitHubOIDCStandIn, aud: object) -> None:
    refused(trusted.mint(None, aud=aud, job_workflow_ref=WORKFLOW))
    assert trusted.requests == []


def test_http_issuer_needs_the_insecure_flag(trusted: GitHubOIDCStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WID_ALLOW_INSECURE_ISSUERS")
    config.settings.cache_clear()
    error = refused(mint(trusted))
    assert "https" in error.message
    assert trusted.requests == []


@pytest.mark.parametrize("url,ok", [
    ("https://token.actions.githubusercontent.com", True),
    ("https://ghes.example/_services/token", True),
    ("http://127.0.0.1:8080", True),
    ("http://localhost:8080", True),
    ("http://[::1]:8080", True),
    ("http://example.com", False),
    ("http://10.0.0.1", False),
    ("http://user:pw@127.0.0.1:8080", False),
    ("https://example.com/#frag", False),
    ("ftp://127.0.0.1", False),
    ("https://", False),
])
def test_url_rules(app_env: Path, monkeypatch: pytest.MonkeyPatch, url: str, ok: bool) -> None:
    monkeypatch.setenv("WID_ALLOW_INSECURE_ISSUERS", "1")
    config.settings.cache_clear()
    if ok:
        issuers.check_url(url, "issuer")
    else:
        with pytest.raises(issuers.DiscoveryError):
            issuers.check_url(url, "issuer")


# -- what is fetched -----------------------------------------------------------------------------------------------


def test_discovery_must_name_the_configured_issuer(trusted: GitHubOIDCStandIn) -> None:
    trusted.discovery_override = {**trusted.openid_configuration(), "issuer": "https://evil.example"}
    error = refused(mint(trusted), 503)
    assert "names issuer" in error.message and "evil" in error.message
    assert fetches(trusted) == (1, 0)


def test_private_addresses_are_refused_before_any_connection(trusted: GitHubOIDCStandIn,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with WID_ALLOW_INSECURE_ISSUERS only loopback is allowed: a jwks_uri or an issuer on a private
    address, or a name resolving to one, is refused without connecting (only the loopback stand-in is)."""
    import socket

    connected: list[object] = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        connected.append(address[0])
        if address[0] != "127.0.0.1":
            raise AssertionError(f"connected to {address}")
        real_connect(sock, address)

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        assert host == "internal.example.com"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("0.0.0.0", port))]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    trusted.discovery_override = {**trusted.openid_configuration(), "jwks_uri": "https://10.0.0.1/jwks"}
    error = refused(mint(trusted), 503)
    assert "10.0.0.1, which is not a public address" in error.message
    assert fetches(trusted) == (1, 0)
    for issuer, address in (("https://10.0.0.1", "10.0.0.1"), ("https://internal.example.com", "0.0.0.0")):
        with pytest.raises(issuers.DiscoveryError) as caught:
            issuers.fetch_keys(issuer)
        assert f"resolves to {address}, which is not a public address" in str(caught.value)
    assert connected == ["127.0.0.1"]  # the stand-in's discovery document, nothing else


def test_jwks_uri_must_be_https_too(trusted: GitHubOIDCStandIn) -> None:
    trusted.discovery_override = {**trusted.openid_configuration(), "jwks_uri": "http://example.com/jwks"}
    assert "jwks_uri" in refused(mint(trusted), 503).message


@pytest.mark.parametrize("which", ["discovery", "jwks"])
def test_documents_are_size_capped(trusted: GitHubOIDCStandIn, which: str) -> None:
    if which == "discovery":
        trusted.discovery_override = {**trusted.openid_configuration(), "padding": "x" * 70_000}
    else:
        trusted.jwks_override = {**trusted.jwks(), "padding": "x" * 300_000}
    assert "larger than" in refused(mint(trusted), 503).message


def test_redirects_are_not_followed(trusted: GitHubOIDCStandIn) -> None:
    trusted.fail_next("/.well-known/openid-configuration", 302, body=b"",
                      headers=[("Location", "http://127.0.0.1:9/elsewhere")])
    assert "HTTP 302" in refused(mint(trusted), 503).message


@pytest.mark.parametrize("document", [b"not json", b"[1, 2]", {"keys": "nope"}, {"keys": []},
                                      {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}])
def test_unusable_jwks_fails_closed(trusted: GitHubOIDCStandIn, document: object) -> None:
    trusted.jwks_override = document
    refused(mint(trusted), 503)


def test_usable_keys_filters(trusted: GitHubOIDCStandIn) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from wid.core import jose

    good = trusted.signing_key.jwk()
    weak = jose.rsa_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key())  # noqa: S505
    twin_a = {**trusted.untrusted_key().jwk(), "kid": "twin"}
    twin_b = {**trusted.untrusted_key().jwk(), "kid": "twin"}
    keys = issuers.usable_keys({"keys": [
        {**good, "d": "private!"}, weak, twin_a, twin_b, {**good, "kid": "enc", "use": "enc"},
        {**good, "kid": None}, "junk", {"kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": "ed"},
    ]}, "test")
    assert [k["kid"] for k in keys] == [good["kid"]]
    assert "d" not in keys[0] and "x5c" not in keys[0]
    with pytest.raises(issuers.DiscoveryError):
        issuers.usable_keys({"keys": [good] * (issuers.MAX_KEYS + 1)}, "test")


def test_tls_issuer_is_verified_against_the_system_trust_store(app_env: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with GitHubOIDCStandIn(tls=True) as tls:
        assert tls.issuer.startswith("https://") and tls.ca_file
        monkeypatch.setenv("WID_TRUSTED_ISSUERS", tls.issuer)
        monkeypatch.setenv("WID_ALLOW_INSECURE_ISSUERS", "1")  # the stand-in is on loopback; TLS is still verified
        monkeypatch.setenv("WID_ISSUER_FETCH_TIMEOUT", "2")
        config.settings.cache_clear()
        install(TEAM, gha_files(tls.issuer))
        token = tls.mint(AUD, job_workflow_ref=WORKFLOW)
        error = refused(token, 503)  # its CA is not trusted here
        assert "certificate" in error.message.lower()
        issuers.forget(tls.issuer)
        monkeypatch.setenv("SSL_CERT_FILE", tls.ca_file)
        assert authz.authenticate(token).issuer == tls.issuer


# -- failures: fail closed, fail fast, keep serving what can be verified -----------------------------------------


def test_unreachable_issuer_fails_closed_then_fast(trusted: GitHubOIDCStandIn) -> None:
    trusted.fail_next("/.well-known/openid-configuration", None, delay_seconds=20)
    started = time.monotonic()
    error = refused(mint(trusted), 503)
    assert time.monotonic() - started < 10  # the 1 s deadline, not the issuer's 20 s
    assert "within 1s" in error.message and int(error.retry_after or 0) >= 1
    started = time.monotonic()
    again = refused(mint(trusted), 503)  # within the backoff: no second wait, no second fetch
    assert time.monotonic() - started < 1
    assert "within 1s" in again.message and "retry in" in again.message
    assert fetches(trusted) == (1, 0)
    set_cache(trusted.issuer, attempt_at=int(time.time()) - issuers.FAILURE_BACKOFF_SECONDS - 1)
    assert authz.authenticate(mint(trusted)).issuer == trusted.issuer  # retried after the backoff


def test_trickling_issuer_is_cut_at_the_deadline(trusted: GitHubOIDCStandIn) -> None:
    """Headers at once, then one byte every 0.2 s: each read is quick, the whole never ends in time."""
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
            while not stop.wait(0.2):
                try:
                    conn.sendall(b" ")
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    trusted.discovery_override = {**trusted.openid_configuration(),
                                  "jwks_uri": f"http://127.0.0.1:{server.getsockname()[1]}/jwks"}
    try:
        started = time.monotonic()
        error = refused(mint(trusted), 503)
        assert time.monotonic() - started < 5  # the 1 s deadline; the trickle alone would take hours
        assert "within 1s" in error.message
    finally:
        stop.set()
        server.close()


def test_error_status_and_refused_connection(trusted: GitHubOIDCStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    trusted.fail_next("/.well-known/jwks", 500)
    assert "HTTP 500" in refused(mint(trusted), 503).message
    from devkit.proxy import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("WID_TRUSTED_ISSUERS", closed)
    config.settings.cache_clear()
    install(OTHER_TEAM, gha_files(closed))
    token = trusted.mint(f"api://DigitalOcean?actx={OTHER_TEAM}", iss=closed)
    assert "cannot fetch" in refused(token, 503).message


def test_stale_keys_verify_while_the_issuer_is_down_within_a_bound(trusted: GitHubOIDCStandIn) -> None:
    authz.authenticate(mint(trusted))
    now = int(time.time())
    set_cache(trusted.issuer, fresh_until=now - 10, attempt_at=now - 100)
    trusted.fail_next("/.well-known/openid-configuration", 500, times=0)
    assert authz.authenticate(mint(trusted)).issuer == trusted.issuer  # stale-if-error
    row = cache_row(trusted.issuer)
    assert row is not None and "HTTP 500" in str(row[4])
    set_cache(trusted.issuer, fresh_until=now - issuers.STALE_IF_ERROR_SECONDS - 10)
    refused(mint(trusted), 503)
    trusted.clear_faults()


# -- kids: rotation and the refetch limit --------------------------------------------------------------------------


def test_unknown_kid_refetches_at_most_once_a_minute(trusted: GitHubOIDCStandIn) -> None:
    authz.authenticate(mint(trusted))
    assert fetches(trusted) == (1, 1)
    trusted.rotate_key()
    rotated = mint(trusted)
    error = refused(rotated)  # fetched seconds ago: the new kid waits for the minute to pass
    assert "does not publish" in error.message
    assert fetches(trusted) == (1, 1)
    set_cache(trusted.issuer, attempt_at=int(time.time()) - issuers.MIN_REFETCH_SECONDS)
    assert authz.authenticate(rotated).issuer == trusted.issuer  # one refetch picks up the rotation
    assert fetches(trusted) == (2, 2)
    for _ in range(5):  # made-up kids cannot make us fetch again
        refused(mint(trusted, key=trusted.untrusted_key()))
    assert fetches(trusted) == (2, 2)
    set_cache(trusted.issuer, attempt_at=int(time.time()) - issuers.MIN_REFETCH_SECONDS)
    for _ in range(3):
        refused(mint(trusted, key=trusted.untrusted_key()))
    assert fetches(trusted) == (3, 3)  # a minute later: exactly one more


def test_old_key_still_verifies_after_rotation(trusted: GitHubOIDCStandIn) -> None:
    old = mint(trusted)
    trusted.rotate_key(keep_old=True)
    authz.authenticate(mint(trusted))
    assert authz.authenticate(old).issuer == trusted.issuer


# -- the token itself ------------------------------------------------------------------------------------------------


def test_signature_attacks_are_401(trusted: GitHubOIDCStandIn) -> None:
    authz.authenticate(mint(trusted))
    with GitHubOIDCStandIn() as elsewhere:
        attacks = {
            "published kid, other key": mint(trusted, key=trusted.untrusted_key(kid=trusted.kid)),
            "alg none": mint(trusted, alg="none"),
            "HS256 keyed with the public key": mint(trusted, alg="HS256"),
            "HS256 keyed with the JWK JSON": mint(trusted, alg="HS256",
                                                  hmac_secret=json.dumps(trusted.signing_key.jwk()).encode()),
            "jku": mint(trusted, key=elsewhere.signing_key, headers={"jku": elsewhere.jwks_uri}),
            "x5u": mint(trusted, key=elsewhere.signing_key, headers={"x5u": f"{elsewhere.url}/cert.pem"}),
            "jwk": mint(trusted, key=elsewhere.signing_key, headers={"jwk": elsewhere.signing_key.jwk()}),
            "x5c": mint(trusted, key=elsewhere.signing_key,
                        headers={"x5c": elsewhere.signing_key.jwk()["x5c"]}),
            "no kid": mint(trusted, headers={"kid": None}),
        }
        for name, token in attacks.items():
            error = refused(token)
            assert error.message, name
        assert elsewhere.requests == []  # a header naming keys is never followed
    assert fetches(trusted) == (1, 1)


# Times are offsets from when the test runs (at collection, a long suite would let them go stale).
@pytest.mark.parametrize("overrides", [
    {"exp": -120},
    {"nbf": 600},
    {"iat": 600},
    {"exp": None},
    {"exp": "soon"},
    {"sub": None},
    {"sub": ""},
    {"exp": 10 * 86400},
])
def test_bad_claims_are_refused_before_any_fetch(trusted: GitHubOIDCStandIn, overrides: dict[str, object]) -> None:
    now = int(time.time())
    overrides = {k: now + v if k in ("exp", "nbf", "iat") and isinstance(v, int) else v for k, v in overrides.items()}
    refused(mint(trusted, **overrides))
    assert trusted.requests == []
