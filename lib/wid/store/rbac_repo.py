"""RBAC repos in the database: git objects, refs, and the one transaction that accepts a push.

A repo is identified by its context (API, actx). Each git object is one row (zlib-compressed raw
content, content-addressed within its repo) and each ref is one row, so a restart, a second replica
or PostgreSQL all see the same repo; nothing is kept on local disk.

Invariants:
- Every stored object's closure is stored: a push stores only the objects reachable from its new
  `main` commit, after checking that everything they reference is either in the push or already
  stored. So any stored commit can be cloned in full, and a rejected push stores nothing.
- `refs/heads/main`, `refs/heads/schema` (the compiled rbac.json, committed by the server) and the
  configuration used for authorization (wid.store.rbac) change together in one transaction, after a
  compare-and-swap on `main` under the repo's lock. Concurrent pushes therefore end with one winner
  per value of `main`; the others are told that `main` moved. A crash before the commit leaves all
  three as they were.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from dulwich.object_store import MemoryObjectStore
from dulwich.objects import S_ISGITLINK, Blob, Commit, ObjectID, ShaFile, Tag, Tree
from dulwich.repo import MemoryRepo

from wid import config
from wid.store import audit, storage
from wid.store import rbac as rbac_store

MAIN = "refs/heads/main"
SCHEMA = "refs/heads/schema"
ZERO = "0" * 40
SCHEMA_FILE = "rbac.json"
_SYMLINK_MODE = 0o120000
_MAX_TREE_DEPTH = 32
_MAX_FILES = 10_000
_IN_BATCH = 400


@dataclass(frozen=True)
class Limits:
    """Size limits of pushes and repos (settings WID_GIT_MAX_PUSH_BYTES, WID_GIT_MAX_REPO_BYTES)."""

    push_bytes: int  # one push's pack as sent (compressed)
    repo_bytes: int  # all of a repo's objects, inflated; also bounds one push once inflated
    object_bytes: int  # one object, inflated

    @classmethod
    def configured(cls) -> Limits:
        s = config.settings()
        return cls(push_bytes=s.git_max_push_bytes, repo_bytes=s.git_max_repo_bytes,
                   object_bytes=min(s.git_max_repo_bytes, 16 * 1024 * 1024))


@dataclass(frozen=True)
class RepoId:
    api: str
    actx: str

    @property
    def audience(self) -> str:
        return f"api://{self.api}?actx={self.actx}"

    @property
    def path(self) -> str:
        return f"/_rbac/{self.api}/{self.actx}"

    @property
    def lock_name(self) -> str:
        return f"wid-rbac-repo:{self.api}:{self.actx}"


class MissingObjects(Exception):
    """The push references objects that are neither in its pack nor stored."""


class RepoError(Exception):
    """The pushed tree cannot be read as an RBAC repo (too deep, too many files)."""


def _hex(sha: bytes | str) -> bytes:
    return sha.encode("ascii") if isinstance(sha, str) else sha


class DbObjectStore(MemoryObjectStore):
    """dulwich's in-memory store, filled on demand from the repo's rows; received objects stay apart.

    Reads go through short read transactions of their own, so never call it inside a write
    transaction on the same connection (the push transaction only writes what was read before).
    """

    def __init__(self, repo: RepoId, db: storage.Database | None = None) -> None:
        super().__init__()
        self.repo = repo
        self.db = db or storage.database()
        self.incoming: dict[bytes, ShaFile] = {}
        self._absent: set[bytes] = set()

    # -- reading ---------------------------------------------------------------------------------

    def _decode(self, sha: bytes, type_num: int, data: bytes) -> ShaFile:
        raw = zlib.decompress(bytes(data))
        obj = ShaFile.from_raw_string(type_num, raw)
        if obj.id != sha:
            raise storage.DatabaseUnavailable(f"stored object {sha.decode()} of {self.repo.audience} is corrupt")
        return obj

    def _fetch(self, sha: bytes) -> ShaFile | None:
        obj = self._data.get(cast(ObjectID, sha))
        if obj is not None or sha in self._absent:
            return obj
        with self.db.transaction(write=False) as tx:
            row = tx.one("SELECT type, data FROM rbac_repo_objects WHERE api = ? AND actx = ? AND sha = ?",
                         (self.repo.api, self.repo.actx, sha.decode("ascii")))
        if row is None:
            self._absent.add(sha)
            return None
        obj = self._decode(sha, int(row[0]), row[1])
        self._data[cast(ObjectID, sha)] = obj
        return obj

    def prefetch_all(self) -> int:
        """Load every stored object of the repo in one query (clone and fetch walk most of them)."""
        with self.db.transaction(write=False) as tx:
            rows = tx.execute("SELECT sha, type, data FROM rbac_repo_objects WHERE api = ? AND actx = ?",
                              (self.repo.api, self.repo.actx))
        for sha_text, type_num, data in rows:
            sha = _hex(sha_text)
            if sha not in self._data:
                self._data[cast(ObjectID, sha)] = self._decode(sha, int(type_num), data)
        return len(rows)

    def stored(self, shas: Iterable[bytes]) -> set[bytes]:
        """Which of `shas` are stored rows of this repo (one query per few hundred)."""
        wanted = sorted({_hex(s) for s in shas})
        found: set[bytes] = set()
        with self.db.transaction(write=False) as tx:
            for start in range(0, len(wanted), _IN_BATCH):
                batch = wanted[start:start + _IN_BATCH]
                marks = ", ".join("?" for _ in batch)
                rows = tx.execute(f"SELECT sha FROM rbac_repo_objects WHERE api = ? AND actx = ? "  # noqa: S608
                                  f"AND sha IN ({marks})",
                                  (self.repo.api, self.repo.actx, *(s.decode("ascii") for s in batch)))
                found.update(_hex(row[0]) for row in rows)
        return found

    def contains_loose(self, sha: ObjectID | bytes) -> bool:
        return self._fetch(self._to_hexsha(cast(ObjectID, sha))) is not None

    def __getitem__(self, name: ObjectID | bytes) -> ShaFile:
        sha = self._to_hexsha(cast(ObjectID, name))
        obj = self._fetch(sha)
        if obj is None:
            raise KeyError(sha)
        return obj

    def get_raw(self, name: ObjectID | bytes) -> tuple[int, bytes]:
        obj = self[name]
        return obj.type_num, obj.as_raw_string()

    def __iter__(self) -> Iterator[ObjectID]:
        with self.db.transaction(write=False) as tx:
            rows = tx.execute("SELECT sha FROM rbac_repo_objects WHERE api = ? AND actx = ?",
                              (self.repo.api, self.repo.actx))
        seen = {_hex(row[0]) for row in rows} | set(self.incoming)
        return iter(cast(list[ObjectID], sorted(seen)))

    # -- receiving -------------------------------------------------------------------------------

    def add_object(self, obj: ShaFile) -> None:
        sha = cast(bytes, obj.id)
        self._data[cast(ObjectID, sha)] = obj
        self.incoming[sha] = obj
        self._absent.discard(sha)


def read_refs(repo: RepoId, tx: storage.Transaction | None = None) -> dict[str, str]:
    sql = "SELECT name, sha FROM rbac_repo_refs WHERE api = ? AND actx = ?"
    if tx is not None:
        rows = tx.execute(sql, (repo.api, repo.actx))
    else:
        with storage.database().transaction(write=False) as own:
            rows = own.execute(sql, (repo.api, repo.actx))
    return {name: sha for name, sha in rows}


def open_repo(repo: RepoId, *, with_head: bool = True) -> tuple[MemoryRepo, DbObjectStore, dict[str, str]]:
    """A dulwich repo over the stored objects and a snapshot of the refs (HEAD -> main)."""
    store = DbObjectStore(repo)
    refs = read_refs(repo)
    git_repo = MemoryRepo()
    git_repo.object_store = store
    table: dict[bytes, bytes] = {name.encode(): sha.encode() for name, sha in refs.items()}
    if with_head and MAIN in refs:
        table[b"HEAD"] = b"ref: " + MAIN.encode()
    git_repo.refs._refs.update(table)  # type: ignore[attr-defined]
    return git_repo, store, refs


def closure(store: DbObjectStore, new: bytes) -> list[ShaFile]:
    """The received objects reachable from `new`, in no particular order.

    Whatever they reference that was not received must be stored already (a stored object's closure
    is stored), else MissingObjects. Objects received but not reachable from `new` are dropped.
    """
    needed: list[ShaFile] = []
    seen: set[bytes] = set()
    outside: set[bytes] = set()
    stack = [new]
    while stack:
        sha = stack.pop()
        if sha in seen:
            continue
        seen.add(sha)
        obj = store.incoming.get(sha)
        if obj is None:
            outside.add(sha)
            continue
        needed.append(obj)
        if isinstance(obj, Commit):
            stack.append(cast(bytes, obj.tree))
            stack.extend(cast(list[bytes], obj.parents))
        elif isinstance(obj, Tree):
            for entry in obj.iteritems():
                if not S_ISGITLINK(entry.mode):
                    stack.append(cast(bytes, entry.sha))
        elif isinstance(obj, Tag):
            stack.append(cast(bytes, obj.object[1]))
    missing = outside - store.stored(outside) if outside else set()
    if missing:
        sample = ", ".join(sorted(s.decode() for s in missing)[:3])
        raise MissingObjects(f"the push lacks {len(missing)} object(s) that main needs ({sample}); "
                             "push from a complete (not shallow) clone")
    return needed


def tree_files(store: DbObjectStore, tree_sha: bytes) -> tuple[dict[str, bytes], list[str]]:
    """Regular files of a tree (path -> content) and warnings for what is skipped (symlinks, submodules)."""
    files: dict[str, bytes] = {}
    skipped: list[str] = []
    stack: list[tuple[str, bytes, int]] = [("", tree_sha, 0)]
    while stack:
        prefix, sha, depth = stack.pop()
        if depth > _MAX_TREE_DEPTH:
            raise RepoError(f"{prefix or '/'}: directories nest deeper than {_MAX_TREE_DEPTH} levels")
        tree = store[sha]
        if not isinstance(tree, Tree):
            raise RepoError(f"{prefix or '/'}: expected a tree, found a {tree.type_name.decode()}")
        for entry in tree.iteritems():
            name = f"{prefix}{cast(bytes, entry.path).decode('utf-8', 'replace')}"
            if S_ISGITLINK(entry.mode):
                skipped.append(f"{name}: ignored (a submodule)")
            elif entry.mode & 0o170000 == 0o040000:
                stack.append((f"{name}/", cast(bytes, entry.sha), depth + 1))
            elif entry.mode & 0o170000 == _SYMLINK_MODE:
                skipped.append(f"{name}: ignored (a symbolic link)")
            else:
                blob = store[cast(bytes, entry.sha)]
                if not isinstance(blob, Blob):
                    raise RepoError(f"{name}: expected a file, found a {blob.type_name.decode()}")
                files[name] = blob.as_raw_string()
                if len(files) > _MAX_FILES:
                    raise RepoError(f"the tree has more than {_MAX_FILES} files")
    return files, sorted(skipped)


def schema_objects(compiled: dict[str, Any], main_sha: str, parent: str | None, repo: RepoId) -> list[ShaFile]:
    """The server's commit on `schema`: one file, rbac.json; the message names the main commit."""
    blob = Blob.from_string(json.dumps(compiled, indent=2, ensure_ascii=False).encode() + b"\n")
    tree = Tree()
    tree.add(SCHEMA_FILE.encode(), 0o100644, blob.id)
    commit = Commit()
    commit.tree = tree.id
    commit.parents = [cast(ObjectID, parent.encode())] if parent else []
    endpoint = config.settings().this_endpoint
    ident = f"wid <wid@{urlsplit(endpoint).hostname or 'localhost'}>".encode()
    commit.author = commit.committer = ident
    commit.author_time = commit.commit_time = int(time.time())
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = (f"rbac.json compiled from main {main_sha}\n\n"
                      f"Compiled by {endpoint} for {repo.audience}.\n").encode()
    return [blob, tree, commit]


