from __future__ import annotations

import inspect
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, assert_type

import pytest
from pydantic import BaseModel

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


@pytest.mark.parametrize("response_class", [EventSourceResponse, NDJSONResponse, StreamResponse])
def test_an_idle_fallback_that_is_no_plain_function_is_refused_where_given(
    response_class: type[StreamResponse[Any]],
) -> None:
    # Taken, it failed only when the producer first went idle: the stream, its 200 sent long
    # before, ended as an error (an async one's coroutine never awaited).
    async def stale(last: object) -> object:
        return last

    with pytest.raises(TypeError, match="idle_fallback must be callable, got str: 'stale'"):
        response_class(nothing(), idle_timeout=5.0, idle_fallback="stale")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="idle_fallback must be a plain function"):
        response_class(nothing(), idle_timeout=5.0, idle_fallback=stale)
    with pytest.raises(TypeError, match="idle_fallback must be callable, got int: 5"):
        response_class.with_options(idle_fallback=5)  # type: ignore[arg-type]


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


@pytest.mark.parametrize("name", ["error_event", "shutdown_event", "deadline_event"])
def test_an_unencodable_farewell_event_is_refused_at_declaration(name: str) -> None:
    # Taken, it failed only when the stream ended so: raised into the server, the body cut.
    unencodable: dict[str, Any] = {name: ServerSentEvent(data={1})}
    with pytest.raises(
        TypeError, match=rf"SSE data is not JSON-serialisable: \{{1\}} .*\(the {name}\)"
    ):
        EventSourceResponse(nothing(), **unencodable)
    out_of_range: dict[str, Any] = {name: ServerSentEvent(data=[float("nan")])}
    with pytest.raises(ValueError, match=rf"\[nan\] of type list .*\(the {name}\)"):
        EventSourceResponse(nothing(), **out_of_range)


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
    assert sse.encode(5) == b"data: 5\n\n"
    with pytest.raises(TypeError, match=r"SSE data is not JSON-serialisable: <object"):
        sse.encode(object())
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


@pytest.mark.parametrize("spelling", ["Cache-Control", "CACHE-CONTROL", "cache-control"])
@pytest.mark.parametrize("response_class", [EventSourceResponse, NDJSONResponse, StreamResponse])
def test_a_default_header_given_in_any_case_is_sent_once_as_given(
    response_class: type[StreamResponse[Any]], spelling: str
) -> None:
    # Header names are case-insensitive: "Cache-Control" given was sent beside the default
    # "cache-control: no-store", two headers a cache may read either way.
    response = response_class(
        nothing(), headers={spelling: "max-age=5", "X-Accel-Buffering": "yes"}
    )
    sent = [(name, value) for name, value in response.raw_headers if name != b"content-type"]
    assert sorted(sent) == [(b"cache-control", b"max-age=5"), (b"x-accel-buffering", b"yes")]


@pytest.mark.parametrize(
    ("headers", "error", "match"),
    [
        ({"x-id": 7}, TypeError, r"header 'x-id' must be a str, got int: 7"),
        ({7: "a"}, TypeError, r"a header name must be a str, got int: 7"),
        ({"x id": "a"}, ValueError, r"header name 'x id' must be an HTTP token"),
        ({"x-id": "a\r\nset-cookie: b"}, ValueError, r"'\\r' at index 1"),
        ({"x-id": "a\0"}, ValueError, r"'\\x00' at index 1"),
        ({"x-id": " a"}, ValueError, r"' ' at index 0"),
        ({"x-id": "a\t"}, ValueError, r"'\\t' at index 1"),
        ({"x-id": "1 €"}, ValueError, r"'€' at index 2"),
    ],
    ids=["value-type", "name-type", "name", "line-break", "nul", "leading", "trailing", "latin-1"],
)
def test_a_header_http_cannot_carry_is_refused_where_given(
    headers: dict[Any, Any], error: type[Exception], match: str
) -> None:
    # Taken, it failed only when the response started: a 500, or a header split in two.
    for response_class in (EventSourceResponse, NDJSONResponse, StreamResponse):
        with pytest.raises(error, match=match):
            response_class(nothing(), headers=headers)
    # Refused again, not kept: a second response with the same headers is checked too.
    with pytest.raises(error, match=match):
        EventSourceResponse(nothing(), headers=headers)
    sendable = {"x-id": 'a\tb; q="é"', "X-Token_1": "!#$%&'*+-.^_`|~"}
    assert len(EventSourceResponse(nothing(), headers=sendable).raw_headers) == 5


