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

import anyio
import anyio.abc
import pytest
from starlette.requests import Request

from streamkit import App, EndReason, ServerSentEvent, StreamSender
from streamkit.testing import open_server
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
