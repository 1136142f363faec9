"""Token exchange (POST /v1/oidc/issue) through Caddy in CGI mode: exchanges per second and latency.

Starts the proxy as `make run` does (Caddy + fcgiwrap, SQLite), seeds the articles' exchange policy
for one team, then runs sequential and concurrent exchanges with http.client over keep-alive
connections: with one of our workload tokens, and with a GitHub Actions token from the stand-in
issuer (external issuer path; its keys cached in the database after the first request). Also prints
what one CGI process costs without Caddy (the script run directly) and the import time of the
script's modules (python -X importtime), next to a bare interpreter start. Target (issue 5): median
under 50 ms per exchange on a 2-core machine. Figures only; nothing is asserted.

Usage: .venv/bin/python bench/bench_exchange.py [--count N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import measure, report, start_proxy
from devkit.seed import article_files, install_rbac, mint
from devkit.standins.github_oidc import GitHubOIDCStandIn

ROOT = Path(__file__).resolve().parent.parent

PYTHON = str(ROOT / ".venv" / "bin" / "python")
SCRIPT = ROOT / "cgi-bin" / "oidc_issue.py"
GHA_ROLE = """role "ex-gha-readwrite" {{
  iss              = "{issuer}"
  aud              = "api://DigitalOcean?actx={{actx}}"
  sub              = "repo:org/repo:ref:refs/heads/main"
  policies         = ["ex-database-and-spaces-keys-access"]
  job_workflow_ref = "org/repo/.github/workflows/do-wid.yml@refs/heads/main"
}}
"""


def post(path: str, body: bytes, token: Callable[[], str]) -> Callable[[http.client.HTTPConnection], int]:
    def run(conn: http.client.HTTPConnection) -> int:
        conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {token()}",
                                                       "Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status

    return run


def one_process(env: dict[str, str], token: str, body: bytes, rounds: int) -> list[float]:
    """The CGI script run directly (what fcgiwrap does, minus Caddy and FastCGI): wall time per process."""
    cgi_env = {**env, "REQUEST_METHOD": "POST", "REQUEST_URI": "/v1/oidc/issue", "SCRIPT_NAME": "/v1/oidc/issue",
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
               "GATEWAY_INTERFACE": "CGI/1.1", "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(body)), "HTTP_AUTHORIZATION": f"Bearer {token}"}
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        done = subprocess.run([PYTHON, "-I", str(SCRIPT)], input=body, env=cgi_env, capture_output=True, check=True)
        times.append((time.perf_counter() - started) * 1000)
        if not done.stdout.startswith(b"Status: 200"):
            raise SystemExit(f"the CGI script answered {done.stdout[:200]!r}")
    return times


def bare_interpreter(rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run([PYTHON, "-I", "-c", "pass"], check=True)
        times.append((time.perf_counter() - started) * 1000)
    return times


def import_profile(runs: int = 5) -> tuple[float, list[tuple[float, float, int, str]]]:
    """Import time of the CGI script's modules (python -X importtime): total ms, and the import tree
    (self ms, cumulative ms, depth, module) of the modules costing at least 1.5 ms, medians of `runs`."""
    code = "import wid.web.handlers.oidc_issue, wid.web.app, wid.web.cgi"
    samples: dict[tuple[int, str], list[tuple[int, int]]] = {}
    order: list[tuple[int, str]] = []
    totals: list[float] = []
    for run in range(runs):
        done = subprocess.run([PYTHON, "-I", "-X", "importtime", "-c", code], capture_output=True, text=True,
                              check=True)
        total = 0
        for line in done.stderr.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if not match:
                continue
            key = (len(match.group(3)) // 2, match.group(4))
            if run == 0:
                order.append(key)
            samples.setdefault(key, []).append((int(match.group(1)), int(match.group(2))))
            total += int(match.group(1))
        totals.append(total / 1000)
    tree = []
    for key in order:
        own = statistics.median(s for s, _ in samples[key]) / 1000
        cumulative = statistics.median(c for _, c in samples[key]) / 1000
        if cumulative >= 1.5:
            tree.append((own, cumulative, key[0], key[1]))
    return statistics.median(totals), tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    github = GitHubOIDCStandIn()
    github.start()
    proxy = start_proxy({"WID_TRUSTED_ISSUERS": github.issuer, "WID_ISSUER_OWNER_CLAIMS": f"{github.issuer}=github",
                         "WID_ALLOW_INSECURE_ISSUERS": "1"})
    try:
        team = str(uuid.uuid4())
        aud = f"api://DigitalOcean?actx={team}"
        files = {**article_files(), "gha-roles/ex-gha-readwrite.hcl": GHA_ROLE.format(issuer=github.issuer).encode()}
        install_rbac(proxy, team, files, trusted_issuers=[github.issuer])
        workload = mint(proxy, aud, f"actx:{team}:role:ex-database-and-spaces-keys-access", ttl=3600)
        body = json.dumps({"aud": aud, "sub": f"actx:{team}:role:database-and-spaces-keys-access",
                           "ttl": 300}).encode()

        def github_token() -> str:  # a fresh workflow token per request, as each job would present
            return github.mint(aud, repository="org/repo", workflow_file="do-wid.yml")

        print(f"proxy {proxy.url} (Caddy + fcgiwrap, CGI, SQLite); {os.cpu_count()} CPUs")
        exchange_workload = post("/v1/oidc/issue", body, lambda: workload)
        exchange_github = post("/v1/oidc/issue", body, github_token)
        measure(proxy.port, exchange_workload, 10)  # warm up: page cache, pyc files
        measure(proxy.port, exchange_github, 4)  # and the GitHub keys into the shared cache
        for name, request in (("workload token", exchange_workload), ("GitHub Actions token", exchange_github)):
            report(f"POST /v1/oidc/issue, {name}", measure(proxy.port, request, args.count))
            report(f"POST /v1/oidc/issue, {name}",
                   measure(proxy.port, request, args.count, concurrency=args.concurrency))
        jwks_fetches = len(github.requests_to("/.well-known/jwks"))
        print(f"GitHub JWKS fetched {jwks_fetches} time(s) for {2 * args.count + 4} exchanges (shared DB cache)")

        rounds = max(10, args.count // 10)
        direct = one_process(proxy.env, workload, body, rounds)
        bare = bare_interpreter(rounds)
        print(f"one CGI process run directly (no Caddy): median {statistics.median(direct):7.2f} ms "
              f"(bare `python -I -c pass`: {statistics.median(bare):.2f} ms)")
        total, tree = import_profile()
        print(f"imports of cgi-bin/oidc_issue.py (python -X importtime, median of 5): {total:.1f} ms; "
              "modules of 1.5 ms or more (self / cumulative):")
        for own, cumulative, depth, name in tree:
            print(f"    {own:5.1f} {cumulative:6.1f} ms  {'  ' * depth}{name}")
    finally:
        proxy.stop()
        github.stop()


if __name__ == "__main__":
    main()
