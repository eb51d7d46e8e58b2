"""The HTTP/1.1 test client: it reads what the server streams, and each way it misbehaves has
the effect on the server that the same misbehaviour by a real client has.

Every misbehaviour test asserts what the server-side producer saw (cancellation, cleanup), so
it fails against a server that ignores disconnects; the socket-level tests assert what a peer
sees on the wire (FIN versus RST).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import cast

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketListener
from starlette.applications import Starlette
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from streamkit import (
    EndReason,
    EventSourceResponse,
    NDJSONResponse,
    ServerSentEvent,
    StreamResponse,
    StreamSender,
)
from streamkit.testing import (
    LiveServer,
    StreamClient,
    open_h2_stream,
    open_server,
    open_stream,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

# Generous bounds for a loaded 2-core machine; the real figures are around a millisecond.
CLEANUP_BOUND = 1.0
SEND_TIMEOUT = 0.3


@dataclass
class Probe:
    """What the server-side producers saw."""

    started: anyio.Event = field(default_factory=anyio.Event)
    cleaned_up: anyio.Event = field(default_factory=anyio.Event)
    cancelled: bool = False
    cleaned_up_at: float = 0.0

    @contextmanager
    def watching(self) -> Iterator[None]:
        self.started.set()
        try:
            yield
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        finally:
            self.cleaned_up_at = anyio.current_time()
            self.cleaned_up.set()


def make_app(probe: Probe) -> Starlette:
    async def ticks(request: Request) -> Response:
        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            with probe.watching():
                await send(ServerSentEvent(data="0", id="0"))
                await anyio.sleep_forever()

        return EventSourceResponse(produce)

    async def heartbeats(request: Request) -> Response:
        # Heartbeats only, SSE comments or empty NDJSON lines: bytes, and never a value.
        async def produce(send: StreamSender[object]) -> None:
            await anyio.sleep_forever()

        kind = EventSourceResponse if request.query_params["as"] == "sse" else NDJSONResponse
        return kind(produce, heartbeat_interval=HEARTBEAT_INTERVAL)

    async def items(request: Request) -> Response:
        count = int(request.query_params["n"])

        async def produce(send: StreamSender[object]) -> None:
            with probe.watching():
                for number in range(count):
                    await send({"n": number})

        return NDJSONResponse(produce)

    async def silent(request: Request) -> Response:
        probe.started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def flood(request: Request) -> Response:
        async def produce(send: StreamSender[bytes | str]) -> None:
            with probe.watching():
                while True:
                    await send(b"x" * 65536)

        return StreamResponse(produce, send_timeout=SEND_TIMEOUT, buffer_size=2)

    return Starlette(
        routes=[
            Route("/ticks", ticks),
            Route("/items", items),
            Route("/flood", flood),
            Route("/silent", silent),
            Route("/heartbeats", heartbeats),
        ]
    )


@asynccontextmanager
async def serving(grace_period: float = 5.0) -> AsyncIterator[tuple[LiveServer, Probe]]:
    probe = Probe()
    with anyio.fail_after(20):
        async with open_server(make_app(probe), grace_period=grace_period) as server:
            yield server, probe


async def test_reads_ndjson_to_completion() -> None:
    async with serving() as (server, probe):
        async with open_stream(server, "/items?n=3") as client:
            assert client.status == 200
            assert client.headers["content-type"] == "application/x-ndjson"
            assert [await client.read_item() for _ in range(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert await client.read_all() == b""
            assert client.complete
            with pytest.raises(EOFError):
                await client.read_item()
        end = await server.wait_ended(EndReason.COMPLETED)
        assert end.items_sent == 3
        assert not probe.cancelled


async def test_reads_sse_events_and_raw_chunks() -> None:
    async with serving() as (server, _), open_stream(server, "/ticks") as client:
        assert client.headers["content-type"].startswith("text/event-stream")
        assert await client.read_event() == ServerSentEvent(data="0", id="0")
        await client.close()
    async with serving() as (server, _), open_stream(server, "/items?n=2") as client:
        body = await client.read_all()
        assert [json.loads(line) for line in body.splitlines()] == [{"n": 0}, {"n": 1}]


@pytest.mark.parametrize("leave", ["close", "reset", "half_close"])
async def test_leaving_cancels_the_producer_and_its_cleanup_runs(leave: str) -> None:
    async with serving() as (server, probe):
        async with open_stream(server, "/ticks") as client:
            await client.read_event()
            left_at = anyio.current_time()
            await getattr(client, leave)()
            end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=CLEANUP_BOUND)
        assert probe.cancelled, f"{leave}: the producer was never cancelled"
        assert probe.cleaned_up.is_set()
        latency = probe.cleaned_up_at - left_at
        assert 0 <= latency < CLEANUP_BOUND, f"{leave}: cleanup finished {latency:.3f} s after"
        assert end.items_sent == 1


async def test_stall_ends_with_send_timeout_and_cancels_the_producer() -> None:
    async with serving() as (server, probe):
        # The client never reads the body, so the server's writes may block (and its timeout
        # start) before stall() is called: the timeout cannot fire sooner than after the request.
        requested_at = anyio.current_time()
        async with open_stream(server, "/flood", receive_buffer=4096) as client:
            client.stall()
            stalled_at = anyio.current_time()
            await server.wait_ended(EndReason.SEND_TIMEOUT, within=SEND_TIMEOUT + CLEANUP_BOUND)
            assert probe.cancelled
            assert probe.cleaned_up_at - requested_at >= SEND_TIMEOUT * 0.99
            assert probe.cleaned_up_at - stalled_at < SEND_TIMEOUT + CLEANUP_BOUND
            with pytest.raises(RuntimeError, match="stall"):
                await client.receive_chunk()


async def test_a_reading_client_does_not_time_out() -> None:
    # The control for the stall test: the same endpoint, read, runs past send_timeout.
    async with serving() as (server, probe), open_stream(server, "/flood") as client:
        received = 0
        with anyio.move_on_after(SEND_TIMEOUT * 3):
            while chunk := await client.receive_chunk():
                received += len(chunk)
        assert received > 65536
        assert not probe.cleaned_up.is_set()
        await client.close()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=CLEANUP_BOUND)


# -- every wait is bounded, and says what it waited for ------------------------------------

READ_TIMEOUT = 0.2


@pytest.mark.parametrize("opener", [open_stream, open_h2_stream], ids=["http1", "http2"])
async def test_a_server_that_never_answers_is_a_timeout_naming_the_request(
    opener: Callable[..., AbstractAsyncContextManager[StreamClient]],
) -> None:
    # The endpoint that never answers holds the shutdown for its grace period: a short one.
    async with serving(grace_period=0.3) as (server, _):
        with pytest.raises(TimeoutError) as caught:
            async with opener(server, "/silent", read_timeout=READ_TIMEOUT):
                raise AssertionError("a response head arrived")
    assert str(caught.value) == (
        f"the response head of GET /silent did not arrive within {READ_TIMEOUT} s"
    )


@pytest.mark.parametrize("opener", [open_stream, open_h2_stream], ids=["http1", "http2"])
async def test_a_body_that_stops_is_a_timeout_naming_what_arrived(
    opener: Callable[..., AbstractAsyncContextManager[StreamClient]],
) -> None:
    async with (
        serving() as (server, probe),
        opener(server, "/ticks", read_timeout=READ_TIMEOUT) as client,
    ):
        assert (await client.read_event()).data == "0"
        with pytest.raises(TimeoutError) as caught:
            await client.read_event()
        # The producer runs on: the client gave up waiting, it did not leave.
        assert not probe.cleaned_up.is_set()
    message = str(caught.value)
    assert message.startswith(
        f"another event of GET /ticks did not arrive within {READ_TIMEOUT} s; "
        "the body so far: 1 piece, 15 bytes, the last b'id: 0\\ndata: 0\\n\\n'"
    ), message
    # The bound can be changed between reads; receive_chunk names what it waited for.
    async with serving() as (server, _), opener(server, "/ticks") as client:
        await client.receive_chunk()
        client.read_timeout = READ_TIMEOUT
        with pytest.raises(TimeoutError, match="the next piece of the body of GET /ticks"):
            await client.receive_chunk()


HEARTBEAT_INTERVAL = READ_TIMEOUT / 10


@pytest.mark.parametrize("opener", [open_stream, open_h2_stream], ids=["http1", "http2"])
@pytest.mark.parametrize(
    ("kind", "read", "awaited"),
    [("sse", "read_event", "another event"), ("ndjson", "read_item", "another item")],
    ids=["sse", "ndjson"],
)
async def test_heartbeats_do_not_hold_off_the_timeout_of_a_read(
    opener: Callable[..., AbstractAsyncContextManager[StreamClient]],
    kind: str,
    read: str,
    awaited: str,
) -> None:
    # Each heartbeat started the read's timeout over: a stream of heartbeats and no event
    # held read_event() for ever.
    async with (
        serving() as (server, _),
        opener(server, f"/heartbeats?as={kind}", read_timeout=READ_TIMEOUT) as client,
    ):
        with anyio.fail_after(READ_TIMEOUT * 10), pytest.raises(TimeoutError) as caught:
            await getattr(client, read)()
        assert client.comments or client.blank_lines, "no heartbeat arrived"
    assert str(caught.value).startswith(
        f"{awaited} of GET /heartbeats?as={kind} did not arrive within {READ_TIMEOUT} s; "
        "the body so far: "
    ), caught.value


@pytest.mark.parametrize("opener", [open_stream, open_h2_stream], ids=["http1", "http2"])
@pytest.mark.parametrize(("read", "awaited"), [("read_event", "event"), ("read_item", "item")])
async def test_the_end_of_a_response_that_is_no_success_names_its_status(
    opener: Callable[..., AbstractAsyncContextManager[StreamClient]], read: str, awaited: str
) -> None:
    # A mistyped path read as a stream said only that an unfinished event or line, the
    # "Not Found" of the 404, was discarded.
    async with serving() as (server, _), opener(server, "/tikcs") as client:
        with pytest.raises(EOFError) as caught:
            await getattr(client, read)()
    assert str(caught.value).startswith(
        f"the stream of GET /tikcs ended before another {awaited} arrived; "
        "the response's status was 404"
    ), caught.value


async def test_a_wait_for_an_end_that_does_not_come_names_what_it_waited_for() -> None:
    # It raised a TimeoutError without a message: which wait, for what, nobody knew.
    async with serving() as (server, _), open_stream(server, "/ticks") as client:
        await client.read_event()
        with pytest.raises(TimeoutError) as caught:
            await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=READ_TIMEOUT)
        assert re.fullmatch(
            rf"no stream ended on {re.escape(server.url)} within {READ_TIMEOUT} s "
            r"\(waiting for one ended with CLIENT_DISCONNECTED\); running: /ticks for \d+\.\d+ s",
            str(caught.value),
        ), caught.value
        with pytest.raises(TimeoutError, match=r"^no stream ended on .* \(waiting for any end\)"):
            await server.wait_end(within=READ_TIMEOUT)


@pytest.mark.parametrize("opener", [open_stream, open_h2_stream], ids=["http1", "http2"])
async def test_a_connection_that_ends_mid_body_names_the_request_and_what_arrived(
    opener: Callable[..., AbstractAsyncContextManager[StreamClient]],
) -> None:
    # hypercorn closes the connection on a half-close: the body is cut short.
    async with serving() as (server, _), opener(server, "/ticks") as client:
        assert (await client.read_event()).data == "0"
        await client.half_close()
        with pytest.raises(ConnectionError) as caught:
            await client.read_event()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=CLEANUP_BOUND)
    assert re.search(
        r", while reading GET /ticks; the body so far: 1 piece, 15 bytes", str(caught.value)
    ), caught.value


async def test_a_shutdown_that_does_not_end_in_time_names_the_server() -> None:
    # It raised a TimeoutError without a message. A request hypercorn waits for holds it.
    probe = Probe()
    with anyio.fail_after(20):
        async with open_server(make_app(probe), grace_period=1.0) as server:
            async with anyio.create_task_group() as task_group:

                async def ask() -> None:
                    # Answered or cut off once the grace period is over: either will do.
                    with contextlib.suppress(ConnectionError):
                        async with open_stream(server, "/silent", read_timeout=None):
                            pass

                task_group.start_soon(ask)
                await probe.started.wait()
                with pytest.raises(TimeoutError) as caught:
                    await server.shutdown(within=READ_TIMEOUT)
    assert str(caught.value) == (
        f"the server at {server.url} did not stop within {READ_TIMEOUT} s of shutdown(); "
        "streams still running: none"
    )


async def test_a_connection_reset_mid_body_is_a_connection_error() -> None:
    async with raw_peer(reset_after_head=True) as peer, open_stream(peer, "/") as client:
        await peer.done.wait()
        with pytest.raises(ConnectionResetError, match="reset by the server, while reading GET /;"):
            await client.read_all()


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_client_that_left_says_so_when_used_again(leave: str) -> None:
    async with raw_peer() as peer, open_stream(peer, "/") as client:
        await getattr(client, leave)()
        for again in ("receive_chunk", "close", "reset", "half_close"):
            with pytest.raises(RuntimeError, match=rf"this client already left \(by {leave}\(\)\)"):
                await getattr(client, again)()
        # A stall, which took effect as if the client were there, too.
        with pytest.raises(RuntimeError, match=rf"this client already left \(by {leave}\(\)\)"):
            client.stall()
        assert not client.stalled
    with pytest.raises(RuntimeError, match=rf"already left \(by {leave}\(\)\)"):
        await client.read_event()


async def test_a_client_used_after_its_block_says_so() -> None:
    async with raw_peer() as peer, open_stream(peer, "/") as client:
        pass
    with pytest.raises(RuntimeError, match=r"already left \(at the end of its open_stream block\)"):
        await client.read_all()


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), "1"])
async def test_a_bad_read_timeout_is_refused_naming_it_before_connecting(value: object) -> None:
    with pytest.raises((TypeError, ValueError), match="read_timeout must be"):
        async with open_stream(LiveServerAt("127.0.0.1", 1), read_timeout=value):  # type: ignore[arg-type]
            raise AssertionError("it connected")


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), "1"])
async def test_a_bad_read_timeout_set_between_reads_is_refused_naming_it(value: object) -> None:
    # A test may change it between reads; a bad one was taken, and the next read failed with
    # a bare TypeError of the deadline's addition, or waited for ever.
    async with raw_peer() as peer, open_stream(peer, "/") as client:
        with pytest.raises((TypeError, ValueError), match="read_timeout must be"):
            client.read_timeout = value  # type: ignore[assignment]
        assert client.read_timeout == 10.0  # open_stream's default, kept
        client.read_timeout = None  # no bound: allowed
        assert client.read_timeout is None


OPENERS = {"http/1.1": open_stream, "h2": open_h2_stream}


@pytest.mark.parametrize("protocol", OPENERS)
@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/ticks now", ValueError),  # a space ends the request target
        ("/ticks\r\nX-Injected: 1", ValueError),
        ("/caf\u00e9", ValueError),  # not percent-encoded, as a browser would send it
        ("ticks", ValueError),  # no leading slash: the server answers 404
        ("", ValueError),
        (b"/ticks", TypeError),
    ],
)
async def test_a_path_no_request_can_carry_is_refused_naming_it_before_connecting(
    protocol: str, path: object, error: type[Exception]
) -> None:
    # Sent, h11 refused it after connecting, saying only "Illegal target characters" (or
    # failed to encode it in ASCII); over HTTP/2 the server answered a 404, a 400 or, for a
    # line break, the path without it.
    with pytest.raises(error, match=f"path must .*{re.escape(repr(path))}"):
        async with OPENERS[protocol](LiveServerAt("127.0.0.1", 1), path):  # type: ignore[arg-type]
            raise AssertionError("it connected")


@pytest.mark.parametrize("protocol", OPENERS)
@pytest.mark.parametrize(
    ("options", "error", "named"),
    [
        ({"headers": {"Last-Event-ID": 5}}, TypeError, "header 'Last-Event-ID' must be a str"),
        ({"headers": {b"X-Token": "t"}}, TypeError, "header name must be a str, got bytes"),
        ({"headers": {"X Token": "t"}}, ValueError, "header name 'X Token' must be"),
        ({"headers": {"X-Token": "a\r\nX-Injected: 1"}}, ValueError, "header 'X-Token'"),
        ({"headers": {"X-Token": " t"}}, ValueError, "header 'X-Token'"),
        ({"method": "GET /"}, ValueError, "method must be an HTTP token"),
        ({"method": b"GET"}, TypeError, "method must be a str"),
    ],
)
async def test_a_method_or_header_no_request_can_carry_is_refused_naming_it_before_connecting(
    protocol: str, options: dict[str, object], error: type[Exception], named: str
) -> None:
    # An int header was an AttributeError; over HTTP/1.1 h11 refused the others once
    # connected; over HTTP/2 the server closed the connection, saying nothing of the header,
    # or took the value stripped.
    server = LiveServerAt("127.0.0.1", 1)
    with pytest.raises(error, match=re.escape(named)):
        async with OPENERS[protocol](server, "/ticks", **options):  # type: ignore[arg-type]
            raise AssertionError("it connected")


@pytest.mark.parametrize("protocol", OPENERS)
@pytest.mark.parametrize("base", ["http://127.0.0.1:1", ("127.0.0.1", 1)])
async def test_a_base_that_is_no_server_is_refused_naming_it(protocol: str, base: object) -> None:
    # A server's url handed for the server was an AttributeError: 'str' object has no
    # attribute 'host'.
    with pytest.raises(TypeError, match=f"base must be .*{re.escape(repr(base))}"):
        async with OPENERS[protocol](base, "/ticks"):
            raise AssertionError("it connected")


@pytest.mark.parametrize("protocol", OPENERS)
@pytest.mark.parametrize("stop", ["block", "shutdown"])
async def test_a_server_that_stopped_is_refused_saying_so(protocol: str, stop: str) -> None:
    # It was a ConnectionRefusedError naming the port, as if the test had the wrong one.
    with anyio.fail_after(20):
        async with serving() as (server, _):
            if stop == "shutdown":
                await server.shutdown()
                with pytest.raises(RuntimeError, match=f"^the server at {server.url} has stopped"):
                    async with OPENERS[protocol](server, "/ticks"):
                        raise AssertionError("it connected")
        with pytest.raises(RuntimeError, match=f"^the server at {server.url} has stopped"):
            async with OPENERS[protocol](server, "/ticks"):
                raise AssertionError("it connected")


@pytest.mark.parametrize("protocol", OPENERS)
@pytest.mark.parametrize("value", [0, -4096, "4096", 4096.0])
async def test_a_bad_receive_buffer_is_refused_naming_it_before_connecting(
    protocol: str, value: object
) -> None:
    # A negative one was taken (the kernel's least buffer), a str was a bare TypeError of
    # setsockopt.
    server = LiveServerAt("127.0.0.1", 1)
    with pytest.raises((TypeError, ValueError), match=f"receive_buffer must be .*{value!r}"):
        async with OPENERS[protocol](server, "/", receive_buffer=value):  # type: ignore[arg-type]
            raise AssertionError("it connected")


@dataclass
class LiveServerAt:
    host: str
    port: int


# -- what a peer sees on the wire -----------------------------------------------------------


@dataclass
class Peer:
    host: str
    port: int
    outcome: type[BaseException] | None = None
    cause: BaseException | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"


@asynccontextmanager
async def raw_peer(
    after_eof: bytes = b"", *, reset_after_head: bool = False
) -> AsyncIterator[Peer]:
    """A bare TCP server that answers one request with a chunked head, then records how its
    reading ended; *after_eof* is sent (as a chunk) once the client's FIN arrived. With
    *reset_after_head*, it resets the connection (RST) after the head, and is done."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listeners:
        listener = cast(SocketListener, listeners.listeners[0])
        peer = Peer("127.0.0.1", listener.extra(SocketAttribute.local_port))

        async def answer() -> None:
            connection = await listener.accept()
            async with connection:
                await connection.receive()
                await connection.send(_HEAD)
                if reset_after_head:
                    connection.extra(SocketAttribute.raw_socket).setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    await connection.aclose()
                    peer.done.set()
                    return
                try:
                    while True:
                        await connection.receive()
                except anyio.EndOfStream:
                    peer.outcome = anyio.EndOfStream
                    if after_eof:
                        await connection.send(
                            b"%x\r\n%s\r\n0\r\n\r\n" % (len(after_eof), after_eof)
                        )
                except anyio.BrokenResourceError as exc:
                    peer.outcome, peer.cause = anyio.BrokenResourceError, exc.__cause__
                peer.done.set()

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(answer)
            with anyio.fail_after(5):
                yield peer


