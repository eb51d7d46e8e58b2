"""A stream route's producer reads its request's body while the stream's watcher listens to the
same connection for the client leaving: through real hypercorn, on asyncio and trio, every
chunk reaches the producer, in order, however the client's writes fall into TCP segments; and
a producer that leaves a small body unread still hears the client leave, closed or reset.

(The watcher used to read the server's ``receive`` beside the producer and drop the body
chunks it took: a body sent in pieces reached the producer with a piece missing, or never
ended.)
"""

from __future__ import annotations

import socket
import struct
import tracemalloc

import anyio
import anyio.abc
import pytest
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send
from support.h2_heads import send_head

from streamkit import App, EndReason, ServerSentEvent, StreamSender
from streamkit.testing import H2Connection, open_h2_connection, open_server
from streamkit.testing._client import connect

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: A body larger than a stream route keeps unread and than the sockets' buffers on the way
#: hold: sent to its end only if the server reads it.
LARGE_BODY = 32 * 1024 * 1024


def body_app(cleaned: anyio.Event) -> App:
    app = App(heartbeat_interval=None)

    @app.sse("/echo", methods=["POST"])
    async def echo(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
        # Each chunk as it comes (the client sends the next once it has seen this one), then
        # the whole body.
        chunks = []
        async for chunk in request.stream():
            if chunk:
                chunks.append(chunk)
                await send(ServerSentEvent(event="chunk", data=chunk.decode()))
        await send(ServerSentEvent(event="body", data=b"".join(chunks).decode()))

    @app.sse("/ignore", methods=["POST"])
    async def ignore(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
        send.push_async_callback(_set, cleaned)
        await send("started")
        await anyio.sleep_forever()

    return app


async def _set(event: anyio.Event) -> None:
    event.set()


async def read_until(connection: anyio.abc.SocketStream, marker: bytes, received: bytes) -> bytes:
    with anyio.fail_after(5):
        while marker not in received:
            received += await connection.receive()
    return received


async def test_a_body_sent_in_pieces_reaches_the_producer_whole_and_in_order() -> None:
    pieces = [b"hello", b"low", b"orld"]
    async with open_server(body_app(anyio.Event())) as server:
        connection = await connect(server.host, server.port)
        length = sum(map(len, pieces))
        head = f"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: {length}\r\n\r\n"
        received = b""
        async with connection:
            await connection.send(head.encode())
            for piece in pieces:
                await connection.send(piece)
                # The next piece only once the producer has this one: each its own segment.
                received = await read_until(connection, b"data: " + piece + b"\n\n", received)
            received = await read_until(connection, b"event: body\n", received)
            received = await read_until(connection, b"0\r\n\r\n", received)  # the body's end
        await server.wait_ended(EndReason.COMPLETED)
    chunks = [line for line in received.split(b"\n") if line.startswith(b"data: ")]
    assert chunks == [b"data: " + piece for piece in pieces] + [b"data: " + b"".join(pieces)]


@pytest.mark.parametrize("size", [2000, LARGE_BODY], ids=["small", "large"])
@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_producer_that_leaves_the_body_unread_still_hears_the_client_leave(
    leave: str, size: int
) -> None:
    # A large body is all sent before the client leaves: the server reads it to the end (and
    # drops what the producer did not begin to read) rather than stop reading the connection
    # past 64 KiB, where a client that left went unheard for as long as the stream was silent.
    cleaned = anyio.Event()
    async with open_server(body_app(cleaned)) as server:
        connection = await connect(server.host, server.port)
        body = b'{"prompt": "' + b"x" * size + b'"}'
        head = f"POST /ignore HTTP/1.1\r\nhost: test\r\ncontent-length: {len(body)}\r\n\r\n"
        with anyio.fail_after(10):
            await connection.send(head.encode() + body)
        await read_until(connection, b"data: started\n\n", b"")
        if leave == "reset":
            raw = connection.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await connection.aclose()
        left_at = anyio.current_time()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=5.0)
        with anyio.fail_after(1):
            await cleaned.wait()
        noticed_after = anyio.current_time() - left_at
    assert noticed_after < 1.0


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_client_that_leaves_mid_body_ends_the_stream_as_gone_not_as_an_error(
    leave: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The producer waits for the rest of the body when the client leaves: it is cancelled
    # there, not handed Starlette's ClientDisconnect, which the stream would log as an error.
    async with open_server(body_app(anyio.Event())) as server:
        connection = await connect(server.host, server.port)
        head = "POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 50\r\n\r\n"
        await connection.send(head.encode() + b"[1,")
        await read_until(connection, b"data: [1,\n\n", b"")
        if leave == "reset":
            raw = connection.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await connection.aclose()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=5.0)
    assert end.exception is None
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


async def test_clients_that_leave_mid_body_as_their_streams_start_are_counted_as_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each client leaves as its stream's head is written. hypercorn's trio worker shut the
    # socket's sending side outside its send lock, and the head's write, begun meanwhile,
    # raised BusyResourceError: about one stream in five was logged at ERROR with its
    # traceback, and counted as ended by a shutdown while the server ran on.
    app = App(heartbeat_interval=None)

    @app.ndjson("/gone", methods=["POST"])
    async def gone(request: Request, send: StreamSender[object]) -> None:
        await send({"started": True})
        await anyio.sleep_forever()

    clients = 30
    async with open_server(app) as server:
        for _ in range(clients):
            connection = await connect(server.host, server.port)
            head = "POST /gone HTTP/1.1\r\nhost: test\r\ncontent-length: 50\r\n\r\n"
            await connection.send(head.encode() + b"[1,")
            await connection.aclose()
        with anyio.fail_after(10):
            ends = await app.streams.wait_ended(clients)
    assert {end.reason for end in ends} == {EndReason.CLIENT_DISCONNECTED}
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


async def test_a_client_that_left_before_the_producer_reads_the_body_is_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The client leaves before the producer reads: its read, in the stream's cancelled scope,
    # was taken for a poll and told the disconnect, and Starlette's ClientDisconnect was
    # logged at ERROR with its traceback, as a producer's error after the end.
    app = App(heartbeat_interval=None)

    @app.sse("/late", methods=["POST"])
    async def late(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
        await send("started")
        # Busy elsewhere, shielded, as the client leaves; the poll is how it learns it has
        # (no event says the watcher heard it).
        with anyio.CancelScope(shield=True):
            while not await request.is_disconnected():  # noqa: ASYNC110
                await anyio.sleep(0.01)
        await request.body()

    async with open_server(app) as server:
        connection = await connect(server.host, server.port)
        head = "POST /late HTTP/1.1\r\nhost: test\r\ncontent-length: 50\r\n\r\n"
        await connection.send(head.encode() + b"[1,")
        await read_until(connection, b"data: started\n\n", b"")
        await connection.aclose()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=5.0)
    assert end.exception is None
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


def polling_app(go: anyio.Event, cleaned: anyio.Event, *, polls: int | None) -> App:
    """A route whose producer polls ``request.is_disconnected()`` (sse-starlette's idiom) once
    *go* is set: *polls* times, then it only waits, or (``None``) between its ticks."""
    app = App(heartbeat_interval=0.05)

    @app.sse("/polling")
    async def polling(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
        send.push_async_callback(_set, cleaned)
        await send("started")
        await go.wait()
        done = 0
        while polls is None or done < polls:
            if await request.is_disconnected():
                return
            done += 1
            await send("tick")
            await anyio.sleep(0.01)
        await anyio.sleep_forever()

    return app


async def test_a_producer_that_polls_for_the_disconnect_is_not_failed_by_a_body_it_ignores(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Starlette's is_disconnected() receives in a cancelled scope: the request took the poll
    # for a read of the body, and past 64 KiB, dropped before the producer's first poll, the
    # poll raised the dropped body's RuntimeError, a client's large body the stream's error.
    go, cleaned = anyio.Event(), anyio.Event()
    async with open_server(polling_app(go, cleaned, polls=None)) as server:
        connection = await connect(server.host, server.port)
        head = f"GET /polling HTTP/1.1\r\nhost: test\r\ncontent-length: {LARGE_BODY}\r\n\r\n"
        with anyio.fail_after(10):
            await connection.send(head.encode() + b"x" * LARGE_BODY)  # read and dropped
            received = await read_until(connection, b"data: started\n\n", b"")
            go.set()
            await read_until(connection, b"data: tick\n\n", received)  # it has polled
        await connection.aclose()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=5.0)
        with anyio.fail_after(1):
            await cleaned.wait()
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


async def test_a_producer_that_polled_for_the_disconnect_still_hears_the_client_leave() -> None:
    # The poll marked the body as being read, and past 64 KiB the watcher waited for the
    # producer to take some, which it never would: the client that left went unheard.
    go, cleaned = anyio.Event(), anyio.Event()
    async with open_server(polling_app(go, cleaned, polls=1)) as server:
        connection = await connect(server.host, server.port)
        head = f"GET /polling HTTP/1.1\r\nhost: test\r\ncontent-length: {LARGE_BODY}\r\n\r\n"
        with anyio.fail_after(10):
            await connection.send(head.encode())
            received = await read_until(connection, b"data: started\n\n", b"")
            go.set()
            await read_until(connection, b"data: tick\n\n", received)  # it has polled
            await connection.send(b"x" * (4 * 64 * 1024))
        await connection.aclose()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=5.0)
        with anyio.fail_after(1):
            await cleaned.wait()


async def test_over_http2_a_producer_that_polled_still_hears_its_stream_reset() -> None:
    # There the watcher waiting for the producer never heard the reset: a reset stream's
    # writes are dropped, so nothing else ended the stream, which ran until the shutdown.
    go, cleaned = anyio.Event(), anyio.Event()
    async with (
        open_server(polling_app(go, cleaned, polls=1)) as server,
        open_h2_connection(server) as connection,
    ):
        head = [(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "/polling")]
        stream = await send_head(connection, head, body=b"")
        with anyio.fail_after(10):
            await stream.read_event()  # started
            go.set()
            await stream.read_event()  # a tick: it has polled
            await send_body(connection, stream.stream_id, 4 * 64 * 1024)
        await stream.reset_stream()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=5.0)
        with anyio.fail_after(1):
            await cleaned.wait()


