"""An App's shutdown through real hypercorn, on asyncio and trio: open streams drain with their
farewell, a stalled client cannot hold the shutdown past the grace period, and the App's
background work is cancelled after the streams drained and awaited before the user's lifespan
exits.

Bounds are generous (a loaded 2-core machine); the real figures are in the report.
"""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import pytest
from starlette.requests import Request
from support.ndjson_items import remaining_items

from streamkit import (
    App,
    EndReason,
    ServeError,
    ServerSentEvent,
    StreamEnd,
    StreamSender,
    serve,
    shielded_cleanup,
)
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

GRACE = 5.0


class Timeline:
    """When each thing happened during the shutdown."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.streams_cleaned: list[float] = []
        self.ends: list[StreamEnd] = []
        self.task_started = anyio.Event()

    def mark(self, what: str) -> None:
        self.at[what] = anyio.current_time()


def service(timeline: Timeline) -> App:
    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        async def refresh_forever() -> None:
            timeline.task_started.set()
            try:
                await anyio.sleep_forever()
            finally:
                timeline.mark("task cancelled")
                with shielded_cleanup(1.0):
                    await anyio.sleep(0.01)  # closing its client, say
                    timeline.mark("task cleaned up")

        app.task_group.start_soon(refresh_forever)
        yield
        timeline.mark("user lifespan exited")

    app = App(lifespan=lifespan, grace_period=GRACE)

    async def stream_cleanup() -> None:
        await anyio.sleep(0.001)
        timeline.streams_cleaned.append(anyio.current_time())

    @app.sse("/tokens", on_end=timeline.ends.append)
    async def tokens(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
        send.push_async_callback(stream_cleanup)
        n = 0
        while True:
            await send(ServerSentEvent(data=str(n), id=str(n)))
            n += 1
            await anyio.sleep(0.01)

    @app.ndjson("/feed", shutdown_item={"shutdown": True}, on_end=timeline.ends.append)
    async def feed(request: Request) -> AsyncIterator[dict[str, int]]:
        try:
            n = 0
            while True:
                yield {"n": n}
                n += 1
                await anyio.sleep(0.01)
        finally:
            with shielded_cleanup(1.0):
                await stream_cleanup()

    @app.stream("/flood", send_timeout=0.5, buffer_size=4, on_end=timeline.ends.append)
    async def flood(request: Request, send: StreamSender[bytes]) -> None:
        send.push_async_callback(stream_cleanup)
        while True:
            await send(b"x" * 65536)

    return app


async def rest_of(client: Any, kind: str) -> list[Any]:
    with anyio.fail_after(GRACE):
        if kind == "sse":
            return [event async for event in client.events()]
        return await remaining_items(client)


async def test_shutdown_drains_open_streams_then_cancels_the_apps_background_work() -> None:
    timeline = Timeline()
    app = service(timeline)
    async with open_server(app, grace_period=GRACE) as server:
        with anyio.fail_after(5):
            await timeline.task_started.wait()
        async with (
            open_stream(server, "/tokens") as first,
            open_stream(server, "/tokens") as second,
            open_stream(server, "/feed") as feed,
        ):
            await first.read_event()
            await second.read_event()
            await feed.read_item()
            assert app.statistics().active.keys() == {"/tokens", "/feed", "/flood"}
            assert sum(len(streams) for streams in app.statistics().active.values()) == 3
            timeline.mark("shutdown")
            took = await server.shutdown(within=GRACE + 5)
            farewells = [(await rest_of(client, "sse"))[-1] for client in (first, second)]
            last_item = (await rest_of(feed, "ndjson"))[-1]

    assert took < GRACE  # measured: a few ms
    for event in farewells:
        assert (event.event, event.retry) == ("shutdown", 1000)
    assert last_item == {"shutdown": True}
    assert [end.reason for end in timeline.ends] == [EndReason.SHUTDOWN] * 3
    assert len(timeline.streams_cleaned) == 3
    # Streams first (their cleanup done), then the background task, then the user's lifespan.
    assert max(timeline.streams_cleaned) <= timeline.at["task cancelled"]
    assert timeline.at["task cleaned up"] <= timeline.at["user lifespan exited"]
    assert timeline.at["user lifespan exited"] - timeline.at["shutdown"] < GRACE
    assert app.statistics().ended["/tokens"][EndReason.SHUTDOWN] == 2


async def test_a_stalled_client_does_not_hold_the_shutdown_past_the_grace_period() -> None:
    timeline = Timeline()
    app = service(timeline)
    async with open_server(app, grace_period=GRACE, stalled_connection_timeout=2.0) as server:
        async with (
            open_stream(server, "/flood", receive_buffer=4096) as stalled,
            open_stream(server, "/tokens") as reader,
        ):
            await stalled.receive_chunk()  # and never again: its writes back up
            await reader.read_event()
            timeline.mark("shutdown")
            took = await server.shutdown(within=GRACE + 5)
            farewell = (await rest_of(reader, "sse"))[-1]

    assert took < GRACE  # measured: about 0.5 s (the route's send_timeout) to 2 s
    assert (farewell.event, farewell.retry) == ("shutdown", 1000)
    reasons = {end.path: end.reason for end in timeline.ends}
    assert reasons == {"/flood": EndReason.SHUTDOWN, "/tokens": EndReason.SHUTDOWN}
    assert len(timeline.streams_cleaned) == 2
    assert timeline.at["task cleaned up"] <= timeline.at["user lifespan exited"]
    assert timeline.at["user lifespan exited"] - timeline.at["shutdown"] < GRACE


async def test_a_users_lifespan_that_fails_at_shutdown_makes_serve_fail_naming_it() -> None:
    # On trio hypercorn's own report of the failure was cancelled as the lifespan ended, and
    # serve returned as after a clean shutdown, with nothing logged.
    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        yield
        raise RuntimeError("the pool closed twice")

    serving = anyio.Event()
    with anyio.fail_after(GRACE + 5), pytest.raises(ServeError) as info:
        # Stopped as soon as it serves: the lifespan starts, then shuts down.
        await serve(
            App(lifespan=lifespan),
            bind="127.0.0.1:0",
            shutdown_trigger=serving.wait,
            on_serving=lambda where: serving.set(),
        )
    # Raised as itself on both backends (on asyncio it was hypercorn's own error, in an
    # exception group), the app's traceback in its message.
    assert str(info.value).startswith("the app's lifespan failed at shutdown:\n")
    assert "RuntimeError: the pool closed twice" in str(info.value)


async def test_a_users_lifespan_that_fails_at_startup_makes_serve_fail_naming_it() -> None:
    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        raise RuntimeError("database unreachable")
        yield

    app = App(lifespan=lifespan)
    with anyio.fail_after(GRACE + 5), pytest.raises(ServeError) as info:
        await serve(app, bind="127.0.0.1:0", shutdown_trigger=anyio.sleep_forever)
    assert str(info.value).startswith("the app's lifespan failed at startup:\n")
    assert "RuntimeError: database unreachable" in str(info.value)


async def test_a_task_that_fails_while_serving_stops_the_server_gracefully_and_is_raised() -> None:
    # It ended the App's lifespan under a running server: on asyncio the server served on with
    # the user's lifespan closed and nothing logged; on trio it crashed, its streams cut.
    fail = anyio.Event()
    exited: list[str] = []

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        async def refresh_forever() -> None:
            await fail.wait()
            raise RuntimeError("the refresher's upstream is gone")

        app.task_group.start_soon(refresh_forever)
        yield
        exited.append("user lifespan")

    app = App(lifespan=lifespan, grace_period=GRACE)

    @app.sse("/tokens")
    async def tokens(request: Request, send: StreamSender[str]) -> None:
        await send("ready")
        await anyio.sleep_forever()

    async def serve_until_the_task_fails() -> None:
        async with anyio.create_task_group() as task_group:
            address = await task_group.start(partial(serve, app, bind="127.0.0.1:0"))
            async with open_stream(address, "/tokens") as client:
                assert (await client.read_event()).data == "ready"
                fail.set()
                events = [event async for event in client.events()]
            assert client.complete
            assert events[-1].event == "shutdown"

    with anyio.fail_after(GRACE + 5), pytest.raises(BaseException) as info:  # noqa: PT011
        await serve_until_the_task_fails()
    text = "".join(traceback.format_exception(info.value))
    assert "RuntimeError: the refresher's upstream is gone" in text
    assert "Cancelled" not in text, text
    assert "TimeoutError" not in text, text
    assert exited == ["user lifespan"]
