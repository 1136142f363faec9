#!/usr/bin/env python3
"""GET /.well-known/openid-configuration and /.well-known/jwks when no static file exists yet."""
from wid.web.app import run_cgi
from wid.web.handlers.wellknown import handler

run_cgi(handler)
