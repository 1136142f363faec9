"""XRPC calls to a DID's PDS with the DID's ATProto session, and the rule every repository write obeys.

`send()` sends a request that policy allowed to the PDS of the DID in the token's audience, and
nowhere else: the PDS URL stored at sign-in, which the DID document (cached for
ATPROTO_DID_CACHE_SECONDS) must still name. The request carries the session's access token with a
fresh DPoP proof (`htu` = the PDS URL as the DID document writes it + the path; `ath`), is retried
once with the server's nonce on `use_dpop_nonce`, and once after a refresh when the PDS refuses the
token; a 5xx of the PDS is this proxy's 502 naming it. What of the client's request is sent and
what of the answer is relayed: lib/wid/web/forward/atproto.py. Admins sign in through
lib/wid/upstreams/atproto/oauth.py.

Whatever policy says, a repository-writing procedure (`com.atproto.repo.createRecord`,
`putRecord`, `deleteRecord`, `applyWrites`, and any `com.atproto.repo.*` procedure naming a `repo`)
must name the context's own DID as `repo`: a token for DID A never writes to DID B.
"""

from __future__ import annotations

import re
from typing import Any

from wid import config
from wid.core import uri
from wid.core.errors import Forbidden, InvalidRequest, NotFound, UnsupportedMediaType, UpstreamFailed
from wid.core.strictjson import parse_json_object
from wid.log import log
from wid.net import upstream
from wid.net.safe_http import HttpResult
from wid.store import audit
from wid.upstreams.atproto import identity
from wid.upstreams.atproto import session as atproto_session
from wid.upstreams.atproto.context import API
from wid.upstreams.atproto.dpop_http import Nonces, dpop_request, wants_nonce

_NSID = re.compile(r"^(?=.{5,317}$)[a-zA-Z](?:[a-zA-Z0-9-]{0,62})(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,62})){1,}"
                   r"\.[a-zA-Z][a-zA-Z0-9]{0,62}$")
REPO_WRITES = frozenset({"com.atproto.repo.createRecord", "com.atproto.repo.putRecord",
                         "com.atproto.repo.deleteRecord", "com.atproto.repo.applyWrites"})


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
    if not body.strip():
        if writes:
            raise InvalidRequest(f"{nsid} needs a JSON body naming the repo")
        return
    params: dict[str, Any] = parse_json_object(body)
    repo = params.get("repo")
    if repo is None and writes:
        raise InvalidRequest(f'{nsid} needs "repo": the DID of this token\'s context, {did}')
    if repo is not None and repo != did:
        reason = (f'"repo" is {str(repo)[:100]!r}, but this token acts for {did}; repository-writing procedures '
                  f"through this proxy can only write the DID of the token's context (name it as the DID)")
        audit.record("xrpc", "deny", api=API, actx=did, nsid=nsid, reason=reason)
        raise Forbidden(reason)


def _refused_token(result: HttpResult) -> bool:
    return result.status == 401 and not wants_nonce(result)


def send(did: str, method: str, nsid: str, query_string: str, *, body: bytes, headers: dict[str, str]) -> HttpResult:
    """Send an authorized XRPC request to the DID's PDS with its session (see the module docstring)."""
    if not uri.is_verbatim_query(query_string):
        raise InvalidRequest("the query string has characters that must be percent-encoded")
    data = atproto_session.stored_session(did)
    document = identity.resolve_did(did)
    if document.pds != data["pds"]:
        raise atproto_session.pds_changed(did, str(data["pds"]), document.pds)
    session = atproto_session.session(did, data=data)
    url = f"{data['pds']}/xrpc/{nsid}" + (f"?{query_string}" if query_string else "")
    limit = config.settings().atproto_max_response_bytes
    nonces = Nonces()
    for attempt in (1, 2):
        result = dpop_request(method, url, session.dpop_key, service="atproto_pds",
                              what=f"the PDS {data['pds']} ({nsid})", nonces=nonces,
                              body=(lambda: body) if method == "POST" else None,
                              headers=headers, access_token=session.access_token, limit=limit)
        if attempt == 1 and _refused_token(result):
            log("atproto_token_refused", level="warning", did=did, nsid=nsid)
            nonces.flush()
            session = atproto_session.session(did, rejected=session.access_token)
            continue
        break
    nonces.flush()
    if result.status == 401:
        raise UpstreamFailed(f"the PDS {data['pds']} refused {did}'s freshly refreshed "
                             f"access token; {atproto_session.sign_in_again(did)}", code="upstream_unauthorized")
    log("atproto_forwarded", did=did, nsid=nsid, status=result.status)
    if result.status >= 500:
        # The session is untouched; the 502 names the PDS (with its Retry-After).
        raise upstream.server_error(f"the PDS {data['pds']}", result.status, result.body,
                                    result.headers.get("retry-after"), nsid)
    return result