@pytest.mark.parametrize("opener", [open_stream, open_h2_stream], ids=["http/1.1", "http/2"])
async def test_a_header_beyond_ascii_is_sent_as_utf8_as_a_browser_sends_its_last_event_id(
    opener: Callable[..., AbstractAsyncContextManager[StreamClient]],
) -> None:
    # A browser sends an id beyond ASCII back in UTF-8, and the HTTP/2 client sent it so;
    # the HTTP/1.1 client raised UnicodeEncodeError from h11.
    async def resumed(request: Request) -> Response:
        async def produce(send: StreamSender[ServerSentEvent]) -> None:
            await send(ServerSentEvent(data=str(send.last_event_id)))

        return EventSourceResponse(produce, heartbeat_interval=None)

    async with open_server(Starlette(routes=[Route("/resumed", resumed)])) as server:
        async with opener(
            server, "/resumed", headers={"last-event-id": "\u00e9t\u00e9-7"}
        ) as client:
            with anyio.fail_after(5):
                assert (await client.read_event()).data == "\u00e9t\u00e9-7"


@pytest.mark.parametrize("opener", [open_stream, open_h2_stream], ids=["http/1.1", "http/2"])
@pytest.mark.parametrize("name", ["Host", "host"])
async def test_a_host_header_given_is_the_host_the_request_is_for(
    opener: Callable[..., AbstractAsyncContextManager[StreamClient]], name: str
) -> None:
    # As a test of a host-checking app needs it. Over HTTP/1.1 h11 refused the request for
    # its two Host headers; over HTTP/2 h2 refused a Host other than the :authority.
    async def host(request: Request) -> Response:
        return PlainTextResponse(f"{request.headers['host']} {request.url.hostname}")

    app = Starlette(routes=[Route("/host", host)])
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=["streams.example"])
    with anyio.fail_after(20):
        async with open_server(app) as server:
            async with opener(server, "/host", headers={name: "streams.example"}) as client:
                assert client.status == 200
                assert await client.read_all() == b"streams.example streams.example"
            async with opener(server, "/host") as client:
                assert client.status == 400  # the server's own address, refused


