"""The admin's browser: the landing page and DigitalOcean's OAuth web application flow.

GET  /                                 what this proxy is, the OAuth client's state, connected teams
GET|POST /auth/digitalocean/v1/authorize  start: state bound to this browser, 303 to DigitalOcean
GET  /auth/digitalocean/v1/callback    check state, exchange the code, resolve and store the team

Errors are HTML pages for browsers and the usual JSON for every other client, with the same status.
"""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import Callable
from functools import lru_cache
from string import Template

from wid import config
from wid.core import names
from wid.core.errors import Forbidden, InvalidRequest, WidError
from wid.log import request_id
from wid.store import browser_state, credentials
from wid.store import rbac as rbac_store
from wid.upstreams.digitalocean import oauth as do_oauth
from wid.web.app import Router
from wid.web.errors import error_response, headers_of, status_of
from wid.web.request import Request
from wid.web.response import Response

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))), "templates")
_OAUTH_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TITLES = {
    "invalid_state": "This sign-in link is not valid here",
    "access_denied": "Authorization was not granted",
    "oauth_error": "DigitalOcean reported an error",
    "invalid_grant": "DigitalOcean did not accept the authorization code",
    "team_unresolved": "The team could not be resolved",
    "oauth_client_rejected": "The proxy's OAuth client was rejected",
    "oauth_not_configured": "The OAuth client is not configured",
}


@lru_cache(maxsize=4)
def _template(name: str) -> Template:
    with open(os.path.join(TEMPLATES, name), encoding="utf-8") as template:
        return Template(template.read())


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(ts: object) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _security_headers(form_targets: str = "") -> dict[str, str]:
    endpoint = do_oauth.origin(config.settings().this_endpoint)
    csp = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; "
           f"frame-ancestors 'none'; form-action 'self' {endpoint}{form_targets}")
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff"}


def _wants_html(request: Request) -> bool:
    return "text/html" in (request.header("Accept") or "").lower()


