"""Whose tokens a role accepts: a role on an external issuer must fix the owner of the workload.

An exact `sub` need not name an owner. GitHub lets every repository and organisation choose its own
`sub` template (`environment:prod`, `job_workflow_ref:...`), so a role that binds only
`sub = "environment:prod"` on GitHub's issuer admits every repository on GitHub that picks that
template and names an environment prod. The compiler therefore refuses a role on an issuer other
than this proxy unless its bindings fix the owner (docs/policies.md, "Whose tokens a role accepts"):

- GitHub (built in): `sub` starting `repo:OWNER/`, or one of the owner claims `repository_owner_id`,
  `repository_owner`, `repository_id`, `repository`;
- another issuer: one of the claims the operator declares as its owner claims
  (WID_ISSUER_OWNER_CLAIMS, `ISSUER=claim,...`; the word `github` there gives an issuer GitHub's rules,
  for GitHub Enterprise Server); an issuer with none declared accepts no role until the operator does;
- or the role's explicit opt-in `accept_tokens_of_any_owner = true`.

Names can be re-registered after a rename or deletion; ids cannot, so binding a name where the
issuer offers the id draws a warning.
"""

from collections.abc import Mapping, Sequence
from typing import NamedTuple

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
GITHUB_OWNER_CLAIMS = ("repository_owner_id", "repository_owner", "repository_id", "repository")
# A name-valued claim and the immutable id that should be bound instead (or as well).
GITHUB_IDS_FOR_NAMES = {"repository_owner": "repository_owner_id", "repository": "repository_id"}
GITHUB_KIND = "github"  # in WID_ISSUER_OWNER_CLAIMS: this issuer follows GitHub's claims
OPT_IN = "accept_tokens_of_any_owner"
OWNER_SETTING = "WID_ISSUER_OWNER_CLAIMS"


class Verdict(NamedTuple):
    error: str | None
    warnings: list[str]


def is_github(issuer: str, declared: Mapping[str, Sequence[str]]) -> bool:
    """GitHub Actions' issuer (an enterprise's custom issuer path under it too), or one declared `github`."""
    return issuer == GITHUB_ISSUER or issuer.startswith(GITHUB_ISSUER + "/") or GITHUB_KIND in declared.get(issuer, ())


def owner_claims_of(issuer: str, declared: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The claims that name the owner of a workload for tokens of `issuer`."""
    own = tuple(c for c in declared.get(issuer, ()) if c != GITHUB_KIND)
    if is_github(issuer, declared):
        return GITHUB_OWNER_CLAIMS + tuple(c for c in own if c not in GITHUB_OWNER_CLAIMS)
    return own


def _github_sub_owner(sub: str) -> str | None:
    """OWNER of a `repo:OWNER/REPO:...` subject (GitHub's default template), else None."""
    if not sub.startswith("repo:"):
        return None
    owner, slash, _ = sub[len("repo:"):].partition("/")
    return owner if slash and owner else None


def check(role: str, issuer: str, sub: str, claims: Mapping[str, str], opted_out: bool,
          declared: Mapping[str, Sequence[str]]) -> Verdict:
    """Does this role on an external issuer fix the owner of the tokens it accepts?"""
    owner_claims = owner_claims_of(issuer, declared)
    bound = [name for name in owner_claims if name in claims]
    github_owner = _github_sub_owner(sub) if is_github(issuer, declared) else None
    warnings: list[str] = []
    if opted_out:
        if not bound and github_owner is None:
            warnings.append(f"role {role!r} accepts tokens of issuer {issuer} from any owner "
                            f"({OPT_IN} = true): any workload that can make its sub {sub!r} matches it")
        return Verdict(None, warnings)
    if not bound and github_owner is None:
        if not owner_claims:
            return Verdict(
                f"role {role!r} trusts issuer {issuer}, but no claim is known to name the owner of its "
                f"workloads: the operator declares them in {OWNER_SETTING} (for example "
                f'"{issuer}=namespace_id"), then bind one here; or write {OPT_IN} = true to accept '
                "tokens of any owner whose sub matches", [])
        suggestion = "repository_owner_id" if is_github(issuer, declared) else owner_claims[0]
        shapes = "sub = \"repo:OWNER/REPO:...\" or " if is_github(issuer, declared) else ""
        return Verdict(
            f"role {role!r} trusts issuer {issuer} but does not fix whose tokens it accepts: sub {sub!r} "
            f"alone can be produced by any owner that picks that subject; bind {shapes}one of "
            f"{', '.join(owner_claims)} (for example {suggestion} = \"...\"), or write {OPT_IN} = true "
            "to accept tokens of any owner", [])
    if is_github(issuer, declared):
        for name, id_claim in GITHUB_IDS_FOR_NAMES.items():
            if name in claims and id_claim not in claims:
                warnings.append(f"role {role!r} binds {name} by name: a deleted or renamed owner's name can be "
                                f"registered by someone else; bind {id_claim} (it never changes) as well")
        if github_owner is not None and not any(i in claims for i in GITHUB_IDS_FOR_NAMES.values()):
            warnings.append(f"role {role!r} fixes the owner {github_owner!r} only by name in its sub: bind "
                            "repository_owner_id or repository_id (they never change) as well")
    return Verdict(None, warnings)

