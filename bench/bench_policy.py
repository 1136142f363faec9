"""Policy evaluation speed: 1,000 path rules across 50 policies (target: under 100 microseconds a decision).

Also prints what a request-time process pays once per configuration (json.loads + CompiledRbac.from_dict)
and for request_parameters, and the admin-side compile time. Figures only; nothing is asserted.
Usage: .venv/bin/python bench/bench_policy.py [--rounds N]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wid.core.policy.engine import CompiledRbac, Decision, request_parameters
from wid.core.rbac.compiler import compile_tree

POLICIES = 50
RULES_PER_POLICY = 20
ACTX = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
AUD = f"api://DigitalOcean?actx={ACTX}"
THIS = "https://wid.example.test"


def policy_hcl(i: int) -> str:
    """20 rules: exact, + and /* patterns of this policy, plus paths shared with every other policy."""
    rules = []
    for j in range(6):
        rules.append(f'path "/v2/svc{i}/res{j}" {{\n  capabilities = ["read"]\n}}\n')
        rules.append(f'path "/v2/svc{i}/+/items{j}" {{\n  capabilities = ["read", "update"]\n}}\n')
        rules.append(f'path "/v2/svc{i}/res{j}/*" {{\n  capabilities = ["delete"]\n}}\n')
    rules.append(
        'path "/v2/spaces/keys" {\n  capabilities = ["create"]\n  allowed_parameters = {\n'
        f'    "name" = "bucket-{i}-read-token-*"\n'
        f'    "grants" = [{{ "bucket" = "{i}", "permission" = ["read", "readwrite"] }}]\n  }}\n}}\n'
    )
    rules.append(
        'path "/v2/databases" {\n  capabilities = ["read"]\n'
        f'  allowed_parameters = {{ "?" = {{ "tag_name" = ["team-{i}", "shared-*"] }} }}\n}}\n'
    )
    return "".join(rules)


def repo() -> dict[str, bytes]:
    files = {f"policies/p{i}.hcl": policy_hcl(i).encode() for i in range(POLICIES)}
    every = ", ".join(f'"p{i}"' for i in range(POLICIES))
    files["roles/all.hcl"] = (
        f'role "all" {{\n  aud = "{AUD}"\n  sub = "actx:{{actx}}:role:all"\n  policies = [{every}]\n}}\n'
    ).encode()
    for r in range(10):
        some = ", ".join(f'"p{i}"' for i in range(r * 5, r * 5 + 5))
        files[f"roles/r{r}.hcl"] = (
            f'role "r{r}" {{\n  aud = "{AUD}"\n  sub = "actx:{{actx}}:role:r{r}"\n  policies = [{some}]\n}}\n'
        ).encode()
    return files


def per_call_us(fn: Callable[[], Any], rounds: int, batch: int) -> tuple[float, float]:
    """Median and best of the per-call times of `rounds` batches, in microseconds."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter_ns() - started) / batch / 1000)
    return statistics.median(samples), min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args()

    files = repo()
    started = time.perf_counter()
    compiled = compile_tree(files, api="DigitalOcean", actx=ACTX)
    compile_s = time.perf_counter() - started
    rules = sum(len(p["rules"]) for p in compiled["policies"].values())
    text = json.dumps(compiled)
    print(f"configuration: {rules} path rules in {len(compiled['policies'])} policies, {len(compiled['roles'])} roles")
    print(f"compile (admin side, HCL parse + validation): {compile_s * 1000:9.1f} ms; rbac.json {len(text)} bytes")
    median, best = per_call_us(lambda: CompiledRbac.from_dict(json.loads(text)), 5, 5)
    print(f"load per process (json.loads + from_dict):    {median / 1000:9.2f} ms (best {best / 1000:.2f} ms)")

    rbac = CompiledRbac.from_dict(compiled)
    everything = {"iss": THIS, "aud": AUD, "sub": f"actx:{ACTX}:role:all"}
    few = {"iss": THIS, "aud": AUD, "sub": f"actx:{ACTX}:role:r3"}
    key_body = json.dumps({"name": "bucket-17-read-token-ci", "grants": [{"bucket": "17", "permission": "read"}]})
    bad_body = json.dumps({"name": "bucket-17-read-token-ci", "grants": [{"bucket": "99", "permission": "read"}]})
    key_params = request_parameters("", key_body.encode())
    bad_params = request_parameters("", bad_body.encode())
    cases: list[tuple[str, dict[str, Any], str, str, dict[str, Any], bool]] = [
        ("allow: exact path, role with 50 policies", everything, "GET", "/v2/svc42/res3", {}, True),
        ("allow: + pattern", everything, "PUT", "/v2/svc42/abc/items5", {}, True),
        ("allow: /* pattern, deep path", everything, "DELETE", "/v2/svc7/res2/a/b/c/d", {}, True),
        ("allow: body params, 50 candidate rules", everything, "POST", "/v2/spaces/keys", key_params, True),
        ("deny: body params fail in all 50 rules", everything, "POST", "/v2/spaces/keys", bad_params, False),
        (
            "allow: query glob, 50 candidate rules",
            everything,
            "GET",
            "/v2/databases",
            {"?": {"tag_name": "shared-x"}},
            True,
        ),
        ("deny: no rule matches", everything, "GET", "/v2/droplets", {}, False),
        ("deny: capability not granted", everything, "POST", "/v2/svc1/res1", {}, False),
        ("allow: role with 5 policies", few, "GET", "/v2/svc17/res0", {}, True),
        ("deny: no role matches", {**few, "sub": "x"}, "GET", "/v2/svc17/res0", {}, False),
    ]
    print(f"\n{'decision':48} {'median':>10} {'best':>10}   (target < 100 us)")
    for name, claims, method, path, params, expected in cases:
        decision: Decision = rbac.authorize(claims, THIS, method, path, params)
        if decision.allowed is not expected:
            raise SystemExit(f"{name}: unexpected decision: {decision.reason}")
        median, best = per_call_us(
            functools.partial(rbac.authorize, claims, THIS, method, path, params), args.rounds, args.batch
        )
        print(f"{name:48} {median:8.1f}us {best:8.1f}us")
    median, best = per_call_us(
        lambda: request_parameters("tag_name=a&page=2", key_body.encode()), args.rounds, args.batch
    )
    print(f"{'request_parameters (small body + query)':48} {median:8.1f}us {best:8.1f}us")


if __name__ == "__main__":
    main()
