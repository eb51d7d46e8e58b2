"""``python -m bench``: run the benchmarks and print the markdown report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .apps import IMPLEMENTATIONS
from .cli import names
from .report import markdown
from .runner import BACKENDS, FULL, MEASUREMENTS, QUICK, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="streamkit against raw ASGI, Starlette, sse-starlette and FastAPI, "
        "under hypercorn on asyncio and trio.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts, for development and smoke tests"
    )
    parser.add_argument(
        "--impl",
        type=names(list(IMPLEMENTATIONS), "implementation"),
        help=f"comma-separated, of: {', '.join(IMPLEMENTATIONS)} (default: all)",
    )
    parser.add_argument(
        "--backend",
        type=names(BACKENDS, "backend"),
        help="comma-separated, of: asyncio, trio (default: both)",
    )
    parser.add_argument(
        "--only",
        type=names(MEASUREMENTS, "measurement"),
        help=f"comma-separated, of: {', '.join(MEASUREMENTS)} (default: all)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    arguments = parser.parse_args(argv)
    data = run(
        QUICK if arguments.quick else FULL,
        impls=arguments.impl,
        backends=arguments.backend,
        only=set(arguments.only) if arguments.only else None,
    )
    if arguments.json is not None:  # first: the figures survive a report that fails
        arguments.json.write_text(json.dumps(data, indent=2) + "\n")
    report = markdown(data)
    if arguments.markdown is not None:
        arguments.markdown.write_text(report + "\n")
    sys.stdout.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
