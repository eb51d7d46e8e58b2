"""Topics: fan-out to the subscribers in this process, resuming from history, and what happens
to a subscriber that cannot keep up.

A broker keeps each topic's history and hands every new event to :class:`TopicHub`, which
offers it to each local subscriber without waiting, through a bounded buffer per subscriber.
A subscriber whose buffer is full never makes the buffer grow: by the broker's
:class:`SlowSubscriberPolicy` it reads the history at its own pace instead, loses its oldest
buffered events, or is disconnected.

Every event id is ``MILLISECONDS-SEQUENCE`` (a Redis stream entry id), so ids order the events
of a topic and a resumed subscriber can drop the ones it has seen. When the history cannot
continue from an id, the subscriber is sent a :data:`RESET_EVENT` rather than a silent gap.

A subscriber's own side, :class:`~streamkit.Subscription`, is in ``_subscription``; this module
holds what it, the hub and both brokers share: event ids, the reset and slow-subscriber
policies, and the statistics.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._exceptions import SlowSubscriberError
from ._sse import ServerSentEvent

if TYPE_CHECKING:
    from ._subscription import Subscription

__all__ = [
    "RESET_EVENT",
    "BrokerStatistics",
    "ResetReason",
    "SlowSubscriberPolicy",
    "TopicHub",
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
    """Refuse a topic name that is empty, too long or holds a control character."""
    if not isinstance(topic, str):
        raise TypeError(f"a topic must be a str, got {type(topic).__name__}: {topic!r}")
    if not 0 < len(topic) <= 256 or _CONTROL_CHARACTER.search(topic):
        raise ValueError(
            f"a topic must be 1 to 256 characters without control characters, got {topic!r:.80}"
        )


def event_fields(event: ServerSentEvent | str) -> tuple[str | None, str]:
    """The ``(event name, data)`` of an event to publish; the broker assigns its id."""
    if isinstance(event, str):
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
    if event.data is None:
        raise ValueError(f"a published event must have data: {event!r:.120}")
    return event.event, event.data


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
    #: Disconnect it: iterating its subscription raises :exc:`~streamkit.SlowSubscriberError`.
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
class HistoryPage:
    """What a broker's history holds after an id: the events, or why it cannot say.

    :param entries: up to the asked-for number of events after the id, oldest first.
    :param reset: set when the history does not hold the id itself.
    :param latest: the newest id in the history (``None`` if none), where a reset resumes.
    """

    entries: Sequence[Entry] = ()
    reset: ResetReason | None = None
    latest: str | None = None


class TopicHub:
    """What both brokers share: the subscribers of each topic in this process, and the
    slow-subscriber policy. A broker calls :meth:`_deliver` for every new event.

    :param subscriber_buffer: live events a subscriber may have waiting before the
        *slow_subscriber_policy* applies.
    :param slow_subscriber_policy: what happens to a subscriber whose buffer is full.
    :param max_catching_up: how many subscribers may read the history at once after falling
        behind; with :attr:`SlowSubscriberPolicy.CATCH_UP`, one more is disconnected.
    :raises ValueError: *subscriber_buffer* or *max_catching_up* is below 1 or 0.
    """

    def __init__(
        self,
        *,
        subscriber_buffer: int,
        slow_subscriber_policy: SlowSubscriberPolicy,
        max_catching_up: int,
    ) -> None:
        for name, value, least in (
            ("subscriber_buffer", subscriber_buffer, 1),
            ("max_catching_up", max_catching_up, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int of at least {least}, got {value!r}")
        if not isinstance(slow_subscriber_policy, SlowSubscriberPolicy):
            raise TypeError(
                f"slow_subscriber_policy must be a SlowSubscriberPolicy, "
                f"got {slow_subscriber_policy!r}"
            )
        self.subscriber_buffer = subscriber_buffer
        self.slow_subscriber_policy = slow_subscriber_policy
        self.max_catching_up = max_catching_up
        # Dicts, not sets: events are offered in the order the subscribers came.
        self._subscribers: dict[str, dict[Subscription, None]] = {}
        self._catching_up = 0
        self._published = self._delivered = self._dropped = self._slow_disconnects = 0

    def subscribe(self, topic: str, *, last_event_id: str | None = None) -> Subscription:
        """Subscribe to *topic*; enter the result with ``async with`` and iterate it.

        :param topic: the topic's name.
        :param last_event_id: resume after this event (a client's ``Last-Event-ID``): the
            events published since are replayed first. An id the history does not hold is
            answered with a :data:`RESET_EVENT`. ``None`` starts with the next event.
        :raises ValueError: the topic name is empty, too long or holds a control character.
        """
        # Imported here, not at the top: _subscription imports this module's ids and types.
        from ._subscription import Subscription

        check_topic(topic)
        return Subscription(self, topic, last_event_id)

    def statistics(self) -> BrokerStatistics:
        """The subscriber counts as they are now."""
        subscriptions = [s for group in self._subscribers.values() for s in group]
        return BrokerStatistics(
            topics=len(self._subscribers),
            subscribers=len(subscriptions),
            catching_up=self._catching_up,
            buffered=sum(subscription.buffered for subscription in subscriptions),
            published=self._published,
            delivered=self._delivered,
            dropped=self._dropped,
            slow_disconnects=self._slow_disconnects,
        )

    # -- for the brokers ----------------------------------------------------------------------

    def _deliver(self, topic: str, entry: Entry) -> None:
        for subscription in self._subscribers.get(topic, ()):
            if subscription._offer(entry):
                self._delivered += 1

    def _close_subscriptions(self) -> None:
        for group in self._subscribers.values():
            for subscription in group:
                subscription._shut()

    async def _watch(self, topic: str) -> None:
        """Called before a topic's first local subscriber is added."""

    def _unwatch(self, topic: str) -> None:
        """Called once a topic's last local subscriber has left."""

    async def _history_after(self, topic: str, after: str, limit: int) -> HistoryPage:
        raise NotImplementedError

    async def _latest_id(self, topic: str) -> str | None:
        raise NotImplementedError

    # -- for the subscriptions ----------------------------------------------------------------

    async def _add(self, subscription: Subscription) -> None:
        topic = subscription.topic
        if topic not in self._subscribers:
            await self._watch(topic)
        self._subscribers.setdefault(topic, {})[subscription] = None

    def _remove(self, subscription: Subscription) -> None:
        self._caught_up(subscription)
        group = self._subscribers.get(subscription.topic)
        if group is not None:
            group.pop(subscription, None)
            if not group:
                del self._subscribers[subscription.topic]
                self._unwatch(subscription.topic)

    def _caught_up(self, subscription: Subscription) -> None:
        if subscription._lagging:
            subscription._lagging = False
            self._catching_up -= 1

    def _overflow(self, subscription: Subscription, entry: Entry) -> bool:
        policy = self.slow_subscriber_policy
        if policy is SlowSubscriberPolicy.DROP_OLDEST:
            subscription._drop_oldest(entry)
            self._dropped += 1
            return True
        if policy is SlowSubscriberPolicy.CATCH_UP and (
            subscription._lagging or self._catching_up < self.max_catching_up
        ):
            subscription._fall_behind()
            if not subscription._lagging:
                subscription._lagging = True
                self._catching_up += 1
            return False
        self._slow_disconnects += 1
        subscription._fail(
            SlowSubscriberError(
                f"subscriber to {subscription.topic!r} had {self.subscriber_buffer} events "
                f"waiting and was disconnected ({policy.name}, "
                f"{self._catching_up} of {self.max_catching_up} catching up)"
            )
        )
        return False
