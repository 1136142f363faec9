"""Signing-key rotation with several replicas: the next key is published before it signs; an emergency
rotation drops a compromised key at once. On SQLite and PostgreSQL, then through the `wid` command and
a third-party verifier against the running service.

Time passing is simulated by moving a next key's `activate_at` into the past, as the clock would.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from jwcrypto.jws import InvalidJWSSignature
from jwcrypto.jwt import JWTMissingKey

from devkit.proxy import ProxyServer
from tests.gha.support import verify_by_discovery
from wid import config
from wid.core import tokens
from wid.store import keyring, keys, signing, storage, wellknown

AUD = "api://DigitalOcean?actx=f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
SUB = "actx:f81d4fae-7dec-11d0-a765-00a0c91e6bf6:role:data-readwrite"

GRACE = 600 + keyring.ACTIVE_KEY_CACHE_SECONDS + 60  # the retired key's verify window for max_token_ttl=600


def kid_of(token: str) -> str:
    header = token.split(".")[0]
    kid: str = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    return kid


def sign() -> str:
    token, _ = signing.sign({"aud": AUD, "sub": SUB}, kind=tokens.EXCHANGED, lifetime=300)
    return token


def fresh_process() -> None:
    """Forget what this process cached, as a new CGI process (or another replica) would start."""
    storage.database().cache.clear()


def time_passes_until_activation(table: str = "signing_keys") -> None:
    """Move the next key's times back by what separates now from its activation (the rows' view of the
    clock reaching activate_at)."""
    with storage.database().transaction() as tx:
        row = tx.one(f"SELECT activate_at FROM {table} WHERE state = 'next'")  # noqa: S608
        assert row is not None
        shift = int(row[0]) - int(time.time()) + 1
        tx.execute(f"UPDATE {table} SET activate_at = activate_at - ?, verify_until = verify_until - ? "  # noqa: S608
                   "WHERE state = 'next'", (shift, shift))
    fresh_process()


def states() -> dict[str, str]:
    return {k.kid: k.state for k in keys.listing()}


def test_the_activation_delay_covers_republishing_and_caching(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert keys.activation_delay() == 60 + 300 + keyring.ACTIVATION_SLACK_SECONDS  # the defaults
    monkeypatch.setenv("WID_PUBLISH_INTERVAL", "30")
    monkeypatch.setenv("WID_JWKS_MAX_AGE", "600")
    config.settings.cache_clear()
    assert keys.activation_delay() == 30 + 600 + keyring.ACTIVATION_SLACK_SECONDS
    assert wellknown.cache_control() == "public, max-age=600"
    monkeypatch.setenv("WID_JWKS_MAX_AGE", "0")
    config.settings.cache_clear()
    with pytest.raises(config.ConfigError, match="WID_JWKS_MAX_AGE must be a whole number of seconds from 1 to 86400"):
        config.settings()


def test_a_scheduled_rotation_publishes_the_next_key_before_it_signs(backend: str) -> None:
    old_token = sign()
    old = kid_of(old_token)
    before = int(time.time())
    rotation = keys.rotate(max_token_ttl=600)
    new = rotation.kid
    assert rotation.previous == old and new != old
    assert before + keys.activation_delay() <= rotation.activate_at <= int(time.time()) + keys.activation_delay()
    assert wellknown.publish() == [old, new]  # published at once, the signing key first
    assert states() == {old: "active", new: "next"}

    fresh_process()
    assert kid_of(sign()) == old  # until activate_at, the old key signs everywhere
    assert keys.public_jwk(new) is not None  # and its tokens will verify the moment it does

    with pytest.raises(keyring.RotationError, match=f"key {new} is already published.*--emergency"):
        keys.rotate(max_token_ttl=600)

    time_passes_until_activation()
    promoted_at = int(time.time())
    new_token = sign()
    assert kid_of(new_token) == new
    info = {k.kid: k for k in keys.listing()}
    assert info[new].state == "active" and info[old].state == "retired"
    retired_until = info[old].verify_until
    assert retired_until is not None and promoted_at + GRACE <= retired_until <= int(time.time()) + GRACE
    for token in (old_token, new_token):
        assert signing.verify(token, kinds={tokens.EXCHANGED})["sub"] == SUB
    assert wellknown.publish() == [new, old]
    assert keys.prune() == []  # the retired key still has live tokens
    with storage.database().transaction() as tx:
        tx.execute("UPDATE signing_keys SET verify_until = ? WHERE kid = ?", (int(time.time()) - 1, old))
    assert keys.prune() == [old] and states() == {new: "active"}


def test_processes_that_need_the_key_after_activation_promote_it_once(backend: str) -> None:
    old = keys.active_key().kid
    new = keys.rotate(max_token_ttl=600).kid
    time_passes_until_activation()
    code = "from wid.store import keys; print(keys.active_key().kid)"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ), text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(6)]
    kids = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and kids == {new}
    assert states() == {new: "active", old: "retired"}


def test_an_emergency_rotation_drops_the_compromised_key_at_once(backend: str) -> None:
    compromised_token = sign()
    compromised = kid_of(compromised_token)
    rotation = keys.rotate_emergency()
    assert rotation.previous == compromised and rotation.activate_at <= int(time.time())
    assert kid_of(sign()) == rotation.kid != compromised
    with pytest.raises(tokens.TokenError):
        signing.verify(compromised_token, kinds={tokens.EXCHANGED})
    assert compromised not in wellknown.publish()
    assert states() == {rotation.kid: "active", compromised: "revoked"}
    assert keys.prune() == [compromised]  # nothing to keep it for


def test_an_emergency_rotation_signs_with_the_published_next_key(backend: str) -> None:
    compromised = keys.active_key().kid
    pending = keys.rotate(max_token_ttl=600).kid
    rotation = keys.rotate_emergency()
    assert rotation.kid == pending  # verifiers may already have it cached
    fresh_process()
    assert kid_of(sign()) == pending
    assert states() == {pending: "active", compromised: "revoked"}
    assert wellknown.publish() == [pending]


def test_a_process_with_cached_keys_sees_another_process_revoke_at_once(backend: str) -> None:
    """A long-lived process (persistent mode) caches both keys; another process's emergency rotation
    bumps the key set's generation, which this process reads at its next use."""
    compromised_token = sign()
    compromised = kid_of(compromised_token)
    assert signing.verify(compromised_token, kinds={tokens.EXCHANGED})["sub"] == SUB  # both keys cached now
    code = "from wid.store import keys; print(keys.rotate_emergency().kid)"
    new = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), text=True, capture_output=True,
                         check=True, timeout=120).stdout.strip()
    with pytest.raises(tokens.TokenError, match="does not know"):
        signing.verify(compromised_token, kinds={tokens.EXCHANGED})
    assert kid_of(sign()) == new != compromised


