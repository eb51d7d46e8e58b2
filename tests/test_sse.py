from __future__ import annotations

import dataclasses
import inspect
import json
import pickle
import re
import tracemalloc
from dataclasses import dataclass
from typing import Any

import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from streamkit import ServerSentEvent, last_event_id
from streamkit._json import to_jsonable
from streamkit._sse import (
    MAX_LAST_EVENT_ID_LENGTH,
    encode_comment,
    encode_data,
    encode_event,
    event_from_item,
    resumable_id,
)

# Any text but lone surrogates, which UTF-8 cannot carry.
TEXT = st.text(st.characters(exclude_categories=["Cs"]))
NAME = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"))
# An id holds no control character (C0 or DEL) and no space at either end, which no resume
# could send back.
IDS = st.text(st.characters(exclude_categories=["Cs", "Cc"]) | st.sampled_from("\x80\x85")).filter(
    resumable_id
)
EVENTS = st.builds(
    ServerSentEvent,
    data=st.none() | TEXT,
    event=st.none() | NAME,
    id=st.none() | IDS,
    retry=st.none() | st.integers(min_value=0, max_value=2**31),
    comment=st.none() | TEXT,
)


def parse(payload: bytes, split_at: int) -> list[Any]:
    """Parse with httpx-sse, a real SSE parser, feeding the payload in two pieces."""
    lines = SSELineDecoder()
    decoder = SSEDecoder()
    text = payload.decode()
    found = []
    for piece in (text[:split_at], text[split_at:]):
        if piece:
            for line in lines.decode(piece):
                event = decoder.decode(line)
                if event is not None:
                    found.append(event)
    return found


@given(events=st.lists(EVENTS, max_size=5), split=st.integers(min_value=0, max_value=10_000))
def test_a_real_parser_reads_back_what_was_encoded(
    events: list[ServerSentEvent], split: int
) -> None:
    payload = b"".join(encode_event(event) for event in events)
    parsed = iter(parse(payload, split % (len(payload) + 1)))
    last_id = ""
    for sent in events:
        last_id = sent.id if sent.id is not None else last_id
        if not (sent.data is not None or sent.event or last_id or sent.retry is not None):
            continue  # a frame with nothing in it: parsers dispatch nothing
        got = next(parsed)
        assert got.data == re.sub(r"\r\n|\r", "\n", sent.data or "")
        assert got.event == (sent.event or "message")
        assert got.id == last_id
        assert got.retry == sent.retry
    assert next(parsed, None) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("event", "a\nb"), ("event", "a\rb"), ("id", "1\n2"), ("id", "1\r"), ("id", "1\x002")],
)
def test_a_line_break_in_a_name_or_id_is_refused_and_named(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        ServerSentEvent(data="x", **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    ["a\tb", "a\x01b", "a\x1fb", "a\x7fb", "x" * (MAX_LAST_EVENT_ID_LENGTH + 1), " a", "a "],
)
def test_an_id_no_resume_could_send_back_is_refused_where_it_is_made(value: str) -> None:
    # A browser sends the last id back as Last-Event-ID, which the server ignores if it holds
    # a control character or is longer than it reads, and which HTTP strips of the spaces at
    # its ends: such an id could never be resumed from as it is.
    with pytest.raises(ValueError, match=r"SSE id .*" + re.escape(repr(value)[:60])):
        ServerSentEvent(data="x", id=value)


@pytest.mark.parametrize(
    "value", ["42", "1795322811000-3", "caf\u00e9", "a b", "\u2028", "x" * MAX_LAST_EVENT_ID_LENGTH]
)
def test_an_id_an_event_may_carry_is_one_a_resume_reads_back(value: str) -> None:
    event = ServerSentEvent(data="x", id=value)
    header = value.encode().decode("latin-1")  # as a server hands a UTF-8 header over
    assert last_event_id({"last-event-id": header}) == event.id


@pytest.mark.parametrize("retry", [-1, 1.5, True, "10"])
def test_retry_must_be_a_non_negative_int(retry: object) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(repr(retry))):
        ServerSentEvent(retry=retry)  # type: ignore[arg-type]


@pytest.mark.parametrize("retry", [10**19, 10**400, 10**5000], ids=["20", "401", "5001"])
def test_a_retry_no_client_obeys_is_refused_where_it_is_made(retry: int) -> None:
    # A client ignores a retry of more than 19 digits (as a browser one past 2 ** 64): sent,
    # it would do nothing; one too long for Python to print failed only as it was written.
    with pytest.raises(ValueError, match=r"^SSE retry \(milliseconds\) must have at most 19 "):
        ServerSentEvent(retry=retry)


