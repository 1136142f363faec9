#!/usr/bin/env python3
"""POST /v1/oidc/prove, /v1/oidc/refresh, /v1/oidc/recover[/challenge]: SSH host key attestation and refresh."""
from wid.web.app import run_cgi
from wid.web.handlers.oidc_prove import handler

run_cgi(handler)
