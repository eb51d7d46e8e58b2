"""A throwaway redis-server for the tests: on a free port of 127.0.0.1, in a temporary
directory, stopped (and killable and restartable) by the test.

``tests/support/services.py`` installs Debian's redis-server where it is missing and the process
runs as root; the tests that need Redis skip, saying so, where it cannot be found (under
``CI`` they fail).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.ports import free_port
from support.unavailable import service_unavailable

#: Why the Redis tests skip where they do.
NOT_FOUND = (
    "redis-server was not found on PATH: install Debian's redis-server "
    "(`python tests/support/services.py` does, as root) to run the Redis broker tests"
)


def find() -> str | None:
    """The redis-server executable, or ``None``."""
    return shutil.which("redis-server") or next(
        (
            path
            for path in ("/usr/bin/redis-server", "/usr/sbin/redis-server")
            if os.path.exists(path)
        ),
        None,
    )


class RedisServer:
    """One redis-server process, kept by the test that made it.

    :param directory: where it keeps its files (the append-only file, its log).
    :param persistent: write every change to the append-only file before answering, so a
        killed server restarts with everything it had acknowledged.
    """

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        executable = find()
        if executable is None:
            service_unavailable(NOT_FOUND)
        self.executable = executable
        self.directory = directory
        self.persistent = persistent
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of its database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, within: float = 10.0) -> None:
        """Start it and return once it answers ``PING``."""
        persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        command = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--daemonize", "no",
            "--logfile", "redis.log",
            *(persistence if self.persistent else ["--appendonly", "no"]),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + within
        while not self._answers():
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer on port {self.port} in {within} s")
            time.sleep(0.01)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Kill it with SIGKILL, as a crash would, and wait until it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 5 s)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def running(directory: Path, *, persistent: bool = False) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped when the block exits; skips the test where
    redis-server cannot be found."""
    server = RedisServer(directory, persistent=persistent)
    try:
        # Inside: a start that times out leaves the process running, for stop() to end.
        server.start()
        yield server
    finally:
        server.stop()
