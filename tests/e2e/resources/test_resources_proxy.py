"""The upstream proxy against a real upstream: a second hypercorn server in the test.

The release on each of the five endings is in test_resources_endings.py; here: what is
forwarded, the bytes mode, upstream failures, the bounded read, a shared client.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import httpx_sse
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from streamkit import EndReason, EventSourceResponse, ServerSentEvent, StreamResponse, StreamSender
from streamkit.resources import UpstreamError, upstream_bytes, upstream_events
from streamkit.testing import LiveServer, open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: Generous: the upstream sees the downstream client leave in 1 to 10 ms (measured).
RELEASE_BOUND = 1.0


def upstream_app() -> Starlette:
    async def finite(request: Request) -> Response:
        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            await send(ServerSentEvent(data="hello", event="greeting", id="1"))
            await send(ServerSentEvent(data="two\nlines", id="2", retry=500))
            await send("[DONE]")

        return EventSourceResponse(produce)

    async def endless(request: Request) -> Response:
        async def produce(send: StreamSender[bytes]) -> None:
            n = 0
            while True:
                await send(f"chunk {n}\n".encode())
                n += 1
                await anyio.sleep(0.005)

        return StreamResponse(produce)

    async def silent(request: Request) -> Response:
        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            await send("first")
            await anyio.sleep_forever()

        return EventSourceResponse(produce, heartbeat_interval=None)

    async def missing(request: Request) -> Response:
        return PlainTextResponse("no such model", status_code=404)

    async def plain(request: Request) -> Response:
        return PlainTextResponse("not an event stream")

    async def echo(request: Request) -> Response:
        body = await request.body()

        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            await send(ServerSentEvent(data=body.decode(), event=request.method.lower()))

        return EventSourceResponse(produce)

    return Starlette(
        routes=[
            Route("/finite", finite),
            Route("/endless", endless),
            Route("/silent", silent),
            Route("/missing", missing),
            Route("/plain", plain),
            Route("/echo", echo, methods=["POST"]),
        ]
    )


def proxy_app(upstream: LiveServer | str, **proxy: Any) -> Starlette:
    base = upstream if isinstance(upstream, str) else upstream.url

    async def events(request: Request) -> Response:
        target = f"{base}/{request.path_params['name']}"
        return EventSourceResponse(upstream_events(target, **proxy))

    async def raw(request: Request) -> Response:
        target = f"{base}/{request.path_params['name']}"
        return StreamResponse(upstream_bytes(target, **proxy))

    async def post(request: Request) -> Response:
        upstream_request = httpx.Request("POST", f"{base}/echo", json={"q": "why"})
        return EventSourceResponse(upstream_events(upstream_request))

    return Starlette(
        routes=[
            Route("/events/{name}", events),
            Route("/raw/{name}", raw),
            Route("/post", post),
        ]
    )


async def test_events_are_forwarded_as_the_browser_would_see_them() -> None:
    async with open_server(upstream_app()) as upstream, open_server(proxy_app(upstream)) as proxy:
        async with open_stream(proxy, "/events/finite") as client:
            events = [event async for event in client.events()]
        assert events == [
            ServerSentEvent(data="hello", event="greeting", id="1"),
            ServerSentEvent(data="two\nlines", id="2", retry=500),
            # Each frame as it came: the browser keeps the last id in effect itself.
            ServerSentEvent(data="[DONE]"),
        ]
        await proxy.wait_ended(EndReason.COMPLETED)
        await upstream.wait_ended(EndReason.COMPLETED)


async def test_transform_maps_and_drops_events() -> None:
    def transform(event: httpx_sse.ServerSentEvent) -> str | None:
        return None if event.data == "[DONE]" else event.data.upper()

    async with open_server(upstream_app()) as upstream:
        async with open_server(proxy_app(upstream, transform=transform)) as proxy:
            async with open_stream(proxy, "/events/finite") as client:
                data = [event.data async for event in client.events()]
            assert data == ["HELLO", "TWO\nLINES"]


async def test_a_request_with_a_body_is_sent_as_given() -> None:
    async with open_server(upstream_app()) as upstream, open_server(proxy_app(upstream)) as proxy:
        async with open_stream(proxy, "/post") as client:
            event = await client.read_event()
        assert event == ServerSentEvent(data='{"q":"why"}', event="post")


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_bytes_are_forwarded_and_the_upstream_released(leave: str) -> None:
    async with open_server(upstream_app()) as upstream, open_server(proxy_app(upstream)) as proxy:
        async with open_stream(proxy, "/raw/endless") as client:
            received = b""
            while received.count(b"\n") < 3:
                chunk = await client.receive_chunk()
                assert chunk is not None
                received += chunk
            assert received.startswith(b"chunk 0\nchunk 1\nchunk 2\n")
            left_at = anyio.current_time()
            await getattr(client, leave)()
            await proxy.wait_ended(EndReason.CLIENT_DISCONNECTED)
            await upstream.wait_ended(EndReason.CLIENT_DISCONNECTED, within=RELEASE_BOUND)
            assert anyio.current_time() - left_at < RELEASE_BOUND


@pytest.mark.parametrize(("name", "status"), [("missing", "404"), ("plain", "'text/plain")])
async def test_an_upstream_that_cannot_be_forwarded_ends_the_stream_with_an_error(
    name: str, status: str
) -> None:
    async with open_server(upstream_app()) as upstream, open_server(proxy_app(upstream)) as proxy:
        async with open_stream(proxy, f"/events/{name}") as client:
            events = [event async for event in client.events()]
        assert events == [ServerSentEvent(event="error", data="")]
        end = await proxy.wait_ended(EndReason.ERROR)
        assert isinstance(end.exception, UpstreamError)
        assert status in str(end.exception)
        assert f"/{name}" in end.exception.url


async def test_a_silent_upstream_ends_the_stream_after_read_timeout() -> None:
    async with open_server(upstream_app()) as upstream:
        async with open_server(proxy_app(upstream, read_timeout=0.3)) as proxy:
            async with open_stream(proxy, "/events/silent") as client:
                assert (await client.read_event()).data == "first"
                waiting_since = anyio.current_time()
                end = await proxy.wait_ended(EndReason.ERROR, within=5.0)
                waited = anyio.current_time() - waiting_since
            assert isinstance(end.exception, httpx.ReadTimeout)
            assert 0.2 < waited < 0.3 + RELEASE_BOUND
            await upstream.wait_ended(EndReason.CLIENT_DISCONNECTED, within=RELEASE_BOUND)


async def test_an_unreachable_upstream_ends_the_stream_with_an_error() -> None:
    async with open_server(upstream_app()) as upstream:
        gone = upstream.url
    # The upstream has shut down: its port refuses connections.
    async with open_server(proxy_app(gone, connect_timeout=1.0)) as proxy:
        async with open_stream(proxy, "/events/finite") as client:
            events = [event async for event in client.events()]
        assert events == [ServerSentEvent(event="error", data="")]
        end = await proxy.wait_ended(EndReason.ERROR)
        assert isinstance(end.exception, httpx.ConnectError)


async def test_a_shared_client_stays_open_and_the_upstream_is_still_released() -> None:
    async with httpx.AsyncClient() as shared, open_server(upstream_app()) as upstream:
        async with open_server(proxy_app(upstream, client=shared)) as proxy:
            for _ in range(2):
                async with open_stream(proxy, "/raw/endless") as client:
                    assert await client.receive_chunk()
                    await client.close()
                await proxy.wait_ended(EndReason.CLIENT_DISCONNECTED)
                # An unfinished response is not returned to the pool: its connection closes.
                await upstream.wait_ended(EndReason.CLIENT_DISCONNECTED, within=RELEASE_BOUND)
            assert not shared.is_closed
