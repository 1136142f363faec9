#!/usr/bin/env python3
"""POST /v1/oidc/prove, /v1/oidc/refresh: SSH host key attestation and token refresh."""
from wid.handlers.unimplemented import handler
from wid.web import run_cgi

run_cgi(handler)
