#!/usr/bin/env python3
"""POST /v1/oidc/issue and POST /v1/oidc/token: token exchange under policy."""
from wid.web.handlers.oidc_issue import handler
from wid.web.http import run_cgi

run_cgi(handler)
