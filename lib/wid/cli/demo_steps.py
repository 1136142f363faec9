"""The steps of `wid demo`, in the articles' order. Each returns a one-line summary of what it showed, or
raises StepFailed saying how the proxy did not behave as the articles say.

The parts come from the checkout's test helpers, so the demo and the test suite drive the system the
same way: the DigitalOcean stand-in and the proxy under scripts/run.sh (`World`), the admin's git
with the articles' credential helper (`GitUser`), the sshd "Droplet" and the real cloud-init script
(`SshdPool`, `FakeDroplet`), the GitHub Actions OIDC stand-in.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from devkit.do_world import DATABASE_UUID, START, World, pydo_client
from devkit.git_helpers import ARTICLE_FIRST_PUSH, ARTICLE_GHA_PUSH, GitUser, article_files, write_files
from devkit.sshd import DROPLET_PATH, FakeDroplet, Sshd, SshdPool
from devkit.standins.github_oidc import GITHUB_ISSUER, GitHubOIDCStandIn
from wid.cli.demo import Console, Fault, Ran, Shell, StepFailed, critical

TEAM_NAME = "Demo Team"
DROPLET_ROLE = "ex-database-and-spaces-keys-access"
DATA_ROLE = "database-and-spaces-keys-access"
DROPLET_TAG = f"oidc-sub:role:{DROPLET_ROLE}"
SECRETS = "${DROPLET_ROOT}/root/secrets/digitalocean.com/serviceaccount"
GHA_REPOSITORY, GHA_WORKFLOW = "org/repo", "do-wid.yml"


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
        return _have(self.world, "the proxy")

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
        import jwt

        metadata = requests.get(f"{self.url}/.well-known/openid-configuration", timeout=10).json()
        key = jwt.PyJWKClient(metadata["jwks_uri"]).get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=["RS256"], audience=audience,
                                            issuer=self.url)
        return claims


def _have(value: Any, what: str) -> Any:
    if value is None:
        raise StepFailed(f"{what} is not there (an earlier step did not run)")
    return value


def _expect(condition: object, message: str) -> None:
    if not condition:
        raise StepFailed(message)


def _ran_ok(ran: Ran, what: str) -> None:
    if ran.returncode == 22:  # curl -f
        raise StepFailed(f"{what}: curl exited with status 22, an HTTP error from the proxy (its log is below)")
    _expect(ran.returncode == 0, f"{what} exited with status {ran.returncode}")


def unverified_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def audience(team: str) -> str:
    return f"api://DigitalOcean?actx={team}"


# -- 1. the stand-ins and the proxy ----------------------------------------------------------------------------

def start_services(ctx: Context) -> str:
    c = ctx.console
    c.note("What cannot run here is replaced by the checkout's stand-ins (devkit/standins/), which follow the\n"
           "real services' documented requests and responses.")
    ctx.gh = gh = GitHubOIDCStandIn()
    gh.start()
    c.info(f"GitHub Actions OIDC issuer stand-in:   {gh.issuer}")
    with critical():  # the sshd's process is known to the clean-up only once start() returns
        ctx.sshds = SshdPool()
        ctx.sshd = sshd = ctx.sshds.start()
    c.info(f"the Droplet-to-be: OpenSSH sshd at {sshd.address}:{sshd.port} with fresh host keys (devkit/sshd.py)")
    env = {"WID_DROPLET_SSH_PORT": str(sshd.port), "WID_DROPLET_SSH_TIMEOUT": "5", "WID_UPSTREAM_TIMEOUT": "10",
           "WID_TRUSTED_ISSUERS": gh.issuer, "WID_ISSUER_OWNER_CLAIMS": f"{gh.issuer}=github",
           "WID_ALLOW_INSECURE_ISSUERS": "1", "WID_CGI_WORKERS": "4"}
    with critical():
        ctx.world = world = World.start(ctx.tmp / "proxy" / "data", env)
    do = world.stand_in
    c.info(f"DigitalOcean API + OAuth stand-in:     {do.url}")
    team = do.add_team(TEAM_NAME)
    ctx.team, ctx.pat = team.uuid, do.add_token(team.uuid)
    do.set_next_public_ipv4(sshd.address)  # the next Droplet's public IPv4 is where that sshd listens
    for name, tags, uuid in (("backend", ["my-tag"], DATABASE_UUID), ("analytics", ["my-tag"], None),
                             ("billing", [], None)):
        do.add_database(team.uuid, name, tags, uuid=uuid)
    # What DigitalOcean itself answers the team's own token: what the workloads must get through the proxy.
    listed = requests.get(f"{do.url}/v2/databases", headers={"Authorization": f"Bearer {ctx.pat}"}, timeout=10)
    ctx.database_uris = {db["name"]: db["connection"]["uri"] for db in listed.json()["databases"]}
    c.info(f'  team "{TEAM_NAME}" {team.uuid}, a personal access token (what `doctl auth token` prints),\n'
           f"  databases backend ({DATABASE_UUID}, tag my-tag), analytics (tag my-tag), billing")
    for fault in ctx.faults:
        do.fail_next(fault.path, fault.status, method=fault.method)
        c.info(f"  fault (--fault): the next {fault.method} {fault.path} is answered {fault.status}")
    shown = [f"{k}={v}" for k, v in sorted(world.proxy.env.items())
             if k.startswith(("PORT", "WID_", "THIS_", "DIGITALOCEAN_")) and "SECRET" not in k]
    shown.append("DIGITALOCEAN_OAUTH_CLIENT_SECRET=…")
    c.note("The proxy, as `make run` serves it (Caddy + fcgiwrap + cgi-bin/), on a free port, SQLite in a scratch dir:")
    c.command("".join(f"{' '.join(shown[i:i + 2])} \\\n" for i in range(0, len(shown), 2)) + "scripts/run.sh")
    shell = Shell(c, ctx.tmp, {"PATH": DROPLET_PATH, "THIS_ENDPOINT": ctx.url, "LANG": "C.UTF-8"}, None)
    ran = shell.run('curl -s "${THIS_ENDPOINT}/.well-known/openid-configuration" | jq', quiet=True)
    _ran_ok(ran, "curl")
    c.output(ran.stdout, max_lines=4)
    issuer = json.loads(ran.stdout).get("issuer")
    _expect(issuer == ctx.url, f"the discovery document names issuer {issuer!r}, not {ctx.url}")
    return f"proxy serving {ctx.url} (its own OIDC issuer), stand-ins up"


# -- 2. OAuth --------------------------------------------------------------------------------------------------

def authorize_team(ctx: Context) -> str:
    c, url, do = ctx.console, ctx.url, ctx.w.stand_in
    c.note("The admin opens the proxy in a browser and authorizes it for a team (DigitalOcean's OAuth web flow);\n"
           "here a requests.Session is the browser, cookies and all.")
    browser = requests.Session()
    c.action(f"GET {url}/")
    landing = browser.get(f"{url}/", timeout=10)
    _expect(landing.status_code == 200 and "OAuth client configured" in landing.text,
            f"the landing page answered {landing.status_code} without 'OAuth client configured'")
    c.output("landing page: OAuth client configured; button 'Authorize'")
    c.action(f"POST {url}{START}     (the Authorize button)")
    started = browser.post(f"{url}{START}", allow_redirects=False, timeout=10)
    _expect(started.status_code == 303, f"the Authorize button answered {started.status_code}, not a redirect")
    c.output(f"{started.status_code} -> {started.headers['Location']}", max_lines=2)
    c.action(f'GET (DigitalOcean\'s consent page); choose team "{TEAM_NAME}"; POST "Authorize application"')
    callback = ctx.w.consent(browser, ctx.team, start=started)
    c.output(f"302 -> {callback}")
    c.action("GET (the callback above)")
    done = browser.get(callback, allow_redirects=False, timeout=15)
    home = f"{url}/?connected={ctx.team}"
    _expect(done.status_code == 303 and done.headers.get("Location") == home,
            f"the callback answered {done.status_code} {done.text[:300]}")
    c.output(f"303 -> {home}")
    page = browser.get(home, timeout=10).text
    _expect(f"Team {TEAM_NAME} is connected" in page, "the landing page does not show the team as connected")
    _expect(do.requests_to("/v1/oauth/token", "POST"), "the proxy never redeemed the code at DigitalOcean")
    return f'team "{TEAM_NAME}" connected: the proxy holds its OAuth token, encrypted'


# -- 3-4. the RBAC repo over git -------------------------------------------------------------------------------

FIRST_PUSH = [
    "git init",
    "git config --global credential.\"${THIS_ENDPOINT}\".helper \\\n"
    "  '!'\"${HOME}/.local/scripts/git-credential-rbac-digitalocean.sh\"",
    "git branch -M main",
    "git add .",
    'git commit -sm "feat: configure access from droplet"',
    'git remote add deploy "${THIS_ENDPOINT}"',
    "git push -u deploy main",
]
GHA_PUSH = ["git add .", 'git commit -sm "feat: configure access from gha"', "git push"]


def _git(ctx: Context, commands: list[str]) -> Ran:
    shell = _have(ctx.admin_shell, "the admin's shell")
    ran = Ran(0, "", "")
    for command in commands:
        ran = shell.run(command, show_stderr=True)
        _ran_ok(ran, command.splitlines()[0])
    return ran


def push_rbac(ctx: Context) -> str:
    c = ctx.console
    ctx.admin = admin = GitUser(ctx.tmp / "admin", ctx.url, ctx.pat)
    repo = admin.home / "rbac"
    repo.mkdir()
    files = article_files(ARTICLE_FIRST_PUSH)
    write_files(repo, files)
    ctx.admin_shell = Shell(c, repo, admin.env, ctx.tmp / "admin-shell.sh")
    c.note(f"The admin's machine: HOME={admin.home}, with the articles' credential helper\n"
           "~/.local/scripts/git-credential-rbac-digitalocean.sh (its `doctl auth token` prints the team's token).\n"
           "rbac/ holds the articles' files (from rbac-schema/examples):\n  " + "\n  ".join(sorted(files)))
    ran = _git(ctx, FIRST_PUSH)
    _expect("remote: wid: main is now" in ran.stderr, "git push did not report the configuration as compiled")
    return "pushed; the proxy compiled the roles and policies and committed rbac.json to the schema branch"


def view_config(ctx: Context) -> str:
    shell = _have(ctx.admin_shell, "the admin's shell")
    ran = shell.run("git fetch --all && git show deploy/schema:rbac.json | jq", show_stderr=True)
    _ran_ok(ran, "git show")
    compiled = json.loads(ran.stdout[ran.stdout.index("{"):])
    roles = compiled.get("roles", {})
    _expect(set(roles) == {DROPLET_ROLE, DATA_ROLE}, f"rbac.json has roles {sorted(roles)}")
    sub = roles[DATA_ROLE].get("sub")
    _expect(sub == f"actx:{ctx.team}:role:{DATA_ROLE}", f"{DATA_ROLE} has sub {sub!r}: {{actx}} not the team")
    return f"rbac.json: roles {DROPLET_ROLE} and {DATA_ROLE}, {{actx}} replaced by the team's UUID"


# -- 5-6. the Droplet ------------------------------------------------------------------------------------------

DOCTL_CREATE = """doctl \\
    --api-url "${THIS_ENDPOINT}" \\
    compute droplet create \\
    --region sfo2 \\
    --size s-1vcpu-1gb \\
    --image ubuntu-24-04-x64 \\
    --tag-names "oidc-sub:role:ex-database-and-spaces-keys-access" \\
    test-droplet-0001"""


def create_droplet(ctx: Context) -> str:
    c, do = ctx.console, ctx.w.stand_in
    doctl = shutil.which("doctl") if ctx.client in ("auto", "doctl") else None
    if ctx.client == "doctl" and doctl is None:
        raise StepFailed("--client doctl: doctl is not installed")
    if doctl:
        c.note("doctl, pointed at the proxy (DIGITALOCEAN_ACCESS_TOKEN is the team's token):")
        env = {"PATH": str(Path(doctl).parent) + ":" + DROPLET_PATH, "HOME": str(ctx.tmp / "doctl-home"),
               "THIS_ENDPOINT": ctx.url, "DIGITALOCEAN_ACCESS_TOKEN": ctx.pat}
        _ran_ok(Shell(c, ctx.tmp, env, None).run(DOCTL_CREATE), "doctl")
    else:
        c.note("The articles' command (doctl is not installed here, so the same request is made with pydo):")
        c.output(DOCTL_CREATE, max_lines=0)
        body = {"name": "test-droplet-0001", "region": "sfo2", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64",
                "tags": [DROPLET_TAG]}
        c.action(f'pydo.Client(token=TOKEN, endpoint="{ctx.url}").droplets.create(body={json.dumps(body)})')
        answer = pydo_client(ctx.url, ctx.pat).droplets.create(body=body)
        droplet = answer["droplet"]
        c.output(json.dumps({k: droplet.get(k) for k in ("id", "name", "status", "tags")}))
    created = [d for d in do.droplets.values() if d["name"] == "test-droplet-0001" and d["team_uuid"] == ctx.team]
    _expect(len(created) == 1, f"DigitalOcean has {len(created)} Droplets named test-droplet-0001")
    ctx.droplet_id = int(created[0]["id"])
    sent = do.requests_to("/v2/droplets", "POST")[-1]
    _expect(sent.authorization == f"Bearer {ctx.pat}", "the team's token did not go upstream as it was")
    user_data = created[0]["user_data"] or ""
    _expect(user_data.startswith("#cloud-config"), "the Droplet's user_data is not the proxy's cloud-config")
    tokens = [w for w in user_data.replace('"', " ").replace("'", " ").split() if w.startswith("eyJ")]
    _expect(len(tokens) == 1, "user_data does not carry exactly one provisioning token")
    sub = unverified_claims(tokens[0])["sub"]
    _expect(sub.startswith(f"actx:{ctx.team}:role:provisioning:nonce:"), f"provisioning token sub {sub!r}")
    c.output(f"DigitalOcean received user_data: {len(user_data)} bytes of cloud-config with a one-use provisioning "
             f"token,\nsub {sub}")
    return f"Droplet {ctx.droplet_id} created through the proxy, cloud-init provisioning injected"


def first_boot(ctx: Context) -> str:
    c, do, sshd = ctx.console, ctx.w.stand_in, _have(ctx.sshd, "the sshd")
    ctx.vm = vm = FakeDroplet(ctx.tmp / "droplet", sshd, droplet_id=ctx.droplet_id)
    ipv4 = [n["ip_address"] for n in do.droplet(ctx.droplet_id)["networks"]["v4"] if n["type"] == "public"]
    c.note(f"The Droplet: DigitalOcean reports its public IPv4 {', '.join(ipv4)}, where the sshd holds its host keys."
           f"\nIts / is DROPLET_ROOT={vm.root} (metadata service: a file, systemctl: a stub).")
    runcmd = vm.install(do.droplets[ctx.droplet_id]["user_data"])
    written = [str(entry["path"]) for entry in vm.cloud_config.get("write_files", [])]  # type: ignore[attr-defined]
    c.info("cloud-init write_files: " + ", ".join(written))
    step = runcmd[0] if runcmd else None
    if not isinstance(step, list):
        raise StepFailed(f"cloud-init's runcmd does not start with the proxy's step: {runcmd}")
    first = [str(a) for a in step]
    c.command(" ".join(first) + "     # cloud-init runcmd")
    ran = vm.run(first)
    c.output(ran.stderr)
    _expect(ran.returncode == 0, f"the provisioning script exited with status {ran.returncode}")
    files = vm.secrets()
    c.command("ls /root/secrets/digitalocean.com/serviceaccount/")
    c.output("  ".join(sorted(files)))
    claims = ctx.verify(files["token"], audience(ctx.team))
    expected = f"actx:{ctx.team}:role:{DROPLET_ROLE}"
    _expect(claims["sub"] == expected and claims.get("droplet_id") == ctx.droplet_id,
            f"the workload token has sub {claims['sub']!r}, droplet_id {claims.get('droplet_id')}")
    _expect("enable --now wid-token-refresh.timer" in vm.systemctl_calls(), "the refresh timer was not enabled")
    ctx.droplet_shell = Shell(c, vm.root, {"PATH": DROPLET_PATH, "HOME": str(vm.root / "root"), "LANG": "C.UTF-8",
                                           "DROPLET_ROOT": str(vm.root)}, ctx.tmp / "droplet-shell.sh")
    return f"host key attested over SSH; workload token sub {expected}"


# -- 7-11. the workload on the Droplet: the articles' commands ------------------------------------------------

EXCHANGE = [
    f"URL=$(cat {SECRETS}/base_url)",
    f"TEAM_UUID=$(cat {SECRETS}/team_uuid)",
    f"ID_TOKEN=$(cat {SECRETS}/token)",
    'SUBJECT="actx:${TEAM_UUID}:role:database-and-spaces-keys-access"',
    """TOKEN=$(curl -sf \\
  -H "Authorization: Bearer ${ID_TOKEN}" \\
  -d@<(jq -n -c \\
    --arg aud "api://DigitalOcean?actx=${TEAM_UUID}" \\
    --arg sub "${SUBJECT}" \\
    --arg ttl 300 \\
    '{aud: $aud, sub: $sub, ttl: ($ttl | fromjson)}') \\
  "${URL}/v1/oidc/issue" \\
  | jq -r .token)""",
]
DB_BY_UUID = ['DATABASE_UUID="9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"', """curl -sf \\
  -H "Authorization: Bearer ${TOKEN}" \\
  "${URL}/v2/databases/${DATABASE_UUID}" \\
  | jq -r .database.connection.uri"""]
DB_BY_TAG = ['TAG_NAME="my-tag"', """curl -sf \\
  -H "Authorization: Bearer ${TOKEN}" \\
  "${URL}/v2/databases?tag_name=${TAG_NAME}" \\
  | jq -r .databases[].connection.uri"""]
SPACES_KEY = """curl {flags} \\
  -X POST \\
  -H "Authorization: Bearer ${{TOKEN}}" \\
  -H "Content-Type: application/json" \\
  -d@<(jq -n -c \\
    --arg name "bucket-111-read-token-droplet" \\
    --arg bucket "{bucket}" \\
    --arg perm "read" \\
    '{{name: $name, grants: [{{"bucket": $bucket, "permission": $perm}}]}}') \\
  "${{URL}}/v2/spaces/keys" \\
  | jq"""


def _droplet(ctx: Context) -> Shell:
    shell: Shell = _have(ctx.droplet_shell, "the Droplet")
    return shell


def exchange(ctx: Context) -> str:
    shell = _droplet(ctx)
    ctx.console.note("On the Droplet: read the token files, exchange the workload token for a 5-minute role token.")
    _ran_ok(shell.run(*EXCHANGE), "the token exchange")
    token = shell.peek("TOKEN")
    _expect(token.startswith("eyJ"), f"the exchange gave no token (TOKEN={token!r})")
    claims = ctx.verify(token, audience(ctx.team))
    _expect(claims["sub"] == f"actx:{ctx.team}:role:{DATA_ROLE}", f"the role token has sub {claims['sub']!r}")
    _expect(claims["exp"] - claims["iat"] == 300, f"the role token lives {claims['exp'] - claims['iat']} s, not 300")
    ctx.console.output(f"TOKEN: sub {claims['sub']}, expires in {claims['exp'] - claims['iat']} s")
    return f"role token for {DATA_ROLE} (300 s), checked against /.well-known/jwks"


def database_by_uuid(ctx: Context) -> str:
    ran = _droplet(ctx).run(*DB_BY_UUID)
    _ran_ok(ran, "curl")
    _expect(ran.stdout.strip() == ctx.database_uris["backend"], f"got {ran.stdout.strip()!r}, not backend's URI")
    return "connection string of database 9cc10173-… (backend), with its password"


def database_by_tag(ctx: Context) -> str:
    ran = _droplet(ctx).run(*DB_BY_TAG)
    _ran_ok(ran, "curl")
    got = sorted(ran.stdout.split())
    want = sorted([ctx.database_uris["backend"], ctx.database_uris["analytics"]])
    _expect(got == want, f"got {len(got)} connection strings, not those of backend and analytics (tag my-tag)")
    return "connection strings of the two databases tagged my-tag (billing, untagged, is not listed)"


def spaces_key_111(ctx: Context) -> str:
    ran = _droplet(ctx).run(SPACES_KEY.format(flags="-sf", bucket="111"))
    _ran_ok(ran, "curl")
    key = json.loads(ran.stdout).get("key", {})
    _expect(key.get("grants") == [{"bucket": "111", "permission": "read"}] and key.get("access_key"),
            f"unexpected answer {ran.stdout[:300]}")
    _expect(key["access_key"] in ctx.w.stand_in.spaces_keys, "DigitalOcean has no such key")
    return f"Spaces key {key['access_key']} for bucket 111, read"


def spaces_key_222(ctx: Context) -> str:
    c, do = ctx.console, ctx.w.stand_in
    c.note("Bucket 222 is not in the spaces-keys policy's allowed grants: the proxy refuses the request itself.")
    before = len(do.requests_to("/v2/spaces/keys", "POST"))
    shell = _droplet(ctx)
    ran = shell.run(SPACES_KEY.format(flags="-vf", bucket="222"), quiet=True)
    c.output("\n".join(line for line in ran.stderr.splitlines() if line.startswith(("< HTTP", "curl: ("))))
    _expect(ran.returncode == 22 and "< HTTP/1.1 403" in ran.stderr,
            f"expected curl to fail with 403 (exit 22); exit {ran.returncode}: {ran.stdout[:200]}")
    c.note("The same request without -f shows the reason:")
    why = shell.run(SPACES_KEY.format(flags="-s", bucket="222"))
    body = json.loads(why.stdout or "{}")
    _expect(body.get("id") == "forbidden" and "222" in body.get("message", ""),
            f"the refusal does not say why: {why.stdout[:300]}")
    _expect(len(do.requests_to("/v2/spaces/keys", "POST")) == before, "a refused request reached DigitalOcean")
    return "403 forbidden, with the rule and the parameter that failed; nothing reached DigitalOcean"


# -- 12-13. GitHub Actions -------------------------------------------------------------------------------------

GHA_ID = """AUDIENCE="api://DigitalOcean?actx=${DO_TEAM_UUID}"
GH_OIDC_TOKEN=$(curl -sf -H "Authorization: Bearer ${ACTIONS_ID_TOKEN_REQUEST_TOKEN}" \\
  "${ACTIONS_ID_TOKEN_REQUEST_URL}&audience=$(jq -rn --arg aud "${AUDIENCE}" '$aud | @uri')" \\
  | jq -r .value)
