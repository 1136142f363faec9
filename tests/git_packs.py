"""Raw git packs built byte by byte, for the tests of the pack pre-scan (wid.core.git_pack):
tests/test_git_pack.py and tests/fuzz/test_fuzz_git_pack.py. Packs that git itself would not write."""

from __future__ import annotations

import hashlib


def varint(value: int) -> bytes:
    """A delta's size: 7 bits a byte, least significant first."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def entry_header(kind: int, size: int) -> bytes:
    """An object entry's header: its type and its inflated size."""
    out = bytearray([(kind << 4) | (size & 0x0F)])
    size >>= 4
    while size:
        out[-1] |= 0x80
        out.append(size & 0x7F)
        size >>= 7
    return bytes(out)


def pack_of(entries: list[bytes], count: int | None = None, version: int = 2) -> bytes:
    """A pack of these entries; count: the object count its header claims (the true one by default)."""
    body = b"PACK" + version.to_bytes(4, "big") + (len(entries) if count is None else count).to_bytes(4, "big")
    body += b"".join(entries)
    return body + hashlib.sha1(body).digest()  # noqa: S324 - git's pack trailer
