"""RBAC repos over git smart HTTP, at `/_rbac/{API}/{actx}/` and at `/` (the caller's own context).

Routes (the smart HTTP protocol; the dumb one is refused):
  GET  {repo}/info/refs?service=git-upload-pack | git-receive-pack   ref advertisement
  POST {repo}/git-upload-pack                                         clone, fetch
  POST {repo}/git-receive-pack                                        push

Authentication and what each credential may open: lib/wid/service/git_auth.py. Storage:
lib/wid/store/rbac_repo.py (database only). dulwich speaks the protocol; the request body is read by
lib/wid/web/git_body.py; a push to `main` is compiled before it is accepted (lib/wid/web/git_push.py),
and the verdict reaches the user through git itself: compile errors and warnings travel on
side-band channel 2, which git prints as `remote: ...` lines, and each ref's result travels in the
report-status (`! [remote rejected] main -> main (reason)`). Errors before the protocol starts
(authentication, bad URL) are answered as text/plain to git, which prints them as `remote: ...`,
and as the usual JSON to every other client.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any

from dulwich.errors import GitProtocolError
from dulwich.protocol import CAPABILITY_FILTER, Protocol
from dulwich.repo import MemoryRepo
from dulwich.server import Backend, ReceivePackHandler, UploadPackHandler

from wid.core import names
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
from wid.store.rbac_repo import Limits, RepoId
from wid.upstreams import registry
from wid.web.errors import error_response, headers_of, status_of
from wid.web.git_body import drain, gunzip, read_body
from wid.web.git_push import Push, PushProtocol, ReceivePack
from wid.web.request import Request
from wid.web.response import Response

SERVICES = ("git-upload-pack", "git-receive-pack")
_PATH = re.compile(r"^(?:/_rbac/(?P<api>[^/]+)/(?P<actx>[^/]+))?(?:/(?P<rest>.*))?$")
_GIT_AGENT = re.compile(r"^(git|JGit|dulwich|go-git)/", re.IGNORECASE)
_NO_CACHE = [("Cache-Control", "no-cache, max-age=0, must-revalidate"), ("Pragma", "no-cache"),
             ("Expires", "Fri, 01 Jan 1980 00:00:00 GMT")]
_UPLOAD_REQUEST_LIMIT = 8 * 1024 * 1024
_READ_CHUNK = 64 * 1024


def handler(request: Request, before_commit: Callable[[], None] | None = None) -> Response:
    """One git request. `before_commit` runs inside a push's write transaction just before it commits,
    everything written (tests/test_git_push.py parks a push there to kill it; cgi-bin/git.py passes none)."""
    try:
        return _handle(request, before_commit)
    except WidError as err:
        drain(request)
        return _error(request, err)
    except storage.DatabaseUnavailable as exc:
        log("database_unavailable", level="error", message=str(exc))
        drain(request)
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
    if api not in registry.known_apis():
        raise NotFound(f"no API named {api!r}; RBAC repos live at /_rbac/{{API}}/{{actx}}/ with API one of "
                       f"{', '.join(registry.known_apis())}")
    problem = names.actx_problem(actx)
    if problem:
        raise InvalidRequest(f"not a valid context id: {problem}")
    registry.validate_context(api, actx)
    return api, actx


def _handle(request: Request, before_commit: Callable[[], None] | None) -> Response:
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
    return _receive_pack(request, repo, access, before_commit)


class _UploadPack(UploadPackHandler):
    """Without partial clone: a filtered clone would later ask for single blobs, which is not offered."""

    def capabilities(self) -> list[bytes]:
        return [cap for cap in super().capabilities() if cap != CAPABILITY_FILTER]

    def set_client_capabilities(self, caps: Iterable[bytes]) -> None:
        # git asks for "filter" even when told filtering is not offered; git's upload-pack ignores it too.
        super().set_client_capabilities([cap for cap in caps if cap.split(b"=")[0] != CAPABILITY_FILTER])


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
    body, truncated = read_body(request, _UPLOAD_REQUEST_LIMIT)
    if truncated:
        raise TooLarge(f"fetch negotiation larger than {_UPLOAD_REQUEST_LIMIT} bytes")
    if (request.header("Content-Encoding") or "").lower() in {"gzip", "x-gzip"}:
        body = gunzip(body, _UPLOAD_REQUEST_LIMIT)
    git_repo, store, _ = rbac_repo.open_repo(repo)
    store.prefetch_all()
    out: list[bytes] = []
    proto = Protocol(BytesIO(body).read, out.append)
    try:
        _UploadPack(_Backend(git_repo), ["/"], proto, stateless_rpc=True).handle()
    except GitProtocolError as exc:
        raise InvalidRequest(f"bad upload-pack request: {exc}") from None
    return _result("git-upload-pack", out)


def _receive_pack(request: Request, repo: RepoId, access: git_auth.GitAccess,
                  before_commit: Callable[[], None] | None) -> Response:
    limits = Limits.configured()
    body, truncated = read_body(request, limits.push_bytes)
    if not truncated and (request.header("Content-Encoding") or "").lower() in {"gzip", "x-gzip"}:
        body = gunzip(body, limits.push_bytes)
    git_repo, store, _ = rbac_repo.open_repo(repo, with_head=False)
    stream = BytesIO(body)
    out: list[bytes] = []
    proto = PushProtocol(stream.read, out.append)
    push = Push(repo, access, store, stream, body, truncated, limits, before_commit)
    try:
        ReceivePack(_Backend(git_repo), ["/"], proto, push).handle()
    except GitProtocolError as exc:
        raise InvalidRequest(f"bad receive-pack request: {exc}") from None
    return _result("git-receive-pack", out)


# -- push ------------------------------------------------------------------------------------------
