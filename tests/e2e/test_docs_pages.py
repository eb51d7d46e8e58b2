"""The topic pages' examples, run as they are printed, through real hypercorn: what the prose
around each promises happens. A block that is a fragment is given what the page's earlier
blocks import and the names the page leaves to the reader (``produce``, ``upstream``); where a
page's duration would make a test slow, it is shortened in the source, and only there. A
migration's block is run from its "# After"."""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.brokers import until
from support.doc_snippets import snippet

import streamkit
import streamkit.broadcast
import streamkit.client
import streamkit.fallback
from streamkit import EndReason, EventSourceResponse, ServerSentEvent, StreamSender
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: A disconnect must reach the producer, and its cleanup finish, within this.
DISCONNECT_BOUND = 1.0


def _source(page: str, index: int, replace: dict[str, str] | None = None) -> str:
    """The *index*-th block of *page*, each key of *replace* in it replaced by its value (a
    URL, a duration); of a migration's block, what comes after "# After"."""
    source = snippet(page, index)
    if page == "docs/migrating.md":
        source = source[source.index("# After") :]
    for old, new in (replace or {}).items():
        assert old in source, f"{page} block {index} has no {old!r}"
        source = source.replace(old, new)
    return source


def _names(**names: Any) -> dict[str, Any]:
    """streamkit's public names (what a page's earlier blocks import) and *names* (what the
    page leaves to the reader)."""
    return {**{name: getattr(streamkit, name) for name in streamkit.__all__}, **names}


def _run(
    page: str, index: int, /, *, replace: dict[str, str] | None = None, **names: Any
) -> ModuleType:
    """The *index*-th block of *page* (see :func:`_source`), run as a module with
    :func:`_names`."""
    module = ModuleType("page")
    module.__dict__.update(_names(**names))
    exec(compile(_source(page, index, replace), page, "exec"), module.__dict__)
    return module


def _values(source: str, namespace: dict[str, Any]) -> list[Any]:
    """What each expression statement of *source* evaluates to, in order (a block that makes
    responses without binding them)."""
    values = []
    for statement in ast.parse(source).body:
        code = ast.unparse(statement)
        if isinstance(statement, ast.Expr):
            values.append(eval(code, namespace))
        else:
            exec(code, namespace)
    return values


def _serve(respond: Any) -> Starlette:
    """An app that answers ``/feed`` with what *respond* returns for the request."""

    async def endpoint(request: Request) -> Response:
        response: Response = respond(request)
        return response

    return Starlette(routes=[Route("/feed", endpoint)])


async def _ticks(send: StreamSender[Any]) -> None:
    """A producer that sends once, then is silent: a stream the heartbeat is for."""
    await send("tick")
    await anyio.sleep_forever()


# docs/disconnects.md


