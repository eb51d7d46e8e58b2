"""The behaviour table under the servers people deploy on, each run as a real process that
receives a real SIGTERM: uvicorn (asyncio loop and uvloop), gunicorn with uvicorn's worker
class (two workers), the hypercorn command (``-k asyncio`` and ``-k trio``) and
``streamkit run`` (both backends). The client runs on the server's own backend.

One process per server serves a plain Starlette app returning streamkit's responses through
the disconnect (of a stream, and of a topic subscriber that keeps up with bursts or fell
behind), heartbeat, stall and deadline cases and then its shutdown; a second serves a
:class:`streamkit.App` and is shut down with one client reading and one that stopped reading.
The service prints each stream's end, and whether its cleanup had completed, on stdout.
Last, the README's quickstart (``anyio.run(serve, app)``) and ``streamkit run`` log each
stream's end, and not a library's INFO lines.

The bounds are the guarantees (farewell within 100 ms of the signal) or generous multiples of
the measured figures (docs/deploying.md has them), for a loaded 2-core machine.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import h2.errors
import pytest
from support import service_process
from support.h2_heads import CONNECT, send_head
from support.service_process import Running, read_farewell
from support.unavailable import require_modules

from streamkit import ServerSentEvent
from streamkit.testing import StreamClient, open_h2_connection, open_stream
from streamkit.testing._client import connect

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: The servers' own grace periods (uvicorn's is unbounded unless set: it is left unset, as
#: most deployments leave it, and streamkit bounds the stalled case itself).
GRACE = 5
#: A send_timeout short enough for the suite; the stalled cases are bounded by it.
SEND_TIMEOUT = 1.0
#: The guarantee: every open stream has its farewell this soon after SIGTERM.
FAREWELL_BOUND = 0.1
#: From SIGTERM to the process gone, with only reading clients (measured: 0.1-0.4 s).
EXIT_BOUND = 2.0
#: Starting means importing Python, the server and the service: slow on a loaded machine.
START_BOUND = 30.0
#: A request body larger than a stream route keeps unread and than the sockets' buffers.
LARGE_BODY = 32 * 1024 * 1024
#: The cleanup_timeout of a route whose producer shields itself from its cancellation...
STUBBORN_CLEANUP = 0.5
#: ...for this long: past that timeout, within the servers' grace period.
SHIELDED = 2.0

SERVICE = (
    """
import os
import time
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import streamkit
from streamkit import EventSourceResponse, ServerSentEvent
from streamkit.broadcast import MemoryBroker, topic_response

cleaned = set()
broker = MemoryBroker(history_size=16)


def say(line):
    # One write of the whole line: gunicorn's workers share the pipe, and print() may write
    # the text and its newline apart, so two workers' lines could interleave.
    os.write(1, f"{line}\\n".encode())


def on_end(end):
    name = end.path.rsplit("/", 1)[1]
    say(f"end {name} {end.reason.value} cleanup={name in cleaned}")


def producer(request):
    name = request.path_params["name"]
    size = int(request.query_params.get("size", "8"))
    period = float(request.query_params.get("period", "0.02"))
    hold = float(request.query_params.get("hold", "0.01"))

    async def produce(send):
        async def cleanup():
            await anyio.sleep(hold)  # an awaited cleanup: shielded, and it completes
            cleaned.add(name)

        send.push_async_callback(cleanup)
        sent_at = time.monotonic()

        async def watch():
            while time.monotonic() - sent_at < 0.3:
                await anyio.sleep(0.05)
            say(f"stuck {name}")  # the buffer stayed full: the writes are stuck

        if period == 0:  # one event, then quiet: only heartbeats
            await send(ServerSentEvent(data="x" * size, id="0"))
            await anyio.sleep_forever()
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(watch)
            n = 0
            while True:
                await send(ServerSentEvent(data="x" * size, id=str(n)))
                sent_at = time.monotonic()
                n += 1
                await anyio.sleep(period)

    return produce


async def events(request):
    options = {
        name: float(request.query_params[name])
        for name in ("heartbeat_interval", "send_timeout", "max_duration", "cleanup_timeout")
        if name in request.query_params
    }
    return EventSourceResponse(producer(request), on_end=on_end, **options)


async def topics(request):
    # Every subscriber is on one topic; the last part of the path names it in what is said.
    def on_topic_end(end):
        name = end.path.rsplit("/", 1)[1]
        subscribers = broker.topic_statistics("ticks").subscribers
        say(f"topic-end {name} {end.reason.value} subscribers={subscribers}")

    return topic_response(broker, "ticks", on_end=on_topic_end)


