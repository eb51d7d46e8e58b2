"""HTTP/2 frames from a hostile or broken client, through real hypercorn on asyncio and trio.

What is proved: frames a client may send at any time, whatever their content (PRIORITY for
any stream, body after the response, a tunnel's CONNECT, a head that is not ASCII), cost the
server bounded memory and end at most the client's own stream, never the worker: the other
streams on the connection go on, and new ones are served. Streams reset as they open, one
after another, each end once, with their cleanup run; past a bound, their connection is
closed with GOAWAY (ENHANCE_YOUR_CALM) while the server serves the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import h2.errors
import pytest
from hyperframe.frame import PriorityFrame
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from support.h2_heads import CONNECT, send_head

from streamkit import App, EndReason, EventSourceResponse, ServerSentEvent, StreamEnd, StreamSender
from streamkit._hypercorn_h2 import RESET_BURST
from streamkit.testing import (
    H2Connection,
    H2StreamClient,
    LiveServer,
    open_h2_connection,
    open_server,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

BOUND = 5.0
#: More streams than hypercorn's priority tree takes (1000) before it raises.
MANY = 1200
#: Request body sent to a stream that does not read it: many times the 64 KiB it keeps.
UNREAD_BODY = 1024 * 1024


def make_app() -> Starlette:
    async def ticks(request: Request) -> Response:
        async def produce(send: StreamSender[ServerSentEvent]) -> None:
            number = 0
            while True:
                await send(ServerSentEvent(data=str(number)))
                number += 1
                await anyio.sleep(0.01)

        return EventSourceResponse(produce)

    async def version(request: Request) -> Response:
        return PlainTextResponse(request.scope["http_version"])

    return Starlette(
        routes=[Route("/ticks", ticks), Route("/version", version, methods=["GET", "POST"])]
    )


@asynccontextmanager
async def serving() -> AsyncIterator[LiveServer]:
    with anyio.fail_after(30):
        async with open_server(make_app()) as server:
            yield server


async def start_upload(connection: H2Connection, path: str, body: bytes) -> H2StreamClient:
    """Send a POST's head and the start of its body, the body left open; the stream's client
    reads the response."""
    head = [(":method", "POST"), (":scheme", "http"), (":authority", "test"), (":path", path)]
    return await send_head(connection, head, body=body)


async def assert_served(connection: H2Connection) -> None:
    with anyio.fail_after(BOUND):
        assert await connection.ping() < BOUND
        async with connection.open_stream("/version") as stream:
            assert (stream.status, await stream.read_all()) == (200, b"2")


async def assert_served_beside(connection: H2Connection, live: H2StreamClient) -> None:
    """The connection's live stream goes on, and the connection answers and serves."""
    with anyio.fail_after(BOUND):
        for _ in range(3):
            await live.read_event()
    await assert_served(connection)


def priority_frames(stream_ids: range, *, depends_on: range | None = None) -> bytes:
    frames = bytearray()
    for index, stream_id in enumerate(stream_ids):
        frame = PriorityFrame(stream_id)
        frame.depends_on = depends_on[index] if depends_on is not None else 0
        frame.stream_weight = 15
        frames += frame.serialize()
    return bytes(frames)


async def test_priority_frames_for_streams_never_opened_leave_the_server_serving() -> None:
    """hypercorn keeps each such stream in its priority tree for good; past 1000 the tree
    raised out of the connection, crashing the worker on trio."""
    async with serving() as server, open_h2_connection(server) as connection:
        async with connection.open_stream("/ticks") as live:
            await live.read_event()
            # Odd ids, above any this client opens: streams that are idle, never opened.
            await connection.stream.send(priority_frames(range(10001, 10001 + 2 * MANY, 2)))
            await assert_served_beside(connection, live)


async def test_priority_frames_depending_on_unknown_streams_leave_the_server_serving() -> None:
    """A dependency on a stream the tree does not hold puts that stream in the tree too."""
    async with serving() as server, open_h2_connection(server) as connection:
        async with connection.open_stream("/ticks") as live:
            await live.read_event()
            parents = range(20001, 20001 + 2 * MANY, 2)
            own = range(live.stream_id, live.stream_id + 1)
            await connection.stream.send(
                b"".join(
                    priority_frames(own, depends_on=range(parent, parent + 1)) for parent in parents
                )
            )
            await assert_served_beside(connection, live)


