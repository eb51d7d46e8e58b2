"""Joining a foreign server's shutdown, in this process: the handler a server installed is
wrapped and still called, a real SIGTERM drains the running stream (its farewell is sent and
its cleanup completes), and handlers no server installed are left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from types import FrameType

import anyio
import pytest

from streamkit import EndReason, EventSourceResponse, ServerSentEvent, StreamEnd, StreamSender
from streamkit._registry import registry
from streamkit._server_shutdown import _Chained, arm_shutdown_watch, served_by_streamkit
from streamkit.testing import FakeConnection

pytestmark = pytest.mark.anyio


class ServerHandler:
    """What a server installs for SIGTERM (uvicorn's ``handle_exit``)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.calls.append(signum)


@pytest.fixture
def server_handler() -> Iterator[ServerHandler]:
    handler = ServerHandler()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGTERM, previous)
        # The drain is for good in a real server; this process serves other tests after it.
        registry._draining = False


async def test_sigterm_drains_a_stream_and_the_servers_handler_still_runs(
    server_handler: ServerHandler,
) -> None:
    ends: list[StreamEnd] = []
    cleaned, started = anyio.Event(), anyio.Event()

    async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
        async def cleanup() -> None:
            await anyio.sleep(0.01)
            cleaned.set()

        send.push_async_callback(cleanup)
        await send("first")
        started.set()
        await anyio.sleep_forever()

    response = EventSourceResponse(produce, on_end=ends.append)
    connection = FakeConnection("/feed")
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(connection.run, response)
        with anyio.fail_after(2):
            await started.wait()
        assert isinstance(signal.getsignal(signal.SIGTERM), _Chained)
        signalled = anyio.current_time()
        os.kill(os.getpid(), signal.SIGTERM)
    took = anyio.current_time() - signalled
    assert server_handler.calls == [signal.SIGTERM]
    assert [end.reason for end in ends] == [EndReason.SHUTDOWN]
    assert cleaned.is_set()
    assert connection.events()[-1] == ServerSentEvent(event="shutdown", data="", retry=1000)
    assert connection.complete
    assert took < 0.5  # measured: about 15 ms, 10 of them the cleanup


async def test_a_handler_is_wrapped_once_however_many_streams_start(
    server_handler: ServerHandler,
) -> None:
    arm_shutdown_watch()
    wrapped = signal.getsignal(signal.SIGTERM)
    arm_shutdown_watch()
    assert signal.getsignal(signal.SIGTERM) is wrapped
    assert isinstance(wrapped, _Chained)
    assert wrapped.previous is server_handler


async def test_no_handler_of_a_server_means_nothing_is_wrapped() -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        arm_shutdown_watch()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        # Ctrl-C stays Python's (or the event loop's) own.
        assert not isinstance(signal.getsignal(signal.SIGINT), _Chained)
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_nothing_is_armed_under_streamkits_own_server(server_handler: ServerHandler) -> None:
    token = served_by_streamkit.set(True)
    try:
        arm_shutdown_watch()
    finally:
        served_by_streamkit.reset(token)
    assert signal.getsignal(signal.SIGTERM) is server_handler


NO_SERVER = """
import os
import threading

import anyio

from streamkit import EventSourceResponse
from streamkit.testing import FakeConnection


async def main():
    before = (len(os.listdir("/proc/self/fd")), threading.active_count())

    async def produce(send):
        await send("one")

    connection = FakeConnection("/feed")
    await connection.run(EventSourceResponse(produce))
    after = (len(os.listdir("/proc/self/fd")), threading.active_count())
    print(before == after, connection.complete)


anyio.run(main, backend=BACKEND)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists /proc/self/fd")
def test_with_no_server_to_join_a_stream_opens_no_descriptor_and_no_thread() -> None:
    """What a leak check in a user's test suite would see: nothing."""
    for backend in ("asyncio", "trio"):
        result = subprocess.run(
            [sys.executable, "-c", NO_SERVER.replace("BACKEND", repr(backend))],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert result.stdout.split() == ["True", "True"], result.stderr


async def _arm() -> None:
    arm_shutdown_watch()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
def test_a_forked_child_wraps_the_servers_handler_for_itself(
    server_handler: ServerHandler,
) -> None:
    anyio.run(_arm)
    parents = signal.getsignal(signal.SIGTERM)
    assert isinstance(parents, _Chained)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: arm, and report whether its own watch wraps the server's handler
        try:
            anyio.run(_arm)
            mine = signal.getsignal(signal.SIGTERM)
            ok = (
                isinstance(mine, _Chained)
                and mine is not parents
                and mine.previous is server_handler
            )
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        assert answer.read() == b"1"
    os.waitpid(pid, 0)
