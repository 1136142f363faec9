"""The repo store and the push transaction (wid.rbac_repo) in-process, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from dulwich.objects import Blob, Commit, ShaFile, Tree

from wid.core.rbac.compiler import compile_tree
from wid.store import audit_queries, rbac_repo, storage
from wid.store import rbac as rbac_store
from wid.store.rbac_repo import MAIN, SCHEMA, ZERO, DbObjectStore, Limits, Pusher, RepoId

TEAM = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
REPO = RepoId("DigitalOcean", TEAM)
LIMITS = Limits(push_bytes=1 << 20, repo_bytes=1 << 20, object_bytes=1 << 20)
PUSHER = Pusher("jwt", sub=f"actx:{TEAM}:admin", iss="https://wid.example.test", jti="j1")
ROLE = b'role "r" {\n  aud = "api://DigitalOcean?actx={actx}"\n  sub = "actx:{actx}:role:r"\n  policies = ["p"]\n}\n'


def commit_of(files: dict[str, bytes], parents: list[bytes] | None = None, message: str = "c") -> list[ShaFile]:
    """Objects of a commit with `files` at the top of policies/ and roles/ (no nesting beyond one level)."""
    objects: list[ShaFile] = []
    folders: dict[str, Tree] = {}
    for path, data in files.items():
        folder, _, name = path.rpartition("/")
        blob = Blob.from_string(data)
        objects.append(blob)
        folders.setdefault(folder, Tree()).add(name.encode(), 0o100644, blob.id)
    root = Tree()
    for folder, tree in folders.items():
        objects.append(tree)
        root.add(folder.encode(), 0o040000, tree.id)
    objects.append(root)
    commit = Commit()
    commit.tree = root.id
    commit.parents = list(parents or [])  # type: ignore[arg-type]
    commit.author = commit.committer = b"T <t@example.com>"
    commit.author_time = commit.commit_time = 1700000000
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = message.encode()
    objects.append(commit)
    return objects


def policy(path: str) -> bytes:
    return f'path "{path}" {{\n  capabilities = ["read"]\n}}\n'.encode()


def received(objects: list[ShaFile]) -> DbObjectStore:
    store = DbObjectStore(REPO)
    for obj in objects:
        store.add_object(obj)
    return store


def push(objects: list[ShaFile], old: str) -> rbac_repo.PushResult:
    store = received(objects)
    new = objects[-1].id
    needed = rbac_repo.closure(store, new)
    commit = store[new]
    assert isinstance(commit, Commit)
    files, _ = rbac_repo.tree_files(store, commit.tree)
    compiled = compile_tree(files, api=REPO.api, actx=REPO.actx, issuer="https://wid.example.test")
    return rbac_repo.apply_push(REPO, old=old, new=new.decode(), objects=needed, compiled=compiled,
                                pusher=PUSHER, limits=LIMITS, summary={})


def test_push_stores_main_schema_and_configuration_together(backend: str) -> None:
    first = commit_of({"roles/r.hcl": ROLE, "policies/p.hcl": policy("/v2/a")})
    result = push(first, ZERO)
    assert result.accepted
    main = first[-1].id.decode()
    refs = rbac_repo.read_refs(REPO)
    assert refs[MAIN] == main and refs[SCHEMA] == result.schema_commit
    assert rbac_store.main_commit(REPO.api, REPO.actx) == main

    # Everything reads back from the database alone, in a fresh store.
    store = DbObjectStore(REPO)
    schema = store[refs[SCHEMA].encode()]
    assert isinstance(schema, Commit)
    assert schema.message.decode().startswith(f"rbac.json compiled from main {main}")
    tree = store[schema.tree]
    assert isinstance(tree, Tree)
    rbac_json = json.loads(store[tree[b"rbac.json"][1]].as_raw_string())
    assert rbac_json["roles"]["r"]["sub"] == f"actx:{TEAM}:role:r"
    assert store.prefetch_all() == len(first) + 3

    second = commit_of({"roles/r.hcl": ROLE, "policies/p.hcl": policy("/v2/b")}, [first[-1].id])
    assert push(second, main).accepted
    schema2 = DbObjectStore(REPO)[rbac_repo.read_refs(REPO)[SCHEMA].encode()]
    assert isinstance(schema2, Commit) and schema2.parents == [schema.id]
    pushes = audit_queries.entries(actx=TEAM, event="rbac_push")
    assert [e.detail["new"] for e in pushes] == [main, second[-1].id.decode()]


def test_a_push_from_a_stale_main_is_refused_and_changes_nothing(backend: str) -> None:
    base = commit_of({"roles/r.hcl": ROLE, "policies/p.hcl": policy("/v2/a")})
    assert push(base, ZERO).accepted
    winner = commit_of({"roles/r.hcl": ROLE, "policies/p.hcl": policy("/v2/w")}, [base[-1].id], "w")
    loser = commit_of({"roles/r.hcl": ROLE, "policies/p.hcl": policy("/v2/l")}, [base[-1].id], "l")
    assert push(winner, base[-1].id.decode()).accepted
    refused = push(loser, base[-1].id.decode())
    assert not refused.accepted and refused.reason.startswith(f"main moved to {winner[-1].id.decode()[:12]}")
    assert rbac_repo.read_refs(REPO)[MAIN] == winner[-1].id.decode() == rbac_store.main_commit(REPO.api, REPO.actx)
    assert loser[-1].id not in DbObjectStore(REPO).stored([loser[-1].id])
    assert [e.decision for e in audit_queries.entries(actx=TEAM, event="rbac_push")] == ["allow", "allow", "deny"]


def test_concurrent_pushes_from_one_main_have_exactly_one_winner(backend: str) -> None:
    base = commit_of({"roles/r.hcl": ROLE, "policies/p.hcl": policy("/v2/a")})
    assert push(base, ZERO).accepted
    old = base[-1].id.decode()
    candidates = [commit_of({"roles/r.hcl": ROLE, "policies/p.hcl": policy(f"/v2/{i}")}, [base[-1].id], str(i))
                  for i in range(10)]
    results: dict[int, Any] = {}
    gate = threading.Barrier(len(candidates))

    def run(i: int) -> None:
        gate.wait()
        try:
            results[i] = push(candidates[i], old)
        finally:
            storage.database().close()  # this thread's connection

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(candidates))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [i for i, result in results.items() if result.accepted]
    assert len(results) == 10 and len(winners) == 1
    main = candidates[winners[0]][-1].id.decode()
    assert rbac_repo.read_refs(REPO)[MAIN] == main == rbac_store.main_commit(REPO.api, REPO.actx)
    compiled = rbac_store.compiled(REPO.api, REPO.actx)
    assert compiled is not None
    assert compiled.authorize({"iss": "https://wid.example.test", "aud": REPO.audience, "sub": f"actx:{TEAM}:role:r"},
                              "https://wid.example.test", "GET", f"/v2/{winners[0]}", {}).allowed


def test_missing_objects_and_unreachable_extras(backend: str) -> None:
    base = commit_of({"roles/r.hcl": ROLE, "policies/p.hcl": policy("/v2/a")})
    child = commit_of({"roles/r.hcl": ROLE, "policies/p.hcl": policy("/v2/b")}, [base[-1].id])
    # The parent is neither sent nor stored: refused, whatever else the pack holds.
    with pytest.raises(rbac_repo.MissingObjects, match="lacks 1 object"):
        rbac_repo.closure(received(child), child[-1].id)
    assert push(base, ZERO).accepted
    stray = Blob.from_string(b"not reachable from main")
    store = received([*child, stray])
    needed = rbac_repo.closure(store, child[-1].id)
    assert stray.id not in {obj.id for obj in needed}
    assert base[-1].id not in {obj.id for obj in needed}  # stored already: not sent again


def test_the_repo_size_limit_holds(backend: str) -> None:
    big = commit_of({"roles/r.hcl": ROLE, "policies/p.hcl": policy("/v2/a"), "assets/big.bin": b"x" * (1 << 20)})
    result = push(big, ZERO)
    assert not result.accepted and "WID_GIT_MAX_REPO_BYTES" in result.reason
    assert rbac_repo.read_refs(REPO) == {}


def test_the_git_handler_imports_no_hcl_parser() -> None:
    """hcl2 (and lark) load only when a push is compiled, never to serve a fetch or check credentials."""
    import subprocess
    import sys

    code = ("import sys, wid.web.handlers.git, wid.service.git_auth, wid.service.authz, "
            "wid.upstreams.digitalocean.api; "
            "print(sorted(m for m in ('hcl2', 'lark', 'requests', 'yaml', 'jsonschema') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"
