"""`wid demo`, steps 1-6: the stand-ins and the proxy, the team's OAuth authorization, the RBAC repo's first
push, and the Droplet's creation and first boot (its host key proven over SSH). Each step returns a one-line
summary of what it showed, or raises StepFailed saying how the proxy did not behave as the articles say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import requests

from devkit.demo.console import Shell
from devkit.demo.context import (
    DATA_ROLE,
    DROPLET_ROLE,
    TEAM_NAME,
    Context,
    StepFailed,
    audience,
    expect,
    have,
    ran_ok,
    unverified_claims,
)
from devkit.demo.signals import critical
from devkit.do_world import DATABASE_UUID, START, World, pydo_client
from devkit.git_helpers import ARTICLE_FIRST_PUSH, GitUser, article_files, write_files
from devkit.sshd import DROPLET_PATH, FakeDroplet, SshdPool
from devkit.standins.github_oidc import GitHubOIDCStandIn

DROPLET_TAG = f"oidc-sub:role:{DROPLET_ROLE}"


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
    ran_ok(ran, "curl")
    c.output(ran.stdout, max_lines=4)
    issuer = json.loads(ran.stdout).get("issuer")
    expect(issuer == ctx.url, f"the discovery document names issuer {issuer!r}, not {ctx.url}")
    return f"proxy serving {ctx.url} (its own OIDC issuer), stand-ins up"


# -- 2. OAuth --------------------------------------------------------------------------------------------------

def authorize_team(ctx: Context) -> str:
    c, url, do = ctx.console, ctx.url, ctx.w.stand_in
    c.note("The admin opens the proxy in a browser and authorizes it for a team (DigitalOcean's OAuth web flow);\n"
           "here a requests.Session is the browser, cookies and all.")
    browser = requests.Session()
    c.action(f"GET {url}/")
    landing = browser.get(f"{url}/", timeout=10)
    expect(landing.status_code == 200 and "OAuth client configured" in landing.text,
            f"the landing page answered {landing.status_code} without 'OAuth client configured'")
    c.output("landing page: OAuth client configured; button 'Authorize'")
    c.action(f"POST {url}{START}     (the Authorize button)")
    started = browser.post(f"{url}{START}", allow_redirects=False, timeout=10)
    expect(started.status_code == 303, f"the Authorize button answered {started.status_code}, not a redirect")
    c.output(f"{started.status_code} -> {started.headers['Location']}", max_lines=2)
    c.action(f'GET (DigitalOcean\'s consent page); choose team "{TEAM_NAME}"; POST "Authorize application"')
    callback = ctx.w.consent(browser, ctx.team, start=started)
    c.output(f"302 -> {callback}")
    c.action("GET (the callback above)")
    done = browser.get(callback, allow_redirects=False, timeout=15)
    home = f"{url}/?connected={ctx.team}"
    expect(done.status_code == 303 and done.headers.get("Location") == home,
            f"the callback answered {done.status_code} {done.text[:300]}")
    c.output(f"303 -> {home}")
    page = browser.get(home, timeout=10).text
    expect(f"Team {TEAM_NAME} is connected" in page, "the landing page does not show the team as connected")
    expect(do.requests_to("/v1/oauth/token", "POST"), "the proxy never redeemed the code at DigitalOcean")
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
    ran = ctx.git(FIRST_PUSH)
    expect("remote: wid: main is now" in ran.stderr, "git push did not report the configuration as compiled")
    return "pushed; the proxy compiled the roles and policies and committed rbac.json to the schema branch"


def view_config(ctx: Context) -> str:
    shell = have(ctx.admin_shell, "the admin's shell")
    ran = shell.run("git fetch --all && git show deploy/schema:rbac.json | jq", show_stderr=True)
    ran_ok(ran, "git show")
    compiled = json.loads(ran.stdout[ran.stdout.index("{"):])
    roles = compiled.get("roles", {})
    expect(set(roles) == {DROPLET_ROLE, DATA_ROLE}, f"rbac.json has roles {sorted(roles)}")
    sub = roles[DATA_ROLE].get("sub")
    expect(sub == f"actx:{ctx.team}:role:{DATA_ROLE}", f"{DATA_ROLE} has sub {sub!r}: {{actx}} not the team")
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
        ran_ok(Shell(c, ctx.tmp, env, None).run(DOCTL_CREATE), "doctl")
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
    expect(len(created) == 1, f"DigitalOcean has {len(created)} Droplets named test-droplet-0001")
    ctx.droplet_id = int(created[0]["id"])
    sent = do.requests_to("/v2/droplets", "POST")[-1]
    expect(sent.authorization == f"Bearer {ctx.pat}", "the team's token did not go upstream as it was")
    user_data = created[0]["user_data"] or ""
    expect(user_data.startswith("#cloud-config"), "the Droplet's user_data is not the proxy's cloud-config")
    tokens = [w for w in user_data.replace('"', " ").replace("'", " ").split() if w.startswith("eyJ")]
    expect(len(tokens) == 1, "user_data does not carry exactly one provisioning token")
    sub = unverified_claims(tokens[0])["sub"]
    expect(sub.startswith(f"actx:{ctx.team}:role:provisioning:nonce:"), f"provisioning token sub {sub!r}")
    c.output(f"DigitalOcean received user_data: {len(user_data)} bytes of cloud-config with a one-use provisioning "
             f"token,\nsub {sub}")
    return f"Droplet {ctx.droplet_id} created through the proxy, cloud-init provisioning injected"


def first_boot(ctx: Context) -> str:
    c, do, sshd = ctx.console, ctx.w.stand_in, have(ctx.sshd, "the sshd")
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
    expect(ran.returncode == 0, f"the provisioning script exited with status {ran.returncode}")
    files = vm.secrets()
    c.command("ls /root/secrets/digitalocean.com/serviceaccount/")
    c.output("  ".join(sorted(files)))
    claims = ctx.verify(files["token"], audience(ctx.team))
    expected = f"actx:{ctx.team}:role:{DROPLET_ROLE}"
    expect(claims["sub"] == expected and claims.get("droplet_id") == ctx.droplet_id,
            f"the workload token has sub {claims['sub']!r}, droplet_id {claims.get('droplet_id')}")
    expect("enable --now wid-token-refresh.timer" in vm.systemctl_calls(), "the refresh timer was not enabled")
    ctx.droplet_shell = Shell(c, vm.root, {"PATH": DROPLET_PATH, "HOME": str(vm.root / "root"), "LANG": "C.UTF-8",
                                           "DROPLET_ROOT": str(vm.root)}, ctx.tmp / "droplet-shell.sh")
    return f"host key attested over SSH; workload token sub {expected}"
