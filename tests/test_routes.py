"""Stream routes without an App: the checks made when a route is declared, what it is
declared as, and its endpoint serving a request on a
:class:`~streamkit.testing.FakeConnection` (the App's own use is in ``test_app.py``)."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import anyio
import pytest
from starlette.requests import Request
from starlette.types import Message

from streamkit import (
    EndReason,
    EventSourceResponse,
    NDJSONResponse,
    ServerSentEvent,
    StreamEnd,
    StreamOptions,
    StreamSender,
)
from streamkit._metrics import StreamMetrics
from streamkit._registry import StreamRegistry
from streamkit._routes import (
    MAX_UNREAD_BODY,
    RequestMessages,
    StreamEndpoint,
    StreamRequest,
    StreamRouteInfo,
    declare_stream_route,
)
from streamkit.testing import FakeConnection

Send = StreamSender[ServerSentEvent | str]


async def two_events(request: Request, send: Send) -> None:
    await send("a")
    await send(ServerSentEvent(data=request.url.path))


def declare(
    handler: Callable[..., Any],
    *,
    defaults: StreamOptions | None = None,
    registry_for: Callable[[str], StreamRegistry | None] = lambda path: None,
    metrics: StreamMetrics | None = None,
    on_end: Callable[[StreamEnd], None] | None = None,
    **arguments: Any,
) -> StreamEndpoint:
    return declare_stream_route(
        path="/items/{id}",
        name="items",
        kind="sse",
        methods=frozenset({"GET"}),
        handler=handler,
        response_class=EventSourceResponse,
        defaults=defaults or StreamOptions(),
        arguments=arguments,
        on_end=on_end,
        metrics=metrics,
        registry_for=registry_for,
    )


# -- declaration ------------------------------------------------------------------------------


def test_a_route_is_declared_with_the_defaults_and_its_overrides() -> None:
    defaults = StreamOptions(heartbeat_interval=5.0, send_timeout=2.0)
    endpoint = declare(two_events, defaults=defaults, send_timeout=1.0, shutdown_event=None)
    assert endpoint.route == StreamRouteInfo(
        path="/items/{id}",
        name="items",
        kind="sse",
        methods=frozenset({"GET"}),
        options=StreamOptions(heartbeat_interval=5.0, send_timeout=1.0),
    )
    assert defaults.send_timeout == 2.0, "the defaults are not changed by an override"
    assert endpoint.arguments["shutdown_event"] is None, "the response's own arguments are kept"
    with pytest.raises(dataclasses.FrozenInstanceError):
        endpoint.route.path = "/other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"idle_timeout": 0.0}, ValueError, r"^route '/items/\{id\}': idle_timeout .* got 0.0"),
        ({"end_when_idle": 1}, TypeError, r"^route '/items/\{id\}': end_when_idle"),
        # Found with these tests: both were taken, and the wrong type failed only when used.
        (
            {"error_event": "bye"},
            TypeError,
            r"^route '/items/\{id\}': error_event must be a ServerSentEvent or None, got str",
        ),
        (
            {"heartbeat_comment": 5},
            TypeError,
            r"^route '/items/\{id\}': heartbeat_comment must be a str, got int: 5",
        ),
        ({"status": 200}, TypeError, r"^route '/items/\{id\}': .*unknown argument 'status'"),
    ],
)
def test_bad_arguments_are_refused_at_declaration_naming_the_route(
    arguments: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        declare(two_events, **arguments)


def test_ndjson_closing_items_are_checked_against_json_at_declaration() -> None:
    with pytest.raises(TypeError, match=r"route '/rows': .*JSON"):
        declare_stream_route(
            path="/rows",
            name="rows",
            kind="ndjson",
            methods=frozenset({"GET"}),
            handler=two_events,
            response_class=NDJSONResponse,
            defaults=StreamOptions(),
            arguments={"error_item": {1, 2}},
            on_end=None,
            metrics=None,
            registry_for=lambda path: None,
        )


class Handlers:
    async def method(self, request: Request, send: Send) -> None: ...

    async def __call__(self, request: Request, send: Send) -> None: ...


async def with_options(request: Request, send: Send, *, limit: int = 10) -> None: ...


async def needs_more(request: Request, send: Send, *, token: str) -> None: ...


async def events(request: Request) -> AsyncIterator[str]:
    yield "x"


async def events_with_send(request: Request, send: Send) -> AsyncIterator[str]:
    yield "x"


def test_handlers_of_either_shape_are_accepted() -> None:
    assert declare(events).generator
    assert not declare(two_events).generator
    assert not declare(Handlers().method).generator
    assert not declare(with_options).generator
    assert not declare(partial(needs_more, token="t")).generator


@pytest.mark.parametrize(
    ("handler", "match"),
    [
        (needs_more, r"needs_more must take \(request, send\), its signature is .*token"),
        (events_with_send, r"events_with_send must take \(request\)"),
        (lambda request, send: None, "must be an async generator function"),
    ],
)
def test_a_handler_of_neither_shape_is_refused_naming_it(
    handler: Callable[..., Any], match: str
) -> None:
    with pytest.raises(TypeError, match=r"^route '/items/\{id\}': .*" + match):
        declare(handler)


# -- the endpoint -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_endpoint_serves_a_request_under_its_routes_registry() -> None:
    route_streams = StreamRegistry()
    asked: list[str] = []
    ends: list[StreamEnd] = []

    def registry_for(path: str) -> StreamRegistry:
        asked.append(path)
        return route_streams

    metrics = StreamMetrics()
    endpoint = declare(two_events, registry_for=registry_for, metrics=metrics, on_end=ends.append)
    connection = FakeConnection("/items/7")
    await connection.run(endpoint)
    assert [event.data for event in connection.events()] == ["a", "/items/7"]
    assert asked == ["/items/{id}"], "the registry is looked up by the declared path"
    assert route_streams.statistics().ended[EndReason.COMPLETED] == 1
    assert [end.reason for end in ends] == [EndReason.COMPLETED]
    route = {"route": "/items/{id}"}
    assert metrics.registry.get_sample_value("streamkit_active_streams", route) == 0
    ended = {**route, "reason": "completed"}
    assert metrics.registry.get_sample_value("streamkit_stream_ends_total", ended) == 1


@pytest.mark.anyio
async def test_the_endpoint_counts_a_stream_as_running_until_it_ends() -> None:
    metrics = StreamMetrics()
    sent = anyio.Event()

    async def held(request: Request, send: Send) -> None:
        await send("a")
        sent.set()
        await anyio.sleep_forever()

    endpoint = declare(held, metrics=metrics)
    connection = FakeConnection("/items/1")
    route = {"route": "/items/{id}"}
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(connection.run, endpoint)
        with anyio.fail_after(5):
            await sent.wait()
        assert metrics.registry.get_sample_value("streamkit_active_streams", route) == 1
        connection.disconnect()
    assert metrics.registry.get_sample_value("streamkit_active_streams", route) == 0
    ended = {**route, "reason": "client_disconnected"}
    assert metrics.registry.get_sample_value("streamkit_stream_ends_total", ended) == 1


# -- the request's body and the stream's watcher -------------------------------------------------


class Server:
    """A server's ``receive``: the messages put into it, in order, each when it is taken."""

    def __init__(self) -> None:
        self._messages: deque[Message] = deque()
        self._arrived = anyio.Event()

    def put(self, message: Message) -> None:
        self._messages.append(message)
        self._arrived.set()

    async def receive(self) -> Message:
        while not self._messages:
            self._arrived = anyio.Event()
            await self._arrived.wait()
        return self._messages.popleft()


