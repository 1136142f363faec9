"""SSHSIG verification in-process against real `ssh-keygen -Y sign` output, and host keys over real SSH."""

from __future__ import annotations

import base64
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devkit.sshd import pool
from wid.service import attestation
from wid.service.attestation import HostKeyError, SignatureError, parse_sshsig, verify_sshsig

NS = "droplet-provisioning@wid"
MESSAGE = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
KEYS = [("ed25519", []), ("ecdsa", ["-b", "256"]), ("ecdsa", ["-b", "384"]), ("ecdsa", ["-b", "521"]),
        ("rsa", ["-b", "2048"])]


def keygen(tmp: Path, key_type: str, extra: list[str], name: str = "key") -> Path:
    path = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, *extra, "-N", "", "-f", str(path)], check=True)
    return path


def sign(key: Path, data: bytes, namespace: str = NS, *options: str) -> str:
    return subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", namespace, *options], input=data,
                          capture_output=True, check=True).stdout.decode()


def blob_of(key: Path) -> bytes:
    return base64.b64decode(Path(f"{key}.pub").read_text().split()[1])


def ssh_keygen_accepts(key: Path, signature: str, data: bytes, namespace: str, tmp: Path) -> bool:
    (tmp / "sig").write_text(signature)
    out = subprocess.run(["ssh-keygen", "-Y", "check-novalidate", "-n", namespace, "-s", str(tmp / "sig")],
                         input=data, capture_output=True)
    return out.returncode == 0


def armor(blob: bytes) -> str:
    text = base64.b64encode(blob).decode()
    return "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(text[i:i + 70] for i in range(0, len(text), 70)) + \
        "\n-----END SSH SIGNATURE-----\n"


def string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def envelope(public_key: bytes, namespace: str, hash_alg: str, signature: bytes, *, version: int = 1,
             reserved: bytes = b"") -> bytes:
    return (b"SSHSIG" + struct.pack(">I", version) + string(public_key) + string(namespace.encode())
            + string(reserved) + string(hash_alg.encode()) + string(signature))


@pytest.mark.parametrize(("key_type", "extra"), KEYS, ids=["ed25519", "p256", "p384", "p521", "rsa"])
def test_verifies_what_ssh_keygen_signs_and_nothing_else(tmp_path: Path, key_type: str, extra: list[str]) -> None:
    key = keygen(tmp_path, key_type, extra)
    text = sign(key, MESSAGE)
    sig = parse_sshsig(text)
    assert sig.public_key == blob_of(key) and sig.namespace == NS and sig.hash_algorithm == "sha512"
    verify_sshsig(sig, MESSAGE, NS)
    assert sig.fingerprint == subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True,
                                             text=True, check=True).stdout.split()[1]
    with pytest.raises(SignatureError, match="namespace"):
        verify_sshsig(sig, MESSAGE, "file")
    for other in (MESSAGE + b"\n", MESSAGE[:-1], b""):
        with pytest.raises(SignatureError, match="does not verify"):
            verify_sshsig(sig, other, NS)
        assert not ssh_keygen_accepts(key, text, other, NS, tmp_path)  # OpenSSH agrees
    assert ssh_keygen_accepts(key, text, MESSAGE, NS, tmp_path)


def test_sha256_signatures_and_key_substitution(tmp_path: Path) -> None:
    key = keygen(tmp_path, "ed25519", [])
    other = keygen(tmp_path, "ed25519", [], "other")
    sig = parse_sshsig(sign(key, MESSAGE, NS, "-O", "hashalg=sha256"))
    assert sig.hash_algorithm == "sha256"
    verify_sshsig(sig, MESSAGE, NS)
    # Claiming another public key in the envelope: the signature no longer verifies.
    swapped = parse_sshsig(armor(envelope(blob_of(other), NS, "sha256", sig.signature)))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_sshsig(swapped, MESSAGE, NS)
    # Another hash algorithm claimed than the one signed.
    relabeled = parse_sshsig(armor(envelope(sig.public_key, NS, "sha512", sig.signature)))
    with pytest.raises(SignatureError):
        verify_sshsig(relabeled, MESSAGE, NS)


