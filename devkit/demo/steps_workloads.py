"""`wid demo`, steps 7-15: the workload on the Droplet runs the articles' commands (token exchange, database
connection strings, Spaces keys allowed and refused), a GitHub Actions workflow is allowed and run, the
Droplet's timer refreshes its token, and the audit log shows it all. Each step returns a one-line summary
of what it showed, or raises StepFailed saying how the proxy did not behave as the articles say."""

from __future__ import annotations

import json

from devkit.demo.console import Shell
from devkit.demo.context import (
    DATA_ROLE,
    DROPLET_ROLE,
    Context,
    audience,
    expect,
    have,
    ran_ok,
    unverified_claims,
)
from devkit.do_world import DATABASE_UUID
from devkit.git_helpers import ARTICLE_GHA_PUSH, article_files, write_files
from devkit.sshd import DROPLET_PATH
from devkit.standins.github_oidc import GITHUB_ISSUER

SECRETS = "${DROPLET_ROOT}/root/secrets/digitalocean.com/serviceaccount"
GHA_REPOSITORY, GHA_WORKFLOW = "org/repo", "do-wid.yml"
GHA_PUSH = ["git add .", 'git commit -sm "feat: configure access from gha"', "git push"]


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


def curl_status_lines(stderr: str) -> str:
    """The status line and the error of `curl -v`; when a response is slow, curl's progress meter (on stderr
    too, as its output goes to a pipe) shares a line with them."""
    found = []
    for line in stderr.splitlines():
        for marker in ("< HTTP", "curl: ("):
            if marker in line:
                found.append(line[line.index(marker):])
    return "\n".join(found)


def _droplet(ctx: Context) -> Shell:
    shell: Shell = have(ctx.droplet_shell, "the Droplet")
    return shell


def exchange(ctx: Context) -> str:
    shell = _droplet(ctx)
    ctx.console.note("On the Droplet: read the token files, exchange the workload token for a 5-minute role token.")
    ran_ok(shell.run(*EXCHANGE), "the token exchange")
    token = shell.peek("TOKEN")
    expect(token.startswith("eyJ"), f"the exchange gave no token (TOKEN={token!r})")
    claims = ctx.verify(token, audience(ctx.team))
    expect(claims["sub"] == f"actx:{ctx.team}:role:{DATA_ROLE}", f"the role token has sub {claims['sub']!r}")
    expect(claims["exp"] - claims["iat"] == 300, f"the role token lives {claims['exp'] - claims['iat']} s, not 300")
    ctx.console.output(f"TOKEN: sub {claims['sub']}, expires in {claims['exp'] - claims['iat']} s")
    return f"role token for {DATA_ROLE} (300 s), checked against /.well-known/jwks"


def database_by_uuid(ctx: Context) -> str:
    ran = _droplet(ctx).run(*DB_BY_UUID)
    ran_ok(ran, "curl")
    expect(ran.stdout.strip() == ctx.database_uris["backend"], f"got {ran.stdout.strip()!r}, not backend's URI")
    return "connection string of database 9cc10173-… (backend), with its password"


def database_by_tag(ctx: Context) -> str:
    ran = _droplet(ctx).run(*DB_BY_TAG)
    ran_ok(ran, "curl")
    got = sorted(ran.stdout.split())
    want = sorted([ctx.database_uris["backend"], ctx.database_uris["analytics"]])
    expect(got == want, f"got {len(got)} connection strings, not those of backend and analytics (tag my-tag)")
    return "connection strings of the two databases tagged my-tag (billing, untagged, is not listed)"


def spaces_key_111(ctx: Context) -> str:
    ran = _droplet(ctx).run(SPACES_KEY.format(flags="-sf", bucket="111"))
    ran_ok(ran, "curl")
    key = json.loads(ran.stdout).get("key", {})
    expect(key.get("grants") == [{"bucket": "111", "permission": "read"}] and key.get("access_key"),
            f"unexpected answer {ran.stdout[:300]}")
    expect(key["access_key"] in ctx.w.stand_in.spaces_keys, "DigitalOcean has no such key")
    return f"Spaces key {key['access_key']} for bucket 111, read"


