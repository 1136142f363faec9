#!/usr/bin/env python3
"""GET /metrics: persistent mode only; under CGI it is the 404 of any unknown route (wid.config)."""
from wid.web.app import run_cgi
from wid.web.handlers.metrics import handler

run_cgi(handler)
