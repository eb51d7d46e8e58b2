"""Install the servers the suite uses (Redis, Chromium) where they are missing.

Run by tox before the tests. Installing needs root and Debian's apt; elsewhere it says what
it could not install, and the tests that need it skip with that reason.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

SERVICES = ["redis_server", "browser"]


def main() -> None:
    for name in SERVICES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        module.ensure_installed()


if __name__ == "__main__":
    main()
