"""RBAC repos over git smart HTTP, at `/_rbac/{API}/{actx}/` and at `/` (the caller's own context).

Routes (the smart HTTP protocol; the dumb one is refused):
  GET  {repo}/info/refs?service=git-upload-pack | git-receive-pack   ref advertisement
  POST {repo}/git-upload-pack                                         clone, fetch
  POST {repo}/git-receive-pack                                        push

Authentication and what each credential may open: wid.service.git_auth. Storage: wid.store.rbac_repo (database
only). dulwich speaks the protocol; a push to `main` is compiled with wid.core.rbac.compiler before it is
accepted, and the verdict reaches the user through git itself: compile errors and warnings travel on
side-band channel 2, which git prints as `remote: ...` lines, and each ref's result travels in the
report-status (`! [remote rejected] main -> main (reason)`). Errors before the protocol starts
(authentication, bad URL) are answered as text/plain to git, which prints them as `remote: ...`,
and as the usual JSON to every other client.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from dulwich.errors import GitProtocolError
from dulwich.objects import ZERO_SHA, Commit
from dulwich.protocol import (
    CAPABILITY_ATOMIC,
    CAPABILITY_FILTER,
    CAPABILITY_SIDE_BAND_64K,
    SIDE_BAND_CHANNEL_PROGRESS,
    Protocol,
)
from dulwich.repo import MemoryRepo
from dulwich.server import Backend, ReceivePackHandler, UploadPackHandler

from wid import config
from wid.core import git_pack, names
from wid.core.errors import (
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
    WidError,
)
from wid.log import log, request_id
from wid.service import git_auth
from wid.store import rbac_repo, storage
from wid.store.rbac_repo import MAIN, SCHEMA, Limits, Pusher, RepoId
from wid.web.errors import error_response, headers_of, status_of
from wid.web.request import Request
from wid.web.response import Response

SERVICES = ("git-upload-pack", "git-receive-pack")
_PATH = re.compile(r"^(?:/_rbac/(?P<api>[^/]+)/(?P<actx>[^/]+))?(?:/(?P<rest>.*))?$")
_GIT_AGENT = re.compile(r"^(git|JGit|dulwich|go-git)/", re.IGNORECASE)
_NO_CACHE = [("Cache-Control", "no-cache, max-age=0, must-revalidate"), ("Pragma", "no-cache"),
             ("Expires", "Fri, 01 Jan 1980 00:00:00 GMT")]
_UPLOAD_REQUEST_LIMIT = 8 * 1024 * 1024
_READ_CHUNK = 64 * 1024


def handler(request: Request) -> Response:
    try:
        return _handle(request)
    except WidError as err:
        _drain(request)
        return _error(request, err)
    except storage.DatabaseUnavailable as exc:
        log("database_unavailable", level="error", message=str(exc))
        _drain(request)
        return _error(request, Unavailable(str(exc)))


# -- HTTP ------------------------------------------------------------------------------------------


def _is_git(request: Request) -> bool:
    return bool(_GIT_AGENT.match(request.header("User-Agent") or ""))


def _error(request: Request, err: WidError) -> Response:
    """text/plain for git (it prints such bodies as `remote: ...`), the JSON error format for others."""
    headers = headers_of(err)
    if isinstance(err, Unauthenticated):
        headers["WWW-Authenticate"] = git_auth.CHALLENGE
    if not _is_git(request):
        return error_response(err, headers)
    text = f"{err.message}\n(error {err.code}, request id {request_id.get()})\n"
    return Response(status_of(err), text.encode(), [("Content-Type", "text/plain; charset=utf-8"), *_NO_CACHE,
                                                    *headers.items()])


def _target(match: re.Match[str]) -> tuple[str, str] | None:
    api, actx = match["api"], match["actx"]
    if api is None or actx is None:
        return None
    from wid.net import upstream

    if api not in upstream.known_apis():
        raise NotFound(f"no API named {api!r}; RBAC repos live at /_rbac/{{API}}/{{actx}}/ with API one of "
                       f"{', '.join(upstream.known_apis())}")
    problem = names.actx_problem(actx)
    if problem:
        raise InvalidRequest(f"not a valid context id: {problem}")
    upstream.get(api).validate_context(actx)
    return api, actx


def _handle(request: Request) -> Response:
    path = request.checked_path()
    match = _PATH.match(path)
    rest = match["rest"] if match else None
    if match is None or rest is None or rest == "":
        raise NotFound("this is a git repository: add it as a remote and use git (git clone, fetch, push) at "
                       "/ for your DigitalOcean team or at /_rbac/{API}/{actx}")
    target = _target(match)
    query = dict(request.query())
    if rest == "info/refs" and query.get("service") in SERVICES:
        if request.method not in {"GET", "HEAD"}:
            raise MethodNotAllowed("use GET for info/refs", allowed=["GET"])
        service = query["service"]
    elif rest in SERVICES:
        if request.method != "POST":
            raise MethodNotAllowed(f"use POST for {rest}", allowed=["POST"])
        service = rest
        expected = f"application/x-{service}-request"
        if request.content_type != expected:
            raise UnsupportedMediaType(f"{service} takes {expected}")
    elif rest == "info/refs" or rest == "HEAD" or rest.startswith("objects/"):
        raise Forbidden("this server speaks git's smart HTTP protocol only "
                        "(git 1.6.6 or later)", code="dumb_http_unsupported")
    else:
        raise NotFound(f"no git route {rest!r} here")
    write = service == "git-receive-pack"
    access = git_auth.authenticate(request.header("Authorization"), target, write=write)
    repo = RepoId(access.api, access.actx)
    if rest == "info/refs":
        return _advertise(repo, service)
    if service == "git-upload-pack":
        return _upload_pack(request, repo)
    return _receive_pack(request, repo, access)


def _read_body(request: Request, limit: int) -> tuple[bytes, bool]:
    """The body (chunked bodies arrive with no or a negative CONTENT_LENGTH: read to the end).

    Keeps at most `limit` bytes and reads (discards) the rest, so the client always gets our answer.
    """
    environ = request.environ
    if environ.get("wid.git.body_read"):
        return b"", False
    environ["wid.git.body_read"] = True
    stream = environ["wsgi.input"]
    raw = environ.get("CONTENT_LENGTH") or ""
    try:
        length: int | None = int(raw)
    except ValueError:
        length = None
    if length is not None and length < 0:
        length = None
    kept = bytearray()
    truncated = False
    remaining = length
    while remaining is None or remaining > 0:
        want = _READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining)
        chunk = stream.read(want)
        if not chunk:
            if remaining:
                raise InvalidRequest("request body ended before Content-Length bytes arrived")
            break
        if remaining is not None:
            remaining -= len(chunk)
        if len(kept) + len(chunk) <= limit:
            kept += chunk
        else:
            truncated = True
    return bytes(kept), truncated


def _drain(request: Request) -> None:
    if request.method == "POST":
        try:
            _read_body(request, 0)
        except (WidError, OSError):
            pass


def _gunzip(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"request body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"request body inflates beyond {limit} bytes")
    return out


class _UploadPack(UploadPackHandler):
    """Without partial clone: a filtered clone would later ask for single blobs, which is not offered."""

    def capabilities(self) -> list[bytes]:
        return [cap for cap in super().capabilities() if cap != CAPABILITY_FILTER]

    def set_client_capabilities(self, caps: Iterable[bytes]) -> None:
        # git asks for "filter" even when told filtering is not offered; git's upload-pack ignores it too.
        super().set_client_capabilities([cap for cap in caps if cap.split(b"=")[0] != CAPABILITY_FILTER])


class _PushProtocol(Protocol):
    """Skips the `shallow <sha>` lines a shallow clone sends before its commands (dulwich expects none).

    What a shallow clone's push needs beyond its pack must already be stored; rbac_repo.closure checks.
    """

    def read_pkt_line(self) -> bytes | None:
        while True:
            line = super().read_pkt_line()
            if line is None or not line.startswith(b"shallow "):
                return line


class _Backend(Backend):
    def __init__(self, repo: MemoryRepo) -> None:
        self.repo = repo

    def open_repository(self, path: str) -> Any:
        return self.repo


def _result(service: str, chunks: list[bytes], kind: str = "result") -> Response:
    return Response(200, b"".join(chunks), [("Content-Type", f"application/x-{service}-{kind}"), *_NO_CACHE])


def _advertise(repo: RepoId, service: str) -> Response:
    git_repo, _, _ = rbac_repo.open_repo(repo, with_head=service == "git-upload-pack")
    out: list[bytes] = []
    proto = Protocol(BytesIO().read, out.append)
    proto.write_pkt_line(f"# service={service}\n".encode())
    proto.write_pkt_line(None)
    cls = _UploadPack if service == "git-upload-pack" else ReceivePackHandler
    cls(_Backend(git_repo), ["/"], proto, stateless_rpc=True, advertise_refs=True).handle()
    return _result(service, out, "advertisement")


def _upload_pack(request: Request, repo: RepoId) -> Response:
    body, truncated = _read_body(request, _UPLOAD_REQUEST_LIMIT)
    if truncated:
        raise TooLarge(f"fetch negotiation larger than {_UPLOAD_REQUEST_LIMIT} bytes")
    if (request.header("Content-Encoding") or "").lower() in {"gzip", "x-gzip"}:
        body = _gunzip(body, _UPLOAD_REQUEST_LIMIT)
    git_repo, store, _ = rbac_repo.open_repo(repo)
    store.prefetch_all()
    out: list[bytes] = []
    proto = Protocol(BytesIO(body).read, out.append)
    try:
        _UploadPack(_Backend(git_repo), ["/"], proto, stateless_rpc=True).handle()
    except GitProtocolError as exc:
        raise InvalidRequest(f"bad upload-pack request: {exc}") from None
    return _result("git-upload-pack", out)


def _receive_pack(request: Request, repo: RepoId, access: git_auth.GitAccess) -> Response:
    limits = Limits.configured()
    body, truncated = _read_body(request, limits.push_bytes)
    if not truncated and (request.header("Content-Encoding") or "").lower() in {"gzip", "x-gzip"}:
        body = _gunzip(body, limits.push_bytes)
    git_repo, store, _ = rbac_repo.open_repo(repo, with_head=False)
    stream = BytesIO(body)
    out: list[bytes] = []
    proto = _PushProtocol(stream.read, out.append)
    push = _Push(repo, access, store, stream, body, truncated, limits)
    try:
        _ReceivePack(_Backend(git_repo), ["/"], proto, push).handle()
    except GitProtocolError as exc:
        raise InvalidRequest(f"bad receive-pack request: {exc}") from None
    return _result("git-receive-pack", out)


# -- push ------------------------------------------------------------------------------------------


class _ReceivePack(ReceivePackHandler):
    def __init__(self, backend: Backend, args: list[str], proto: Protocol, push: _Push) -> None:
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


class _Push:
    def __init__(self, repo: RepoId, access: git_auth.GitAccess, store: rbac_repo.DbObjectStore, stream: BytesIO,
                 body: bytes, truncated: bool, limits: Limits) -> None:
        self.repo = repo
        self.access = access
        self.store = store
        self.stream = stream
        self.body = body
        self.truncated = truncated
        self.limits = limits
        self.pusher = Pusher(access.method, sub=access.sub, iss=access.iss, jti=access.jti, detail=access.detail)

    def refuse(self, ref: str, old: str, new: str, reason: str, **detail: Any) -> None:
        rbac_repo.record_refusal(self.repo, self.pusher, ref=ref, old=old, new=new, reason=reason, **detail)

    def apply(self, h: _ReceivePack, refs: list[tuple[bytes, bytes, bytes]]) -> list[tuple[bytes, bytes]]:
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

    def receive(self, h: _ReceivePack) -> str | None:
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

    def push_main(self, h: _ReceivePack, old: str, new: str) -> str | None:
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
                                      before_commit=_test_hold)
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


def _test_hold() -> None:
    """Fault injection for tests only: park one push just before its transaction commits.

    Inert unless WID_TEST_GIT_HOLD_DIR is set and a file `armed` exists in it; the push that claims
    it renames it to `held-{pid}` and waits (up to 60 s) until that file is removed, so a test can
    kill -9 the process mid-push.
    """
    folder = os.environ.get("WID_TEST_GIT_HOLD_DIR")
    if not folder:
        return
    held = Path(folder, f"held-{os.getpid()}")
    try:
        os.rename(Path(folder, "armed"), held)
    except OSError:
        return
    deadline = time.monotonic() + 60
    while held.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
