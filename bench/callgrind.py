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
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        f"--vgdb-prefix={_vgdb_prefix(out)}",
    ]


def control(pid: int, option: str, out: Path) -> None:
    """Tell the process *pid*, run by :func:`wrapper` with *out*, *option* (``--instr=on``,
    ``--dump``, ...)."""
    command = ["callgrind_control", f"--vgdb-prefix={_vgdb_prefix(out)}", option, str(pid)]
    subprocess.run(command, check=True, capture_output=True)


def _vgdb_prefix(out: Path) -> Path:
    # Where valgrind makes the pipes callgrind_control talks through: beside the dump, in
    # the run's own directory, not in /tmp, where a process killed with SIGKILL (a
    # benchmark's server) leaves its three behind.
    return out.with_name(f"{out.name}.vgdb")


def totals(dump: Path) -> int:
    """The instructions a callgrind dump counted."""
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"{dump}: no totals line")
