"""Producers that misbehave, and a buffer with no room, through real hypercorn on asyncio and
trio: each stream still ends within a stated bound, says why, and leaves nothing running."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamkit import EndReason, EventSourceResponse, NDJSONResponse, StreamResponse, StreamSender
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def app_for(route: Callable[[Request], Any]) -> Starlette:
    return Starlette(routes=[Route("/stream", route)])


@pytest.mark.parametrize("kind", ["sse", "ndjson", "bytes"])
async def test_a_stream_with_no_buffer_room_hands_each_item_over(kind: str) -> None:
    async def produce(send: StreamSender[Any]) -> None:
        for n in range(5):
            await send({"sse": str(n), "ndjson": {"n": n}}.get(kind, f"{n}\n"))

    async def route(request: Request) -> Response:
        if kind == "sse":
            return EventSourceResponse(produce, buffer_size=0, max_duration=30)
        if kind == "ndjson":
            return NDJSONResponse(produce, buffer_size=0, max_duration=30)
        return StreamResponse(produce, buffer_size=0, max_duration=30)

    async with open_server(app_for(route)) as server, open_stream(server, "/stream") as client:
        with anyio.fail_after(5):
            body = await client.read_all()
        end = await server.wait_ended(EndReason.COMPLETED)
    assert client.complete
    assert end.items_sent == 5
    assert body.count(b"\n") == (10 if kind == "sse" else 5)


@pytest.mark.parametrize("kind", ["sse", "ndjson", "bytes"])
async def test_a_stream_the_client_left_gets_no_end_of_body(kind: str) -> None:
    """A busy producer and a client that half-closes (it leaves, and still reads): once the
    disconnect is decided nothing more is written, so the cut body cannot pass for a whole
    one. On asyncio, writes that do not block never yield, and the terminator went out."""

    async def flat_out(send: StreamSender[Any]) -> None:
        n = 0
        while True:
            await send({"sse": str(n), "ndjson": {"n": n}}.get(kind, f"{n}\n"))
            n += 1

    async def route(request: Request) -> Response:
        if kind == "sse":
            return EventSourceResponse(flat_out)
        if kind == "ndjson":
            return NDJSONResponse(flat_out)
        return StreamResponse(flat_out)

    async with open_server(app_for(route)) as server:
        for _ in range(5):
            async with open_stream(server, "/stream") as client:
                await client.receive_chunk()
                await client.half_close()
                await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
                with anyio.fail_after(5), pytest.raises(ConnectionError, match="terminator|broke"):
                    await client.read_all()
            assert not client.complete
