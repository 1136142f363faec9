"""Hypothesis profiles for the fuzz targets, chosen by HYPOTHESIS_PROFILE (read here, in tests only).

quick (the default, used by `make test`): a bounded run, a few seconds for all targets together.
fuzz (`make fuzz`): FUZZ_EXAMPLES inputs per target (500 by default); `--hypothesis-show-statistics`
reports what each target tried. Failures found by either are replayed from .hypothesis/ (never
committed) until they pass, and each input that ever failed is kept as an @example on its target.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = settings(
    deadline=None,  # no timed assertions: a slow example is not a failure
    print_blob=True,  # a failure prints the @reproduce_failure blob that replays it exactly
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# `make test` replays the same inputs every run (a CI result never depends on the draw); `make fuzz` explores.
settings.register_profile("quick", _COMMON, max_examples=10, derandomize=True)
settings.register_profile("fuzz", _COMMON, max_examples=int(os.environ.get("FUZZ_EXAMPLES", "500")))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))
