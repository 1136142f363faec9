"""Issuer metadata through Caddy: discovery and JWKS are static files, so no Python runs per request.

For scale, the same numbers for /health/ready, which starts a Python CGI process per request.
Usage: .venv/bin/python bench/bench_wellknown.py [--count N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import get, measure, report, start_proxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    proxy = start_proxy()
    try:
        for path in ("/.well-known/openid-configuration", "/.well-known/jwks"):
            measure(proxy.port, get(path), 100)  # warm up
            report(f"GET {path}", measure(proxy.port, get(path), args.count))
            report(f"GET {path}", measure(proxy.port, get(path), args.count, concurrency=8))
        cgi = max(args.count // 20, 50)
        report("GET /health/ready (a Python CGI process)", measure(proxy.port, get("/health/ready"), cgi))
        report("GET /health/ready (a Python CGI process)", measure(proxy.port, get("/health/ready"), cgi, 8))
    finally:
        proxy.stop()


if __name__ == "__main__":
    main()