@dataclass
class PushResult:
    accepted: bool
    reason: str
    schema_commit: str | None = None
    version: int | None = None
    current_main: str | None = None


@dataclass
class Pusher:
    """Who pushed, for the audit log (never a secret)."""

    method: str  # "digitalocean_token" or "jwt"
    sub: str | None = None
    iss: str | None = None
    jti: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _insert_objects(tx: storage.Transaction, repo: RepoId, objects: Iterable[ShaFile], now: int) -> int:
    count = 0
    for obj in objects:
        raw = obj.as_raw_string()
        tx.execute("INSERT INTO rbac_repo_objects (api, actx, sha, type, size, data, created_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (api, actx, sha) DO NOTHING",
                   (repo.api, repo.actx, cast(bytes, obj.id).decode("ascii"), obj.type_num, len(raw),
                    zlib.compress(raw, 6), now))
        count += 1
    return count


def _set_ref(tx: storage.Transaction, repo: RepoId, name: str, sha: str, now: int) -> None:
    tx.execute("INSERT INTO rbac_repo_refs (api, actx, name, sha, updated_at) VALUES (?, ?, ?, ?, ?) "
               "ON CONFLICT (api, actx, name) DO UPDATE SET sha = excluded.sha, updated_at = excluded.updated_at",
               (repo.api, repo.actx, name, sha, now))


