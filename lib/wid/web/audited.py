"""A call allowed by policy, forwarded with the credential the proxy holds, recorded before it is made.

The audit row is written first (lib/wid/store/audit.py begin_call): if that write fails the call is
not made and the caller gets 503, so every call made with a team's token or a DID's session can be
found with `wid audit --path ...`. The row then gets the status the call was answered with.
"""

from __future__ import annotations

from collections.abc import Callable

from wid.core.errors import WidError
from wid.core.policy.engine import Decision
from wid.log import log
from wid.service import authz
from wid.store import audit
from wid.web.errors import status_of
from wid.web.response import Response


def forward(principal: authz.Principal, decision: Decision, method: str, path: str,
            send: Callable[[], Response], **detail: str) -> Response:
    """Record the allowed call, make it with `send`, record what it was answered."""
    claims = principal.claims
    log("forward", api=principal.api, actx=principal.actx, sub=claims.get("sub"), jti=claims.get("jti"),
        method=method, path=path, policy=decision.policy, rule=decision.rule, **detail)
    entry = audit.begin_call("forward", api=principal.api, actx=principal.actx, sub=claims.get("sub"),
                             iss=principal.issuer, jti=claims.get("jti"), method=method, path=path,
                             policy=decision.policy, rule=decision.rule, **detail)
    try:
        response = send()
    except WidError as err:
        audit.finish_call(entry, status_of(err), err.code)
        raise
    audit.finish_call(entry, response.status)
    return response
