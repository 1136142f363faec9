#!/usr/bin/env python3
"""Any other DigitalOcean API path with a JWT: policy check, forward with the team token."""
from wid.web.app import run_cgi
from wid.web.handlers.do_proxy import handler

run_cgi(handler)
