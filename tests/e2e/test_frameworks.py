"""The responses as endpoint return values in Starlette and FastAPI, through hypercorn."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from fastapi import FastAPI
from starlette.background import BackgroundTask

from streamkit import EndReason, EventSourceResponse, NDJSONResponse, ServerSentEvent, StreamSender
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def fastapi_app(audited: anyio.Event) -> FastAPI:
    app = FastAPI()

    @app.get("/events")
    async def events() -> EventSourceResponse:
        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            for n in range(3):
                await send(ServerSentEvent(data=str(n), event="tick"))
            await anyio.sleep_forever()

        async def record() -> None:
            audited.set()

        return EventSourceResponse(produce, background=BackgroundTask(record))

    @app.get("/rows", response_class=NDJSONResponse)
    async def rows() -> NDJSONResponse:
        async def gen() -> AsyncIterator[dict[str, int]]:
            for n in range(3):
                yield {"n": n}

        return NDJSONResponse(gen())

    return app


async def test_fastapi_endpoints_stream_and_run_background_tasks_after_a_disconnect() -> None:
    audited = anyio.Event()
    async with open_server(fastapi_app(audited)) as server:
        async with open_stream(server, "/rows") as client:
            assert [await client.read_item() for _ in range(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert await client.read_all() == b""
        await server.wait_ended(EndReason.COMPLETED)
        async with open_stream(server, "/events") as client:
            events = [await client.read_event() for _ in range(3)]
            await client.close()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        with anyio.fail_after(2):
            await audited.wait()
    assert [(event.event, event.data) for event in events] == [
        ("tick", "0"),
        ("tick", "1"),
        ("tick", "2"),
    ]
