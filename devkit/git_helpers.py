"""Driving the real git client against the proxy, as the articles do.

`GitUser` is one admin's machine: an isolated HOME and global git config, the articles' credential
helper script (verbatim, it runs `doctl auth token`) and a fake `doctl` on PATH that prints the
token the test chose. Every git command runs with that environment, so nothing leaks in from the
real user's configuration.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "rbac-schema" / "examples"

# How the articles' credential helpers answer git (https://git-scm.com/docs/git-credential): the
# protocol and host back, then the token as the password. Verbatim, shared by every helper below.
_ANSWER_GIT = r"""while IFS='=' read -r key value; do
  if [[ -n "$key" && -n "$value" ]]; then
    if [[ "$key" == "protocol" || "$key" == "host" ]]; then
      echo "$key=$value"
    fi
  fi
done

echo "username=token"
"""

# The articles' credential helper, verbatim (series part 2, "Policies and Roles").
CREDENTIAL_HELPER = r"""#!/usr/bin/env bash

TOKEN=$(doctl auth token)

""" + _ANSWER_GIT + r"""# https://git-scm.com/docs/git-credential documents how this style of
# script works, stdin / stdout is used for communication to / from git
# and the bash process executing this script. Since we always use the
# doctl local PAT for authentication to this PoC deployment, we don't need
# to add custom logic around if this host or if this protocol, we always
# use the token for the deployed FQDN (git config --global
# credential."${THIS_ENDPOINT}".helper)
echo "password=${TOKEN}"
"""


def atproto_credential_helper(token: str) -> str:
    """The articles' ATProto credential helper, verbatim but for token: the shell command that prints it."""
    return f'#!/usr/bin/env bash\nTOKEN="{token}"\n\n{_ANSWER_GIT}echo "password=${{TOKEN}}"\n'


# The keyring lookup of the article (`python -m keyring get oidc-reverse-proxy rbac.did.token`)
# replaced by a file the test writes.
ATPROTO_CREDENTIAL_HELPER = atproto_credential_helper('$(cat "${HOME}/.config/rbac-did-token")')

FAKE_DOCTL = """#!/usr/bin/env bash
# Stand-in for `doctl auth token`: prints the token the test stored for this user.
if [[ "$1" == "auth" && "$2" == "token" ]]; then
  cat "$HOME/.config/doctl-token"
  exit 0
fi
echo "fake doctl: only 'doctl auth token' is supported" >&2
exit 1
"""

# The article's first push: the Droplet roles and policies, before the GitHub Actions and ATProto parts.
ARTICLE_FIRST_PUSH = {
    "policies/ex-database-and-spaces-keys-access.hcl": "policies/ex-database-and-spaces-keys-access.hcl",
    # The role as first shown in the article (the ATProto part later adds a policy to it).
    "droplet-roles/ex-database-and-spaces-keys-access.hcl":
        "../../tests/fixtures/rbac/article-initial-droplet-role.hcl",
    "policies/database-credential-read.hcl": "policies/database-credential-read.hcl",
    "policies/spaces-keys.hcl": "policies/spaces-keys.hcl",
    "roles/database-and-spaces-keys-access.hcl": "roles/database-and-spaces-keys-access.hcl",
}
# The article's second push ("feat: configure access from gha").
ARTICLE_GHA_PUSH = {
    "policies/ex-gha-readwrite.hcl": "policies/ex-gha-readwrite.hcl",
    "gha-roles/ex-gha-readwrite.hcl": "gha-roles/ex-gha-readwrite.hcl",
}


# The articles' ATProto section, verbatim but for the DID (a variable here) and the first push's files:
# the repository's first push, then the push of its roles and policies.
ARTICLE_ATPROTO = r"""
git init
git config --global --unset credential."${THIS_ENDPOINT}".helper
git config --global credential."${THIS_ENDPOINT}/_rbac/DigitalOcean/".helper \
  '!'"${HOME}/.local/scripts/git-credential-rbac-digitalocean.sh"
git config --global credential."${THIS_ENDPOINT}/_rbac/ATProto/".helper \
  '!'"${HOME}/.local/scripts/git-credential-rbac-atproto.sh"
git branch -M main
echo .venv/ >> .gitignore
git add .
git commit -sm "feat: setup credential helper"
git remote add deploy "${THIS_ENDPOINT}/_rbac/ATProto/${DID_PLC}"
git push -u deploy main
"""
ARTICLE_ATPROTO_ROLES = r"""
git add .
git commit -sm "feat: configure access from droplet"
git push -u deploy main

# View deployed config
git fetch --all && git show deploy/schema:rbac.json | jq
"""


