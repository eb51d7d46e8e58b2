"""Connections from a hostile client, below any stream, through streamkit.serve on asyncio and
trio: what each costs the server, and for how long.

What is proved: a request head never finished (one byte at a time) and a connection left idle
after its request are closed at hypercorn's ``keep_alive_timeout`` (5 s); an oversized head is
refused without the app, with a 431 on HTTP/1.1 and GOAWAY on HTTP/2; a TLS client that never
finishes its handshake is dropped at the handshake timeout, not hypercorn's 60 s, and closed as
the server stops; and none of them keeps other clients waiting or holds the graceful shutdown.
At the open-file limit the server says so once, not in a traceback per accept, and serves again
once descriptors are freed; its listening socket keeps the backlog it was bound with. A client
that stops reading is aborted by the kernel with no error logged.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.events
import hpack
import httpx
import pytest
from hypercorn.config import Config
from hyperframe.frame import ContinuationFrame, HeadersFrame
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from support.certificates import Certificates

from streamkit import EndReason, StreamResponse, StreamSender
from streamkit._serve import BACKLOG, ServerAddress
from streamkit.testing import LiveServer, open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: hypercorn's keep_alive_timeout, which streamkit leaves at its default: from a connection's
#: accept, or its last response, to its next request head being whole.
KEEP_ALIVE = Config.keep_alive_timeout
#: How late past its bound a connection may be closed on a loaded machine.
MARGIN = 2.0
GRACE = 3.0


class Hello:
    """An app that counts the requests it was called for."""

    def __init__(self) -> None:
        self.calls = 0
        self.app = Starlette(routes=[Route("/{path:path}", self.hello)])

    async def hello(self, request: Request) -> Response:
        self.calls += 1
        return PlainTextResponse("hello")


async def closed_within(connection: anyio.abc.ByteStream, seconds: float) -> bytes:
    """What the server sent before closing *connection*, which must happen within *seconds*."""
    received = b""
    with anyio.fail_after(seconds):
        try:
            while True:
                received += await connection.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return received


async def status_of_a_plain_request(server: LiveServer) -> int:
    with anyio.fail_after(5):
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{server.url}/other")).status_code


async def trickle_a_head(connection: anyio.abc.ByteStream) -> None:
    """Send a request head a byte every half second, never finishing it, until closed."""
    head = b"GET / HTTP/1.1\r\nhost: test\r\n" + b"x-slow: yes\r\n" * 100
    try:
        for byte in head:
            await connection.send(bytes([byte]))
            await anyio.sleep(0.5)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return


async def test_request_heads_sent_a_byte_at_a_time_are_closed_at_the_keep_alive_timeout() -> None:
    hello = Hello()
    async with open_server(hello.app, grace_period=GRACE) as server:
        slow = [await anyio.connect_tcp(server.host, server.port) for _ in range(200)]
        async with anyio.create_task_group() as task_group:
            for connection in slow:
                task_group.start_soon(trickle_a_head, connection)
            await anyio.sleep(1.0)  # every one is trickling
            assert await status_of_a_plain_request(server) == 200
            for connection in slow:
                # Nothing for them: hypercorn closes the connection without a response.
                assert await closed_within(connection, KEEP_ALIVE + MARGIN) == b""
        for connection in slow:
            await connection.aclose()
        assert hello.calls == 1


async def idle_keep_alive_connections(
    server: LiveServer, count: int
) -> list[anyio.abc.SocketStream]:
    """*count* connections to *server*, each answered once and kept open, idle."""
    idle = []
    for _ in range(count):
        connection = await anyio.connect_tcp(server.host, server.port)
        await connection.send(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        with anyio.fail_after(5):
            assert (await connection.receive()).startswith(b"HTTP/1.1 200 ")
        idle.append(connection)
    return idle


async def test_idle_keep_alive_connections_are_closed_at_the_keep_alive_timeout() -> None:
    async with open_server(Hello().app, grace_period=GRACE) as server:
        idle = await idle_keep_alive_connections(server, 500)
        async with anyio.create_task_group() as task_group:
            for connection in idle:
                task_group.start_soon(closed_within, connection, KEEP_ALIVE + MARGIN)
        for connection in idle:
            await connection.aclose()


async def test_unfinished_and_idle_connections_do_not_hold_the_shutdown() -> None:
    async with open_server(Hello().app, grace_period=GRACE) as server:
        idle = await idle_keep_alive_connections(server, 50)
        slow = [await anyio.connect_tcp(server.host, server.port) for _ in range(50)]
        async with anyio.create_task_group() as task_group:
            for connection in slow:
                task_group.start_soon(trickle_a_head, connection)
            await anyio.sleep(1.0)
            took = await server.shutdown(within=GRACE + MARGIN)
        for connection in idle + slow:
            await connection.aclose()
    # Idle connections are closed as the shutdown begins: the grace period is the streams'.
    assert took < GRACE / 2


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 2**20 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: test\r\n"
        + b"".join(b"x-%d: v\r\n" % n for n in range(10_000))
        + b"\r\n",
        b"GET /" + b"a" * 2**16 + b" HTTP/1.1\r\nhost: test\r\n\r\n",
    ],
    ids=["a 1 MiB header", "10,000 headers", "a 64 KiB request line"],
)
async def test_an_oversized_request_head_is_refused_with_431_without_the_app(head: bytes) -> None:
    hello = Hello()
    async with open_server(hello.app, grace_period=GRACE) as server:
        connection = await anyio.connect_tcp(server.host, server.port)
        async with connection:
            try:
                await connection.send(head)
            except (anyio.BrokenResourceError, OSError):
                pass  # refused before it was all sent: the answer is still there to read
            response = await closed_within(connection, 5)
        assert response.startswith(b"HTTP/1.1 431 ")
        assert await status_of_a_plain_request(server) == 200
    assert hello.calls == 1


def header_frames(stream_id: int, head: dict[str, str]) -> bytes:
    """A HEADERS frame and CONTINUATION frames for *head* (no Huffman coding: in pure
    Python, coding a megabyte takes longer than the test)."""
    block = hpack.Encoder().encode(list(head.items()), huffman=False)
    size = 2**14  # the largest frame a peer must accept
    pieces = [block[start : start + size] for start in range(0, len(block), size)]
    frames: list[HeadersFrame | ContinuationFrame] = [
        HeadersFrame(stream_id, data=pieces[0], flags=["END_STREAM"])
    ]
    frames += [ContinuationFrame(stream_id, data=piece) for piece in pieces[1:]]
    frames[-1].flags.add("END_HEADERS")
    return b"".join(frame.serialize() for frame in frames)


@pytest.mark.parametrize(
    "extra",
    [
        [("x-big", "a" * 2**20)],
        [(f"x-{n}", "v") for n in range(10_000)],
        [(":path", "/" + "a" * 2**16)],
    ],
    ids=["a 1 MiB header", "10,000 headers", "a 64 KiB path"],
)
async def test_an_oversized_header_block_on_http2_ends_its_connection_without_the_app(
    extra: list[tuple[str, str]],
) -> None:
    hello = Hello()
    head = {":method": "GET", ":path": "/", ":scheme": "http", ":authority": "test"}
    head.update(extra)
    async with open_server(hello.app, grace_period=GRACE) as server:
        h2_connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        h2_connection.initiate_connection()
        frames = h2_connection.data_to_send() + header_frames(1, head)
        connection = await anyio.connect_tcp(server.host, server.port)
        async with connection:
            try:
                await connection.send(frames)
            except (anyio.BrokenResourceError, OSError):
                pass  # refused before it was all sent
            received = await closed_within(connection, 5)
        events = h2_connection.receive_data(received) if received else []
        assert not any(isinstance(event, h2.events.ResponseReceived) for event in events)
        assert await status_of_a_plain_request(server) == 200
    assert hello.calls == 1


#: What an HTTP/2 client with prior knowledge sends first: the preface, then its SETTINGS.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.mark.parametrize("then", ["nothing", "a header block never ended"])
async def test_an_http2_connection_that_opens_no_stream_is_closed_at_the_keep_alive_timeout(
    then: str,
) -> None:
    hello = Hello()
    head = {":method": "GET", ":path": "/", ":scheme": "http", ":authority": "test"}
    unfinished = HeadersFrame(1, data=hpack.Encoder().encode(list(head.items())))  # no END_HEADERS
    async with open_server(hello.app, grace_period=GRACE) as server:
        # Each sent its bytes as it connects: on a loaded machine, one connected early could be
        # closed at its keep-alive timeout before a later loop came back to it.
        sent = H2_PREFACE if then == "nothing" else H2_PREFACE + unfinished.serialize()
        idle = []
        for _ in range(50):
            connection = await anyio.connect_tcp(server.host, server.port)
            await connection.send(sent)
            idle.append(connection)
        async with anyio.create_task_group() as task_group:
            for connection in idle:
                task_group.start_soon(closed_within, connection, KEEP_ALIVE + MARGIN)
        for connection in idle:
            await connection.aclose()
        assert await status_of_a_plain_request(server) == 200
    assert hello.calls == 1


def client_hello(context: ssl.SSLContext) -> bytes:
    """The ClientHello a client with *context* sends first."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        handshake.do_handshake()
    return outgoing.read()