async def test_disconnects_logging_shows_one_line_per_end(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The page's block, as caplog has it: the streamkit logger's INFO records.
    assert "logging.basicConfig(level=logging.INFO)" in snippet("docs/disconnects.md", 0)
    caplog.set_level(logging.INFO, logger="streamkit")
    async with open_server(_serve(lambda request: EventSourceResponse(_ticks))) as server:
        async with open_stream(server, "/feed") as client:
            assert (await client.read_event()).data == "tick"
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    (line,) = [r.getMessage() for r in caplog.records if "ended" in r.getMessage()]
    # "stream /clock ended: client_disconnected after 4.356 s, 5 items, 349 bytes"
    assert re.fullmatch(
        r"stream /feed ended: client_disconnected after [\d.]+ s, 1 items, \d+ bytes", line
    ), line


# docs/heartbeats.md


@pytest.mark.parametrize(
    ("response", "heartbeat"),
    [(0, b": keep-alive\n\n"), (1, b"\n"), (2, b"\n")],
    ids=["sse", "ndjson", "bytes"],
)
async def test_heartbeats_are_written_to_a_silent_stream_as_printed(
    anyio_backend: str, response: int, heartbeat: bytes
) -> None:
    # The page's 5 s and 10 s, shortened: a heartbeat comes after the interval of silence.
    source = snippet("docs/heartbeats.md", 0)
    source = source.replace("=5.0", "=0.05").replace("=10.0", "=0.05")
    names = {**vars(streamkit), "produce": _ticks, "rows": _ticks, "chunks": _ticks}
    made = _values(source, names)[response]
    async with open_server(_serve(lambda request: made)) as server:
        async with open_stream(server, "/feed") as client:
            received = b""
            with anyio.fail_after(5):
                while received.count(heartbeat) < 2 + (response == 1):
                    chunk = await client.receive_chunk()
                    assert chunk is not None
                    received += chunk
    assert b"tick" in received


@pytest.mark.parametrize(
    ("page", "index", "interval"),
    [
        ("docs/heartbeats.md", 1, "heartbeat_interval=10.0"),
        ("docs/migrating.md", 2, "heartbeat_interval=5.0"),
    ],
    ids=["heartbeats", "migrating"],
)
async def test_ping_event_carries_the_time_a_page_parses(
    anyio_backend: str, page: str, index: int, interval: str
) -> None:
    import time

    # The page's interval, shortened: the ping comes after that much silence.
    source = _source(page, index, replace={interval: "heartbeat_interval=0.05"})
    names = _names(time=time, produce=_ticks, generate=lambda: _silent_after("tick"))
    response = _values(source, names)[-1]
    async with open_server(_serve(lambda request: response)) as server:
        async with open_stream(server, "/feed") as client:
            with anyio.fail_after(5):
                # A ping may come first: 50 ms of silence before the first item, on a loaded
                # machine.
                first = await client.read_event()
                while first.event == "ping":
                    first = await client.read_event()
                assert first.data == "tick"
                ping = await client.read_event()
    assert ping.event == "ping"
    assert isinstance(json.loads(ping.data)["at"], float)  # JSON.parse(event.data).at


async def _silent_after(*items: Any) -> AsyncIterator[Any]:
    for item in items:
        yield item
    await anyio.sleep_forever()


# docs/deadlines-and-shutdown.md


class _Event:
    def __init__(self, number: int) -> None:
        self.number = number
        self.text = f"event {number}"


async def _events_since(after: int) -> AsyncIterator[_Event]:
    """Three events of a log, those after *after*, then nothing new."""
    for number in range(after + 1, 4):
        yield _Event(number)
    await anyio.sleep_forever()


@pytest.mark.parametrize(
    ("last_event_id", "first"), [(None, 1), ("2", 3), ("²", 1)], ids=["none", "2", "superscript"]
)
async def test_deadlines_stream_ends_with_a_retry_and_resumes_from_last_event_id(
    anyio_backend: str, last_event_id: str | None, first: int
) -> None:
    produce = _run("docs/deadlines-and-shutdown.md", 1, events_since=_events_since).produce
    # The page's 300 s, shortened: the deadline comes while the producer waits.
    source = snippet("docs/deadlines-and-shutdown.md", 0).replace("300.0", "0.3")
    (response,) = _values(source, {**vars(streamkit), "produce": produce})
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    async with open_server(_serve(lambda request: response)) as server:
        async with open_stream(server, "/feed", headers=headers) as client:
            with anyio.fail_after(5):
                events = [event async for event in client.events()]
        end = await server.wait_ended(EndReason.DEADLINE, within=DISCONNECT_BOUND)
    *sent, deadline = events
    assert [event.id for event in sent] == [str(n) for n in range(first, 4)]
    assert (deadline.event, deadline.data, deadline.retry) == ("deadline", "", 500)
    assert end.path == "/feed"


# docs/cleanup.md


def _upstream_app() -> Starlette:
    """An upstream of lines: one, then silence until its client leaves."""

    async def lines(request: Request) -> Response:
        return streamkit.StreamResponse(_ticks_line)

    return Starlette(routes=[Route("/lines", lines)])


async def _ticks_line(send: StreamSender[Any]) -> None:
    await send("line 1\n")
    await anyio.sleep_forever()


async def test_cleanup_registered_on_send_runs_when_the_client_leaves(
    anyio_backend: str,
) -> None:
    written: list[str] = []

    class AuditLog:
        async def write(self, entry: str) -> None:
            await anyio.sleep(0.01)  # an await: it completes only if it runs shielded
            written.append(entry)

    async with open_server(_upstream_app()) as upstream, httpx.AsyncClient() as client:
        page = _run(
            "docs/cleanup.md", 0, client=client, url=f"{upstream.url}/lines", audit_log=AuditLog()
        )
        async with open_server(_serve(lambda request: EventSourceResponse(page.produce))) as server:
            async with open_stream(server, "/feed") as reader:
                with anyio.fail_after(5):
                    assert (await reader.read_event()).data == "line 1"
            end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
            # The upstream's response was closed: its server heard its client leave.
            await upstream.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert written == ["stream ended"]
    assert end.cleanup_duration is not None
    assert end.cleanup_duration >= 0.009  # the audit's 10 ms, less a timer's slack: it ran


async def test_cleanup_shielded_in_a_generators_finally_runs_to_its_end(anyio_backend: str) -> None:
    closed = anyio.Event()

    class Upstream:
        """A token, then silence; its close awaits, as a real connection's does."""

        def __aiter__(self) -> AsyncIterator[str]:
            return _silent_after("first")

        async def aclose(self) -> None:
            await anyio.sleep(0.01)  # an await: it completes only if it runs shielded
            closed.set()

    async def open_upstream() -> Upstream:
        return Upstream()

    page = _run("docs/cleanup.md", 1, open_upstream=open_upstream)
    async with open_server(_serve(lambda request: EventSourceResponse(page.body()))) as server:
        async with open_stream(server, "/feed") as reader:
            with anyio.fail_after(5):
                assert (await reader.read_event()).data == "first"
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert closed.is_set()


# docs/client.md

#: The host the client page's examples follow, replaced by the test's server.
PRICES = "http://prices.internal"


def _prices_app(broker: Any) -> Starlette:
    """The topic the client page follows, served from *broker*'s ``eur-usd``."""

    async def topic(request: Request) -> Response:
        return streamkit.broadcast.topic_response(broker, "eur-usd")

    return Starlette(routes=[Route("/topics/eur-usd", topic)])


async def test_client_prints_each_event_of_a_topic(anyio_backend: str) -> None:
    printed: list[tuple[Any, ...]] = []
    two_printed = anyio.Event()

    def record(*values: Any) -> None:
        printed.append(values)
        if len(printed) == 2:
            two_printed.set()

    async with streamkit.broadcast.MemoryBroker() as broker:
        async with open_server(_prices_app(broker)) as server, anyio.create_task_group() as tg:
            source = snippet("docs/client.md", 0).replace(PRICES, server.url)
            code = compile(source, "client.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            namespace: dict[str, Any] = {"print": record}
            tg.start_soon(eval, code, namespace)
            await until(lambda: broker.statistics().subscribers == 1)
            await broker.publish("eur-usd", ServerSentEvent(data="1.08"))
            await broker.publish("eur-usd", ServerSentEvent(event="tick", data="1.09"))
            with anyio.fail_after(5):
                await two_printed.wait()
            tg.cancel_scope.cancel()
    (first_id, first_event, first_data), (_, second_event, second_data) = printed
    assert (first_event, first_data) == (None, "1.08")
    assert (second_event, second_data) == ("tick", "1.09")
    assert first_id


async def test_client_follow_reloads_at_a_reset_and_resumes_from_its_last_id(
    anyio_backend: str,
) -> None:
    class PriceView:
        def __init__(self, last_id: str | None) -> None:
            self.last_id = last_id
            self.reloads = 0
            self.prices: list[str] = []
            self.applied = anyio.Event()

        async def reload(self) -> None:
            self.reloads += 1

        def apply(self, data: str) -> None:
            self.prices.append(data)
            if data == "1.09":
                self.applied.set()

    async with streamkit.broadcast.MemoryBroker() as broker:
        async with open_server(_prices_app(broker)) as server, httpx.AsyncClient() as http:
            first = await broker.publish("eur-usd", ServerSentEvent(data="1.07"))
            await broker.publish("eur-usd", ServerSentEvent(data="1.08"))
            page = _run("docs/client.md", 1, replace={PRICES: server.url}, PriceView=PriceView)
            resumed, gone = PriceView(last_id=first), PriceView(last_id="no-such-id")
            async with anyio.create_task_group() as tg:
                tg.start_soon(page.follow, http, resumed)
                tg.start_soon(page.follow, http, gone)
                # Published once the view that came with an unknown id has reloaded: a reset
                # stands for the topic as it is when the reset is made, 1.09 included if
                # it was published by then.
                await until(lambda: gone.reloads == 1)
                third = await broker.publish("eur-usd", ServerSentEvent(data="1.09"))
                with anyio.fail_after(5):
                    await resumed.applied.wait()
                    await gone.applied.wait()
                tg.cancel_scope.cancel()
    # Resumed after its last id: the event it had not seen, and nothing again.
    assert (resumed.prices, resumed.reloads) == (["1.08", "1.09"], 0)
    # An id the topic does not know: a reset, the view reloaded, then what comes.
    assert (gone.prices, gone.reloads) == (["1.09"], 1)
    assert resumed.last_id == gone.last_id == third


async def test_client_proxy_resumes_its_upstream_from_the_browsers_last_event_id(
    anyio_backend: str,
) -> None:
    async with streamkit.broadcast.MemoryBroker() as broker:
        async with open_server(_prices_app(broker)) as upstream, httpx.AsyncClient() as http:
            page = _run("docs/client.md", 2, replace={PRICES: upstream.url})
            proxy = Starlette(routes=[Route("/prices", page.prices)])
            proxy.state.http = http
            first = await broker.publish("eur-usd", ServerSentEvent(data="1.07"))
            await broker.publish("eur-usd", ServerSentEvent(data="1.08"))
            async with open_server(proxy) as server:
                # A browser that saw the first event comes back: the upstream resumes after it.
                headers = {"Last-Event-ID": first}
                async with open_stream(server, "/prices", headers=headers) as browser:
                    with anyio.fail_after(5):
                        event = await browser.read_event()
                end = await server.wait_ended(
                    EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND
                )
                await upstream.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert event.data == "1.08"
    assert end.path == "/prices"


async def test_client_ndjson_sends_the_last_items_id_when_it_connects_again(
    anyio_backend: str,
) -> None:
    sent_ids: list[str | None] = []

    async def export(request: Request) -> Response:
        resumed = request.headers.get("last-event-id")
        sent_ids.append(resumed)
        if resumed is not None:
            return Response(status_code=204)  # the server's word to stop

        async def rows(send: StreamSender[Any]) -> None:
            await send({"seq": 1})
            await send({"seq": 2})

        return streamkit.NDJSONResponse(rows)

    received: list[Any] = []
    async with open_server(Starlette(routes=[Route("/rows", export)])) as server:
        url = f"{server.url}/rows"
        source = snippet("docs/client.md", 3).replace("...", "received.append(row)")
        code = compile(source, "client.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        names = {"open_ndjson_stream": streamkit.client.open_ndjson_stream, "url": url}
        with anyio.fail_after(5):
            await eval(code, {**names, "received": received})
    # The first connection ended: the next one (after the backoff's first second) sent the
    # last item's id, and was told to stop.
    assert received == [{"seq": 1}, {"seq": 2}]
    assert sent_ids == [None, "2"]


# docs/testing.md


async def _count(send: StreamSender[Any]) -> None:
    """A feed of 0, 1, 2, ... that goes on until its client leaves."""
    number = 0
    while True:
        await send(str(number))
        number += 1
        await anyio.sleep(0.01)


def _feed_app(*paths: str) -> Starlette:
    async def feed(request: Request) -> Response:
        return EventSourceResponse(_count)

    return Starlette(routes=[Route(path, feed) for path in paths])


async def test_testing_first_test_passes_against_a_feed(anyio_backend: str) -> None:
    page = _run("docs/testing.md", 0, app=_feed_app("/feed"))
    await page.test_leaving_cancels_the_feed()


async def test_testing_h2_streams_on_one_connection(anyio_backend: str) -> None:
    from streamkit.testing import open_h2_connection

    source = snippet("docs/testing.md", 1)
    code = compile(source, "testing.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    async with open_server(_feed_app("/a", "/b")) as server:
        with anyio.fail_after(5):
            await eval(code, {"open_h2_connection": open_h2_connection, "server": server})
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert end.path == "/a"


async def test_testing_fake_connection_blocks_hold(anyio_backend: str) -> None:
    from streamkit.testing import FakeConnection

    for index in (2, 3):
        source = snippet("docs/testing.md", index)
        code = compile(source, "testing.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        names = {
            "FakeConnection": FakeConnection,
            "EventSourceResponse": EventSourceResponse,
            "Request": Request,
            "produce": _count,
        }
        with anyio.fail_after(5):
            await eval(code, names)


# docs/migrating.md


async def test_migrating_bytes_upstream_is_closed_when_the_client_leaves(
    anyio_backend: str,
) -> None:
    async with open_server(_upstream_app()) as upstream:
        page = _run("docs/migrating.md", 0, httpx=httpx, UPSTREAM=f"{upstream.url}/lines")
        app = Starlette(routes=[Route("/numbers", page.numbers)])
        async with open_server(app) as server:
            async with open_stream(server, "/numbers") as client:
                with anyio.fail_after(5):
                    assert await client.receive_chunk() == b"line 1\n"
            await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
            await upstream.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)


async def test_migrating_dict_items_are_the_same_events_and_stop_when_the_client_leaves(
    anyio_backend: str,
) -> None:
    ids = iter(range(1, 100))
    page = _run(
        "docs/migrating.md",
        1,
        replace={"anyio.sleep(1)": "anyio.sleep(0.01)"},  # the page's second, shortened
        anyio=anyio,
        next_id=lambda: str(next(ids)),
        read_message=lambda: "hello",
    )
    async with open_server(Starlette(routes=[Route("/messages", page.messages)])) as server:
        async with open_stream(server, "/messages") as client:
            with anyio.fail_after(5):
                first, second = await client.read_event(), await client.read_event()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert (first.event, first.id, first.retry, first.data) == ("new_message", "1", 15000, "hello")
    assert second.id == "2"


async def test_migrating_cursor_is_closed_and_the_end_logged_once(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    from contextlib import asynccontextmanager

    closed = anyio.Event()

    @asynccontextmanager
    async def open_cursor() -> AsyncIterator[AsyncIterator[str]]:
        try:
            yield _silent_after("row 1")
        finally:
            await anyio.sleep(0.01)  # an await: it completes only if it runs shielded
            closed.set()

    logger = logging.getLogger("app")
    caplog.set_level(logging.INFO, logger="app")
    names = _names(open_cursor=open_cursor, logger=logger)
    (response,) = _values(_source("docs/migrating.md", 3), names)
    async with open_server(_serve(lambda request: response)) as server:
        async with open_stream(server, "/feed") as client:
            with anyio.fail_after(5):
                assert (await client.read_event()).data == "row 1"
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert closed.is_set()
    assert [r.getMessage() for r in caplog.records if r.name == "app"] == [
        "ended: client_disconnected"
    ]


async def test_migrating_producer_sends_its_ten_events(anyio_backend: str) -> None:
    page = _run("docs/migrating.md", 4)
    async with open_server(_serve(lambda request: EventSourceResponse(page.produce))) as server:
        async with open_stream(server, "/feed") as client:
            with anyio.fail_after(5):
                events = [event async for event in client.events()]
        await server.wait_ended(EndReason.COMPLETED, within=DISCONNECT_BOUND)
    assert [event.data for event in events] == [str(n) for n in range(10)]


async def test_migrating_shutdown_sends_the_farewell_and_cancels_the_producer(
    anyio_backend: str,
) -> None:
    prices = iter(range(100))

    async def next_price() -> int:
        await anyio.sleep(0.01)
        return next(prices)

    (response,) = _values(_source("docs/migrating.md", 5), _names(next_price=next_price))
    async with open_server(_serve(lambda request: response)) as server:
        async with open_stream(server, "/feed") as client:
            with anyio.fail_after(5):
                assert (await client.read_event()).data == "0"
                async with anyio.create_task_group() as tg:
                    tg.start_soon(server.shutdown)
                    events = [event async for event in client.events()]
        end = await server.wait_ended(EndReason.SHUTDOWN, within=DISCONNECT_BOUND)
    bye = events[-1]
    assert (bye.event, bye.data, bye.retry) == ("bye", "", 2000)
    assert end.path == "/feed"


async def test_migrating_fastapi_routes_stream_as_the_page_says(anyio_backend: str) -> None:
    from fastapi import FastAPI
    from pydantic import BaseModel

    class Item(BaseModel):
        name: str

    class Prompt(BaseModel):
        text: str

    class Token(BaseModel):
        text: str

    class Row(BaseModel):
        id: int

    async def numbered_lines() -> AsyncIterator[tuple[int, str]]:
        for n, line in enumerate(['{"not": "json"}', "plain"], start=1):
            yield n, line

    async def complete(prompt: Prompt) -> AsyncIterator[Token]:
        for word in prompt.text.split():
            yield Token(text=word)

    async def rows() -> AsyncIterator[Row]:
        for id_ in (1, 2):
            yield Row(id=id_)

    from collections.abc import AsyncIterable

    import fastapi.sse

    app = FastAPI()
    names = _names(
        app=app,
        # The "before" of the log's block makes fastapi's events (raw_data is theirs alone).
        ServerSentEvent=fastapi.sse.ServerSentEvent,
        AsyncIterable=AsyncIterable,
        Item=Item,
        ITEMS=[Item(name="a"), Item(name="b")],
        numbered_lines=numbered_lines,
        Prompt=Prompt,
        Token=Token,
        complete=complete,
        Row=Row,
        rows=rows,
    )
    for index in (6, 7, 8, 9):
        exec(compile(_source("docs/migrating.md", index), "migrating.md", "exec"), names)
    async with open_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        items = await http.get("/items")
        log = await http.get("/log")
        chat = await http.post("/chat", json={"text": "hello there"})
        export = await http.get("/export")
    assert items.headers["content-type"].startswith("text/event-stream")
    assert [line for line in items.text.splitlines() if line.startswith("data:")] == [
        'data: {"name":"a"}',
        'data: {"name":"b"}',
    ]
    # "a str is sent as it is"
    assert 'event: line\nid: 1\ndata: {"not": "json"}\n' in log.text
    assert "data: plain\n" in log.text
    assert [line for line in chat.text.splitlines() if line.startswith("data:")] == [
        'data: {"text":"hello"}',
        'data: {"text":"there"}',
    ]
    assert export.headers["content-type"] == "application/x-ndjson"
    assert export.text.splitlines() == ['{"id":1}', '{"id":2}']


# docs/resources.md


async def test_resources_llm_proxy_forwards_tokens_and_aborts_the_upstream(
    anyio_backend: str,
) -> None:
    asked: list[Any] = []

    async def model(request: Request) -> Response:
        asked.append(await request.json())

        async def tokens(send: StreamSender[Any]) -> None:
            await send(ServerSentEvent(data=json.dumps({"token": "Hello"})))
            await anyio.sleep_forever()

        return EventSourceResponse(tokens)

    def token(event: Any) -> str:
        text: str = json.loads(event.data)["token"]
        return text

    llm = Starlette(routes=[Route("/v1/chat", model, methods=["POST"])])
    async with open_server(llm) as upstream, httpx.AsyncClient() as http:
        page = _run(
            "docs/resources.md",
            1,
            replace={"[...]": '[{"role": "user", "content": "Hi"}]'},  # the reader's messages
            LLM_URL=f"{upstream.url}/v1/chat",
            token=token,
        )
        app = Starlette(routes=[Route("/chat", page.chat)])
        app.state.http = http
        async with open_server(app) as server:
            async with open_stream(server, "/chat") as client:
                with anyio.fail_after(5):
                    first = await client.read_event()
            await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
            await upstream.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert first.data == "Hello"
    assert asked == [{"stream": True, "messages": [{"role": "user", "content": "Hi"}]}]


async def test_resources_tail_sends_the_logs_lines_and_stops_when_the_client_leaves(
    anyio_backend: str, tmp_path: Any
) -> None:
    log = tmp_path / "app.log"
    log.write_text("one\ntwo\n")
    page = _run("docs/resources.md", 2, LOG=str(log))
    async with open_server(Starlette(routes=[Route("/tail", page.tail)])) as server:
        async with open_stream(server, "/tail") as client:
            with anyio.fail_after(5):
                lines = [(await client.read_event()).data for _ in range(2)]
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert lines == ["one", "two"]
    assert end.exception is None


async def test_resources_sqlite_export_sends_the_rows_as_ndjson(
    anyio_backend: str, tmp_path: Any
) -> None:
    import sqlite3

    database = tmp_path / "shop.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        connection.executemany("INSERT INTO orders VALUES (?, ?)", [(1, "a"), (2, "b"), (3, "c")])
    connection.close()
    page = _run("docs/resources.md", 3, replace={'"shop.db"': repr(str(database))}, since=1)
    async with open_server(Starlette(routes=[Route("/export", page.export)])) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            export = await http.get("/export")
        await server.wait_ended(EndReason.COMPLETED, within=DISCONNECT_BOUND)
    assert export.headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line) for line in export.text.splitlines()] == [
        {"id": 2, "item": "b"},
        {"id": 3, "item": "c"},
    ]


async def test_resources_download_sends_the_file_or_a_404(
    anyio_backend: str, tmp_path: Any
) -> None:
    present = tmp_path / "present.bin"
    present.write_bytes(b"x" * 100_000)
    served = {"/present": present, "/absent": tmp_path / "absent.bin"}

    async def download(request: Request) -> Response:
        page = _run("docs/resources.md", 5, path=served[request.url.path])
        response: Response = await page.download(request)
        return response

    app = Starlette(routes=[Route(path, download) for path in served])
    async with open_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        found = await http.get("/present")
        missing = await http.get("/absent")
    assert (found.status_code, found.content) == (200, present.read_bytes())
    assert (missing.status_code, missing.text) == (404, "no such file")


async def test_resources_background_audit_runs_after_the_viewer_left(anyio_backend: str) -> None:
    from starlette.background import BackgroundTask

    viewers: set[str] = set()
    happened: list[str] = []
    audited = anyio.Event()

    async def leave(viewer: str) -> None:
        viewers.discard(viewer)
        happened.append("leave")

    class AuditLog:
        async def write(self, **entry: str) -> None:
            happened.append(f"audit {entry}")
            audited.set()

    page = _run(
        "docs/resources.md",
        6,
        replace={
            "        ...\n": "        await send('hi')\n        await anyio.sleep_forever()\n"
        },
        anyio=anyio,
        BackgroundTask=BackgroundTask,
        viewers=viewers,
        viewer="ada",
        leave=leave,
        audit_log=AuditLog(),
    )
    async with open_server(Starlette(routes=[Route("/feed", page.feed)])) as server:
        async with open_stream(server, "/feed") as client:
            with anyio.fail_after(5):
                assert (await client.read_event()).data == "hi"
            assert viewers == {"ada"}
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
        with anyio.fail_after(5):
            await audited.wait()
    assert viewers == set()
    assert happened == ["leave", "audit {'viewer': 'ada', 'reason': 'client_disconnected'}"]


# docs/fallbacks.md


class _Source:
    """A quote source that answers at once, or, once made slow, when released."""

    def __init__(self) -> None:
        self.slow = False
        self.released = anyio.Event()
        self.calls = 0

    async def __call__(self, symbol: str) -> dict[str, Any]:
        self.calls += 1
        if self.slow:
            await self.released.wait()
        return {"symbol": symbol, "price": self.calls}


async def test_fallbacks_get_is_fresh_then_stale_as_printed(anyio_backend: str) -> None:
    source = _Source()
    code = compile(
        _source(
            "docs/fallbacks.md",
            1,
            replace={"    ...  # usually 50 ms, sometimes 10 s": "    return await source(symbol)"},
        ),
        "fallbacks.md",
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
    )
    names: dict[str, Any] = {"streamkit": streamkit, "source": source}
    with anyio.fail_after(5):
        await eval(code, names)
    fresh = names["result"]
    assert (fresh.value, fresh.from_cache, fresh.stale) == (
        {"symbol": "ACME", "price": 1},
        False,
        False,
    )
    source.slow = True
    with anyio.fail_after(5):
        stale = await names["quotes"].get("ACME")  # the block's call again, the source slow
    assert (stale.value, stale.from_cache, stale.stale) == (fresh.value, True, True)
    assert stale.age >= 0.5  # fetched before this call's half-second wait


async def test_fallbacks_endpoint_with_a_refresher_serves_stale_then_the_late_fetch(
    anyio_backend: str,
) -> None:
    source = _Source()
    names: dict[str, Any] = {"streamkit": streamkit, "fetch_quote": source, "Route": Route}
    # The endpoint of "Serving it from an endpoint", in the app of "Refreshing in the
    # background": its routes are the reader's.
    starlette_half = snippet("docs/fallbacks.md", 4).split("\n\n")[0]
    exec(starlette_half, names)
    app_block = _source(
        "docs/fallbacks.md", 2, replace={"routes=[...]": 'routes=[Route("/quote/{symbol}", quote)]'}
    )
    exec(app_block, names)
    refresher = names["refresher"]
    async with open_server(names["app"]) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            fresh = await http.get("/quote/ACME")
            source.slow = True
            stale = await http.get("/quote/ACME")
            # The fetch that missed the deadline carries on in the refresher, and lands.
            source.released.set()
            with anyio.fail_after(5):
                await refresher.wait_idle()
            source.released = anyio.Event()
            refreshed = await http.get("/quote/ACME")
    assert (fresh.status_code, fresh.headers["x-cache"], fresh.json()["price"]) == (200, "miss", 1)
    assert (stale.status_code, stale.headers["x-cache"], stale.json()["price"]) == (200, "stale", 1)
    assert "age" in stale.headers
    # Served stale again: the value the late fetch stored.
    assert (refreshed.headers["x-cache"], refreshed.json()["price"]) == ("stale", 2)


async def test_fallbacks_fastapi_endpoint_flags_the_cache(anyio_backend: str) -> None:
    from fastapi import FastAPI
    from fastapi.responses import Response as FastAPIResponse

    source = _Source()
    api = FastAPI()
    # The Fallback of the page's first example (up to its call), served from FastAPI.
    made = _source(
        "docs/fallbacks.md",
        1,
        replace={"    ...  # usually 50 ms, sometimes 10 s": "    return await source(symbol)"},
    ).split("\nresult = ")[0]
    names = {"source": source, "api": api, "Response": FastAPIResponse}
    exec(made, names)
    exec(snippet("docs/fallbacks.md", 4), names)
    async with open_server(api) as server, httpx.AsyncClient(base_url=server.url) as http:
        fresh = await http.get("/quote/ACME")
        source.slow = True
        stale = await http.get("/quote/ACME")
    assert (fresh.headers["x-cache"], fresh.json()) == (
        "miss",
        {"symbol": "ACME", "price": 1, "cache": False},
    )
    assert (stale.headers["x-cache"], stale.json()["cache"]) == ("stale", True)


# docs/stalled-clients.md


async def test_stalled_client_ends_the_stream_at_send_timeout(anyio_backend: str) -> None:
    async def produce(send: StreamSender[Any]) -> None:
        while True:
            await send("x" * 1000)

    # The page's 5 s, shortened.
    source = _source("docs/stalled-clients.md", 0, replace={"send_timeout=5.0": "send_timeout=0.3"})
    (response,) = _values(source, _names(produce=produce))
    async with open_server(_serve(lambda request: response)) as server:
        async with open_stream(server, "/feed", receive_buffer=4096) as client:
            with anyio.fail_after(5):
                await client.read_event()
            client.stall()
            end = await server.wait_ended(EndReason.SEND_TIMEOUT, within=5.0)
    assert end.path == "/feed"


# docs/http2.md


async def test_http2_tls_config_serves_http2_and_http11_on_one_port(
    anyio_backend: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from support.certificates import make_certificates

    certificates = make_certificates(tmp_path)  # server.pem and server-key.pem, as printed
    monkeypatch.chdir(tmp_path)
    # Imported, not run as a script: the server is the test's, given the block's TLSConfig.
    page = _run("docs/http2.md", 0, app=None, __name__="service")
    app = _serve(lambda request: EventSourceResponse(_one_tick()))
    context = certificates.client_context()
    async with open_server(app, tls=page.tls) as server:
        for http2, version in ((True, "HTTP/2"), (False, "HTTP/1.1")):
            async with httpx.AsyncClient(http2=http2, verify=context) as http:
                response = await http.get(f"{server.url}/feed")
            assert (response.http_version, response.text) == (version, "data: tick\n\n")


async def _one_tick() -> AsyncIterator[str]:
    yield "tick"