def test_responses_share_an_encoding_of_their_headers_and_each_changes_only_its_own() -> None:
    first, second = EventSourceResponse(nothing()), EventSourceResponse(nothing())
    assert first.raw_headers == second.raw_headers
    assert first.raw_headers is not second.raw_headers
    assert all(a is b for a, b in zip(first.raw_headers, second.raw_headers, strict=True))
    first.headers["cache-control"] = "private"
    first.headers["x-more"] = "1"
    for later in (second, EventSourceResponse(nothing())):
        assert dict(later.raw_headers)[b"cache-control"] == b"no-store"
        assert b"x-more" not in dict(later.raw_headers)
    # The content type and the headers given each make their own encoding.
    plain = EventSourceResponse(nothing(), media_type="text/plain")
    assert dict(plain.raw_headers)[b"content-type"] == b"text/plain; charset=utf-8"
    ndjson = NDJSONResponse(nothing())
    assert dict(ndjson.raw_headers)[b"content-type"] == b"application/x-ndjson"
    # Past the sets kept, headers that differ per response are still each their own.
    for number in range(300):
        response = EventSourceResponse(nothing(), headers={"x-request-id": str(number)})
        assert dict(response.raw_headers)[b"x-request-id"] == str(number).encode()
        assert dict(response.raw_headers)[b"x-accel-buffering"] == b"no"


def test_sse_heartbeats_are_on_by_default_and_others_off() -> None:
    assert EventSourceResponse(nothing()).options.heartbeat_interval == 15.0
    assert NDJSONResponse(nothing()).options.heartbeat_interval is None
    assert (
        EventSourceResponse(nothing(), heartbeat_interval=None).options.heartbeat_interval is None
    )


class Row(BaseModel):
    id: int
    name: str


@dataclass(frozen=True)
class Total:
    rows: list[Row]
    cents: int


def test_ndjson_encodes_models_and_dataclasses() -> None:
    ndjson = NDJSONResponse(nothing())
    assert ndjson.encode(Row(id=1, name="é")) == '{"id":1,"name":"é"}\n'.encode()
    assert ndjson.encode(Total(rows=[Row(id=2, name="b")], cents=5)) == (
        b'{"rows":[{"id":2,"name":"b"}],"cents":5}\n'
    )


def test_an_item_that_cannot_be_encoded_is_refused_naming_it_whatever_went_wrong() -> None:
    # An encoder's bytes that are not UTF-8 (a UnicodeDecodeError, which cannot be made again
    # from one message), an int too long for repr(): a ValueError naming what it could.
    not_utf8 = NDJSONResponse(nothing(), json_encoder=lambda value: b"\xff")
    with pytest.raises(ValueError, match=r"NDJSON item .* not UTF-8 for \{'a': 1\}"):
        not_utf8.encode({"a": 1})
    with pytest.raises(ValueError, match=r"NDJSON item .*<dict whose repr\(\) raised>"):
        NDJSONResponse(nothing()).encode({"n": 10**5000})
    with pytest.raises(TypeError, match=r"got int: <int whose repr\(\) raised>"):
        StreamResponse(nothing()).encode(10**5000)  # type: ignore[arg-type]


def test_a_json_encoder_replaces_the_default_and_must_stay_on_one_line() -> None:
    upper = NDJSONResponse(nothing(), json_encoder=lambda value: json.dumps(value).upper())
    assert upper.encode({"a": "b"}) == b'{"A": "B"}\n'
    indented = NDJSONResponse(nothing(), json_encoder=lambda value: json.dumps(value, indent=1))
    with pytest.raises(ValueError, match=r"several lines: \{'a': 1\}"):
        indented.encode({"a": 1})
    sse = EventSourceResponse(nothing(), json_encoder=lambda value: b"[0]")
    assert sse.encode({"a": 1}) == b"data: [0]\n\n"
    with pytest.raises(TypeError, match="json_encoder must be a function"):
        NDJSONResponse(nothing(), json_encoder="orjson")  # type: ignore[arg-type]


def test_an_event_stream_reads_dict_items_and_sends_other_data_as_json() -> None:
    sse = EventSourceResponse(nothing())
    assert sse.encode({"event": "e", "data": {"n": 1}, "id": "3"}) == (
        b'event: e\nid: 3\ndata: {"n":1}\n\n'
    )
    assert sse.encode(Row(id=1, name="x")) == b'data: {"id":1,"name":"x"}\n\n'
    with pytest.raises(TypeError, match=r"SSE data is not JSON-serialisable: \{'n': <object"):
        sse.encode({"n": object()})


