"""Items a stream cannot send, through real hypercorn on asyncio and trio: an NDJSON item
JSON cannot carry, a bytes stream's item of another type. The stream ends as an error, its
body whole lines of what went before, then its error item and the end of the body; the log
names what was refused.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamkit import (
    EndReason,
    EventSourceResponse,
    NDJSONResponse,
    ServerSentEvent,
    StreamResponse,
    StreamSender,
)
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def _cycle() -> list[Any]:
    cycle: list[Any] = []
    cycle.append(cycle)
    return cycle


def _raising_encoder(value: object) -> str:
    raise RuntimeError("the encoder broke")


# What is refused, the encoder that refuses it, and the type the log must name.
BAD_ITEMS: dict[str, tuple[object, Any, str]] = {
    "set": ({1, 2}, None, "set"),
    "nan": ({"x": float("nan")}, None, "dict"),
    "infinity": (float("inf"), None, "float"),
    "lone-surrogate": ({"s": "a\ud800"}, None, "dict"),
    "tuple-key": ({(1, 2): 1}, None, "dict"),
    "cycle": (_cycle(), None, "list"),
    "encoder-raises": ({"a": 1}, _raising_encoder, "dict"),
    "encoder-returns-int": ({"a": 1}, lambda value: 5, "dict"),
}


def app_for(route: Any) -> Starlette:
    return Starlette(routes=[Route("/stream", route)])


@pytest.mark.parametrize("case", list(BAD_ITEMS))
async def test_an_ndjson_item_that_cannot_be_encoded_ends_the_stream_after_whole_lines(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad, encoder, kind = BAD_ITEMS[case]
    after_bad: list[bool] = []

    async def produce(send: StreamSender[Any]) -> None:
        await send([0, "é"])
        await send([1, "\u2028"])
        await send(bad)
        after_bad.append(True)
        await send([2])

    def encode(value: object) -> Any:
        # The bad item by the encoder under test, the others as the default encoder would.
        if value is bad:
            return encoder(value)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    async def route(request: Request) -> Response:
        return NDJSONResponse(
            produce, error_item={"error": True}, json_encoder=encode if encoder else None
        )

    with caplog.at_level(logging.ERROR, logger="streamkit"):
        async with open_server(app_for(route)) as server:
            async with open_stream(server, "/stream") as client:
                body = await client.read_all()
            end = await server.wait_ended(EndReason.ERROR)
    # The status was sent before the first item (docs/api.md: an error ends the stream after
    # its 200), and the body ends properly: whole UTF-8 lines, nothing after the error item.
    assert client.status == 200
    assert client.complete
    assert body.decode().split("\n") == ['[0,"é"]', '[1,"\\u2028"]', '{"error":true}', ""]
    assert after_bad == []
    assert (end.items_sent, end.bytes_sent) == (2, len(body))
    # The log names the item's type, whoever refused it.
    assert f"of type {kind}" in caplog.text, caplog.text


@pytest.mark.parametrize(
    ("items", "sent"),
    [
        ([b"a", b"", b"b", b"", b""], b"ab"),
        ([bytearray(b"ab"), memoryview(b"cd"), "é", b""], "abcdé".encode()),
    ],
    ids=["empty", "bytes-like"],
)
async def test_a_bytes_streams_items_are_sent_whole_an_empty_one_not_ending_the_body(
    items: list[Any], sent: bytes
) -> None:
    # b"" written alone would look like the chunked terminator if it were framed naively.
    async def produce(send: StreamSender[Any]) -> None:
        for item in items:
            await send(item)

    async def route(request: Request) -> Response:
        return StreamResponse(produce)

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream") as client:
            body = await client.read_all()
        end = await server.wait_ended(EndReason.COMPLETED)
    assert client.complete
    assert body == sent
    assert end.items_sent == len(items)


@pytest.mark.parametrize(
    ("bad", "error", "named"),
    [
        (5, TypeError, "got int: 5"),
        ({"a": 1}, TypeError, "got dict"),
        ("a\udc80", ValueError, "lone surrogate"),
    ],
    ids=["int", "dict", "lone-surrogate"],
)
async def test_a_bytes_streams_item_of_another_type_ends_it_after_what_was_sent(
    bad: object, error: type[Exception], named: str
) -> None:
    async def produce(send: StreamSender[Any]) -> None:
        await send(b"first\n")
        await send(bad)

    async def route(request: Request) -> Response:
        return StreamResponse(produce)

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream") as client:
            body = await client.read_all()
        end = await server.wait_ended(EndReason.ERROR)
    assert client.complete
    assert body == b"first\n"
    assert isinstance(end.exception, error)
    assert named in str(end.exception)


@pytest.mark.parametrize("kind", ["sse", "ndjson"])
async def test_a_farewell_that_cannot_be_encoded_at_the_end_is_left_out_and_the_body_ends(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Encoded when the response was made, the farewell is encoded again at the end, where an
    # encoder may fail (one with state, or a closing item changed since): the exception was
    # raised out of the stream into the server, and the body cut without its end.
    farewell: dict[str, Any] = {"error": True}
    calls = []

    def encode(value: object) -> str:
        if value is farewell:
            calls.append(value)
            if len(calls) > 1:
                raise RuntimeError("the encoder broke")
        return json.dumps(value)

    async def produce(send: StreamSender[Any]) -> None:
        await send([1])
        raise KeyError("the producer's own error")

    async def route(request: Request) -> Response:
        if kind == "sse":
            return EventSourceResponse(
                produce,
                error_event=ServerSentEvent(event="error", data=farewell),
                json_encoder=encode,
            )
        return NDJSONResponse(produce, error_item=farewell, json_encoder=encode)

    with caplog.at_level(logging.ERROR, logger="streamkit"):
        async with open_server(app_for(route)) as server:
            async with open_stream(server, "/stream") as client:
                body = await client.read_all()
            end = await server.wait_ended(EndReason.ERROR)
    assert client.complete, "the body must end properly without its farewell"
    assert body == (b"data: [1]\n\n" if kind == "sse" else b"[1]\n")
    assert isinstance(end.exception, KeyError)
    assert "the encoder broke" in caplog.text
