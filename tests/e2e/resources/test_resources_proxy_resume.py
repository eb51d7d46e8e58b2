"""``upstream_events(..., resume=True)`` against a real upstream: the upstream connection
ends (closed, or silent past ``read_timeout``) every few events and the proxy reconnects with
the last id, so the downstream client reads one unbroken stream; the downstream client
leaving still releases the upstream within milliseconds, also while the proxy waits to
reconnect.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.counting import Attempts, make_app

from streamkit import (
    EndReason,
    EventSourceResponse,
    ServerSentEvent,
    StreamSender,
    last_event_id,
)
from streamkit.client import Backoff
from streamkit.resources import upstream_events
from streamkit.testing import LiveServer, open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: Generous: the upstream sees the downstream client leave in 1 to 10 ms (measured).
RELEASE_BOUND = 1.0


def proxy_app(upstream: LiveServer, **proxy: Any) -> Starlette:
    async def events(request: Request) -> Response:
        return EventSourceResponse(upstream_events(f"{upstream.url}/count", resume=True, **proxy))

    return Starlette(routes=[Route("/events", events)])


@pytest.mark.parametrize("drop", ["closed", "silent"])
async def test_the_upstream_dropping_is_invisible_downstream_and_leaving_releases_it(
    drop: str,
) -> None:
    attempts = Attempts()
    if drop == "closed":
        upstream_app = make_app(per_connection=5, interval=0.002, attempts=attempts)
        read_timeout = 10.0
    else:
        upstream_app = make_app(stall_after=5, attempts=attempts)
        read_timeout = 0.3
    eager = Backoff(initial_delay=0.01, jitter=0.0, max_attempts=5)
    async with (
        open_server(upstream_app) as upstream,
        open_server(proxy_app(upstream, read_timeout=read_timeout, backoff=eager)) as proxy,
    ):
        async with open_stream(proxy, "/events") as client:
            with anyio.fail_after(20):
                events = [await client.read_event() for _ in range(17)]
            assert [(e.id, e.data, e.event) for e in events] == [
                (str(n), str(n), None) for n in range(1, 18)
            ]
            assert attempts.last_ids[:4] == [None, "5", "10", "15"]
            assert proxy.streams.statistics().active == 1
            left_at = anyio.current_time()
            await client.close()
            await proxy.wait_ended(EndReason.CLIENT_DISCONNECTED, within=RELEASE_BOUND)
            with anyio.fail_after(RELEASE_BOUND):
                await upstream.streams.wait_idle()
            released = anyio.current_time() - left_at
        assert upstream.streams.recent_ends()[-1].reason is EndReason.CLIENT_DISCONNECTED
        assert released < RELEASE_BOUND


async def test_leaving_while_the_proxy_waits_to_reconnect_ends_at_once() -> None:
    attempts = Attempts()
    upstream_app = make_app(per_connection=2, attempts=attempts)
    slow = Backoff(initial_delay=60.0, max_delay=60.0)
    async with (
        open_server(upstream_app) as upstream,
        open_server(proxy_app(upstream, backoff=slow)) as proxy,
    ):
        async with open_stream(proxy, "/events") as client:
            with anyio.fail_after(10):
                assert [(await client.read_event()).data for _ in range(2)] == ["1", "2"]
                await upstream.wait_ended(EndReason.COMPLETED)
            left_at = anyio.current_time()
            await client.close()
            await proxy.wait_ended(EndReason.CLIENT_DISCONNECTED, within=RELEASE_BOUND)
            assert anyio.current_time() - left_at < RELEASE_BOUND
        assert attempts.last_ids == [None]  # it never reconnected


async def test_the_downstream_last_event_id_resumes_the_first_upstream_connection() -> None:
    attempts = Attempts()
    async with open_server(make_app(end=9, attempts=attempts)) as upstream:

        async def events(request: Request) -> Response:
            import httpx

            forwarded = httpx.Request(
                "GET",
                f"{upstream.url}/count",
                headers={"last-event-id": request.headers.get("last-event-id", "")},
            )
            return EventSourceResponse(upstream_events(forwarded, resume=True))

        app = Starlette(routes=[Route("/events", events)])
        async with open_server(app) as proxy:
            async with open_stream(proxy, "/events", headers={"last-event-id": "6"}) as client:
                with anyio.fail_after(10):
                    data = [event.data async for event in client.events()]
    assert data == ["7", "8", "9"]
    assert attempts.last_ids == ["6", "9"]  # the second was answered 204: the end


#: What a downstream client sends as its Last-Event-ID, and what the upstream is asked to
#: resume after: a browser's id as it sent it (UTF-8: an id the proxy forwarded may be
#: beyond ASCII), one that no id could be not at all.
DOWNSTREAM_IDS = {
    "ascii": (b"6", "6"),
    "utf-8": ("\u00e9-6".encode(), "\u00e9-6"),
    "control character": (b"a\x01b", None),
    "not utf-8": (b"\xff", None),
}


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "once"])
@pytest.mark.parametrize("sent", DOWNSTREAM_IDS.values(), ids=list(DOWNSTREAM_IDS))
async def test_a_downstream_last_event_id_is_forwarded_as_the_browser_sent_it_or_not_at_all(
    sent: tuple[bytes, str | None], resume: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The pattern the docs show: the proxy forwards the id streamkit reads from its client.
    # Built into the upstream request's headers instead, a UTF-8 id was a 500 (httpx encodes
    # a str header as ASCII) and one holding a control character the stream's error.
    header, expected = sent
    seen: list[str | None] = []

    async def numbered(request: Request) -> Response:
        resumed = last_event_id(request.headers)
        seen.append(resumed)
        if resumed == "end":
            return Response(status_code=204)

        async def produce(send: StreamSender[ServerSentEvent]) -> None:
            await send(ServerSentEvent(data=str(resumed), id="end"))

        return EventSourceResponse(produce, heartbeat_interval=None)

    async def events(request: Request) -> Response:
        return EventSourceResponse(
            upstream_events(
                shared,  # one request for every client, as a module might hold it
                resume=resume,
                backoff=Backoff(initial_delay=0.01, jitter=0.0),
                last_event_id=last_event_id(request.headers),
            )
        )

    async with (
        open_server(Starlette(routes=[Route("/numbered", numbered)])) as upstream,
        open_server(Starlette(routes=[Route("/events", events)])) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as http,
    ):
        shared = httpx.Request("GET", f"{upstream.url}/numbered")
        with anyio.fail_after(10):
            response = await http.get("/events", headers=[(b"last-event-id", header)])
            await proxy.wait_ended(EndReason.COMPLETED)
            # The next client, which sent none, resumes from nothing of the first's.
            assert "data: None\n" in (await http.get("/events")).text
            await proxy.wait_ended(EndReason.COMPLETED)
    assert response.status_code == 200
    assert f"data: {expected}\n" in response.text
    assert seen == ([expected, "end", None, "end"] if resume else [expected, None])
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
