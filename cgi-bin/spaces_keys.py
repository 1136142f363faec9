#!/usr/bin/env python3
"""/v2/spaces/keys* with a JWT: policy check, forward with the team token (wrapped route)."""
from wid.web.handlers.do_proxy import handler
from wid.web.http import run_cgi

run_cgi(handler)
