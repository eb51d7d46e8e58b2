"""Install the servers and tools the suite uses (Redis, PostgreSQL, Chromium, valgrind) where
they are missing.

Run by tox before the tests: one ``apt-get install`` of Debian's packages for whatever is
missing. Installing needs root and apt-get; elsewhere it says what it could not install, and
the tests that need it skip, saying why. Under ``CI``, where a missing service fails the
run, it exits with status 1 at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# Run as a script by tox: the package of the test helpers is then not on the path.
sys.path.insert(0, str(Path(__file__).parent.parent))

from support import browser, postgres_server, redis_server
from support.unavailable import in_ci

#: Debian's package for each server the tests start, and how to find it installed.
NEEDED: dict[str, Callable[[], object]] = {
    "redis-server": redis_server.find,
    "postgresql": postgres_server.find,
    "chromium": browser.find_chromium,
    # The instruction-count benchmarks' (bench/instructions.py, bench/delivery.py), run by
    # their smoke tests.
    "valgrind": lambda: shutil.which("callgrind_control"),
}


def install(packages: list[str]) -> None:
    """Install *packages* with apt-get, where this runs as root and apt-get exists."""
    if not packages:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(
            f"cannot install {' '.join(packages)} here: it needs root and apt-get", file=sys.stderr
        )
        return
    environment = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        print("+", " ".join(command), file=sys.stderr, flush=True)
        if subprocess.run(command, env=environment, check=False).returncode != 0:
            print(f"installing {' '.join(packages)} failed", file=sys.stderr)
            return


def main() -> None:
    install([package for package, find in NEEDED.items() if find() is None])
    missing = [package for package, find in NEEDED.items() if find() is None]
    consequence = "fail (CI is set)" if in_ci() else "skip"
    for package in missing:
        print(f"{package} is missing: the tests that need it will {consequence}", file=sys.stderr)
    if missing and in_ci():
        sys.exit(1)


if __name__ == "__main__":
    main()
