#!/usr/bin/env python3
"""GET /health/ready: readiness, including the database."""
from wid.web.app import run_cgi
from wid.web.handlers.health import handler

run_cgi(handler)
