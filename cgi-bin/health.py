#!/usr/bin/env python3
"""GET /health/ready: readiness, including the database."""
from wid.web.handlers.health import handler
from wid.web.http import run_cgi

run_cgi(handler)
