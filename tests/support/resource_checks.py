"""Whether a stream's resource is still held, seen from outside the stream: this process's
descriptors that point at a file, a lock on an SQLite database, a process's state.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def open_descriptors(path: Path) -> list[str]:
    """This process's descriptors that point at *path*."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue  # the descriptor listdir itself used
        if target == str(path):
            found.append(name)
    return found


def database_locked(path: Path) -> bool:
    """Whether another connection holds a lock on *path*: an exclusive one cannot be had."""
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return True
    else:
        connection.execute("ROLLBACK")
        return False
    finally:
        connection.close()


def process_state(pid: int) -> str | None:
    """The state letter of *pid* (``Z`` for a zombie), or ``None`` if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rpartition(")")[2].split()[0]
