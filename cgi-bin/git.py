#!/usr/bin/env python3
"""Git smart HTTP for RBAC repos at / and /_rbac/{API}/{actx}/, behind our authentication."""
from wid.web.handlers.git import handler
from wid.web.http import run_cgi

run_cgi(handler)
