"""HTTP/2 through real hypercorn, on asyncio and trio: TLS with ALPN, cleartext by prior
knowledge, and every stream's guarantees held per stream.

What is proved: with a certificate, an HTTP/2 client gets HTTP/2 and an HTTP/1.1 one
HTTP/1.1; a client CA makes the certificate required; without TLS, HTTP/1.1 is the default.
A stream whose client stops reading (its window stays 0) holds its producer at a bounded
number of bytes, ends with SEND_TIMEOUT and is reset (RST_STREAM CANCEL), while the
connection's other streams go on; the drain on shutdown sends every stream on a connection
its farewell, then GOAWAY, and a stream still stalled at the grace period's end its reset
first. A client's GOAWAY lets its open streams run to their end, unless it carries an
error code.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import h2.errors
import h2.settings
import httpx
import pytest
from hyperframe.frame import GoAwayFrame
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from support.certificates import Certificates

from streamkit import (
    EndReason,
    EventSourceResponse,
    ServerSentEvent,
    StreamEnd,
    StreamResponse,
    StreamSender,
    TLSConfig,
)
from streamkit.testing import H2Connection, LiveServer, open_h2_connection, open_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CLEANUP_BOUND = 1.0
SEND_TIMEOUT = 0.3
CHUNK = 16384
#: What a stalled HTTP/2 stream may hold between its producer and the client, at most: the
#: stream's flow-control window (64 KiB), hypercorn's buffer (under 32 KiB before a write
#: waits, plus that write: up to 64 KiB, streamkit's largest), streamkit's own buffer (2
#: chunks here) and the chunk in the producer's hands.
STALL_BOUND = 65535 + 32768 + 65536 + 3 * CHUNK


@dataclass
class Seen:
    """What the app saw, per stream name (the ``name`` query parameter)."""

    produced: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    ends: dict[str, StreamEnd] = field(default_factory=dict)
    ended: dict[str, anyio.Event] = field(default_factory=dict)

    def event(self, name: str) -> anyio.Event:
        return self.ended.setdefault(name, anyio.Event())

    def on_end(self, name: str) -> object:
        def record(end: StreamEnd) -> None:
            self.ends[name] = end
            self.event(name).set()

        return record

    async def wait_end(self, name: str, reason: EndReason, *, within: float) -> StreamEnd:
        with anyio.fail_after(within):
            await self.event(name).wait()
        end = self.ends[name]
        assert end.reason is reason, f"{name} ended with {end.reason.name}, not {reason.name}"
        return end


def make_app(seen: Seen) -> Starlette:
    async def ticks(request: Request) -> Response:
        name = request.query_params["name"]
        seen.versions[name] = request.scope["http_version"]

        async def produce(send: StreamSender[ServerSentEvent]) -> None:
            number = 0
            while True:
                await send(ServerSentEvent(data=str(number), id=str(number)))
                number += 1
                await anyio.sleep(0.01)

        return EventSourceResponse(produce, on_end=seen.on_end(name))  # type: ignore[arg-type]

    async def chunks(request: Request) -> Response:
        name = request.query_params["name"]
        send_timeout = request.query_params.get("send_timeout")

        async def produce(send: StreamSender[bytes]) -> None:
            seen.produced[name] = 0
            while True:
                await send(bytes([65 + seen.produced[name] // CHUNK % 26]) * CHUNK)
                seen.produced[name] += CHUNK

        return StreamResponse(
            produce,
            send_timeout=None if send_timeout == "none" else SEND_TIMEOUT,
            buffer_size=2,
            on_end=seen.on_end(name),  # type: ignore[arg-type]
        )

    async def tail(request: Request) -> Response:
        name = request.query_params["name"]
        send_timeout = request.query_params.get("send_timeout")

        async def produce(send: StreamSender[bytes]) -> None:
            # A window's worth and a tail that hypercorn's buffer takes without waiting.
            await send(b"x" * (65535 + 10000))

        return StreamResponse(
            produce,
            send_timeout=None if send_timeout == "none" else SEND_TIMEOUT,
            on_end=seen.on_end(name),  # type: ignore[arg-type]
        )

    async def version(request: Request) -> Response:
        return PlainTextResponse(request.scope["http_version"])

    return Starlette(
        routes=[
            Route("/ticks", ticks),
            Route("/chunks", chunks),
            Route("/tail", tail),
            Route("/version", version),
        ]
    )


@asynccontextmanager
async def serving(tls: TLSConfig | None = None) -> AsyncIterator[tuple[LiveServer, Seen]]:
    seen = Seen()
    with anyio.fail_after(30):
        async with open_server(make_app(seen), tls=tls) as server:
            yield server, seen


async def test_tls_offers_http2_by_alpn_and_http11_to_the_others(
    certificates: Certificates,
) -> None:
    async with serving(certificates.server()) as (server, _):
        assert server.url.startswith("https://")
        context = certificates.client_context()
        async with httpx.AsyncClient(http2=True, verify=context) as client:
            response = await client.get(f"{server.url}/version")
            assert (response.http_version, response.text) == ("HTTP/2", "2")
        async with httpx.AsyncClient(verify=context) as client:
            response = await client.get(f"{server.url}/version")
            assert (response.http_version, response.text) == ("HTTP/1.1", "1.1")


async def test_a_client_ca_makes_client_certificates_required(
    certificates: Certificates,
) -> None:
    async with serving(certificates.server(client_ca=True)) as (server, _):
        with_certificate = certificates.client_context(with_certificate=True)
        async with httpx.AsyncClient(http2=True, verify=with_certificate) as client:
            response = await client.get(f"{server.url}/version")
            assert (response.http_version, response.text) == ("HTTP/2", "2")
        async with httpx.AsyncClient(http2=True, verify=certificates.client_context()) as client:
            # Refused in the handshake or right after it (TLS 1.3 verifies the client late).
            with pytest.raises(httpx.TransportError):
                await client.get(f"{server.url}/version")


async def test_without_tls_http11_stays_the_default() -> None:
    async with serving() as (server, _):
        assert server.url.startswith("http://")
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{server.url}/version")
        assert (response.http_version, response.text) == ("HTTP/1.1", "1.1")
        # HTTP/2 by prior knowledge, on the same port (open_h2_connection speaks it).
        async with open_h2_connection(server) as connection:
            async with connection.open_stream("/version") as stream:
                assert await stream.read_all() == b"2"


async def test_a_stalled_stream_among_live_ones_ends_alone_with_send_timeout() -> None:
    async with serving() as (server, seen), open_h2_connection(server) as connection:
        async with (
            connection.open_stream("/chunks?name=stalled") as stalled,
            connection.open_stream("/ticks?name=one") as one,
            connection.open_stream("/ticks?name=two") as two,
        ):
            stalled.stall()
            started = anyio.current_time()
            with anyio.fail_after(SEND_TIMEOUT + CLEANUP_BOUND):
                # Reading the others drives the socket; the stalled one is held by its
                # window alone.
                while not seen.event("stalled").is_set():
                    await one.read_event()
                    await two.read_event()
            ended_after = anyio.current_time() - started
            end = seen.ends["stalled"]
            assert end.reason is EndReason.SEND_TIMEOUT
            assert seen.produced["stalled"] <= STALL_BOUND
            # The client is told: the stream is reset, the connection and the others go on.
            with anyio.fail_after(CLEANUP_BOUND):
                while stalled.reset_code is None:
                    await one.read_event()
            assert stalled.reset_code == h2.errors.ErrorCodes.CANCEL
            before = int((await one.read_event()).id or 0)
            assert int((await one.read_event()).id or 0) == before + 1
            await two.read_event()
            assert await connection.ping() < CLEANUP_BOUND
            assert "one" not in seen.ends
            assert "two" not in seen.ends
    assert ended_after < SEND_TIMEOUT + CLEANUP_BOUND
    print(
        f"stalled h2 stream: send_timeout after {ended_after * 1000:.0f} ms, "
        f"{seen.produced['stalled']} bytes produced"
    )


async def test_a_stalled_stream_whose_last_write_gives_up_is_reset_too() -> None:
    """The body's end is the write left waiting: its bytes are all in hypercorn's buffer,
    the last of them beyond the client's window. hypercorn kept the stream open, the tail
    buffered, until the connection closed."""
    async with serving() as (server, seen), open_h2_connection(server) as connection:
        async with (
            connection.open_stream("/tail?name=stalled") as stalled,
            connection.open_stream("/ticks?name=live") as live,
        ):
            stalled.stall()
            with anyio.fail_after(SEND_TIMEOUT + CLEANUP_BOUND):
                while stalled.reset_code is None:
                    await live.read_event()
            assert stalled.reset_code == h2.errors.ErrorCodes.CANCEL
            assert seen.ends["stalled"].reason is EndReason.SEND_TIMEOUT
            await live.read_event()
            assert await connection.ping() < CLEANUP_BOUND
            assert "live" not in seen.ends


async def test_a_stalled_stream_without_send_timeout_holds_its_producer_at_the_bound() -> None:
    """Without the repair of hypercorn's buffer, the producer here never waits: it makes
    hundreds of megabytes a second, all of it held by the server."""
    async with serving() as (server, seen), open_h2_connection(server) as connection:
        async with (
            connection.open_stream("/chunks?name=stalled&send_timeout=none") as stalled,
            connection.open_stream("/ticks?name=live") as live,
        ):
            stalled.stall()
            samples = []
            for _ in range(3):
                with anyio.fail_after(CLEANUP_BOUND):
                    for _ in range(25):  # about 0.25 s of the live stream's ticks
                        await live.read_event()
                samples.append(seen.produced["stalled"])
            assert samples[0] == samples[-1], f"the producer went on: {samples}"
            assert samples[-1] <= STALL_BOUND, f"{samples[-1]} bytes held for a stalled stream"
            assert "stalled" not in seen.ends
        await seen.wait_end("stalled", EndReason.CLIENT_DISCONNECTED, within=CLEANUP_BOUND)


async def test_the_drain_sends_every_stream_its_farewell_then_goaway() -> None:
    async with serving() as (server, seen), open_h2_connection(server) as connection:
        async with (
            connection.open_stream("/ticks?name=a") as first,
            connection.open_stream("/ticks?name=b") as second,
            connection.open_stream("/ticks?name=c") as third,
        ):
            for stream in (first, second, third):
                await stream.read_event()
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(server.shutdown)
                for stream in (first, second, third):
                    with anyio.fail_after(CLEANUP_BOUND * 5):
                        events = [event async for event in stream.events()]
                    assert (events[-1].event, events[-1].retry) == ("shutdown", 1000)
                    assert stream.complete
                with anyio.fail_after(CLEANUP_BOUND * 5):
                    code = await connection.wait_goaway()
            assert code == h2.errors.ErrorCodes.NO_ERROR
    assert {name: end.reason for name, end in seen.ends.items()} == {
        "a": EndReason.SHUTDOWN,
        "b": EndReason.SHUTDOWN,
        "c": EndReason.SHUTDOWN,
    }


async def test_a_shutdown_with_a_stalled_stream_says_goaway_and_closes_in_bounded_time() -> None:
    """A healthy stream and a stalled one (window 0) on one connection: the healthy one gets
    its farewell, the connection its GOAWAY and the stalled stream its reset as the grace
    period ends, and the socket is closed soon after; the server stops. On trio hypercorn
    cancelled the connection at the grace period's end and gave it no close to answer: no
    GOAWAY, no reset, only the socket closed. On asyncio the stalled stream's end made
    hypercorn start a task in the connection's task group, already being cancelled, and the
    RuntimeError came out of serve()."""
    seen = Seen()
    grace_period = 1.0
    with anyio.fail_after(30):
        async with (
            open_server(make_app(seen), grace_period=grace_period) as server,
            open_h2_connection(server) as connection,
            connection.open_stream("/chunks?name=stalled&send_timeout=none") as stalled,
            connection.open_stream("/ticks?name=live") as live,
        ):
            stalled.stall()
            for _ in range(20):  # the stalled stream's producer meanwhile fills the buffers
                await live.read_event()
            started = anyio.current_time()
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(server.shutdown)
                with anyio.fail_after(CLEANUP_BOUND):
                    events = [event async for event in live.events()]
                assert (events[-1].event, events[-1].retry) == ("shutdown", 1000)
                with anyio.fail_after(grace_period + CLEANUP_BOUND):
                    code = await connection.wait_goaway()
                goaway_after = anyio.current_time() - started
                assert code == h2.errors.ErrorCodes.NO_ERROR
                with anyio.fail_after(CLEANUP_BOUND):
                    await read_until_closed(connection)
                closed_after = anyio.current_time() - started
            stopped_after = anyio.current_time() - started
            assert stalled.reset_code == h2.errors.ErrorCodes.CANCEL
    assert goaway_after < grace_period + CLEANUP_BOUND
    assert closed_after < grace_period + CLEANUP_BOUND
    assert stopped_after < grace_period + CLEANUP_BOUND
    assert seen.ends["live"].reason is EndReason.SHUTDOWN
    assert seen.ends["stalled"].reason is EndReason.SHUTDOWN


async def test_a_shutdown_with_a_client_that_stopped_reading_its_socket_ends_in_bounded_time() -> (
    None
):
    """A client that opens its windows wide and then reads nothing holds the server's write
    of the connection in the kernel, not at a stream's window: its streams end with
    SEND_TIMEOUT, and the connection, which may carry other streams, is left to the server.
    At the grace period's end it is aborted. On trio hypercorn shields that write, and the
    connection it cancelled waited for it for good, the server with it, where the kernel
    does not give the client up (no TCP_USER_TIMEOUT, as under the hypercorn command)."""
    seen = Seen()
    grace_period = 1.0
    with anyio.fail_after(30):
        async with (
            open_server(
                make_app(seen), grace_period=grace_period, stalled_connection_timeout=None
            ) as server,
            open_h2_connection(server, receive_buffer=4096) as connection,
        ):
            largest = 2**31 - 1
            connection._h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: largest})
            async with connection.open_stream("/chunks?name=stalled"):
                # Nothing more is read: the server's writes fill the sockets' buffers.
                await seen.wait_end("stalled", EndReason.SEND_TIMEOUT, within=30)
                started = anyio.current_time()
                with anyio.fail_after(grace_period + 5):
                    await server.shutdown()
                stopped_after = anyio.current_time() - started
    # The connection is aborted a second after the grace period ends; before, never. Generous
    # past that: a loaded machine drew it out to 3.8 s.
    assert stopped_after < grace_period + CLEANUP_BOUND * 4


async def read_until_closed(connection: H2Connection) -> None:
    """Read the connection until the server closes it."""
    try:
        while True:
            await connection._receive_once()
    except ConnectionError:
        return


def goaway_frame(error_code: int) -> bytes:
    """A client's GOAWAY, sent past the client's own h2 state machine, which would close
    the connection for it on sending one."""
    return GoAwayFrame(0, last_stream_id=0, error_code=error_code).serialize()


async def test_a_client_goaway_lets_its_open_streams_run_to_their_end() -> None:
    """RFC 9113 6.8: a client's GOAWAY says it will open no more streams; those it has go
    on (a client shutting down gracefully, as Go's does, waits for them). hypercorn took it
    for the connection's end and closed it, every stream cut. Chromium sends GOAWAY only with
    an error code (and closes the socket), so a browser's streams are not held open by this."""
    async with serving() as (server, seen), open_h2_connection(server) as connection:
        async with (
            connection.open_stream("/ticks?name=live") as live,
            connection.open_stream("/tail?name=tail&send_timeout=none") as tail,
        ):
            await live.read_event()
            await connection.stream.send(goaway_frame(h2.errors.ErrorCodes.NO_ERROR))
            with anyio.fail_after(CLEANUP_BOUND):
                # A body larger than the stream's window: its end needs the client's window
                # updates, sent after its GOAWAY.
                assert len(await tail.read_all()) == 65535 + 10000
                for _ in range(3):
                    await live.read_event()
            assert tail.complete
            assert seen.ends["tail"].reason is EndReason.COMPLETED
            assert "live" not in seen.ends
            # The client said it would open none: a stream it opens anyway is refused.
            with anyio.fail_after(CLEANUP_BOUND), pytest.raises(ConnectionResetError) as refused:
                async with connection.open_stream("/version"):
                    pass
            assert f"error code {h2.errors.ErrorCodes.REFUSED_STREAM:d}" in str(refused.value)
            await live.read_event()
            await live.reset_stream()
        await seen.wait_end("live", EndReason.CLIENT_DISCONNECTED, within=CLEANUP_BOUND)
        # Its last stream ended, the connection is closed: GOAWAY, then the socket.
        with anyio.fail_after(CLEANUP_BOUND):
            assert await connection.wait_goaway() == h2.errors.ErrorCodes.NO_ERROR
            await read_until_closed(connection)


async def test_a_client_goaway_with_an_error_ends_its_streams_at_once() -> None:
    """An error code says the client is closing the connection now (Chromium sends one, then
    closes the socket): its streams end, not waiting for the socket's close. Sent as data
    flows: hypercorn's trio worker shut the socket while another task began a write, and the
    BusyResourceError stopped the whole server."""
    async with serving() as (server, seen):
        for attempt in range(20):
            async with open_h2_connection(server) as connection:
                name = f"busy{attempt}"
                async with connection.open_stream(f"/chunks?name={name}&send_timeout=none") as busy:
                    for _ in range(8):
                        await busy.receive_chunk()
                    await connection.stream.send(goaway_frame(h2.errors.ErrorCodes.PROTOCOL_ERROR))
                    await seen.wait_end(name, EndReason.CLIENT_DISCONNECTED, within=CLEANUP_BOUND)
                    with anyio.fail_after(CLEANUP_BOUND):
                        await read_until_closed(connection)
        # The server goes on.
        async with open_h2_connection(server) as connection:
            with anyio.fail_after(CLEANUP_BOUND):
                async with connection.open_stream("/version") as stream:
                    assert await stream.read_all() == b"2"


async def test_a_client_that_does_not_trust_the_ca_refuses_the_server(
    certificates: Certificates,
) -> None:
    """The throwaway CA is what makes the server trusted: the TLS above is verified."""
    async with serving(certificates.server()) as (server, _):
        async with httpx.AsyncClient(http2=True, verify=ssl.create_default_context()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{server.url}/version")