def test_rows_stay_readable_by_the_code_before_scheduled_rotation(backend: str) -> None:
    """The queries of the release before `next` existed (keys.py at that time), against the new rows."""
    old = keys.active_key().kid
    new = keys.rotate(max_token_ttl=600).kid
    now = int(time.time())
    with storage.database().transaction(write=False) as tx:
        signing = tx.execute("SELECT kid, private_key FROM signing_keys WHERE state = 'active'")
        published = tx.execute("SELECT public_jwk FROM signing_keys WHERE state = 'active' OR verify_until > ? "
                               "ORDER BY state = 'active' DESC, created_at DESC", (now,))
    assert [r[0] for r in signing] == [old]  # an old replica keeps signing with the active key
    assert [json.loads(r[0])["kid"] for r in published] == [old, new]  # and publishes the next one too
    keys.rotate_emergency()
    with storage.database().transaction(write=False) as tx:
        verifying = tx.execute("SELECT kid FROM signing_keys WHERE state = 'active' OR verify_until > ?",
                               (int(time.time()),))
    assert [r[0] for r in verifying] == [new]  # nor does an old replica trust a revoked key


# -- through the command and a third-party verifier ---------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    """A proxy of its own: emergency rotations here must not break other modules' tokens."""
    with ProxyServer(tmp_path_factory.mktemp("rotation") / "data") as server:
        yield server


def jwks_kids(service: ProxyServer) -> list[str]:
    response = requests.get(f"{service.url}/.well-known/jwks", timeout=5)
    assert response.headers["Cache-Control"] == "public, max-age=300"  # what activation_delay() counts on
    return [key["kid"] for key in response.json()["keys"]]


def test_rotation_through_the_command_as_a_verifier_sees_it(service: ProxyServer) -> None:
    old_token = service.wid("token", "--aud", AUD, "--sub", SUB, "--ttl", "600").stdout.strip()
    old = kid_of(old_token)
    rotated = service.wid("keys", "rotate").stdout
    assert "is published now and signs from" in rotated and f"{old} signs until then" in rotated
    new = rotated.split()[1]
    assert jwks_kids(service) == [old, new]
    assert "next" in service.wid("keys", "list").stdout
    refused = service.wid("keys", "rotate", check=False)
    assert refused.returncode == 1 and "--emergency" in refused.stderr

    with service.configured():
        time_passes_until_activation()
    new_token = service.wid("token", "--aud", AUD, "--sub", SUB).stdout.strip()
    assert kid_of(new_token) == new
    for token in (old_token, new_token):
        assert verify_by_discovery(service.url, token, AUD)["sub"] == SUB


def test_emergency_rotation_through_the_command_as_a_verifier_sees_it(service: ProxyServer) -> None:
    compromised_token = service.wid("token", "--aud", AUD, "--sub", SUB).stdout.strip()
    compromised = kid_of(compromised_token)
    output = service.wid("keys", "rotate", "--emergency").stdout
    assert f"key {compromised} is dropped" in output and "every token it signed is refused" in output
    assert compromised not in jwks_kids(service)
    with pytest.raises((JWTMissingKey, InvalidJWSSignature)):
        verify_by_discovery(service.url, compromised_token, AUD)
    fresh = service.wid("token", "--aud", AUD, "--sub", SUB).stdout.strip()
    assert kid_of(fresh) != compromised and verify_by_discovery(service.url, fresh, AUD)["sub"] == SUB
    misuse = service.wid("keys", "prune", "--emergency", check=False)
    assert misuse.returncode == 2 and "--emergency goes with `wid keys rotate` only" in misuse.stderr
