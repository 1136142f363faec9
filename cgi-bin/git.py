#!/usr/bin/env python3
"""Git smart HTTP for RBAC repos at / and /_rbac/{API}/{actx}/, behind our authentication."""
from wid.web.app import run_cgi
from wid.web.handlers.git import handler

run_cgi(handler)
