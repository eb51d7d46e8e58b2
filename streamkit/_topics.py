"""Topics, as plain values: event ids, topic names, the reset and slow-subscriber policies, the
statistics and a page of history. The hub (``_hub``) and both brokers share them; nothing here
waits or holds state.

Every event id is ``MILLISECONDS-SEQUENCE`` (a Redis stream entry id), so ids order the events
of a topic and a resumed subscriber can drop the ones it has seen. When the history cannot
continue from an id, the subscriber is sent a :data:`RESET_EVENT` rather than a silent gap.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ._checks import check_text
from ._json import encode_json
from ._sse import ServerSentEvent

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "RESET_EVENT",
    "BrokerStatistics",
    "HistoryPage",
    "ResetReason",
    "SlowSubscriberPolicy",
    "TopicStatistics",
    "check_topic",
    "event_fields",
    "events_fields",
    "format_event_id",
    "parse_event_id",
]

#: The name of the event that tells a subscriber its history has a gap: discard what was
#: built from earlier events and load the current state again. Its data is a JSON object
#: ``{"reason": ..., "last_event_id": ...}``, and its id is where the stream goes on from.
RESET_EVENT = "reset"

_EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_ID_LIMIT = 2**64  # a Redis stream id is two unsigned 64-bit integers

EventKey = tuple[int, int]
Entry = tuple[EventKey, ServerSentEvent]


def parse_event_id(text: str) -> EventKey | None:
    """The ``(milliseconds, sequence)`` of an event id, or ``None`` if it is not one."""
    match = _EVENT_ID.fullmatch(text)
    if match is None:
        return None
    key = (int(match[1]), int(match[2]))
    return key if key[0] < _ID_LIMIT and key[1] < _ID_LIMIT else None


def format_event_id(key: EventKey) -> str:
    """The canonical text of an event id."""
    return f"{key[0]}-{key[1]}"


def check_topic(topic: str) -> None:
    """Refuse a topic name that is empty, too long, or holds a control character or a lone
    surrogate."""
    if not isinstance(topic, str):
        raise TypeError(f"a topic must be a str, got {type(topic).__name__}: {topic!r}")
    if (
        not 0 < len(topic) <= 256
        or _CONTROL_CHARACTER.search(topic)
        or not (topic.isascii() or _encodable(topic))
    ):
        raise ValueError(
            "a topic must be 1 to 256 characters without control characters or lone "
            f"surrogates, got {topic!r:.80}"
        )


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


#: The default bound of a published event's size, in bytes: a broker keeps each event in its
#: history and hands it to every subscriber, so one of 100 MiB, published by mistake, would
#: be held that many times over until it is trimmed.
DEFAULT_MAX_EVENT_SIZE = 1 << 20


def event_fields(
    event: ServerSentEvent | str, *, topic: str, max_size: int
) -> tuple[str | None, str]:
    """The ``(event name, data)`` of an event to publish to *topic*; the broker assigns its
    id. Data that is not a ``str`` is encoded as JSON text here.

    :raises TypeError: the event is neither, or its data cannot be encoded as JSON.
    :raises ValueError: it carries what the broker owns (an id), or no data, or data JSON
        cannot carry, or its name and data hold more than *max_size* bytes of UTF-8.
    """
    if isinstance(event, str):
        check_text("data", event)
        _check_size(topic, None, event, max_size)
        return None, event
    if not isinstance(event, ServerSentEvent):
        raise TypeError(
            f"publish takes a ServerSentEvent or a str, got {type(event).__name__}: {event!r:.80}"
        )
    for name in ("id", "retry", "comment"):
        if getattr(event, name) is not None:
            raise ValueError(
                f"a published event carries only event and data, not {name}: {event!r:.120}"
                + (" (the broker assigns ids)" if name == "id" else "")
            )
    data = event.data
    if data is None:
        raise ValueError(f"a published event must have data: {event!r:.120}")
    if not isinstance(data, str):
        # As JSON text now, where the value is made: a value JSON cannot carry is refused
        # before it is in any history, and every broker keeps, and hands on, the same text.
        try:
            data = encode_json(data)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"published data {exc}") from None
    _check_size(topic, event.event, data, max_size)
    return event.event, data


def events_fields(
    events: Iterable[ServerSentEvent | str], *, topic: str, max_size: int
) -> list[tuple[str | None, str]]:
    """The :func:`event_fields` of each of *events*, in order, all checked: a burst's.

    Plain ASCII text within *max_size*, most of a burst, is taken as it is (it holds no lone
    surrogate, and its size in bytes is its length): a call and two checks of its own per
    event were much of a burst's cost.

    :raises TypeError: *events* is one event's value (a ``str``, ``bytes``, a mapping) rather
        than events, or as :func:`event_fields`, for the first event that cannot be sent.
    :raises ValueError: as :func:`event_fields`, likewise.
    """
    if isinstance(events, str | bytes | bytearray | Mapping):
        # Iterated, each character (each key) would be published as an event of its own.
        raise TypeError(
            f"publish_many takes events (an iterable of ServerSentEvent or str), got "
            f"{type(events).__name__}: {events!r:.80}; publish one event with publish()"
        )
    return [
        (None, event)
        if type(event) is str and len(event) <= max_size and event.isascii()
        else event_fields(event, topic=topic, max_size=max_size)
        for event in events
    ]


def _check_size(topic: str, name: str | None, data: str, max_size: int) -> None:
    # A character is 1 to 4 bytes of UTF-8: encoded only where that leaves it in doubt.
    characters = len(data) + (len(name) if name else 0)
    if characters * 4 <= max_size:
        return
    size = len(data.encode()) + (len(name.encode()) if name else 0)
    if size > max_size:
        raise ValueError(
            f"an event of {size} bytes to topic {topic!r:.80} is over the broker's "
            f"max_event_size ({max_size}): publish a reference to large data (a URL, a key) "
            "rather than the data, or raise max_event_size"
        )


class ResetReason(enum.Enum):
    """Why a subscriber was sent a :data:`RESET_EVENT` instead of the events it missed."""

    #: The history no longer reaches back to the id: older events were trimmed.
    TRIMMED = "trimmed"
    #: The topic has no history: it expired after a quiet spell, or never had an event.
    EXPIRED = "expired"
    #: No event in the history has the id (it came from another topic or server).
    UNKNOWN = "unknown"
    #: The ``Last-Event-ID`` is not an event id at all.
    INVALID = "invalid"
    #: The drop-oldest policy dropped events that this subscriber had not read.
    OVERFLOW = "overflow"


class SlowSubscriberPolicy(enum.Enum):
    """What happens to a subscriber whose buffer is full when an event arrives."""

    #: Leave the live fan-out and read the history at its own pace, then rejoin; when
    #: ``max_catching_up`` subscribers already do, disconnect it instead.
    CATCH_UP = "catch_up"
    #: Drop its oldest buffered event, and send a reset (``overflow``) before the next one.
    DROP_OLDEST = "drop_oldest"
    #: Disconnect it: iterating its subscription raises
    #: :exc:`~streamkit.broadcast.SlowSubscriberError`.
    DISCONNECT = "disconnect"


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerStatistics:
    """A snapshot of a broker's subscribers in this process.

    :param topics: topics with at least one subscriber here.
    :param subscribers: subscriptions open here.
    :param catching_up: subscribers reading the history after falling behind.
    :param buffered: events waiting in subscriber buffers, all subscribers together.
    :param published: events published through this broker object.
    :param delivered: events put into subscriber buffers.
    :param dropped: events the drop-oldest policy dropped.
    :param slow_disconnects: subscribers disconnected for being too slow.
    """

    topics: int
    subscribers: int
    catching_up: int
    buffered: int
    published: int
    delivered: int
    dropped: int
    slow_disconnects: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicStatistics:
    """A snapshot of one topic's subscribers in this process, counted since its first local
    subscriber came (all zero once the last one has left).

    :param topic: the topic's name.
    :param subscribers: subscriptions to it open here.
    :param deliveries: events given to its subscribers (written to their streams' buffers,
        or put into their own).
    :param drops: events the drop-oldest policy dropped.
    :param resets: :data:`RESET_EVENT` events sent to its subscribers.
    :param catch_ups: times a subscriber fell behind and went to read the history.
    :param slow_disconnects: subscribers disconnected for being too slow.
    """

    topic: str
    subscribers: int
    deliveries: int
    drops: int
    resets: int
    catch_ups: int
    slow_disconnects: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryPage:
    """What a broker's history holds after an id: the events, or why it cannot say.

    :param entries: up to the asked-for number of events after the id, oldest first.
    :param reset: set when the history does not hold the id itself.
    :param latest: the newest id in the history (``None`` if none), where a reset resumes.
    """

    entries: Sequence[Entry] = ()
    reset: ResetReason | None = None
    latest: str | None = None
