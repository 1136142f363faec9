"""SSH host key attestation: SSHSIG signatures checked in-process, host keys fetched over SSH.

A Droplet proves what it is by signing with its SSHD host key (`ssh-keygen -Y sign -n <namespace>`).
`verify_sshsig` checks such a signature with `cryptography` alone (format: OpenSSH PROTOCOL.sshsig):
the exact message, the exact namespace, and returns the public key that signed. `fetch_host_key`
then connects to the Droplet's public IPv4 over SSH and returns the host key its sshd proves
possession of during the key exchange, negotiating exactly the key type that signed.

paramiko is imported inside `fetch_host_key` only: its import costs ~0.1 s, and every cheaper check
(token, nonce, signature) runs before any connection is attempted.
"""

import base64
import binascii
import hashlib
import socket
import struct
import time
from _thread import allocate_lock  # threading.Lock itself, without `threading`'s import
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"
MAGIC = b"SSHSIG"
MAX_SIGNATURE_TEXT = 16 * 1024
# Host key types a Droplet can sign with, and the algorithms their signatures may use. DSA and
# security-key (sk-*) types are never host keys worth trusting; RSA signatures with SHA-1 are refused.
_SIGNATURE_ALGORITHMS = {
    "ssh-ed25519": {"ssh-ed25519"},
    "ecdsa-sha2-nistp256": {"ecdsa-sha2-nistp256"},
    "ecdsa-sha2-nistp384": {"ecdsa-sha2-nistp384"},
    "ecdsa-sha2-nistp521": {"ecdsa-sha2-nistp521"},
    "ssh-rsa": {"rsa-sha2-256", "rsa-sha2-512"},
}
_ECDSA_HASH: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "ecdsa-sha2-nistp256": hashes.SHA256, "ecdsa-sha2-nistp384": hashes.SHA384, "ecdsa-sha2-nistp521": hashes.SHA512}
_MESSAGE_HASH = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
# What the SSH client offers for each signing key type: only that type, so the server must present
# (and prove possession of) its key of exactly this type.
HOST_KEY_ALGORITHMS = {
    "ssh-ed25519": ["ssh-ed25519"],
    "ecdsa-sha2-nistp256": ["ecdsa-sha2-nistp256"],
    "ecdsa-sha2-nistp384": ["ecdsa-sha2-nistp384"],
    "ecdsa-sha2-nistp521": ["ecdsa-sha2-nistp521"],
    "ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256"],
}


class SignatureError(Exception):
    """The signature is malformed, not over this message, not in this namespace, or does not verify."""