async def tick():
    # In bursts, as publish_many() makes them: a subscriber that keeps up has each burst put
    # into its stream's buffer at once, and its writer sends it in one write.
    while True:
        await broker.publish_many("ticks", ["tick"] * 4)
        await anyio.sleep(0.02)


# Big events, a small stream buffer and a subscriber buffer of one: a subscriber that stops
# reading soon falls behind, and its stream is fed by its subscription, not the hub.
big = MemoryBroker(history_size=16, subscriber_buffer=1)
big_names = []  # of this process's subscribers, the last one latest (one at a time)


async def big_topics(request):
    big_names.append(request.path_params["name"])

    def on_big_end(end):
        name = end.path.rsplit("/", 1)[1]
        subscribers = big.topic_statistics("big").subscribers
        say(f"big-end {name} {end.reason.value} subscribers={subscribers}")

    return topic_response(big, "big", buffer_size=2, send_timeout=60, on_end=on_big_end)


async def publish_big():
    # Only while someone subscribes; says when the subscriber fell behind. (The topic's counts
    # start again with the next subscriber, who is behind only ~50 events on.)
    seen = 0
    while True:
        if not big.topic_statistics("big").subscribers:
            await anyio.sleep(0.02)
            continue
        await big.publish("big", "x" * 65536)
        catch_ups = big.topic_statistics("big").catch_ups
        if catch_ups > seen:
            say(f"big-behind {big_names[-1]}")
        seen = catch_ups
        await anyio.sleep(0.005)


@asynccontextmanager
async def plain_lifespan(app):
    async with broker, big, anyio.create_task_group() as task_group:
        task_group.start_soon(tick)
        task_group.start_soon(publish_big)
        yield
        task_group.cancel_scope.cancel()


released = anyio.Event()


async def slow_upload(request):  # reads its body only once /release is asked for
    await released.wait()
    return PlainTextResponse(str(len(await request.body())))


async def release(request):
    released.set()
    return PlainTextResponse("released")


plain = Starlette(
    routes=[
        Route("/events/{name}", events),
        Route("/topics/{name}", topics),
        Route("/big/{name}", big_topics),
        Route("/slow", slow_upload, methods=["POST"]),
        Route("/release", release),
    ],
    lifespan=plain_lifespan,
)


@asynccontextmanager
async def lifespan(app):
    say("lifespan started")
    yield
    say("lifespan ended")


app = streamkit.App(send_timeout=SEND_TIMEOUT, lifespan=lifespan)


@app.sse("/events/{name}", on_end=on_end)
async def app_events(request, send):
    await producer(request)(send)


@app.ndjson("/dropping/{name}", on_end=on_end)
async def app_dropping(request, send):  # drops each item its client does not take in 0.1 s
    while True:
        with anyio.move_on_after(0.1):
            await send({"pad": "x" * 65536})
        await anyio.sleep(0.01)


@app.sse("/upload/{name}", methods=["POST"], on_end=on_end)
async def app_upload(request, send):  # the body is never read
    await producer(request)(send)


@app.sse("/late/{name}", methods=["POST"], on_end=on_end)
async def app_late(request, send):  # reads its body only once its client has left
    await send(ServerSentEvent(data="started"))
    with anyio.CancelScope(shield=True):
        while not await request.is_disconnected():
            await anyio.sleep(0.01)
    cleaned.add(request.path_params["name"])  # it got to the read
    await request.body()


@app.sse("/stubborn/{name}", on_end=on_end, cleanup_timeout=STUBBORN_CLEANUP)
async def app_stubborn(request, send):  # refuses its cancellation for SHIELDED s
    await send(ServerSentEvent(data="open"))
    with anyio.CancelScope(shield=True):
        await anyio.sleep(SHIELDED)
