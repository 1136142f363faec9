"""Refreshing an upstream credential (a team's DigitalOcean token, a DID's ATProto session) with no
database lock held across the call to the token endpoint.

1. Read the credential. Not due for a refresh: use it.
2. Claim the refresh in a short write transaction that re-reads the credential under its lock and
   takes the lease `refresh:{api}:{actx}` (wid.store.leases), which every process and replica respects.
3. Call the token endpoint with no transaction open.
4. Write the result in another short write transaction that re-reads the credential first. A grant is
   stored only if the refresh token it spent is still the stored one (otherwise someone stored a
   newer credential, which wins). A refusal marks the credential revoked only if, besides, this
   attempt still held the lease and had not taken it over from a holder that vanished: refresh tokens
   are single use, so a refusal after a lost race, or after a crashed holder may have spent the token,
   proves nothing; the next attempt, with a clean lease, decides.

Tokens are refreshed well before they expire (`Refresher.due`), so while one request refreshes the
others keep using the current token at once. Only a request whose token has expired, or was just
refused upstream, waits for someone else's refresh: it polls the database for at most
`call_seconds() + WAIT_SLACK_SECONDS`, then answers 503. A lease lasts long enough for the slowest
call (`lease_seconds`); a holder that crashed blocks refreshes no longer than that.
"""

import time
from typing import Any, Protocol

from wid.core.errors import Unavailable, UpstreamFailed, WidError
from wid.log import log
from wid.store import audit, credentials, leases, storage

WAIT_SLACK_SECONDS = 5.0
LEASE_SLACK_SECONDS = 30.0
_FIRST_PAUSE = 0.05
_LONGEST_PAUSE = 0.5


class Refresher(Protocol):
    api: str
    issued_by: str  # who issues the tokens, for messages: "DigitalOcean", "the authorization server"

    def call_seconds(self) -> float:
        """The longest one refresh call can take (all its requests, each with its timeout)."""

    def usable(self, actx: str, cred: credentials.Credential | None) -> dict[str, Any]:
        """The stored data to use, or raise the WidError saying why there is none (never connected, revoked)."""

    def due(self, data: dict[str, Any], now: float) -> bool:
        """Whether the access token should be refreshed now (well before it expires)."""

    def refresh(self, actx: str, data: dict[str, Any]) -> dict[str, Any] | str | WidError:
        """Spend data's refresh token: the new data to store; a str saying why the authorization is gone
        (the token endpoint refused the refresh token); or an WidError to try again later."""

    def public_view(self, data: dict[str, Any]) -> dict[str, Any]:
        """What a revoked credential keeps (what the landing page shows): never a token."""

    def revoked(self, actx: str, reason: str | None) -> WidError:
        """The error for a revoked credential."""


def lease_name(api: str, actx: str) -> str:
    return f"refresh:{api}:{actx}"


def lease_seconds(refresher: Refresher) -> float:
    return 3 * refresher.call_seconds() + LEASE_SLACK_SECONDS


class _Claimed:
    # A slotted class, not a NamedTuple (docs/architecture.md, "What a request imports").
    __slots__ = ("data", "lease", "wanted")

    def __init__(self, data: dict[str, Any], lease: leases.Claim | None, wanted: bool) -> None:
        self.data = data  # as re-read under the credential's lock
        self.lease = lease  # ours, or None: nothing to refresh, or someone else is refreshing
        self.wanted = wanted  # a refresh is still wanted after the re-read


def _left(data: dict[str, Any], now: float) -> float | None:
    expires_at = data.get("expires_at")
    return float(expires_at) - now if isinstance(expires_at, int | float) else None


def _still_good(data: dict[str, Any], rejected: str | None) -> bool:
    """The current access token may be used while a refresh is due or under way."""
    left = _left(data, time.time())
    return rejected is None and left is not None and left > 0


def _wanted(refresher: Refresher, data: dict[str, Any], rejected: str | None) -> bool:
    if rejected is not None:
        return data.get("access_token") == rejected  # else someone refreshed since the upstream refused it
    return refresher.due(data, time.time())


