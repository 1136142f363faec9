"""A push to an RBAC repo (git-receive-pack): only main, compiled before it is stored.

Each pushed ref gets a verdict: the pack is scanned and ingested, `main` is compiled with
lib/wid/core/rbac/compiler.py, its policy tests run (lib/wid/core/rbac/cases.py), and it is stored
with the compiled rbac.json by lib/wid/store/rbac_repo.py in one transaction; every other ref is
refused. Messages reach the user through git: side-band channel
2 (`remote: ...` lines) and the report-status (`! [remote rejected] main -> main (reason)`).
The HTTP side (routes, authentication, reading the body) is lib/wid/web/handlers/git.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from dulwich.objects import ZERO_SHA, Commit
from dulwich.protocol import CAPABILITY_ATOMIC, CAPABILITY_SIDE_BAND_64K, SIDE_BAND_CHANNEL_PROGRESS, Protocol
from dulwich.server import Backend, ReceivePackHandler

from wid import config
from wid.core import git_pack
from wid.log import log
from wid.service import git_auth
from wid.store import rbac_repo
from wid.store.rbac_repo import MAIN, SCHEMA, Limits, Pusher, RepoId


class PushProtocol(Protocol):
    """Skips the `shallow <sha>` lines a shallow clone sends before its commands (dulwich expects none).

    What a shallow clone's push needs beyond its pack must already be stored; rbac_repo.closure checks.
    """

    def read_pkt_line(self) -> bytes | None:
        while True:
            line = super().read_pkt_line()
            if line is None or not line.startswith(b"shallow "):
                return line


class ReceivePack(ReceivePackHandler):
    def __init__(self, backend: Backend, args: list[str], proto: Protocol, push: Push) -> None:
        super().__init__(backend, args, proto, stateless_rpc=True)
        self.push = push

    def say(self, text: str) -> None:
        """A message git prints as `remote: ...` (when the client speaks side-band, as git does)."""
        if text and self.has_capability(CAPABILITY_SIDE_BAND_64K):
            self.proto.write_sideband(SIDE_BAND_CHANNEL_PROGRESS, text.encode("utf-8", "replace"))

    def _apply_pack(self, refs: list[Any]) -> Any:
        return iter(self.push.apply(self, refs))


def _one_line(text: str, limit: int = 300) -> bytes:
    line = " ".join(text.split())
    return (line[:limit - 3] + "..." if len(line) > limit else line).encode("utf-8", "replace")


class Push:
    def __init__(self, repo: RepoId, access: git_auth.GitAccess, store: rbac_repo.DbObjectStore, stream: BytesIO,
                 body: bytes, truncated: bool, limits: Limits, before_commit: Callable[[], None] | None) -> None:
        self.repo = repo
        self.access = access
        self.store = store
        self.stream = stream
        self.body = body
        self.truncated = truncated
        self.limits = limits
        self.before_commit = before_commit  # inside the push's transaction, just before it commits
        self.pusher = Pusher(access.method, sub=access.sub, iss=access.iss, jti=access.jti, detail=access.detail)

    def refuse(self, ref: str, old: str, new: str, reason: str, **detail: Any) -> None:
        rbac_repo.record_refusal(self.repo, self.pusher, ref=ref, old=old, new=new, reason=reason, **detail)

    def apply(self, h: ReceivePack, refs: list[tuple[bytes, bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        commands = [(old.decode("ascii"), new.decode("ascii"), ref.decode("utf-8", "replace"))
                    for old, new, ref in refs]
        zero = ZERO_SHA.decode()
        if any(new != zero for _, new, _ in commands):
            problem = self.receive(h)
            if problem is not None:
                h.say(f"wid: push refused, nothing was stored: {problem}\n")
                for old, new, ref in commands:
                    self.refuse(ref, old, new, problem)
                return [(b"unpack", _one_line(problem)), *((ref, b"unpacker error") for _, _, ref in refs)]
        verdicts: list[str | None] = []
        for _, new, ref in commands:
            if ref == MAIN and new == zero:
                verdicts.append("deleting main is not allowed; push a new commit to main instead")
            elif ref == MAIN:
                verdicts.append(None)
            elif ref == SCHEMA:
                verdicts.append("schema is written by the server (the compiled rbac.json); push to main")
            else:
                verdicts.append(f"only main can be pushed here, not {ref}")
        atomic = h.has_capability(CAPABILITY_ATOMIC)
        if atomic and any(v is not None for v in verdicts):
            verdicts = [v if v is not None else "atomic push failed: another ref was refused" for v in verdicts]
        for (old, new, ref), verdict in zip(commands, verdicts, strict=True):
            if verdict is not None:
                h.say(f"wid: {ref}: {verdict}\n")
                self.refuse(ref, old, new, verdict)
        status: list[tuple[bytes, bytes]] = [(b"unpack", b"ok")]
        for (old, new, ref), verdict in zip(commands, verdicts, strict=True):
            if verdict is None:
                verdict = self.push_main(h, old, new)
            status.append((ref.encode("utf-8"), b"ok" if verdict is None else _one_line(verdict)))
        return status

    def receive(self, h: ReceivePack) -> str | None:
        """Read the pack into the store's incoming objects; a reason when it cannot be accepted."""
        if self.truncated:
            return (f"the push is larger than {self.limits.push_bytes} bytes (WID_GIT_MAX_PUSH_BYTES); "
                    "RBAC repos hold small text files")
        try:
            git_pack.scan(self.body[self.stream.tell():], max_object_bytes=self.limits.object_bytes,
                          max_inflated_bytes=self.limits.repo_bytes)
        except git_pack.PackRejected as exc:
            return str(exc)
        try:
            self.store.add_thin_pack(h.proto.read, None)
        except Exception as exc:  # any failure to ingest is the pack's fault: report it, store nothing
            log("git_pack_rejected", level="warning", error=type(exc).__name__, detail=str(exc)[:200])
            return f"malformed pack ({type(exc).__name__}: {str(exc)[:200]})"
        return None

    def push_main(self, h: ReceivePack, old: str, new: str) -> str | None:
        """Validate, compile and store a new main; None when accepted, else the reason."""
        store = self.store
        try:
            commit = store[new.encode()]
        except KeyError:
            commit = None
        if not isinstance(commit, Commit):
            reason = "the pushed main is not a commit that the pack or the repo holds"
            self.refuse(MAIN, old, new, reason)
            return reason
        try:
            objects = rbac_repo.closure(store, new.encode())
            files, skipped = rbac_repo.tree_files(store, cast(bytes, commit.tree))
        except (rbac_repo.MissingObjects, rbac_repo.RepoError) as exc:
            h.say(f"wid: main was not updated: {exc}\n")
            self.refuse(MAIN, old, new, str(exc))
            return str(exc)
        from wid.core.rbac import cases  # the HCL parser: only when a push is compiled
        from wid.core.rbac import compiler as rbac_compile

        settings = config.settings()
        started = time.perf_counter()
        try:
            compiled, tested = cases.compile_and_test(files, api=self.repo.api, actx=self.repo.actx,
                                                      issuer=settings.this_endpoint,
                                                      trusted_issuers=list(settings.trusted_issuers),
                                                      owner_claims=settings.issuer_owner_claims)
        except rbac_compile.CompileError as exc:
            count = len(exc.errors)
            h.say(f"wid: main was not updated: the configuration has {count} error(s):\n"
                  + "".join(f"{error}\n" for error in exc.errors))
            reason = f"configuration rejected: {count} error(s), shown above"
            self.refuse(MAIN, old, new, reason, errors=exc.errors[:50])
            return reason
        compiled["warnings"] = [*skipped, *compiled.get("warnings", [])]
        summary = {"files": len(files), "roles": len(compiled["roles"]), "policies": len(compiled["policies"]),
                   "warnings": len(compiled["warnings"]), "tests": tested,
                   "compile_ms": round((time.perf_counter() - started) * 1000, 1)}
        result = rbac_repo.apply_push(self.repo, old=old, new=new, objects=objects, compiled=compiled,
                                      pusher=self.pusher, limits=self.limits, summary=summary,
                                      before_commit=self.before_commit)
        if not result.accepted:
            h.say(f"wid: main was not updated: {result.reason}\n")
            return result.reason
        for warning in compiled["warnings"]:
            h.say(f"wid: warning: {warning}\n")
        roles, policies = summary["roles"], summary["policies"]
        h.say(f"wid: main is now {new[:12]}: {roles} role{'s' if roles != 1 else ''} and {policies} "
              f"polic{'ies' if policies != 1 else 'y'} in force for {self.repo.audience}"
              + (f"; {tested} policy test{'s' if tested != 1 else ''} passed" if tested else "") + "\n"
              f"wid: compiled rbac.json committed to schema as {str(result.schema_commit)[:12]}\n")
        return None

