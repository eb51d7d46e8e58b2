"""Graceful shutdown through real hypercorn: streams drain before the server stops."""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import pytest
import sniffio
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp
from support.ndjson_items import remaining_items

from streamkit import (
    App,
    EndReason,
    EventSourceResponse,
    NDJSONResponse,
    ServerSentEvent,
    StreamEnd,
    StreamRegistry,
    StreamSender,
    graceful_shutdown_trigger,
)
from streamkit._registry import registry
from streamkit._serve import _RegisteringApp, bind_socket
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

GRACE = 3.0


class Resource:
    def __init__(self) -> None:
        self.closed = anyio.Event()

    async def close(self) -> None:
        await anyio.sleep(0.01)
        self.closed.set()


def streaming_app(
    resource: Resource, after: list[EndReason], *, size: int = 8, **options: Any
) -> Starlette:
    async def produce(send: StreamSender[Any]) -> None:
        send.push_async_callback(resource.close)
        n = 0
        while True:
            await send(ServerSentEvent(data="x" * size, id=str(n)))
            n += 1
            await anyio.sleep(0.01)

    async def sse(request: Request) -> Response:
        ends: list[EndReason] = []

        async def record() -> None:
            after.extend(ends)

        return EventSourceResponse(
            produce,
            on_end=lambda end: ends.append(end.reason),
            background=BackgroundTask(record),
            **options,
        )

    async def rows(request: Request) -> Response:
        async def gen() -> Any:
            while True:
                yield {"row": 1}
                await anyio.sleep(0.01)

        return NDJSONResponse(gen(), shutdown_item={"shutdown": True})

    return Starlette(routes=[Route("/sse", sse), Route("/rows", rows)])


async def test_shutdown_drains_streams_with_a_farewell_and_completes_cleanup() -> None:
    resource, after = Resource(), list[EndReason]()
    async with open_server(streaming_app(resource, after), grace_period=GRACE) as server:
        async with open_stream(server, "/sse") as sse, open_stream(server, "/rows") as rows:
            await sse.read_event()
            await rows.read_item()
            took = await server.shutdown(within=GRACE + 2)
            events = [event async for event in sse.events()]
            items = await remaining_items(rows)
    assert took < GRACE
    assert sse.complete, "drained streams end their bodies properly"
    assert rows.complete
    assert events[-1] == ServerSentEvent(event="shutdown", data="", retry=1000)
    assert items[-1] == {"shutdown": True}
    assert resource.closed.is_set()
    assert after == [EndReason.SHUTDOWN]
    reasons = {end.reason for end in server.streams.recent_ends()}
    assert reasons == {EndReason.SHUTDOWN}


async def test_shutdown_with_a_stalled_client_still_ends_within_the_grace_period() -> None:
    resource, after = Resource(), list[EndReason]()
    app = streaming_app(resource, after, size=65536, send_timeout=0.5)
    async with open_server(app, grace_period=GRACE, stalled_connection_timeout=1.0) as server:
        async with open_stream(server, "/sse", receive_buffer=4096) as client:
            await client.receive_chunk()
            took = await server.shutdown(within=GRACE + 2)
            with anyio.fail_after(1):
                await resource.closed.wait()
    assert took < GRACE
    (end,) = server.streams.recent_ends()
    assert end.reason is EndReason.SHUTDOWN


async def test_the_farewell_is_written_once_the_streams_cleanup_is_done() -> None:
    # What the docs say of the order: the cleanup runs first, then the farewell is written,
    # so a slow cleanup delays it (here, until cleanup_timeout cuts the cleanup short).
    cleanup_ended = anyio.Event()

    async def stuck_cleanup() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cleanup_ended.set()

    async def produce(send: StreamSender[Any]) -> None:
        send.push_async_callback(stuck_cleanup)
        await send("started")
        await anyio.sleep_forever()

    async def stream(request: Request) -> Response:
        return EventSourceResponse(produce, cleanup_timeout=0.3)

    app = Starlette(routes=[Route("/sse", stream)])
    async with open_server(app, grace_period=GRACE) as server:
        async with open_stream(server, "/sse") as client:
            await client.read_event()
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(partial(server.shutdown, within=GRACE + 2))
                with anyio.fail_after(GRACE):
                    farewell = await client.read_event()
                assert cleanup_ended.is_set()
    assert farewell == ServerSentEvent(event="shutdown", data="", retry=1000)


