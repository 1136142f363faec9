"""One configuration: every setting parsed, bounded and validated once, by lib/wid/config.py.

Unit: each setting's bad values are refused with a message naming the variable, the value (never a
secret's) and what is allowed; values that agree with each other are checked together; what
`wid config check` shows. Process: `wid setup` and `make run` (scripts/run.sh) stop on a bad setting
with one line naming it, before anything is written.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import types
import typing
from pathlib import Path

import pytest

from devkit.proxy import ROOT, free_port
from wid import config, config_parsers

GOOD_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
SECRET_LOOKING = "s3cr3t-value-that-must-not-leak"
WID = str(ROOT / ".venv" / "bin" / "wid")

# (variable, bad value, what the message must say is allowed)
BAD_VALUES = [
    ("PORT", "0", "from 1 to 65535"),
    ("PORT", "http", "from 1 to 65535"),
    ("THIS_ENDPOINT", "https://wid.example/", "trailing slash"),
    ("THIS_ENDPOINT", "wid.example", "absolute http(s) URL"),
    ("THIS_ENDPOINT", "https://wid.example/?x=1", "query"),
    ("WID_RUN_DIR", "/tmp/a\0b", "directory path"),
    ("DIGITALOCEAN_OAUTH_CLIENT_ID", "two words", "no spaces"),
    ("DIGITALOCEAN_OAUTH_SCOPES", "database:read drop;table", "DigitalOcean scope names"),
    ("DIGITALOCEAN_API_URL", "ftp://api.example", "absolute http(s) URL"),
    ("DIGITALOCEAN_OAUTH_URL", "https://user:pw@cloud.example", "without credentials"),
    ("WID_UPSTREAM_TIMEOUT", "0", "from 1 to 300"),
    ("WID_UPSTREAM_TIMEOUT", "2.5", "from 1 to 300"),
    ("WID_TRUSTED_ISSUERS", "https://token.actions.githubusercontent.com not-a-url", "issuer URLs"),
    ("WID_ISSUER_OWNER_CLAIMS", "gitlab=namespace_id", "ISSUER=claim[,claim...] entries"),
    ("WID_ISSUER_OWNER_CLAIMS", "https://gitlab.example=a https://gitlab.example=b", "each issuer once"),
    ("WID_ISSUER_OWNER_CLAIMS", "https://gitlab.example=na$me", "claim names"),
    ("WID_ALLOW_INSECURE_ISSUERS", "maybe", "1, true, yes or on"),
    ("WID_ISSUER_FETCH_TIMEOUT", "0", "from 0.1 to 60"),
    ("WID_ISSUER_FETCH_TIMEOUT", "nan", "from 0.1 to 60"),
    ("WID_ISSUER_FETCH_TIMEOUT", "61", "from 0.1 to 60"),
    ("WID_MAX_TOKEN_TTL", "-5", "from 900 to 604800"),
    ("WID_MAX_TOKEN_TTL", "600", "from 900 to 604800"),
    ("WID_MAX_TOKEN_TTL", "1e5", "from 900 to 604800"),
    ("WID_MAX_EXCHANGE_TTL", "59", "from 60 to 604800"),
    ("WID_MAX_BODY_BYTES", "2MB", "from 1024 to 16777216"),
    ("WID_MAX_BODY_BYTES", "99999999999999999999", "from 1024 to 16777216"),
    ("WID_DROPLET_SSH_PORT", "65536", "from 1 to 65535"),
    ("WID_DROPLET_SSH_TIMEOUT", "121", "from 1 to 120"),
    ("WID_REFRESH_TTL", "60", "from 900 to 31622400"),
    ("WID_GIT_MAX_PUSH_BYTES", "0", "from 65536 to 1073741824"),
    ("WID_GIT_MAX_REPO_BYTES", "-1", "from 65536 to 1073741824"),
    ("WID_GIT_MAX_BODY_SIZE", "64 MB", "such as 64MB"),
    ("WID_GIT_MAX_BODY_SIZE", "1MB", "from WID_GIT_MAX_PUSH_BYTES (8388608 bytes) to 4GiB"),
    ("WID_CGI_WORKERS", "abc", "from 1 to 256"),
    ("WID_CGI_WORKERS", "257", "from 1 to 256"),
    ("WID_MODE", "fast", "one of cgi, persistent"),
    ("WID_MODE", "CGI", "one of cgi, persistent"),
    ("WID_WORKERS", "0", "from 1 to 256"),
    ("WID_WORKERS", "2.5", "from 1 to 256"),
    ("WID_THREADS", "0", "from 1 to 64"),
    ("WID_THREADS", "65", "from 1 to 64"),
    ("WID_PUBLISH_INTERVAL", "4", "from 5 to 3600"),
    ("WID_JWKS_MAX_AGE", "0", "from 1 to 86400"),
    ("WID_CADDY_LOG_LEVEL", "verbose", "one of DEBUG, INFO, WARN, ERROR"),
    ("ATPROTO_PLC_URL", "plc.directory", "absolute http(s) URL"),
    ("ATPROTO_HANDLE_RESOLVER", "https://pds.example#x", "fragment"),
    ("ATPROTO_OAUTH_SCOPE", "transition:generic", "including 'atproto'"),
    ("ATPROTO_RBAC_TOKEN_TTL", "10", "from 60 to 604800"),
    ("ATPROTO_TIMEOUT", "soon", "from 1 to 120"),
    ("ATPROTO_DID_CACHE_SECONDS", "86401", "from 0 to 86400"),
    ("ATPROTO_MAX_RESPONSE_BYTES", "1000", "from 1024 to 104857600"),
]


def problems(env: dict[str, str]) -> list[str]:
    return config.sources(env)[1]


@pytest.mark.parametrize("name,value,allowed", BAD_VALUES)
def test_a_bad_value_is_refused_naming_variable_value_and_range(name: str, value: str, allowed: str) -> None:
    found = problems({name: value})
    assert len(found) == 1, found
    assert found[0].startswith(f"{name} ")
    assert allowed in found[0]
    assert repr(value) in found[0]


def test_every_setting_is_covered_by_a_bad_value_or_a_test_of_its_own() -> None:
    names = {s.name for s in config.sources({})[0]}
    # The secrets, DATABASE_URI and the data dir have tests of their own below (WID_METRICS_TOKEN's are in
    # tests/test_metrics.py).
    assert names - {n for n, _, _ in BAD_VALUES} == {"WID_DATA_DIR", "DATABASE_URI", "WID_SECRET_KEY",
                                                     "DIGITALOCEAN_OAUTH_CLIENT_SECRET", "WID_METRICS_TOKEN"}


def test_settings_refuses_a_bad_value_on_first_use(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WID_MAX_TOKEN_TTL", "-5")
    config.settings.cache_clear()
    with pytest.raises(config.ConfigError, match=r"^WID_MAX_TOKEN_TTL must be a whole number of seconds "
                                                 r"from 900 to 604800, got '-5'$"):
        config.settings()
    monkeypatch.setenv("WID_MAX_TOKEN_TTL", " 1200 ")
    config.settings.cache_clear()
    assert config.settings().max_token_ttl == 1200


def test_no_bound_on_token_lifetimes_is_below_the_fixed_lifetimes() -> None:
    from wid.service import provisioning

    assert max(provisioning.PROVISIONING_TTL, provisioning.WORKLOAD_TTL) <= config.FIXED_TOKEN_LIFETIME
    assert problems({"WID_MAX_TOKEN_TTL": str(config.FIXED_TOKEN_LIFETIME)}) == []


def test_several_bad_values_are_all_named() -> None:
    found = problems({"WID_CGI_WORKERS": "abc", "WID_PUBLISH_INTERVAL": "1"})
    assert [p.split()[0] for p in found] == ["WID_CGI_WORKERS", "WID_PUBLISH_INTERVAL"]


def test_defaults_and_parsed_values() -> None:
    env = {"PORT": "9000", "WID_TRUSTED_ISSUERS": "", "DIGITALOCEAN_OAUTH_SCOPES": "read, database:read  read",
           "WID_ALLOW_INSECURE_ISSUERS": "Yes", "WID_ISSUER_FETCH_TIMEOUT": "0.5",
           "DIGITALOCEAN_API_URL": "http://127.0.0.1:1234/", "ATPROTO_OAUTH_SCOPE": "  atproto   transition:generic ",
           "WID_GIT_MAX_BODY_SIZE": "8MiB", "WID_MAX_TOKEN_TTL": "",
           "WID_ISSUER_OWNER_CLAIMS": "https://gitlab.example=namespace_id,project_id https://ci.example=github"}
    values = config.read(env)
    shown, found = config.sources(env)
    assert found == []
    assert values.this_endpoint == "http://localhost:9000"
    assert values.trusted_issuers == ()  # empty: no external issuer at all
    assert values.do_oauth_scopes == ("read", "database:read")
    assert values.allow_insecure_issuers is True and values.issuer_fetch_timeout == 0.5
    assert values.do_api_url == "http://127.0.0.1:1234"
    assert values.atproto_oauth_scope == "atproto transition:generic"
    assert values.max_token_ttl == 86400  # empty is unset
    assert values.issuer_owner_claims == {"https://gitlab.example": ("namespace_id", "project_id"),
                                          "https://ci.example": ("github",)}
    assert values.run_dir == os.path.join(values.data_dir, "run")
    sources = {s.name: s.source for s in shown}
    assert sources["PORT"] == "environment" and sources["WID_MAX_TOKEN_TTL"] == "default"


def _fits(value: object, annotation: object) -> bool:
    """`value` is of the type `annotation` names (the few shapes Settings uses; bool is no int)."""
    if isinstance(annotation, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return isinstance(value, tuple) and all(_fits(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    return type(value) is annotation


@pytest.mark.parametrize("env", [{}, {"PORT": "9000", "WID_TRUSTED_ISSUERS": "https://a.example https://b.example",
                                      "DIGITALOCEAN_OAUTH_SCOPES": "read", "WID_ISSUER_FETCH_TIMEOUT": "2",
                                      "WID_ISSUER_OWNER_CLAIMS": "https://a.example=x,y", "WID_WORKERS": "3",
                                      "WID_METRICS_TOKEN": "m" * 32, "WID_MODE": "persistent",
                                      "DATABASE_URI": "postgresql://db.example/wid", "WID_SECRET_KEY": GOOD_KEY,
                                      "ATPROTO_HANDLE_RESOLVER": "https://resolver.example",
                                      "DIGITALOCEAN_OAUTH_CLIENT_ID": "id", "DIGITALOCEAN_OAUTH_CLIENT_SECRET": "s"}])
def test_every_setting_has_the_type_it_declares(env: dict[str, str]) -> None:
    """Settings is a plain class (a NamedTuple of its size cost every CGI process 2 M instructions more), so
    mypy no longer checks each value against its field: this does, for the defaults and for set values."""
    values = config.read(env)
    wrong = {name: repr(getattr(values, name)) for name, annotation in config.Settings.__annotations__.items()
             if not _fits(getattr(values, name), annotation)}
    assert wrong == {}


def test_settings_are_read_only_and_complete() -> None:
    values = config.read({})
    with pytest.raises(AttributeError, match="read-only: port cannot be set"):
        values.port = 1
    fields = {name: getattr(values, name) for name in config.Settings.__annotations__}
    with pytest.raises(TypeError, match=r"wrong: \['port'\]"):
        config.Settings(**{k: v for k, v in fields.items() if k != "port"})
    with pytest.raises(TypeError, match=r"wrong: \['colour'\]"):
        config.Settings(**fields, colour="blue")


def test_database_uri_names_its_scheme_not_the_secret_key() -> None:
    found = problems({"DATABASE_URI": "sqlite:///x.db"})
    assert found == ["DATABASE_URI must start with postgresql:// (or be unset for SQLite in WID_DATA_DIR); "
                     "scheme 'sqlite' is not supported"]
    found = problems({"DATABASE_URI": f"{SECRET_LOOKING}@db.example/wid", "WID_SECRET_KEY": GOOD_KEY})
    assert len(found) == 1 and "has no scheme://" in found[0] and SECRET_LOOKING not in found[0]
    assert problems({"DATABASE_URI": "postgresql://wid@db.example/wid", "WID_SECRET_KEY": GOOD_KEY}) == []


def test_a_shared_database_needs_a_secret_key() -> None:
    found = problems({"DATABASE_URI": "postgresql://wid@db.example/wid"})
    assert found == ["WID_SECRET_KEY must be set when DATABASE_URI is set: every instance sharing the database "
                     "needs the same key"]


def test_a_malformed_secret_key_is_named_without_its_value() -> None:
    found = problems({"WID_SECRET_KEY": SECRET_LOOKING})
    assert len(found) == 1 and found[0].startswith("WID_SECRET_KEY must be 32 random bytes in urlsafe base64")
    assert SECRET_LOOKING not in found[0]
    found = problems({"DIGITALOCEAN_OAUTH_CLIENT_ID": "id", "DIGITALOCEAN_OAUTH_CLIENT_SECRET": f"{SECRET_LOOKING} x"})
    assert len(found) == 1 and found[0].startswith("DIGITALOCEAN_OAUTH_CLIENT_SECRET must be")
    assert SECRET_LOOKING not in found[0]


def test_the_oauth_client_is_both_or_neither() -> None:
    assert problems({"DIGITALOCEAN_OAUTH_CLIENT_ID": "id"}) == [
        "DIGITALOCEAN_OAUTH_CLIENT_SECRET is unset while its pair is set: set both (the OAuth application's "
        "client id and secret) or neither"]
    assert "DIGITALOCEAN_OAUTH_CLIENT_ID is unset" in problems({"DIGITALOCEAN_OAUTH_CLIENT_SECRET": "x"})[0]
    assert problems({"DIGITALOCEAN_OAUTH_CLIENT_ID": "id", "DIGITALOCEAN_OAUTH_CLIENT_SECRET": "x"}) == []


def test_git_body_size_must_hold_the_largest_push() -> None:
    found = problems({"WID_GIT_MAX_PUSH_BYTES": str(100 * 1024 * 1024)})  # the default 64MB is now too small
    assert found == ["WID_GIT_MAX_BODY_SIZE must be from WID_GIT_MAX_PUSH_BYTES (104857600 bytes) to 4GiB, "
                     "got '64MB' (64000000 bytes)"]
    assert problems({"WID_GIT_MAX_PUSH_BYTES": str(100 * 1024 * 1024), "WID_GIT_MAX_BODY_SIZE": "128MB"}) == []


@pytest.mark.parametrize("size,expected", [("64MB", 64_000_000), ("64MiB", 64 << 20), ("64mi", 64 << 20),
                                           ("67108864", 64 << 20), ("2G", 2_000_000_000), ("1GiB", 1 << 30)])
def test_caddy_sizes_mean_what_caddy_makes_of_them(size: str, expected: int) -> None:
    # As `caddy adapt` reads `max_size` (10^n for KB/MB/GB, 2^n for KiB/MiB/GiB); checked against Caddy
    # itself in test_git_body_limit_reaches_caddy below.
    assert config_parsers.caddy_size_bytes(size) == expected


def test_config_check_shows_sources_and_never_a_secret(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "WID_DATA_DIR": str(tmp_path / "data"), "WID_SECRET_KEY": GOOD_KEY,
           "DATABASE_URI": f"postgresql://wid:{SECRET_LOOKING}@db.example:5432/wid?password={SECRET_LOOKING}",
           "DIGITALOCEAN_OAUTH_CLIENT_ID": "client-id", "DIGITALOCEAN_OAUTH_CLIENT_SECRET": SECRET_LOOKING}
    result = subprocess.run([WID, "config", "check", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert SECRET_LOOKING not in result.stdout + result.stderr and GOOD_KEY not in result.stdout
    rows = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert rows["DATABASE_URI"] == {"name": "DATABASE_URI", "source": "environment",
                                    "shown": "postgresql://db.example:5432/wid"}
    assert rows["WID_SECRET_KEY"]["shown"] == rows["DIGITALOCEAN_OAUTH_CLIENT_SECRET"]["shown"] == "(set)"
    assert rows["DIGITALOCEAN_OAUTH_CLIENT_ID"]["shown"] == "client-id"
    assert rows["WID_MAX_TOKEN_TTL"] == {"name": "WID_MAX_TOKEN_TTL", "source": "default", "shown": "86400"}
    assert not (tmp_path / "data").exists()  # checking creates nothing

    bad = subprocess.run([WID, "config", "check"], env={**env, "WID_SECRET_KEY": SECRET_LOOKING}, text=True,
                         capture_output=True, timeout=60)
    assert bad.returncode == 2 and SECRET_LOOKING not in bad.stdout + bad.stderr
    assert re.search(r"^WID_SECRET_KEY +environment +\(hidden\) \(invalid\)$", bad.stdout, re.MULTILINE)
    assert bad.stderr.startswith("wid: WID_SECRET_KEY must be 32 random bytes")


def test_unknown_wid_variables_are_warned_about_with_a_suggestion() -> None:
    assert config.unknown_variables({"WID_MAX_TOKEN_TTLL": "600", "WID_MAX_TOKEN_TTL": "600",
                                     "WID_INSTALL_FLAGS": "--test", "DIGITALOCEAN_ACCESS_TOKEN": "x"}) == [
        "WID_MAX_TOKEN_TTLL is not a setting of wid and is ignored; did you mean WID_MAX_TOKEN_TTL?"]


def test_the_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Architecture")]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", "\n".join(
        line.split("|")[1] for line in table.splitlines() if line.startswith("| `"))))
    assert documented == {s.name for s in config.sources({})[0]}


# -- processes ---------------------------------------------------------------------------------------------


def run_wid(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "WID_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([WID, *args], env={**base, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name,value,expected", [
    ("WID_MAX_TOKEN_TTL", "-5", "wid: WID_MAX_TOKEN_TTL must be a whole number of seconds from 900 to 604800, "
                                "got '-5'"),
    ("WID_CGI_WORKERS", "abc", "wid: WID_CGI_WORKERS must be a whole number of processes from 1 to 256, got 'abc'"),
    ("DATABASE_URI", "sqlite:///x.db", "wid: DATABASE_URI must start with postgresql:// (or be unset for SQLite "
                                       "in WID_DATA_DIR); scheme 'sqlite' is not supported"),
    ("WID_SECRET_KEY", SECRET_LOOKING, "wid: WID_SECRET_KEY must be 32 random bytes in urlsafe base64"),
])
def test_setup_stops_with_one_line_naming_the_setting(tmp_path: Path, name: str, value: str, expected: str) -> None:
    result = run_wid(tmp_path, "setup", **{name: value})
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(expected), result.stderr
    assert SECRET_LOOKING not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing written: no database, no key, no data dir


def test_every_command_but_demo_checks_the_settings_first(tmp_path: Path) -> None:
    for args in (["keys", "list"], ["audit"], ["policy", "compile", str(ROOT / "rbac-schema" / "examples")]):
        result = run_wid(tmp_path, *args, WID_MAX_EXCHANGE_TTL="forever")
        assert result.returncode == 2 and result.stderr.startswith("wid: WID_MAX_EXCHANGE_TTL must be"), args


def test_setup_warns_about_unknown_variables_and_still_sets_up(tmp_path: Path) -> None:
    result = run_wid(tmp_path, "setup", WID_CGI_WORKER="4")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("wid: warning: WID_CGI_WORKER is not a setting of wid and is ignored; "
                             "did you mean WID_CGI_WORKERS?\n")
    assert (tmp_path / "data" / "wid.sqlite3").exists()
    assert oct((tmp_path / "data").stat().st_mode & 0o777) == "0o700"


def test_setup_by_hand_under_a_permissive_umask_keeps_the_data_private(tmp_path: Path) -> None:
    # An operator's shell usually has umask 022; the database holds sealed credentials and the audit log.
    previous = os.umask(0o022)
    try:
        result = run_wid(tmp_path, "setup")
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    data = tmp_path / "data"
    files = [p for p in data.iterdir() if p.name.startswith(("wid.sqlite3", "secret.key"))]
    assert data / "wid.sqlite3" in files
    for path in files:
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is {oct(path.stat().st_mode & 0o777)}"


def test_setup_refuses_a_socket_path_fcgiwrap_cannot_bind(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 40)
    result = run_wid(tmp_path, "setup", "--render-cgi", str(tmp_path / "cgi"), "--cgi-source", str(ROOT / "cgi-bin"),
                     WID_DATA_DIR=str(deep))
    assert result.returncode == 2
    assert result.stderr.startswith("wid: WID_DATA_DIR is too long for fcgiwrap's socket:")
    assert "set WID_RUN_DIR to a directory with a shorter path" in result.stderr and not deep.exists()
    run = run_wid(tmp_path, "setup", "--render-cgi", str(tmp_path / "cgi"), "--cgi-source", str(ROOT / "cgi-bin"),
                  WID_DATA_DIR=str(tmp_path / "data"), WID_RUN_DIR=str(deep / "run"))
    assert run.returncode == 2 and run.stderr.startswith("wid: WID_RUN_DIR is too long for fcgiwrap's socket:")


def test_make_run_stops_on_a_bad_setting_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PORT": str(free_port()), "WID_DATA_DIR": str(tmp_path / "data"), "WID_CGI_WORKERS": "abc"}
    for name in ("DATABASE_URI", "WID_SECRET_KEY", "WID_RUN_DIR", "THIS_ENDPOINT"):
        env.pop(name, None)
    result = subprocess.run([str(ROOT / "scripts" / "run.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "wid: WID_CGI_WORKERS must be a whole number of processes from 1 to " \
                                             "256, got 'abc'"
    assert not (tmp_path / "data" / "wid.sqlite3").exists()


def test_git_body_limit_reaches_caddy(tmp_path: Path) -> None:
    """The Caddyfile reads WID_MAX_BODY_BYTES and WID_GIT_MAX_BODY_SIZE as config.py validates them."""
    env = {**os.environ, "PORT": "8080", "WID_RUN_DIR": str(tmp_path), "WID_DATA_DIR": str(tmp_path),
           "DIGITALOCEAN_API_URL": "https://api.digitalocean.com", "WID_MAX_BODY_BYTES": "2097152",
           "WID_GIT_MAX_BODY_SIZE": "64mi"}
    adapted = subprocess.run(["caddy", "adapt", "--config", str(ROOT / "Caddyfile"), "--adapter", "caddyfile"],
                             env=env, capture_output=True, text=True, timeout=60, check=True)
    sizes = sorted(int(n) for n in re.findall(r'"max_size":(\d+)', adapted.stdout))
    assert sizes == sorted([2097152, config_parsers.caddy_size_bytes("64mi")])
