"""What a git push or the proxy's own signing would leave in a running proxy's database, put there directly.

- RBAC: compile HCL files and install them as a context's configuration (what a push to main does);
  `article_files()` is the articles' Droplet exchange.
- Tokens: mint ours with the proxy's active key (in this process, against its database).

Used by the tests and by bench/bench_exchange.py.
"""

from __future__ import annotations

from typing import Any

from devkit.proxy import ProxyServer

ARTICLE_POLICY = b"""path "/v1/oidc/issue" {
  capabilities = ["create"]
  allowed_parameters = {
    "aud" = "api://DigitalOcean?actx={actx}"
    "sub" = "actx:{actx}:role:database-and-spaces-keys-access"
    "ttl" = 300
  }
}
"""
ARTICLE_DROPLET_ROLE = b"""role "ex-database-and-spaces-keys-access" {
  aud      = "api://DigitalOcean?actx={actx}"
  sub      = "actx:{actx}:role:ex-database-and-spaces-keys-access"
  policies = ["ex-database-and-spaces-keys-access"]
}
"""
ARTICLE_TARGET_ROLE = b"""role "database-and-spaces-keys-access" {
  aud      = "api://DigitalOcean?actx={actx}"
  sub      = "actx:{actx}:role:database-and-spaces-keys-access"
  policies = ["database-credential-read"]
}
"""
DATABASE_READ_POLICY = b"""path "/v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30" {
  capabilities = ["read"]
}
"""


def article_files() -> dict[str, bytes]:
    """The articles' droplet exchange: role ex-database-and-spaces-keys-access may obtain the
    database-and-spaces-keys-access token for 300 s."""
    return {
        "policies/ex-database-and-spaces-keys-access.hcl": ARTICLE_POLICY,
        "policies/database-credential-read.hcl": DATABASE_READ_POLICY,
        "droplet-roles/ex-database-and-spaces-keys-access.hcl": ARTICLE_DROPLET_ROLE,
        "roles/database-and-spaces-keys-access.hcl": ARTICLE_TARGET_ROLE,
    }


def install_rbac(proxy: ProxyServer, team: str, files: dict[str, bytes], *, api: str = "DigitalOcean",
                 trusted_issuers: list[str] | None = None) -> dict[str, Any]:
    """Compile `files` for the context and make it the configuration in force (what a git push does)."""
    from wid import config
    from wid.core.rbac import compiler as rbac_compile
    from wid.store import rbac as rbac_store
    from wid.store import storage

    with proxy.configured():
        compiled = rbac_compile.compile_tree(files, api=api, actx=team, trusted_issuers=trusted_issuers,
                                             owner_claims=config.settings().issuer_owner_claims)
        with storage.database().transaction() as tx:
            rbac_store.install(tx, api, team, compiled, "0" * 40)
    return compiled


def mint(proxy: ProxyServer, aud: str, sub: str, *, kind: str = "workload", ttl: int = 900,
         claims: dict[str, Any] | None = None) -> str:
    """One of our tokens, signed by the proxy's active key (in this process, against its database)."""
    from wid.store import signing

    with proxy.configured():
        token, _ = signing.sign({**(claims or {}), "aud": aud, "sub": sub}, kind=kind, lifetime=ttl)
    return token
