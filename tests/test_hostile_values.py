"""Any text a caller or a client could hand the encoders, lone surrogates and every control
character included: each value is either encoded so that a parser reads it back whole, or
refused with a ValueError or TypeError whose message names what was refused. Never another
exception, never a frame that reads back differently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamkit import EventSourceResponse, NDJSONResponse, ServerSentEvent, last_event_id
from streamkit._sse_decoder import SSEDecoder
from streamkit._topics import check_topic
from streamkit.broadcast import MemoryBroker, TopicNameError, topic_response

# Every code point, the surrogates among them.
ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)


async def nothing() -> Any:
    return
    yield


def refusal(call: Callable[[], object]) -> str | None:
    """The message of the ValueError or TypeError *call* raised, or ``None``; any other
    exception is a failure."""
    try:
        call()
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def decode(frame: bytes) -> list[Any]:
    decoder = SSEDecoder()
    return list(decoder.feed(frame))


@given(field=st.sampled_from(["data", "event", "id", "comment"]), value=ANY_TEXT)
def test_an_event_field_is_sent_whole_or_refused_by_name(field: str, value: str) -> None:
    message = refusal(lambda: ServerSentEvent(**{field: value}))  # type: ignore[arg-type]
    if message is not None:
        assert f"SSE {field}" in message or "SSE event name" in message
        return
    event = ServerSentEvent(**{field: value})  # type: ignore[arg-type]
    frame = EventSourceResponse(nothing()).encode(event)
    frame.decode()  # UTF-8, whole
    if field == "comment":
        assert decode(frame) == []
        return
    events = decode(frame)
    if field == "data":
        assert [e.data for e in events] == [value.replace("\r\n", "\n").replace("\r", "\n")]
    else:
        assert [getattr(e, field) for e in events] == [value]


@given(item=JSON_VALUES)
def test_an_ndjson_item_is_one_line_read_back_whole_or_refused_by_name(item: Any) -> None:
    response = NDJSONResponse(nothing())
    message = refusal(lambda: response.encode(item))
    if message is not None:
        assert "NDJSON item" in message
        return
    text = response.encode(item).decode()
    assert text.endswith("\n")
    assert text.splitlines() == [text[:-1]]  # what httpx's aiter_lines() would see
    assert json.loads(text) == item or _has_nan(item)


def _has_nan(item: Any) -> bool:
    if isinstance(item, float):
        return math.isnan(item)
    if isinstance(item, list):
        return any(_has_nan(value) for value in item)
    if isinstance(item, dict):
        return any(_has_nan(value) for value in item.values())
    return False


@given(topic=ANY_TEXT | st.text(min_size=250, max_size=300))
def test_a_topic_name_is_taken_or_refused_by_name(topic: str) -> None:
    message = refusal(lambda: check_topic(topic))
    if message is not None:
        assert "a topic must be 1 to 256 characters" in message
        with pytest.raises(TopicNameError, match="a topic must be") as raised:
            topic_response(MemoryBroker(), topic)
        assert raised.value.status_code == 400
        return
    topic.encode()
    topic_response(MemoryBroker(), topic)


@given(header=ANY_TEXT | st.text(min_size=1000, max_size=1100))
def test_a_last_event_id_header_is_read_or_discarded(header: str) -> None:
    # As a server hands it over: HTTP drops the spaces and tabs at a field's ends.
    raw = header.encode("utf-8", "surrogatepass").decode("latin-1").strip(" \t")
    value = last_event_id({"last-event-id": raw})
    if value is not None:
        assert value.encode() == raw.encode("latin-1")
        assert len(value) <= 1024
        ServerSentEvent(id=value)  # what came back can be sent again as an id


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topic=ANY_TEXT, data=ANY_TEXT)
def test_publishing_any_text_is_delivered_or_refused_by_name(topic: str, data: str) -> None:
    async def publish() -> None:
        broker = MemoryBroker()
        async with broker:
            message = None
            try:
                await broker.publish(topic, data)
            except ValueError as exc:
                message = str(exc)
            assert message is None or "topic" in message or "lone surrogate" in message

    anyio.run(publish)
