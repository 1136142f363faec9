#!/usr/bin/env python3
"""Any other DigitalOcean API path with a JWT: policy check, forward with the team token."""
from wid.web.handlers.do_proxy import handler
from wid.web.http import run_cgi

run_cgi(handler)