async def send_body(connection: H2Connection, stream_id: int, size: int) -> None:
    """Send *size* bytes of body on the stream, as its flow-control window lets them go."""
    h2 = connection._h2
    while size > 0:
        await connection._wait_for(
            "room in the stream's window", lambda: h2.local_flow_control_window(stream_id) > 0
        )
        piece = min(size, h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
        h2.send_data(stream_id, b"x" * piece)
        await connection._flush()
        size -= piece


class BodyEndSeen:
    """ASGI middleware that sets ``seen`` once the app has taken the last of a request's body
    from the server."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.seen = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                self.seen.set()
            return message

        await self.app(scope, watched if scope["type"] == "http" else receive, send)


@pytest.mark.parametrize("reading", [False, True], ids=["unread", "being read"])
async def test_a_body_in_one_byte_chunks_is_held_in_the_bytes_it_came_in(reading: bool) -> None:
    # Each chunk was kept as a message of its own until the producer took it: 20,000 one-byte
    # chunks, 120 KB on the wire and 20 KB of body, held 4 MB, and a stream route held about
    # 16 MB for each client that sent 64 KiB so (the bound counted bytes, not messages).
    chunks = 20_000
    go = anyio.Event()
    app = App(heartbeat_interval=None)

    @app.sse("/upload", methods=["POST"])
    async def upload(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
        body = request.stream()
        if reading:
            await body.__anext__()  # the first chunk; the rest waits for the producer
        await send("started")
        await go.wait()
        rest = b"".join([chunk async for chunk in body])
        await send(ServerSentEvent(event="rest", data=str(len(rest))))

    watched = BodyEndSeen(app)
    async with open_server(watched) as server:
        connection = await connect(server.host, server.port)
        async with connection:
            head = b"POST /upload HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
            await connection.send(head + b"1\r\nx\r\n")
            received = await read_until(connection, b"data: started\n\n", b"")
            tracemalloc.start()
            try:
                with anyio.fail_after(20):
                    await connection.send(b"1\r\nx\r\n" * chunks + b"0\r\n\r\n")
                    await watched.seen.wait()  # all of it is in the stream's hands
                held, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            go.set()
            received = await read_until(connection, b"event: rest\n", received)
        await server.wait_ended(EndReason.COMPLETED)
    assert held < 1024 * 1024, f"{chunks} one-byte chunks held {held} bytes"
    unread = chunks if reading else chunks + 1  # and the first, sent with the head
    assert f"event: rest\ndata: {unread}\n".encode() in received