async def test_body_sent_after_the_response_ended_leaves_the_server_serving() -> None:
    """A client may go on sending a body the response did not wait for (an upload answered
    early). hypercorn dropped the stream with its response, and the next DATA frame raised
    KeyError out of the connection, on trio out of the server."""
    async with serving() as server, open_h2_connection(server) as connection:
        async with connection.open_stream("/ticks") as live:
            upload = await start_upload(connection, "/version", b"a" * 100)
            with anyio.fail_after(BOUND):
                assert await upload.read_all() == b"2"
            connection._h2.send_data(upload.stream_id, b"b" * 100)
            connection._h2.send_data(upload.stream_id, b"c" * 100, end_stream=True)
            await connection._flush()
            await assert_served(connection)
            with anyio.fail_after(BOUND):
                await live.read_event()
        await assert_served(connection)


async def test_a_connect_request_is_refused_and_the_server_goes_on() -> None:
    """A tunnel's CONNECT is the one HTTP/2 request without a path; hypercorn read the path
    regardless and raised UnboundLocalError out of the connection, on trio out of the server."""
    async with serving() as server, open_h2_connection(server) as connection:
        async with connection.open_stream("/ticks") as live:
            tunnel = await send_head(connection, CONNECT, checked=False)
            with anyio.fail_after(BOUND):
                assert await tunnel.read_all() == b""
            assert tunnel.status == 405
            await assert_served(connection)
            with anyio.fail_after(BOUND):
                await live.read_event()


@pytest.mark.parametrize(
    ("method", "path"),
    [(b"GET", b"/version\xff"), (b"G\xc3\xa9T", b"/version")],
    ids=["path", "method"],
)
async def test_a_request_head_that_is_not_ascii_is_refused_and_the_server_goes_on(
    method: bytes, path: bytes
) -> None:
    """HTTP/1.1's parser refuses such a request line; h2 passes the bytes on, and hypercorn's
    decoding of them raised UnicodeDecodeError out of the connection, on trio out of the
    server."""
    async with serving() as server, open_h2_connection(server) as connection:
        async with connection.open_stream("/ticks") as live:
            head = [(b":method", method), (b":scheme", b"http"), (b":authority", b"test")]
            request = await send_head(connection, [*head, (b":path", path)], end_stream=True)
            with anyio.fail_after(BOUND):
                assert await request.read_all() == b""
            assert request.status == 400
            await assert_served(connection)
            with anyio.fail_after(BOUND):
                await live.read_event()


async def test_streams_reset_as_they_open_each_end_once_with_their_cleanup_run() -> None:
    """Rapid reset: HEADERS then RST_STREAM, stream after stream, on one connection."""
    count = 200
    ends: dict[str, list[EndReason]] = {}
    cleaned: set[str] = set()
    all_cleaned = anyio.Event()

    async def resets(request: Request) -> Response:
        name = request.query_params["name"]

        async def produce(send: StreamSender[ServerSentEvent]) -> None:
            try:
                while True:
                    await send(ServerSentEvent(data=name))
                    await anyio.sleep(0.01)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.01)  # a cleanup that awaits
                cleaned.add(name)
                if len(cleaned) == count:
                    all_cleaned.set()

        def on_end(end: StreamEnd) -> None:
            ends.setdefault(name, []).append(end.reason)

        return EventSourceResponse(produce, on_end=on_end)

    app = make_app()
    app.router.routes.append(Route("/resets", resets))
    with anyio.fail_after(30):
        async with open_server(app) as server, open_h2_connection(server) as connection:
            for number in range(count):
                stream_id = connection._h2.get_next_available_stream_id()
                head = [(":method", "GET"), (":scheme", "http"), (":authority", "test")]
                connection._h2.send_headers(
                    stream_id, [*head, (":path", f"/resets?name={number}")], end_stream=True
                )
                connection._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                await connection._flush()
            with anyio.fail_after(BOUND):
                await all_cleaned.wait()
                await assert_served(connection)
            # Reported after the cleanup, in the same task: wait for the last report.
            with anyio.fail_after(BOUND):
                while len(ends) < count:
                    await connection.ping()
    assert ends == {str(number): [EndReason.CLIENT_DISCONNECTED] for number in range(count)}


