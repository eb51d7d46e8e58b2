"""What the instruction-count benchmarks share: a command run under valgrind's callgrind with
counting off, counting switched on and off from outside, and the count read back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["control", "require", "totals", "wrapper"]


def require(program: str) -> None:
    """Exit, naming what to install, unless valgrind and ``callgrind_control`` are here."""
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{program} needs {tool} (Debian: valgrind)")


def wrapper(out: Path) -> list[str]:
    """The command line that runs what follows it under callgrind, counting nothing until
    told to (:func:`control`), and dumps to *out*."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


def control(pid: int, option: str) -> None:
    """Tell the process *pid* under callgrind *option* (``--instr=on``, ``--dump``, ...)."""
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def totals(dump: Path) -> int:
    """The instructions a callgrind dump counted."""
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"{dump}: no totals line")
