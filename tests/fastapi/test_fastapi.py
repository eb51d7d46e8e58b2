"""FastAPI's own OpenAPI output for each way of declaring a streamkit endpoint."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from streamkit import App, EventSourceResponse, NDJSONResponse, ServerSentEvent, StreamSender
from streamkit.fastapi import StreamingRoute, mount_app


class Tick(BaseModel):
    n: int


def responses(document: dict[str, Any], path: str) -> dict[str, Any]:
    json.dumps(document)  # what /openapi.json serves
    operation: dict[str, Any] = document["paths"][path]["get"]
    return operation["responses"]  # type: ignore[no-any-return]


def test_a_response_class_without_the_route_class_documents_its_media_type() -> None:
    # FastAPI used to answer /openapi.json with a 500 here (it found no status_code default).
    app = FastAPI()

    @app.get("/events", response_class=EventSourceResponse)
    async def events() -> AsyncIterator[Tick]:
        yield Tick(n=1)

    @app.get("/rows", response_class=NDJSONResponse.with_options(send_timeout=2.0))
    async def rows() -> NDJSONResponse:
        return NDJSONResponse(iter_ticks())

    document = app.openapi()
    assert responses(document, "/events")["200"]["content"] == {
        "text/event-stream": {"schema": {"type": "string"}}
    }
    assert list(responses(document, "/rows")["200"]["content"]) == ["application/x-ndjson"]


async def iter_ticks() -> AsyncIterator[Tick]:
    yield Tick(n=0)


def streaming_app() -> FastAPI:
    app = FastAPI()
    app.router.route_class = StreamingRoute

    @app.get("/ticks", response_class=EventSourceResponse)
    async def ticks(start: int = 0) -> AsyncIterator[Tick]:
        yield Tick(n=start)

    @app.get("/events", response_class=EventSourceResponse)
    async def events() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(data="x")

    @app.get("/returned")
    async def returned() -> EventSourceResponse:
        return EventSourceResponse(iter_ticks())

    router = APIRouter(route_class=StreamingRoute)

    @router.get("/rows", response_class=NDJSONResponse, status_code=203)
    async def rows() -> AsyncIterator[list[Tick]]:
        yield [Tick(n=1)]

    @router.post("/events", response_class=EventSourceResponse.with_options(send_timeout=1.0))
    async def posted_events(tick: Tick) -> AsyncIterator[Tick]:
        yield tick

    app.include_router(router, prefix="/export")
    return app


def test_the_route_class_documents_an_event_stream_as_fastapi_does() -> None:
    document = streaming_app().openapi()
    content = responses(document, "/ticks")["200"]["content"]
    item = content["text/event-stream"]["itemSchema"]
    assert item["required"] == ["data"]
    assert item["properties"]["data"] == {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"$ref": "#/components/schemas/Tick"},
    }
    assert set(item["properties"]) == {"data", "event", "id", "retry"}
    assert document["components"]["schemas"]["Tick"]["properties"]["n"]["type"] == "integer"
    # The query parameter is still FastAPI's.
    (parameter,) = document["paths"]["/ticks"]["get"]["parameters"]
    assert (parameter["name"], parameter["in"]) == ("start", "query")


def test_events_of_any_data_and_returned_responses_have_no_item_schema() -> None:
    document = streaming_app().openapi()
    events = responses(document, "/events")["200"]["content"]["text/event-stream"]
    assert "contentSchema" not in events["itemSchema"]["properties"]["data"]
    returned = responses(document, "/returned")["200"]["content"]
    assert list(returned) == ["text/event-stream"]


def test_the_route_class_documents_ndjson_items_on_an_included_router() -> None:
    document = streaming_app().openapi()
    content = responses(document, "/export/rows")["203"]["content"]["application/x-ndjson"]
    assert content["itemSchema"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Tick"},
    }


def test_the_route_class_documents_an_event_stream_over_post_on_an_included_router() -> None:
    operation = streaming_app().openapi()["paths"]["/export/events"]["post"]
    content = operation["responses"]["200"]["content"]["text/event-stream"]
    assert content["itemSchema"]["properties"]["data"]["contentSchema"] == {
        "$ref": "#/components/schemas/Tick"
    }
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Tick"}


def test_the_route_class_documents_items_under_the_status_a_response_class_sends() -> None:
    # A class made with status_code= sends it, and FastAPI documents the stream there; its
    # items belong under it, not under a 200 of their own with no description.
    app = FastAPI()
    app.router.route_class = StreamingRoute
    Created = EventSourceResponse.with_options(status_code=201)

    @app.get("/events", response_class=Created)
    async def events() -> AsyncIterator[Tick]:
        yield Tick(n=1)

    @app.get("/rows", response_class=NDJSONResponse.with_options(status_code=202))
    async def rows() -> AsyncIterator[Tick]:
        yield Tick(n=1)

    @app.get("/accepted", response_class=Created, status_code=202)  # the route's, sent
    async def accepted() -> AsyncIterator[Tick]:
        yield Tick(n=1)

    document = app.openapi()
    for path, status, media_type in [
        ("/events", "201", "text/event-stream"),
        ("/rows", "202", "application/x-ndjson"),
        ("/accepted", "202", "text/event-stream"),
    ]:
        described = responses(document, path)
        assert list(described) == [status]
        assert described[status]["description"] == "Successful Response"
        assert "itemSchema" in described[status]["content"][media_type]


def test_the_route_class_refuses_a_sync_generator() -> None:
    app = FastAPI()
    app.router.route_class = StreamingRoute

    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"numbers at '/n' is a sync generator"):
        app.get("/n", response_class=NDJSONResponse)(numbers)


@pytest.mark.parametrize(
    ("status_code", "error", "message"),
    [
        (204, ValueError, r"^status_code 204 sends no body, so no stream: "),
        (1000, ValueError, r"^status_code must be a final status, 200 to 599, got 1000$"),
        ("201", TypeError, r"^status_code must be an int, got str: '201'$"),
    ],
)
def test_the_route_class_refuses_a_status_code_no_stream_can_be_sent_with(
    status_code: Any, error: type[Exception], message: str
) -> None:
    # Where the route is declared, not at each request with a 500.
    app = FastAPI()
    app.router.route_class = StreamingRoute

    async def events() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(error, match=message):
        app.get("/events", response_class=EventSourceResponse, status_code=status_code)(events)


def test_other_routes_are_fastapis() -> None:
    app = FastAPI()
    app.router.route_class = StreamingRoute

    @app.get("/plain")
    async def plain() -> Tick:
        return Tick(n=1)

    content = responses(app.openapi(), "/plain")["200"]["content"]
    assert content == {"application/json": {"schema": {"$ref": "#/components/schemas/Tick"}}}


def test_mount_app_describes_the_apps_stream_routes() -> None:
    streams = App()

    @streams.sse("/ticks/{symbol}/{count:int}")
    async def ticks(request: Request) -> AsyncIterator[Tick]:
        yield Tick(n=1)

    @streams.ndjson("/rows", methods=("GET", "POST"))
    async def rows(request: Request, send: StreamSender[Tick]) -> None:
        await send(Tick(n=1))

    @streams.stream("/raw", media_type="text/csv")
    async def raw(request: Request) -> AsyncIterator[str]:
        yield "a,b\n"

    @streams.get("/plain")
    async def plain(request: Request) -> Response:
        return Response("")

    api = FastAPI(lifespan=streams.lifespan)
    mount_app(api, "/streams/", streams)
    document = api.openapi()
    paths = document["paths"]
    assert set(paths) == {"/streams/ticks/{symbol}/{count}", "/streams/rows", "/streams/raw"}
    tick = paths["/streams/ticks/{symbol}/{count}"]["get"]
    item = tick["responses"]["200"]["content"]["text/event-stream"]["itemSchema"]
    assert item["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/Tick"}
    assert {(p["name"], p["in"], p["schema"]["type"]) for p in tick["parameters"]} == {
        ("symbol", "path", "string"),
        ("count", "path", "integer"),
    }
    assert set(paths["/streams/rows"]) == {"get", "post"}
    rows_content = paths["/streams/rows"]["post"]["responses"]["200"]["content"]
    assert rows_content["application/x-ndjson"]["itemSchema"] == {
        "$ref": "#/components/schemas/Tick"
    }
    assert list(paths["/streams/raw"]["get"]["responses"]["200"]["content"]) == ["text/csv"]
    # The mount comes first: the App serves its routes.
    assert isinstance(api.router.routes[-5], Mount)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ((FastAPI(), "/s", Starlette()), TypeError, r"^app must be an App, got Starlette: "),
        ((FastAPI(), "/s", None), TypeError, r"^app must be an App, got NoneType: None$"),
        ((None, "/s", App()), TypeError, r"^api must be a FastAPI, got NoneType: None$"),
        ((FastAPI(), b"/s", App()), TypeError, r"^path must be a str, got bytes: b'/s'$"),
        ((FastAPI(), "streams", App()), ValueError, r"^path must start with '/', got 'streams'$"),
    ],
)
def test_mount_app_refuses_what_it_cannot_mount_naming_it(
    arguments: tuple[Any, Any, Any], error: type[Exception], message: str
) -> None:
    api = arguments[0]
    before = list(api.router.routes) if isinstance(api, FastAPI) else []
    with pytest.raises(error, match=message):
        mount_app(*arguments)
    if isinstance(api, FastAPI):
        assert api.router.routes == before  # nothing mounted


def test_mount_app_refuses_a_name_that_is_no_str_naming_it() -> None:
    # It was mounted under it, and url_path_for("streams") did not find the mount.
    api = FastAPI()
    before = list(api.router.routes)
    with pytest.raises(TypeError, match=r"^name must be a str or None, got bytes: b'streams'$"):
        mount_app(api, "/streams", App(), name=b"streams")  # type: ignore[arg-type]
    assert api.router.routes == before


class Aliased(BaseModel):
    tick_number: int = Field(alias="tickNumber")


class Holding(BaseModel):
    ticks: list[Aliased]


def test_mount_app_leaves_out_the_schema_of_items_an_app_sends_unlike_it() -> None:
    # An App sends a model by its field names; the schema FastAPI keeps in the components
    # names the aliases. No item schema is better than a wrong one.
    streams = App()

    @streams.ndjson("/aliased")
    async def aliased(request: Request) -> AsyncIterator[Aliased]:
        yield Aliased(tickNumber=1)

    @streams.sse("/holding")
    async def holding(request: Request) -> AsyncIterator[Holding]:
        yield Holding(ticks=[])

    @streams.ndjson("/plain")
    async def plain(request: Request) -> AsyncIterator[Tick]:
        yield Tick(n=1)

    api = FastAPI(lifespan=streams.lifespan)
    mount_app(api, "/streams", streams)
    document = api.openapi()
    aliased_content = responses(document, "/streams/aliased")["200"]["content"]
    assert aliased_content == {"application/x-ndjson": {"schema": {"type": "string"}}}
    holding_content = responses(document, "/streams/holding")["200"]["content"]
    data = holding_content["text/event-stream"]["itemSchema"]["properties"]["data"]
    assert "contentSchema" not in data
    plain_content = responses(document, "/streams/plain")["200"]["content"]
    assert plain_content["application/x-ndjson"]["itemSchema"] == {
        "$ref": "#/components/schemas/Tick"
    }