def spaces_key_222(ctx: Context) -> str:
    c, do = ctx.console, ctx.w.stand_in
    c.note("Bucket 222 is not in the spaces-keys policy's allowed grants: the proxy refuses the request itself.")
    before = len(do.requests_to("/v2/spaces/keys", "POST"))
    shell = _droplet(ctx)
    ran = shell.run(SPACES_KEY.format(flags="-vf", bucket="222"), quiet=True)
    c.output(curl_status_lines(ran.stderr))
    expect(ran.returncode == 22 and "< HTTP/1.1 403" in ran.stderr,
            f"expected curl to fail with 403 (exit 22); exit {ran.returncode}: {ran.stdout[:200]}")
    c.note("The same request without -f shows the reason:")
    why = shell.run(SPACES_KEY.format(flags="-s", bucket="222"))
    body = json.loads(why.stdout or "{}")
    expect(body.get("id") == "forbidden" and "222" in body.get("message", ""),
            f"the refusal does not say why: {why.stdout[:300]}")
    expect(len(do.requests_to("/v2/spaces/keys", "POST")) == before, "a refused request reached DigitalOcean")
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
    c, gh = ctx.console, have(ctx.gh, "the GitHub stand-in")
    repo = have(ctx.admin, "the admin").home / "rbac"
    files = {name: text.replace(GITHUB_ISSUER, gh.issuer) for name, text in article_files(ARTICLE_GHA_PUSH).items()}
    write_files(repo, files)
    c.note(f"Add the articles' {', '.join(sorted(files))};\nthe role's iss is the GitHub stand-in ({gh.issuer}) "
           f"instead of {GITHUB_ISSUER},\nand the proxy's WID_TRUSTED_ISSUERS lists it.")
    ctx.git(GHA_PUSH)
    ran = have(ctx.admin_shell, "the admin's shell").run(
        "git fetch -q deploy && git show deploy/schema:rbac.json | jq '.roles[\"ex-gha-readwrite\"]'")
    ran_ok(ran, "git show")
    role = json.loads(ran.stdout)
    expect(role.get("iss") == gh.issuer and role.get("claims", {}).get("job_workflow_ref"),
            "the compiled role ex-gha-readwrite does not name the stand-in's issuer and the workflow")
    return "pushed; role ex-gha-readwrite is in force"


def github_actions(ctx: Context) -> str:
    c, gh = ctx.console, have(ctx.gh, "the GitHub stand-in")
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
        ran_ok(shell.run(script, env={**step_env, "GITHUB_OUTPUT": str(output)}), f"step '{name}'")
        return dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)

    c.note("core.getIDToken('api://DigitalOcean?actx=…') asks the runner's token service; that request, in curl:")
    oidc = step("Get GitHub OIDC Token", GHA_ID).get("oidc", "")
    claims = unverified_claims(oidc)
    c.output(json.dumps({k: claims.get(k) for k in ("iss", "aud", "sub", "job_workflow_ref")}, indent=1))
    role = step("Get data-readwrite token", GHA_EXCHANGE, GH_OIDC_TOKEN=oidc,
                SUBJECT=f"actx:{ctx.team}:role:{DATA_ROLE}").get("oidc", "")
    expect(ctx.verify(role, audience(ctx.team))["sub"] == f"actx:{ctx.team}:role:{DATA_ROLE}", "wrong role token")
    uri = step("Get database connection details", GHA_DB, DO_OIDC_TOKEN=role).get("uri")
    expect(uri == ctx.database_uris["backend"], f"the workflow read {uri!r}, not backend's connection string")
    return "GitHub's token exchanged for the role token; the workflow read the database's connection string"


# -- 14-15. refresh, audit -------------------------------------------------------------------------------------

def refresh(ctx: Context) -> str:
    c, vm = ctx.console, have(ctx.vm, "the Droplet")
    before = vm.secrets()
    c.note("wid-token-refresh.timer runs wid-token-refresh.service every 5 minutes; its ExecStart:")
    c.command(" ".join(vm.timer_command()))
    ran = vm.run_timer()
    c.output(ran.stderr)
    expect(ran.returncode == 0, f"the refresh script exited with status {ran.returncode}")
    after = vm.secrets()
    expect(after["token"] != before["token"] and after["refresh_token"] != before["refresh_token"],
            "the token files were not rotated")
    claims = ctx.verify(after["token"], audience(ctx.team))
    expect(claims["sub"] == f"actx:{ctx.team}:role:{DROPLET_ROLE}", f"the new token has sub {claims['sub']!r}")
    c.output(f"expires_at {before['expires_at']} -> {after['expires_at']}; refresh_token rotated")
    return "new workload token and refresh token on disk (the old refresh token is spent)"


def audit(ctx: Context) -> str:
    c = ctx.console
    c.command(f"wid audit --actx {ctx.team}")
    ran = ctx.w.proxy.wid("audit", "--actx", ctx.team, check=False)
    c.output(ran.stdout, max_lines=40, width=150)
    expect(ran.returncode == 0, f"wid audit exited with status {ran.returncode}: {ran.stderr[-300:]}")
    events = {(line.split()[1], line.split()[2]) for line in ran.stdout.splitlines() if len(line.split()) > 2}
    wanted = {("oauth_connect", "allow"), ("rbac_push", "allow"), ("droplet_create", "allow"), ("prove", "allow"),
              ("exchange", "allow"), ("refresh", "allow")}
    expect(wanted <= events, f"the audit log lacks {sorted(wanted - events)}")
    expect(any(decision == "deny" for _, decision in events), "the refused Spaces key request is not audited")
    return "every connection, push, creation, proof, exchange, refusal and refresh is in the audit log"
