"""`wid doctor`: the checks an operator would otherwise run by hand, one line each with the fix.

    ok    settings       THIS_ENDPOINT https://wid.example.com, SQLite in /var/lib/wid
    FAIL  jwks-served    https://wid.example.com/.well-known/jwks answered 2 different key sets in 6 tries ...
          fix: another process answers on this address (a second instance on PORT, a stale replica) ...

Exit status 1 when a check fails (warnings do not), 2 for a usage error; --json prints one object per
line. Checks that need the network are bounded (a few seconds each) and never change anything.
"""

import argparse
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

from wid import config

TIMEOUT = 5.0
JWKS_TRIES = 6
MAX_SKEW = 30  # seconds: the tokens' leeway (lib/wid/core/tokens.py)


class Check(NamedTuple):
    status: str  # ok | warn | FAIL
    name: str
    detail: str
    fix: str = ""


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    # THIS_ENDPOINT and DIGITALOCEAN_API_URL: http(s) URLs the operator configured (lib/wid/config.py checks them)
    request = urllib.request.Request(url, headers={"User-Agent": "wid-doctor", "Cache-Control": "no-cache"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 (the operator's own URLs)
            return response.status, dict(response.headers.items()), response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read(1 << 16)


def check_settings() -> Iterator[Check]:
    try:
        settings = config.settings()
    except config.ConfigError as exc:
        yield Check("FAIL", "settings", str(exc), "set the variable named above, then run wid doctor again")
        return
    database = "PostgreSQL (DATABASE_URI)" if settings.database_uri else f"SQLite in {settings.data_dir}"
    yield Check("ok", "settings", f"THIS_ENDPOINT {settings.this_endpoint}, {database}")


def check_database() -> Iterator[Check]:
    from wid.store import encryption, storage

    try:
        db = storage.database()
        pending = db.pending_migrations()  # before any transaction: doctor applies nothing
        if pending:
            yield Check("FAIL", "database", f"{len(pending)} migration(s) of this release not applied "
                        f"({', '.join(pending[:3])})", "run wid setup (make run does)")
            return
        with db.transaction(write=False) as tx:
            encryption.check_key(tx)
    except (storage.DatabaseUnavailable, config.ConfigError) as exc:
        yield Check("FAIL", "database", str(exc), "check DATABASE_URI (or WID_DATA_DIR) and WID_SECRET_KEY; "
                    "wid setup prepares a new database")
        return
    yield Check("ok", "database", f"{db.dialect} reachable; WID_SECRET_KEY reads it")


def check_keys() -> Iterator[Check]:
    from wid.store import keys, wellknown

    active = [k for k in keys.listing() if k.state == "active"]
    if not active:
        yield Check("FAIL", "signing-key", "no active signing key", "run wid setup")
        return
    kid = active[0].kid
    published = wellknown.published_kids()
    if kid not in published:
        yield Check("FAIL", "jwks-file", f"the active key {kid} is not in the published JWKS file",
                    "run wid keys publish (run.sh republishes every WID_PUBLISH_INTERVAL seconds)")
        return
    yield Check("ok", "jwks-file", f"active key {kid} is published ({len(published)} key(s) in the file)")


def check_served_jwks() -> Iterator[Check]:
    """THIS_ENDPOINT serves the key set the database holds, every time (a second instance or a stale
    replica behind the same address answers some of the requests with another set)."""
    from wid.store import keys

    endpoint = config.settings().this_endpoint
    url = f"{endpoint}/.well-known/jwks"
    expected = {jwk["kid"] for jwk in keys.published()}
    seen: list[frozenset[str]] = []
    for _ in range(JWKS_TRIES):
        try:
            status, _, body = _get(url)
            kids = frozenset(str(k.get("kid")) for k in json.loads(body).get("keys", []) if isinstance(k, dict))
        except (OSError, ValueError, AttributeError) as exc:
            yield Check("FAIL", "jwks-served", f"{url}: {exc}", "start the server (make run), or set THIS_ENDPOINT "
                        "to the address clients use")
            return
        if status != 200:
            yield Check("FAIL", "jwks-served", f"{url} answered HTTP {status}", "check the server's log")
            return
        seen.append(kids)
    distinct = set(seen)
    if len(distinct) > 1:
        yield Check("FAIL", "jwks-served", f"{url} answered {len(distinct)} different key sets in {JWKS_TRIES} tries",
                    "another process answers on this address (a second instance on PORT, a stale replica or load "
                    "balancer target); stop it")
    elif seen[0] != expected:
        missing = sorted(expected - seen[0])
        yield Check("FAIL", "jwks-served", f"{url} lacks {', '.join(missing) or 'nothing'} and has "
                    f"{', '.join(sorted(seen[0] - expected)) or 'nothing'} more than this database",
                    "this server is not the one THIS_ENDPOINT reaches, or a cache serves an old set: "
                    "check THIS_ENDPOINT and DATABASE_URI, then wid keys publish")
    else:
        yield Check("ok", "jwks-served", f"{url} serves the database's {len(expected)} key(s), {JWKS_TRIES} times")


def check_oauth_client() -> Iterator[Check]:
    settings = config.settings()
    callback = f"{settings.this_endpoint}/auth/digitalocean/v1/callback"
    if not (settings.do_oauth_client_id and settings.do_oauth_client_secret):
        yield Check("warn", "oauth-client", "no DigitalOcean OAuth application: teams cannot connect",
                    f"register one with the callback URL {callback}, then set DIGITALOCEAN_OAUTH_CLIENT_ID and "
                    "DIGITALOCEAN_OAUTH_CLIENT_SECRET (docs/operator.md)")
        return
    insecure = settings.this_endpoint.startswith("http://") and not config.is_loopback_host(
        settings.this_endpoint.split("//", 1)[1].split(":")[0].split("/")[0])
    if insecure:
        yield Check("FAIL", "oauth-client", f"the callback URL {callback} is plain http on a public name",
                    "serve THIS_ENDPOINT over https")
        return
    yield Check("ok", "oauth-client", f"client {settings.do_oauth_client_id}; callback URL {callback} (must be the "
                "one registered with DigitalOcean)")


def check_teams() -> Iterator[Check]:
    from wid.store import credentials

    rows = credentials.contexts("DigitalOcean")
    if not rows:
        yield Check("warn", "teams", "no team has connected",
                    f"an admin signs in at {config.settings().this_endpoint}/")
    now = time.time()
    for actx, status, reason, _ in rows:
        cred = credentials.get("DigitalOcean", actx)
        expires = (cred.data.get("expires_at") if cred is not None else None) or 0
        if status != credentials.ACTIVE:
            yield Check("FAIL", "team", f"{actx}: {status} ({reason or 'no reason recorded'})",
                        f"an admin of the team authorizes again at {config.settings().this_endpoint}/")
        elif isinstance(expires, int | float) and 0 < expires < now:
            yield Check("warn", "team", f"{actx}: access token expired {int(now - expires)} s ago; the next "
                        "call refreshes it")
        else:
            yield Check("ok", "team", f"{actx}: active")


def check_clock() -> Iterator[Check]:
    api = config.settings().do_api_url
    try:
        _, headers, _ = _get(f"{api}/v2/account")
        theirs = parsedate_to_datetime(headers["Date"]).timestamp()
    except (OSError, KeyError, TypeError, ValueError) as exc:
        yield Check("warn", "clock", f"cannot read the Date of {api}: {exc}", "check DIGITALOCEAN_API_URL")
        return
    skew = time.time() - theirs
    if abs(skew) > MAX_SKEW:
        yield Check("FAIL", "clock", f"this machine's clock is {skew:+.0f} s off {api}'s", "run NTP (timedatectl "
                    f"set-ntp true): tokens allow {MAX_SKEW} s of skew")
    else:
        yield Check("ok", "clock", f"{skew:+.1f} s from {api}")


def check_issuers() -> Iterator[Check]:
    from wid.service import issuers

    for issuer in config.settings().trusted_issuers:
        try:
            _, keys, _ = issuers.fetch_keys(issuer)
        except issuers.DiscoveryError as exc:
            yield Check("FAIL", "issuer", f"{issuer}: {exc}", "check the network path to it, or remove it from "
                        "WID_TRUSTED_ISSUERS")
            continue
        yield Check("ok", "issuer", f"{issuer}: discovery and {len(keys)} key(s)")


def check_rbac() -> Iterator[Check]:
    """Each stored configuration, compiled again: roles and tests that a push would now refuse."""
    from dulwich.objects import Commit

    from wid.core.rbac import cases
    from wid.core.rbac.compiler import CompileError
    from wid.store import rbac_repo, storage

    settings = config.settings()
    with storage.database().transaction(write=False) as tx:
        contexts = tx.execute("SELECT api, actx FROM rbac_configs ORDER BY api, actx")
    for api, actx in contexts:
        repo = rbac_repo.RepoId(api, actx)
        _, store, refs = rbac_repo.open_repo(repo)
        main = refs.get(rbac_repo.MAIN)
        if main is None:
            continue
        commit = store[main.encode()]
        if not isinstance(commit, Commit):
            continue
        files, _ = rbac_repo.tree_files(store, commit.tree)
        try:
            cases.compile_and_test(files, api=api, actx=actx, issuer=settings.this_endpoint,
                                   trusted_issuers=list(settings.trusted_issuers),
                                   owner_claims=settings.issuer_owner_claims)
        except CompileError as exc:
            yield Check("warn", "rbac", f"api://{api}?actx={actx} serves, but its next push would be refused: "
                        + "; ".join(exc.errors[:5]), "the team's admins fix the repo and push (docs/policies.md)")
            continue
        yield Check("ok", "rbac", f"api://{api}?actx={actx} compiles as it would today")


CHECKS: tuple[Callable[[], Iterator[Check]], ...] = (check_settings, check_database, check_keys, check_served_jwks,
                                                       check_oauth_client, check_teams, check_clock, check_issuers,
                                                       check_rbac)


def run_checks() -> list[Check]:
    results: list[Check] = []
    for check in CHECKS:
        try:
            results.extend(check())
        except Exception as exc:  # a check that cannot run is a finding, never a traceback
            results.append(Check("FAIL", check.__name__.removeprefix("check_"), f"{type(exc).__name__}: {exc}"[:300]))
        if results and results[-1].status == "FAIL" and check in (check_settings, check_database):
            break  # nothing else can be checked without settings and a database
    return results


def cmd_doctor(args: argparse.Namespace) -> int:
    results = run_checks()
    for result in results:
        if args.json:
            print(json.dumps(result._asdict(), sort_keys=True))
        else:
            print(f"{result.status:5} {result.name:12} {result.detail}")
            if result.fix and result.status != "ok":
                print(f"{'':18} fix: {result.fix}")
    return 1 if any(r.status == "FAIL" for r in results) else 0


def register(sub: Any) -> None:
    parser = sub.add_parser("doctor", help="check this server's settings, database, keys, address, teams, clock and "
                            "issuers; exit 1 if a check fails", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="one JSON object per check and line")
    parser.set_defaults(func=cmd_doctor)