def body_message(body: bytes, *, more_body: bool = True) -> Message:
    return {"type": "http.request", "body": body, "more_body": more_body}


async def no_send(message: Message) -> None:
    raise AssertionError(f"nothing is sent here, got {message!r}")


async def watch(messages: RequestMessages, heard: list[Message]) -> None:
    """Read *messages* as the stream's watcher does, to the disconnect, put in *heard*."""
    while (message := await messages.for_stream())["type"] != "http.disconnect":
        pass
    heard.append(message)


@pytest.mark.anyio
async def test_the_watcher_keeps_the_body_for_the_request_in_order_then_the_disconnect() -> None:
    server = Server()
    messages = RequestMessages(server.receive)
    pieces = [body_message(b"a"), body_message(b"b"), body_message(b"c", more_body=False)]
    heard: list[Message] = []

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(watch, messages, heard)
            for piece in pieces:
                server.put(piece)
            await anyio.wait_all_tasks_blocked()  # the watcher has taken them all
            server.put({"type": "http.disconnect"})
            request = Request({"type": "http", "method": "POST"}, messages.for_request)
            assert await request.body() == b"abc"
            assert await messages.for_request() == {"type": "http.disconnect"}
    assert heard == [{"type": "http.disconnect"}]


@pytest.mark.anyio
async def test_past_the_unread_bound_the_watcher_waits_for_a_request_that_is_reading() -> None:
    server = Server()
    messages = RequestMessages(server.receive)
    big = MAX_UNREAD_BODY // 2 + 1
    taken = 0

    async def watch() -> None:
        nonlocal taken
        while (await messages.for_stream())["type"] != "http.disconnect":
            taken += 1

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(watch)
            server.put(body_message(b"first"))
            assert (await messages.for_request())["body"] == b"first"  # it reads the body
            for _ in range(4):
                server.put(body_message(b"x" * big))
            await anyio.wait_all_tasks_blocked()
            assert taken == 3  # past the bound after two more: the next waits for room
            # Both pieces, held as one.
            assert len((await messages.for_request())["body"]) == 2 * big
            await anyio.wait_all_tasks_blocked()
            assert taken == 5  # room for the last
            task_group.cancel_scope.cancel()