@pytest.mark.parametrize("opener", [open_stream, open_h2_stream], ids=["http/1.1", "http/2"])
async def test_a_response_header_in_latin1_is_read_as_starlette_sends_it(
    opener: Callable[..., AbstractAsyncContextManager[StreamClient]],
) -> None:
    # A response takes a header value in Latin-1, which Starlette sends a byte a character,
    # as FakeConnection reads it back; both clients decoded it as UTF-8, and raised.
    async def named(request: Request) -> Response:
        async def produce(send: StreamSender[ServerSentEvent]) -> None:
            await send(ServerSentEvent(data="x"))

        disposition = 'inline; filename="caf\u00e9"'
        return EventSourceResponse(produce, headers={"content-disposition": disposition})

    async with (
        open_server(Starlette(routes=[Route("/named", named)])) as server,
        opener(server, "/named") as client,
    ):
        assert client.headers["content-disposition"] == 'inline; filename="caf\u00e9"'


async def test_close_sends_fin() -> None:
    async with raw_peer() as peer, open_stream(peer, "/") as client:
        await client.close()
        await peer.done.wait()
    assert peer.outcome is anyio.EndOfStream


async def test_reset_sends_rst() -> None:
    async with raw_peer() as peer, open_stream(peer, "/") as client:
        await client.reset()
        await peer.done.wait()
    assert peer.outcome is anyio.BrokenResourceError
    assert isinstance(peer.cause, ConnectionResetError)


