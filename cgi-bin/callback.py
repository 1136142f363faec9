#!/usr/bin/env python3
"""GET /, /auth/digitalocean/v1/authorize and /auth/digitalocean/v1/callback: landing page, OAuth web flow."""
from wid.web.app import run_cgi
from wid.web.handlers.callback import handler

run_cgi(handler)