def current(refresher: Refresher, actx: str, *, rejected: str | None = None) -> dict[str, Any]:
    """The credential data with an access token to use, refreshed first when due (see the module doc).

    `rejected`: the upstream just refused this access token, so refresh whatever its expiry says.
    """
    patience = refresher.call_seconds() + WAIT_SLACK_SECONDS
    deadline = time.monotonic() + patience
    pause = _FIRST_PAUSE
    while True:
        data = refresher.usable(actx, credentials.get(refresher.api, actx))
        if not _wanted(refresher, data, rejected):
            return data
        claimed = _claim(refresher, actx, rejected)
        if not claimed.wanted:
            return claimed.data
        if claimed.lease is not None:
            return _refresh(refresher, actx, claimed.data, claimed.lease, rejected)
        if _still_good(claimed.data, rejected):
            return claimed.data  # another request is refreshing; this token still works meanwhile
        if time.monotonic() >= deadline:
            state = "was refused upstream" if rejected is not None else "has expired"
            raise Unavailable(f"the {refresher.api} access token of {actx} {state} and another request is refreshing "
                              f"it, which did not finish within {patience:g}s; try again shortly",
                              code="refresh_in_progress", retry_after=5)
        time.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE)


def _claim(refresher: Refresher, actx: str, rejected: str | None) -> _Claimed:
    """Step 2: re-read under the credential's lock and take the lease, in one short write transaction."""
    with credentials.locked(refresher.api, actx) as (tx, cred):
        data = refresher.usable(actx, cred)
        if not _wanted(refresher, data, rejected):
            return _Claimed(data, None, wanted=False)
        refresh_token = data.get("refresh_token")
        if isinstance(refresh_token, str) and refresh_token:
            return _Claimed(data, leases.claim(tx, lease_name(refresher.api, actx), lease_seconds(refresher)), True)
        if _still_good(data, rejected):
            return _Claimed(data, None, wanted=False)  # nothing to refresh with: use it while it lasts
        reason = f"the access token expired or was refused, and {refresher.issued_by} issued no refresh token"
        _revoke(tx, refresher, actx, data, reason)
    raise refresher.revoked(actx, reason)


def _refresh(refresher: Refresher, actx: str, data: dict[str, Any], lease: leases.Claim,
             rejected: str | None) -> dict[str, Any]:
    """Steps 3 and 4: the call with no transaction open, then the result written after a re-read."""
    try:
        outcome = refresher.refresh(actx, data)
    except BaseException:
        _release(lease)
        raise
    revoked_because: str | None = None
    with credentials.locked(refresher.api, actx) as (tx, cred):
        ours = leases.release(tx, lease)
        unchanged = (cred is not None and cred.status == credentials.ACTIVE
                     and cred.data.get("refresh_token") == data.get("refresh_token"))
        if isinstance(outcome, dict):
            if unchanged:
                credentials.put(tx, refresher.api, actx, outcome)
                audit.record("oauth_refresh", "allow", api=refresher.api, actx=actx, tx=tx,
                             expires_at=outcome.get("expires_at"))
                return outcome
            log("oauth_refresh_superseded", level="warning", api=refresher.api, actx=actx)
        elif isinstance(outcome, str) and unchanged and ours and not lease.took_over:
            _revoke(tx, refresher, actx, data, outcome)
            revoked_because = outcome
    if revoked_because is not None:
        raise refresher.revoked(actx, revoked_because)
    if not unchanged:
        return refresher.usable(actx, cred)  # someone stored a newer credential (or revoked it): that wins
    if isinstance(outcome, str):
        log("oauth_refresh_refusal_not_trusted", level="warning", api=refresher.api, actx=actx, reason=outcome)
        outcome = UpstreamFailed(f"{refresher.issued_by} refused the refresh token of {actx} ({outcome}), but an "
                                 "earlier refresh that was interrupted may have used it; the credential was kept, "
                                 "and the next refresh decides. Try again", code="oauth_refresh_inconclusive")
    assert isinstance(outcome, WidError)
    if _still_good(data, rejected):
        # The current token still works: use it, and try the refresh again on a later request.
        log("oauth_refresh_failed", level="warning", api=refresher.api, actx=actx, message=outcome.message)
        return data
    raise outcome


def _revoke(tx: storage.Transaction, refresher: Refresher, actx: str, data: dict[str, Any], reason: str) -> None:
    # Keep what the landing page shows; drop the tokens, which are worthless now.
    credentials.put(tx, refresher.api, actx, refresher.public_view(data), status=credentials.REVOKED, reason=reason)
    audit.record("oauth_refresh", "deny", api=refresher.api, actx=actx, tx=tx, reason=reason)


def _release(lease: leases.Claim) -> None:
    """After a call that raised: free the lease now (if the database cannot be reached, it expires)."""
    try:
        with storage.database().transaction() as tx:
            leases.release(tx, lease)
    except storage.DatabaseUnavailable as exc:
        log("lease_not_released", level="warning", lease=lease.name, message=str(exc))
