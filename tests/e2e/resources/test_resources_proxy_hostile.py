"""The proxy in front of an upstream that sends what no framework would (a hand-written
server: support/raw_upstream.py), on asyncio and trio, with and without resume: comments and
``retry``-only frames do not become events, and an id no downstream client could resume
from, or an event that never ends, ends the stream with an ``UpstreamError`` naming it, after
the events before it were forwarded.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import httpx
import httpx_sse
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.raw_upstream import (
    NO_CONTENT,
    compressed,
    event_stream,
    nested_bomb,
    open_raw_upstream,
)

from streamkit import EndReason, EventSourceResponse, ServerSentEvent, StreamEnd, StreamResponse
from streamkit.client import Backoff
from streamkit.resources import UpstreamError, upstream_bytes, upstream_events
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: An upstream's odd but valid frames: heartbeats after an id, a retry-only frame, an
#: invalid retry, an id-only frame.
ODD = b"id: 1\ndata: a\n\n: beat\n\n: beat\n\nretry: 50\n\nretry: -5\n\nid: 2\n\ndata: b\n\n"
#: Reconnect at once, give up soon: the upstream here never drops by accident.
EAGER = Backoff(initial_delay=0.01, jitter=0.0, max_attempts=2)


def proxy_app(url: str, **proxy: Any) -> Starlette:
    async def events(request: Request) -> Response:
        return EventSourceResponse(upstream_events(url, **proxy), heartbeat_interval=None)

    async def raw(request: Request) -> Response:
        return StreamResponse(upstream_bytes(url, **proxy))

    return Starlette(routes=[Route("/events", events), Route("/raw", raw)])


def once(body: bytes, encoding: str | None = None) -> Any:
    """The upstream's answer: *body* on the first connection, then the word to stop."""
    return lambda n: event_stream(body, encoding=encoding) if n == 0 else NO_CONTENT


async def forwarded(
    body: bytes, encoding: str | None = None, **proxy: Any
) -> tuple[list[ServerSentEvent], StreamEnd]:
    """What the downstream client received, and how the stream ended."""
    async with (
        open_raw_upstream(once(body, encoding)) as upstream,
        open_server(proxy_app(upstream.url, **proxy)) as proxy_server,
        open_stream(proxy_server, "/events") as client,
    ):
        with anyio.fail_after(10):
            events = [event async for event in client.events()]
        end = await proxy_server.wait_end()
    return events, end


async def test_each_frame_is_forwarded_as_it_came_and_heartbeats_are_not() -> None:
    events, end = await forwarded(ODD)
    assert events == [
        ServerSentEvent(data="a", id="1"),
        ServerSentEvent(retry=100),  # its 50 ms raised to Backoff.min_retry (below)
        ServerSentEvent(id="2"),
        ServerSentEvent(data="b"),
    ]
    assert end.reason is EndReason.COMPLETED


@pytest.mark.parametrize("resume", [False, True], ids=["forwarded", "resumed"])
async def test_an_upstream_retry_below_min_retry_is_raised_to_it(resume: bool) -> None:
    # A browser obeys a retry: 0 to the letter: it would reconnect the moment the stream
    # ends, and so start the upstream's work again, in a tight loop. The proxy sends on no
    # retry shorter than the one it would itself obey (its backoff's min_retry).
    # The last retry is short: a resuming proxy waits it out before its next connection.
    body = b"retry: 0\ndata: a\n\nretry: 7\n\nretry: 350\ndata: b\n\n"
    events, _ = await forwarded(body, resume=resume, backoff=EAGER)
    sent = [(event.data, event.retry) for event in events]
    if resume:  # only events, a retry-only frame applied to the upstream connection
        assert sent == [("a", 100), ("b", 350)]
    else:
        assert sent == [("a", 100), (None, 100), ("b", 350)]
    slower = Backoff(initial_delay=0.01, jitter=0.0, max_attempts=2, min_retry=0.25)
    events, _ = await forwarded(body, resume=resume, backoff=slower)
    assert [event.retry for event in events if event.data] == [250, 350]


