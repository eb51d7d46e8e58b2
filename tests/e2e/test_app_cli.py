"""``python -m streamkit run module:app`` as a subprocess, on asyncio and trio, with one and
with two worker processes: a signal drains the open streams (the SSE farewell arrives), the
App's background work is cancelled, and the process exits within the grace period.

Bounds are generous (a loaded 2-core machine, and each worker imports Python anew); the real
figures are in the report.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest
from anyio.abc import Process
from support.certificates import Certificates
from support.ports import free_port
from support.service_process import lines

from streamkit import ServerAddress
from streamkit.testing import open_stream
from streamkit.testing._client import connect

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

GRACE = 5.0
#: Starting means importing Python, hypercorn and the service: slow on a loaded machine.
START_BOUND = 30.0

#: The service, as its users write it.
SERVICE = """
import os
from contextlib import asynccontextmanager

import anyio
from starlette.responses import PlainTextResponse

import streamkit


def say(text):
    # One write of the whole line: the workers share the pipe, and print() may write the text
    # and its newline apart, so two workers' lines could interleave.
    os.write(1, f"{text} {os.getpid()}\\n".encode())


@asynccontextmanager
async def lifespan(app):
    async def refresh_forever():
        try:
            await anyio.sleep_forever()
        finally:
            say("background cancelled")

    app.task_group.start_soon(refresh_forever)
    say("lifespan started")
    yield
    say("lifespan ended")


app = streamkit.App(
    heartbeat_interval=15.0, send_timeout=10.0, grace_period=GRACE, lifespan=lifespan
)


@app.sse("/tokens", max_duration=300)
async def tokens(request, send):
    n = 0
    while True:
        await send(streamkit.ServerSentEvent(data=str(n), id=str(n)))
        n += 1
        await anyio.sleep(0.01)


@app.get("/pid")
async def pid(request):
    return PlainTextResponse(str(os.getpid()))


@app.sse("/slow-cleanup")
async def slow_cleanup(request, send):
    async def cleanup():
        say("cleanup started")
        await anyio.sleep(1.0)
        say("cleanup done")

    send.push_async_callback(cleanup)
    await send("ready")
    await anyio.sleep_forever()


@app.post("/upload")
async def upload(request):
    return PlainTextResponse(str(len(await request.body())))
""".replace("GRACE", repr(GRACE))


class Service:
    """A ``python -m streamkit run`` process and what it printed."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.address: ServerAddress | None = None
        self.serving = anyio.Event()
        self.lifespans = 0
        self.all_started = anyio.Event()
        self.workers = 1
        self._stdout_changed = anyio.Event()

    async def stdout_changed(self) -> None:
        self._stdout_changed = event = anyio.Event()
        await event.wait()

    async def read_stdout(self) -> None:
        assert self.process.stdout is not None
        async for line in lines(self.process.stdout):
            self.stdout.append(line)
            self._stdout_changed.set()
            if line.startswith("lifespan started"):
                self.lifespans += 1
                if self.lifespans == self.workers:
                    self.all_started.set()

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in lines(self.process.stderr):
            self.stderr.append(line)
            found = re.search(r"serving on (https?)://([\d.]+):(\d+)", line)
            if found and self.address is None:
                self.address = ServerAddress(host=found[2], port=int(found[3]), scheme=found[1])
                self.serving.set()

    def printed(self, prefix: str) -> list[str]:
        return [line for line in self.stdout if line.startswith(prefix)]


async def all_serving(service: Service) -> None:
    await service.serving.wait()
    await service.all_started.wait()