async def test_half_close_sends_fin_and_keeps_reading() -> None:
    async with raw_peer(after_eof=b"still here") as peer, open_stream(peer, "/") as client:
        await client.half_close()
        await peer.done.wait()
        assert peer.outcome is anyio.EndOfStream
        assert await client.read_all() == b"still here"
        assert client.complete


async def test_a_body_cut_short_is_a_connection_error() -> None:
    async with raw_peer() as peer, open_stream(peer, "/") as client:
        await client.half_close()  # the peer closes its side once it sees our FIN
        with pytest.raises(ConnectionError, match="broke off"):
            await client.read_all()


@pytest.mark.parametrize(
    ("read", "body", "said"),
    [
        (
            "event",
            b"data: part\n",
            "; an unfinished event at its end was discarded, as a browser does",
        ),
        ("event", b": only a comment\n\n", ""),
        ("item", b'{"n": 1}', "; an unfinished line at its end was discarded"),
        ("item", b"\n", ""),
    ],
    ids=["sse-mid-event", "sse-between-events", "ndjson-mid-line", "ndjson-between-lines"],
)
async def test_a_body_that_ends_mid_frame_says_so(read: str, body: bytes, said: str) -> None:
    # An NDJSON last line without its newline was dropped without a word: the body seemed to
    # hold one value fewer than it showed.
    async with raw_peer(after_eof=body) as peer, open_stream(peer, "/") as client:
        await client.half_close()  # the peer sends the body, then ends it, on our FIN
        with pytest.raises(EOFError) as caught:
            await getattr(client, f"read_{read}")()
    assert str(caught.value) == f"the stream of GET / ended before another {read} arrived{said}"


async def test_a_bad_ndjson_line_is_raised_in_its_turn() -> None:
    # The values before a bad line, and after it, in the same piece of the body were lost:
    # the first read raised the bad line's error, and the body then seemed to end.
    body = b'{"n": 0}\nnope\n{"n": 2}\n'
    async with raw_peer(after_eof=body) as peer, open_stream(peer, "/") as client:
        await client.half_close()  # the peer sends the body, in one piece, on our FIN
        assert await client.read_item() == {"n": 0}
        with pytest.raises(ValueError, match=r"^line 2 of the NDJSON body is not JSON"):
            await client.read_item()
        assert await client.read_item() == {"n": 2}
        with pytest.raises(EOFError):
            await client.read_item()


def test_stream_client_is_the_base_of_both_protocols() -> None:
    from streamkit.testing import H2StreamClient

    assert issubclass(H2StreamClient, StreamClient)
