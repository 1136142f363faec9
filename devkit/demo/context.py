"""What the steps of `wid demo` share: the parts started so far (`Context`) and the checks that fail a step.

The parts come from the devkit, so the demo and the test suite drive the system the same way: the
DigitalOcean stand-in and the proxy under scripts/run.sh (`World`), the admin's git with the articles'
credential helper (`GitUser`), the sshd "Droplet" and the real cloud-init script (`SshdPool`,
`FakeDroplet`), the GitHub Actions OIDC stand-in.
"""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests

from devkit.demo.console import Console, Ran, Shell
from devkit.do_world import World
from devkit.git_helpers import GitUser
from devkit.sshd import FakeDroplet, Sshd, SshdPool
from devkit.standins.github_oidc import GitHubOIDCStandIn

TEAM_NAME = "Demo Team"
DROPLET_ROLE = "ex-database-and-spaces-keys-access"
DATA_ROLE = "database-and-spaces-keys-access"


class StepFailed(Exception):
    """A step did not behave as the articles say (the message says how)."""


@dataclass(frozen=True)
class Fault:
    method: str
    path: str
    status: int


def parse_fault(spec: str) -> Fault:
    parts = spec.split()
    if len(parts) != 3 or not parts[1].startswith("/") or not parts[2].isdigit():
        print(f"wid demo: --fault wants 'METHOD PATH STATUS', e.g. 'POST /v2/spaces/keys 500'; got {spec!r}",
              file=sys.stderr)
        raise SystemExit(2)  # a usage error, as argparse's
    return Fault(parts[0].upper(), parts[1], int(parts[2]))


@dataclass
class Context:
    console: Console
    tmp: Path
    client: str = "auto"
    faults: list[Fault] = field(default_factory=list)
    world: World | None = None
    gh: GitHubOIDCStandIn | None = None
    sshds: SshdPool | None = None
    sshd: Sshd | None = None
    team: str = ""
    pat: str = ""
    admin: GitUser | None = None
    admin_shell: Shell | None = None
    droplet_id: int = 0
    vm: FakeDroplet | None = None
    droplet_shell: Shell | None = None
    database_uris: dict[str, str] = field(default_factory=dict)  # name -> connection URI

    # The parts, once the step that makes them has run.
    @property
    def w(self) -> World:
        return have(self.world, "the proxy")

    @property
    def url(self) -> str:
        return self.w.url

    def close(self) -> None:
        """Stop everything this run started (whatever state it got to)."""
        for stop in (self.world.stop if self.world else None, self.gh.stop if self.gh else None,
                     self.sshds.stop if self.sshds else None):
            if stop is None:
                continue
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                self.console.write(f"wid demo: while stopping: {type(exc).__name__}: {exc}")

    def show_logs(self) -> None:
        """The proxy's last log lines (JSON lines), shortened to what they say."""
        if self.world is None:
            return
        lines = []
        for raw in self.world.proxy.log_text().strip().splitlines()[-8:]:
            try:
                entry = json.loads(raw)
            except ValueError:
                lines.append(raw)
                continue
            if entry.get("event") == "request":
                lines.append(f"{entry.get('method')} {entry.get('path')} -> {entry.get('status')}")
            else:
                skip = {"ts", "request_id", "actx", "jti"}
                lines.append(" ".join(f"{k}={v}" for k, v in entry.items() if k not in skip))
        if lines:
            self.console.write(f"  proxy log ({self.world.proxy.log_path}), last lines:")
            self.console.output("\n".join(lines), max_lines=0, width=160)

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """Check a token of ours as a third party would: the JWKS the discovery document names."""
        metadata = requests.get(f"{self.url}/.well-known/openid-configuration", timeout=10).json()
        key = jwt.PyJWKClient(metadata["jwks_uri"]).get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=["RS256"], audience=audience,
                                            issuer=self.url)
        return claims

    def git(self, commands: list[str]) -> Ran:
        """The admin's git commands in the RBAC repo, one bash run each; the first that fails fails the step."""
        shell = have(self.admin_shell, "the admin's shell")
        ran = Ran(0, "", "")
        for command in commands:
            ran = shell.run(command, show_stderr=True)
            ran_ok(ran, command.splitlines()[0])
        return ran


def have(value: Any, what: str) -> Any:
    if value is None:
        raise StepFailed(f"{what} is not there (an earlier step did not run)")
    return value


def expect(condition: object, message: str) -> None:
    if not condition:
        raise StepFailed(message)


def ran_ok(ran: Ran, what: str) -> None:
    if ran.returncode == 22:  # curl -f
        raise StepFailed(f"{what}: curl exited with status 22, an HTTP error from the proxy (its log is below)")
    expect(ran.returncode == 0, f"{what} exited with status {ran.returncode}")


def unverified_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def audience(team: str) -> str:
    return f"api://DigitalOcean?actx={team}"
