"""``streamkit.run``'s arguments, refused where it is called, naming them, before anything is
served or bound (each case also gives a port no socket can take, so none can serve); and
what the command line makes of its flags."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import streamkit
import streamkit._run
from streamkit import App
from streamkit._serve import bind_socket

UNBINDABLE = "127.0.0.1:99999"
TLS_FLAGS = ["--certfile", "cert.pem", "--keyfile", "key.pem"]


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"app": 5}, TypeError, r"app must be an ASGI application \(callable\), got int: 5"),
        ({"app": App}, TypeError, r"'app' is a class, not an ASGI application"),
        ({"app": lambda: App()}, TypeError, r"'app' is not an ASGI application: it takes \(\)"),
        ({"bind": 8000}, TypeError, r"bind must be a str, got int: 8000"),
        ({"log_level": "LOUD"}, ValueError, r"log_level must be one of .*INFO.*, got 'LOUD'"),
        ({"log_level": True}, TypeError, r"log_level must be a level name or an int, got bool"),
        (
            # More milliseconds than TCP_USER_TIMEOUT's int holds: the socket option failed
            # with "a bytes-like object is required, not 'int'", its socket left open.
            {"stalled_connection_timeout": 1e7},
            ValueError,
            r"stalled_connection_timeout must be at most 2147483 seconds, .*, got 10000000.0",
        ),
    ],
)
def test_a_bad_argument_is_refused_naming_it(
    arguments: dict[str, Any], error: type[Exception], match: str
) -> None:
    arguments = {"app": App(), "bind": UNBINDABLE, **arguments}
    with pytest.raises(error, match=match):
        streamkit.run(**arguments)


@pytest.mark.parametrize(("flag", "expected"), [("2.5", 2.5), ("off", None)])
def test_the_stalled_connection_timeout_flag_takes_seconds_or_off(
    monkeypatch: pytest.MonkeyPatch, flag: str, expected: float | None
) -> None:
    given: dict[str, Any] = {}
    monkeypatch.setattr(streamkit._run, "run", lambda app, **options: given.update(options))
    assert streamkit._run.main(["run", "service:app", "--stalled-connection-timeout", flag]) == 0
    assert given["stalled_connection_timeout"] == expected


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux's socket option")
@pytest.mark.parametrize(("timeout", "milliseconds"), [(1.5, 1500), (None, 0)])
def test_the_listening_socket_aborts_stalled_connections_unless_turned_off(
    timeout: float | None, milliseconds: int
) -> None:
    with bind_socket("127.0.0.1:0", stalled_connection_timeout=timeout) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == milliseconds


def test_the_tls_handshake_timeout_flag_reaches_the_tls_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given: dict[str, Any] = {}
    monkeypatch.setattr(streamkit._run, "run", lambda app, **options: given.update(options))
    flags = ["--tls-handshake-timeout", "0.5"]
    assert streamkit._run.main(["run", "service:app", *TLS_FLAGS, *flags]) == 0
    assert given["tls"].handshake_timeout == 0.5
    assert streamkit._run.main(["run", "service:app", *TLS_FLAGS]) == 0
    assert given["tls"].handshake_timeout == 10.0  # TLSConfig's own default


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            [*TLS_FLAGS, "--tls-handshake-timeout", "0"],
            "argument --tls-handshake-timeout: must be a positive, finite number of seconds, got 0",
        ),
        (
            [*TLS_FLAGS, "--tls-handshake-timeout", "nan"],
            "argument --tls-handshake-timeout: must be a positive, finite number of seconds",
        ),
        (
            [*TLS_FLAGS, "--tls-handshake-timeout", "soon"],
            "argument --tls-handshake-timeout: must be a number of seconds, got 'soon'",
        ),
        (
            ["--tls-handshake-timeout", "1"],
            "--tls-handshake-timeout needs --certfile and --keyfile",
        ),
        (["--client-ca", "ca.pem"], "--client-ca needs --certfile and --keyfile"),
    ],
)
def test_a_bad_tls_flag_is_a_usage_error_of_run_naming_it(
    capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        streamkit._run.main(["run", "service:app", *options])
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    # run's usage, as for any other of its flags: the command's own, not the top level's.
    assert stderr.startswith("usage: python -m streamkit run "), stderr
    assert f"python -m streamkit run: error: {message}" in stderr, stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_run_outside_the_main_thread_is_refused_before_anything_is_bound(workers: int) -> None:
    # One worker failed once serving, with an exception group holding the backend's own
    # words; two, with signal's ValueError, after binding. (Fixed, neither serves: were it
    # to, the thread would still be running at the join's timeout.)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            streamkit.run("support.plain_app:app", bind="127.0.0.1:0", workers=workers)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    [exc] = raised
    assert isinstance(exc, RuntimeError), repr(exc)
    assert str(exc) == "streamkit.run handles SIGINT and SIGTERM: call it from the main thread"


#: A worker of `streamkit run` on asyncio, told to stop (SIGTERM) once it serves, whose second
#: SIGTERM (the supervisor's, after systemd's to the whole group) comes as the event loop
#: stops handling the first: as anyio's signal receiver is left, which on asyncio puts the
#: default disposition (death) back.
WORKER_SIGNALLED_TWICE = """
import asyncio, multiprocessing, os, signal
from contextlib import asynccontextmanager
import anyio
from starlette.applications import Starlette
from streamkit import _run
from streamkit._serve import bind_socket

@asynccontextmanager
async def lifespan(app):
    yield
    os.write(1, b"lifespan ended\\n")

async def main():
    loop = asyncio.get_running_loop()
    removing = loop.remove_signal_handler

    def remove_then_signal(number):
        removed = removing(number)
        if number == signal.SIGTERM:
            os.kill(os.getpid(), signal.SIGTERM)
        return removed

    loop.remove_signal_handler = remove_then_signal
    reader, writer = multiprocessing.Pipe(duplex=False)
    sock = bind_socket("127.0.0.1:0", stalled_connection_timeout=None)
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(
            lambda: _run._serve_socket(
                Starlette(lifespan=lifespan), sock, grace_period=2.0, tls=None, serving=writer
            )
        )
        await anyio.wait_readable(reader.fileno())  # it serves
        os.kill(os.getpid(), signal.SIGTERM)

anyio.run(main, backend="asyncio")
"""


def test_a_worker_signalled_again_as_it_heard_the_first_sigterm_still_drains(
    tmp_path: Path,
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SIGNALLED_TWICE)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    # Its shutdown ran to the end (the app's lifespan ended) before the second signal, which
    # the test puts where the receiver is left, could act: that is only as the worker exits.
    assert "lifespan ended" in result.stdout, (result.returncode, result.stderr)
