"""`wid demo`: the articles' whole walkthrough on this machine, against the stand-ins, step by step.

This module holds the command line and the checks for what the demo needs. The walkthrough itself (its
steps, the stand-ins, the sshd "Droplets") is the checkout's development kit, devkit/ beside lib/: it is
not part of the installed package nor of the image, so the demo runs from a source checkout only, and
says so when devkit/ is not there. It is imported here only when the demo runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

# lib/wid/cli/demo.py -> the checkout's root.
ROOT = Path(__file__).resolve().parents[3]
DEVKIT = ROOT / "devkit"

HELP = f"""\
Runs the article series' complete walkthrough on this machine, each command shown as it runs:
DigitalOcean OAuth authorization of a team, `git push` of the articles' RBAC repo, Droplet creation
through the proxy, the Droplet's first boot (a real sshd on a loopback address and the real
cloud-init script), token exchange, database connection strings, Spaces keys (bucket 111 allowed,
bucket 222 refused), the GitHub Actions exchange, and token refresh.

Everything runs against local stand-ins for DigitalOcean and GitHub's OIDC issuer, with the proxy
served by scripts/run.sh (what `make run` runs) on a free port with a throw-away data dir; the
walkthrough talks to nothing outside this machine, and settings of a real deployment in your
environment (DATABASE_URI, WID_*, DIGITALOCEAN_*) are ignored. Every process and temporary file is
removed at the end, also on Ctrl-C. The exit status is 0 only if every step behaved as the articles
say (1 otherwise, 2 if something it needs is missing).

Needs a source checkout: the repository root is found from this package's location
({ROOT}), and devkit/ (the stand-ins, the sshd "Droplets", the steps) and scripts/run.sh are used
from there.
Needs OpenSSH's sshd, cloud-init, jq, curl and git, and the Python packages pydo, requests and PyJWT
(`scripts/install.sh --demo` installs exactly these).
"""

TOOLS = {  # command -> Debian package
    "jq": "jq", "curl": "curl", "git": "git", "ssh-keygen": "openssh-client", "bash": "bash",
    "caddy": "caddy", "fcgiwrap": "fcgiwrap",
}
PYTHON_TOOLS = {"pydo": "pydo", "requests": "requests", "jwt": "PyJWT"}  # module -> distribution
SSHD = "/usr/sbin/sshd"
SYSTEM_PYTHON = "/usr/bin/python3"  # cloud-init's own user-data processing runs under Debian's python3


def missing_requirements() -> list[str]:
    """What the demo cannot run without, each with what to install."""
    problems = []
    if not DEVKIT.is_dir():
        problems.append(f"wid demo runs from a source checkout: devkit/ not found at {DEVKIT}")
    for path in ("scripts/run.sh", "rbac-schema/examples"):
        if not (ROOT / path).exists():
            problems.append(f"{ROOT / path} is missing: `wid demo` runs from a source checkout of the proxy")
            break
    if not os.path.exists(SSHD):
        problems.append(f"OpenSSH's sshd ({SSHD}) is not installed: apt-get install openssh-server "
                        "(or scripts/install.sh --demo)")
    if not _has_cloud_init():
        problems.append(f"cloud-init is not installed for {SYSTEM_PYTHON}: apt-get install cloud-init "
                        "(or scripts/install.sh --demo)")
    for command, package in TOOLS.items():
        if shutil.which(command) is None:
            problems.append(f"`{command}` is not on PATH: apt-get install {package} (or scripts/install.sh --demo)")
    for module, distribution in PYTHON_TOOLS.items():
        if importlib.util.find_spec(module) is None:
            problems.append(f"the Python package {distribution} is not installed: scripts/install.sh --demo")
    return problems


def _has_cloud_init() -> bool:
    return any(Path(p, "cloudinit", "__init__.py").exists()
               for p in ("/usr/lib/python3/dist-packages", "/usr/local/lib/python3/dist-packages"))


def run(args: argparse.Namespace) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # ✓ and … on a terminal that cannot show them
    problems = missing_requirements()
    if problems:
        print("wid demo cannot run here:")
        for problem in problems:
            print(f"  - {problem}")
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # devkit/ is not installed: it is found in this checkout
    from devkit.demo import run as walkthrough  # the demo only: the service never imports devkit

    return walkthrough.main(client=args.client, faults=args.fault, keep=args.keep, color=args.color)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run the articles' walkthrough locally against stand-ins",
                                   description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", choices=["auto", "pydo", "doctl"], default="auto",
                        help="what creates the Droplet: doctl if it is installed (auto), else pydo")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch dir (proxy log, the RBAC repo, the Droplet's files); "
                             "processes are stopped all the same")
    parser.add_argument("--fault", action="append", default=[], metavar="'METHOD PATH STATUS'",
                        help="make the DigitalOcean stand-in answer STATUS to the next METHOD request under PATH, "
                             "to see how a step that misbehaves is reported (repeatable)")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                        help="colour the output: auto (a terminal without NO_COLOR), always or never")
    parser.set_defaults(func=run)