async def test_a_stream_that_starts_during_the_drain_gets_the_farewell_at_once() -> None:
    release = anyio.Event()

    async def slow_cleanup(send: StreamSender[Any]) -> None:
        send.push_async_callback(release.wait)  # holds the drain open until released
        await send("started")
        await anyio.sleep_forever()

    async def hold(request: Request) -> Response:
        return EventSourceResponse(slow_cleanup, cleanup_timeout=GRACE)

    app = streaming_app(Resource(), [])
    app.router.routes.append(Route("/hold", hold))
    async with open_server(app, grace_period=GRACE) as server, anyio.create_task_group() as tg:
        async with open_stream(server, "/hold") as held:
            await held.read_event()
            tg.start_soon(server.shutdown)
            with anyio.fail_after(2):
                while not server.streams.statistics().draining:
                    await server.streams.wait_changed()
            async with open_stream(server, "/sse") as late:
                events = [event async for event in late.events()]
            release.set()
    assert events == [ServerSentEvent(event="shutdown", data="", retry=1000)]
    assert late.complete


async def test_graceful_shutdown_trigger_drains_before_hypercorn_stops() -> None:
    """For users who call hypercorn's serve() themselves."""
    resource, after = Resource(), list[EndReason]()
    streams = StreamRegistry(parent=registry)
    stop = anyio.Event()
    sock = bind_socket("127.0.0.1:0", stalled_connection_timeout=1.0)
    host, port = sock.getsockname()
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.graceful_timeout = GRACE
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve  # type: ignore[assignment]
    trigger = graceful_shutdown_trigger(stop.wait, grace_period=GRACE, streams=streams)
    app: Any = _RegisteringApp(streaming_app(resource, after), streams)

    class Address:
        pass

    address = Address()
    address.host, address.port = host, port  # type: ignore[attr-defined]
    with anyio.fail_after(GRACE + 2):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(partial(serve, app, config, shutdown_trigger=trigger))
            async with open_stream(address, "/sse") as client:
                await client.read_event()
                stop.set()
                events = [event async for event in client.events()]
    assert events[-1].event == "shutdown"
    assert client.complete
    assert resource.closed.is_set()


#: How long the stubborn producer below keeps its shield up: past the grace period it is given.
SHIELDED = 2.0


@pytest.mark.parametrize("served_by", ["response", "App"])
async def test_a_producer_that_shields_itself_from_the_shutdown_is_reported_naming_it(
    caplog: pytest.LogCaptureFixture, served_by: str
) -> None:
    # On asyncio hypercorn cancelled it through its shield at the end of the grace period,
    # and nothing said it had refused the stream's cancellation; on trio nothing did either
    # until cleanup_timeout (5 s) had passed.
    ends: list[StreamEnd] = []

    async def stubborn(send: StreamSender[str]) -> None:
        await send("open")
        with anyio.CancelScope(shield=True):
            await anyio.sleep(SHIELDED)

    def stream(request: Request) -> Response:
        return EventSourceResponse(stubborn, on_end=ends.append)

    grace = 0.5
    app: ASGIApp = Starlette(routes=[Route("/stubborn", stream)])
    if served_by == "App":
        # Its route hands the producer its request through a partial, whose repr named the
        # request too.
        app = App(grace_period=grace)

        @app.sse("/stubborn", on_end=ends.append)
        async def route(request: Request, send: StreamSender[str]) -> None:
            await stubborn(send)

    with anyio.fail_after(SHIELDED + 10):
        async with open_server(app, grace_period=grace) as server:
            async with open_stream(server, "/stubborn") as client:
                assert (await client.read_event()).data == "open"
                took = await server.shutdown(within=SHIELDED + 5)
    refusals = [r.getMessage() for r in caplog.records if "refuses cancellation" in r.getMessage()]
    assert len(refusals) == 1, caplog.text
    assert "stream /stubborn: producer " in refusals[0], refusals
    named = "route" if served_by == "App" else "stubborn"
    assert f".{named} refuses cancellation: " in refusals[0], refusals
    assert "end of the server's grace period" in refusals[0], refusals
    assert [end.reason for end in ends] == [EndReason.SHUTDOWN]
    if sniffio.current_async_library() == "asyncio":
        # Cut at the end of the grace period: hypercorn's asyncio cancellation goes through a
        # shield. (A trio task is never left behind, shielded or not: the server waits for it.)
        assert took < SHIELDED
