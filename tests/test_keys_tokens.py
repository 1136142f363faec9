"""Signing keys and our own tokens: generation under concurrency, rotation, pruning, strict verification."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from wid import config
from wid.core import jose, tokens
from wid.store import keys, signing, storage, wellknown

AUD = "api://DigitalOcean?actx=f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
SUB = "actx:f81d4fae-7dec-11d0-a765-00a0c91e6bf6:role:data-readwrite"


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], key: rsa.RSAPrivateKey | None = None) -> str:
    if key is None:
        return f"{_b64(header)}.{_b64(claims)}."
    return jose.sign_rs256(key, header, claims) if header.get("alg") == "RS256" else ""


TIME_OFFSETS = ("exp", "nbf", "iat")  # in test_bad_claims: seconds from the time the test runs


def _good_claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": "https://wid.example.test", "aud": AUD, "sub": SUB, "iat": now, "nbf": now, "exp": now + 300,
              "jti": "j1", "wid_kind": "exchanged"}
    claims.update(over)
    return claims


def test_concurrent_first_requests_create_one_key(backend: str) -> None:
    code = "from wid.store import keys; print(keys.active_key().kid)"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ), text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(6)]
    outputs = [p.communicate(timeout=120) for p in procs]
    failed = [err for p, (_, err) in zip(procs, outputs, strict=True) if p.returncode != 0]
    assert not failed, failed
    kids = {out.strip() for out, _ in outputs}
    assert len(kids) == 1
    listing = keys.listing()
    assert [k.state for k in listing] == ["active"]
    assert listing[0].kid == kids.pop()


def test_kid_is_the_rfc7638_thumbprint(backend: str) -> None:
    key = keys.active_key()
    numbers = key.private_key.public_key().public_numbers()

    def b64int(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    canonical = json.dumps({"e": b64int(numbers.e), "kty": "RSA", "n": b64int(numbers.n)}, separators=(",", ":"))
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    assert key.kid == expected
    assert key.private_key.key_size == 2048


def test_private_keys_are_encrypted_at_rest(backend: str) -> None:
    keys.active_key()
    with storage.database().transaction(write=False) as tx:
        sealed = bytes(tx.one("SELECT private_key FROM signing_keys")[0])  # type: ignore[index]
    assert b"PRIVATE KEY" not in sealed


def test_sign_and_verify_roundtrip(backend: str) -> None:
    token, claims = signing.sign({"aud": AUD, "sub": SUB}, kind=tokens.EXCHANGED, lifetime=300)
    verified = signing.verify(token, kinds={tokens.EXCHANGED}, audience=AUD)
    assert verified == claims
    assert set(claims) >= {"iss", "aud", "sub", "iat", "nbf", "exp", "jti"}
    assert claims["iss"] == "https://wid.example.test"
    assert claims["exp"] - claims["iat"] == 300
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "RS256", "typ": "JWT", "kid": keys.active_key().kid}
    assert keys.active_key().kid in wellknown.published_kids()


def test_a_replaced_jwks_file_is_read_again(backend: str) -> None:
    """The published kids are remembered by the file's identity: a file another replica (or `wid keys
    publish`) wrote since is read again, one left in place is not."""
    signing.sign({"aud": AUD, "sub": SUB}, kind=tokens.EXCHANGED, lifetime=300)
    path = Path(config.settings().public_dir, ".well-known", "jwks")
    first = wellknown.published_kids()
    assert first == {keys.active_key().kid}
    assert wellknown.published_kids() is first  # the same file: not parsed again
    document = json.loads(path.read_text())
    replaced = path.with_name("jwks.new")
    replaced.write_text(json.dumps({"keys": [*document["keys"], {**document["keys"][0], "kid": "another-kid"}]}))
    os.replace(replaced, path)
    assert wellknown.published_kids() == first | {"another-kid"}
    path.unlink()
    assert wellknown.published_kids() == set()  # gone: nothing counts as published, so sign() publishes again
    signing.sign({"aud": AUD, "sub": SUB}, kind=tokens.EXCHANGED, lifetime=300)
    assert wellknown.published_kids() == first


class TestRefusedTokens:
    """Every way a presented token can be wrong is a TokenError, never a pass."""

    @pytest.fixture(autouse=True)
    def _env(self, app_env: Any) -> None:
        self.key = keys.active_key()

    def _signed(self, claims: dict[str, Any], **header: Any) -> str:
        return jose.sign_rs256(self.key.private_key, {"alg": "RS256", "kid": self.key.kid, **header}, claims)

    def test_alg_none(self) -> None:
        with pytest.raises(tokens.TokenError, match="algorithm 'none' is not allowed"):
            signing.verify(_forge({"alg": "none", "kid": self.key.kid}, _good_claims()), kinds={"exchanged"})

    def test_hs256_signed_with_our_public_key(self) -> None:
        public_pem = self.key.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        signing_input = f"{_b64({'alg': 'HS256', 'kid': self.key.kid})}.{_b64(_good_claims())}"
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        with pytest.raises(tokens.TokenError, match="HS256"):
            signing.verify(f"{signing_input}.{_b64(mac)}", kinds={"exchanged"})

    def test_unknown_kid(self) -> None:
        token = jose.sign_rs256(self.key.private_key, {"alg": "RS256", "kid": "nope"}, _good_claims())
        with pytest.raises(tokens.TokenError, match="does not know"):
            signing.verify(token, kinds={"exchanged"})

    def test_swapped_key_with_our_kid(self) -> None:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jose.sign_rs256(other, {"alg": "RS256", "kid": self.key.kid}, _good_claims())
        with pytest.raises(tokens.TokenError, match="signature does not verify"):
            signing.verify(token, kinds={"exchanged"})

    @pytest.mark.parametrize("name", ["jku", "x5u", "jwk", "x5c", "crit"])
    def test_key_location_headers_are_refused(self, name: str) -> None:
        with pytest.raises(tokens.TokenError, match=name):
            signing.verify(self._signed(_good_claims(), **{name: "https://attacker.example/jwks"}), kinds={"exchanged"})

    def test_tampered_claims(self) -> None:
        header, _, signature = self._signed(_good_claims()).split(".")
        admin = _good_claims(sub="actx:f81d4fae-7dec-11d0-a765-00a0c91e6bf6:role:admin")
        forged = f"{header}.{_b64(admin)}.{signature}"
        with pytest.raises(tokens.TokenError, match="signature"):
            signing.verify(forged, kinds={"exchanged"})

    # Claims are made when the test runs (at collection, a long suite would let them expire first).
    @pytest.mark.parametrize(("over", "message"), [
        ({"exp": -120}, "expired"),
        ({"nbf": 600}, "not valid yet"),
        ({"iat": 600}, "future"),
        ({"iss": "https://evil.example"}, "not issued by this issuer"),
        ({"aud": "api://DigitalOcean?actx=a&actx=b"}, "exactly one actx"),
        ({"aud": "api://DigitalOcean?actx=a&x=1"}, "exactly one actx"),
        ({"aud": [AUD]}, "one string"),
        ({"wid_kind": "provisioning"}, "provisioning token cannot be used here"),
        ({"sub": "role:admin"}, "sub must start with actx"),
        ({"exp": "9999999999"}, "exp must be a number"),
    ])
    def test_bad_claims(self, over: dict[str, Any], message: str) -> None:
        now = int(time.time())
        claims = _good_claims(**{k: now + v if k in TIME_OFFSETS and isinstance(v, int) else v
                                 for k, v in over.items()})
        with pytest.raises(tokens.TokenError, match=message):
            signing.verify(self._signed(claims), kinds={"exchanged"})

    def test_wrong_audience(self) -> None:
        with pytest.raises(tokens.TokenError, match="audience"):
            signing.verify(self._signed(_good_claims()), kinds={"exchanged"}, audience="api://DigitalOcean?actx=other")

    def test_duplicate_claim_names(self) -> None:
        payload = base64.urlsafe_b64encode(b'{"sub":"a","sub":"b"}').rstrip(b"=").decode()
        header = _b64({"alg": "RS256", "kid": self.key.kid})
        with pytest.raises(tokens.TokenError, match=r"duplicate JSON key .sub."):
            signing.verify(f"{header}.{payload}.AAAA", kinds={"exchanged"})

    @pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!!.e30.x", "e30.e30.e30", "x" * 20000])
    def test_garbage(self, token: str) -> None:
        with pytest.raises(tokens.TokenError):
            signing.verify(token, kinds={"exchanged"})


def test_signer_refuses_bad_audience_and_lifetime(app_env: Any) -> None:
    with pytest.raises(tokens.TokenError):
        signing.sign({"aud": "DigitalOcean", "sub": SUB}, kind="exchanged", lifetime=60)
    with pytest.raises(ValueError, match="lifetime"):
        signing.sign({"aud": AUD, "sub": SUB}, kind="exchanged", lifetime=10**9)


def test_wrong_secret_key_is_a_clear_error(app_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    keys.active_key()
    key_file = app_env / "secret.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    other = base64.urlsafe_b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("WID_SECRET_KEY", other)
    config.settings.cache_clear()
    storage.database().cache.clear()
    with pytest.raises(config.ConfigError, match="WID_SECRET_KEY"):
        keys.rotate(600)
    monkeypatch.setenv("WID_SECRET_KEY", "too-short")
    config.settings.cache_clear()
    with pytest.raises(config.ConfigError, match="32 random bytes"):
        keys.rotate(600)


def test_shared_database_requires_an_explicit_secret_key(app_env: Any, postgres: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URI", postgres.fresh_database())
    config.settings.cache_clear()
    with pytest.raises(config.ConfigError, match="WID_SECRET_KEY must be set when DATABASE_URI is set"):
        keys.active_key()
    assert not (app_env / "secret.key").exists()


@pytest.mark.parametrize(("sub", "actx"), [
    ("actx:f81d4fae-7dec-11d0-a765-00a0c91e6bf6:role:x", "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"),
    ("actx:did:plc:ewvi7nxzyoun6zhxrhs64oiz:role:atproto-write", "did:plc:ewvi7nxzyoun6zhxrhs64oiz"),
    ("actx:did:web:agents.example.com:admin", "did:web:agents.example.com"),
])
def test_sub_context_understands_team_and_did_contexts(sub: str, actx: str) -> None:
    assert tokens.sub_context(sub) == actx


@pytest.mark.parametrize("sub", ["actx:did:plc:abc", "actx:did:plc", "actx:team", "actx::x", "role:x"])
def test_sub_context_refuses_subjects_without_a_name(sub: str) -> None:
    with pytest.raises(tokens.TokenError):
        tokens.sub_context(sub)


def test_a_key_stored_in_the_earlier_pem_format_still_signs(backend: str) -> None:
    from wid.store import encryption

    key = keys.active_key()
    pem = key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    with storage.database().transaction() as tx:
        tx.execute("UPDATE signing_keys SET private_key = ? WHERE kid = ?", (encryption.seal(pem), key.kid))
    storage.database().cache.clear()
    token, _ = signing.sign({"aud": AUD, "sub": SUB}, kind=tokens.EXCHANGED, lifetime=60)
    assert signing.verify(token, kinds={tokens.EXCHANGED})["sub"] == SUB
    assert keys.active_key().private_key.private_numbers() == key.private_key.private_numbers()
