#!/usr/bin/env python3
"""GET /health/ready: readiness, including the database."""
from wid.handlers.health import handler
from wid.web import run_cgi

run_cgi(handler)
