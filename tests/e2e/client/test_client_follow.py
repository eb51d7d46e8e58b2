"""The client against real servers in the test's process, on asyncio and trio: it resumes
where a connection ended, stops on 204, refuses what is not a stream, leaves a stalled
server after its read timeout, waits a 503's or a 429's Retry-After, and closes at once when
cancelled.

The server restarted mid-stream, and a client moved between two instances sharing Redis, are
in test_client_restart.py and test_client_instances.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from support.counting import Attempts, make_app

from streamkit import EndReason, EventSourceResponse, NDJSONResponse, ServerSentEvent, StreamSender
from streamkit.broadcast import MemoryBroker, topic_response
from streamkit.client import (
    Backoff,
    EventStream,
    ReconnectError,
    UpstreamError,
    open_event_stream,
    open_ndjson_stream,
)
from streamkit.testing import open_leak_check, open_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: Reconnect at once in the tests that are not about the wait.
EAGER = Backoff(initial_delay=0.01, jitter=0.0, max_attempts=5)
#: How late a timed wait may be on a loaded machine.
SLACK = 1.0


async def test_each_ended_connection_is_resumed_without_gap_or_duplicate_and_204_stops() -> None:
    attempts = Attempts()
    app = make_app(per_connection=4, end=10, attempts=attempts)
    async with (
        open_server(app) as server,
        open_event_stream(f"{server.url}/count", backoff=EAGER) as stream,
    ):
        with anyio.fail_after(10):
            received = [event async for event in stream]
        statistics = stream.statistics()
    assert [(e.id, e.data) for e in received] == [(str(n), str(n)) for n in range(1, 11)]
    # Three connections of 4, 4 and 2 events, then a fourth answered 204: the end.
    assert attempts.last_ids == [None, "4", "8", "10"]
    assert statistics.connections == 3
    assert statistics.reconnects == 2
    assert statistics.last_event_id == "10"
    assert statistics.received == 10
    assert not statistics.connected


async def test_a_stalled_server_is_left_after_the_missed_heartbeats() -> None:
    attempts = Attempts()
    app = make_app(stall_after=2, end=4, attempts=attempts)
    async with (
        open_server(app) as server,
        open_event_stream(
            f"{server.url}/count",
            heartbeat_interval=0.2,
            missed_heartbeats=2,
            backoff=EAGER,
        ) as stream,
    ):
        assert stream.read_timeout == pytest.approx(0.4)
        with anyio.fail_after(10):
            received = []
            async for event in stream:
                received.append(event.data)
                if event.data == "2":
                    stalled_at = anyio.current_time()
                if event.data == "3":
                    resumed_at = anyio.current_time()
            # The stalled stream ended because the client left it.
            await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert received == ["1", "2", "3", "4"]
    assert attempts.last_ids == [None, "2", "4"]
    assert 0.4 <= resumed_at - stalled_at < 0.4 + SLACK


async def test_heartbeats_keep_a_quiet_connection_open() -> None:
    attempts = Attempts()
    app = make_app(stall_after=1, heartbeat_interval=0.1, attempts=attempts)
    async with (
        open_server(app) as server,
        open_event_stream(
            f"{server.url}/count", heartbeat_interval=0.1, missed_heartbeats=5, backoff=EAGER
        ) as stream,
    ):
        received: list[str | None] = []

        async def read() -> None:
            async for event in stream:
                received.append(event.data)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(read)
            await anyio.sleep(1.5)  # 15 intervals of heartbeats alone, after the one event
            assert received == ["1"]
            assert attempts.last_ids == [None]
            assert stream.statistics().connected
            task_group.cancel_scope.cancel()


@pytest.mark.parametrize("unavailable", [503, 429])
async def test_a_503_or_429_with_retry_after_is_retried_after_that_delay(unavailable: int) -> None:
    attempts = Attempts()
    app = make_app(end=3, unavailable_first=1, unavailable_status=unavailable, attempts=attempts)
    async with (
        open_server(app) as server,
        open_event_stream(
            f"{server.url}/count", backoff=Backoff(initial_delay=0.01, jitter=0.0)
        ) as stream,
    ):
        with anyio.fail_after(10):
            received = [event.data async for event in stream]
        assert stream.statistics().failed_attempts == 1
    assert received == ["1", "2", "3"]
    times = attempts.times
    assert 1.0 <= times[1] - times[0] < 1.0 + SLACK


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("/missing", "answered 404 Not Found"),
        ("/plain", "sent 'text/plain; charset=utf-8'"),
        ("/moved", "answered 307 Temporary Redirect"),  # followed by no client of its own
        ("/busy", "answered 503 Service Unavailable"),  # with no Retry-After to wait
    ],
)
async def test_a_refused_stream_is_an_error_naming_why_and_is_not_retried(
    path: str, named: str
) -> None:
    calls: list[str] = []

    async def missing(request: Request) -> Response:
        calls.append(request.url.path)
        return PlainTextResponse("no", status_code=404)

    async def plain(request: Request) -> Response:
        calls.append(request.url.path)
        return PlainTextResponse("not a stream")

    async def moved(request: Request) -> Response:
        calls.append(request.url.path)
        return RedirectResponse("/plain")

    async def busy(request: Request) -> Response:
        calls.append(request.url.path)
        return PlainTextResponse("busy", status_code=503)

    routes = {"/missing": missing, "/plain": plain, "/moved": moved, "/busy": busy}
    app = Starlette(routes=[Route(route, endpoint) for route, endpoint in routes.items()])
    async with (
        open_server(app) as server,
        open_event_stream(f"{server.url}{path}", backoff=EAGER) as stream,
    ):
        with pytest.raises(UpstreamError, match=named) as caught:
            await stream.__anext__()
    assert caught.value.url == f"{server.url}{path}"
    assert calls == [path]


async def test_a_server_that_stays_down_is_given_up_on_after_max_attempts() -> None:
    async with open_server(make_app()) as server:
        gone = server.url
    async with open_event_stream(
        f"{gone}/count", backoff=Backoff(initial_delay=0.01, max_attempts=3), last_event_id="7"
    ) as stream:
        with pytest.raises(ReconnectError, match="3 failed attempts") as caught:
            with anyio.fail_after(10):
                await stream.__anext__()
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert caught.value.last_event_id == "7"
    assert stream.statistics().failed_attempts == 3


async def test_a_reset_from_a_topic_is_surfaced() -> None:
    broker = MemoryBroker()

    async def events(request: Request) -> Response:
        return topic_response(broker, "t")

    app = Starlette(routes=[Route("/t", events)])
    async with broker, open_server(app) as server:
        first = await broker.publish("t", "a")
        # An id the history never held: the topic answers with a reset, then the live events.
        async with open_event_stream(f"{server.url}/t", last_event_id="no-such-id") as stream:
            with anyio.fail_after(10):
                reset = await stream.__anext__()
                await broker.publish("t", "b")
                live = await stream.__anext__()
            assert reset.event == "reset"
            assert json.loads(reset.data or "") == {
                "reason": "invalid",
                "last_event_id": "no-such-id",
            }
            assert reset.id == first
            assert live.data == "b"
            assert stream.statistics().resets == 1


@pytest.mark.parametrize("where", ["reading", "waiting to reconnect"])
async def test_cancelling_the_block_closes_the_connection_at_once_and_leaks_nothing(
    where: str,
) -> None:
    # Waiting: the one event, then silence; the client leaves after its read timeout and
    # waits a minute to reconnect.
    app = make_app(interval=0.01) if where == "reading" else make_app(stall_after=1)
    async with open_server(app) as server:
        async with httpx.AsyncClient() as http:
            # The server's own first-request tasks start here, not inside the leak check.
            await http.get(f"{server.url}/nothing")
        async with open_leak_check():
            with anyio.CancelScope() as scope:
                async with open_event_stream(
                    f"{server.url}/count",
                    heartbeat_interval=0.1,
                    missed_heartbeats=1,
                    backoff=Backoff(initial_delay=60.0, max_delay=60.0),
                ) as stream:
                    received = anyio.Event()

                    async def read() -> None:
                        async for _ in stream:
                            received.set()

                    async with anyio.create_task_group() as task_group:
                        task_group.start_soon(read)
                        with anyio.fail_after(5):
                            await received.wait()
                            if where == "waiting to reconnect":
                                await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
                        left_at = anyio.current_time()
                        scope.cancel()
            assert scope.cancelled_caught
            assert anyio.current_time() - left_at < 0.5
            if where == "reading":
                # The server saw its client leave: the connection was closed, not pooled.
                await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=1.0)
        assert not stream.statistics().connected


async def test_a_cancelled_wait_for_the_next_event_says_it_ended_the_stream() -> None:
    # Closing at once is what a cancelled block needs; a loop over the stream afterwards
    # must not then end quietly, as the server's 204 ends it.
    app = make_app(stall_after=1)
    async with (
        open_server(app) as server,
        open_event_stream(f"{server.url}/count", backoff=EAGER) as stream,
    ):
        with anyio.fail_after(5):
            assert (await anext(stream)).data == "1"
        with anyio.move_on_after(0.1) as quiet:
            await anext(stream)
        assert quiet.cancelled_caught
        # The connection was closed, not left open: the server saw its client leave.
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=1.0)
        with pytest.raises(RuntimeError, match=r"/count was closed when a wait for its next"):
            async for _ in stream:
                pass
        assert not stream.statistics().connected


async def test_leaving_the_block_while_another_task_reads_says_what_to_do() -> None:
    app = make_app(interval=0.02)
    reading = anyio.Event()

    async def read(stream: EventStream) -> None:
        async for _ in stream:
            reading.set()

    async with open_server(app) as server:
        with pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match=r"/count was left while another task was read")
        ):
            async with anyio.create_task_group() as task_group:
                async with open_event_stream(f"{server.url}/count") as stream:
                    task_group.start_soon(read, stream)
                    with anyio.fail_after(5):
                        await reading.wait()
        # The reader was cancelled with its task group, and its connection closed.
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=1.0)


async def test_a_request_whose_body_is_an_async_iterator_is_sent_whole_on_each_connection() -> None:
    # Its body was streamed once, by the first connection: the second raised httpx's
    # StreamConsumed out of the iteration, a reconnection (hours, maybe) after it was given.
    bodies: list[bytes] = []

    async def echo(request: Request) -> Response:
        bodies.append(await request.body())
        if len(bodies) > 2:
            return Response(status_code=204)

        async def produce(send: StreamSender[ServerSentEvent]) -> None:
            await send(ServerSentEvent(data=bodies[-1].decode(), id=str(len(bodies))))

        return EventSourceResponse(produce)

    async def question() -> AsyncIterator[bytes]:
        yield b'{"question": '
        yield b'"why"}'

    app = Starlette(routes=[Route("/ask", echo, methods=["POST"])])
    async with open_server(app) as server:
        request = httpx.Request("POST", f"{server.url}/ask", content=question())
        async with open_event_stream(request, backoff=EAGER) as stream:
            with anyio.fail_after(10):
                received = [(event.id, event.data) async for event in stream]
    assert received == [("1", '{"question": "why"}'), ("2", '{"question": "why"}')]
    assert bodies == [b'{"question": "why"}'] * 3


async def test_ndjson_items_are_resumed_by_their_id() -> None:
    async def numbers(request: Request) -> Response:
        start = int(request.headers.get("last-event-id", "0")) + 1

        async def produce(send: StreamSender[object]) -> None:
            for n in range(start, min(start + 3, 8)):
                await send({"n": n})

        if start > 7:
            return Response(status_code=204)
        return NDJSONResponse(produce)

    app = Starlette(routes=[Route("/n", numbers)])
    async with (
        open_server(app) as server,
        open_ndjson_stream(
            f"{server.url}/n", item_id=lambda item: str(item["n"]), backoff=EAGER
        ) as stream,
    ):
        with anyio.fail_after(10):
            items = [item async for item in stream]
    assert items == [{"n": n} for n in range(1, 8)]


def test_bad_arguments_are_refused_where_they_are_made() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        open_event_stream("http://x/", heartbeat_interval=0)
    with pytest.raises(TypeError, match="missed_heartbeats"):
        open_event_stream("http://x/", missed_heartbeats=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"last_event_id holds a control character, .*: 'a\\nb'"):
        open_event_stream("http://x/", last_event_id="a\nb")
    with pytest.raises(ValueError, match=r"the request's Last-Event-ID header holds a control"):
        open_event_stream(httpx.Request("GET", "http://x/", headers={"last-event-id": "a\x01"}))
    with pytest.raises(ValueError, match="max_event_size"):
        open_ndjson_stream("http://x/", max_event_size=0)
    with pytest.raises(TypeError, match="got bytes"):
        open_event_stream(b"http://x/")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item_id"):
        open_ndjson_stream("http://x/", item_id="n")  # type: ignore[arg-type]
    # Retried for ever (the default backoff has no bound), naming nothing, until refused here.
    for target in ("ftp://x/events", "x/events", httpx.Request("GET", "ws://x/")):
        with pytest.raises(ValueError, match="must be an http or https URL, got '"):
            open_event_stream(target)
    # No attempt could reach them: retried for ever as a ConnectError, or (a port past
    # 65535, on asyncio) an OverflowError in an ExceptionGroup out of the iteration.
    for target, named in [
        ("http:///events", "has no host: 'http:///events'"),
        ("http://", "has no host: 'http://'"),
        ("http://127.0.0.1:99999/events", "has the port 99999, not one of 1 to 65535: 'http://1"),
        ("http://127.0.0.1:0/events", "has the port 0, not one of 1 to 65535: 'http://1"),
    ]:
        for opened in (open_event_stream, open_ndjson_stream):
            with pytest.raises(ValueError, match=f"stream's target {re.escape(named)}"):
                opened(target)