echo "oidc=${GH_OIDC_TOKEN}" >> "${GITHUB_OUTPUT}\""""
GHA_EXCHANGE = """set -eo pipefail
TOKEN=$(curl -sf \\
  -H "Authorization: Bearer ${GH_OIDC_TOKEN}" \\
  -d@<(jq -n -c \\
    --arg aud "api://DigitalOcean?actx=${DO_TEAM_UUID}" \\
    --arg sub "${SUBJECT}" \\
    --arg ttl 300 \\
    '{aud: $aud, sub: $sub, ttl: ($ttl | fromjson)}') \\
  "${DO_BASE_URL}/v1/oidc/issue" \\
  | jq -r .token)
echo "::add-mask::${TOKEN}"
echo "oidc=${TOKEN}" >> "${GITHUB_OUTPUT}\""""
GHA_DB = """set -eo pipefail
DB_URI=$(curl -sfH "Authorization: Bearer ${DO_OIDC_TOKEN}" \\
  "${DO_BASE_URL}/v2/databases/${DO_DATABASE_UUID}" \\
  | jq -r .database.connection.uri)
echo "::add-mask::${DB_URI}"
echo "uri=${DB_URI}" >> "${GITHUB_OUTPUT}\""""


def push_gha_role(ctx: Context) -> str:
    c, gh = ctx.console, _have(ctx.gh, "the GitHub stand-in")
    repo = _have(ctx.admin, "the admin").home / "rbac"
    files = {name: text.replace(GITHUB_ISSUER, gh.issuer) for name, text in article_files(ARTICLE_GHA_PUSH).items()}
    write_files(repo, files)
    c.note(f"Add the articles' {', '.join(sorted(files))};\nthe role's iss is the GitHub stand-in ({gh.issuer}) "
           f"instead of {GITHUB_ISSUER},\nand the proxy's WID_TRUSTED_ISSUERS lists it.")
    _git(ctx, GHA_PUSH)
    ran = _have(ctx.admin_shell, "the admin's shell").run(
        "git fetch -q deploy && git show deploy/schema:rbac.json | jq '.roles[\"ex-gha-readwrite\"]'")
    _ran_ok(ran, "git show")
    role = json.loads(ran.stdout)
    _expect(role.get("iss") == gh.issuer and role.get("claims", {}).get("job_workflow_ref"),
            "the compiled role ex-gha-readwrite does not name the stand-in's issuer and the workflow")
    return "pushed; role ex-gha-readwrite is in force"


