"""Topics as plain values: event ids, topic names and what a published event may carry
(the parsing table and the broker's refusals are in ``test_broker.py``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from streamkit import ServerSentEvent
from streamkit._topics import (
    DEFAULT_MAX_EVENT_SIZE,
    check_topic,
    event_fields,
    events_fields,
    format_event_id,
    parse_event_id,
)

LIMIT = 2**64 - 1


@pytest.mark.parametrize("key", [(0, 0), (0, 1), (1795322817838, 12), (LIMIT, 0), (LIMIT, LIMIT)])
def test_an_event_id_survives_the_round_trip(key: tuple[int, int]) -> None:
    text = format_event_id(key)
    assert parse_event_id(text) == key
    assert format_event_id(parse_event_id(text) or (-1, -1)) == text


def test_ids_order_as_their_keys_do_not_as_their_text() -> None:
    ids = [format_event_id(key) for key in [(9, 0), (10, 0), (10, 2), (10, 10)]]
    keys = [parse_event_id(text) for text in ids]
    assert keys == sorted(key for key in keys if key is not None)
    assert sorted(ids) != ids, "compared as text, 10-10 would come before 10-2"


def test_leading_zeros_parse_to_the_canonical_id() -> None:
    assert parse_event_id("0007-01") == (7, 1)
    assert format_event_id((7, 1)) == "7-1"


@pytest.mark.parametrize(
    "text",
    [
        f"0-{LIMIT + 1}",
        "1" * 21 + "-0",  # more digits than any 64-bit number has
        " 1-0",
        "1-0\n",
        "1_0-0",
        "+1-0",
    ],
)
def test_what_is_not_an_event_id_parses_to_none(text: str) -> None:
    assert parse_event_id(text) is None


@pytest.mark.parametrize("topic", ["t", "x" * 256, "prices/EUR-USD", "café ☕", "a b"])
def test_a_topic_of_1_to_256_printable_characters_is_accepted(topic: str) -> None:
    check_topic(topic)


@pytest.mark.parametrize("topic", ["a\tb", "a\x00", "a\x7f", "\x1b[31m", "x" * 257, ""])
def test_a_topic_that_is_empty_too_long_or_holds_a_control_character_is_refused(
    topic: str,
) -> None:
    with pytest.raises(ValueError, match="a topic must be 1 to 256 characters") as raised:
        check_topic(topic)
    assert repr(topic)[:80] in str(raised.value), "the message names the topic"


@pytest.mark.parametrize("topic", [b"prices", None, 7])
def test_a_topic_that_is_not_a_str_is_a_type_error(topic: object) -> None:
    with pytest.raises(TypeError, match=f"a topic must be a str, got {type(topic).__name__}"):
        check_topic(topic)  # type: ignore[arg-type]


def fields(event: ServerSentEvent | str) -> tuple[str | None, str]:
    return event_fields(event, topic="t", max_size=DEFAULT_MAX_EVENT_SIZE)


def test_event_fields_are_the_name_and_the_data() -> None:
    assert fields("42.5") == (None, "42.5")
    assert fields(ServerSentEvent(event="price", data="42.5")) == ("price", "42.5")
    assert fields(ServerSentEvent(data="")) == (None, ""), "empty data is data"


def test_an_event_with_a_comment_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="carries only event and data, not comment"):
        fields(ServerSentEvent(data="x", comment="note"))


def test_an_id_is_refused_saying_who_gives_ids() -> None:
    with pytest.raises(ValueError, match=r"not id: .* \(the broker assigns ids\)"):
        fields(ServerSentEvent(data="x", id="1-0"))


@pytest.mark.parametrize("event", [b"bytes", {"data": "x"}, 42])
def test_what_is_not_an_event_is_a_type_error_naming_it(event: object) -> None:
    with pytest.raises(TypeError, match=f"got {type(event).__name__}: "):
        fields(event)  # type: ignore[arg-type]


class Text(str):
    """A str of a subclass's: not what the plain-text way of events_fields takes."""


@pytest.mark.parametrize(
    "event",
    [
        "x" * 8,  # plain text at the bound: taken as it is
        "",
        "é" * 2,  # 4 bytes: within
        "é" * 5,  # 10 bytes: over, though 5 characters
        "x" * 9,  # over
        "\ud800",  # no UTF-8
        Text("x"),
        ServerSentEvent(event="price", data="42.5"),
        ServerSentEvent(data="x", id="1-0"),
        b"bytes",
    ],
)
def test_the_fields_of_a_burst_are_each_events_fields(event: ServerSentEvent | str) -> None:
    # A burst's plain ASCII text is taken without event_fields' call; every event must
    # still be taken, or refused, as event_fields would.
    def outcome(take: Callable[[], object]) -> object:
        try:
            return take()
        except (TypeError, ValueError) as exc:
            return type(exc), str(exc)

    one = outcome(lambda: [event_fields(event, topic="t", max_size=8)])
    assert outcome(lambda: events_fields(["a", event, "b"], topic="t", max_size=8)[1:2]) == one
