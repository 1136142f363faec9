"""The ATProto upstream's routes (Caddy sends /xrpc/*, /auth/atproto/*, /oauth/atproto/* here).

GET  /oauth/atproto/client-metadata.json   the OAuth client metadata document (its URL is the client_id)
GET  /oauth/atproto/jwks.json              the client's public keys (private_key_jwt)
GET  /auth/atproto/                        sign-in page: a handle or a DID
GET|POST /auth/atproto/authorize           start: resolve, PAR, state bound to this browser, 303 to the PDS
GET  /auth/atproto/callback                finish: checks, tokens stored, the admin's RBAC token shown
GET|POST /xrpc/{nsid}                      workloads: our JWT for api://ATProto?actx={did}, policy of that
                                           DID's context, then the DID's PDS with its DPoP-bound session

Browser pages answer errors as HTML (JSON for other clients); /xrpc and /oauth always answer JSON.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from urllib.parse import parse_qsl

from wid import config
from wid.core.errors import Forbidden, InvalidRequest, MethodNotAllowed, NotFound, UnsupportedMediaType, WidError
from wid.core.policy import engine as policy
from wid.log import request_id
from wid.service import authz
from wid.store import browser_state
from wid.upstreams.atproto import client, oauth
from wid.upstreams.atproto.context import API
from wid.upstreams.atproto.xrpc import check_repo, is_json, nsid_of
from wid.web import audited
from wid.web.errors import error_response, headers_of, status_of
from wid.web.forward.atproto import forward
from wid.web.request import Request
from wid.web.response import Response

_STYLE = """
  body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #031b4e;
         background: #f5f7fa; }
  main { max-width: 820px; margin: 40px auto; padding: 24px 28px; background: #fff; border: 1px solid #dfe3eb;
         border-radius: 8px; }
  main.error { border-top: 4px solid #b3261e; }
  main.ok { border-top: 4px solid #0a7d38; }
  h1 { margin-top: 0; font-size: 24px; }
  code, pre, textarea { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 14px; }
  pre { background: #0b1733; color: #e8eefc; padding: 12px 14px; border-radius: 6px; overflow-x: auto; }
  textarea { width: 100%; height: 9em; word-break: break-all; }
  input[type=text] { font-size: 16px; padding: 8px 10px; width: 60%; border: 1px solid #9aa5b8; border-radius: 6px; }
  button { background: #0069ff; color: #fff; border: 0; border-radius: 6px; padding: 9px 20px; font-size: 16px;
           font-weight: 600; cursor: pointer; }
  .muted { color: #5b6987; font-size: 14px; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, css_class: str = "") -> str:
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="referrer" content="no-referrer">\n<title>{_esc(title)} - Workload Identity proxy</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n<main class=\"{css_class}\">\n"
            f"<h1 id=\"title\">{_esc(title)}</h1>\n"
            f"{body}\n</main>\n</body>\n</html>\n")


def _headers() -> dict[str, str]:
    # The sign-in form's answer redirects to the DID's authorization server, which is only known then.
    targets = "https:" + (" http:" if config.settings().allow_insecure_issuers else "")
    csp = (f"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'; "
           f"form-action 'self' {targets}")
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff"}


def _wants_html(request: Request) -> bool:
    return "text/html" in (request.header("Accept") or "").lower()


_TITLES = {
    "invalid_state": "This sign-in link is not valid here",
    "invalid_issuer": "The answer came from the wrong authorization server",
    "access_denied": "Authorization was not granted",
    "wrong_account": "You signed in as another account",
    "handle_unresolved": "The handle could not be resolved",
    "handle_unverified": "The handle could not be verified",
    "bad_identifier": "That is not a handle or a DID",
    "atproto_client_unavailable": "ATProto sign-in is not available on this proxy",
    "atproto_client_rejected": "The authorization server rejected this proxy",
}


def _browser_errors(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    def wrapped(request: Request) -> Response:
        try:
            return handler(request)
        except WidError as err:
            headers = headers_of(err)
            signin = request.path.rstrip("/") == client.SIGNIN_PATH.rstrip("/")
            if request.path.startswith(oauth.COOKIE_PATH) and not signin:
                headers["Set-Cookie"] = browser_state.clear_cookie_header(oauth.BINDING)
            if not _wants_html(request):
                return error_response(err, headers)
            body = (f'<p id="message">{_esc(err.message)}</p>\n<p class="muted">Error <code id="error-id">'
                    f"{_esc(err.code)}</code> (HTTP {status_of(err)}), request <code>{_esc(request_id.get())}</code>."
                    f'</p>\n<p><a id="signin" href="{_esc(client.endpoint() + client.SIGNIN_PATH)}">Sign in with '
                    f'ATProto</a> · <a id="home" href="{_esc(client.endpoint() + "/")}">Start page</a></p>')
            page = _page(_TITLES.get(err.code, "Something went wrong"), body, "error")
            return Response.html(page, status_of(err), {**headers, **_headers()})

    return wrapped


# -- the client's documents -----------------------------------------------------------------------------------


def client_metadata(request: Request) -> Response:
    return Response(200, Response.json(client.client_metadata()).body,
                    [("Content-Type", "application/json"), ("Cache-Control", f"public, max-age={client.JWKS_MAX_AGE}")])


def jwks(request: Request) -> Response:
    return Response(200, Response.json(client.jwks()).body,
                    [("Content-Type", "application/json"), ("Cache-Control", f"public, max-age={client.JWKS_MAX_AGE}")])


# -- sign-in --------------------------------------------------------------------------------------------------


def signin_page(request: Request) -> Response:
    endpoint = client.endpoint()
    hint = ""
    if not endpoint.startswith("https://"):
        hint = ('<p class="muted" id="not-available">This proxy is not served at a public https URL '
                f"(THIS_ENDPOINT is <code>{_esc(endpoint)}</code>), so ATProto authorization servers cannot fetch "
                "its client metadata: sign-in will fail until the operator sets THIS_ENDPOINT.</p>")
    body = f"""<p>Sign in with the ATProto identity (a DID) whose repository workloads of your teams may write to.
The proxy keeps the DID's OAuth session, encrypted, and shows you a token for the DID's RBAC repository at
<code>{_esc(endpoint)}/_rbac/ATProto/{{DID}}</code>.</p>
{hint}
<form id="signin-form" method="post" action="{_esc(endpoint + oauth.START_PATH)}">
  <label for="identifier">Handle or DID</label><br>
  <input type="text" id="identifier" name="identifier" placeholder="alice.bsky.social or did:plc:..." required
         autocomplete="username" spellcheck="false">
  <button type="submit">Sign in with ATProto</button>
</form>
<p class="muted">You will be sent to your PDS's authorization page to approve access
(scope <code>{_esc(config.settings().atproto_oauth_scope)}</code>).</p>"""
    return Response.html(_page("Sign in with ATProto", body), 200, _headers())


def _identifier(request: Request) -> str:
    if request.method == "POST":
        if request.content_type not in ("application/x-www-form-urlencoded", ""):
            raise UnsupportedMediaType("post the sign-in form (application/x-www-form-urlencoded)")
        pairs = parse_qsl(request.body(limit=4096).decode("utf-8", "replace"), keep_blank_values=True)
    else:
        pairs = request.query()
    values = [v for k, v in pairs if k in ("identifier", "handle")]
    if len(values) != 1 or not values[0].strip():
        raise InvalidRequest(f"name one handle or DID as the identifier parameter (the form at "
                             f"{client.endpoint()}{client.SIGNIN_PATH})")
    return values[0]


def start(request: Request) -> Response:
    flow = oauth.start(_identifier(request))
    return Response.redirect(flow.authorize_url, {"Set-Cookie": flow.set_cookie, "Referrer-Policy": "no-referrer"})


def callback(request: Request) -> Response:
    names = ("state", "iss", "code", "error", "error_description")
    connected = oauth.complete({name: request.single_query(name) for name in names}, request.header("Cookie"))
    headers = {"Set-Cookie": browser_state.clear_cookie_header(oauth.BINDING), "Referrer-Policy": "no-referrer"}
    if not _wants_html(request):
        return Response.json({"did": connected.did, "handle": connected.handle, "pds": connected.pds,
                              "rbac_token": connected.rbac_token, "expires_at": connected.rbac_expires_at,
                              "repo": f"{client.endpoint()}/_rbac/{API}/{connected.did}"}, headers=headers)
    return Response.html(_connected_page(connected), 200, {**headers, **_headers()})


def _connected_page(c: oauth.Connected) -> str:
    endpoint = client.endpoint()
    expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(c.rbac_expires_at))
    who = f"{_esc(c.handle)} (<code>{_esc(c.did)}</code>)" if c.handle else f"<code>{_esc(c.did)}</code>"
    body = f"""<p id="connected">Signed in as {who}. The proxy now holds this DID's session with its PDS
<code>{_esc(c.pds)}</code>, encrypted. Workloads reach it at <code>{_esc(endpoint)}/xrpc/...</code> with tokens for
<code>api://{API}?actx={_esc(c.did)}</code>, as this DID's roles and policies allow; until you push them, every
request is denied.</p>
<h2>Your RBAC token</h2>
<p>It opens <code id="repo">{_esc(endpoint)}/_rbac/{API}/{_esc(c.did)}</code> with git, and nothing else. It expires
{_esc(expires)}; sign in again for a new one. It is shown once: copy it now.</p>
<textarea id="rbac-token" readonly>{_esc(c.rbac_token)}</textarea>
<p>Store it with <code>keyring</code> (paste it when asked):</p>
<pre>python -m keyring set oidc-reverse-proxy rbac.did.token</pre>
<p>Then, as in the guide (<code>docs/atproto.md</code>), create the repository with the credential helper
<code>git-credential-rbac-atproto.sh</code> and push your roles and policies:</p>
<pre>export THIS_ENDPOINT="{_esc(endpoint)}"
git remote add deploy "${{THIS_ENDPOINT}}/_rbac/{API}/{_esc(c.did)}"
git push -u deploy main</pre>"""
    return _page("Signed in with ATProto", body, "ok")


# -- XRPC -----------------------------------------------------------------------------------------------------


def xrpc(request: Request) -> Response:
    principal = authz.authenticate(request.bearer_token())
    if principal.api != API:
        raise Forbidden(f"this token is for {principal.audience}; /xrpc/ accepts tokens whose aud is "
                        f"api://{API}?actx={{DID}} (exchange yours at /v1/oidc/issue)")
    method = request.method
    if method not in ("GET", "POST"):
        raise MethodNotAllowed("XRPC uses GET (queries) and POST (procedures)", allowed=["GET", "POST"])
    path = request.checked_path()
    nsid = nsid_of(path)
    body = request.body() if method == "POST" else b""
    if method == "GET" and body:
        raise InvalidRequest("an XRPC query (GET) has no body")
    content_type = request.header("Content-Type")
    try:
        params = policy.request_parameters(request.query_string, body if is_json(content_type) else None)
    except policy.ParameterError as exc:
        raise InvalidRequest(f"{exc}; policies check the JSON body and the query string, so a request they cannot "
                             "read is refused") from None
    check_repo(principal.actx, method, nsid, content_type, body)
    decision = authz.authorize(principal, method, path, params)
    return audited.forward(principal, decision, method, path, lambda: forward(principal.actx, request, path),
                           nsid=nsid)


# -- dispatch -------------------------------------------------------------------------------------------------


_BROWSER = _browser_errors(lambda request: _browser_route(request))


def _browser_route(request: Request) -> Response:
    path = request.path
    if path in ("/auth/atproto", "/auth/atproto/"):
        return _only(request, ("GET",), signin_page)
    if path.rstrip("/") == oauth.START_PATH:
        return _only(request, ("GET", "POST"), start)
    if path.rstrip("/") == client.CALLBACK_PATH:
        return _only(request, ("GET",), callback)
    raise NotFound(f"no route for {request.method} {path}")


def _only(request: Request, methods: tuple[str, ...], handler: Callable[[Request], Response]) -> Response:
    if request.method not in methods and not (request.method == "HEAD" and "GET" in methods):
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use "
                               f"{', '.join(methods)}", allowed=list(methods))
    return handler(request)


def handler(request: Request) -> Response:
    path = request.path
    if path.startswith("/xrpc/"):
        return xrpc(request)
    if path == client.METADATA_PATH:
        return _only(request, ("GET",), client_metadata)
    if path == client.JWKS_PATH:
        return _only(request, ("GET",), jwks)
    if path == "/auth/atproto" or path.startswith("/auth/atproto/"):
        return _BROWSER(request)
    raise NotFound(f"no route for {request.method} {path}")