def github_actions(ctx: Context) -> str:
    c, gh = ctx.console, _have(ctx.gh, "the GitHub stand-in")
    job = gh.runner_job(repository=GHA_REPOSITORY, workflow_file=GHA_WORKFLOW)
    runner = ctx.tmp / "runner"
    runner.mkdir()
    env = {"PATH": DROPLET_PATH, "HOME": str(runner), "LANG": "C.UTF-8", "DO_BASE_URL": ctx.url,
           "DO_TEAM_UUID": ctx.team, "DO_DATABASE_UUID": DATABASE_UUID, **job.env}
    shell = Shell(c, runner, env, None)
    c.note(f"A run of {GHA_REPOSITORY}'s .github/workflows/{GHA_WORKFLOW} on main (the articles' workflow), step by "
           "step;\nDO_BASE_URL, DO_TEAM_UUID, DO_DATABASE_UUID as in its env.")

    def step(name: str, script: str, **step_env: str) -> dict[str, str]:
        c.info(f"- name: {name}")
        output = runner / f"output-{len(list(runner.glob('output-*')))}"
        output.touch()
        _ran_ok(shell.run(script, env={**step_env, "GITHUB_OUTPUT": str(output)}), f"step '{name}'")
        return dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)

    c.note("core.getIDToken('api://DigitalOcean?actx=…') asks the runner's token service; that request, in curl:")
    oidc = step("Get GitHub OIDC Token", GHA_ID).get("oidc", "")
    claims = unverified_claims(oidc)
    c.output(json.dumps({k: claims.get(k) for k in ("iss", "aud", "sub", "job_workflow_ref")}, indent=1))
    role = step("Get data-readwrite token", GHA_EXCHANGE, GH_OIDC_TOKEN=oidc,
                SUBJECT=f"actx:{ctx.team}:role:{DATA_ROLE}").get("oidc", "")
    _expect(ctx.verify(role, audience(ctx.team))["sub"] == f"actx:{ctx.team}:role:{DATA_ROLE}", "wrong role token")
    uri = step("Get database connection details", GHA_DB, DO_OIDC_TOKEN=role).get("uri")
    _expect(uri == ctx.database_uris["backend"], f"the workflow read {uri!r}, not backend's connection string")
    return "GitHub's token exchanged for the role token; the workflow read the database's connection string"


