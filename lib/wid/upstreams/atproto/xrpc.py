"""The ATProto upstream: a context is a DID; the credential is the DID's DPoP-bound OAuth session.

A context id is a `did:plc:` (24 base32 characters) or a `did:web:` naming a host (no port, no path,
so the id never holds a ':' after its method). Admins sign in through lib/wid/upstreams/atproto/oauth.py.

`forward()` sends a request that policy allowed to the PDS of the DID in the token's audience, and
nowhere else: the PDS URL stored at sign-in, which the DID document (cached for
ATPROTO_DID_CACHE_SECONDS) must still name. The request carries the session's access token with a
fresh DPoP proof (`htu` = the PDS URL as the DID document writes it + the path; `ath`), is retried
once with the server's nonce on `use_dpop_nonce`, and once after a refresh when the PDS refuses the
token. Method, checked path, query and body go as checked; of the client's headers only the
content type and a few harmless ones (never its Authorization, cookies or `atproto-proxy`, which
would make the PDS act for the DID at another service). Answers are relayed with their status,
content type and body (at most ATPROTO_MAX_RESPONSE_BYTES).

Whatever policy says, a repository-writing procedure (`com.atproto.repo.createRecord`,
`putRecord`, `deleteRecord`, `applyWrites`, and any `com.atproto.repo.*` procedure naming a `repo`)
must name the context's own DID as `repo`: a token for DID A never writes to DID B.
"""

from __future__ import annotations

import re
from typing import Any

from wid import config
from wid.core.errors import (
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    UnsupportedMediaType,
    UpstreamFailed,
    WidError,
)
from wid.log import log
from wid.net.safe_http import HttpResult
from wid.upstreams.atproto import identity
from wid.upstreams.atproto import session as atproto_session
from wid.upstreams.atproto.context import API, validate_context
from wid.upstreams.atproto.dpop_http import Nonces, dpop_request, wants_nonce
from wid.web.request import Request
from wid.web.response import Response

_NSID = re.compile(r"^(?=.{5,317}$)[a-zA-Z](?:[a-zA-Z0-9-]{0,62})(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,62})){1,}"
                   r"\.[a-zA-Z][a-zA-Z0-9]{0,62}$")
_QUERY_CHARS = re.compile(r"^[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*$")
REPO_WRITES = frozenset({"com.atproto.repo.createRecord", "com.atproto.repo.putRecord",
                         "com.atproto.repo.deleteRecord", "com.atproto.repo.applyWrites"})
_FORWARDED_HEADERS = ("Accept", "Accept-Language", "User-Agent", "atproto-accept-labelers")
_RELAYED_HEADERS = frozenset({"content-type", "content-language", "cache-control", "etag", "last-modified",
                              "retry-after", "atproto-repo-rev", "atproto-content-labelers", "ratelimit-limit",
                              "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy", "content-encoding"})


def nsid_of(path: str) -> str:
    """`/xrpc/{nsid}` -> nsid; 404 for any other path."""
    if not path.startswith("/xrpc/"):
        raise NotFound(f"{path} is not an XRPC path (/xrpc/{{nsid}})")
    nsid = path[len("/xrpc/"):]
    if not _NSID.match(nsid):
        raise NotFound(f"{nsid[:100]!r} is not an XRPC method id (NSID such as com.atproto.repo.createRecord)")
    return nsid


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def check_repo(did: str, method: str, nsid: str, content_type: str | None, body: bytes) -> None:
    """Refuse a repository-writing procedure whose `repo` is not the context's DID (whatever policy says)."""
    if method != "POST" or not nsid.startswith("com.atproto.repo."):
        return
    writes = nsid in REPO_WRITES
    if not is_json(content_type):
        if writes:
            raise UnsupportedMediaType(f"{nsid} takes an application/json body")
        return  # uploadBlob, importRepo: they act on the session's own account, which is this DID
    from wid.web.request import parse_json_object

    if not body.strip():
        if writes:
            raise InvalidRequest(f"{nsid} needs a JSON body naming the repo")
        return
    params: dict[str, Any] = parse_json_object(body)
    repo = params.get("repo")
    if repo is None and writes:
        raise InvalidRequest(f'{nsid} needs "repo": the DID of this token\'s context, {did}')
    if repo is not None and repo != did:
        from wid.store import audit

        reason = (f'"repo" is {str(repo)[:100]!r}, but this token acts for {did}; repository-writing procedures '
                  f"through this proxy can only write the DID of the token's context (name it as the DID)")
        audit.record("xrpc", "deny", api=API, actx=did, nsid=nsid, reason=reason)
        raise Forbidden(reason)


