"""Per-target share of the loaded profile's examples (see conftest.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def scaled(factor: float, *, fixtures: bool = False) -> settings:
    """A target whose examples cost more (a parser, a signature) runs factor x the profile's count.

    fixtures: the target takes a function-scoped fixture (app_env...) shared by all its examples, on
    purpose: one data directory and one signing key for the whole run.
    """
    examples = max(3, round(settings().max_examples * factor))
    if not fixtures:
        return settings(max_examples=examples)
    checks = [*settings().suppress_health_check, HealthCheck.function_scoped_fixture]
    return settings(max_examples=examples, suppress_health_check=checks)