def test_malformed_signatures_are_refused(tmp_path: Path) -> None:
    key = keygen(tmp_path, "ed25519", [])
    good = parse_sshsig(sign(key, MESSAGE))
    bad = {
        "not armored": "U1NIU0lH",
        "bad base64": "-----BEGIN SSH SIGNATURE-----\n!!!!\n-----END SSH SIGNATURE-----",
        "truncated": armor(envelope(good.public_key, NS, "sha512", good.signature)[:-5]),
        "trailing bytes": armor(envelope(good.public_key, NS, "sha512", good.signature) + b"x"),
        "version 2": armor(envelope(good.public_key, NS, "sha512", good.signature, version=2)),
        "reserved": armor(envelope(good.public_key, NS, "sha512", good.signature, reserved=b"x")),
        "not SSHSIG": armor(b"SSHSIX" + envelope(good.public_key, NS, "sha512", good.signature)[6:]),
        "huge": "-----BEGIN SSH SIGNATURE-----\n" + "A" * 20000 + "\n-----END SSH SIGNATURE-----",
    }
    for what, text in bad.items():
        with pytest.raises(SignatureError):
            parse_sshsig(text)
        assert what
    with pytest.raises(SignatureError, match="hash"):
        verify_sshsig(parse_sshsig(armor(envelope(good.public_key, NS, "md5", good.signature))), MESSAGE, NS)
    dsa_blob = string(b"ssh-dss") + string(b"\x00" * 20)
    with pytest.raises(SignatureError, match="cannot attest"):
        parse_sshsig(armor(envelope(dsa_blob, NS, "sha512", good.signature)))


def test_rsa_sha1_and_small_rsa_keys_are_refused(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    blob = base64.b64decode(private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1])
    import hashlib

    signed = (b"SSHSIG" + string(NS.encode()) + string(b"") + string(b"sha512")
              + string(hashlib.sha512(MESSAGE).digest()))
    sha1 = private.sign(signed, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - the attack under test
    with pytest.raises(SignatureError, match="not acceptable"):
        verify_sshsig(parse_sshsig(armor(envelope(blob, NS, "sha512", string(b"ssh-rsa") + string(sha1)))),
                      MESSAGE, NS)
    sha512 = private.sign(signed, padding.PKCS1v15(), hashes.SHA512())
    verify_sshsig(parse_sshsig(armor(envelope(blob, NS, "sha512", string(b"rsa-sha2-512") + string(sha512)))),
                  MESSAGE, NS)
    small = keygen(tmp_path, "rsa", ["-b", "1024"])
    with pytest.raises(SignatureError, match="too small"):
        verify_sshsig(parse_sshsig(sign(small, MESSAGE)), MESSAGE, NS)


@pytest.mark.parametrize(("key_type", "ssh_type"), [("ed25519", "ssh-ed25519"), ("ecdsa", "ecdsa-sha2-nistp256"),
                                                    ("rsa", "ssh-rsa")])
def test_fetch_host_key_negotiates_the_type_that_signed(key_type: str, ssh_type: str) -> None:
    server = pool().shared(0)
    blob = attestation.fetch_host_key(server.address, server.port, ssh_type, 5)
    assert blob == server.public_key(key_type)
    sig = parse_sshsig(sign(server.host_key(key_type), MESSAGE))
    assert sig.key_type == ssh_type and sig.public_key == blob


def test_fetch_host_key_failures() -> None:
    servers = pool()
    with pytest.raises(HostKeyError) as refused:
        attestation.fetch_host_key(servers.closed_address(), servers.port, "ssh-ed25519", 2)
    assert refused.value.kind == "unreachable"
    with pytest.raises(HostKeyError) as silent:
        attestation.fetch_host_key(servers.silent_address(), servers.port, "ssh-ed25519", 1)
    assert silent.value.kind == "timeout"
    server = servers.shared(0)
    with pytest.raises(HostKeyError) as missing:
        attestation.fetch_host_key(server.address, server.port, "ecdsa-sha2-nistp521", 3)
    assert missing.value.kind == "no_such_key_type"


def test_request_paths_do_not_import_ssh_or_yaml() -> None:
    code = ("import sys; import wid.web.handlers.oidc_prove, wid.web.handlers.droplet_create; "
            "bad = sorted(m for m in ('paramiko', 'yaml', 'requests', 'hcl2') if m in sys.modules); "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
