"""FastAPI path operations streaming with streamkit, through real hypercorn on asyncio and trio:
each way of declaring them, their OpenAPI document, JSON data, visible pings, and a client that
leaves a generator path operation.

Bounds are generous (a loaded 2-core machine); the measured figures are printed (``-rP``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from fastapi import APIRouter, Depends, FastAPI, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.requests import Request
from support import browser

from streamkit import (
    App,
    EndReason,
    EventSourceResponse,
    NDJSONResponse,
    ServerSentEvent,
    StreamResponse,
    StreamSender,
    shielded_cleanup,
)
from streamkit.fastapi import StreamingRoute, mount_app
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: A generator path operation's cleanup must have finished within this once the client left,
#: before the stream's end is reported (measured: a few ms).
CLEANUP_BOUND = 1.0


class Tick(BaseModel):
    n: int
    at: float


@dataclass(frozen=True)
class Row:
    id: int
    tags: list[str]


class Probe:
    def __init__(self) -> None:
        self.yielded = 0
        self.flooding = anyio.Event()
        self.cleaned: list[str] = []


def ping() -> ServerSentEvent:
    return ServerSentEvent(event="ping", data={"at": time.time()})


def fastapi_app(probe: Probe) -> FastAPI:
    streams = App(heartbeat_interval=None)

    @streams.sse("/mixed")
    async def mixed(request: Request) -> AsyncIterator[Any]:
        yield {"event": "greeting", "data": "hello", "id": "1"}  # sse-starlette's item
        yield {"nested": {"list": [1, 2]}}  # not all event fields: JSON data
        yield Row(id=2, tags=["a"])

    app = FastAPI(lifespan=streams.lifespan)
    app.router.route_class = StreamingRoute
    mount_app(app, "/app", streams)

    @app.get("/ticks", response_class=EventSourceResponse.with_options(send_timeout=5.0))
    async def ticks(start: int = 0, count: int = 3) -> AsyncIterator[Tick]:
        for n in range(start, start + count):
            yield Tick(n=n, at=1.5)

    @app.get("/rows", response_class=NDJSONResponse)
    async def rows() -> AsyncIterator[Row]:
        for n in range(3):
            yield Row(id=n, tags=["x"] * n)

    @app.get("/returned")
    async def returned() -> EventSourceResponse:
        async def produce(send: StreamSender[Any]) -> None:
            try:
                await send(ServerSentEvent(data={1j}))
            except TypeError as exc:
                await send(ServerSentEvent(event="refused", data=str(exc)))
            await send(ServerSentEvent(event="model", data=Tick(n=9, at=0.5)))

        return EventSourceResponse(produce)

    @app.get("/broken", response_class=NDJSONResponse)
    async def broken() -> AsyncIterator[Any]:
        yield {"ok": 1}
        yield {"when": object()}

    @app.get(
        "/quiet",
        response_class=EventSourceResponse.with_options(
            heartbeat_interval=0.1, heartbeat_event=ping
        ),
    )
    async def quiet() -> AsyncIterator[Tick]:
        await anyio.sleep_forever()
        yield Tick(n=0, at=0)  # never reached

    @app.get("/waiting", response_class=EventSourceResponse)
    async def waiting() -> AsyncIterator[str]:
        try:
            yield "started"
            await anyio.sleep_forever()  # an upstream that sends nothing
            yield "never"
        finally:
            with shielded_cleanup(2.0):
                await anyio.sleep(0.01)  # closing the upstream
                probe.cleaned.append("waiting")

    @app.get("/flood", response_class=EventSourceResponse.with_options(heartbeat_interval=None))
    async def flood() -> AsyncIterator[str]:
        try:
            while True:
                probe.yielded += 1
                if probe.yielded == 8:
                    probe.flooding.set()
                yield "x" * 65536
        finally:
            with shielded_cleanup(2.0):
                await anyio.sleep(0.01)
                probe.cleaned.append("flood")

    @app.get("/ticking", response_class=EventSourceResponse.with_options(heartbeat_interval=None))
    async def ticking() -> AsyncIterator[Tick]:
        # A declared item type: its items are validated and serialized on their way.
        try:
            while True:
                probe.yielded += 1
                if probe.yielded == 8:
                    probe.flooding.set()
                yield Tick(n=probe.yielded, at=0.5)
        finally:
            with shielded_cleanup(2.0):
                await anyio.sleep(0.01)
                probe.cleaned.append("ticking")

    def tagged(response: Response) -> None:
        response.headers["x-tag"] = "tagged"
        response.set_cookie("seen", "1")

    def accepting(response: Response) -> None:
        response.status_code = 202

    @app.get(
        "/created",
        status_code=201,
        response_class=EventSourceResponse,
        dependencies=[Depends(tagged)],
    )
    async def created() -> AsyncIterator[str]:
        yield "made"

    @app.get("/accepted", response_class=NDJSONResponse, dependencies=[Depends(accepting)])
    async def accepted(response: Response) -> AsyncIterator[int]:
        yield response.status_code or 0

    # FastAPI's own route class: the generator still streams (but see StreamingRoute's docs).
    plain = APIRouter()

    @plain.get("/ticks", response_class=EventSourceResponse)
    async def plain_ticks() -> AsyncIterator[Tick]:
        yield Tick(n=1, at=2.5)

    app.include_router(plain, prefix="/plain")

    @app.get("/page", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    return app


PAGE = """<!doctype html><html><body><script>
window.pings = [];
const source = new EventSource("/quiet");
source.addEventListener("ping", (event) => window.pings.push(JSON.parse(event.data).at));
</script></body></html>"""


async def test_each_declaration_style_streams_and_is_documented(anyio_backend: str) -> None:
    async with open_server(fastapi_app(Probe())) as server:
        async with open_stream(server, "/ticks?start=4&count=2") as client:
            assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
            ticks = [json.loads((await client.read_event()).data) for _ in range(2)]
            assert await client.read_all() == b""
        await server.wait_ended(EndReason.COMPLETED)
        async with open_stream(server, "/rows") as client:
            rows = [await client.read_item() for _ in range(3)]
        await server.wait_ended(EndReason.COMPLETED)
        async with open_stream(server, "/returned") as client:
            refused, model = await client.read_event(), await client.read_event()
        await server.wait_ended(EndReason.COMPLETED)
        async with open_stream(server, "/plain/ticks") as client:
            plain = json.loads((await client.read_event()).data)
        await server.wait_ended(EndReason.COMPLETED)
        async with open_stream(server, "/app/mixed") as client:
            mixed = [await client.read_event() for _ in range(3)]
        async with open_stream(server, "/openapi.json") as client:
            status, document = client.status, json.loads(await client.read_all())

    assert ticks == [{"n": 4, "at": 1.5}, {"n": 5, "at": 1.5}]
    assert plain == {"n": 1, "at": 2.5}
    assert rows == [{"id": 0, "tags": []}, {"id": 1, "tags": ["x"]}, {"id": 2, "tags": ["x", "x"]}]
    # An event whose data cannot be encoded raises at send(), naming the value.
    assert refused.event == "refused"
    assert "SSE data is not JSON-serialisable: {1j}" in refused.data
    assert (model.event, json.loads(model.data)) == ("model", {"n": 9, "at": 0.5})
    assert [(e.event, e.id, e.data) for e in mixed] == [
        ("greeting", "1", "hello"),
        (None, None, '{"nested":{"list":[1,2]}}'),
        (None, None, '{"id":2,"tags":["a"]}'),
    ]
    assert status == 200
    paths = document["paths"]
    tick_item = paths["/ticks"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert tick_item["itemSchema"]["properties"]["data"]["contentSchema"] == {
        "$ref": "#/components/schemas/Tick"
    }
    row_content = paths["/rows"]["get"]["responses"]["200"]["content"]["application/x-ndjson"]
    assert row_content["itemSchema"] == {"$ref": "#/components/schemas/Row"}
    assert document["components"]["schemas"]["Row"]["properties"]["tags"]["type"] == "array"
    mixed_content = paths["/app/mixed"]["get"]["responses"]["200"]["content"]
    assert (
        "contentSchema"
        not in mixed_content["text/event-stream"]["itemSchema"]["properties"]["data"]
    )
    for path in ("/returned", "/plain/ticks"):
        assert list(paths[path]["get"]["responses"]["200"]["content"]) == ["text/event-stream"]


async def test_the_routes_status_and_the_injected_responses_headers_are_sent(
    anyio_backend: str,
) -> None:
    # As FastAPI sends its own generator path operations: the route's status_code, else the
    # one a dependency set on the injected Response, and that Response's headers and cookies.
    async with open_server(fastapi_app(Probe())) as server:
        async with open_stream(server, "/created") as client:
            created = client.status, client.headers, (await client.read_event()).data
        async with open_stream(server, "/accepted") as client:
            accepted = client.status, await client.read_item()
        async with open_stream(server, "/openapi.json") as client:
            document = json.loads(await client.read_all())
    status, headers, data = created
    assert (status, data) == (201, "made")
    assert headers["x-tag"] == "tagged"
    assert headers["set-cookie"].startswith("seen=1;")
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert accepted == (202, 202)
    assert list(document["paths"]["/created"]["get"]["responses"]) == ["201"]


async def test_an_item_that_cannot_be_encoded_ends_the_stream_cleanly_naming_it(
    anyio_backend: str,
) -> None:
    async with open_server(fastapi_app(Probe())) as server:
        async with open_stream(server, "/broken") as client:
            assert client.status == 200
            assert await client.read_item() == {"ok": 1}
            assert await client.read_all() == b""
        end = await server.wait_ended(EndReason.ERROR)
    assert "NDJSON item is not JSON-serialisable: {'when': <object" in str(end.exception)


@pytest.mark.parametrize("leave", ["close", "reset"])
@pytest.mark.parametrize("where", ["waiting", "flood", "ticking"])
async def test_a_client_leaving_a_generator_path_operation_closes_it_in_bound(
    anyio_backend: str, where: str, leave: str
) -> None:
    probe = Probe()
    async with open_server(fastapi_app(probe)) as server:
        async with open_stream(server, f"/{where}", receive_buffer=4096) as client:
            if where == "waiting":
                assert (await client.read_event()).data == "started"
            else:
                # The client reads nothing; the generator, which awaits nothing else, waits at
                # its yield while the producer sends (soon: for room in the buffer).
                with anyio.fail_after(10):
                    await probe.flooding.wait()
            left = anyio.current_time()
            await (client.close() if leave == "close" else client.reset())
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=CLEANUP_BOUND + 5)
        reported = anyio.current_time() - left
        # Cleaned before the end was reported: within the runtime's shielded cleanup.
        assert probe.cleaned == [where]
    print(f"{where}/{leave}: reported after {reported:.3f} s, cleanup {end.cleanup_duration:.3f} s")
    assert end.cleanup_duration < CLEANUP_BOUND
    assert reported < CLEANUP_BOUND


async def test_a_quiet_stream_sends_ping_events(anyio_backend: str) -> None:
    async with open_server(fastapi_app(Probe())) as server:
        async with open_stream(server, "/quiet") as client:
            first, second = await client.read_event(), await client.read_event()
            await client.close()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert (first.event, second.event) == ("ping", "ping")
    assert json.loads(first.data)["at"] < json.loads(second.data)["at"]


@pytest.fixture
def chromium() -> str:
    return browser.require_chromium()


async def test_a_page_sees_the_ping_events_of_a_quiet_stream(
    chromium: str, anyio_backend: str
) -> None:
    async with open_server(fastapi_app(Probe())) as server:
        async with browser.open_browser(chromium) as chrome:
            page = await chrome.open_page(f"{server.url}/page")
            pings = await page.wait_for("window.pings.length >= 2 && window.pings", within=15)
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert pings[0] < pings[1]


class Aliased(BaseModel):
    tick_number: int = Field(alias="tickNumber")
    inner: Tick


async def test_a_models_items_are_sent_as_the_openapi_document_describes_them(
    anyio_backend: str,
) -> None:
    # By alias, as FastAPI sends its own generators' items and as the schema names them.
    app = FastAPI()
    app.router.route_class = StreamingRoute
    item = Aliased(tickNumber=1, inner=Tick(n=2, at=0.5))

    @app.get("/events", response_class=EventSourceResponse)
    async def events() -> AsyncIterator[Aliased]:
        yield item

    @app.get("/rows", response_class=NDJSONResponse)
    async def rows() -> AsyncIterator[Aliased]:
        yield item

    def wrapping(value: Any) -> str:
        return json.dumps({"encoded": value})

    @app.get("/wrapped", response_class=NDJSONResponse.with_options(json_encoder=wrapping))
    async def wrapped() -> AsyncIterator[Aliased]:
        yield item

    @app.get("/undeclared", response_class=NDJSONResponse)
    async def undeclared() -> AsyncIterator[Any]:
        yield item

    async with open_server(app) as server:
        async with open_stream(server, "/events") as client:
            event = json.loads((await client.read_event()).data)
        async with open_stream(server, "/rows") as client:
            row = await client.read_item()
        async with open_stream(server, "/wrapped") as client:
            encoded = await client.read_item()  # the user's encoder encodes it
        async with open_stream(server, "/undeclared") as client:
            undeclared = await client.read_item()
        async with open_stream(server, "/openapi.json") as client:
            document = json.loads(await client.read_all())
    described = document["components"]["schemas"]["Aliased"]["properties"]
    assert set(event) == set(row) == set(described) == {"tickNumber", "inner"}
    assert event == row == {"tickNumber": 1, "inner": {"n": 2, "at": 0.5}}
    assert encoded == {"encoded": row}
    assert undeclared == row


class Public(BaseModel):
    name: str


class Stored(Public):
    password: str


class Sparse(Public):
    nickname: str | None = None


async def test_items_are_sent_as_their_declared_type_leaving_out_what_it_does_not_declare(
    anyio_backend: str,
) -> None:
    # As FastAPI filters a response model, and its own generators' items: a subclass's fields
    # and a dict's other keys are not sent. An item that is not one ends the stream.
    app = FastAPI()
    app.router.route_class = StreamingRoute

    @app.get("/events", response_class=EventSourceResponse)
    async def events() -> AsyncIterator[Public]:
        # Dicts too, as FastAPI takes them (not a Public to mypy).
        yield Stored(name="a", password="secret")
        yield {"event": "named", "data": "as it is"}  # type: ignore[misc]  # an event
        yield {"name": "b", "password": "secret"}  # type: ignore[misc]

    @app.get("/bytes", response_class=StreamResponse)
    async def raw() -> AsyncIterator[bytes]:
        yield b"\xff\x00"  # bytes are sent as they are: no JSON, no validation

    @app.get("/sparse", response_class=NDJSONResponse, response_model_exclude_none=True)
    async def sparse() -> AsyncIterator[Sparse]:
        yield Sparse(name="a")

    @app.get("/rows", response_class=NDJSONResponse)
    async def rows() -> AsyncIterator[Public]:
        yield Stored(name="a", password="secret")
        yield {"name": "b", "password": "secret"}  # type: ignore[misc]
        yield {"password": "secret"}  # type: ignore[misc]  # not a Public: no name

    async with open_server(app) as server:
        async with open_stream(server, "/events") as client:
            sent = [await client.read_event() for _ in range(3)]
        await server.wait_ended(EndReason.COMPLETED)
        async with open_stream(server, "/bytes") as client:
            assert await client.read_all() == b"\xff\x00"
        await server.wait_ended(EndReason.COMPLETED)
        async with open_stream(server, "/sparse") as client:
            sparse_sent = await client.read_item()  # the route's response_model_ options
        await server.wait_ended(EndReason.COMPLETED)
        async with open_stream(server, "/rows") as client:
            rows_sent = [await client.read_item() for _ in range(2)]
            assert await client.read_all() == b""
        end = await server.wait_ended(EndReason.ERROR)
    assert [(event.event, event.data) for event in sent] == [
        (None, '{"name":"a"}'),
        ("named", "as it is"),
        (None, '{"name":"b"}'),
    ]
    assert rows_sent == [{"name": "a"}, {"name": "b"}]
    assert sparse_sent == {"name": "a"}
    assert type(end.exception).__name__ == "ResponseValidationError"
