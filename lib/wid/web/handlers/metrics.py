"""GET /metrics: the proxy's Prometheus metrics (docs/operator.md, "Metrics"), for a scraper holding
WID_METRICS_TOKEN.

Off unless WID_METRICS_TOKEN is set: then /metrics is the same 404 as any unknown route. wid.config
accepts the token in persistent mode only (a CGI process has no counters to show). The token is compared
in constant time and never logged or echoed; it is accepted in the Authorization header only, so that it
stays out of URLs and the logs that keep them.
"""

from __future__ import annotations

import hmac

from wid import config, metrics
from wid.core.errors import InvalidRequest, Misconfigured, NotFound, Unauthenticated
from wid.web.app import Router
from wid.web.request import Request
from wid.web.response import Response


def scrape(request: Request) -> Response:
    token = config.settings().metrics_token
    if token is None:
        raise NotFound("no such route on this proxy")
    presented = request.bearer_token()
    if presented is None:
        raise Unauthenticated("/metrics needs the header 'Authorization: Bearer <the token in WID_METRICS_TOKEN>'",
                              challenge="Bearer")
    if not hmac.compare_digest(presented.encode(), token.encode()):
        raise Unauthenticated("the bearer token sent to /metrics is not this proxy's WID_METRICS_TOKEN")
    if request.query_string:
        raise InvalidRequest("/metrics takes no query parameters (the token goes in the Authorization header only)")
    if not metrics.enabled():
        raise Misconfigured("WID_METRICS_TOKEN is set but this process keeps no metrics: /metrics is served by "
                            "the persistent-mode server, wid.web.serve (scripts/run.sh, WID_MODE=persistent)")
    return Response(200, metrics.exposition(), [("Content-Type", metrics.CONTENT_TYPE), ("Cache-Control", "no-store")])


handler = Router()
handler.add("GET", "/metrics", scrape)
