"""The HTTP/2 test client against real hypercorn (h2c, prior knowledge), on both backends.

What is proved: the server answers h2 prior knowledge on cleartext; a ``RST_STREAM`` ends that
stream alone (its producer is cancelled, the connection answers PING and carries other and new
streams); flow control is acknowledged, so a body far larger than the windows arrives; an
unread stream is held at its flow-control window while the others flow, and, once
streamkit.serve has repaired hypercorn's HTTP/2 stream buffer, ends with ``send_timeout``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamkit import (
    EndReason,
    EventSourceResponse,
    NDJSONResponse,
    ServerSentEvent,
    StreamEnd,
    StreamResponse,
    StreamSender,
)
from streamkit.testing import LiveServer, open_h2_connection, open_h2_stream, open_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CLEANUP_BOUND = 1.0
SEND_TIMEOUT = 0.3
CHUNK = 16384


@dataclass
class Probes:
    """Per stream name (the ``name`` query parameter): what its producer saw, how it ended."""

    cancelled: set[str] = field(default_factory=set)
    cleaned_up: dict[str, float] = field(default_factory=dict)
    ends: dict[str, StreamEnd] = field(default_factory=dict)
    ended: dict[str, anyio.Event] = field(default_factory=dict)

    def event(self, name: str) -> anyio.Event:
        return self.ended.setdefault(name, anyio.Event())

    @contextmanager
    def watching(self, name: str) -> Iterator[None]:
        try:
            yield
        except anyio.get_cancelled_exc_class():
            self.cancelled.add(name)
            raise
        finally:
            self.cleaned_up[name] = anyio.current_time()

    def on_end(self, name: str) -> object:
        def record(end: StreamEnd) -> None:
            self.ends[name] = end
            self.event(name).set()

        return record

    async def wait_end(self, name: str, reason: EndReason) -> StreamEnd:
        with anyio.fail_after(SEND_TIMEOUT + CLEANUP_BOUND):
            await self.event(name).wait()
        end = self.ends[name]
        assert end.reason is reason, f"{name} ended with {end.reason.name}, not {reason.name}"
        return end


def make_app(probes: Probes) -> Starlette:
    async def ticks(request: Request) -> Response:
        name = request.query_params["name"]

        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            with probes.watching(name):
                number = 0
                while True:
                    await send(ServerSentEvent(data=str(number), id=str(number)))
                    number += 1
                    await anyio.sleep(0.005)

        return EventSourceResponse(produce, on_end=probes.on_end(name))  # type: ignore[arg-type]

    async def items(request: Request) -> Response:
        name = request.query_params["name"]
        count = int(request.query_params["n"])

        async def produce(send: StreamSender[object]) -> None:
            with probes.watching(name):
                for number in range(count):
                    await send({"n": number})

        return NDJSONResponse(produce, on_end=probes.on_end(name))  # type: ignore[arg-type]

    async def chunks(request: Request) -> Response:
        name = request.query_params["name"]
        count = int(request.query_params.get("n", "-1"))
        pace = float(request.query_params.get("pace", "0"))

        async def produce(send: StreamSender[bytes | str]) -> None:
            with probes.watching(name):
                sent = 0
                while sent != count:
                    await send(bytes([65 + sent % 26]) * CHUNK)
                    sent += 1
                    if pace:
                        await anyio.sleep(pace)

        return StreamResponse(
            produce,
            send_timeout=SEND_TIMEOUT,
            buffer_size=2,
            on_end=probes.on_end(name),  # type: ignore[arg-type]
        )

    return Starlette(
        routes=[Route("/ticks", ticks), Route("/items", items), Route("/chunks", chunks)]
    )


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[LiveServer, Probes]]:
    probes = Probes()
    with anyio.fail_after(20):
        async with open_server(make_app(probes)) as server:
            yield server, probes


async def test_hypercorn_answers_prior_knowledge_on_cleartext() -> None:
    async with serving() as (server, probes):
        async with open_h2_stream(server, "/ticks?name=a") as client:
            assert client.status == 200
            assert client.headers["content-type"].startswith("text/event-stream")
            assert client.headers["server"] == "hypercorn-h2"
            assert await client.read_event() == ServerSentEvent(data="0", id="0")
            assert await client.read_event() == ServerSentEvent(data="1", id="1")
        async with open_h2_stream(server, "/items?name=b&n=3") as client:
            assert [await client.read_item() for _ in range(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert await client.read_all() == b""
            assert client.complete
        await probes.wait_end("b", EndReason.COMPLETED)


async def test_reset_stream_ends_that_stream_alone() -> None:
    async with serving() as (server, probes), open_h2_connection(server) as connection:
        async with (
            connection.open_stream("/ticks?name=reset") as doomed,
            connection.open_stream("/ticks?name=kept") as kept,
        ):
            await doomed.read_event()
            await kept.read_event()
            reset_at = anyio.current_time()
            await doomed.reset_stream()
            end = await probes.wait_end("reset", EndReason.CLIENT_DISCONNECTED)
            assert "reset" in probes.cancelled
            assert probes.cleaned_up["reset"] - reset_at < CLEANUP_BOUND
            assert end.duration > 0
            with pytest.raises(RuntimeError, match="reset by this client"):
                await doomed.read_event()

            # The connection and its other stream go on.
            before = (await kept.read_event()).id
            assert (await kept.read_event()).id == str(int(before or 0) + 1)
            assert "kept" not in probes.ended
            assert await connection.ping() < CLEANUP_BOUND
            async with connection.open_stream("/items?name=new&n=2") as new:
                assert [await new.read_item() for _ in range(2)] == [{"n": 0}, {"n": 1}]
                assert await new.read_all() == b""
            await probes.wait_end("new", EndReason.COMPLETED)
        # Leaving the block with the stream open resets it, as a browser does.
        await probes.wait_end("kept", EndReason.CLIENT_DISCONNECTED)
        assert probes.cancelled == {"reset", "kept"}


async def test_flow_control_is_acknowledged_so_long_bodies_flow() -> None:
    count = 64  # 1 MiB: sixteen times the stream's flow-control window
    async with serving() as (server, probes):
        async with open_h2_stream(server, f"/chunks?name=long&n={count}") as client:
            body = await client.read_all()
        assert len(body) == count * CHUNK
        assert body[-1:] == bytes([65 + (count - 1) % 26])
        await probes.wait_end("long", EndReason.COMPLETED)


async def test_an_unread_stream_is_held_at_its_window_while_others_flow() -> None:
    async with serving() as (server, probes), open_h2_connection(server) as connection:
        async with (
            connection.open_stream("/chunks?name=stalled") as stalled,
            connection.open_stream("/ticks?name=flowing") as flowing,
        ):
            stalled.stall()
            # Reading the other stream drives the socket: only HTTP/2 flow control, that is
            # the client not acknowledging what it did not read, holds the stalled one back.
            for _ in range(20):
                await flowing.read_event()
            assert 0 < stalled.unread <= 65535, f"{stalled.unread} bytes for a 65535 window"
            assert await connection.ping() < CLEANUP_BOUND
            assert not probes.cancelled
        await probes.wait_end("stalled", EndReason.CLIENT_DISCONNECTED)


async def test_a_stalled_h2_stream_ends_with_send_timeout() -> None:
    async with serving() as (server, probes):
        # Paced, so that the unbounded buffering this test shows stays a few megabytes.
        async with open_h2_stream(server, "/chunks?name=stalled&pace=0.002") as stalled:
            stalled.stall()
            with anyio.move_on_after(SEND_TIMEOUT + CLEANUP_BOUND):
                await probes.event("stalled").wait()
            end_while_stalled = probes.ends.get("stalled")
    assert end_while_stalled is not None, "the stalled stream did not end"
    assert end_while_stalled.reason is EndReason.SEND_TIMEOUT


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_leaving_the_connection_ends_every_stream_on_it(leave: str) -> None:
    async with serving() as (server, probes), open_h2_connection(server) as connection:
        async with (
            connection.open_stream("/ticks?name=one") as one,
            connection.open_stream("/ticks?name=two") as two,
        ):
            await one.read_event()
            await two.read_event()
            await getattr(one, leave)()
            await probes.wait_end("one", EndReason.CLIENT_DISCONNECTED)
            await probes.wait_end("two", EndReason.CLIENT_DISCONNECTED)
    assert probes.cancelled == {"one", "two"}


@pytest.mark.parametrize("use", ["ping", "wait_goaway", "open_stream"])
async def test_a_connection_used_after_its_block_says_so(use: str) -> None:
    # It raised anyio's ClosedResourceError, or h2's ProtocolError, without a word of why.
    async with serving() as (server, _):
        async with open_h2_connection(server) as connection:
            await connection.ping()

        async def use_it() -> None:
            if use == "open_stream":
                async with connection.open_stream("/ticks?name=late"):
                    raise AssertionError("a stream opened")
            await getattr(connection, use)()

        with pytest.raises(
            RuntimeError, match=r"^this HTTP/2 connection was closed at the end of its block$"
        ):
            await use_it()


async def test_a_path_no_request_can_carry_is_refused_by_a_connection_which_serves_on() -> None:
    # The server answered "/ticks now" with a 404 and "/ticks\n" as "/ticks".
    async with serving() as (server, _), open_h2_connection(server) as connection:
        with pytest.raises(ValueError, match=r"path must .*, got '/ticks\\n'"):
            async with connection.open_stream("/ticks\n"):
                raise AssertionError("a stream opened")
        assert await connection.ping() < 5.0
