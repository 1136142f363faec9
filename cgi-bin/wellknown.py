#!/usr/bin/env python3
"""GET /.well-known/openid-configuration and /.well-known/jwks when no static file exists yet."""
from wid.web.handlers.wellknown import handler
from wid.web.http import run_cgi

run_cgi(handler)
