"""What the benchmarks' command lines share: reading a comma-separated list of names, and
printing (and writing) a one-table benchmark's figures."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = ["names", "publish"]


def names(allowed: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse ``type`` reading a comma-separated list of *what*, each one of *allowed*."""

    def parse(text: str) -> list[str]:
        given = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in given if name not in allowed]
        if unknown or not given:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)}; "
                f"choose from {', '.join(allowed)}"
            )
        return given

    return parse


def publish(report: str, plan: Any, rows: list[dict[str, Any]], json_path: Path | None) -> int:
    """Print a one-table benchmark's *report*; with *json_path*, write its *plan* (a
    dataclass) and *rows* there too. Returns the command's exit status."""
    if json_path:
        json_path.write_text(json.dumps({"plan": asdict(plan), "rows": rows}, indent=2))
    print(report)
    return 0