def put_twice_the_unread_bound(server: Server) -> None:
    """Have *server* deliver twice :data:`MAX_UNREAD_BODY` of body, in eight pieces, and more
    to come."""
    for _ in range(8):
        server.put(body_message(b"x" * (MAX_UNREAD_BODY // 4)))


@pytest.mark.anyio
async def test_past_the_unread_bound_a_body_not_being_read_is_dropped_and_the_end_heard() -> None:
    server = Server()
    messages = RequestMessages(server.receive)
    heard: list[Message] = []

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(watch, messages, heard)
            put_twice_the_unread_bound(server)
            server.put(body_message(b"", more_body=False))
            await anyio.wait_all_tasks_blocked()  # the watcher has read it all
            assert not messages._unread_body  # nothing of it kept
            request = Request({"type": "http", "method": "POST"}, messages.for_request)
            with pytest.raises(RuntimeError, match=f"dropped: more than {MAX_UNREAD_BODY} bytes"):
                await request.body()
            server.put({"type": "http.disconnect"})
    assert heard == [{"type": "http.disconnect"}]


@pytest.mark.anyio
async def test_a_poll_for_the_disconnect_takes_nothing_of_the_body_and_is_told_the_end() -> None:
    # The stream's request asks the watcher; Starlette's own is_disconnected() receives in a
    # cancelled scope, which takes nothing either.
    server = Server()
    messages = RequestMessages(server.receive)
    request = StreamRequest({"type": "http", "method": "POST"}, messages, no_send)
    heard: list[Message] = []

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(watch, messages, heard)
            put_twice_the_unread_bound(server)
            await anyio.wait_all_tasks_blocked()  # past the bound: dropped, not waited on
            assert [await request.is_disconnected() for _ in range(3)] == [False] * 3
            server.put({"type": "http.disconnect"})
            await anyio.wait_all_tasks_blocked()
            assert await request.is_disconnected()
    assert heard == [{"type": "http.disconnect"}]


@pytest.mark.anyio
async def test_a_poll_for_the_disconnect_leaves_the_body_to_the_read() -> None:
    # Starlette's own is_disconnected(), a receive in a cancelled scope, takes nothing either.
    server = Server()
    messages = RequestMessages(server.receive)
    request = Request({"type": "http", "method": "POST"}, messages.for_request)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(watch, messages, [])
            server.put(body_message(b"a"))
            server.put(body_message(b"b", more_body=False))
            await anyio.wait_all_tasks_blocked()
            assert not await request.is_disconnected()
            assert await request.body() == b"ab"
            task_group.cancel_scope.cancel()
