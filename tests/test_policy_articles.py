"""The articles' roles and policies (rbac-schema/examples/), verbatim, behave as the articles say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from wid.core.policy.engine import CompiledRbac, Decision, request_parameters
from wid.core.rbac.compiler import compile_directory, compile_tree

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "rbac-schema" / "examples"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rbac"
SCHEMA = json.loads((ROOT / "rbac-schema" / "rbac.schema.json").read_text())
TEAM = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
THIS = "https://wid.example.test"
GITHUB = "https://token.actions.githubusercontent.com"
DO_AUD = f"api://DigitalOcean?actx={TEAM}"


def claims(name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "claims" / f"{name}.json").read_text())
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


@pytest.fixture(scope="module")
def compiled() -> dict[str, Any]:
    return compile_directory(EXAMPLES, api="DigitalOcean", actx=TEAM, trusted_issuers=[GITHUB])


@pytest.fixture(scope="module")
def rbac(compiled: dict[str, Any]) -> CompiledRbac:
    return CompiledRbac.from_dict(compiled)


@pytest.fixture(scope="module")
def initial() -> CompiledRbac:
    """The DigitalOcean repo as first pushed in the article, before the ATProto section."""
    files = {
        path.relative_to(EXAMPLES).as_posix(): path.read_bytes()
        for path in EXAMPLES.rglob("*.hcl")
        if not path.relative_to(EXAMPLES).as_posix().startswith("atproto/")
    }
    del files["policies/ex-atproto.hcl"]
    files["droplet-roles/ex-database-and-spaces-keys-access.hcl"] = (
        FIXTURES / "article-initial-droplet-role.hcl"
    ).read_bytes()
    result = compile_tree(files, api="DigitalOcean", actx=TEAM)
    # The article's GitHub role names its owner only in sub: compiled, with a warning to bind the id.
    assert [w.split(":")[0] for w in result["warnings"]] == ["gha-roles/ex-gha-readwrite.hcl"]
    jsonschema.validate(result, SCHEMA)
    return CompiledRbac.from_dict(result)


def decide(
    rbac: CompiledRbac,
    who: dict[str, Any],
    method: str,
    path: str,
    query: str = "",
    body: Any = None,
) -> Decision:
    raw = None if body is None else json.dumps(body).encode()
    return rbac.authorize(who, THIS, method, path, request_parameters(query, raw))


def exchange(sub_role: str, ttl: Any = 300, aud: Any = DO_AUD, **extra: Any) -> dict[str, Any]:
    return {"aud": aud, "sub": f"actx:{TEAM}:role:{sub_role}", "ttl": ttl, **extra}


def spaces_key(bucket: Any = "111", permission: Any = "read", name: Any = "bucket-111-read-token-droplet") -> Any:
    return {"name": name, "grants": [{"bucket": bucket, "permission": permission}]}


def test_examples_compile_and_validate_against_the_schema(compiled: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(compiled, SCHEMA)
    assert sorted(compiled["roles"]) == [
        "database-and-spaces-keys-access",
        "ex-database-and-spaces-keys-access",
        "ex-gha-readwrite",
    ]
    assert sorted(compiled["policies"]) == [
        "database-credential-read",
        "ex-atproto",
        "ex-database-and-spaces-keys-access",
        "ex-gha-readwrite",
        "spaces-keys",
    ]
    # The ATProto repo sits in its own folder: ignored here, and said so. The article's GitHub role fixes
    # its owner by name only (sub = "repo:org/..."): compiled, with a warning to bind the immutable id.
    ignored = [w for w in compiled["warnings"] if w.startswith("atproto/")]
    assert ignored and all("ignored" in w for w in ignored)
    others = [w for w in compiled["warnings"] if not w.startswith("atproto/")]
    assert len(others) == 1 and others[0].startswith("gha-roles/ex-gha-readwrite.hcl:1: role 'ex-gha-readwrite' fixes")
    assert "repository_owner_id or repository_id" in others[0]
    assert compiled["roles"]["ex-gha-readwrite"]["claims"] == {
        "job_workflow_ref": "org/repo/.github/workflows/do-wid.yml@refs/heads/main"
    }
    # {actx} was replaced everywhere, including inside allowed_parameters.
    assert "{actx}" not in json.dumps(compiled)


def test_atproto_example_compiles_and_validates() -> None:
    result = compile_directory(EXAMPLES / "atproto", api="ATProto", actx=DID)
    jsonschema.validate(result, SCHEMA)
    assert result["roles"]["atproto-write"]["aud"] == f"api://ATProto?actx={DID}"
    assert result["warnings"] == [".gitignore: ignored (not a *.hcl file directly in policies/ or in a *roles folder)"]


def test_issuers(rbac: CompiledRbac) -> None:
    assert rbac.issuers() == {None, GITHUB}


def test_droplet_exchanges_its_workload_token_for_the_data_role(rbac: CompiledRbac) -> None:
    droplet = claims("droplet-workload")
    assert rbac.matching_roles(droplet, THIS) == ["ex-database-and-spaces-keys-access"]
    decision = decide(rbac, droplet, "POST", "/v1/oidc/issue", body=exchange("database-and-spaces-keys-access"))
    assert decision.allowed, decision.reason
    assert decision.policy == "ex-database-and-spaces-keys-access"
    assert decision.rule == "/v1/oidc/issue"
    assert decision.roles == ("ex-database-and-spaces-keys-access",)


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        (exchange("database-and-spaces-keys-access", ttl="300"), "ttl '300' (a string) is not one of [300]"),
        (exchange("database-and-spaces-keys-access", ttl=300.0), "ttl 300.0"),
        (exchange("database-and-spaces-keys-access", ttl=301), "ttl 301 is not one of [300]"),
        (exchange("database-and-spaces-keys-access", ttl=[300]), "ttl [300] (a list)"),
        (exchange("database-and-spaces-keys-access", ttl=True), "ttl true (a boolean)"),
        ({"aud": DO_AUD, "sub": f"actx:{TEAM}:role:database-and-spaces-keys-access"}, "required parameter ttl"),
        (exchange("database-and-spaces-keys-access", iss=GITHUB), "parameter iss is not allowed"),
        (exchange("ex-database-and-spaces-keys-access"), "sub 'actx:"),
        (exchange("database-and-spaces-keys-access", aud=DO_AUD + "x"), "aud 'api://"),
        (exchange("database-and-spaces-keys-access", aud=[DO_AUD]), "aud ["),
        (exchange("*"), "sub "),
    ],
)
def test_droplet_exchange_with_other_parameters_is_denied(rbac: CompiledRbac, body: Any, parameter: str) -> None:
    decision = decide(rbac, claims("droplet-workload"), "POST", "/v1/oidc/issue", body=body)
    assert not decision.allowed
    assert parameter in decision.reason
    assert decision.reason.startswith("policy '")


def test_droplet_token_cannot_use_the_data_routes_directly(rbac: CompiledRbac) -> None:
    decision = decide(rbac, claims("droplet-workload"), "GET", "/v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30")
    assert not decision.allowed
    assert decision.rule is None and "no rule" in decision.reason


def test_exchanged_token_reads_the_named_database(rbac: CompiledRbac) -> None:
    token = claims("exchanged-database-and-spaces-keys-access")
    assert decide(rbac, token, "GET", "/v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30").allowed
    assert decide(rbac, token, "HEAD", "/v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30").allowed
    assert not decide(rbac, token, "GET", "/v2/databases/00000000-e9ea-4176-9dbc-a4cee4c4ff30").allowed
    assert not decide(rbac, token, "DELETE", "/v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30").allowed


def test_exchanged_token_lists_databases_only_by_tag_my_tag(rbac: CompiledRbac) -> None:
    token = claims("exchanged-database-and-spaces-keys-access")
    assert decide(rbac, token, "GET", "/v2/databases", "tag_name=my-tag").allowed
    cases = {
        "tag_name=other": "?.tag_name 'other' is not one of ['my-tag']",
        "tag_name=my-tag&tag_name=my-tag": "?.tag_name ['my-tag', 'my-tag'] (a list)",
        "tag_name=my-tag&tag_name=other": "(a list)",
        "tag_name=my-tag&per_page=200": "parameter ?.per_page is not allowed",
        "tag_name=my-tagx": "is not one of ['my-tag']",
        "tag_name=MY-TAG": "is not one of",
        "TAG_NAME=my-tag": "parameter ?.TAG_NAME is not allowed",
        "tag_name=": "?.tag_name ''",
        "": "required parameter ? (the query string) is missing",
    }
    for query, reason in cases.items():
        decision = decide(rbac, token, "GET", "/v2/databases", query)
        assert not decision.allowed, query
        assert reason in decision.reason, (query, decision.reason)
        assert decision.policy == "database-credential-read" and decision.rule == "/v2/databases"


def test_spaces_key_for_bucket_111_is_allowed(rbac: CompiledRbac) -> None:
    decision = decide(
        rbac, claims("exchanged-database-and-spaces-keys-access"), "POST", "/v2/spaces/keys", body=spaces_key()
    )
    assert decision.allowed, decision.reason
    assert (decision.policy, decision.rule) == ("spaces-keys", "/v2/spaces/keys")


def test_spaces_key_for_bucket_222_is_denied_naming_the_parameter(rbac: CompiledRbac) -> None:
    decision = decide(
        rbac, claims("exchanged-database-and-spaces-keys-access"), "POST", "/v2/spaces/keys", body=spaces_key("222")
    )
    assert not decision.allowed
    assert (
        "policy 'spaces-keys' denies create on /v2/spaces/keys: grants[0].bucket '222' is not one of ['111']"
        in decision.reason
    )
    assert "role 'database-and-spaces-keys-access'" in decision.reason
    assert (decision.policy, decision.rule) == ("spaces-keys", "/v2/spaces/keys")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (spaces_key(name="bucket-111-read-token-"), None),
        (spaces_key(name="bucket-111-read-token-a*b?c[d]"), None),
        (spaces_key(name="bucket-222-read-token-droplet"), "name 'bucket-222-read-token-droplet' does not match"),
        (spaces_key(name="xbucket-111-read-token-droplet"), "does not match any of ['bucket-111-read-token-*']"),
        (spaces_key(name="bucket-111-read-token"), "does not match"),
        (spaces_key(name="*"), "name '*' does not match"),
        (spaces_key(name=["bucket-111-read-token-a"]), "(a list)"),
        (spaces_key(permission="readwrite"), "grants[0].permission 'readwrite' is not one of ['read']"),
        (spaces_key(permission="rea*"), "grants[0].permission 'rea*'"),
        (spaces_key(bucket=111), "grants[0].bucket 111 (a number) is not one of ['111']"),
        (spaces_key(bucket=["111"]), "(a list)"),
        (spaces_key(bucket="111 "), "grants[0].bucket '111 '"),
        (spaces_key(bucket="*"), "grants[0].bucket '*'"),
        ({**spaces_key(), "grants": []}, "grants [] must be a non-empty list of objects"),
        ({**spaces_key(), "grants": {"bucket": "111", "permission": "read"}}, "must be a non-empty list of objects"),
        (
            {"name": "bucket-111-read-token-x", "grants": [{"bucket": "111", "permission": "read"}, {"bucket": "222"}]},
            "grants[1].bucket '222' is not one of",
        ),
        (
            {"name": "bucket-111-read-token-x", "grants": [{"bucket": "111", "permission": "read", "x": 1}]},
            "parameter grants[0].x is not allowed",
        ),
        ({"name": "bucket-111-read-token-x", "grants": [{"bucket": "111"}]}, "required parameter grants[0].permission"),
        ({"name": "bucket-111-read-token-x", "grants": ["111"]}, "grants[0] '111' (a string) is not an object"),
        ({"name": "bucket-111-read-token-x"}, "required parameter grants is missing"),
        ({**spaces_key(), "region": "nyc3"}, "parameter region is not allowed"),
    ],
)
def test_spaces_key_parameters(rbac: CompiledRbac, body: Any, reason: str | None) -> None:
    decision = decide(rbac, claims("exchanged-database-and-spaces-keys-access"), "POST", "/v2/spaces/keys", body=body)
    assert decision.allowed is (reason is None), decision.reason
    if reason is not None:
        assert reason in decision.reason


def test_spaces_key_with_a_query_string_is_denied(rbac: CompiledRbac) -> None:
    token = claims("exchanged-database-and-spaces-keys-access")
    decision = decide(rbac, token, "POST", "/v2/spaces/keys", "name=x", body=spaces_key())
    assert not decision.allowed and "parameter ? is not allowed" in decision.reason


def test_spaces_keys_deletion(rbac: CompiledRbac) -> None:
    token = claims("exchanged-database-and-spaces-keys-access")
    allowed = decide(rbac, token, "DELETE", "/v2/spaces/keys/DO00EXAMPLEKEY")
    assert allowed.allowed and allowed.rule == "/v2/spaces/keys/*"
    assert decide(rbac, token, "DELETE", "/v2/spaces/keys/a/b").allowed  # "*" is any rest of the path
    assert decide(rbac, token, "DELETE", "/v2/spaces/keys/x", "force=true").allowed  # no allowed_parameters
    denied = decide(rbac, token, "DELETE", "/v2/spaces/keys")
    assert not denied.allowed and "the rule grants only create" in denied.reason
    assert not decide(rbac, token, "DELETE", "/v2/spaces/keys/").allowed
    assert not decide(rbac, token, "GET", "/v2/spaces/keys/x").allowed
    assert not decide(rbac, token, "PUT", "/v2/spaces/keys/x").allowed


def test_github_actions_workflow_matches_its_role_and_exchanges(rbac: CompiledRbac) -> None:
    github = claims("github-actions")
    assert rbac.matching_roles(github, THIS) == ["ex-gha-readwrite"]
    decision = decide(rbac, github, "POST", "/v1/oidc/issue", body=exchange("database-and-spaces-keys-access"))
    assert decision.allowed and decision.policy == "ex-gha-readwrite"
    denied = decide(rbac, github, "POST", "/v1/oidc/issue", body=exchange("database-and-spaces-keys-access", ttl="300"))
    assert not denied.allowed and "ttl '300'" in denied.reason


@pytest.mark.parametrize(
    "changes",
    [
        {"job_workflow_ref": "org/repo/.github/workflows/other.yml@refs/heads/main"},
        {"job_workflow_ref": "org/repo/.github/workflows/do-wid.yml@refs/heads/dev"},
        {"job_workflow_ref": "org/repo/.github/workflows/do-wid.yml@refs/heads/main "},
        {"job_workflow_ref": None},
        {"job_workflow_ref": ["org/repo/.github/workflows/do-wid.yml@refs/heads/main"]},
        {"iss": THIS},
        {"iss": "https://token.actions.githubusercontent.com/"},
        {"iss": None},
        {"aud": f"api://DigitalOcean?actx={TEAM.replace('f', 'e')}"},
        {"aud": [DO_AUD]},
        {"sub": "repo:org/repo:ref:refs/heads/dev"},
        {"sub": "repo:org/repo:pull_request"},
    ],
)
def test_github_token_differing_in_any_role_condition_matches_nothing(rbac: CompiledRbac, changes: Any) -> None:
    github = claims("github-actions", **changes)
    assert rbac.matching_roles(github, THIS) == []
    decision = decide(rbac, github, "POST", "/v1/oidc/issue", body=exchange("database-and-spaces-keys-access"))
    assert not decision.allowed and decision.roles == () and "no role matches" in decision.reason


def test_own_roles_need_this_issuer(rbac: CompiledRbac) -> None:
    droplet = claims("droplet-workload", iss=GITHUB)
    assert rbac.matching_roles(droplet, THIS) == []
    assert rbac.matching_roles(claims("droplet-workload"), "https://other.example") == []


def test_droplet_exchanges_for_atproto_after_the_last_section(rbac: CompiledRbac, initial: CompiledRbac) -> None:
    body = exchange("atproto-write", aud=f"api://ATProto?actx={DID}")
    after = decide(rbac, claims("droplet-workload"), "POST", "/v1/oidc/issue", body=body)
    assert after.allowed and after.policy == "ex-atproto"
    before = decide(initial, claims("droplet-workload"), "POST", "/v1/oidc/issue", body=body)
    assert not before.allowed and "aud 'api://ATProto" in before.reason
    # ex-atproto grants only the atproto-write subject in the ATProto audience.
    mixed = exchange("database-and-spaces-keys-access", aud=f"api://ATProto?actx={DID}")
    assert not decide(rbac, claims("droplet-workload"), "POST", "/v1/oidc/issue", body=mixed).allowed


def test_initial_repo_behaves_the_same_for_the_data_routes(initial: CompiledRbac) -> None:
    token = claims("exchanged-database-and-spaces-keys-access")
    assert decide(initial, token, "POST", "/v2/spaces/keys", body=spaces_key()).allowed
    assert not decide(initial, token, "POST", "/v2/spaces/keys", body=spaces_key("222")).allowed


def test_atproto_role_posts_records_for_the_team_only() -> None:
    rbac = CompiledRbac.from_dict(compile_directory(EXAMPLES / "atproto", api="ATProto", actx=DID))
    token = claims("atproto-write")
    record = {"repo": DID, "collection": "app.bsky.feed.post", "record": {"$type": "app.bsky.feed.post"}}
    decision = decide(rbac, token, "POST", "/xrpc/com.atproto.repo.createRecord", body=record)
    assert decision.allowed and decision.roles == ("atproto-write",)
    assert not decide(rbac, token, "POST", "/xrpc/com.atproto.repo.deleteRecord", body=record).allowed
    assert not decide(rbac, token, "GET", "/xrpc/com.atproto.repo.createRecord").allowed
    other_team = claims("atproto-write", sub="actx:00000000-0000-0000-0000-000000000000:role:atproto-write")
    assert not decide(rbac, other_team, "POST", "/xrpc/com.atproto.repo.createRecord", body=record).allowed