def test_a_heartbeat_event_replaces_the_comment() -> None:
    fixed = EventSourceResponse(nothing(), heartbeat_event=ServerSentEvent(event="ping", data=""))
    assert fixed.heartbeat_frame() == b"event: ping\ndata: \n\n"
    beats = iter(range(10))
    counted = EventSourceResponse(
        nothing(), heartbeat_event=lambda: ServerSentEvent(event="ping", data={"n": next(beats)})
    )
    # Called once when the response is made (to check it), then once per heartbeat.
    assert counted.heartbeat_frame() == b'event: ping\ndata: {"n":1}\n\n'
    assert counted.heartbeat_frame() == b'event: ping\ndata: {"n":2}\n\n'
    assert EventSourceResponse(nothing()).heartbeat_frame() == b": ping\n\n"


def test_a_bad_heartbeat_event_is_refused_when_the_response_is_made() -> None:
    with pytest.raises(TypeError, match=r"heartbeat_event must be a ServerSentEvent.*got str"):
        EventSourceResponse(nothing(), heartbeat_event="ping")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returning one, got dict"):
        EventSourceResponse(nothing(), heartbeat_event=lambda: {"event": "ping"})  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match=r"SSE data is not JSON-serialisable"):
        EventSourceResponse(nothing(), heartbeat_event=ServerSentEvent(data={1j}))


@pytest.mark.parametrize("good_calls", [1, 3], ids=["only the check", "after heartbeats"])
def test_a_heartbeat_function_that_fails_falls_back_to_the_last_good_ping(
    caplog: pytest.LogCaptureFixture, good_calls: int
) -> None:
    # The heartbeats page promises the last good ping: one carrying the time it was sent must
    # not go back to the time the response was made, which was sent in its place.
    calls = 0

    def ping() -> ServerSentEvent:
        nonlocal calls
        calls += 1
        if calls > good_calls:
            raise RuntimeError("clock broke")
        return ServerSentEvent(event="ping", data=str(calls))

    sse = EventSourceResponse(nothing(), heartbeat_event=ping)  # the first call, a check
    sent = [sse.heartbeat_frame() for _ in range(good_calls + 1)]
    last = f"event: ping\ndata: {good_calls}\n\n".encode()
    assert sent[-2:] == [last, last]
    assert "clock broke" in caplog.text


@pytest.mark.parametrize("cls", [StreamResponse, EventSourceResponse, NDJSONResponse])
def test_status_code_and_its_default_are_in_the_signature(cls: type[Any]) -> None:
    # FastAPI reads the default there to document a route declared with response_class=.
    parameter = inspect.signature(cls.__init__).parameters["status_code"]
    assert parameter.default == 200
    assert cls(nothing(), status_code=201).status_code == 201


@pytest.mark.parametrize("cls", [StreamResponse, EventSourceResponse, NDJSONResponse])
@pytest.mark.parametrize(
    ("status_code", "error", "message"),
    [
        ("201", TypeError, r"^status_code must be an int, got str: '201'$"),
        (True, TypeError, r"^status_code must be an int, got bool: True$"),
        (201.0, TypeError, r"^status_code must be an int, got float: 201.0$"),
        (101, ValueError, r"^status_code must be a final status, 200 to 599, got 101$"),
        (1000, ValueError, r"^status_code must be a final status, 200 to 599, got 1000$"),
        (204, ValueError, r"^status_code 204 sends no body, so no stream: .*Response\(status_"),
        (304, ValueError, r"^status_code 304 sends no body, so no stream: "),
    ],
)
def test_a_status_code_no_stream_can_be_sent_with_is_refused_where_it_is_given(
    cls: type[Any], status_code: object, error: type[Exception], message: str
) -> None:
    # It was sent as it was: the server refused it after the stream began (a 500 and an
    # end reported as a shutdown), or, for a 204, dropped the body of a stream that then
    # reported its items sent.
    with pytest.raises(error, match=message):
        cls(nothing(), status_code=status_code)
    with pytest.raises(error, match=message):
        cls.with_options(status_code=status_code)


def test_with_options_makes_a_class_with_defaults_that_calls_override() -> None:
    ends: list[StreamEnd] = []
    quick = EventSourceResponse.with_options(
        heartbeat_interval=2.0, send_timeout=3.0, on_end=ends.append, status_code=202
    )
    assert issubclass(quick, EventSourceResponse)
    assert quick.__name__ == "EventSourceResponse"
    assert inspect.signature(quick.__init__).parameters["status_code"].default == 202
    response = quick(nothing())
    assert (response.options.heartbeat_interval, response.options.send_timeout) == (2.0, 3.0)
    assert (response.on_end, response.status_code) == (ends.append, 202)
    assert quick(nothing(), send_timeout=1.0, status_code=200).options.send_timeout == 1.0
    assert EventSourceResponse(nothing()).options.send_timeout == 10.0  # the base is unchanged


