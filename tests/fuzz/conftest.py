"""Hypothesis profiles for the fuzz tests: ``short`` (the default, part of every test run)
and ``long`` (1,000 examples per surface: ``pytest tests/fuzz --fuzz-long``, or
``EMOBRIDGE_FUZZ=long``)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "derandomize": True, "print_blob": True,
           "suppress_health_check": [HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow]}
settings.register_profile("short", max_examples=25, **_COMMON)
settings.register_profile("long", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("EMOBRIDGE_FUZZ", "short"))


def pytest_configure(config) -> None:
    if config.getoption("--fuzz-long", default=False):
        settings.load_profile("long")
