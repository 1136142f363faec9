#!/usr/bin/env python3
"""GET /, /auth/digitalocean/v1/authorize and /auth/digitalocean/v1/callback: landing page, OAuth web flow."""
from wid.web.handlers.callback import handler
from wid.web.http import run_cgi

run_cgi(handler)