def _relay(result: Any) -> Response:
    headers = [(name.title() if not name.startswith("atproto") else name, value)
               for name, value in result.headers.items() if name in _RELAYED_HEADERS]
    headers.append(("Content-Length", str(len(result.body))))
    return Response(result.status, result.body, headers)


def _upstream_failed(pds: str, nsid: str, result: Any) -> WidError:
    """A 5xx of the PDS, as this proxy's 502 naming it (with its Retry-After); the session is untouched."""
    from wid.net import upstream

    return upstream.server_error(f"the PDS {pds}", result.status, result.body, result.headers.get("retry-after"),
                                 nsid)


def _refused_token(result: HttpResult) -> bool:
    return result.status == 401 and not wants_nonce(result)


class AtprotoUpstream:
    name = API

    def validate_context(self, actx: str) -> None:
        validate_context(actx)

    def forward(self, actx: str, request: Request, path: str) -> Response:
        """Forward an authorized XRPC request; `path` is the checked path that policy saw."""
        self.validate_context(actx)
        nsid = nsid_of(path)
        method = request.method
        if method not in ("GET", "POST"):
            raise MethodNotAllowed("XRPC uses GET (queries) and POST (procedures)", allowed=["GET", "POST"])
        body = request.body() if method == "POST" else b""
        content_type = request.header("Content-Type")
        check_repo(actx, method, nsid, content_type, body)
        if not _QUERY_CHARS.match(request.query_string):
            raise InvalidRequest("the query string has characters that must be percent-encoded")
        data = atproto_session.stored_session(actx)
        document = identity.resolve_did(actx)
        if document.pds != data["pds"]:
            raise atproto_session.pds_changed(actx, str(data["pds"]), document.pds)
        session = atproto_session.session(actx, data=data)
        url = f"{data['pds']}/xrpc/{nsid}" + (f"?{request.query_string}" if request.query_string else "")
        headers = {name: value for name in _FORWARDED_HEADERS if (value := request.header(name))}
        headers.setdefault("Accept", "application/json")
        if method == "POST":
            headers["Content-Type"] = content_type or "application/json"
        limit = config.settings().atproto_max_response_bytes
        nonces = Nonces()
        for attempt in (1, 2):
            result = dpop_request(method, url, session.dpop_key, what=f"the PDS {data['pds']} ({nsid})",
                                  nonces=nonces, body=(lambda: body) if method == "POST" else None,
                                  headers=headers, access_token=session.access_token, limit=limit)
            if attempt == 1 and _refused_token(result):
                log("atproto_token_refused", level="warning", did=actx, nsid=nsid)
                nonces.flush()
                session = atproto_session.session(actx, rejected=session.access_token)
                continue
            break
        nonces.flush()
        if result.status == 401:
            raise UpstreamFailed(f"the PDS {data['pds']} refused {actx}'s freshly refreshed "
                                 f"access token; {atproto_session.sign_in_again(actx)}", code="upstream_unauthorized")
        log("atproto_forwarded", did=actx, nsid=nsid, status=result.status)
        if result.status >= 500:
            raise _upstream_failed(str(data["pds"]), nsid, result)
        return _relay(result)


UPSTREAM = AtprotoUpstream()
