"""The pack pre-scan (wid.git_pack): real packs pass, packs that would exhaust memory or lie do not."""

from __future__ import annotations

import zlib
from io import BytesIO

import pytest
from dulwich.object_format import DEFAULT_OBJECT_FORMAT
from dulwich.objects import Blob, Commit, Tree
from dulwich.pack import write_pack_objects

from tests.git_packs import entry_header, pack_of, varint
from wid.core.git_pack import PackRejected, scan

MiB = 1024 * 1024
LIMITS = {"max_object_bytes": 4 * MiB, "max_inflated_bytes": 16 * MiB}


def real_pack() -> tuple[bytes, int]:
    first = Blob.from_string(b"path \"/v2/x\" {\n  capabilities = [\"read\"]\n}\n" * 50)
    second = Blob.from_string(first.data + b"# one more line\n")  # dulwich deltifies it against the first
    tree = Tree()
    tree.add(b"a.hcl", 0o100644, first.id)
    tree.add(b"b.hcl", 0o100644, second.id)
    commit = Commit()
    commit.tree = tree.id
    commit.author = commit.committer = b"T <t@example.com>"
    commit.author_time = commit.commit_time = 1700000000
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = b"test\n"
    out = BytesIO()
    objects = [(first, None), (second, None), (tree, None), (commit, None)]
    write_pack_objects(out, objects, DEFAULT_OBJECT_FORMAT, deltify=True)
    return out.getvalue(), len(objects)


def test_a_pack_written_by_dulwich_passes() -> None:
    pack, count = real_pack()
    summary = scan(pack, **LIMITS)
    assert summary.objects == count
    assert summary.inflated_bytes > 4000


def test_an_object_claiming_more_than_the_limit_is_refused_before_inflating() -> None:
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(b"\0" * MiB) for _ in range(8)) + compressor.flush()
    with pytest.raises(PackRejected, match="objects are limited to"):
        scan(pack_of([entry_header(3, 8 * MiB) + data]), **LIMITS)


def test_an_object_inflating_beyond_its_declared_size_is_refused() -> None:
    bomb = zlib.compress(b"\0" * MiB, 9)
    with pytest.raises(PackRejected, match="inflates beyond the size its header declares"):
        scan(pack_of([entry_header(3, 10) + bomb]), **LIMITS)


def test_a_delta_producing_a_huge_object_is_refused() -> None:
    delta = varint(10) + varint(512 * MiB) + b"\x0a0123456789"
    entry = entry_header(7, len(delta)) + b"\x11" * 20 + zlib.compress(delta)
    with pytest.raises(PackRejected, match="delta producing an object of"):
        scan(pack_of([entry]), **LIMITS)


def test_many_objects_adding_up_beyond_the_push_limit_are_refused() -> None:
    blob = b"x" * MiB
    entry = entry_header(3, len(blob)) + zlib.compress(blob)
    with pytest.raises(PackRejected, match="inflates to more than"):
        scan(pack_of([entry] * 17), **LIMITS)


@pytest.mark.parametrize(("pack", "message"), [
    (b"not a pack at all, just some bytes here", "not a git pack"),
    (b"PACK\x00\x00\x00\x02", "truncated"),
    (pack_of([entry_header(3, 5) + zlib.compress(b"hello")])[:-25] + b"\0" * 20, "ends inside"),
    (pack_of([entry_header(3, 5) + zlib.compress(b"hello") + b"extra"]), "data after its last object"),
    (pack_of([entry_header(3, 5) + b"\x78\x9c garbage that is not deflate"]), "corrupt compressed data"),
    (pack_of([entry_header(5, 5) + zlib.compress(b"hello")]), "unknown type 5"),
    (b"PACK" + (9).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"\0" * 20, "version 9"),
], ids=["not-a-pack", "truncated-header", "truncated-object", "trailing-data", "corrupt-zlib", "unknown-type",
        "unknown-version"])
def test_malformed_packs_are_refused(pack: bytes, message: str) -> None:
    with pytest.raises(PackRejected, match=message):
        scan(pack, **LIMITS)
