#!/usr/bin/env python3
"""POST /v2/spaces/keys, DELETE /v2/spaces/keys/{key} with a JWT: policy check, forward."""
from wid.handlers.unimplemented import handler
from wid.web import run_cgi

run_cgi(handler)
