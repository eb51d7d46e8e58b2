"""A throwaway PostgreSQL cluster for the tests: made with ``initdb`` in a temporary
directory, served on a free port of 127.0.0.1, stopped and deleted by the test session.

``tests/support/services.py`` installs Debian's ``postgresql`` where its programs are missing
and the process runs as root; the tests that need the server skip, saying why, where it cannot
be found or started.

PostgreSQL refuses to run as root: as root, the cluster's programs run as the ``postgres``
user (which Debian's package makes), through ``setpriv``, and the directory is theirs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.ports import free_port
from support.unavailable import service_unavailable

#: Why the PostgreSQL tests skip where the server's programs are missing.
NOT_FOUND = (
    "PostgreSQL's initdb/pg_ctl were not found (in /usr/lib/postgresql/<version>/bin or on "
    "PATH): install Debian's postgresql (`python tests/support/services.py` does, as root) to "
    "run the PostgreSQL tests"
)
#: The programs a cluster needs, all from one installation.
PROGRAMS = ("initdb", "postgres", "pg_ctl", "pg_isready")
#: The unprivileged user the cluster runs as when the tests run as root.
SERVER_USER = "postgres"


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in path.parent.name.split(".") if part.isdigit())


def find() -> Path | None:
    """The directory with PostgreSQL's server programs (the newest Debian installation
    first), or ``None``."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    on_path = shutil.which("initdb")
    # A program on PATH may be a link into an installation: use the installation's directory.
    candidates = [*debian, *([Path(os.path.realpath(on_path)).parent] if on_path else [])]
    for directory in candidates:
        if all(os.access(directory / program, os.X_OK) for program in PROGRAMS):
            return directory
    return None


class PostgresServer:
    """One PostgreSQL cluster and its server process, kept by the session that made it.

    :param bin_directory: where the server programs are (see :func:`find`).
    """

    def __init__(self, bin_directory: Path) -> None:
        self.bin = bin_directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                service_unavailable(
                    "the tests run as root and setpriv (util-linux) is missing: "
                    "PostgreSQL refuses root, and setpriv runs it as another user"
                )
            try:
                self.user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                service_unavailable(
                    f"the tests run as root and there is no {SERVER_USER!r} user to run "
                    "PostgreSQL as (it refuses root): install Debian's postgresql, which makes it"
                )
        # Not under pytest's temporary directories: those are private to the user running
        # the tests, and the server's user must reach its own directory.
        self.directory = Path(tempfile.mkdtemp(prefix="streamkit-postgres-"))
        if self.user is not None:
            os.chown(self.directory, self.user.pw_uid, self.user.pw_gid)
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"

    @property
    def dsn(self) -> str:
        """The connection string of its ``postgres`` database, as the ``postgres`` role."""
        return f"host=127.0.0.1 port={self.port} dbname=postgres user=postgres"

    def _command(self, command: list[str]) -> list[str]:
        # setpriv execs the program itself (runuser would stay as its parent), so the
        # process we start is the server and signals reach it; and it has the server shut
        # down at once if this process dies without stopping it (a killed test run).
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            return command  # not root (checked when made): run it as we are
        user = []
        if self.user is not None:
            user = [f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--init-groups"]
        return [setpriv, *user, "--pdeathsig", "SIGQUIT", "--", *command]

    def start(self, *, within: float = 30.0) -> None:
        """Make the cluster and start its server; return once it accepts connections."""
        initdb = [
            str(self.bin / "initdb"), "--pgdata", str(self.data), "--username", "postgres",
            "--auth", "trust", "--encoding", "UTF8", "--locale", "C", "--no-sync",
            "--no-instructions", "--wal-segsize", "1",
        ]  # fmt: skip
        done = subprocess.run(
            self._command(initdb), capture_output=True, timeout=within, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
        # A throwaway cluster: no durability, few connections, its socket in its own directory.
        server = [
            str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-k", str(self.directory),
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=30", "-c", "shared_buffers=16MB",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self._command(server),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ready = [
            str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
            "-U", "postgres", "-d", "postgres",
        ]  # fmt: skip
        deadline = time.monotonic() + within
        while subprocess.run(ready, check=False).returncode != 0:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self.process.returncode}: {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres did not accept connections in {within} s")
            time.sleep(0.02)

    def log_tail(self) -> str:
        """The end of the server's log."""
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server (an immediate shutdown: nothing here is worth a checkpoint), then
        delete the cluster."""
        process = self.process
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGQUIT)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def running() -> Iterator[PostgresServer]:
    """A started :class:`PostgresServer`, stopped and deleted when the block exits; skips
    the test where PostgreSQL cannot be found or started."""
    bin_directory = find()
    if bin_directory is None:
        service_unavailable(NOT_FOUND)
    server = PostgresServer(bin_directory)
    try:
        try:
            server.start()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            service_unavailable(f"PostgreSQL from {bin_directory} could not be started: {exc}")
        yield server
    finally:
        server.stop()
