#!/usr/bin/env python3
"""POST /v1/oidc/issue and POST /v1/oidc/token: token exchange under policy."""
from wid.web.app import run_cgi
from wid.web.handlers.oidc_issue import handler

run_cgi(handler)
