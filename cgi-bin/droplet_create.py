#!/usr/bin/env python3
"""POST /v2/droplets: inject the provisioning token into user_data, forward upstream."""
from wid.web.handlers.droplet_create import handler
from wid.web.http import run_cgi

run_cgi(handler)
