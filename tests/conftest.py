"""Shared fixtures: real services (mosquitto, PulseAudio) and tiny models on disk."""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.models"]

# Property-based tests (tests/fuzz): a few hundred cases each in CI, 10,000 in the
# benchmark run (`make fuzz`, BENCHMARKS.md). No deadline per case under CI's load;
# the fuzz run flags any single case slower than 5 s (a hang in the making).
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz",
    max_examples=10_000,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
