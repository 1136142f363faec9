"""One key lifecycle for two kinds of keys (lib/wid/store/keyring.py): our signing keys and the ATProto
OAuth client keys. The same staged rotation, emergency revocation, prune and generation-keyed caches for
both; for client keys, a retired key stays while a session authorized with it lives. On SQLite and
PostgreSQL; time passing is simulated by moving a next key's `activate_at` into the past.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.test_key_rotation import time_passes_until_activation
from wid.core.errors import WidError
from wid.store import audit, audit_queries, credentials, keyring, keys, storage
from wid.upstreams.atproto import client
from wid.upstreams.atproto import tail as atproto_tail
from wid.upstreams.atproto.context import API

KINDS: dict[str, keyring.KeyKind[Any]] = {"signing": keys.SIGNING, "atproto_client": client.CLIENT_KEYS}
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest, backend: str) -> keyring.KeyKind[Any]:
    return KINDS[request.param]


def published(kind: keyring.KeyKind[Any]) -> list[str]:
    return [jwk["kid"] for jwk in keyring.published(kind)]


def states(kind: keyring.KeyKind[Any]) -> dict[str, str]:
    return {k.kid: k.state for k in keyring.listing(kind)}


def window_ends(table: str, kid: str) -> None:
    with storage.database().transaction() as tx:
        tx.execute(f"UPDATE {table} SET verify_until = ? WHERE kid = ?", (int(time.time()) - 1, kid))  # noqa: S608


def run_elsewhere(code: str) -> str:
    """`code` in another process (another worker or replica) against the same database."""
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ), text=True, capture_output=True,
                          check=True, timeout=120).stdout.strip()


def test_the_lifecycle_is_one_for_both_kinds(kind: keyring.KeyKind[Any]) -> None:
    first = keyring.active(kind).kid
    before = int(time.time())
    rotation = keyring.rotate(kind, grace=100)
    assert rotation.previous == first
    assert before + kind.activation_delay() <= rotation.activate_at <= int(time.time()) + kind.activation_delay()
    assert keyring.active(kind).kid == first and published(kind) == [first, rotation.kid]  # published, not signing
    with pytest.raises(keyring.RotationError, match="--emergency"):
        keyring.rotate(kind, grace=100)

    time_passes_until_activation(kind.table)
    assert keyring.active(kind).kid == rotation.kid
    assert states(kind) == {rotation.kid: "active", first: "retired"}
    assert keyring.public_jwk(kind, first) is not None and keyring.usable_key(kind, first) is not None

    # Both keys are cached in this process now; the emergency rotation comes from another one.
    emergency = run_elsewhere(f"from tests.test_client_key_rotation import KINDS; from wid.store import keyring; "
                              f"print(keyring.rotate_emergency(KINDS[{kind.name!r}]).kid)")
    assert keyring.active(kind).kid == emergency != rotation.kid
    assert keyring.public_jwk(kind, rotation.kid) is None and keyring.usable_key(kind, rotation.kid) is None
    assert published(kind) == [emergency, first]
    assert keyring.prune(kind) == [rotation.kid]  # revoked: nothing to keep it for; the retired key is in its window
    window_ends(kind.table, first)
    assert keyring.prune(kind, keep=frozenset({first})) == []  # still needed by its user
    assert keyring.prune(kind) == [first] and states(kind) == {emergency: "active"}


def test_two_processes_needing_the_first_key_create_one(kind: keyring.KeyKind[Any]) -> None:
    code = (f"from tests.test_client_key_rotation import KINDS; from wid.store import keyring; "
            f"print(keyring.active(KINDS[{kind.name!r}]).kid)")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ), text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(6)]
    kids = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(kids) == 1
    assert list(states(kind).values()) == ["active"]


def session_bound_to(kid: str, did: str = DID) -> None:
    """A DID's stored session, authorized with client key `kid` (as oauth.py's callback stores it)."""
    credentials.store(API, did, {"did": did, "client_kid": kid, "access_token": "a", "refresh_token": "r"})


def test_a_client_key_rotation_is_staged_and_keeps_the_key_its_sessions_need(backend: str) -> None:
    old = client.client_key().kid
    session_bound_to(old)
    rotation = client.rotate_client_key()
    assert [k["kid"] for k in client.jwks()["keys"]] == [old, rotation.kid]
    assert client.client_key().kid == old  # until every authorization server's cached JWKS can list the new key

    time_passes_until_activation(client.CLIENT_KEYS.table)
    assert client.client_key().kid == rotation.kid  # new sign-ins
    assert client.client_key(old).kid == old  # the session authorized with it still refreshes with it
    assert [k["kid"] for k in client.jwks()["keys"]] == [rotation.kid, old]
    window_ends(client.CLIENT_KEYS.table, old)  # sign-ins started with it are over
    assert client.prune_client_keys() == []  # a living session names it
    session_bound_to(rotation.kid)  # the DID signed in again
    assert client.prune_client_keys() == [old]
    assert [k["kid"] for k in client.jwks()["keys"]] == [rotation.kid]


def test_an_emergency_client_rotation_drops_the_key_at_once(backend: str) -> None:
    compromised = client.client_key().kid
    session_bound_to(compromised)
    assert client.client_key(compromised).kid == compromised  # cached by this process
    new = run_elsewhere("from wid.upstreams.atproto import client; print(client.rotate_client_key(emergency=True).kid)")
    with pytest.raises(WidError, match="sign in again") as err:
        client.client_key(compromised)  # the session bound to it no longer signs anything with it
    assert err.value.code == "atproto_client_key_missing"
    assert client.client_key().kid == new and [k["kid"] for k in client.jwks()["keys"]] == [new]
    assert client.prune_client_keys() == [compromised]  # revoked: dropped though a session names it


def test_rows_stay_readable_by_the_code_before_staged_client_keys(backend: str) -> None:
    """The queries of the release before (client.py at that time), against the new rows."""
    old = client.client_key().kid
    client.rotate_client_key()
    with storage.database().transaction(write=False) as tx:
        signing = tx.execute("SELECT kid, private_key FROM atproto_client_keys WHERE state = 'active'")
    assert [r[0] for r in signing] == [old]  # an old replica keeps signing new sign-ins with the active key


def test_client_key_commands_are_audited(app_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="wid")
    atproto_tail.register(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(["atproto", "client-keys", *argv])
        return int(args.func(args))

    assert run("rotate") == 0 and "(the first key)" in capsys.readouterr().out
    assert run("rotate") == 0 and "is published now and serves new sign-ins from" in capsys.readouterr().out
    assert run("rotate") == 1 and "--emergency" in capsys.readouterr().err
    assert run("list", "--emergency") == 2
    capsys.readouterr()
    assert run("rotate", "--emergency") == 0
    output = capsys.readouterr().out
    assert "is dropped" in output and "signs in again" in output
    assert run("prune") == 0 and "pruned 1 client key(s)" in capsys.readouterr().out
    rotations = [e.detail for e in audit_queries.entries(event="operator_atproto_client_keys_rotate")]
    assert [r["emergency"] for r in rotations] == [False, False, True]
    assert all(r["operator"] == audit.operator() for r in rotations)
    assert len(audit_queries.entries(event="operator_atproto_client_keys_prune")) == 1