async def test_a_transform_is_given_the_events_a_browser_dispatches() -> None:
    def transform(event: httpx_sse.ServerSentEvent) -> str:
        return f"{event.id}:{event.data}:{event.event}"

    for resume in (False, True):
        events, end = await forwarded(ODD, transform=transform, resume=resume, backoff=EAGER)
        assert [event.data for event in events] == ["1:a:message", "2:b:message"], resume
        assert end.reason is EndReason.COMPLETED


async def test_with_resume_only_events_are_forwarded_each_with_the_last_id() -> None:
    events, end = await forwarded(ODD, resume=True, backoff=EAGER)
    assert events == [ServerSentEvent(data="a", id="1"), ServerSentEvent(data="b", id="2")]
    assert end.reason is EndReason.COMPLETED


@pytest.mark.parametrize("resume", [False, True], ids=["forwarded", "resumed"])
@pytest.mark.parametrize(
    ("bad", "shown"),
    [(b"a\x01b", "'a\\x01b'"), (b" padded", "' padded'"), (b"x" * 1025, "'xxxxx")],
    ids=["a control character", "a space at an end", "too long"],
)
async def test_an_id_no_downstream_client_could_resume_from_ends_the_stream_naming_it(
    resume: bool, bad: bytes, shown: str
) -> None:
    body = b"id: 1\ndata: a\n\nid: " + bad + b"\ndata: b\n\n"
    events, end = await forwarded(body, resume=resume, backoff=EAGER)
    assert events == [ServerSentEvent(data="a", id="1"), ServerSentEvent(event="error", data="")]
    assert end.reason is EndReason.ERROR
    assert isinstance(end.exception, UpstreamError)
    assert "no downstream client could resume from" in str(end.exception)
    assert f"sent the event id {shown}" in str(end.exception)


@pytest.mark.parametrize("resume", [False, True], ids=["forwarded", "resumed"])
async def test_an_event_that_never_ends_ends_the_stream_after_those_before_it(
    resume: bool,
) -> None:
    body = b"data: a\n\ndata: " + b"x" * 5000
    events, end = await forwarded(body, resume=resume, backoff=EAGER, max_event_size=4096)
    assert events == [ServerSentEvent(data="a"), ServerSentEvent(event="error", data="")]
    assert end.reason is EndReason.ERROR
    assert isinstance(end.exception, UpstreamError)
    assert "grew past 4096 characters" in str(end.exception)


@pytest.mark.parametrize("resume", [False, True], ids=["forwarded", "resumed"])
async def test_a_compressed_upstream_is_forwarded_decoded(resume: bool) -> None:
    body = compressed(b"".join(b"id: %d\ndata: %d\n\n" % (n, n) for n in range(100)))
    events, end = await forwarded(body, "gzip", resume=resume, backoff=EAGER)
    assert events == [ServerSentEvent(data=str(n), id=str(n)) for n in range(100)]
    assert end.reason is EndReason.COMPLETED


@pytest.mark.parametrize("resume", [False, True], ids=["forwarded", "resumed"])
async def test_a_compression_bomb_ends_the_stream_having_decoded_little_past_the_bound(
    resume: bool,
) -> None:
    # 64 MiB of an event that never ends, in 64 KiB on the wire.
    body = compressed(b"data: a\n\ndata: ", b"x", 64)
    events, end = await forwarded(body, "gzip", resume=resume, backoff=EAGER, max_event_size=4096)
    assert events == [ServerSentEvent(data="a"), ServerSentEvent(event="error", data="")]
    assert isinstance(end.exception, UpstreamError)
    found = re.search(
        r"grew past 4096 characters without ending \((\d+) read\)", str(end.exception)
    )
    assert found is not None, end.exception
    assert int(found[1]) <= 4096 + 64 * 1024


async def test_compressed_bytes_are_forwarded_decoded() -> None:
    body = b"".join(b"line %d\n" % n for n in range(10_000))
    async with (
        open_raw_upstream(once(compressed(body), "gzip")) as upstream,
        open_server(proxy_app(upstream.url)) as proxy_server,
        open_stream(proxy_server, "/raw") as client,
    ):
        with anyio.fail_after(10):
            received = b""
            while (chunk := await client.receive_chunk()) is not None:
                received += chunk
        assert received == body
        assert (await proxy_server.wait_end()).reason is EndReason.COMPLETED


