"""The fake ASGI connection: the client leaves on cue, counted in messages, and everything
the app sent is recorded."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from streamkit import (
    EndReason,
    EventSourceResponse,
    NDJSONResponse,
    ServerSentEvent,
    StreamEnd,
    StreamSender,
)
from streamkit.testing import FakeConnection, open_server, open_stream

pytestmark = pytest.mark.anyio


async def test_disconnect_after_body_messages_cancels_a_streamkit_producer() -> None:
    ends: list[StreamEnd] = []
    seen: list[str] = []

    async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
        try:
            number = 0
            while True:
                await send(ServerSentEvent(data=str(number)))
                number += 1
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise

    connection = FakeConnection("/feed", disconnect_after_body=3)
    await connection.run(EventSourceResponse(produce, on_end=ends.append))
    assert connection.disconnected
    assert connection.status == 200
    assert connection.headers["content-type"].startswith("text/event-stream")
    # The runtime may write several events in one body message: three messages got through.
    assert len(connection.body_chunks) == 3
    data = [event.data for event in connection.events()]
    assert data == [str(number) for number in range(len(data))]
    assert len(data) >= 3
    assert not connection.complete
    assert seen == ["cancelled"]
    assert [end.reason for end in ends] == [EndReason.CLIENT_DISCONNECTED]


async def test_a_stream_that_ends_first_is_complete() -> None:
    async def items() -> AsyncIterator[object]:
        for number in range(2):
            yield {"n": number}

    ends: list[StreamEnd] = []
    connection = FakeConnection(disconnect_after_body=10)
    await connection.run(NDJSONResponse(items(), on_end=ends.append))
    assert connection.items() == [{"n": 0}, {"n": 1}]
    assert connection.complete
    assert not connection.disconnected
    assert [end.reason for end in ends] == [EndReason.COMPLETED]


async def test_is_disconnected_turns_true_after_n_calls() -> None:
    connection = FakeConnection(disconnect_after_receives=3)
    request = Request(connection.scope, connection.receive)
    answers = [await request.is_disconnected() for _ in range(5)]
    assert answers == [False, False, False, True, True]
    assert connection.receive_calls == 4  # Starlette stops asking once it knows


async def test_a_generator_polling_is_disconnected_stops_after_n_items() -> None:
    async def ticker(request: Request) -> AsyncIterator[str]:
        number = 0
        while not await request.is_disconnected():
            yield f"tick {number}"
            number += 1

    connection = FakeConnection(disconnect_after_receives=2)
    request = Request(connection.scope, connection.receive)
    with anyio.fail_after(5):
        assert [item async for item in ticker(request)] == ["tick 0", "tick 1"]


async def test_starlette_streaming_response_sees_the_send_fail() -> None:
    # ASGI 2.4: a send after the client left raises OSError, which Starlette turns into
    # ClientDisconnect; what was refused is recorded apart from what was delivered.
    closed: list[bool] = []

    async def chunks() -> AsyncGenerator[bytes]:
        try:
            number = 0
            while True:
                yield b"chunk %d\n" % number
                number += 1
        finally:
            closed.append(True)

    connection = FakeConnection(disconnect_after_body=2)
    body = chunks()
    with pytest.raises(ClientDisconnect):
        await connection.run(StreamingResponse(body))
    await body.aclose()  # Starlette leaves that to the garbage collector
    assert closed == [True]
    assert connection.body == b"chunk 0\nchunk 1\n"
    assert connection.body_chunks == [b"chunk 0\n", b"chunk 1\n"]
    assert [message["body"] for message in connection.refused] == [b"chunk 2\n"]


async def test_disconnect_on_command_and_the_request_it_delivers() -> None:
    connection = FakeConnection(
        "/upload?x=1", method="post", headers={"X-Token": "t"}, body=b"payload"
    )
    request = Request(connection.scope, connection.receive)
    assert request.method == "POST"
    assert request.url.path == "/upload"
    assert request.query_params["x"] == "1"
    assert request.headers["x-token"] == "t"
    assert await request.body() == b"payload"
    async with anyio.create_task_group() as task_group:
        received: list[str] = []

        async def listen() -> None:
            received.append((await connection.receive())["type"])

        task_group.start_soon(listen)
        await anyio.wait_all_tasks_blocked()
        assert received == []
        connection.disconnect()
    assert received == ["http.disconnect"]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "path",
    [
        "/rooms/caf%C3%A9?q=a%20b",
        "/rooms/a%2Fb",  # decoded, a path of three segments: no room, a 404
        "/rooms/plain",
    ],
)
async def test_a_percent_encoded_path_reaches_the_app_as_a_real_server_hands_it(path: str) -> None:
    # The path was handed over as given, escapes and all: a route's path parameter was
    # "caf%C3%A9" where a real server made it "café".
    seen: list[tuple[str, bytes, bytes, dict[str, str]]] = []

    async def room(request: Request) -> PlainTextResponse:
        scope = request.scope
        seen.append((scope["path"], scope["raw_path"], scope["query_string"], request.path_params))
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/rooms/{name}", room)])
    with anyio.fail_after(20):
        async with open_server(app) as server, open_stream(server, path) as client:
            real = (client.status, seen.copy())
    seen.clear()
    connection = FakeConnection(path)
    await connection.run(app)
    assert (connection.status, seen) == real


@pytest.mark.parametrize("name", ["disconnect_after_body", "disconnect_after_receives"])
@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), ("3", TypeError), (1.5, TypeError), (True, TypeError)]
)
def test_a_bad_count_is_refused_naming_it(name: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"^{name} must be an int.*, got .*{re.escape(repr(value))}$"):
        FakeConnection(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"body": '{"n": 1}'}, r"body must be a bytes, got str: '\{\"n\": 1\}'"),
        ({"headers": {"X-Count": 1}}, r"header 'X-Count' must be a str, got int: 1"),
        ({"headers": {b"X-Token": "t"}}, r"a header name must be a str, got bytes: b'X-Token'"),
        ({"path": b"/upload"}, r"path must be a str, got bytes: b'/upload'"),
        ({"method": b"POST"}, r"method must be a str, got bytes: b'POST'"),
    ],
)
def test_a_request_part_of_the_wrong_type_is_refused_naming_it(
    options: dict[str, object], named: str
) -> None:
    # A str body was handed to the app, whose request.json() failed far from here, joining
    # it with bytes; a header's int was an AttributeError without its name, and so was a
    # bytes method; a bytes path a TypeError of str.partition.
    with pytest.raises(TypeError, match=f"^{named}$"):
        FakeConnection(**{"path": "/upload", "method": "POST", **options})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("within", "error"),
    [
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (0, ValueError),
        (-1.0, ValueError),
        ("5", TypeError),
        (None, TypeError),
    ],
)
async def test_a_bad_within_for_run_is_refused_naming_it_before_the_app_runs(
    within: object, error: type[Exception]
) -> None:
    called: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)

    with pytest.raises(error, match=rf"^within must be .*{re.escape(repr(within))}$"):
        await FakeConnection().run(app, within=within)  # type: ignore[arg-type]
    assert called == []


async def test_a_connection_run_again_is_refused_saying_it_carries_one_request() -> None:
    # The second run waited for a request body that had gone to the first, until its
    # deadline, then said the app "had sent 2 messages": the first run's.
    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        body = await Request(scope, receive).body()
        await PlainTextResponse(b"got " + body)(scope, receive, send)

    connection = FakeConnection("/echo", method="POST", body=b"abc")
    await connection.run(echo)
    assert connection.body == b"got abc"
    with anyio.fail_after(1):
        with pytest.raises(RuntimeError, match=r"already ran an app for POST /echo"):
            await connection.run(echo)
    assert connection.body == b"got abc"


@pytest.mark.parametrize(
    ("disconnect_after_body", "left"),
    [(None, "had not left"), (2, "had left")],
    ids=["no-cue", "left"],
)
async def test_an_app_that_does_not_return_is_a_timeout_naming_the_request_and_the_client(
    disconnect_after_body: int | None, left: str
) -> None:
    # It raised a TimeoutError without a message: what hung, and whether the client had
    # left (the cue the app waits for may never have come), nobody knew.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for body in (b"one", b"two"):
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await anyio.sleep_forever()  # heeds no disconnect

    connection = FakeConnection("/feed", disconnect_after_body=disconnect_after_body)
    with anyio.fail_after(5), pytest.raises(TimeoutError) as caught:
        await connection.run(app, within=0.1)
    assert str(caught.value) == (
        "the app did not return within 0.1 s of its call for GET /feed; it had sent 3 "
        f"messages, 2 of them with body bytes, and the client {left}"
    )


@pytest.mark.parametrize("fatal", [SystemExit, KeyboardInterrupt])
async def test_without_a_streamkit_server_a_producers_system_exit_is_raised_after_the_report(
    fatal: type[BaseException],
) -> None:
    """No streamkit server to stop gracefully: the stream ends as an error all the same, and
    the exception then leaves the app, unwrapped, for the server running it."""

    async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
        await send("one")
        raise fatal

    ends: list[StreamEnd] = []
    connection = FakeConnection("/feed")
    with pytest.raises(fatal) as caught:
        await connection.run(EventSourceResponse(produce, on_end=ends.append))
    assert type(caught.value) is fatal
    assert [event.event for event in connection.events()] == [None, "error"]
    assert connection.complete
    assert [end.reason for end in ends] == [EndReason.ERROR]
    assert isinstance(ends[0].exception, fatal)
