"""Starting and stopping ``python -m bench.server`` processes."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from .client import control

__all__ = ["ServerProcess", "start_all", "stop_all"]

#: The directory that holds the ``bench`` package: the servers run from it.
ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:
    # A server whose runner died must not live on (a spinning one would eat a core).
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ServerProcess:
    """One benchmark server in a process of its own.

    :param impl: the implementation to serve.
    :param backend: ``asyncio`` or ``trio``.
    :param heartbeat_interval: seconds between heartbeats on an idle stream.
    :param send_timeout: the implementations' send timeout, where they have one.
    :param log: where the server's stderr goes.
    :param wrapper: a command the server runs under (``valgrind ...``); it must run the server
        in its own process, whose pid is then the server's.
    """

    def __init__(
        self,
        impl: str,
        backend: str,
        *,
        heartbeat_interval: float,
        send_timeout: float,
        log: IO[bytes],
        wrapper: Sequence[str] = (),
    ) -> None:
        self.impl = impl
        self.backend = backend
        self.log = log
        command = [
            *wrapper,
            sys.executable,
            "-m",
            "bench.server",
            f"--impl={impl}",
            f"--backend={backend}",
            f"--heartbeat-interval={heartbeat_interval}",
            f"--send-timeout={send_timeout}",
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, preexec_fn=_die_with_parent
        )
        self.port = 0
        self.pid = self.process.pid

    def wait_ready(self, *, within: float = 30.0) -> None:
        """Wait for the server's ``{"port": ...}`` line.

        :raises RuntimeError: the server exited or said nothing in time.
        """
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(within):
                self.kill()
                raise RuntimeError(f"{self}: not listening after {within} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self}: exited with {self.process.wait()} before listening")
        self.port = int(json.loads(line)["port"])

    def state(self, *, since: int = 0) -> dict[str, Any]:
        return control(self.port, f"/_bench/state?since={since}")

    def wait_cleaned(self, count: int, *, within: float, since: int = 0) -> dict[str, Any]:
        """The server's state once *count* cleanups are recorded in all, or after *within*.

        :raises TimeoutError: the server did not answer within *within* seconds and then 2 more.
        """
        path = f"/_bench/wait?cleaned={count}&within={within}&since={since}"
        return control(self.port, path, timeout=within + 2.0)

    def wait_quiet(self, *, within: float = 10.0) -> bool:
        """Wait until every stream started has cleaned up; return whether they all did.

        A worker still busy with thousands of cleanups may not answer at once: it is asked
        again until *within* seconds have passed.
        """
        deadline = time.monotonic() + within
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                state = self.state()
                if state["cleaned"] >= state["started"]:
                    return True
                self.wait_cleaned(state["started"], within=min(remaining, 5.0), since=10**9)
            except OSError:
                time.sleep(0.2)
        return False

    def request_stop(self) -> None:
        """Ask the server to stop; kill it if it does not even answer."""
        if self.process.poll() is None:
            try:
                control(self.port, "/_bench/stop", timeout=1.0)
            except (OSError, RuntimeError):
                self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __str__(self) -> str:
        return f"{self.impl}/{self.backend} server (pid {self.pid})"


def stop_all(servers: list[ServerProcess], *, within: float = 5.0) -> None:
    """Stop every one of *servers* at once: gracefully, or killed after *within* seconds."""
    for server in servers:
        server.request_stop()
    deadline = time.monotonic() + within
    for server in servers:
        try:
            server.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.kill()
        if server.process.stdout is not None and not server.process.stdout.closed:
            server.process.stdout.close()


def start_all(
    impls: list[str],
    backend: str,
    *,
    heartbeat_interval: float,
    send_timeout: float,
    log: IO[bytes],
) -> dict[str, ServerProcess]:
    """Start a server per implementation at once, and wait until every one listens."""
    servers = {
        impl: ServerProcess(
            impl, backend, heartbeat_interval=heartbeat_interval, send_timeout=send_timeout, log=log
        )
        for impl in impls
    }
    try:
        for server in servers.values():
            server.wait_ready()
    except BaseException:
        for server in servers.values():
            server.kill()
        raise
    # Let the import-time work settle before anything is measured.
    time.sleep(0.2)
    return servers