async def test_a_content_encoding_the_proxy_cannot_decode_ends_the_stream_naming_it() -> None:
    events, end = await forwarded(b"data: a\n\n", "br")
    assert events == [ServerSentEvent(event="error", data="")]
    assert isinstance(end.exception, UpstreamError)
    assert "Content-Encoding 'br'" in str(end.exception)


#: Generous: the upstream sees the downstream client leave in a few milliseconds.
RELEASE_BOUND = 1.0


@pytest.mark.parametrize("leave", ["close", "reset"])
@pytest.mark.parametrize("resume", [False, True], ids=["forwarded", "resumed"])
@pytest.mark.parametrize("waiting", ["for the headers", "for the body"])
async def test_the_client_leaving_closes_the_upstream_connection_at_once(
    waiting: str, resume: bool, leave: str
) -> None:
    # The upstream holds its connection open, silent: before its headers, or after an event.
    answer: list[bytes | float] = (
        [] if waiting == "for the headers" else [event_stream(b"data: a\n\n")]
    )
    async with (
        open_raw_upstream(lambda n: answer, hold=True) as upstream,
        open_server(proxy_app(upstream.url, resume=resume, backoff=EAGER)) as proxy_server,
        open_stream(proxy_server, "/events") as client,
    ):
        with anyio.fail_after(10):
            request = await upstream.wait_request(0)
            if waiting == "for the body":
                assert (await client.read_event()).data == "a"
        await getattr(client, leave)()
        await proxy_server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=RELEASE_BOUND)
        with anyio.fail_after(RELEASE_BOUND):
            await request.ended.wait()
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_the_client_leaving_during_the_wait_to_reconnect_ends_it_at_once(
    leave: str,
) -> None:
    slow = Backoff(initial_delay=60.0, max_delay=60.0, jitter=0.0)
    async with (
        open_raw_upstream(lambda n: event_stream(b"data: a\n\n")) as upstream,
        open_server(proxy_app(upstream.url, resume=True, backoff=slow)) as proxy_server,
        open_stream(proxy_server, "/events") as client,
    ):
        with anyio.fail_after(10):
            assert (await client.read_event()).data == "a"
            await upstream.requests[0].ended.wait()
        await getattr(client, leave)()
        await proxy_server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=RELEASE_BOUND)
    assert len(upstream.requests) == 1  # it never reconnected


@pytest.mark.parametrize("resume", [False, True], ids=["forwarded", "resumed"])
async def test_an_upstream_204_ends_the_stream_as_complete(resume: bool) -> None:
    # The WHATWG word to stop: nothing to send, not an error.
    async with (
        open_raw_upstream(lambda n: NO_CONTENT) as upstream,
        open_server(proxy_app(upstream.url, resume=resume, backoff=EAGER)) as proxy_server,
        open_stream(proxy_server, "/events") as client,
    ):
        with anyio.fail_after(10):
            events = [event async for event in client.events()]
        end = await proxy_server.wait_end()
    assert events == []
    assert end.reason is EndReason.COMPLETED, end.exception
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("route", "resume"),
    [("/events", False), ("/events", True), ("/raw", False)],
    ids=["events", "events resumed", "bytes"],
)
async def test_an_upstream_status_sent_without_a_reason_is_named_with_its_reason(
    route: str, resume: bool
) -> None:
    # Hypercorn, and every HTTP/2 server, send no reason phrase: the error said
    # "answered 503 , expected a 2xx status" where the client's own names the status.
    unavailable = b"HTTP/1.1 503 \r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    resumed: dict[str, Any] = {"resume": True, "backoff": EAGER} if resume else {}
    async with (
        open_raw_upstream(lambda n: unavailable) as upstream,
        open_server(proxy_app(upstream.url, **resumed)) as proxy_server,
        open_stream(proxy_server, route) as client,
    ):
        with anyio.fail_after(10):
            await client.read_all()
        end = await proxy_server.wait_end()
    assert end.reason is EndReason.ERROR
    assert isinstance(end.exception, UpstreamError)
    assert "answered 503 Service Unavailable, expected a 2xx status" in str(end.exception)