async def test_tls_clients_that_never_finish_the_handshake_are_dropped_at_its_timeout(
    certificates: Certificates,
) -> None:
    context = certificates.client_context()
    hello = client_hello(context)
    # Shorter than the default (10 s, checked below) to spare the suite the wait; hypercorn's
    # own 60 s would fail it all the same.
    assert certificates.server().handshake_timeout == 10.0
    tls = replace(certificates.server(), handshake_timeout=1.0)
    async with open_server(Hello().app, grace_period=GRACE, tls=tls) as server:
        silent = [await anyio.connect_tcp(server.host, server.port) for _ in range(20)]
        stalled = [await anyio.connect_tcp(server.host, server.port) for _ in range(20)]
        for connection in stalled:
            await connection.send(hello[: len(hello) // 2])  # then nothing
        garbage = [await anyio.connect_tcp(server.host, server.port) for _ in range(20)]
        for connection in garbage:
            await connection.send(os.urandom(3000))
        with anyio.fail_after(5):
            async with httpx.AsyncClient(verify=context) as client:
                assert (await client.get(f"{server.url}/other")).status_code == 200
        async with anyio.create_task_group() as task_group:
            for connection in silent + stalled + garbage:
                task_group.start_soon(closed_within, connection, tls.handshake_timeout + MARGIN)
        for connection in silent + stalled + garbage:
            await connection.aclose()


#: Descriptors the server process may open: a few for itself, the rest soon taken.
DESCRIPTOR_LIMIT = 64
#: A server process, on the backend its first argument names, with at most as many
#: descriptors as its second says ("-" for its inherited limit).
SERVICE = textwrap.dedent(
    """
    import resource
    import sys
    from functools import partial

    import anyio
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import streamkit

    if sys.argv[2] != "-":
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[2])))
    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("hello"))])

    async def main():
        async with anyio.create_task_group() as task_group:
            serve = partial(streamkit.serve, app, bind="127.0.0.1:0", grace_period=2.0)
            address = await task_group.start(serve)
            print(address.port, flush=True)

    anyio.run(main, backend=sys.argv[1])
    """
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_at_the_open_file_limit_the_server_says_so_once_and_serves_again_after(
    anyio_backend: str, tmp_path: Path
) -> None:
    log = tmp_path / "stderr"
    with log.open("wb") as stderr:
        process = await anyio.open_process(
            [sys.executable, "-c", SERVICE, anyio_backend, str(DESCRIPTOR_LIMIT)], stderr=stderr
        )
    async with process:
        assert process.stdout is not None
        with anyio.fail_after(10):
            port = int((await process.stdout.receive()).decode())
        address = ServerAddress(host="127.0.0.1", port=port)
        # More connections than descriptors: the server accepts until it has none left, and the
        # rest wait in the backlog, each a failed accept.
        clients = [await anyio.connect_tcp(address.host, port) for _ in range(2 * DESCRIPTOR_LIMIT)]
        for client in clients:
            await client.send(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        await anyio.sleep(0.5)  # the server reaches its limit
        logged_before = len(log.read_bytes().splitlines())
        cpu_before, at = cpu_seconds(process.pid), anyio.current_time()
        await anyio.sleep(1.0)  # less than keep_alive_timeout: none is closed meanwhile
        cpu_share = (cpu_seconds(process.pid) - cpu_before) / (anyio.current_time() - at)
        logged = log.read_bytes().splitlines()[logged_before:]
        assert process.returncode is None
        for client in clients:
            await client.aclose()
        with anyio.fail_after(10):
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{address.url}/")).status_code == 200
        process.terminate()
        with anyio.fail_after(10):
            await process.wait()
    assert len(logged) <= 2, b"\n".join(logged[:20]).decode()
    assert cpu_share < 0.5


async def test_tls_clients_in_the_middle_of_the_handshake_do_not_hold_the_shutdown(
    certificates: Certificates,
) -> None:
    hello = client_hello(certificates.client_context())
    async with open_server(Hello().app, grace_period=GRACE, tls=certificates.server()) as server:
        silent = [await anyio.connect_tcp(server.host, server.port) for _ in range(20)]
        stalled = [await anyio.connect_tcp(server.host, server.port) for _ in range(20)]
        for connection in stalled:
            await connection.send(hello[: len(hello) // 2])
        await anyio.sleep(0.5)  # every one is accepted, its handshake waiting
        took = await server.shutdown(within=GRACE + MARGIN)
        for connection in silent + stalled:
            assert await closed_within(connection, 1) == b""
            await connection.aclose()
    # Nothing of theirs is the app's to finish: the grace period is the streams'.
    assert took < GRACE / 2


def listen_backlog(port: int) -> int:
    """The backlog of this process's socket listening on *port*, as the kernel reports it:
    for a listening socket, ``TCP_INFO``'s ``tcpi_sacked`` (what ``ss`` shows as Send-Q)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # not a socket, or closed meanwhile
        with sock:
            try:
                listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                bound = sock.getsockname()
            except OSError:
                continue
            if listening and sock.type == socket.SOCK_STREAM and bound[1] == port:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
                return int(struct.unpack_from("I", info, 28)[0])
    raise AssertionError(f"no socket of this process listens on port {port}")


async def test_the_listening_socket_keeps_its_backlog_for_a_burst_of_connections() -> None:
    # A burst past the backlog (a reconnecting fleet after a deploy, a flood) has its SYNs
    # dropped while the server is busy: each dropped client waits 1 s, then 3, then 7.
    async with open_server(Hello().app, grace_period=GRACE) as server:
        assert listen_backlog(server.port) == BACKLOG


async def test_a_stalled_client_the_kernel_aborts_is_dropped_without_an_error_logged(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # TCP_USER_TIMEOUT aborts the connection with ETIMEDOUT, which hypercorn's asyncio worker
    # let out of its connection's close: asyncio logged "Unhandled exception in
    # client_connected_cb" with a traceback, at ERROR, for every client that stopped reading.
    async def endless(send: StreamSender[bytes]) -> None:
        while True:
            await send(b"x" * 65536)

    async def download(request: Request) -> Response:
        return StreamResponse(endless, send_timeout=30.0)

    app = Starlette(routes=[Route("/download", download)])
    async with open_server(app, stalled_connection_timeout=1.0) as server:
        async with open_stream(server, "/download", receive_buffer=4096) as client:
            await client.receive_chunk()
            client.stall()
            end = await server.wait_end(within=10.0)
    assert end.reason is EndReason.CLIENT_DISCONNECTED
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], caplog.text
