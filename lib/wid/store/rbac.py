"""The compiled RBAC configuration in force for each context: written by a push, read per request.

Request time reads only this compiled form (no HCL parser). A process keeps the parsed configuration
and re-reads it when the stored version changes, so a successful push is noticed on the next request.
"""

import json
import time
from typing import Any

from wid import metrics
from wid.core.policy.engine import CompiledRbac
from wid.store import storage


def install(tx: storage.Transaction, api: str, actx: str, compiled: dict[str, Any], main_commit: str) -> int:
    """Make `compiled` the configuration in force, inside the caller's transaction; returns its version."""
    row = tx.one("SELECT version FROM rbac_configs WHERE api = ? AND actx = ?", (api, actx))
    version = (row[0] if row else 0) + 1
    tx.execute("INSERT INTO rbac_configs (api, actx, version, main_commit, compiled, updated_at) "
               "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (api, actx) DO UPDATE SET version = excluded.version, "
               "main_commit = excluded.main_commit, compiled = excluded.compiled, updated_at = excluded.updated_at",
               (api, actx, version, main_commit, json.dumps(compiled, sort_keys=True), int(time.time())))
    return version


def compiled(api: str, actx: str) -> CompiledRbac | None:
    """The configuration in force for the context, or None when nothing was ever pushed."""
    db = storage.database()
    key = f"rbac:{api}:{actx}"
    # Each read is one statement on its own (no snapshot needed): a version and the configuration of that
    # version always come from one row read at once.
    row = db.read_one("SELECT version FROM rbac_configs WHERE api = ? AND actx = ?", (api, actx))
    if row is None:
        return None
    with db.cache_lock:
        cached = db.cache.get(key)
    if cached is not None and cached[0] == row[0]:
        metrics.cache("rbac", hit=True)
        rbac: CompiledRbac = cached[1]
        return rbac
    metrics.cache("rbac", hit=False)
    data = db.read_one("SELECT version, compiled FROM rbac_configs WHERE api = ? AND actx = ?", (api, actx))
    if data is None:
        return None
    rbac = CompiledRbac.from_dict(json.loads(data[1]))
    with db.cache_lock:
        db.cache[key] = (data[0], rbac)
    return rbac


def main_commit(api: str, actx: str) -> str | None:
    with storage.database().transaction(write=False) as tx:
        row = tx.one("SELECT main_commit FROM rbac_configs WHERE api = ? AND actx = ?", (api, actx))
    return row[0] if row else None


class Summary:
    """What is in force for one context, as the landing page shows it (counts, never the rules)."""
    # A slotted class, not a NamedTuple (docs/architecture.md, "What a request imports").
    __slots__ = ("main_commit", "policies", "pushed_at", "roles", "version")

    def __init__(self, version: int, main_commit: str, pushed_at: int, roles: int, policies: int) -> None:
        self.version = version
        self.main_commit = main_commit
        self.pushed_at = pushed_at
        self.roles = roles
        self.policies = policies


def summaries(api: str) -> dict[str, Summary]:
    """The configuration in force for every context of `api` that was ever pushed, by context."""
    with storage.database().transaction(write=False) as tx:
        rows = tx.execute("SELECT actx, version, main_commit, updated_at, compiled FROM rbac_configs WHERE api = ?",
                          (api,))
    out = {}
    for actx, version, commit, pushed_at, compiled in rows:
        data = json.loads(compiled)
        out[actx] = Summary(int(version), commit, int(pushed_at), len(data["roles"]), len(data["policies"]))
    return out
