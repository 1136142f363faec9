"""Stand-in for GitHub Actions' OIDC issuer (``token.actions.githubusercontent.com``) and the runner's
ID-token request endpoint used by ``@actions/core``'s ``getIDToken(audience)``.

- ``GET {prefix}/.well-known/openid-configuration``: issuer metadata with ``issuer`` = this
  server's URL (plus the optional path prefix, as for GHES ``/_services/token``) and ``jwks_uri``.
- ``GET {prefix}/.well-known/jwks``: the RSA public keys (``kty, alg, use, kid, n, e, x5c, x5t``).
- ``GET /_apis/distributedtask/hubs/Actions/plans/{plan}/jobs/{job}/idtoken?api-version=2.0&audience=...``
  with ``Authorization: Bearer <ACTIONS_ID_TOKEN_REQUEST_TOKEN>``: ``{"value": "<jwt>"}``. The
  toolkit appends ``&audience=<urlencoded>`` to ``ACTIONS_ID_TOKEN_REQUEST_URL`` (oidc-utils.ts);
  without it the audience defaults to ``https://github.com/{repository_owner}``.

Tokens are RS256 JWTs with header ``{"alg", "kid", "typ": "JWT", "x5t"}`` and GitHub's claim set,
every custom claim a string as GitHub sends it (``repository_id``, ``run_id``, ``run_attempt``,
``ref_protected`` ...). ``nbf`` is 5 minutes before ``iat`` and ``exp`` 5 minutes after, as in
tokens GitHub issues.

For attack tests: ``mint(..., key=...)`` signs with a key that is not in the JWKS
(``untrusted_key()``), ``headers=`` merges arbitrary header fields (``kid``, ``jku``, ``alg``...),
``alg="none"`` produces an unsigned token and ``alg="HS256"`` an HMAC token keyed with the JWKS
public key PEM (the classic algorithm-confusion attack).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from devkit.standins._http import RecordedRequest, Response, StandInServer, serve_until_signalled

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
_ID_TOKEN_PATH = "/_apis/distributedtask/hubs/Actions/plans/{plan}/jobs/{job}/idtoken"  # noqa: S105 - a path

# Claims listed in GitHub's openid-configuration (claims_supported).
CLAIMS_SUPPORTED = [
    "sub",
    "aud",
    "exp",
    "iat",
    "iss",
    "jti",
    "nbf",
    "ref",
    "sha",
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "enterprise",
    "enterprise_id",
    "run_id",
    "run_number",
    "run_attempt",
    "actor",
    "actor_id",
    "workflow",
    "workflow_ref",
    "workflow_sha",
    "head_ref",
    "base_ref",
    "event_name",
    "ref_type",
    "ref_protected",
    "environment",
    "environment_node_id",
    "job_workflow_ref",
    "job_workflow_sha",
    "repository_visibility",
    "runner_environment",
    "check_run_id",
    "issuer_scope",
]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass
class SigningKey:
    """An RSA key with a self-signed certificate (GitHub publishes ``x5c``/``x5t`` too)."""

    kid: str
    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls, kid: str | None = None, key_size: int = 2048) -> SigningKey:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wid stand-in GitHub Actions OIDC")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(private_key, hashes.SHA256())
        )
        return cls(kid=kid or str(uuid.uuid4()), private_key=private_key, certificate=certificate)

    @property
    def x5t(self) -> str:
        return b64url(self.certificate.fingerprint(hashes.SHA1()))  # noqa: S303 - x5t is SHA-1 by definition

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def jwk(self) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
            "x5c": [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")],
            "x5t": self.x5t,
        }


@dataclass
class RunnerJob:
    """A job with ``id-token: write``: the runtime URL/token pair and the claims its tokens carry."""

    request_url: str
    request_token: str
    claims: dict[str, Any]
    revoked: bool = False

    @property
    def env(self) -> dict[str, str]:
        return {"ACTIONS_ID_TOKEN_REQUEST_URL": self.request_url, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": self.request_token}


class GitHubOIDCStandIn(StandInServer):
    """GitHub Actions OIDC issuer on 127.0.0.1.

    ``issuer`` is ``url + path_prefix`` unless given (a test may make it claim GitHub's real issuer
    while being served locally). ``keys`` are the published keys, newest last; ``signing_key`` signs
    new tokens. ``requests`` records every request (discovery, JWKS and runtime fetches).
    """

    def __init__(
        self,
        port: int = 0,
        tls: bool = False,
        *,
        path_prefix: str = "",
        issuer: str | None = None,
        token_lifetime_seconds: int = 300,
    ) -> None:
        super().__init__(port=port, tls=tls)
        self.path_prefix = path_prefix.rstrip("/")
        self._issuer_override = issuer
        self.token_lifetime_seconds = token_lifetime_seconds
        self.clock_offset: float = 0.0
        self.signing_key = SigningKey.generate()
        self.keys: list[SigningKey] = [self.signing_key]
        self.jobs: dict[str, RunnerJob] = {}  # request token -> job
        self.minted: list[dict[str, Any]] = []  # claims of every token minted, in order
        # Replace the served documents wholesale (e.g. a JWKS with extra keys or an oversized one).
        self.jwks_override: Any = None
        self.discovery_override: Any = None

    # -- URLs ----------------------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return self._issuer_override or f"{self.url}{self.path_prefix}"

    @property
    def discovery_url(self) -> str:
        return f"{self.url}{self.path_prefix}/.well-known/openid-configuration"

    @property
    def jwks_uri(self) -> str:
        return f"{self.url}{self.path_prefix}/.well-known/jwks"

    def proxy_env(self) -> dict[str, str]:
        """A proxy's settings that trust this issuer beside GitHub's own, owning roles as GitHub's tokens do."""
        return {"WID_TRUSTED_ISSUERS": f"{self.issuer} {GITHUB_ISSUER}",
                "WID_ISSUER_OWNER_CLAIMS": f"{self.issuer}=github"}

    def now(self) -> float:
        return time.time() + self.clock_offset

    # -- keys ------------------------------------------------------------------------------------------

    @property
    def kid(self) -> str:
        return self.signing_key.kid

    def rotate_key(self, *, keep_old: bool = True) -> SigningKey:
        """Start signing with a new key; it is published at once. With ``keep_old`` the previous keys
        stay in the JWKS (tokens they signed still verify), otherwise they are withdrawn."""
        new = SigningKey.generate()
        with self.lock:
            self.keys = [*self.keys, new] if keep_old else [new]
            self.signing_key = new
        return new

    def remove_key(self, kid: str) -> None:
        """Withdraw a key from the JWKS (tokens it signed stop verifying)."""
        with self.lock:
            self.keys = [k for k in self.keys if k.kid != kid]

    @staticmethod
    def untrusted_key(kid: str | None = None) -> SigningKey:
        """A fresh key that is not published; pass ``kid`` to impersonate a published key id."""
        return SigningKey.generate(kid=kid)

    def jwks(self) -> dict[str, Any]:
        with self.lock:
            return {"keys": [k.jwk() for k in self.keys]}

    def openid_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "claims_supported": CLAIMS_SUPPORTED,
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid"],
        }

    # -- tokens --------------------------------------------------------------------------------------

    def claims(self, audience: str | None = None, **overrides: Any) -> dict[str, Any]:
        """GitHub Actions' claim set for a workflow run, with ``overrides`` applied last.

        The inputs ``repository``, ``ref``, ``environment``, ``event_name``, ``workflow_file``,
        ``sha``... shape the derived claims (``sub``, ``repository_owner``, ``workflow_ref``,
        ``job_workflow_ref``...) unless those are overridden too. An override of ``None`` removes
        the claim. ``environment`` makes ``sub`` ``repo:{repo}:environment:{env}``;
        ``event_name="pull_request"`` makes it ``repo:{repo}:pull_request``.
        """
        overrides = dict(overrides)
        now = int(self.now())
        repository = str(overrides.get("repository", "octo-org/octo-repo"))
        owner = str(overrides.get("repository_owner", repository.split("/", 1)[0]))
        ref = str(overrides.get("ref", "refs/heads/main"))
        sha = str(overrides.get("sha", secrets.token_hex(20)))
        event_name = str(overrides.get("event_name", "push"))
        environment = overrides.get("environment")
        workflow_file = str(overrides.pop("workflow_file", "ci.yml"))
        workflow_ref = str(overrides.get("workflow_ref", f"{repository}/.github/workflows/{workflow_file}@{ref}"))
        if environment:
            sub = f"repo:{repository}:environment:{environment}"
        elif event_name == "pull_request":
            sub = f"repo:{repository}:pull_request"
        else:
            sub = f"repo:{repository}:ref:{ref}"
        ref_type = "tag" if ref.startswith("refs/tags/") else "branch"
        claims: dict[str, Any] = {
            "jti": str(uuid.uuid4()),
            "sub": sub,
            "aud": audience if audience is not None else f"https://github.com/{owner}",
            "ref": ref,
            "sha": sha,
            "repository": repository,
            "repository_owner": owner,
            "repository_owner_id": "71096353",
            "run_id": str(6000000000 + secrets.randbelow(1000000000)),
            "run_number": "1",
            "run_attempt": "1",
            "repository_visibility": "private",
            "repository_id": "563047837",
            "actor_id": "583231",
            "actor": "octocat",
            "workflow": "CI",
            "head_ref": "",
            "base_ref": "",
            "event_name": event_name,
            "ref_protected": "false",
            "ref_type": ref_type,
            "workflow_ref": workflow_ref,
            "workflow_sha": sha,
            "job_workflow_ref": workflow_ref,
            "job_workflow_sha": sha,
            "runner_environment": "github-hosted",
            "check_run_id": str(40000000000 + secrets.randbelow(1000000000)),
            "iss": self.issuer,
            "nbf": now - 300,
            "exp": now + self.token_lifetime_seconds,
            "iat": now,
        }
        if environment:
            claims["environment"] = environment
        apply_overrides(claims, overrides)
        return claims

    def mint(
        self,
        audience: str | None = None,
        *,
        key: SigningKey | None = None,
        alg: str = "RS256",
        headers: Mapping[str, Any] | None = None,
        hmac_secret: bytes | None = None,
        **overrides: Any,
    ) -> str:
        """A signed GitHub Actions OIDC token for ``audience`` (see :meth:`claims` for overrides).

        ``key``: sign with this key instead of the current one (e.g. ``untrusted_key()``).
        ``headers``: merged into the JOSE header last (``None`` values remove a field).
        ``alg``: ``RS256`` (default), ``RS384``/``RS512``, ``none`` (empty signature) or
        ``HS256``/``HS384``/``HS512`` keyed with ``hmac_secret`` (default: the signing key's
        public PEM, as in an algorithm-confusion attack).
        """
        claims = self.claims(audience, **overrides)
        with self.lock:
            self.minted.append(claims)
        return self.sign(claims, key=key, alg=alg, headers=headers, hmac_secret=hmac_secret)

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        key: SigningKey | None = None,
        alg: str = "RS256",
        headers: Mapping[str, Any] | None = None,
        hmac_secret: bytes | None = None,
    ) -> str:
        """Encode and sign arbitrary claims (no defaults added)."""
        key = key or self.signing_key
        header: dict[str, Any] = {"alg": alg, "kid": key.kid, "typ": "JWT", "x5t": key.x5t}
        if alg == "none":
            header.pop("kid")
            header.pop("x5t")
        apply_overrides(header, headers or {})
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(dict(claims), separators=(",", ":")).encode())
        ).encode("ascii")
        if alg == "none":
            signature = b""
        elif alg.startswith("HS"):
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
            secret = hmac_secret if hmac_secret is not None else key.public_pem()
            signature = hmac.new(secret, signing_input, digest).digest()
        elif alg.startswith("RS"):
            algorithm = {"RS256": hashes.SHA256(), "RS384": hashes.SHA384(), "RS512": hashes.SHA512()}[alg]
            signature = key.private_key.sign(signing_input, padding.PKCS1v15(), algorithm)
        else:
            raise ValueError(f"unsupported alg {alg!r}")
        return signing_input.decode("ascii") + "." + b64url(signature)

    # -- Actions runtime --------------------------------------------------------------------------------

    def runner_job(self, **claim_overrides: Any) -> RunnerJob:
        """Register a job; its ``env`` is what the runner puts in the step's environment. Tokens the
        job requests carry ``claim_overrides`` (see :meth:`claims`) and the requested audience."""
        plan, job = uuid.uuid4(), uuid.uuid4()
        request_token = secrets.token_urlsafe(32)
        request_url = f"{self.url}{_ID_TOKEN_PATH.format(plan=plan, job=job)}?api-version=2.0"
        runner = RunnerJob(request_url=request_url, request_token=request_token, claims=claim_overrides)
        with self.lock:
            self.jobs[request_token] = runner
        return runner

    def actions_env(self, **claim_overrides: Any) -> dict[str, str]:
        """``ACTIONS_ID_TOKEN_REQUEST_URL`` and ``ACTIONS_ID_TOKEN_REQUEST_TOKEN`` for a new job."""
        return self.runner_job(**claim_overrides).env

    # -- HTTP ----------------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Response:
        path = request.path
        if request.method not in ("GET", "HEAD"):
            return Response.json(405, {"message": "Method not allowed"}, [("Allow", "GET, HEAD")])
        prefix = self.path_prefix
        cache = [("Cache-Control", "public, max-age=3600")]
        if path == f"{prefix}/.well-known/openid-configuration":
            document = self.discovery_override if self.discovery_override is not None else self.openid_configuration()
            return _document(document, cache)
        if path == f"{prefix}/.well-known/jwks":
            document = self.jwks_override if self.jwks_override is not None else self.jwks()
            return _document(document, cache)
        if path.startswith("/_apis/distributedtask/") and path.endswith("/idtoken"):
            return self._id_token(request)
        return Response.json(404, {"message": "Not Found"})

    def _id_token(self, request: RecordedRequest) -> Response:
        with self.lock:
            job = self.jobs.get(request.bearer_token or "")
        if job is None or job.revoked or not job.request_url.startswith(f"{self.url}{request.path}?"):
            return Response.json(401, {"message": "Unauthorized"})
        audience = request.query_value("audience")
        token = self.mint(audience or None, **job.claims)
        return Response.json(200, {"value": token})


