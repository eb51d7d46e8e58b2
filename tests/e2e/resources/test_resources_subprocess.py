"""A command's output through real hypercorn: lines streamed, the command stopped and reaped
however the stream ends.

The release on each of the five endings is in test_resources_endings.py; here: a complete
run, exit statuses, a command that ignores SIGTERM, standard error, a missing program, one
that closes its output and runs on, a grandchild holding the output, a line without end.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.resource_checks import process_state

from streamkit import EndReason, NDJSONResponse, StreamEnd, StreamResponse
from streamkit.resources import ProcessExitError, open_subprocess, subprocess_lines
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: Generous: stopping a command that exits on SIGTERM takes 1 to 3 ms (measured).
RELEASE_BOUND = 1.0


def python(script: str) -> list[str]:
    return [sys.executable, "-u", "-c", script]


def lines_app(command: list[str] | str, **options: Any) -> Starlette:
    stream = {name: options.pop(name) for name in list(options) if name.endswith("_item")}

    async def lines(request: Request) -> Response:
        return NDJSONResponse(subprocess_lines(command, **options), **stream)

    return Starlette(routes=[Route("/", lines)])


async def leave_after_the_pid(app: Starlette) -> tuple[int, StreamEnd]:
    """Serve *app*, read the first line of ``/`` (its command's pid), then leave; return the
    pid and the stream's end, which must be for the client's leaving."""
    async with open_server(app) as server:
        async with open_stream(server, "/") as client:
            pid = int(await client.read_item())
            await client.close()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    return pid, end


async def test_every_line_is_sent_and_the_command_reaped() -> None:
    script = "import os; print(os.getpid()); print('a'); print('b\\r'); print('', end='c')"
    async with open_server(lines_app(python(script))) as server:
        async with open_stream(server, "/") as client:
            pid = int(await client.read_item())
            rest = [await client.read_item() for _ in range(3)]
            assert await client.read_all() == b""
        await server.wait_ended(EndReason.COMPLETED)
    assert rest == ["a", "b", "c"]
    assert process_state(pid) is None


@pytest.mark.parametrize("check", [True, False])
async def test_a_failure_status_ends_the_stream_with_an_error_if_checked(check: bool) -> None:
    command = python("print('partial'); raise SystemExit(3)")
    app = lines_app(command, check=check, error_item={"error": "command failed"})
    async with open_server(app) as server:
        async with open_stream(server, "/") as client:
            items = [await client.read_item()]
            items.append(await client.read_item() if check else None)
            assert await client.read_all() == b""
        if check:
            end = await server.wait_ended(EndReason.ERROR)
            assert isinstance(end.exception, ProcessExitError)
            assert end.exception.returncode == 3
            assert "exited with status 3" in str(end.exception)
            assert items == ["partial", {"error": "command failed"}]
        else:
            await server.wait_ended(EndReason.COMPLETED)
            assert items == ["partial", None]


async def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    script = (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(os.getpid()); time.sleep(600)"
    )
    grace = 0.3
    pid, end = await leave_after_the_pid(lines_app(python(script), stop_grace_period=grace))
    assert grace <= end.cleanup_duration < grace + RELEASE_BOUND
    assert process_state(pid) is None


async def test_standard_error_can_be_merged_into_the_output() -> None:
    script = "import sys; print('out'); print('err', file=sys.stderr)"
    async with open_server(lines_app(python(script), stderr=subprocess.STDOUT)) as server:
        async with open_stream(server, "/") as client:
            assert sorted([await client.read_item(), await client.read_item()]) == ["err", "out"]
            assert await client.read_all() == b""
        await server.wait_ended(EndReason.COMPLETED)


async def test_lines_become_bytes_chunks_with_a_transform() -> None:
    async def output(request: Request) -> Response:
        lines = subprocess_lines(python("print('one'); print('two')"), transform=lambda x: x + "\n")
        return StreamResponse(lines, media_type="text/plain")

    async with open_server(Starlette(routes=[Route("/", output)])) as server:
        async with open_stream(server, "/") as client:
            assert await client.read_all() == b"one\ntwo\n"


async def test_a_missing_program_ends_the_stream_with_an_error() -> None:
    async with open_server(lines_app(["/nonexistent/program"])) as server:
        async with open_stream(server, "/") as client:
            assert await client.read_all() == b""
        end = await server.wait_ended(EndReason.ERROR)
    assert isinstance(end.exception, FileNotFoundError)


async def test_open_subprocess_refuses_an_unread_stderr_pipe() -> None:
    with pytest.raises(ValueError, match=r"got subprocess\.PIPE"):
        async with open_subprocess(["true"], stderr=subprocess.PIPE):
            pass


async def test_open_subprocess_stops_the_whole_group_when_its_block_is_cancelled() -> None:
    script = (
        "import subprocess, sys; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(child.pid, flush=True); child.wait()"
    )
    with anyio.CancelScope() as scope:
        async with open_subprocess(python(script)) as process:
            assert process.stdout is not None
            child = int((await process.stdout.receive()).decode())
            scope.cancel()
            await anyio.sleep_forever()
    assert process.returncode is not None
    assert process_state(process.pid) is None
    with anyio.fail_after(RELEASE_BOUND):
        # Polled: the grandchild is reaped by init, and nothing signals us when it is.
        while True:
            if process_state(child) in (None, "Z"):
                break
            await anyio.sleep(0.005)


async def wait_gone(pid: int) -> None:
    """Until *pid* has exited: polled, for a process init reaps, which nothing signals."""
    with anyio.fail_after(RELEASE_BOUND):
        while True:
            if process_state(pid) in (None, "Z"):
                break
            await anyio.sleep(0.005)


async def test_a_command_that_closes_its_output_and_runs_on_is_stopped_when_the_client_leaves() -> (
    None
):
    # The stream waits for it to exit (it completes once the command has exited): a client
    # that leaves meanwhile stops it, within the grace period, and it is reaped.
    script = "import os, time; print(os.getpid()); os.close(1); time.sleep(600)"
    grace = 0.3
    pid, end = await leave_after_the_pid(lines_app(python(script), stop_grace_period=grace))
    assert end.cleanup_duration is not None
    assert end.cleanup_duration < grace  # it exits on SIGTERM
    assert process_state(pid) is None


async def test_a_grandchild_holding_the_output_that_ignores_sigterm_is_killed_with_its_group() -> (
    None
):
    # The command exits, leaving a grandchild that holds its output open and ignores
    # SIGTERM: the stream goes on reading it, and its leaving kills it, group and all.
    grandchild = (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(os.getpid(), flush=True); print('from the grandchild', flush=True); "
        "time.sleep(600)"
    )
    script = (
        "import os, subprocess, sys; print(os.getpid(), flush=True); "
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}])"
    )
    async with open_server(lines_app(python(script), stop_grace_period=30.0)) as server:
        async with open_stream(server, "/") as client:
            leader = int(await client.read_item())
            child = int(await client.read_item())
            assert await client.read_item() == "from the grandchild"
            await wait_gone(leader)  # exited, unreaped: the stream still reads the grandchild
            await client.close()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert end.cleanup_duration is not None
    assert end.cleanup_duration < RELEASE_BOUND  # the leader had exited: no grace to wait
    assert process_state(leader) is None  # reaped, no zombie
    await wait_gone(child)


async def test_a_line_of_100_mib_without_a_newline_comes_in_pieces_of_the_line_length() -> None:
    size, length = 100 * 1024 * 1024, 1024 * 1024
    script = f"import sys; sys.stdout.buffer.write(b'x' * {size})"
    async with open_server(lines_app(python(script), max_line_length=length)) as server:
        async with open_stream(server, "/") as client:
            pieces: list[str] = []
            with anyio.fail_after(60):
                while len(pieces) < size // length:
                    pieces.append(await client.read_item())
                assert await client.read_all() == b""
        await server.wait_ended(EndReason.COMPLETED)
    assert [len(piece) for piece in pieces] == [length] * (size // length)


async def test_a_grace_period_past_the_cleanup_timeout_is_cut_short_by_sigkill() -> None:
    # The stop is the stream's cleanup, which cleanup_timeout bounds: SIGKILL comes then, and
    # the command is still reaped.
    script = (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(os.getpid()); time.sleep(600)"
    )
    cleanup_timeout = 0.3

    async def lines(request: Request) -> Response:
        producer = subprocess_lines(python(script), stop_grace_period=30.0)
        return NDJSONResponse(producer, cleanup_timeout=cleanup_timeout)

    pid, end = await leave_after_the_pid(Starlette(routes=[Route("/", lines)]))
    assert end.cleanup_duration is not None
    assert cleanup_timeout <= end.cleanup_duration < cleanup_timeout + RELEASE_BOUND
    assert process_state(pid) is None