def test_the_longest_retry_a_client_obeys_is_sent() -> None:
    retry = 10**19 - 1
    assert encode_event(ServerSentEvent(retry=retry)) == f"retry: {retry}\n\n".encode()


def test_an_event_is_a_frozen_keyword_only_dataclass() -> None:
    # Its __init__ is written by hand (see the class): what the generated one gave must hold.
    event = ServerSentEvent(data={"n": 1}, event="tick", id="7", retry=5, comment="c")
    assert [field.name for field in dataclasses.fields(event)] == [
        "data",
        "event",
        "id",
        "retry",
        "comment",
    ]
    parameters = inspect.signature(ServerSentEvent).parameters.values()
    assert [(p.name, p.kind, p.default) for p in parameters] == [
        (name, inspect.Parameter.KEYWORD_ONLY, None)
        for name in ("data", "event", "id", "retry", "comment")
    ]
    assert repr(ServerSentEvent(data="x")) == (
        "ServerSentEvent(data='x', event=None, id=None, retry=None, comment=None)"
    )
    with pytest.raises(TypeError):
        ServerSentEvent("x")  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = "other"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
    assert dataclasses.replace(event, id="8") == ServerSentEvent(
        data={"n": 1}, event="tick", id="8", retry=5, comment="c"
    )
    with pytest.raises(ValueError, match=re.escape(repr("8\n"))):
        dataclasses.replace(event, id="8\n")  # replace() checks the new value too
    assert pickle.loads(pickle.dumps(event)) == event
    assert hash(ServerSentEvent(data="x")) == hash(ServerSentEvent(data="x"))
    assert ServerSentEvent() == ServerSentEvent(data=None)


def test_bytes_data_is_refused_where_the_event_is_made() -> None:
    with pytest.raises(TypeError, match="got bytes"):
        ServerSentEvent(data=b"x")


def test_data_line_breaks_become_data_lines_and_cannot_inject_fields() -> None:
    frame = encode_event(ServerSentEvent(data="a\r\nid: 7\revent: x\nretry: 1", event="m"))
    assert frame == b"event: m\ndata: a\ndata: id: 7\ndata: event: x\ndata: retry: 1\n\n"


def test_a_leading_space_in_data_survives() -> None:
    (event,) = parse(encode_event(ServerSentEvent(data="  two spaces")), 0)
    assert event.data == "  two spaces"


def test_empty_data_is_still_an_event() -> None:
    assert encode_event(ServerSentEvent(data="")) == b"data: \n\n"
    assert len(parse(encode_event(ServerSentEvent(data="")), 0)) == 1


def test_comments_span_lines_and_are_ignored_by_parsers() -> None:
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert parse(encode_comment("a\nid: 3"), 0) == []


def test_encoding_is_utf8() -> None:
    assert encode_event(ServerSentEvent(data="é€😀")) == "data: é€😀\n\n".encode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("42", "42"),
        ("", ""),
        ("a\x00b", None),
        ("a\x1fb", None),
        ("x" * MAX_LAST_EVENT_ID_LENGTH, "x" * MAX_LAST_EVENT_ID_LENGTH),
        ("x" * (MAX_LAST_EVENT_ID_LENGTH + 1), None),
    ],
)
def test_last_event_id_is_validated(header: str | None, expected: str | None) -> None:
    headers = {} if header is None else {"last-event-id": header}
    assert last_event_id(headers) == expected


class Quote(BaseModel):
    symbol: str
    price: float


@dataclass(frozen=True)
class Trade:
    quote: Quote
    size: int


@pytest.mark.parametrize(
    "data",
    [{"a": [1, "x\ny"]}, [1, 2], 3.5, 0, True, Quote(symbol="A", price=1.5)],
    ids=["dict", "list", "float", "zero", "bool", "model"],
)
def test_data_that_is_not_text_round_trips_as_json(data: object) -> None:
    (event,) = parse(encode_event(ServerSentEvent(data=data, event="q")), 5)
    expected = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    assert (event.event, json.loads(event.data)) == ("q", expected)


def test_dataclass_data_round_trips_with_a_chosen_encoder() -> None:
    seen = []

    def encoder(value: object) -> bytes:
        seen.append(value)
        return json.dumps({"wrapped": to_jsonable(value)}, default=to_jsonable).encode()

    trade = Trade(quote=Quote(symbol="B", price=2.0), size=3)
    (event,) = parse(encode_event(ServerSentEvent(data=trade), encoder), 0)
    assert json.loads(event.data) == {
        "wrapped": {"quote": {"symbol": "B", "price": 2.0}, "size": 3}
    }
    assert seen == [trade]


