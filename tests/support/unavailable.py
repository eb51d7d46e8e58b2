"""What a test does when a service it needs (Redis, PostgreSQL, Chromium) cannot be had.

Locally it skips, saying why. Under the environment variable ``CI`` it fails instead: a run
whose servers could not be installed has not tested what it claims to, and must not be green.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NoReturn

import pytest

__all__ = ["in_ci", "require_modules", "service_unavailable"]


def in_ci() -> bool:
    """Whether this runs under CI (the variable ``CI`` set to anything but empty or false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def service_unavailable(reason: str) -> NoReturn:
    """Skip the test for *reason*; under CI, fail it."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing service fails the run)", pytrace=False)
    pytest.skip(reason)


def require_modules(*modules: str) -> None:
    """Skip the test unless each of *modules* can be imported (a server, its worker class);
    under CI, fail it."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            service_unavailable(f"{module} is not installed: pip install -e '.[test]'")