def browser_errors(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """A domain error as an HTML page for a browser, as JSON for anything else; the flow's cookie is cleared."""

    def wrapped(request: Request) -> Response:
        try:
            return handler(request)
        except WidError as err:
            headers = headers_of(err)
            if request.path.startswith(do_oauth.COOKIE_PATH):
                headers["Set-Cookie"] = browser_state.clear_cookie_header(do_oauth.BINDING)
            if not _wants_html(request):
                return error_response(err, headers)
            page = _template("message.html").substitute(
                title=_esc(_TITLES.get(err.code, "Something went wrong")), message=_esc(err.message),
                error_id=_esc(err.code), status=status_of(err), request_id=_esc(request_id.get()),
                home=_esc(f"{config.settings().this_endpoint}/"))
            return Response.html(page, status_of(err), {**headers, **_security_headers()})

    return wrapped


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _repo_url(actx: str) -> str:
    return f"{config.settings().this_endpoint}/_rbac/{do_oauth.API}/{actx}/"


def _rbac_html(actx: str, summary: rbac_store.Summary | None) -> str:
    """The team's roles and policies as they are: in force (counts, when, which commit) or never pushed."""
    if summary is None:
        return ('<span class="status missing">Not pushed</span><br>Every workload request for this team is denied '
                f"until an admin pushes its roles and policies to <code>{_esc(_repo_url(actx))}</code>.")
    if summary.roles:
        what = f"{_count(summary.roles, 'role', 'roles')}, {_count(summary.policies, 'policy', 'policies')}"
    else:
        what = "no roles: every workload request for this team is denied"
    return (f'<span class="status active">In force</span><br>{_esc(what)}<br>'
            f'<span class="muted">pushed {_esc(_when(summary.pushed_at))}<br>commit '
            f"<code>{_esc(summary.main_commit[:12])}</code> (version {summary.version})</span>")


def _teams_html() -> str:
    rows = []
    pushed = rbac_store.summaries(do_oauth.API)
    for actx, status, reason, _updated_at in credentials.contexts(do_oauth.API):
        cred = credentials.get(do_oauth.API, actx)
        view = do_oauth.public_view(cred.data) if cred is not None else {}
        name = view.get("team_name") or "(unnamed team)"
        if status == credentials.ACTIVE:
            authorization = (f'<span class="status active">Active</span><br><span class="muted">connected '
                             f"{_esc(_when(view.get('connected_at')))}<br>token refreshed "
                             f"{_esc(_when(view.get('refreshed_at')))}</span>")
        else:
            authorization = (f'<span class="status revoked">Revoked</span><br><span class="reason">'
                             f'{_esc(reason or "authorization no longer valid")}</span><br>'
                             "Workloads of this team get an error until an admin authorizes again.")
        rows.append(f'    <tr class="team" data-team="{_esc(actx)}" data-status="{_esc(status)}" '
                    f'data-rbac="{"pushed" if actx in pushed else "missing"}">'
                    f'<td>{_esc(name)}<br><code class="muted uuid">{_esc(actx)}</code></td><td>{authorization}</td>'
                    f"<td>{_rbac_html(actx, pushed.get(actx))}</td></tr>")
    if not rows:
        return ('  <p id="no-teams">No team has authorized this proxy yet. Use <strong>Authorize</strong> below; '
                "workloads of a team get an error until it has.</p>")
    return ('  <table id="team-list">\n    <tr><th>Team</th><th>Authorization</th><th>Roles and policies</th></tr>\n'
            + "\n".join(rows) + "\n  </table>\n"
            '  <p class="muted">Each team\'s roles and policies are in its RBAC repo; <code>git show '
            "deploy/schema:rbac.json</code> in a clone shows the configuration in force. This page, which anyone "
            "can read, shows counts only.</p>")


def _notice(request: Request) -> str:
    connected = dict(request.query()).get("connected", "")
    if not names.is_team_uuid(connected):
        return ""
    cred = credentials.get(do_oauth.API, connected)
    if cred is None or cred.status != credentials.ACTIVE:
        return ""
    name = cred.data.get("team_name") or connected
    summary = rbac_store.summaries(do_oauth.API).get(connected)
    if summary is None:
        then = (f"Next, push the team's roles and policies to <code>{_esc(_repo_url(connected))}</code>; until then "
                "every workload request for this team is denied.")
    else:
        then = (f"Its roles and policies pushed {_esc(_when(summary.pushed_at))} are in force: workloads get what "
                "they allow.")
    return (f'<section class="notice" id="connected">\n  <h2>Team {_esc(name)} is connected</h2>\n'
            f"  <p>The proxy now holds an encrypted token for team <code>{_esc(connected)}</code>. {then}</p>\n"
            "</section>")


def landing(request: Request) -> Response:
    s = config.settings()
    configured = do_oauth.is_configured()
    callback = do_oauth.redirect_uri()
    if configured:
        status = (f'<span class="status active">OAuth client configured</span> Client ID '
                  f"<code>{_esc(s.do_oauth_client_id)}</code>, callback URL <code>{_esc(callback)}</code>.")
    else:
        status = ('<span class="status missing">OAuth client not configured</span> The operator must register an '
                  f"OAuth application at DigitalOcean with the callback URL <code>{_esc(callback)}</code> and set "
                  "<code>DIGITALOCEAN_OAUTH_CLIENT_ID</code> and <code>DIGITALOCEAN_OAUTH_CLIENT_SECRET</code>.")
    scopes = "\n".join(f"    <li><code>{_esc(scope)}</code></li>" for scope in do_oauth.scopes())
    page = _template("landing.html").substitute(
        notice=_notice(request), oauth_status=status, scopes=scopes,
        start_url=_esc(f"{s.this_endpoint}{do_oauth.START_PATH}"), disabled="" if configured else " disabled",
        teams=_teams_html(), endpoint=_esc(s.this_endpoint))
    oauth = f" {do_oauth.origin(s.do_oauth_url)}"
    return Response.html(page, 200, _security_headers(oauth))


def start(request: Request) -> Response:
    if not do_oauth.is_configured():
        raise do_oauth.not_configured()
    flow = do_oauth.start()
    return Response.redirect(flow.authorize_url, {"Set-Cookie": flow.set_cookie, "Referrer-Policy": "no-referrer"})


def callback(request: Request) -> Response:
    if not do_oauth.is_configured():
        raise do_oauth.not_configured()
    state, code, error = request.single_query("state"), request.single_query("code"), request.single_query("error")
    do_oauth.consume_state(state, request.header("Cookie"))
    if error is not None:
        code_name = error if _OAUTH_ERROR_CODE.match(error) else "unknown_error"
        description = (request.single_query("error_description") or "")[:300]
        detail = f"{code_name}: {description}" if description else code_name
        if code_name == "access_denied":
            raise Forbidden(f"DigitalOcean reports that the authorization was denied ({detail}); "
                            "nothing was stored. Use Authorize on the start page to try again.", code="access_denied")
        raise InvalidRequest(f"DigitalOcean ended the authorization with an error ({detail}); "
                             "nothing was stored", code="oauth_error")
    if not code:
        raise InvalidRequest("the callback has neither a code nor an error parameter")
    team_uuid, _ = do_oauth.connect(code)
    home = f"{config.settings().this_endpoint}/?connected={team_uuid}"
    return Response.redirect(home, {"Set-Cookie": browser_state.clear_cookie_header(do_oauth.BINDING),
                                    "Referrer-Policy": "no-referrer"})


_router = Router()
_router.add("GET", "/", landing)
_router.add("GET", do_oauth.START_PATH, start)
_router.add("POST", do_oauth.START_PATH, start)
_router.add("GET", do_oauth.CALLBACK_PATH, callback)
handler = browser_errors(_router)
