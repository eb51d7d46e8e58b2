from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from streamkit import (
    EventSourceResponse,
    NDJSONResponse,
    ServerSentEvent,
    StreamEnd,
    StreamOptions,
    StreamResponse,
)


async def nothing() -> AsyncIterator[str]:
    return
    yield


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("send_timeout", 0, ValueError),
        ("send_timeout", -1.0, ValueError),
        ("heartbeat_interval", float("inf"), ValueError),
        ("max_duration", float("nan"), ValueError),
        ("cleanup_timeout", None, TypeError),
        ("buffer_size", -1, ValueError),
        ("buffer_size", 1.5, TypeError),
        ("send_timeout", "10", TypeError),
        ("send_timeout", True, TypeError),
    ],
)
def test_bad_options_are_refused_naming_the_value(
    option: str, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=re.escape(option) + ".*" + re.escape(repr(value))):
        StreamOptions(**{option: value})
    with pytest.raises(error, match=re.escape(option)):
        EventSourceResponse(nothing(), **{option: value})


def test_sync_iterables_are_refused() -> None:
    with pytest.raises(TypeError, match="async iterable"):
        StreamResponse(["a", "b"])  # type: ignore[arg-type]


def test_an_async_on_end_is_refused() -> None:
    async def on_end(end: StreamEnd) -> None:
        pass

    with pytest.raises(TypeError, match="on_end must be a plain function"):
        NDJSONResponse(nothing(), on_end=on_end)  # type: ignore[arg-type]


def test_a_bytes_stream_needs_a_heartbeat_chunk_to_beat() -> None:
    with pytest.raises(ValueError, match="heartbeat_chunk"):
        StreamResponse(nothing(), heartbeat_interval=5.0)
    assert (
        StreamResponse(nothing(), heartbeat_interval=5.0, heartbeat_chunk=b"\n").heartbeat_frame()
        == b"\n"
    )


def test_an_unencodable_closing_item_is_refused_at_declaration() -> None:
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        NDJSONResponse(nothing(), error_item={"bad": object()})


@pytest.mark.parametrize(
    ("response_class", "arguments", "match"),
    [
        (
            EventSourceResponse,
            {"error_event": "bye"},
            r"^error_event must be a ServerSentEvent or None, got str: 'bye'$",
        ),
        (
            EventSourceResponse,
            {"shutdown_event": {"event": "shutdown"}},
            r"^shutdown_event must be a ServerSentEvent or None, got dict",
        ),
        (
            EventSourceResponse,
            {"heartbeat_comment": 5},
            r"^heartbeat_comment must be a str, got int: 5$",
        ),
        (
            StreamResponse,
            {"heartbeat_interval": 1.0, "heartbeat_chunk": "\n"},
            r"^heartbeat_chunk must be a bytes or None, got str: '\\n'$",
        ),
    ],
)
def test_a_farewell_or_heartbeat_of_the_wrong_type_is_refused_where_given(
    response_class: type[StreamResponse[Any]], arguments: dict[str, Any], match: str
) -> None:
    # They were taken, and failed only when first written: at the end, or the first beat.
    with pytest.raises(TypeError, match=match):
        response_class(nothing(), **arguments)


def test_items_are_encoded_or_refused_by_name() -> None:
    sse = EventSourceResponse(nothing())
    assert sse.encode("hi") == b"data: hi\n\n"
    assert sse.encode(ServerSentEvent(event="e", data="1")) == b"event: e\ndata: 1\n\n"
    with pytest.raises(TypeError, match=r"got int: 5"):
        sse.encode(5)  # type: ignore[arg-type]
    ndjson = NDJSONResponse(nothing())
    assert ndjson.encode({"é": [1, None]}) == '{"é":[1,null]}\n'.encode()
    with pytest.raises(ValueError, match="nan"):
        ndjson.encode(float("nan"))
    raw = StreamResponse(nothing())
    assert raw.encode("é") == "é".encode()
    with pytest.raises(TypeError, match=r"got dict"):
        raw.encode({})  # type: ignore[arg-type]


def test_headers_defaults_and_overrides() -> None:
    sse = EventSourceResponse(nothing(), headers={"cache-control": "no-cache"})
    headers = dict(sse.raw_headers)
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"x-accel-buffering"] == b"no"
    assert b"content-length" not in headers


def test_sse_heartbeats_are_on_by_default_and_others_off() -> None:
    assert EventSourceResponse(nothing()).options.heartbeat_interval == 15.0
    assert NDJSONResponse(nothing()).options.heartbeat_interval is None
    assert (
        EventSourceResponse(nothing(), heartbeat_interval=None).options.heartbeat_interval is None
    )