def test_text_data_stays_raw() -> None:
    assert encode_event(ServerSentEvent(data='{"a": 1}')) == b'data: {"a": 1}\n\n'


def test_data_that_cannot_be_encoded_is_named_when_encoded() -> None:
    event = ServerSentEvent(data={"when": object()})
    with pytest.raises(TypeError, match=r"SSE data is not JSON-serialisable: \{'when': <object"):
        encode_event(event)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            {"event": "e", "data": "x", "id": "1", "retry": 5},
            ServerSentEvent(event="e", data="x", id="1", retry=5),
        ),
        ({"data": {"n": 1}}, ServerSentEvent(data={"n": 1})),
        ({"event": "only"}, ServerSentEvent(event="only")),
        # Not every key is an event field, or neither data nor event: the dict is data.
        ({"data": 1, "user": "x"}, ServerSentEvent(data={"data": 1, "user": "x"})),
        ({"id": "7"}, ServerSentEvent(data={"id": "7"})),
        ({}, ServerSentEvent(data={})),
        ("text", ServerSentEvent(data="text")),
        ([1], ServerSentEvent(data=[1])),
    ],
)
def test_sse_starlette_dict_items_are_events_where_unambiguous(
    item: object, expected: ServerSentEvent
) -> None:
    assert event_from_item(item) == expected


def test_a_dict_event_with_a_bad_field_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=re.escape(repr("a\nb"))):
        event_from_item({"event": "a\nb", "data": "x"})
    with pytest.raises(TypeError, match="got int: 5"):
        event_from_item({"id": 5, "data": "x"})


@pytest.mark.parametrize("field", ["data", "event", "id", "comment"])
def test_a_lone_surrogate_is_refused_where_the_event_is_made(field: str) -> None:
    with pytest.raises(ValueError, match=rf"SSE {field} .*lone surrogate.*'\\ud800'"):
        ServerSentEvent(**{field: "a\ud800b"})  # type: ignore[arg-type]


def test_a_lone_surrogate_in_a_comment_frame_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"comment .*lone surrogate"):
        encode_comment("ping\udfff")


def test_a_utf8_last_event_id_round_trips() -> None:
    # What the server sent as "é-1" comes back as UTF-8 bytes, which ASGI servers hand over
    # decoded as latin-1.
    sent = "é-1".encode().decode("latin-1")
    assert last_event_id({"last-event-id": sent}) == "é-1"
    # Bytes that are no UTF-8 could not come from an id this server sent.
    assert last_event_id({"last-event-id": "\xe9-1"}) is None


@given(st.text())
def test_a_str_is_encoded_as_the_event_whose_data_it_is(text: str) -> None:
    # The str fast path of an event stream writes what the event would have written.
    try:
        expected = encode_event(ServerSentEvent(data=text))
    except ValueError:
        with pytest.raises(ValueError, match="lone surrogate"):
            encode_data(text)
        return
    assert encode_data(text) == expected


@pytest.mark.parametrize("text", ["one line", "two\nlines", "cr\ronly", "crlf\r\nend\n", ""])
def test_a_str_item_and_its_event_are_written_alike(text: str) -> None:
    from streamkit import EventSourceResponse, StreamSender

    async def produce(send: StreamSender[str]) -> None:
        pass

    response = EventSourceResponse(produce)
    assert response.encode(text) == response.encode(ServerSentEvent(data=text))


@pytest.mark.parametrize(
    ("fields", "error", "named"),
    [
        ({"data": b"\xff" * 5_000_000}, TypeError, r"got bytes: b'\\xff\\xff"),
        ({"data": "x", "event": "a\n" * 5_000_000}, ValueError, r"CR or LF: 'a\\na\\n"),
        ({"data": "x", "id": " " * 10_000_000}, ValueError, r"reads back: '    "),
    ],
    ids=["bytes data", "event name", "id"],
)
def test_a_huge_field_is_refused_naming_its_start_in_bounded_memory(
    fields: dict[str, Any], error: type[Exception], named: str
) -> None:
    # The whole field's repr was made, megabytes, and cut to its first 80 characters.
    tracemalloc.start()
    try:
        with pytest.raises(error, match=named):
            ServerSentEvent(**fields)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000