def article_files(mapping: dict[str, str]) -> dict[str, str]:
    return {dest: (EXAMPLES / source).resolve().read_text() for dest, source in mapping.items()}


@dataclass
class GitResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class GitUser:
    """An admin with their own HOME, global git config, credential helper and DigitalOcean token."""

    def __init__(self, home: Path, endpoint: str, token: str, *, helper_url: str | None = None):
        self.home = home
        self.endpoint = endpoint
        (home / "bin").mkdir(parents=True, exist_ok=True)
        (home / ".config").mkdir(exist_ok=True)
        doctl = home / "bin" / "doctl"
        doctl.write_text(FAKE_DOCTL)
        doctl.chmod(0o755)
        self.set_token(token)
        scripts = home / ".local" / "scripts"
        scripts.mkdir(parents=True, exist_ok=True)
        self.helper = scripts / "git-credential-rbac-digitalocean.sh"
        self.helper.write_text(CREDENTIAL_HELPER)
        self.helper.chmod(0o700)
        self.env = {
            "PATH": f"{home / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "LANG": "C",
            "LC_ALL": "C",
            "THIS_ENDPOINT": endpoint,
        }
        self.git("config", "--global", "user.name", "Sammy the Shark", cwd=home)
        self.git("config", "--global", "user.email", "sammy@example.com", cwd=home)
        self.git("config", "--global", "init.defaultBranch", "master", cwd=home)
        self.git("config", "--global", f"credential.{helper_url or endpoint}.helper", f"!{self.helper}", cwd=home)

    def set_token(self, token: str) -> None:
        path = self.home / ".config" / "doctl-token"
        path.write_text(token)
        path.chmod(0o600)

    def git(self, *args: str, cwd: Path, check: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None) -> GitResult:
        done = subprocess.run(["git", *args], cwd=cwd, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
        result = GitResult(done.returncode, done.stdout, done.stderr)
        if check and done.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed ({done.returncode}):\n{result.output}")
        return result

    def shell(self, script: str, *, cwd: Path, check: bool = True, timeout: float = 120) -> GitResult:
        """Run a bash snippet (the articles' commands) with this user's environment."""
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        result = GitResult(done.returncode, done.stdout, done.stderr)
        if check and done.returncode != 0:
            raise AssertionError(f"script failed ({done.returncode}):\n{script}\n{result.output}")
        return result

    def new_repo(self, name: str, files: dict[str, str] | None = None, remote: str | None = None) -> Path:
        """`git init` + `git branch -M main` + files + commit, with `deploy` pointing at the proxy."""
        repo = self.home / name
        repo.mkdir()
        self.git("init", "-q", cwd=repo)
        self.git("branch", "-M", "main", cwd=repo)
        if files:
            write_files(repo, files)
            self.git("add", ".", cwd=repo)
            self.git("commit", "-qsm", "initial configuration", cwd=repo)
        self.git("remote", "add", "deploy", remote or self.endpoint, cwd=repo)
        return repo

    def commit(self, repo: Path, files: dict[str, str], message: str) -> str:
        write_files(repo, files)
        self.git("add", "-A", ".", cwd=repo)
        self.git("commit", "-qsm", message, cwd=repo)
        return self.git("rev-parse", "HEAD", cwd=repo).stdout.strip()


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def pkt_lines(data: bytes) -> list[bytes | None]:
    """Split a pkt-line stream (None for a flush-pkt)."""
    lines: list[bytes | None] = []
    pos = 0
    while pos < len(data):
        size = int(data[pos:pos + 4], 16)
        if size == 0:
            lines.append(None)
            pos += 4
            continue
        lines.append(data[pos + 4:pos + size])
        pos += size
    return lines


def demux(data: bytes) -> tuple[bytes, str]:
    """A side-band-64k response: (channel 1 bytes, channel 2 text)."""
    main, progress = b"", b""
    for line in pkt_lines(data):
        if line is None:
            continue
        if line[0] == 1:
            main += line[1:]
        elif line[0] in (2, 3):
            progress += line[1:]
    return main, progress.decode("utf-8", "replace")


def pkt(line: bytes | str) -> bytes:
    data = line.encode() if isinstance(line, str) else line
    return f"{len(data) + 4:04x}".encode() + data


def ls_remote(user: GitUser, url: str, cwd: Path) -> dict[str, str]:
    out = user.git("ls-remote", url, cwd=cwd).stdout
    refs = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        refs[name] = sha
    return refs