async def test_rapid_reset_past_the_bound_closes_the_connection_with_enhance_your_calm() -> None:
    """CVE-2023-44487's shape: HEADERS then RST_STREAM, again and again, without waiting. A
    reset stream leaves the client's concurrency limit at once while its app starts, is
    cancelled and cleans up, so the client's work is bounded by nothing it waits for:
    hypercorn served 1000 such streams (keep_alive_max_requests) before its GOAWAY, then the
    client opened a new connection. Past the bound, the connection is closed with GOAWAY
    (ENHANCE_YOUR_CALM); every stream begun ends once, and the server serves the others."""
    started: list[str] = []
    cleaned: list[str] = []

    async def resets(request: Request) -> Response:
        name = request.query_params["name"]
        started.append(name)

        async def produce(send: StreamSender[ServerSentEvent]) -> None:
            try:
                await send(ServerSentEvent(data=name))
                await anyio.sleep_forever()
            finally:
                cleaned.append(name)

        return EventSourceResponse(produce)

    app = make_app()
    app.router.routes.append(Route("/resets", resets))
    pairs = 4 * RESET_BURST
    with anyio.fail_after(30):
        async with (
            open_server(app) as server,
            open_h2_connection(server) as bystander,
            bystander.open_stream("/ticks") as live,
            open_h2_connection(server) as attacker,
        ):
            await live.read_event()
            head = [(":method", "GET"), (":scheme", "http"), (":authority", "test")]
            for number in range(pairs):
                stream_id = attacker._h2.get_next_available_stream_id()
                attacker._h2.send_headers(
                    stream_id, [*head, (":path", f"/resets?name={number}")], end_stream=True
                )
                attacker._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                try:
                    await attacker._flush()
                except (anyio.BrokenResourceError, OSError):
                    break  # closed by the server: what the test expects
            with anyio.fail_after(BOUND):
                code = await attacker.wait_goaway()
            assert code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
            await assert_served_beside(bystander, live)
            with anyio.fail_after(BOUND):
                while len(cleaned) < len(started):
                    await bystander.ping()
    assert len(started) <= RESET_BURST + 100, f"{len(started)} streams begun"
    assert sorted(cleaned) == sorted(started)


async def test_a_large_body_left_unread_holds_neither_the_connection_nor_its_stream() -> None:
    # A stream route keeps 64 KiB of body its producer has not begun to read, and drops the
    # rest as it comes rather than stop reading: hypercorn hands a stream its body in the
    # connection's reader, so a stream that took no more stopped the whole connection being
    # read, and its own reset went unheard, its producer running on.
    cleaned = anyio.Event()
    app = App(heartbeat_interval=None)

    @app.sse("/unread", methods=["POST"])
    async def unread(request: Request, send: StreamSender[ServerSentEvent]) -> None:
        send.push_async_callback(_set, cleaned)
        await send(ServerSentEvent(data="started"))
        await anyio.sleep_forever()

    @app.get("/version")
    async def version(request: Request) -> Response:
        return PlainTextResponse(request.scope["http_version"])

    with anyio.fail_after(30):
        async with (
            open_server(app) as server,
            open_h2_connection(server) as connection,
        ):
            upload = await start_upload(connection, "/unread", b"")
            await upload.read_event()
            sent = 0
            while sent < UNREAD_BODY:
                window = connection._h2.local_flow_control_window(upload.stream_id)
                if window:
                    connection._h2.send_data(upload.stream_id, b"b" * min(window, 16384))
                    sent += min(window, 16384)
                    await connection._flush()
                # The server's window updates, read with the ping's answer.
                with anyio.fail_after(BOUND):
                    await connection.ping()
            await assert_served(connection)
            await upload.reset_stream()
            with anyio.fail_after(BOUND):
                await cleaned.wait()
            end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert end.path == "/unread"


async def _set(event: anyio.Event) -> None:
    event.set()