@pytest.mark.parametrize("route", ["/events", "/raw"])
async def test_a_password_in_the_upstreams_url_is_not_said_in_the_logged_error(
    route: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The stream's error is logged, with its message: the password would be in the logs.
    unavailable = b"HTTP/1.1 503 \r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    async with open_raw_upstream(lambda n: unavailable) as upstream:
        url = upstream.url.replace("http://", "http://proxy:s3cret@")
        async with (
            open_server(proxy_app(url)) as proxy_server,
            open_stream(proxy_server, route) as client,
        ):
            with anyio.fail_after(10):
                await client.read_all()
            end = await proxy_server.wait_end()
    assert end.reason is EndReason.ERROR
    assert "proxy:[secure]@127.0.0.1" in str(end.exception)
    assert "s3cret" not in caplog.text


async def test_an_upstream_trickling_an_endless_event_is_ended_by_max_duration() -> None:
    # A byte every 50 ms, well within read_timeout, of an event that never ends: each wait
    # is bounded, not the whole; the response's max_duration is.
    byte: list[bytes | float] = [0.05, b"x"]
    trickle = [event_stream(b"data: "), *byte * 400]

    async def events(request: Request) -> Response:
        return EventSourceResponse(
            upstream_events(upstream.url, read_timeout=0.3), max_duration=1.0
        )

    app = Starlette(routes=[Route("/events", events)])
    async with (
        open_raw_upstream(lambda n: trickle) as upstream,
        open_server(app) as proxy_server,
        open_stream(proxy_server, "/events") as client,
    ):
        with anyio.fail_after(10):
            request = await upstream.wait_request(0)
            end = await proxy_server.wait_end()
            await request.ended.wait()
        assert end.reason is EndReason.DEADLINE
        assert end.duration >= 1.0
        assert [event async for event in client.events()] == []


@pytest.mark.parametrize("resume", [False, True], ids=["forwarded", "resumed"])
async def test_the_client_leaving_during_a_nested_compression_bomb_releases_the_upstream(
    resume: bool,
) -> None:
    # 64 GiB of blank lines in 100 KiB, which the proxy forwards as nothing: decoded without
    # a checkpoint, it held the server's loop for minutes, the client's leaving unheard.
    body = nested_bomb(b"\n", 64)
    async with (
        open_raw_upstream(
            lambda n: event_stream(body, encoding="gzip, gzip"), hold=True
        ) as upstream,
        open_server(proxy_app(upstream.url, resume=resume, backoff=EAGER)) as proxy_server,
        open_stream(proxy_server, "/events") as client,
    ):
        with anyio.fail_after(10):
            request = await upstream.wait_request(0)
        await client.close()
        await proxy_server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=RELEASE_BOUND)
        with anyio.fail_after(RELEASE_BOUND):
            await request.ended.wait()


@pytest.mark.parametrize("route", ["events", "resumed", "raw"])
async def test_a_url_is_sent_as_the_given_client_would_send_it(route: str) -> None:
    # A client made with headers (the upstream's token) and a base_url: the proxy's URL is
    # the client's, as client.stream("GET", url) would send it.
    async with open_raw_upstream(once(b"data: a\n\n")) as upstream:
        async with httpx.AsyncClient(
            base_url=upstream.url, headers={"authorization": "Bearer t"}
        ) as http:
            proxy: dict[str, Any] = {"client": http}
            if route == "resumed":
                proxy |= {"resume": True, "backoff": EAGER}
            app = proxy_app("/upstream", **proxy)
            async with (
                open_server(app) as proxy_server,
                open_stream(proxy_server, "/raw" if route == "raw" else "/events") as client,
            ):
                with anyio.fail_after(10):
                    if route == "raw":
                        assert await client.read_all() == b"data: a\n\n"
                    else:
                        assert [event.data async for event in client.events()] == ["a"]
    assert upstream.requests
    for request in upstream.requests:
        assert request.headers[b"authorization"] == b"Bearer t"
        accept = b"*/*" if route == "raw" else b"text/event-stream"
        assert request.headers[b"accept"] == accept
