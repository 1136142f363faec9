#!/usr/bin/env python3
"""/v2/spaces/keys* with a JWT: policy check, forward with the team token (wrapped route)."""
from wid.web.app import run_cgi
from wid.web.handlers.do_proxy import handler

run_cgi(handler)
