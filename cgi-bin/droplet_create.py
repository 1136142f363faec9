#!/usr/bin/env python3
"""POST /v2/droplets: inject the provisioning token into user_data, forward upstream."""
from wid.web.app import run_cgi
from wid.web.handlers.droplet_create import handler

run_cgi(handler)
