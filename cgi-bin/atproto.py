#!/usr/bin/env python3
"""ATProto upstream: sign-in, client metadata and JWKS, /xrpc/{nsid}."""
from wid.web.app import run_cgi
from wid.web.handlers.atproto import handler

run_cgi(handler)