# -- 14-15. refresh, audit -------------------------------------------------------------------------------------

def refresh(ctx: Context) -> str:
    c, vm = ctx.console, _have(ctx.vm, "the Droplet")
    before = vm.secrets()
    c.note("wid-token-refresh.timer runs wid-token-refresh.service every 5 minutes; its ExecStart:")
    c.command(" ".join(vm.timer_command()))
    ran = vm.run_timer()
    c.output(ran.stderr)
    _expect(ran.returncode == 0, f"the refresh script exited with status {ran.returncode}")
    after = vm.secrets()
    _expect(after["token"] != before["token"] and after["refresh_token"] != before["refresh_token"],
            "the token files were not rotated")
    claims = ctx.verify(after["token"], audience(ctx.team))
    _expect(claims["sub"] == f"actx:{ctx.team}:role:{DROPLET_ROLE}", f"the new token has sub {claims['sub']!r}")
    c.output(f"expires_at {before['expires_at']} -> {after['expires_at']}; refresh_token rotated")
    return "new workload token and refresh token on disk (the old refresh token is spent)"


def audit(ctx: Context) -> str:
    c = ctx.console
    c.command(f"wid audit --actx {ctx.team}")
    ran = ctx.w.proxy.wid("audit", "--actx", ctx.team, check=False)
    c.output(ran.stdout, max_lines=40, width=150)
    _expect(ran.returncode == 0, f"wid audit exited with status {ran.returncode}: {ran.stderr[-300:]}")
    events = {(line.split()[1], line.split()[2]) for line in ran.stdout.splitlines() if len(line.split()) > 2}
    wanted = {("oauth_connect", "allow"), ("rbac_push", "allow"), ("droplet_create", "allow"), ("prove", "allow"),
              ("exchange", "allow"), ("refresh", "allow")}
    _expect(wanted <= events, f"the audit log lacks {sorted(wanted - events)}")
    _expect(any(decision == "deny" for _, decision in events), "the refused Spaces key request is not audited")
    return "every connection, push, creation, proof, exchange, refusal and refresh is in the audit log"


STEPS: list[tuple[str, Callable[[Context], str]]] = [
    ("Start the stand-ins and the proxy", start_services),
    ("Authorize the proxy for a team (DigitalOcean OAuth web flow)", authorize_team),
    ("git push the articles' RBAC repo", push_rbac),
    ("View the compiled configuration", view_config),
    ("Create a Droplet through the proxy", create_droplet),
    ("First boot: the Droplet proves its SSH host key", first_boot),
    ("Exchange the workload token for a role token", exchange),
    ("Database connection string by UUID", database_by_uuid),
    ("Database connection strings by tag", database_by_tag),
    ("Spaces key for bucket 111", spaces_key_111),
    ("Spaces key for bucket 222 is refused", spaces_key_222),
    ("Allow a GitHub Actions workflow (second push)", push_gha_role),
    ("GitHub Actions: workflow token -> role token -> database", github_actions),
    ("Token refresh (the Droplet's timer)", refresh),
    ("The audit log", audit),
]