def apply_push(repo: RepoId, *, old: str, new: str, objects: list[ShaFile], compiled: dict[str, Any],
               pusher: Pusher, limits: Limits, summary: dict[str, Any],
               before_commit: Callable[[], None] | None = None) -> PushResult:
    """Move main from `old` to `new` with its objects, commit rbac.json to schema and install it, or nothing."""
    now = int(time.time())
    who = {"auth": pusher.method, **pusher.detail}
    with storage.database().transaction() as tx:
        tx.lock(repo.lock_name)
        refs = read_refs(repo, tx)
        current = refs.get(MAIN, ZERO)
        if current != old:
            reason = (f"main moved to {current[:12]} while this push was in flight; "
                      "fetch, rebase (or merge) and push again" if current != ZERO else
                      "main was deleted while this push was in flight; push again")
            audit.record("rbac_push", "deny", api=repo.api, actx=repo.actx, sub=pusher.sub, iss=pusher.iss,
                         jti=pusher.jti, tx=tx, ref=MAIN, old=old, new=new, current=current, reason=reason, **who)
            return PushResult(False, reason, current_main=current)
        row = tx.one("SELECT COALESCE(SUM(size), 0) FROM rbac_repo_objects WHERE api = ? AND actx = ?",
                     (repo.api, repo.actx))
        stored_bytes = int(row[0]) if row else 0
        adding = sum(len(obj.as_raw_string()) for obj in objects)
        if stored_bytes + adding > limits.repo_bytes:
            reason = (f"the repo would hold {stored_bytes + adding} bytes of objects; the limit is "
                      f"{limits.repo_bytes} (WID_GIT_MAX_REPO_BYTES)")
            audit.record("rbac_push", "deny", api=repo.api, actx=repo.actx, sub=pusher.sub, iss=pusher.iss,
                         jti=pusher.jti, tx=tx, ref=MAIN, old=old, new=new, reason=reason, **who)
            return PushResult(False, reason, current_main=current)
        schema = schema_objects(compiled, new, refs.get(SCHEMA), repo)
        stored = _insert_objects(tx, repo, [*objects, *schema], now)
        schema_sha = cast(bytes, schema[-1].id).decode("ascii")
        _set_ref(tx, repo, MAIN, new, now)
        _set_ref(tx, repo, SCHEMA, schema_sha, now)
        version = rbac_store.install(tx, repo.api, repo.actx, compiled, new)
        audit.record("rbac_push", "allow", api=repo.api, actx=repo.actx, sub=pusher.sub, iss=pusher.iss,
                     jti=pusher.jti, tx=tx, ref=MAIN, old=old, new=new, schema=schema_sha, version=version,
                     objects=stored, **summary, **who)
        if before_commit is not None:
            before_commit()
    return PushResult(True, "ok", schema_commit=schema_sha, version=version, current_main=new)


def record_refusal(repo: RepoId, pusher: Pusher, *, ref: str, old: str, new: str, reason: str,
                   **detail: Any) -> None:
    """Audit a push that was refused before its transaction (bad ref, compile errors, bad pack)."""
    audit.record("rbac_push", "deny", api=repo.api, actx=repo.actx, sub=pusher.sub, iss=pusher.iss,
                 jti=pusher.jti, ref=ref, old=old, new=new, reason=reason, auth=pusher.method,
                 **pusher.detail, **detail)
