"""The leak checks: they pass after a clean run against a real server, and each kind of leak
fails them with a message naming what leaked."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from support.resource_checks import process_state

from streamkit import EndReason, NDJSONResponse, StreamkitError, StreamSender
from streamkit.testing import (
    LeakError,
    ResourceSnapshot,
    open_h2_stream,
    open_leak_check,
    open_server,
    open_stream,
)
from streamkit.testing._leaks import wait_released


def make_app() -> Starlette:
    async def endless(request: Request) -> Response:
        async def produce(send: StreamSender[object]) -> None:
            number = 0
            while True:
                await send({"n": number})
                number += 1
                await anyio.sleep(0.005)

        return NDJSONResponse(produce)

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/endless", endless), Route("/hello", hello)])


@pytest.mark.anyio
@pytest.mark.e2e
async def test_a_server_and_its_streams_leave_nothing_behind() -> None:
    with anyio.fail_after(20):
        async with open_leak_check():
            async with open_server(make_app()) as server:
                for leave in ("close", "reset"):
                    async with open_stream(server, "/endless") as client:
                        await client.read_item()
                        await getattr(client, leave)()
                    await server.wait_ended(EndReason.CLIENT_DISCONNECTED)


@pytest.mark.anyio
@pytest.mark.e2e
@pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]
)
async def test_a_server_opened_inside_the_check_on_uvloop_leaves_nothing_behind(
    anyio_backend: object,
) -> None:
    # libuv opens /dev/null on a loop's first stream and holds it for the loop's life: a check
    # around the first server on a loop, each test's under anyio's plugin, named it.
    with anyio.fail_after(20):
        async with open_leak_check(), open_server(make_app()) as server:
            async with open_stream(server, "/hello") as reader:
                assert await reader.read_all() == b"hello"


@pytest.mark.anyio
@pytest.mark.e2e
@pytest.mark.parametrize("client", ["http1", "http2", "httpx"])
async def test_a_completed_request_on_a_server_opened_before_the_check_is_no_leak(
    client: str,
) -> None:
    # hypercorn kept a connection its client had closed after a complete response until its
    # keep-alive timeout, five seconds (on asyncio over HTTP/1.1, on trio over HTTP/2): a
    # leak check of a second named its socket and tasks.
    with anyio.fail_after(20):
        async with open_server(make_app()) as server, open_leak_check():
            if client == "http1":
                async with open_stream(server, "/hello") as reader:
                    assert await reader.read_all() == b"hello"
            elif client == "http2":
                async with open_h2_stream(server, "/hello") as reader:
                    assert await reader.read_all() == b"hello"
            else:
                async with httpx.AsyncClient() as http:
                    assert (await http.get(f"{server.url}/hello")).text == "hello"


@pytest.mark.anyio
async def test_a_leaked_socket_is_named() -> None:
    server_socket = socket.create_server(("127.0.0.1", 0))
    port = server_socket.getsockname()[1]
    try:
        with pytest.raises(LeakError) as caught:
            async with open_leak_check(within=0.05):
                leaked = socket.create_connection(("127.0.0.1", port))
    finally:
        server_socket.close()
    leaked.close()
    message = str(caught.value)
    assert message.startswith("leaked 1 file descriptor:")
    assert f"file descriptor {leaked_fileno(caught.value)}" in message
    assert f"-> 127.0.0.1:{port}, ESTABLISHED)" in message
    assert caught.value.child_processes == ()
    assert caught.value.tasks == ()


def leaked_fileno(error: LeakError) -> int:
    return int(error.file_descriptors[0].split(":")[0].rsplit(" ", 1)[1])


@pytest.mark.anyio
async def test_a_leaked_task_is_named_with_where_it_waits() -> None:
    async def linger() -> None:
        await anyio.sleep_forever()

    async with anyio.create_task_group() as task_group:
        with pytest.raises(LeakError) as caught:
            async with open_leak_check(within=0.05):
                task_group.start_soon(linger, name="lingerer")
        task_group.cancel_scope.cancel()
    (task,) = caught.value.tasks
    assert task.startswith(f"task 'lingerer' suspended in {linger.__qualname__} ({__file__}:")
    assert "1 task:" in str(caught.value)


@pytest.mark.anyio
async def test_what_is_released_within_the_grace_period_is_no_leak() -> None:
    released = anyio.Event()

    async def close_soon(sock: socket.socket) -> None:
        await anyio.sleep(0.05)
        sock.close()
        released.set()

    async with anyio.create_task_group() as task_group:
        async with open_leak_check(within=5.0):
            task_group.start_soon(close_soon, socket.socket())
        assert released.is_set()


@pytest.mark.anyio
async def test_the_check_is_skipped_when_the_block_raises() -> None:
    opened: list[socket.socket] = []

    async def leak_then_fail() -> None:
        async with open_leak_check(within=0.05):
            opened.append(socket.socket())
            raise KeyError("the block's own error")

    try:
        with pytest.raises(KeyError):
            await leak_then_fail()
    finally:
        for sock in opened:
            sock.close()


def test_a_leaked_child_process_is_named() -> None:
    before = ResourceSnapshot.take(tasks=False)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(LeakError) as caught:
            wait_released(before, within=0.05)
    finally:
        child.kill()
        child.wait()
    assert caught.value.child_processes == (
        f"child process {child.pid}: {sys.executable} -c import time; time.sleep(30)",
    )
    wait_released(before, within=1.0)


def test_an_unreaped_child_is_named_as_such() -> None:
    before = ResourceSnapshot.take(tasks=False)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not waited for: once it exits it stays a zombie until reaped.
        deadline = time.monotonic() + 10
        while process_state(child.pid) != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        with pytest.raises(LeakError, match=rf"child process {child.pid} \(exited, never reaped\)"):
            wait_released(before, within=0.05)
    finally:
        child.wait()
    wait_released(before, within=1.0)


def test_leak_error_is_an_assertion_error_and_a_streamkit_error() -> None:
    assert issubclass(LeakError, AssertionError)
    assert issubclass(LeakError, StreamkitError)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("within", "error"),
    [(float("nan"), ValueError), (-1.0, ValueError), (float("inf"), ValueError), ("1", TypeError)],
)
async def test_a_bad_grace_period_is_refused_before_the_block(
    within: float, error: type[Exception]
) -> None:
    # With NaN, a leak's check polled for ever.
    entered = False
    with pytest.raises(error, match=r"^within must be a"):
        async with open_leak_check(within=within):
            entered = True
    assert not entered
    with pytest.raises(error, match=r"^within must be a"):
        wait_released(ResourceSnapshot.take(tasks=False), within=within)


@pytest.mark.anyio
@pytest.mark.parametrize("tasks", ["no", 0, None])
async def test_a_tasks_that_is_no_bool_is_refused_naming_it_before_the_block(tasks: object) -> None:
    # A truthy "no" checked the tasks, a falsy 0 did not: neither said why.
    with pytest.raises(TypeError, match=rf"^tasks must be a bool, got .*{tasks!r}$"):
        async with open_leak_check(tasks=tasks):  # type: ignore[arg-type]
            raise AssertionError("the block ran")
    with pytest.raises(TypeError, match=rf"^tasks must be a bool, got .*{tasks!r}$"):
        ResourceSnapshot.take(tasks=tasks)  # type: ignore[arg-type]


def test_a_before_that_is_no_snapshot_is_refused_naming_it() -> None:
    with pytest.raises(TypeError, match=r"^before must be a ResourceSnapshot, got dict: \{\}$"):
        wait_released({}, within=1.0)  # type: ignore[arg-type]