@asynccontextmanager
async def run_service(
    tmp_path: Path,
    backend: str,
    *,
    workers: int = 1,
    options: Sequence[str] = (),
    source: str = SERVICE,
    ready: Callable[[Service], Awaitable[None]] = all_serving,
) -> AsyncIterator[Service]:
    """Run the service; yield it once *ready* returns (by default, once every worker
    serves), and wait for it to exit after."""
    (tmp_path / "service.py").write_text(source)
    command = [sys.executable, "-m", "streamkit", "run", "service:app", "--backend", backend]
    command += ["--bind", "127.0.0.1:0", "--workers", str(workers), *options]
    process = await anyio.open_process(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    service = Service(process)
    service.workers = workers
    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(service.read_stdout)
            task_group.start_soon(service.read_stderr)
            with anyio.fail_after(START_BOUND):
                await ready(service)
            yield service
            with anyio.fail_after(GRACE + 10):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
        await process.aclose()


async def signal_drains_and_exits(service: Service, signal_number: signal.Signals) -> float:
    """Open a stream, signal the process, check the farewell; return the seconds to exit."""
    assert service.address is not None
    async with open_stream(service.address, "/tokens") as client:
        assert (await client.read_event()).data == "0"
        signalled_at = anyio.current_time()
        service.process.send_signal(signal_number)
        with anyio.fail_after(GRACE + 10):
            events = [event async for event in client.events()]
            await service.process.wait()
        exited_after = anyio.current_time() - signalled_at
    assert client.complete
    assert (events[-1].event, events[-1].retry) == ("shutdown", 1000)
    assert service.process.returncode == 0, "\n".join(service.stderr)
    return exited_after


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_a_signal_drains_the_service_and_it_exits_within_the_grace_period(
    tmp_path: Path, anyio_backend: str, signal_number: signal.Signals
) -> None:
    async with run_service(tmp_path, anyio_backend) as service:
        assert service.address is not None
        async with httpx.AsyncClient(base_url=service.address.url) as http:
            assert (await http.get("/pid")).text == str(service.process.pid)
        exited_after = await signal_drains_and_exits(service, signal_number)
    assert exited_after < GRACE  # measured: about 0.1 s
    (pid,) = [line.split()[-1] for line in service.printed("lifespan started")]
    assert service.printed("background cancelled") == [f"background cancelled {pid}"]
    assert service.printed("lifespan ended") == [f"lifespan ended {pid}"]
    assert any("stream /tokens ended: shutdown" in line for line in service.stderr)


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_a_second_signal_during_the_drain_is_ignored_and_the_cleanup_finishes(
    tmp_path: Path, anyio_backend: str, signal_number: signal.Signals
) -> None:
    # One worker: the second signal used to find the default disposition back (SIGTERM killed
    # the process, SIGINT raised KeyboardInterrupt into the loop), cutting the cleanup short.
    async with run_service(tmp_path, anyio_backend) as service:
        assert service.address is not None
        async with open_stream(service.address, "/slow-cleanup") as client:
            assert (await client.read_event()).data == "ready"
            service.process.send_signal(signal_number)
            with anyio.fail_after(GRACE):
                while not service.printed("cleanup started"):
                    await service.stdout_changed()
            service.process.send_signal(signal_number)
            with anyio.fail_after(GRACE + 10):
                events = [event async for event in client.events()]
                await service.process.wait()
    assert service.process.returncode == 0, "\n".join(service.stderr)
    assert len(service.printed("cleanup done")) == 1
    assert (events[-1].event, events[-1].retry) == ("shutdown", 1000)
    assert any("during the drain: shutdown already under way" in line for line in service.stderr)
    assert not any("Traceback" in line for line in service.stderr), "\n".join(service.stderr)


async def test_a_connection_that_outlives_the_grace_period_is_closed_and_named_quietly(
    tmp_path: Path, anyio_backend: str
) -> None:
    # A request whose body never ends, and a stream whose cleanup outlasts the grace period:
    # the server closes both when it ends, says which stream it cut, and logs no traceback
    # (hypercorn's asyncio worker cancelling the connection made Python 3.11's asyncio log a
    # CancelledError from start_server's callback).
    async with run_service(tmp_path, anyio_backend, options=["--grace-period", "0.5"]) as service:
        assert service.address is not None
        async with open_stream(service.address, "/slow-cleanup") as client:
            assert (await client.read_event()).data == "ready"
            upload = await connect(service.address.host, service.address.port)
            async with upload:
                head = "POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\n"
                await upload.send(head.encode() + b"partial")
                service.process.send_signal(signal.SIGTERM)
                with anyio.fail_after(GRACE + 10):
                    await service.process.wait()
    stderr = "\n".join(service.stderr)
    assert service.process.returncode == 0, stderr
    assert "1 stream(s) still ending when the grace period ended ('/slow-cleanup')" in stderr
    assert "CancelledError" not in stderr
    assert "Traceback" not in stderr


async def test_two_workers_share_the_socket_and_all_drain_on_sigterm(
    tmp_path: Path, anyio_backend: str
) -> None:
    async with run_service(tmp_path, anyio_backend, workers=2) as service:
        pids = {line.split()[-1] for line in service.printed("lifespan started")}
        assert len(pids) == 2
        assert str(service.process.pid) not in pids, "the workers are processes of their own"
        assert service.address is not None
        async with httpx.AsyncClient(base_url=service.address.url) as http:
            answered = {(await http.get("/pid")).text for _ in range(4)}
        assert answered <= pids
        exited_after = await signal_drains_and_exits(service, signal.SIGTERM)
    assert exited_after < GRACE  # measured: about 0.2 s
    output = "\n".join(service.stdout + service.stderr)
    assert {line.split()[-1] for line in service.printed("background cancelled")} == pids, output
    assert {line.split()[-1] for line in service.printed("lifespan ended")} == pids, output


async def test_workers_whose_supervisor_is_killed_drain_and_exit_on_their_own(
    tmp_path: Path, anyio_backend: str
) -> None:
    async with run_service(tmp_path, anyio_backend, workers=2) as service:
        pids = {line.split()[-1] for line in service.printed("lifespan started")}
        assert service.address is not None
        async with open_stream(service.address, "/tokens") as client:
            await client.read_event()
            service.process.kill()  # SIGKILL: the supervisor cannot pass anything on
            with anyio.fail_after(GRACE + 10):
                events = [event async for event in client.events()]
                # The workers hold the output pipes: they close when the last worker exits.
                while len(service.printed("lifespan ended")) < 2:
                    await service.stdout_changed()
        assert events[-1].event == "shutdown"
    assert {line.split()[-1] for line in service.printed("lifespan ended")} == pids


#: A script that serves with two workers, each of which, importing the script as it starts
#: (before it can listen for a signal), says so and takes its time, as a large app's imports do.
SLOW_TO_START = """
import os
import time

import streamkit

if __name__ == "__mp_main__":
    os.write(1, f"worker importing {os.getpid()}\\n".encode())
    time.sleep(60)

if __name__ == "__main__":
    streamkit.run("service:app", backend=BACKEND, bind="127.0.0.1:0", workers=2)
"""


def test_a_script_that_runs_workers_without_the_main_guard_is_told_to_add_it(
    tmp_path: Path,
) -> None:
    # Each worker imports the script that started it, and so ran streamkit.run again: it
    # failed with "cannot listen on '127.0.0.1:PORT': Address already in use", the supervisor
    # with "exited with 1".
    (tmp_path / "service.py").write_text(SERVICE)
    script = "import streamkit\n\nstreamkit.run('service:app', bind=BIND, workers=2)\n"
    (tmp_path / "serve.py").write_text(script.replace("BIND", repr(f"127.0.0.1:{free_port()}")))
    result = run_command(tmp_path, [sys.executable, "serve.py"])
    assert result.returncode == 1, result.stderr
    assert (
        "RuntimeError: streamkit.run was called again as a worker imported the script that "
        "started it: call it under if __name__ == '__main__':"
    ) in result.stderr, result.stderr
    assert "Address already in use" not in result.stderr, result.stderr


@pytest.mark.parametrize("to_the_group", [False, True], ids=["sigterm", "ctrl-c"])
async def test_a_signal_while_the_workers_still_start_stops_them_and_the_command_succeeds(
    tmp_path: Path, anyio_backend: str, to_the_group: bool
) -> None:
    # A stop as a deployment starts (systemd's, a rollout's), or a terminal's Ctrl-C, which
    # reaches the workers too: the workers, killed by the signal before they could listen for
    # it, were each reported as "exited with -15 (or -2) during the shutdown", and the command
    # failed.
    (tmp_path / "service.py").write_text(SERVICE)
    (tmp_path / "serve.py").write_text(SLOW_TO_START.replace("BACKEND", repr(anyio_backend)))
    command = [sys.executable, "serve.py"]
    async with await anyio.open_process(
        command,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        try:
            importing = 0
            with anyio.fail_after(START_BOUND):
                async with aclosing(lines(process.stdout)) as printed:
                    async for line in printed:
                        importing += line.startswith("worker importing")
                        if importing == 2:
                            break
            if to_the_group:
                os.killpg(process.pid, signal.SIGINT)
            else:
                process.send_signal(signal.SIGTERM)
            with anyio.fail_after(GRACE + 10):
                stderr = b"".join([chunk async for chunk in process.stderr]).decode()
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
    assert process.returncode == 0, stderr
    assert "exited with" not in stderr, stderr


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_command_line_serves_http2_over_tls(
    tmp_path: Path, anyio_backend: str, certificates: Certificates, workers: int
) -> None:
    options = [
        "--certfile",
        str(certificates.server_cert),
        "--keyfile",
        str(certificates.server_key),
    ]
    async with run_service(tmp_path, anyio_backend, workers=workers, options=options) as service:
        assert service.address is not None
        assert service.address.url.startswith("https://")
        verify = certificates.client_context()
        async with httpx.AsyncClient(http2=True, verify=verify) as http:
            response = await http.get(f"{service.address.url}/pid")
        assert response.http_version == "HTTP/2"
        assert response.text in {line.split()[-1] for line in service.printed("lifespan started")}
        service.process.send_signal(signal.SIGTERM)
    assert service.process.returncode == 0, "\n".join(service.stderr)


@pytest.mark.parametrize("workers", [1, 2])
async def test_serving_on_is_said_once_the_lifespan_has_started(
    tmp_path: Path, anyio_backend: str, workers: int
) -> None:
    # A supervisor script takes the line to mean the server answers: it was logged as the
    # socket listened, before a slow lifespan had started (and with one that failed, too).
    source = SERVICE.replace(
        '    say("lifespan started")\n',
        "    await anyio.sleep(0.5)\n"
        '    os.write(2, f"lifespan startup done {os.getpid()}\\n".encode())\n'
        '    say("lifespan started")\n',
    )
    assert "lifespan startup done" in source
    async with run_service(tmp_path, anyio_backend, workers=workers, source=source) as service:
        assert service.address is not None
        async with httpx.AsyncClient(base_url=service.address.url) as http:
            assert (await http.get("/pid")).status_code == 200
        service.process.send_signal(signal.SIGTERM)
    stderr = "\n".join(service.stderr)
    assert service.process.returncode == 0, stderr
    done = [n for n, line in enumerate(service.stderr) if "lifespan startup done" in line]
    serving = [n for n, line in enumerate(service.stderr) if "serving on" in line]
    assert len(done) == workers, stderr
    assert len(serving) == 1, stderr
    assert max(done) < serving[0], stderr


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_a_signal_during_the_lifespans_startup_cancels_it_and_the_command_exits(
    tmp_path: Path, anyio_backend: str, workers: int, signal_number: signal.Signals
) -> None:
    # hypercorn waits on its shutdown trigger only once the app's lifespan has started: a
    # Ctrl-C during a slow startup was held for its startup_timeout (60 s, then a traceback);
    # with two workers, the supervisor killed them at twice the grace period and 5 s.
    source = SERVICE.replace(
        '    say("lifespan started")\n',
        '    say("lifespan starting")\n'
        "    try:\n"
        "        await anyio.sleep(60)  # a database that does not answer\n"
        "    except anyio.get_cancelled_exc_class():\n"
        '        say("startup cancelled")\n'
        "        raise\n"
        '    say("lifespan started")\n',
    )
    assert "startup cancelled" in source

    async def starting(service: Service) -> None:
        while len(service.printed("lifespan starting")) < workers:
            await service.stdout_changed()

    async with run_service(
        tmp_path, anyio_backend, workers=workers, source=source, ready=starting
    ) as service:
        signalled_at = anyio.current_time()
        service.process.send_signal(signal_number)
    exited_after = anyio.current_time() - signalled_at
    stderr = "\n".join(service.stderr)
    assert service.process.returncode == 0, stderr
    assert len(service.printed("startup cancelled")) == workers, stderr
    assert not service.printed("lifespan started"), stderr
    assert "serving on" not in stderr
    assert "Traceback" not in stderr
    assert exited_after < GRACE, stderr


async def received_until_closed(stream: anyio.abc.ByteStream) -> bytes:
    """What the server sent on *stream* before closing it."""
    received = b""
    try:
        while True:
            received += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        return received


async def test_the_command_line_drops_a_tls_client_at_its_handshake_timeout(
    tmp_path: Path, anyio_backend: str, certificates: Certificates
) -> None:
    # Far below TLSConfig's default of 10 s, which would fail it as surely as hypercorn's 60.
    bound = 0.5
    options = [
        "--certfile",
        str(certificates.server_cert),
        "--keyfile",
        str(certificates.server_key),
    ]
    options += ["--tls-handshake-timeout", str(bound)]
    async with run_service(tmp_path, anyio_backend, options=options) as service:
        assert service.address is not None
        silent = await connect(service.address.host, service.address.port)  # no ClientHello
        async with silent:
            with anyio.fail_after(bound + 3.0):
                assert await received_until_closed(silent) == b""
        service.process.send_signal(signal.SIGTERM)
    assert service.process.returncode == 0, "\n".join(service.stderr)


def run_command(cwd: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run *command* in *cwd* to its end, within the start bound; its output as text."""
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=START_BOUND, check=False
    )


def test_a_bad_app_name_is_reported_with_a_failure_status(tmp_path: Path) -> None:
    (tmp_path / "service.py").write_text("app = None\n")
    for target, message in [
        ("service", "MODULE:ATTRIBUTE"),
        (".service:app", "MODULE:ATTRIBUTE"),
        ("nowhere:app", "No module named 'nowhere'"),
        ("service:missing", "has no attribute 'missing'"),
        ("service:app", "is not an ASGI application"),
    ]:
        command = [sys.executable, "-m", "streamkit", "run", target, "--bind", "127.0.0.1:0"]
        result = run_command(tmp_path, command)
        assert result.returncode == 1
        assert message in result.stderr


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "import nowhere_to_be_found\n",
            "module 'service' raised ModuleNotFoundError as it was imported (from "
            "'service:app'): No module named 'nowhere_to_be_found', at {file}, line 1",
        ),
        (
            "\nraise RuntimeError('DATABASE_URL is not set')\n",
            "module 'service' raised RuntimeError as it was imported (from 'service:app'): "
            "DATABASE_URL is not set, at {file}, line 2",
        ),
        (
            "def app(:\n",
            "module 'service' raised SyntaxError as it was imported (from 'service:app'): "
            "invalid syntax, at {file}, line 1",
        ),
        (
            # As a settings library refuses its settings: the line that asked is the module's.
            "import settings\n\nDATABASE_URL = settings.required('DATABASE_URL')\n",
            "module 'service' raised KeyError as it was imported (from 'service:app'): "
            "'DATABASE_URL', at {file}, line 3 (raised at {settings}, line 6)",
        ),
    ],
)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_app_module_that_fails_to_import_is_named_in_one_line(
    tmp_path: Path, source: str, message: str, workers: str
) -> None:
    # An exception of the module's own was a bare traceback, with no word of the command, and
    # a dependency the module imports was said as if the app's own module were missing.
    (tmp_path / "service.py").write_text(source)
    (tmp_path / "settings.py").write_text(SETTINGS)
    command = [sys.executable, "-m", "streamkit", "run", "service:app", "--bind", "127.0.0.1:0"]
    result = run_command(tmp_path, [*command, "--workers", workers])
    assert result.returncode == 1, result.stderr
    file, settings = (repr(str(tmp_path / name)) for name in ("service.py", "settings.py"))
    said = message.format(file=file, settings=settings)
    assert result.stderr == f"streamkit: error: {said}\n"


SETTINGS = """
import os


def required(name):
    return os.environ[name]
"""


def test_an_app_module_that_fails_to_import_in_a_worker_alone_is_named_in_one_line(
    tmp_path: Path,
) -> None:
    # A metrics endpoint started as the module is imported: the supervisor's import binds its
    # port, each worker's then fails. The worker printed multiprocessing's traceback.
    port = free_port()
    source = f"import socket\n\nmetrics = socket.create_server(('127.0.0.1', {port}))\n"
    (tmp_path / "service.py").write_text(source + SERVICE)
    command = [sys.executable, "-m", "streamkit", "run", "service:app", "--workers", "2"]
    result = run_command(tmp_path, [*command, "--bind", "127.0.0.1:0"])
    assert result.returncode == 1, result.stderr
    said = re.search(r"streamkit: error: streamkit-worker-\d: (.*)", result.stderr)
    assert said is not None, result.stderr
    assert said[1].startswith(
        "module 'service' raised OSError as it was imported (from 'service:app'): "
        "[Errno 98] Address already in use"
    ), result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_an_app_module_that_is_not_found_is_named_with_the_app(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "streamkit", "run", "nowhere.service:app"]
    command += ["--bind", "127.0.0.1:0"]
    result = run_command(tmp_path, command)
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        "streamkit: error: cannot import module 'nowhere.service' (from "
        "'nowhere.service:app'): No module named 'nowhere'\n"
    )


NOT_ASGI = """
from starlette.applications import Starlette


def wsgi(environ, start_response):
    start_response("200 OK", [])
    return [b"hello"]


def create_app():
    return Starlette()
"""


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("service:Starlette", "'service:Starlette' is a class, not an ASGI application"),
        ("service:wsgi", "'service:wsgi' is not an ASGI application: it takes (environ, "),
        ("service:create_app", "'service:create_app' is not an ASGI application: it takes ()"),
    ],
)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_callable_that_is_no_asgi_application_is_refused_before_serving(
    tmp_path: Path, target: str, message: str, workers: str
) -> None:
    # It was served: "serving on" was said, then every request answered with a 500, hypercorn
    # having taken the failed lifespan for one the app did not support.
    (tmp_path / "service.py").write_text(NOT_ASGI)
    command = [sys.executable, "-m", "streamkit", "run", target, "--bind", "127.0.0.1:0"]
    result = run_command(tmp_path, [*command, "--workers", workers])
    assert result.returncode == 1, result.stderr
    assert f"streamkit: error: {message}" in result.stderr, result.stderr
    assert "serving on" not in result.stderr, result.stderr


async def test_a_worker_that_dies_is_named_and_the_command_fails(
    tmp_path: Path, anyio_backend: str
) -> None:
    async with run_service(tmp_path, anyio_backend, workers=2) as service:
        started = next(line for line in service.stderr if "with 2 workers (pids" in line)
        found = re.search(r"pids (\d+), (\d+)", started)
        assert found is not None, started
        # The second worker: the first is the one named whichever died, were it taken at
        # random after the others were stopped.
        dead = int(found[2])
        assert service.address is not None
        async with open_stream(service.address, "/tokens") as client:
            await client.read_event()
            os.kill(dead, signal.SIGKILL)
            with anyio.fail_after(GRACE + 10):
                await service.process.wait()
    stderr = "\n".join(service.stderr)
    assert service.process.returncode == 1, stderr
    assert f"streamkit-worker-1 (pid {dead}) exited with -9" in stderr, stderr


@pytest.mark.parametrize("workers", ["100", "100000000"])
def test_a_worker_that_cannot_be_started_fails_the_command_and_those_started_stop(
    tmp_path: Path, workers: str
) -> None:
    # Out of descriptors after a dozen workers (or of processes, as under a container's pids
    # limit): the command printed a traceback and never exited, multiprocessing waiting at
    # exit for the workers it had started, which served on with no supervisor. And a hundred
    # million workers were each made before the first was started: the command took memory
    # until it raised MemoryError (here, within the 2 GB of address space it is given).
    (tmp_path / "service.py").write_text(SERVICE)
    command = f"{shlex.quote(sys.executable)} -m streamkit run service:app --workers {workers}"
    command += " --bind 127.0.0.1:0"
    # The output's pipes end once the last worker holding them has exited.
    limits = "ulimit -n 40 && ulimit -v 2000000"
    result = run_command(tmp_path, ["sh", "-c", f"{limits} && exec {command}"])
    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    found = re.fullmatch(
        rf"streamkit: error: cannot start worker (\d+) of {workers}: \[Errno 24\] Too many open "
        "files",
        last,
    )
    assert found is not None, result.stderr
    assert int(found[1]) > 1, "some workers were started, and stopped"
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bad_or_taken_address_is_reported_with_a_failure_status(
    tmp_path: Path, workers: str
) -> None:
    (tmp_path / "service.py").write_text(SERVICE)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for bind, message in [
            ("nonsense", "bind must be HOST:PORT, such as 127.0.0.1:8000, got 'nonsense'"),
            ("127.0.0.1:99999", "bind's port must be at most 65535, got '127.0.0.1:99999'"),
            (f"127.0.0.1:{port}", f"cannot listen on '127.0.0.1:{port}'"),
        ]:
            command = [sys.executable, "-m", "streamkit", "run", "service:app", "--bind", bind]
            result = run_command(tmp_path, [*command, "--workers", workers])
            assert result.returncode == 1, result.stderr
            assert f"streamkit: error: {message}" in result.stderr
            assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_lifespan_that_fails_at_startup_is_reported_once_with_a_failure_status(
    tmp_path: Path, backend: str, workers: str
) -> None:
    # Said once, with the app's own traceback: it came out inside three nested exception
    # groups, some 100 lines of them.
    source = SERVICE.replace(
        '    say("lifespan started")\n',
        '    raise RuntimeError("database unreachable")\n',
    )
    (tmp_path / "service.py").write_text(source)
    command = [sys.executable, "-m", "streamkit", "run", "service:app", "--backend", backend]
    result = run_command(tmp_path, [*command, "--bind", "127.0.0.1:0", "--workers", workers])
    assert result.returncode == 1, result.stderr
    # Each worker says it, once (with several, the first to fail ends the command).
    said = result.stderr.count("the app's lifespan failed at startup")
    assert said >= 1, result.stderr
    assert result.stderr.count("RuntimeError: database unreachable") == said, result.stderr
    assert "streamkit: error: " in result.stderr
    assert "Exception Group" not in result.stderr, result.stderr
    # Never served: never said to be.
    assert "serving on" not in result.stderr, result.stderr


def test_a_flag_out_of_range_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "service.py").write_text(SERVICE)
    for options, message in [
        (["--workers", "0"], "argument --workers: must be an int of at least 1, got 0"),
        (["--grace-period", "nan"], "argument --grace-period: must be a positive, finite"),
        (["--grace-period", "-1"], "argument --grace-period: must be a positive, finite"),
        (["--stalled-connection-timeout", "inf"], "argument --stalled-connection-timeout: must"),
        (
            ["--stalled-connection-timeout", "1e7"],
            "argument --stalled-connection-timeout: must be at most 2147483 seconds",
        ),
        (["--app-dir", "nowhere"], "argument --app-dir: not a directory: 'nowhere'"),
        (["--tls-handshake-timeout", "-1"], "argument --tls-handshake-timeout: must be a positive"),
    ]:
        command = [sys.executable, "-m", "streamkit", "run", "service:app", *options]
        result = run_command(tmp_path, [*command, "--bind", "127.0.0.1:0"])
        assert result.returncode == 2, (options, result.stderr)
        assert result.stderr.startswith("usage: python -m streamkit run"), result.stderr
        assert message in result.stderr, result.stderr


async def test_an_apps_task_that_fails_drains_the_streams_and_the_command_exits_with_1(
    tmp_path: Path, anyio_backend: str
) -> None:
    source = SERVICE.replace(
        """    async def refresh_forever():
        try:
            await anyio.sleep_forever()
        finally:
            say("background cancelled")
""",
        """    async def refresh_forever():
        await FAILING.wait()
        raise RuntimeError("the refresher's upstream is gone")
""",
    )
    source += """

FAILING = anyio.Event()


@app.get("/fail")
async def fail(request):
    FAILING.set()
    return PlainTextResponse("failing")
"""
    assert "FAILING.wait()" in source
    async with run_service(tmp_path, anyio_backend, source=source) as service:
        assert service.address is not None
        async with (
            open_stream(service.address, "/tokens") as client,
            httpx.AsyncClient(base_url=service.address.url) as http,
        ):
            assert (await client.read_event()).data == "0"
            assert (await http.get("/fail")).status_code == 200
            with anyio.fail_after(GRACE + 10):
                events = [event async for event in client.events()]
                await service.process.wait()
    stderr = "\n".join(service.stderr)
    assert client.complete
    assert (events[-1].event, events[-1].retry) == ("shutdown", 1000)
    assert service.process.returncode == 1, stderr
    assert "RuntimeError: the refresher's upstream is gone" in stderr
    assert len(service.printed("lifespan ended")) == 1, stderr


async def test_a_worker_still_running_at_twice_the_grace_period_and_5_s_is_killed(
    tmp_path: Path, anyio_backend: str
) -> None:
    # Each worker's lifespan blocks its loop as it exits, so no worker can stop: the
    # supervisor kills them at its bound, and the command fails naming them.
    grace = 0.5
    source = "import time\n" + SERVICE.replace(
        '    say("lifespan ended")\n', '    say("lifespan ended")\n    time.sleep(60)\n'
    )
    options = ["--grace-period", str(grace)]
    async with run_service(
        tmp_path, anyio_backend, workers=2, options=options, source=source
    ) as service:
        signalled_at = anyio.current_time()
        service.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(2 * grace + 5.0 + 10):
            await service.process.wait()
        exited_after = anyio.current_time() - signalled_at
    stderr = "\n".join(service.stderr)
    assert len(service.printed("lifespan ended")) == 2, stderr
    assert service.process.returncode == 1, stderr
    assert stderr.count("did not stop in time: killed") == 2, stderr
    assert len(re.findall(r"exited with -9 during the shutdown", stderr)) == 2, stderr
    assert 2 * grace + 5.0 <= exited_after < 2 * grace + 5.0 + 5.0


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_worker_whose_shutdown_fails_makes_the_command_fail(
    tmp_path: Path, anyio_backend: str, workers: int
) -> None:
    source = SERVICE.replace(
        '    say("lifespan ended")\n', '    say("lifespan ended")\n    raise RuntimeError("db")\n'
    )
    async with run_service(tmp_path, anyio_backend, workers=workers, source=source) as service:
        service.process.send_signal(signal.SIGTERM)
    stderr = "\n".join(service.stderr)
    assert len(service.printed("lifespan ended")) == workers
    # One worker is this process, whose failure is its own; several report theirs here.
    assert service.process.returncode == 1, stderr
    if workers > 1:
        assert re.search(
            r"streamkit: error: worker streamkit-worker-\d \(pid \d+\) exited with 1", stderr
        )
