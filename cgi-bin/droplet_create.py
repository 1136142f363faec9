#!/usr/bin/env python3
"""POST /v2/droplets: inject the provisioning token into user_data, forward upstream."""
from wid.handlers.droplet_create import handler
from wid.web import run_cgi

run_cgi(handler)
