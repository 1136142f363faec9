#!/usr/bin/env python3
"""POST /v1/oidc/prove, /v1/oidc/refresh, /v1/oidc/recover[/challenge]: SSH host key attestation and refresh."""
from wid.web.handlers.oidc_prove import handler
from wid.web.http import run_cgi

run_cgi(handler)
