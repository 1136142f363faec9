"""A cheap look at a pushed pack before dulwich inflates it: refuse what would exhaust memory.

A pack is small on the wire but its objects are zlib streams and deltas: a few megabytes can claim
gigabytes once inflated (a "zip bomb"), and dulwich inflates each object fully in memory. This scan
reads every entry header, inflates each entry with a bound (the size its header declares, which
dulwich also enforces) and adds up what the objects will occupy, so a push is refused with a clear
message before anything large is allocated. It checks structure only; dulwich still verifies
checksums and object contents when it ingests the pack.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

_OBJ_TYPES = {1: "commit", 2: "tree", 3: "blob", 4: "tag"}
_OFS_DELTA = 6
_REF_DELTA = 7
_CHUNK = 64 * 1024
_TRAILER = 20  # SHA-1 of everything before it


class PackRejected(Exception):
    """The pack is malformed or larger than the limits; the message is shown to the pusher."""


@dataclass(frozen=True)
class PackSummary:
    objects: int
    inflated_bytes: int  # what the objects occupy once inflated (deltas: their declared target size)


def _varint_size(data: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    """Entry header: (type, size, next position)."""
    if pos >= len(data):
        raise PackRejected("pack ends inside an object header")
    byte = data[pos]
    kind = (byte >> 4) & 7
    size = byte & 0x0F
    shift = 4
    pos += 1
    while byte & 0x80:
        if pos >= len(data) or shift > 60:
            raise PackRejected("pack has a malformed object header")
        byte = data[pos]
        size |= (byte & 0x7F) << shift
        shift += 7
        pos += 1
    return kind, size, pos


def _delta_sizes(head: bytes) -> tuple[int, int]:
    """The base and target sizes at the start of a delta."""
    sizes = []
    pos = 0
    for _ in range(2):
        value = shift = 0
        while True:
            if pos >= len(head) or shift > 60:
                raise PackRejected("pack has a delta with a malformed header")
            byte = head[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        sizes.append(value)
    return sizes[0], sizes[1]


def _inflate_bounded(data: memoryview, pos: int, end: int, declared: int) -> tuple[bytes, int]:
    """Inflate one entry without keeping it: (its first 32 bytes, position after its zlib stream)."""
    inflater = zlib.decompressobj()
    produced = 0
    head = b""
    cursor = pos
    pending = b""
    while not inflater.eof:
        if pending:
            feed = pending
        else:
            if cursor >= end:
                raise PackRejected("pack ends inside an object's compressed data")
            feed = bytes(data[cursor:min(cursor + _CHUNK, end)])
            cursor += len(feed)
        try:
            out = inflater.decompress(feed, _CHUNK)
        except zlib.error as exc:
            raise PackRejected(f"pack has corrupt compressed data: {exc}") from None
        pending = inflater.unconsumed_tail
        produced += len(out)
        if len(head) < 32:
            head += out[:32 - len(head)]
        if produced > declared:
            raise PackRejected("pack has an object that inflates beyond the size its header declares")
        if not out and not pending and not inflater.eof and cursor >= end:
            raise PackRejected("pack ends inside an object's compressed data")
    if produced != declared:
        raise PackRejected("pack has an object whose size differs from its header")
    return head, cursor - len(inflater.unused_data)


def scan(pack: bytes, *, max_object_bytes: int, max_inflated_bytes: int, max_objects: int = 200_000) -> PackSummary:
    """Check a whole pack (header, entries, trailer) against the limits; PackRejected says why not."""
    data = memoryview(pack)
    if len(data) < 12 + _TRAILER:
        raise PackRejected("pack is truncated (shorter than a pack header and trailer)")
    signature, version, count = struct.unpack(">4sLL", data[:12])
    if signature != b"PACK":
        raise PackRejected("data after the ref updates is not a git pack")
    if version not in (2, 3):
        raise PackRejected(f"pack version {version} is not supported")
    if count > max_objects:
        raise PackRejected(f"pack has {count} objects; at most {max_objects} are accepted")
    end = len(data) - _TRAILER
    pos = 12
    total = 0
    for _ in range(count):
        kind, size, pos = _varint_size(data, pos)
        if kind == _OFS_DELTA:
            byte = 0x80
            while byte & 0x80:
                if pos >= end:
                    raise PackRejected("pack ends inside a delta base offset")
                byte = data[pos]
                pos += 1
        elif kind == _REF_DELTA:
            pos += 20
        elif kind not in _OBJ_TYPES:
            raise PackRejected(f"pack has an object of unknown type {kind}")
        if size > max_object_bytes and kind in _OBJ_TYPES:
            raise PackRejected(f"pack has a {_OBJ_TYPES[kind]} of {size} bytes; objects are limited to "
                               f"{max_object_bytes} bytes")
        if size > max_inflated_bytes:
            raise PackRejected(f"pack has a delta of {size} bytes; the limit is {max_inflated_bytes} bytes")
        head, pos = _inflate_bounded(data, pos, end, size)
        if kind in (_OFS_DELTA, _REF_DELTA):
            _, target = _delta_sizes(head)
            if target > max_object_bytes:
                raise PackRejected(f"pack has a delta producing an object of {target} bytes; objects are "
                                   f"limited to {max_object_bytes} bytes")
            size = target
        total += size
        if total > max_inflated_bytes:
            raise PackRejected(f"pack inflates to more than {max_inflated_bytes} bytes, the limit for one push")
    if pos != end:
        raise PackRejected("pack has data after its last object")
    return PackSummary(count, total)
