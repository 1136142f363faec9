#!/usr/bin/env python3
"""ATProto upstream: sign-in, client metadata and JWKS, /xrpc/{nsid}."""
from wid.web.handlers.atproto import handler
from wid.web.http import run_cgi

run_cgi(handler)