def _document(document: Any, headers: list[tuple[str, str]]) -> Response:
    if isinstance(document, bytes | str):
        body = document.encode("utf-8") if isinstance(document, str) else document
        return Response(200, body, [("Content-Type", "application/json; charset=utf-8"), *headers])
    return Response.json(200, document, headers)


def apply_overrides(fields: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Edit a token's claims or header in place: an override sets its field, or removes it when None."""
    for name, value in overrides.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value


def audience_query(audience: str) -> str:
    """How ``@actions/core`` appends an audience to ``ACTIONS_ID_TOKEN_REQUEST_URL``."""
    return f"&audience={quote(audience, safe='')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.standins.github_oidc",
        description="Serve the GitHub Actions OIDC issuer stand-in on 127.0.0.1 until SIGTERM/SIGINT. "
        "Prints one JSON line (issuer, jwks_uri, and the Actions runtime env of one job) when ready.",
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--path-prefix", default="")
    parser.add_argument("--repository", default="octo-org/octo-repo", help="claims of the job printed at start")
    parser.add_argument("--ref", default="refs/heads/main")
    parser.add_argument("--workflow-file", default="ci.yml")
    args = parser.parse_args(argv)
    stand_in = GitHubOIDCStandIn(port=args.port, tls=args.tls, path_prefix=args.path_prefix)

    def ready() -> dict[str, Any]:
        env = stand_in.actions_env(repository=args.repository, ref=args.ref, workflow_file=args.workflow_file)
        return {
            "url": stand_in.url,
            "issuer": stand_in.issuer,
            "jwks_uri": stand_in.jwks_uri,
            "ca_file": stand_in.ca_file,
            "env": env,
        }

    return serve_until_signalled(stand_in, ready)


if __name__ == "__main__":
    raise SystemExit(main())