def test_with_options_refuses_bad_options_at_once() -> None:
    with pytest.raises(ValueError, match="send_timeout"):
        NDJSONResponse.with_options(send_timeout=-1)
    with pytest.raises(TypeError, match="heartbeat"):
        EventSourceResponse.with_options(heartbeat="often")  # type: ignore[call-arg]


def test_with_options_takes_each_class_arguments_as_typed() -> None:
    # For mypy users, a misspelt or mistyped argument is an error where it is written: each
    # ignore below would otherwise be unused, itself an error under the project's strict mypy.
    with pytest.raises(TypeError, match="unknown argument 'heartbeat_chunk'"):
        EventSourceResponse.with_options(heartbeat_chunk=b".")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unknown argument 'heartbeat_comment'"):
        StreamResponse.with_options(heartbeat_comment="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="send_timeout must be a number"):
        NDJSONResponse.with_options(send_timeout="1")  # type: ignore[arg-type]
    rows = NDJSONResponse.with_options(error_item={"error": True}, status_code=201)
    assert_type(rows, type[NDJSONResponse])
    assert rows(nothing()).status_code == 201


def test_with_options_of_a_configured_class_keeps_both_defaults() -> None:
    quiet = EventSourceResponse.with_options(heartbeat_interval=None)
    quieter = quiet.with_options(heartbeat_comment="hi", send_timeout=1.0)
    response = quieter(nothing())
    assert (response.options.heartbeat_interval, response.options.send_timeout) == (None, 1.0)
    with pytest.raises(TypeError, match="got an unknown argument 'shutdown_evnt'"):
        quiet.with_options(shutdown_evnt=None)  # type: ignore[call-arg]


def test_ndjson_escapes_what_line_readers_split_on() -> None:
    ndjson = NDJSONResponse(nothing())
    line = ndjson.encode({"text": "a\u2028b\u2029c\x85d\x0be\x1cf"})
    assert line == b'{"text":"a\\u2028b\\u2029c\\u0085d\\u000be\\u001cf"}\n'
    assert len(line.decode().splitlines()) == 1
    assert json.loads(line) == {"text": "a\u2028b\u2029c\x85d\x0be\x1cf"}


def test_a_lone_surrogate_in_an_item_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"lone surrogate.*'\\ud800'"):
        NDJSONResponse(nothing()).encode({"a": "\ud800"})
    with pytest.raises(ValueError, match="lone surrogate"):
        StreamResponse(nothing()).encode("\ud800")
    with pytest.raises(ValueError, match=r"lone surrogate.*\(the error_item\)"):
        NDJSONResponse(nothing(), error_item="\ud800")
    with pytest.raises(ValueError, match=r"heartbeat_comment .*lone surrogate"):
        EventSourceResponse(nothing(), heartbeat_comment="\udc00")


@pytest.mark.parametrize("name", ["content-length", "Transfer-Encoding"])
def test_a_framing_header_is_refused_where_given(name: str) -> None:
    # Sent, a stream's body ran past the length it declared (the server cut it off, the
    # client read a truncated body), or was framed twice.
    for response_class in (EventSourceResponse, NDJSONResponse, StreamResponse):
        with pytest.raises(
            ValueError, match=f"header {name!r} cannot be given: the server sets it"
        ):
            response_class(nothing(), headers={name: "5"})


def test_headers_that_are_no_mapping_are_refused_naming_them() -> None:
    # dict() said only "dictionary update sequence element #0 has length 1; 2 is required".
    for response_class in (EventSourceResponse, NDJSONResponse, StreamResponse):
        with pytest.raises(
            TypeError, match="headers must be a mapping of names to values, got str"
        ):
            response_class(nothing(), headers="x-id: 1")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_dependencys_failed_exit_is_logged_with_its_path_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A decoded path holds what a client percent-encoded (%0a): written raw, a forged line.
    from contextlib import AsyncExitStack

    from streamkit._responses import _exit_dependencies

    async def answer_with_another(*exc_info: object) -> None:
        raise ValueError("answered")

    stack = AsyncExitStack()
    stack.push_async_exit(answer_with_another)
    scope = {"path": "/x\nINFO forged", "fastapi_inner_astack": stack}
    await _exit_dependencies(scope, RuntimeError("the producer failed"))
    assert [r.getMessage() for r in caplog.records] == [
        "stream /x\\nINFO forged: a dependency's exit raised on its error"
    ]