class HostKeyError(Exception):
    """The host key could not be fetched. `kind`: 'timeout', 'unreachable' or 'no_such_key_type'."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class SshSignature(NamedTuple):
    public_key: bytes      # the signer's public key, SSH wire format
    key_type: str          # e.g. ssh-ed25519
    namespace: str
    hash_algorithm: str
    signature: bytes       # SSH signature blob: string algorithm, string signature

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)


def fingerprint(public_key: bytes) -> str:
    """OpenSSH's SHA256 fingerprint (as `ssh-keygen -l` prints it)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(public_key).digest()).decode().rstrip("=")


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise SignatureError("signature is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self.raw(4))[0]
        return value

    def string(self) -> bytes:
        return self.raw(self.uint32())

    def text(self) -> str:
        try:
            return self.string().decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("signature holds a non-ASCII name") from None

    def mpint(self) -> int:
        data = self.string()
        if data and data[0] & 0x80:
            raise SignatureError("signature holds a negative number")
        return int.from_bytes(data, "big")

    def done(self) -> None:
        if self.pos != len(self.data):
            raise SignatureError("signature has trailing bytes")


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def parse_sshsig(text: str) -> SshSignature:
    """Parse an armored SSHSIG (what `ssh-keygen -Y sign` writes)."""
    if not isinstance(text, str) or len(text) > MAX_SIGNATURE_TEXT:
        raise SignatureError("signature must be the armored text `ssh-keygen -Y sign` writes")
    body = text.strip()
    if not body.startswith(ARMOR_BEGIN) or not body.endswith(ARMOR_END):
        raise SignatureError(f"signature must start with {ARMOR_BEGIN} and end with {ARMOR_END}")
    encoded = "".join(body[len(ARMOR_BEGIN):-len(ARMOR_END)].split())
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not valid base64") from None
    reader = _Reader(blob)
    if reader.raw(6) != MAGIC:
        raise SignatureError("signature does not start with the SSHSIG preamble")
    if reader.uint32() != 1:
        raise SignatureError("unsupported SSHSIG version")
    public_key = reader.string()
    namespace_raw = reader.string()
    reserved = reader.string()
    hash_algorithm = reader.text()
    signature = reader.string()
    reader.done()
    if reserved:
        raise SignatureError("SSHSIG reserved field must be empty")
    try:
        namespace = namespace_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureError("signature namespace is not UTF-8") from None
    key_reader = _Reader(public_key)
    key_type = key_reader.text()
    if key_type not in _SIGNATURE_ALGORITHMS:
        raise SignatureError(f"key type {key_type!r} cannot attest a Droplet "
                             f"(use one of {', '.join(sorted(_SIGNATURE_ALGORITHMS))})")
    return SshSignature(public_key, key_type, namespace, hash_algorithm, signature)


def load_public_key(blob: bytes) -> tuple[str, object]:
    """(key type, cryptography public key) of an SSH wire-format public key."""
    key_type = _Reader(blob).text()
    if key_type not in _SIGNATURE_ALGORITHMS:
        raise SignatureError(f"unsupported key type {key_type!r}")
    if key_type.startswith("ecdsa-"):
        reader = _Reader(blob)
        reader.text(), reader.text()  # the key type, the curve name
        if reader.string()[:1] != b"\x04":  # RFC 5656 3.1: the point is uncompressed (SEC1 0x04)
            raise SignatureError(f"malformed {key_type} public key: the EC point must be in uncompressed form")
    # Imported here, not at the top: `serialization` imports `dataclasses` and `inspect`, which the
    # endpoints of lib/wid/web/handlers/oidc_prove.py that verify no signature do not need.
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_ssh_public_key(key_type.encode() + b" " + base64.b64encode(blob))
    except (ValueError, TypeError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"malformed {key_type} public key: {exc}") from None
    return key_type, key


def verify_sshsig(sig: SshSignature, message: bytes, namespace: str) -> None:
    """Raise SignatureError unless `sig` is a signature by `sig.public_key` over exactly `message` in `namespace`."""
    if sig.namespace != namespace:
        raise SignatureError(f"signature is for namespace {sig.namespace!r}, expected {namespace!r}")
    digest = _MESSAGE_HASH.get(sig.hash_algorithm)
    if digest is None:
        raise SignatureError(f"unsupported SSHSIG hash algorithm {sig.hash_algorithm!r} (use sha256 or sha512)")
    signed = (MAGIC + _string(namespace.encode()) + _string(b"") + _string(sig.hash_algorithm.encode())
              + _string(digest(message).digest()))
    outer = _Reader(sig.signature)
    algorithm = outer.text()
    raw = outer.string()
    outer.done()
    key_type, key = load_public_key(sig.public_key)
    if algorithm not in _SIGNATURE_ALGORITHMS[key_type]:
        raise SignatureError(f"signature algorithm {algorithm!r} is not acceptable for a {key_type} key")
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            if len(raw) != 64:
                raise SignatureError("Ed25519 signature must be 64 bytes")
            key.verify(raw, signed)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            inner = _Reader(raw)
            r, s = inner.mpint(), inner.mpint()
            inner.done()
            key.verify(utils.encode_dss_signature(r, s), signed, ec.ECDSA(_ECDSA_HASH[key_type]()))
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise SignatureError(f"RSA host key of {key.key_size} bits is too small (at least 2048)")
            chosen = hashes.SHA512() if algorithm == "rsa-sha2-512" else hashes.SHA256()
            key.verify(raw, signed, padding.PKCS1v15(), chosen)
        else:  # pragma: no cover - load_public_key only returns the types above
            raise SignatureError(f"unsupported key type {key_type}")
    except InvalidSignature:
        raise SignatureError("signature does not verify: it was not made over this message with this key "
                             "and namespace") from None


# -- fetching a host key over SSH ------------------------------------------------------------------

_paramiko_lock = allocate_lock()


def _quiet_paramiko() -> None:
    import logging

    logger = logging.getLogger("paramiko")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    logger.propagate = False


def fetch_host_key(host: str, port: int, key_type: str, timeout: float) -> bytes:
    """The host key of type `key_type` that the SSH server at host:port proves it holds (wire format).

    The key exchange makes the server sign the session's exchange hash with that key, so a server
    that merely replays someone else's public key fails here. Raises HostKeyError.
    """
    algorithms = HOST_KEY_ALGORITHMS.get(key_type)
    if algorithms is None:
        raise HostKeyError("no_such_key_type", f"cannot negotiate host key type {key_type!r}")
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise HostKeyError("timeout", f"SSH port {host}:{port} did not answer within {timeout:g}s") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise HostKeyError("unreachable", f"cannot connect to SSH at {host}:{port}: {reason}") from None

    import paramiko  # only now: every cheaper check has passed

    with _paramiko_lock:
        _quiet_paramiko()
    transport = paramiko.Transport(sock)
    try:
        remaining = max(0.5, deadline - time.monotonic())
        transport.banner_timeout = remaining
        transport.handshake_timeout = remaining
        transport.get_security_options().key_types = algorithms
        try:
            transport.start_client(timeout=remaining)
        except paramiko.ssh_exception.IncompatiblePeer:
            raise HostKeyError("no_such_key_type",
                               f"the SSH server at {host}:{port} offers no {key_type} host key") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            text = str(exc)
            if "timed out" in text.lower() or isinstance(exc, TimeoutError) or "banner" in text.lower():
                raise HostKeyError("timeout", f"SSH at {host}:{port} did not complete the handshake within "
                                              f"{timeout:g}s") from None
            raise HostKeyError("unreachable", f"SSH handshake with {host}:{port} failed: "
                                              f"{text or type(exc).__name__}") from None
        if getattr(transport, "host_key", None) is None:  # start_client returns quietly on its timeout
            raise HostKeyError("timeout", f"SSH at {host}:{port} did not complete the handshake within {timeout:g}s")
        key = transport.get_remote_server_key()
        blob: bytes = key.asbytes()
    except paramiko.SSHException as exc:
        raise HostKeyError("timeout", f"SSH at {host}:{port} did not complete the handshake: {exc}") from None
    finally:
        transport.close()
    presented_type = _Reader(blob).text()
    if presented_type != key_type:
        raise HostKeyError("no_such_key_type", f"the SSH server at {host}:{port} presented a {presented_type} "
                                               f"host key, not {key_type}")
    return blob
