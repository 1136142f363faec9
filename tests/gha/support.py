"""Support for the exchange, issuer and GitHub Actions tests.

- Tokens: forged variants of ours for attacks (devkit/seed.py mints real ones and installs RBAC).
- A third-party verifier (jwcrypto, through our discovery document).
- The real `@actions/core` from npm (package.json + package-lock.json here), installed once into
  .cache/gha with the machine's node/npm, and run like the workflow's github-script step.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import requests
from jwcrypto import jwk, jwt

from devkit.proxy import ROOT, ProxyServer
from devkit.standins.github_oidc import apply_overrides

HERE = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "gha"
def new_team() -> str:
    return str(uuid.uuid4())


def audience(team: str, api: str = "DigitalOcean") -> str:
    return f"api://{api}?actx={team}"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(proxy: ProxyServer, claims: dict[str, Any], *, header: dict[str, Any] | None = None,
          alg: str = "RS256") -> str:
    """Sign arbitrary claims/header with the proxy's real key (RS256), as HS256 keyed with its public
    key (algorithm confusion), or unsigned (alg none)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    from wid.store import keys

    with proxy.configured():
        key = keys.active_key()
    head = {"alg": alg, "typ": "JWT", "kid": key.kid, **(header or {})}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}".encode()
    if alg == "none":
        signature = b""
    elif alg == "HS256":
        public_pem = key.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    else:
        signature = key.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64(signature)}"


def our_claims(proxy: ProxyServer, aud: str, sub: str, *, kind: str = "workload", lifetime: int = 600,
               **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": proxy.url, "aud": aud, "sub": sub, "iat": now, "nbf": now, "exp": now + lifetime,
              "jti": uuid.uuid4().hex, "wid_kind": kind}
    apply_overrides(claims, overrides)
    return claims


def unverified_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return result


def verify_by_discovery(issuer: str, token: str, aud: str) -> dict[str, Any]:
    """What a third party does: discovery, then jwks_uri, then verify with jwcrypto (not our code)."""
    config = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=5).json()
    assert config["issuer"] == issuer
    keyset = jwk.JWKSet.from_json(requests.get(config["jwks_uri"], timeout=5).text)
    verified = jwt.JWT(jwt=token, key=keyset, algs=["RS256"], expected_type="JWS",
                       check_claims={"iss": issuer, "aud": aud, "exp": None})
    claims: dict[str, Any] = json.loads(verified.claims)
    return claims


def exchange(proxy: ProxyServer, token: str | None, body: Any, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    headers.update(kwargs.pop("headers", {}))
    if isinstance(body, bytes | str):
        return requests.post(f"{proxy.url}/v1/oidc/issue", data=body, headers=headers, timeout=30, **kwargs)
    return requests.post(f"{proxy.url}/v1/oidc/issue", json=body, headers=headers, timeout=30, **kwargs)


def audit_rows(proxy: ProxyServer, actx: str | None = None, event: str = "exchange") -> list[dict[str, Any]]:
    args = ["audit", "--json", "--event", event, "--limit", "1000"]
    if actx is not None:
        args += ["--actx", actx]
    out = proxy.wid(*args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# -- the real @actions/core ---------------------------------------------------------------------------------


def _lock_digest() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json", "get-id-token.mjs"):
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()


def ensure_actions_core() -> Path:
    """`npm ci` the pinned @actions/core into .cache/gha once (lock-protected); returns the folder."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("node and npm are needed for the @actions/core test (Debian: apt-get install nodejs npm)")
    CACHE.mkdir(parents=True, exist_ok=True)
    stamp = CACHE / "stamp"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        want = _lock_digest()
        if stamp.exists() and stamp.read_text() == want and (CACHE / "node_modules/@actions/core").is_dir():
            return CACHE
        for name in ("package.json", "package-lock.json", "get-id-token.mjs"):
            shutil.copyfile(HERE / name, CACHE / name)
        env = {**os.environ, "npm_config_audit": "false", "npm_config_fund": "false",
               "npm_config_update_notifier": "false"}
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=CACHE, env=env,
                       check=True, capture_output=True, timeout=300)
        stamp.write_text(want)
    return CACHE


def get_id_token(runtime_env: dict[str, str], audience: str, *, ca_file: str | None = None,
                 workdir: Path) -> tuple[str, str]:
    """Run the workflow's github-script step (core.getIDToken + core.setOutput) with the real
    @actions/core; returns (token read back from $GITHUB_OUTPUT, the step's stdout)."""
    folder = ensure_actions_core()
    output = workdir / "github_output"
    output.write_text("")
    env = {**os.environ, **runtime_env, "GITHUB_OUTPUT": str(output), "NO_PROXY": "127.0.0.1,localhost",
           "no_proxy": "127.0.0.1,localhost"}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    if ca_file:
        env["NODE_EXTRA_CA_CERTS"] = ca_file
    done = subprocess.run(["node", str(folder / "get-id-token.mjs"), audience], env=env, capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"getIDToken failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    return read_output(output)["oidc"], done.stdout


def read_output(path: Path) -> dict[str, str]:
    """Parse a $GITHUB_OUTPUT file: `name=value` lines and `name<<DELIMITER` ... `DELIMITER` blocks."""
    values: dict[str, str] = {}
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            block = []
            index += 1
            while lines[index] != delimiter:
                block.append(lines[index])
                index += 1
            values[name] = "\n".join(block)
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
        index += 1
    return values


def run_github_script(script: str, runtime_env: dict[str, str], *, ca_file: str | None = None,
                      workdir: Path) -> dict[str, str]:
    """Run an `actions/github-script` step's script the way the action does (an async function body
    with `core` in scope), with the real @actions/core; returns the step's outputs."""
    folder = ensure_actions_core()
    module = folder / f"step-{uuid.uuid4().hex}.mjs"
    module.write_text("import * as core from '@actions/core';\n"
                      f"await (async () => {{\n{script}\n}})();\n")
    output = workdir / "github_output"
    output.write_text("")
    env = {**os.environ, **runtime_env, "GITHUB_OUTPUT": str(output), "NO_PROXY": "127.0.0.1,localhost"}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    if ca_file:
        env["NODE_EXTRA_CA_CERTS"] = ca_file
    try:
        done = subprocess.run(["node", str(module)], env=env, capture_output=True, text=True, timeout=60)
    finally:
        module.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"github-script step failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    return read_output(output)
