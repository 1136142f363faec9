#!/usr/bin/env python3
"""GET / and GET /auth/digitalocean/v1/callback: landing page and DigitalOcean OAuth web flow."""
from wid.handlers.unimplemented import handler
from wid.web import run_cgi

run_cgi(handler)