""".replace("SEND_TIMEOUT", repr(SEND_TIMEOUT))
    .replace("STUBBORN_CLEANUP", repr(STUBBORN_CLEANUP))
    .replace("SHIELDED", repr(SHIELDED))
)


@dataclass(frozen=True)
class Server:
    """How to start one server, and how it ends on SIGTERM."""

    name: str
    backend: str
    modules: tuple[str, ...]
    #: The process's exit status after SIGTERM: uvicorn re-raises the signal once it is done.
    exit_status: int = 0

    def command(self, target: str) -> list[str]:
        python = [sys.executable, "-m"]
        if self.name.startswith("uvicorn"):
            loop = "uvloop" if self.name.endswith("uvloop") else "asyncio"
            return [
                *python,
                "uvicorn",
                target,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--loop",
                loop,
            ]
        if self.name == "gunicorn":
            return [
                *python,
                "gunicorn",
                "-k",
                "uvicorn_worker.UvicornWorker",
                "-w",
                "2",
                "-b",
                "127.0.0.1:0",
                "--graceful-timeout",
                str(GRACE),
                "--no-control-socket",
                target,
            ]
        if self.name.startswith("hypercorn"):
            grace = ["--graceful-timeout", str(GRACE)]
            return [*python, "hypercorn", "-k", self.backend, "-b", "127.0.0.1:0", *grace, target]
        bind = ["--bind", "127.0.0.1:0", "--grace-period", str(GRACE)]
        return [*python, "streamkit", "run", target, "--backend", self.backend, *bind]


SERVERS = [
    Server("uvicorn", "asyncio", ("uvicorn",), exit_status=-signal.SIGTERM),
    Server("uvicorn-uvloop", "asyncio", ("uvicorn", "uvloop"), exit_status=-signal.SIGTERM),
    Server("gunicorn", "asyncio", ("gunicorn", "uvicorn_worker")),
    Server("hypercorn-asyncio", "asyncio", ("hypercorn",)),
    Server("hypercorn-trio", "trio", ("hypercorn",)),
    Server("streamkit-asyncio", "asyncio", ()),
    Server("streamkit-trio", "trio", ()),
]


@pytest.fixture(params=SERVERS, ids=[server.name for server in SERVERS])
def server(request: pytest.FixtureRequest) -> Server:
    chosen: Server = request.param
    require_modules(*chosen.modules)
    return chosen


@pytest.fixture
def anyio_backend(server: Server) -> str:
    return server.backend


@asynccontextmanager
async def running(command: list[str], tmp_path: Path) -> AsyncIterator[Running]:
    async with service_process.running(
        command, tmp_path, SERVICE, start_within=START_BOUND, exit_within=GRACE + 10
    ) as service:
        yield service


async def leave_then_see(service: Running, client: StreamClient, how: str, end: str) -> None:
    """Leave (``close`` or ``reset`` the connection), then see the service print *end*, the
    stream's end, once, within 1 s (measured: a few ms, plus the pipe). Its first two words
    (what ended, and the stream's name) are what is waited for."""
    await (client.close() if how == "close" else client.reset())
    left_at = anyio.current_time()
    prefix = " ".join(end.split()[:2]) + " "
    ended_at = await service.wait_line(prefix)
    assert service.printed(prefix) == [end]
    assert ended_at - left_at < 1.0


async def farewell_after(client: StreamClient, signalled_at: float) -> float:
    """Read to the end of the body; the seconds from the signal to the farewell."""
    with anyio.fail_after(GRACE):
        arrived = await read_farewell(client)
    return arrived - signalled_at


async def shut_down_during_a_stream(service: Running, path: str) -> tuple[float, float]:
    """Signal the server once the stream at *path* has sent its first event; the seconds from
    the signal to that stream's farewell, and to the server's exit."""
    async with open_stream(service, path) as client:
        await client.read_event()
        signalled_at = service.signal_and_time()
        farewell = await farewell_after(client, signalled_at)
    exited_at = await service.wait_exit(within=GRACE + 5)
    return farewell, exited_at - signalled_at


async def test_the_behaviour_table_then_shutdown(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(server.command("service:plain"), tmp_path) as service:
        for leave in ("close", "reset"):
            async with open_stream(service, f"/events/{leave}") as client:
                await client.read_event()
                end = f"end {leave} client_disconnected cleanup=True"
                await leave_then_see(service, client, leave, end)

        # A topic subscriber that keeps up: its producer's task hears the client leave.
        for leave in ("close", "reset"):
            async with open_stream(service, f"/topics/{leave}") as client:
                await client.read_event()  # live: the hub fills its stream's buffer
                end = f"topic-end {leave} client_disconnected subscribers=0"
                await leave_then_see(service, client, leave, end)

        # One that fell behind: the hub let go of it, its subscription feeds its stream (its
        # producer's task stopped listening to do so), and its writer is stuck in a write.
        # Leaving fails that write here; one that leaves while its writer waits is heard by
        # the watcher, started again (tests/broadcast/test_fanout.py).
        for leave in ("close", "reset"):
            async with open_stream(service, f"/big/{leave}", receive_buffer=4096) as client:
                client.stall()
                await service.wait_line(f"big-behind {leave}")
                end = f"big-end {leave} client_disconnected subscribers=0"
                await leave_then_see(service, client, leave, end)

        async with open_stream(service, "/events/beat?period=0&heartbeat_interval=0.2") as client:
            await client.read_event()
            started = anyio.current_time()
            with anyio.fail_after(2):
                chunk = await client.receive_chunk()
            assert chunk == b": ping\n\n"
            assert 0.15 < anyio.current_time() - started < 1.0

        stalled = f"/events/stalled?size=65536&period=0.005&send_timeout={SEND_TIMEOUT}"
        async with open_stream(service, stalled, receive_buffer=4096) as client:
            client.stall()
            stuck_at = await service.wait_line("stuck stalled")
            ended_at = await service.wait_line("end stalled ", within=SEND_TIMEOUT + 5)
        assert service.printed("end stalled ") == ["end stalled send_timeout cleanup=True"]
        assert ended_at - stuck_at < SEND_TIMEOUT + 1.0

        async with open_stream(service, "/events/deadline?max_duration=0.3") as client:
            started = anyio.current_time()
            with anyio.fail_after(3):
                await client.read_all()
            assert client.complete
            assert 0.25 < anyio.current_time() - started < 1.5
        await service.wait_line("end deadline ")
        assert service.printed("end deadline ") == ["end deadline deadline cleanup=True"]

        farewell, exit_time = await shut_down_during_a_stream(service, "/events/bye")
    assert service.printed("end bye ") == ["end bye shutdown cleanup=True"]
    assert service.process.returncode == server.exit_status, "\n".join(service.stderr)
    # The stalled connection was let go once its write was given up.
    assert any("aborted: the client stopped reading" in line for line in service.stderr)
    # What the README promises: the server logs each stream's end.
    assert any("stream /events/close ended: client_disconnected" in line for line in service.stderr)
    with capsys.disabled():
        print(f"\n{server.name}: farewell {farewell * 1000:.0f} ms, exit {exit_time:.2f} s")
    assert farewell < FAREWELL_BOUND
    assert exit_time < EXIT_BOUND


#: How long a stream's cleanup holds the drain open while a client connects.
HELD = 3.0


#: Under gunicorn and the hypercorn command, the listening socket stays open in some process
#: for a while after the signal, and the kernel may take a connection that nothing answers:
#: not an outcome a test can wait for.
ANSWERING_IN_THE_DRAIN = [
    server for server in SERVERS if not server.name.startswith(("gunicorn", "hypercorn"))
]


@pytest.mark.parametrize(
    "server",
    ANSWERING_IN_THE_DRAIN,
    ids=[server.name for server in ANSWERING_IN_THE_DRAIN],
    indirect=True,
)
async def test_a_client_that_connects_during_the_drain(server: Server, tmp_path: Path) -> None:
    # What deploying.md says of it: once uvicorn has begun its shutdown, it no longer listens;
    # streamkit run serves on until the drain is over, and a stream that starts then ends at
    # once with its farewell.
    held = f"/events/held?hold={HELD}&cleanup_timeout={HELD + 1}"
    late: list[ServerSentEvent] | ConnectionError
    async with running(server.command("service:plain"), tmp_path) as service:
        async with (
            open_stream(service, held) as holding,
            open_stream(service, "/events/bye") as bye,
        ):
            await holding.read_event()
            await bye.read_event()
            service.signal_and_time()
            await read_farewell(bye)  # the drain has begun; the held cleanup goes on
            if server.name.startswith("uvicorn"):
                # uvicorn closes its listening socket as it says so.
                with anyio.fail_after(5):
                    while not any("Shutting down" in line for line in service.stderr):  # noqa: ASYNC110
                        await anyio.sleep(0.01)
            try:
                async with open_stream(service, "/events/late") as client:
                    late = [event async for event in client.events()]
            except ConnectionError as exc:
                late = exc
            held_over = bool(service.printed("end held "))
            await read_farewell(holding)
    assert not held_over  # the late client came while the held cleanup ran
    if server.name.startswith("uvicorn"):
        assert isinstance(late, ConnectionRefusedError)
    else:
        assert late == [ServerSentEvent(event="shutdown", data="", retry=1000)]
        assert service.printed("end late ") == ["end late shutdown cleanup=False"]


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_an_app_route_that_leaves_a_large_body_unread_hears_the_client_leave(
    server: Server, tmp_path: Path, how: str
) -> None:
    # The body is sent to its end (the route reads on, dropping what it did not begin to
    # read), and the client leaving a quiet stream is heard within 1 s: the route used to stop
    # reading past 64 KiB, and the server with it.
    async with running(server.command("service:app"), tmp_path) as service:
        body = bytes(LARGE_BODY)
        head = (
            f"POST /upload/{how}?period=0 HTTP/1.1\r\nhost: test\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        async with await connect(service.host, service.port) as connection:
            with anyio.fail_after(10):
                await connection.send(head.encode() + body)
                received = b""
                while b"data: " not in received:
                    received += await connection.receive()
            if how == "reset":
                raw = connection.extra(anyio.abc.SocketAttribute.raw_socket)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        left_at = anyio.current_time()
        ended_at = await service.wait_line(f"end {how} ")
        service.signal_and_time()
    assert service.printed(f"end {how} ") == [f"end {how} client_disconnected cleanup=True"]
    assert ended_at - left_at < 1.0


async def test_an_app_route_that_reads_its_body_after_the_client_left_is_cancelled_there(
    server: Server, tmp_path: Path
) -> None:
    # The read, in the stream's cancelled scope, was taken for an is_disconnected() poll: the
    # producer was handed Starlette's ClientDisconnect, logged at ERROR as its own error.
    async with running(server.command("service:app"), tmp_path) as service:
        head = "POST /late/late HTTP/1.1\r\nhost: test\r\ncontent-length: 50\r\n\r\n"
        async with await connect(service.host, service.port) as connection:
            with anyio.fail_after(10):
                await connection.send(head.encode() + b"[1,")
                received = b""
                while b"data: started" not in received:
                    received += await connection.receive()
        left_at = anyio.current_time()
        ended_at = await service.wait_line("end late ")
        service.signal_and_time()
    assert service.printed("end late ") == ["end late client_disconnected cleanup=True"]
    assert ended_at - left_at < 1.0
    assert not [line for line in service.stderr if "Traceback" in line], service.stderr


async def test_clients_that_leave_mid_body_as_their_streams_start_are_no_errors(
    server: Server, tmp_path: Path
) -> None:
    # Each client sends part of its body and leaves as its stream's first event is written.
    # Under the hypercorn command's trio worker, which shuts a connection's sending side
    # outside its send lock, that write raised BusyResourceError out of the app: logged as
    # an error with its traceback, and counted as ended by a shutdown.
    clients = 30
    async with running(server.command("service:app"), tmp_path) as service:
        for n in range(clients):
            head = f"POST /upload/gone{n} HTTP/1.1\r\nhost: test\r\ncontent-length: 50\r\n\r\n"
            async with await connect(service.host, service.port) as connection:
                await connection.send(head.encode() + b"[1,")
        for n in range(clients):
            await service.wait_line(f"end gone{n} ", within=10)
        service.signal_and_time()
    assert not [line for line in service.stderr if "Traceback" in line], "\n".join(service.stderr)
    ends = {line.split()[2] for n in range(clients) for line in service.printed(f"end gone{n} ")}
    assert ends == {"client_disconnected"}


async def test_a_stalled_client_of_a_producer_that_drops_what_it_cannot_send_is_timed_out(
    server: Server, tmp_path: Path
) -> None:
    # Each item the producer gave up was its own write on asyncio, the next timed afresh: the
    # stream ran until the kernel cut the connection, and under a server that sets no
    # TCP_USER_TIMEOUT (uvicorn, gunicorn, the hypercorn command) never.
    async with running(server.command("service:app"), tmp_path) as service:
        async with open_stream(service, "/dropping/dropped", receive_buffer=4096) as client:
            client.stall()
            stalled_at = anyio.current_time()
            ended_at = await service.wait_line("end dropped ", within=SEND_TIMEOUT + 9)
        service.signal_and_time()
    assert service.printed("end dropped ") == ["end dropped send_timeout cleanup=False"]
    assert ended_at - stalled_at < SEND_TIMEOUT + 3.0


async def test_shutdown_of_an_app_with_a_client_that_stopped_reading(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(server.command("service:app"), tmp_path) as service:
        stalled = "/events/stalled?size=65536&period=0.005"
        async with (
            open_stream(service, "/events/reading") as reading,
            open_stream(service, stalled, receive_buffer=4096) as stalling,
        ):
            stalling.stall()
            await reading.read_event()
            await service.wait_line("stuck stalled")
            signalled_at = service.signal_and_time()
            farewell = await farewell_after(reading, signalled_at)
            exited_at = await service.wait_exit(within=GRACE + 5)
    assert service.printed("end reading ") == ["end reading shutdown cleanup=True"]
    assert service.printed("end stalled ") == ["end stalled shutdown cleanup=True"]
    # The App's lifespan shutdown ran, in every worker that started one.
    assert len(service.printed("lifespan ended")) == len(service.printed("lifespan started"))
    assert service.process.returncode == server.exit_status, "\n".join(service.stderr)
    exit_time = exited_at - signalled_at
    with capsys.disabled():
        print(f"\n{server.name}: stalled client, farewell {farewell * 1000:.0f} ms,", end=" ")
        print(f"exit {exit_time:.2f} s")
    assert farewell < FAREWELL_BOUND
    # The stalled write is given up at send_timeout; then its connection is let go.
    assert exit_time < SEND_TIMEOUT + EXIT_BOUND


async def test_an_app_producer_that_refuses_the_shutdown_is_named_and_let_go(
    server: Server, tmp_path: Path
) -> None:
    # The drain that names such a producer ran under streamkit's own server only, in the
    # tests; the App's lifespan drain runs under uvicorn only after its connections closed.
    async with running(server.command("service:app"), tmp_path) as service:
        async with open_stream(service, "/stubborn/stubborn") as client:
            assert (await client.read_event()).data == "open"
            signalled_at = service.signal_and_time()
            # Let go once its cleanup_timeout has passed, the producer still shielded: the
            # farewell, the end of the body, the end reported.
            farewell = await farewell_after(client, signalled_at)
            ended_at = await service.wait_line("end stubborn ", within=SHIELDED)
        exited_at = await service.wait_exit(within=GRACE + 5)
    assert service.printed("end stubborn ") == ["end stubborn shutdown cleanup=False"]
    refusals = [line for line in service.stderr if "refuses cancellation" in line]
    assert len(refusals) == 1, "\n".join(service.stderr)
    assert "stream /stubborn/stubborn: producer app_stubborn refuses cancellation" in refusals[0]
    for let_go in (farewell, ended_at - signalled_at):
        # At cleanup_timeout, not before: less a few milliseconds, as uvloop's timers (libuv's)
        # count whole milliseconds on a clock read once per turn of its loop.
        assert STUBBORN_CLEANUP - 0.02 <= let_go < STUBBORN_CLEANUP + 1.0
    # The server does not cut a shielded trio task (nor, within its grace period, any
    # other): it exits once the producer has returned.
    assert exited_at - signalled_at < SHIELDED + EXIT_BOUND
    assert service.process.returncode == server.exit_status, "\n".join(service.stderr)


#: The README's quickstart, on a free port, and a route whose library logs at INFO.
QUICKSTART = """
import logging
import sys

import anyio
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service import plain
from streamkit import serve


async def chatty(request):
    logging.getLogger("httpx").info("a library's request line")
    return PlainTextResponse("ok")


plain.router.routes.append(Route("/chatty", chatty))
app = plain

if __name__ == "__main__":
    anyio.run(lambda: serve(app, bind="127.0.0.1:0"), backend=sys.argv[1])
"""


@pytest.mark.parametrize(
    "how", ["anyio.run(serve, app)", "streamkit run"], ids=["serve", "streamkit-run"]
)
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_each_stream_end_is_logged_and_other_libraries_keep_their_levels(
    tmp_path: Path, anyio_backend: str, how: str
) -> None:
    (tmp_path / "quickstart.py").write_text(QUICKSTART)
    if how == "streamkit run":
        command = [sys.executable, "-m", "streamkit", "run", "quickstart:app", "--bind"]
        command += ["127.0.0.1:0", "--backend", anyio_backend]
    else:
        command = [sys.executable, "quickstart.py", anyio_backend]
    async with running(command, tmp_path) as service:
        async with open_stream(service, "/chatty") as client:
            assert await client.read_all() == b"ok"
        async with open_stream(service, "/events/left") as client:
            await client.read_event()
            await client.close()
        await service.wait_line("end left ")
        service.process.send_signal(signal.SIGTERM)
        await service.wait_exit(within=GRACE + 5)
    logged = "\n".join(service.stderr)
    assert "stream /events/left ended: client_disconnected" in logged
    assert "a library's request line" not in logged


HYPERCORN = [server for server in SERVERS if server.name.startswith("hypercorn")]
WORKER_PID = re.compile(r"\[(\d+)\] \[INFO\] Running on")


@pytest.mark.parametrize("server", HYPERCORN, ids=[s.name for s in HYPERCORN], indirect=True)
async def test_hypercorn_exits_when_a_worker_that_served_a_stream_is_killed(
    server: Server, tmp_path: Path
) -> None:
    """A worker killed outright (the OOM killer; SIGTERM to the process group, as systemd
    and Ctrl-C send, kills hypercorn's workers too) leaves the parent to set the shutdown
    event and exit. The worker's watch of that event must not be one the dead worker still
    holds: the parent's set() would wait for the dead worker's wake-up for ever."""
    async with running(server.command("service:plain"), tmp_path) as service:
        async with open_stream(service, "/events/served?size=8") as client:
            await client.read_event()  # the stream armed the worker's watch
            worker = next(
                int(found[1]) for line in service.stderr if (found := WORKER_PID.search(line))
            )
            os.kill(worker, signal.SIGKILL)
            await service.wait_exit(within=EXIT_BOUND)


@pytest.mark.parametrize("server", HYPERCORN, ids=[s.name for s in HYPERCORN], indirect=True)
async def test_hypercorn_drains_on_a_sigterm_to_the_process_group(
    server: Server, tmp_path: Path
) -> None:
    """systemd (KillMode=control-group), supervisord's stopasgroup and ``kill -- -PGID`` send
    SIGTERM to every process of the server: hypercorn's workers get it too, and its default
    would kill them mid-stream, with no farewell and no cleanup."""
    async with running(server.command("service:plain"), tmp_path) as service:
        async with open_stream(service, "/events/group") as client:
            await client.read_event()
            os.killpg(service.process.pid, signal.SIGTERM)
            signalled_at = anyio.current_time()
            farewell = await farewell_after(client, signalled_at)
        exited_at = await service.wait_exit(within=GRACE + 5)
    assert service.printed("end group ") == ["end group shutdown cleanup=True"]
    assert service.process.returncode == 0, "\n".join(service.stderr)
    assert farewell < FAREWELL_BOUND
    assert exited_at - signalled_at < EXIT_BOUND


@pytest.mark.parametrize("server", HYPERCORN, ids=[s.name for s in HYPERCORN], indirect=True)
async def test_a_hypercorn_worker_sent_sigterm_alone_drains_then_exits(
    server: Server, tmp_path: Path
) -> None:
    """A SIGTERM to one worker ends it, as the signal's default did, but after its streams'
    farewell and cleanup; the parent then shuts the server down, as it did before."""
    async with running(server.command("service:plain"), tmp_path) as service:
        async with open_stream(service, "/events/alone") as client:
            await client.read_event()
            worker = next(
                int(found[1]) for line in service.stderr if (found := WORKER_PID.search(line))
            )
            os.kill(worker, signal.SIGTERM)
            farewell = await farewell_after(client, anyio.current_time())
        await service.wait_exit(within=GRACE + 5)
    assert service.printed("end alone ") == ["end alone shutdown cleanup=True"]
    assert farewell < FAREWELL_BOUND


@pytest.mark.parametrize("server", HYPERCORN, ids=[s.name for s in HYPERCORN], indirect=True)
async def test_the_hypercorn_command_bounds_a_stalled_http2_stream_and_refuses_a_tunnel(
    server: Server, tmp_path: Path
) -> None:
    """The hypercorn command serves HTTP/2 by prior knowledge (and by ALPN with a certificate)
    as well as HTTP/1.1. Its HTTP/2 stream buffer let a write to a stream whose window is 0 go
    on at once, so a stalled stream was buffered without bound and never timed out; and a
    tunnel's CONNECT raised out of the connection, on trio out of the server. streamkit's
    repair of hypercorn's HTTP/2 applied to its own servers only."""
    async with running(server.command("service:plain"), tmp_path) as service:
        async with open_h2_connection(service) as connection:
            stalled_path = f"/events/h2stalled?size=16384&period=0.001&send_timeout={SEND_TIMEOUT}"
            async with (
                connection.open_stream(stalled_path) as stalled,
                connection.open_stream("/events/h2live") as live,
            ):
                stalled.stall()
                await service.wait_line("stuck h2stalled")
                stuck_at = anyio.current_time()
                # Reading the other stream drives the connection; the stalled one is held by
                # its window alone.
                with anyio.fail_after(SEND_TIMEOUT + 5):
                    while not service.printed("end h2stalled "):
                        await live.read_event()
                ended_after = anyio.current_time() - stuck_at
                tunnel = await send_head(connection, CONNECT, checked=False)
                with anyio.fail_after(5):
                    assert await tunnel.read_all() == b""
                    assert tunnel.status == 405
                    await live.read_event()  # the connection, and the server, go on
        # Heard before the signal, or the live stream could end with the shutdown instead
        # (seen once in four runs on a loaded machine).
        await service.wait_line("end h2live ")
        service.signal_and_time()
        await service.wait_exit(within=GRACE + 5)
    assert service.printed("end h2stalled ") == ["end h2stalled send_timeout cleanup=True"]
    assert ended_after < SEND_TIMEOUT + 1.0
    assert service.printed("end h2live ") == ["end h2live client_disconnected cleanup=True"]


@pytest.mark.parametrize("server", HYPERCORN, ids=[s.name for s in HYPERCORN], indirect=True)
async def test_the_hypercorn_command_holds_a_slow_upload_alone_and_says_goodbye_at_the_grace_end(
    server: Server, tmp_path: Path
) -> None:
    """The rest of streamkit's repair of hypercorn's HTTP/2 in the command's workers: an
    upload its app does not read yet holds back its own stream alone (hypercorn waited in the
    connection's reader, and the connection stopped being read), and a stream still stalled
    as the graceful timeout ends is reset, then the connection sent GOAWAY (hypercorn's trio
    worker gave the client neither, only the closed socket)."""
    async with running(server.command("service:plain"), tmp_path) as service:
        async with open_h2_connection(service) as connection:
            head = [(":method", "POST"), (":scheme", "http"), (":authority", "t")]
            upload = await send_head(connection, [*head, (":path", "/slow")], body=b"")
            sent = 0
            with anyio.fail_after(10):
                while window := connection._h2.local_flow_control_window(upload.stream_id):
                    connection._h2.send_data(upload.stream_id, b"b" * min(window, 16384))
                    sent += min(window, 16384)
                    await connection._flush()
                    await connection.ping()  # read the window updates there are
                # The stream's window is closed and its app has not read: the connection
                # goes on.
                await connection.ping()
                async with connection.open_stream("/release") as released:
                    assert await released.read_all() == b"released"
                connection._h2.end_stream(upload.stream_id)
                await connection._flush()
                assert await upload.read_all() == b"%d" % sent
            stalled_path = "/events/h2stalled?size=16384&period=0.001&send_timeout=3600"
            async with connection.open_stream(stalled_path) as stalled:
                stalled.stall()
                await service.wait_line("stuck h2stalled")
                service.signal_and_time()
                with anyio.fail_after(GRACE + 5):
                    assert await connection.wait_goaway() == h2.errors.ErrorCodes.NO_ERROR
                assert stalled.reset_code == h2.errors.ErrorCodes.CANCEL
        await service.wait_exit(within=GRACE + 5)
    assert service.printed("end h2stalled ") == ["end h2stalled shutdown cleanup=True"]


#: uvicorn's --workers supervisor looks at its exit flag every 0.5 s before it passes SIGTERM
#: on to the workers.
SUPERVISOR_POLL = 0.5


@pytest.mark.parametrize("server", SERVERS[:1], ids=["uvicorn-workers"], indirect=True)
async def test_uvicorn_workers_drain_after_the_supervisor_passes_sigterm_on(
    server: Server, tmp_path: Path
) -> None:
    """``uvicorn --workers 2``: the farewell comes once the supervisor has passed the signal
    on, within its 0.5 s poll, not within 100 ms of the signal as under a single uvicorn."""
    command = [*server.command("service:plain"), "--workers", "2"]
    async with running(command, tmp_path) as service:
        # The supervisor binds; the socket listens once a worker has started. (Only stdout's
        # lines have an event to wait on.)
        started = "Application startup complete"
        with anyio.fail_after(START_BOUND):
            while sum(started in line for line in service.stderr) < 2:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        farewell, exit_time = await shut_down_during_a_stream(service, "/events/workers")
    assert service.printed("end workers ") == ["end workers shutdown cleanup=True"]
    assert farewell < SUPERVISOR_POLL + FAREWELL_BOUND
    assert exit_time < SUPERVISOR_POLL + EXIT_BOUND
