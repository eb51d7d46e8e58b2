"""Per-item idle timeouts: a silent producer's stream serves its last good value, marked."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from streamkit import EndReason, EventSourceResponse, NDJSONResponse, ServerSentEvent, StreamSender
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

IDLE = 0.2


async def one_then_silence(send: StreamSender[Any]) -> None:
    await send(ServerSentEvent(data="42", id="1", event="price"))
    await anyio.sleep_forever()


def app(**options: Any) -> Starlette:
    async def sse(request: Request) -> Response:
        return EventSourceResponse(one_then_silence, idle_timeout=IDLE, **options)

    async def rows(request: Request) -> Response:
        async def produce(send: StreamSender[Any]) -> None:
            await send({"price": 42})
            await anyio.sleep_forever()

        return NDJSONResponse(
            produce,
            idle_timeout=IDLE,
            idle_fallback=lambda last: {"cache": True, "value": last},
            **options,
        )

    return Starlette(routes=[Route("/sse", sse), Route("/rows", rows)])


async def test_a_silent_sse_producer_gets_stale_events_and_the_stream_waits_on() -> None:
    async with open_server(app()) as server:
        # Timed from before the request: the first event's own delivery time cannot make the
        # two idle periods look shorter than they were.
        started = anyio.current_time()
        async with open_stream(server, "/sse") as client:
            with anyio.fail_after(5):
                first = await client.read_event()
                stale = [await client.read_event() for _ in range(2)]
            waited = anyio.current_time() - started
            await client.close()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert first.data == "42"
    assert stale == [ServerSentEvent(event="stale", data="42")] * 2
    assert 2 * IDLE <= waited < 2 * IDLE + 1.0


async def test_heartbeats_and_stale_events_share_a_silent_stream() -> None:
    async with (
        open_server(app(heartbeat_interval=IDLE / 4)) as server,
        open_stream(server, "/sse") as client,
    ):
        with anyio.fail_after(5):
            first = await client.read_event()
            stale = [await client.read_event() for _ in range(2)]
        await client.close()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert first.data == "42"
    assert stale == [ServerSentEvent(event="stale", data="42")] * 2
    # About three heartbeats fill each idle period; the stale events reset neither timer.
    assert len(client.comments) >= 4
    assert end.items_sent == 3


async def test_end_when_idle_ends_with_deadline_after_the_fallback() -> None:
    async with (
        open_server(app(end_when_idle=True)) as server,
        open_stream(server, "/rows") as client,
    ):
        with anyio.fail_after(5):
            items = [await client.read_item() for _ in range(2)]
            assert await client.read_all() == b""
        end = await server.wait_ended(EndReason.DEADLINE)
    assert items == [{"price": 42}, {"cache": True, "value": {"price": 42}}]
    assert client.complete
    assert end.items_sent == 2
    assert IDLE <= end.duration < IDLE + 1.0


async def test_end_when_idle_sends_the_deadline_event_after_the_fallback() -> None:
    deadline = ServerSentEvent(event="deadline", data="", retry=500)
    async with (
        open_server(app(end_when_idle=True, deadline_event=deadline)) as server,
        open_stream(server, "/sse") as client,
    ):
        with anyio.fail_after(5):
            events = [event async for event in client.events()]
        await server.wait_ended(EndReason.DEADLINE)
    assert events == [
        ServerSentEvent(data="42", id="1", event="price"),
        ServerSentEvent(event="stale", data="42"),
        deadline,
    ]


async def test_a_producer_that_keeps_sending_never_gets_a_fallback() -> None:
    async def steady(send: StreamSender[Any]) -> None:
        for n in range(8):
            await send(str(n))
            await anyio.sleep(IDLE / 4)

    async def sse(request: Request) -> Response:
        return EventSourceResponse(steady, idle_timeout=IDLE)

    app = Starlette(routes=[Route("/sse", sse)])
    async with open_server(app) as server, open_stream(server, "/sse") as client:
        with anyio.fail_after(5):
            events = [event async for event in client.events()]
    assert [event.data for event in events] == [str(n) for n in range(8)]
    assert all(event.event is None for event in events)


async def test_a_stalled_client_is_still_given_up_after_the_stream_ended_when_idle() -> None:
    """The idle timer ends the stream while a write to a client that stopped reading is
    stuck: send_timeout still bounds that write, and everything is released."""
    send_timeout = 0.5
    cleaned = anyio.Event()

    async def flood(send: StreamSender[Any]) -> None:
        send.push_async_callback(cleaned_up)
        while True:  # held once the socket and the buffer are full: then silent
            await send({"pad": "x" * 32768})

    async def cleaned_up() -> None:
        await anyio.sleep(0.01)
        cleaned.set()

    async def rows(request: Request) -> Response:
        return NDJSONResponse(
            flood, idle_timeout=IDLE, end_when_idle=True, send_timeout=send_timeout
        )

    app = Starlette(routes=[Route("/rows", rows)])
    async with (
        open_server(app) as server,
        open_stream(server, "/rows", receive_buffer=4096) as client,
    ):
        await client.receive_chunk()
        client.stall()
        end = await server.wait_ended(EndReason.DEADLINE, within=10)
        with anyio.fail_after(5):
            await cleaned.wait()
    assert end.duration < IDLE + send_timeout + 1.0


REQUEST_ID: ContextVar[str] = ContextVar("REQUEST_ID", default="none")


async def test_the_idle_fallback_sees_the_requests_context_variables() -> None:
    """A fallback is made by a timer (on trio, in the run's timer task), in the context of
    the request it is for: what a middleware set for the request is there."""

    def stale(last: Any) -> ServerSentEvent:
        return ServerSentEvent(event="stale", data=REQUEST_ID.get())

    async def sse(request: Request) -> Response:
        return EventSourceResponse(one_then_silence, idle_timeout=IDLE, idle_fallback=stale)

    inner = Starlette(routes=[Route("/sse", sse)])

    async def with_request_id(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            REQUEST_ID.set(Headers(scope=scope).get("x-request-id", "missing"))
        await inner(scope, receive, send)

    async with open_server(with_request_id) as server:
        async with (
            open_stream(server, "/sse", headers={"X-Request-Id": "first"}) as first,
            open_stream(server, "/sse", headers={"X-Request-Id": "second"}) as second,
        ):
            with anyio.fail_after(5):
                for client, request_id in ((first, "first"), (second, "second")):
                    assert (await client.read_event()).data == "42"
                    assert await client.read_event() == ServerSentEvent(
                        event="stale", data=request_id
                    )


@pytest.mark.parametrize("ending", ["completed", "deadline"])
async def test_no_idle_fallback_once_the_producer_returned_or_its_end_was_decided(
    ending: str,
) -> None:
    """The producer's cleanup (a resource's exit through send) runs past idle_timeout after it
    returned, or after max_duration ended it: the producer is not idle but done, and no stale
    event is written after its last item, nor does end_when_idle make a completed stream a
    DEADLINE."""

    async def produce(send: StreamSender[Any]) -> None:
        async def slow_exit() -> None:
            await anyio.sleep(3 * IDLE)  # closing an upstream that takes its time

        send.push_async_callback(slow_exit)
        await send(ServerSentEvent(data="last"))
        if ending == "deadline":
            await anyio.sleep_forever()

    async def sse(request: Request) -> Response:
        return EventSourceResponse(
            produce,
            idle_timeout=IDLE,
            end_when_idle=True,
            max_duration=IDLE / 2 if ending == "deadline" else None,
            deadline_event=ServerSentEvent(event="deadline", data=""),
        )

    reason = EndReason.COMPLETED if ending == "completed" else EndReason.DEADLINE
    async with (
        open_server(Starlette(routes=[Route("/sse", sse)])) as server,
        open_stream(server, "/sse") as client,
    ):
        with anyio.fail_after(5):
            events = [event async for event in client.events()]
        end = await server.wait_ended(reason)
    farewell = [ServerSentEvent(event="deadline", data="")] if ending == "deadline" else []
    assert events == [ServerSentEvent(data="last"), *farewell]
    assert end.items_sent == 1
