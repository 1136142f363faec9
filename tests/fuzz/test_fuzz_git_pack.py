"""Fuzz the pushed-pack pre-scan (wid.core.git_pack.scan) against a reference that inflates every entry fully:
only PackRejected escapes, and a pack the scan lets through never holds more than the limits allow,
whatever its headers, deltas and zlib streams claim. Seeds: a pack written by git (corpus/git/) and
packs built here from generated objects."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import NamedTuple

from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.budget import scaled
from tests.git_packs import entry_header, pack_of, varint
from wid.core.git_pack import PackRejected, scan

CORPUS = [path.read_bytes() for path in sorted((Path(__file__).parent / "corpus" / "git").glob("*.pack"))]
LIMITS = {"max_object_bytes": 600, "max_inflated_bytes": 2000, "max_objects": 12}
BIG = {"max_object_bytes": 1 << 20, "max_inflated_bytes": 1 << 22}


class Reference(NamedTuple):
    objects: int
    largest: int
    total: int


def reference(pack: bytes) -> Reference | None:
    """Inflate everything, no limits; None when the pack is not well formed."""
    if len(pack) < 32 or pack[:4] != b"PACK" or int.from_bytes(pack[4:8], "big") not in (2, 3):
        return None
    count, end, pos, sizes = int.from_bytes(pack[8:12], "big"), len(pack) - 20, 12, []
    for _ in range(count):
        if pos >= end:
            return None
        byte, kind, size, shift = pack[pos], (pack[pos] >> 4) & 7, pack[pos] & 0x0F, 4
        pos += 1
        while byte & 0x80:
            if pos >= end:
                return None
            byte = pack[pos]
            size, shift, pos = size | (byte & 0x7F) << shift, shift + 7, pos + 1
        if kind == 6:
            while pos < end and pack[pos] & 0x80:
                pos += 1
            pos += 1
        elif kind == 7:
            pos += 20
        elif kind not in (1, 2, 3, 4):
            return None
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(pack[pos:end])
        except zlib.error:
            return None
        if not inflater.eof or len(data) != size:
            return None
        pos = end - len(inflater.unused_data)
        if kind in (6, 7):
            target = _delta_target(data)
            if target is None:
                return None
            size = target
        sizes.append(size)
    return Reference(count, max(sizes, default=0), sum(sizes)) if pos == end else None


def _delta_target(delta: bytes) -> int | None:
    values, pos = [], 0
    for _ in range(2):
        value = shift = 0
        while True:
            if pos >= len(delta):
                return None
            byte = delta[pos]
            value, shift, pos = value | (byte & 0x7F) << shift, shift + 7, pos + 1
            if not byte & 0x80:
                break
        values.append(value)
    return values[1]


# -- generated packs --------------------------------------------------------------------------------------


@st.composite
def entries(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([1, 2, 3, 4, 6, 7, 0, 5]))
    if kind in (6, 7):
        data = varint(draw(st.integers(0, 1 << 12))) + varint(draw(st.integers(0, 1 << 12)))
        data += draw(st.binary(max_size=20))
    else:
        data = draw(st.one_of(st.binary(max_size=80), st.integers(0, 3000).map(lambda n: b"\0" * n)))
    declared = draw(st.one_of(st.just(len(data)), st.integers(0, 1 << 40)))
    head = entry_header(kind, declared)
    if kind == 6:
        head += varint(draw(st.integers(1, 500)))
    elif kind == 7:
        head += draw(st.binary(min_size=20, max_size=20))
    stream = zlib.compress(data, draw(st.integers(0, 9)))
    stream = stream[: draw(st.one_of(st.just(len(stream)), st.integers(0, len(stream))))]
    return head + stream + draw(st.sampled_from([b"", b"", b"\0", b"junk"]))


packs = st.builds(pack_of, st.lists(entries(), max_size=5), st.one_of(st.none(), st.integers(0, 2**32 - 1)),
                  st.sampled_from([2, 2, 3, 4]))


@st.composite
def mutated_packs(draw: st.DrawFn) -> bytes:
    pack = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(pack) - 1))
        pack[at] = draw(st.integers(0, 255))
    return bytes(pack)


@scaled(3)
@given(st.one_of(packs, mutated_packs(), st.binary(max_size=64)))
@example(pack_of([entry_header(3, 0) + zlib.compress(b"")]))
def test_a_pack_the_scan_passes_holds_no_more_than_the_limits(pack: bytes) -> None:
    try:
        summary = scan(pack, **LIMITS)
    except PackRejected as exc:
        assert str(exc)
        return
    truth = reference(pack)
    assert truth is not None, "the scan passed a pack that is not well formed"
    assert (summary.objects, summary.inflated_bytes) == (truth.objects, truth.total)
    assert truth.largest <= LIMITS["max_object_bytes"] and truth.total <= LIMITS["max_inflated_bytes"]


@scaled(2)
@given(packs)
def test_a_well_formed_pack_within_the_limits_passes(pack: bytes) -> None:
    truth = reference(pack)
    if truth is None or truth.largest > BIG["max_object_bytes"] or truth.total > BIG["max_inflated_bytes"]:
        return
    summary = scan(pack, **BIG)
    assert (summary.objects, summary.inflated_bytes) == (truth.objects, truth.total)


def test_the_corpus_passes() -> None:
    for pack in CORPUS:
        truth = reference(pack)
        assert truth is not None
        assert scan(pack, **BIG).inflated_bytes == truth.total