async def test_a_body_read_slowly_holds_its_stream_alone() -> None:
    # hypercorn hands a stream its body in the connection's reader, and waited there while
    # the app's queue was full: one upload read slowly stopped the whole connection being
    # read (a browser's event streams on it starved, PINGs went unanswered). The stream's own
    # flow-control window now holds the client back instead.
    first_read, release = anyio.Event(), anyio.Event()

    async def slow(request: Request) -> Response:
        received, digest = 0, hashlib.sha256()
        async for chunk in request.stream():
            received += len(chunk)
            digest.update(chunk)
            if received and not first_read.is_set():
                first_read.set()
                await release.wait()
        return PlainTextResponse(f"{received} {digest.hexdigest()}")

    app = make_app()
    app.router.routes.append(Route("/slow", slow, methods=["POST"]))
    body = bytes(range(256)) * (UNREAD_BODY // 256)
    with anyio.fail_after(30):
        async with (
            open_server(app) as server,
            open_h2_connection(server) as connection,
            connection.open_stream("/ticks") as live,
        ):
            upload = await start_upload(connection, "/slow", b"")
            sent = 0
            while sent < len(body):
                window = connection._h2.local_flow_control_window(upload.stream_id)
                if not window and release.is_set():
                    await connection.ping()  # reads the window updates
                    continue
                if not window:
                    # The server holds the stream at its window while its reader waits: the
                    # connection goes on meanwhile.
                    with anyio.fail_after(BOUND):
                        await first_read.wait()
                    await assert_served_beside(connection, live)
                    release.set()
                    continue
                piece = body[sent : sent + min(window, 16384)]
                connection._h2.send_data(upload.stream_id, piece)
                sent += len(piece)
                await connection._flush()
                with anyio.fail_after(BOUND):
                    await connection.ping()
            connection._h2.end_stream(upload.stream_id)
            await connection._flush()
            with anyio.fail_after(BOUND):
                answer = await upload.read_all()
    assert release.is_set()  # it was held
    assert (upload.status, answer.decode()) == (
        200,
        f"{len(body)} {hashlib.sha256(body).hexdigest()}",
    )


@pytest.mark.parametrize("frames", [10, 20])
async def test_a_body_nobody_reads_holds_nothing_once_its_app_has_returned(frames: int) -> None:
    # 1-byte DATA frames fill the app's queue (hypercorn's holds ten messages), to the brim
    # or past it, before the app answers 404 without reading them. hypercorn put the stream's
    # close (the disconnect) into that full queue and waited there for good, in the app's own
    # task: the connection's task never ended, and the server waited out the grace period.
    with anyio.fail_after(30):
        async with open_server(make_app(), grace_period=5.0) as server:
            async with open_h2_connection(server) as connection:
                upload = await start_upload(connection, "/nowhere", b"")
                for _ in range(frames):
                    connection._h2.send_data(upload.stream_id, b"b")
                await connection._flush()
                with anyio.fail_after(BOUND):
                    await upload.read_all()
                    assert upload.status == 404
            closed_at = anyio.current_time()
        stopped_after = anyio.current_time() - closed_at
    assert stopped_after < 1.0


@pytest.mark.parametrize(
    ("frame", "frames"), [(b"", 100_000), (b"b", 65_535)], ids=["empty", "1 byte"]
)
async def test_tiny_data_frames_for_a_busy_app_are_held_as_one_body(
    frame: bytes, frames: int
) -> None:
    # A body the app has no room for yet waits for it in the server, one message a DATA
    # frame: empty frames cost the client no window and 9 bytes each, one-byte frames one
    # byte of it, and each held message some hundreds of bytes of the server's memory, so a
    # client made it hold memory without bound (or ~20 MiB per stream within its window).
    # What is held now is joined into one body as it waits: the app gets it in a few reads.
    release = anyio.Event()
    messages: list[int] = []

    async def busy(request: Request) -> Response:
        await release.wait()  # a slow query, say, before the body is read
        while True:
            message = await request.receive()
            messages.append(len(message.get("body", b"")))
            if not message.get("more_body", False):
                return PlainTextResponse(str(sum(messages)))

    app = make_app()
    app.router.routes.append(Route("/busy", busy, methods=["POST"]))
    with anyio.fail_after(60):
        async with open_server(app) as server, open_h2_connection(server) as connection:
            upload = await start_upload(connection, "/busy", b"")
            for sent in range(frames):
                connection._h2.send_data(upload.stream_id, frame)
                if sent % 1000 == 999:
                    await connection._flush()
            await connection._flush()
            await assert_served(connection)  # every frame was read
            release.set()
            connection._h2.end_stream(upload.stream_id)
            await connection._flush()
            with anyio.fail_after(BOUND * 4):
                answer = await upload.read_all()
    assert answer == b"%d" % (len(frame) * frames)
    assert len(messages) < 20, f"the app read {len(messages)} messages"
