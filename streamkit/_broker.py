"""Brokers: publish an event to a topic, subscribe to a topic from a ``Last-Event-ID``.

:class:`Broker` is the protocol; :class:`MemoryBroker` keeps a bounded history per topic in
this process (one server), :class:`~streamkit.broadcast.RedisBroker` keeps it in Redis Streams (many
servers). :func:`topic_response` serves a topic as an event stream in one line.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Protocol, Self, Unpack

import anyio.lowlevel
from starlette.exceptions import HTTPException

from ._checks import check_count, check_duration
from ._ends import EndReason
from ._exceptions import SlowSubscriberError, StreamkitError
from ._hub import Subscription, TopicHub
from ._loop import in_loop_thread
from ._responses import EventSourceArguments, EventSourceResponse
from ._sender import StreamSender
from ._sse import ServerSentEvent, trusted_event
from ._topics import (
    DEFAULT_MAX_EVENT_SIZE,
    RESET_EVENT,
    BrokerStatistics,
    Entry,
    EventKey,
    HistoryPage,
    ResetReason,
    SlowSubscriberPolicy,
    check_topic,
    event_fields,
    events_fields,
    format_event_id,
    parse_event_id,
)

__all__ = [
    "DEFAULT_SLOW_SUBSCRIBER_EVENT",
    "Broker",
    "MemoryBroker",
    "TopicNameError",
    "topic_response",
]

logger = logging.getLogger("streamkit")


class Broker(Protocol):
    """What :func:`topic_response` and an application need of a broker.

    A broker is an async context manager: enter it for the application's lifetime (in its
    lifespan), which starts whatever it runs in the background and closes the subscriptions
    left when it exits.
    """

    async def publish(self, topic: str, event: ServerSentEvent | str) -> str:
        """Append *event* to *topic*'s history, deliver it to its subscribers, return its id."""
        ...

    def subscribe(
        self, topic: str, *, last_event_id: str | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[ServerSentEvent]]:
        """The events of *topic* after *last_event_id*, then the live ones."""
        ...

    def statistics(self) -> BrokerStatistics:
        """The subscriber counts in this process."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


class _History:
    __slots__ = ("events", "keys", "touched_at")

    def __init__(self, size: int) -> None:
        self.keys: collections.deque[EventKey] = collections.deque(maxlen=size)
        self.events: collections.deque[ServerSentEvent] = collections.deque(maxlen=size)
        self.touched_at = time.monotonic()


def _check_in_loop_thread() -> None:
    if not in_loop_thread():
        raise RuntimeError(
            "MemoryBroker.publish_nowait must be called in the event loop's thread; from "
            "another thread, call anyio.from_thread.run_sync(broker.publish_nowait, topic, "
            "event)"
        )


def _closed_error(consequence: str, act: str) -> RuntimeError:
    """What a closed :class:`MemoryBroker` raises to one who would *act* on it."""
    return RuntimeError(
        f"MemoryBroker is closed (its async with block has exited): {consequence}; {act} "
        "while it is entered, or enter it again"
    )


class MemoryBroker(TopicHub):
    """A broker for one process: each topic's last *history_size* events, kept in memory.

    Ids are ``MILLISECONDS-SEQUENCE`` like Redis stream ids, so a client that reconnects to
    a restarted server is sent a reset rather than events it never saw; no two topics share
    one, so an id from another topic is answered with a reset too.

    :param history_size: events kept per topic for resuming subscribers.
    :param history_ttl: a topic's history is dropped once nothing was published to it for
        this many seconds; ``None`` keeps it as long as the process runs.
    :param subscriber_buffer: see :class:`~streamkit.broadcast.SlowSubscriberPolicy`.
    :param slow_subscriber_policy: see :class:`~streamkit.broadcast.SlowSubscriberPolicy`.
    :param max_catching_up: see :class:`~streamkit.broadcast.SlowSubscriberPolicy`.
    :param max_event_size: the most bytes (UTF-8) an event's data and name may hold; a larger
        one is refused where it is published (1 MiB).
    :raises TypeError: a size or duration is not a number.
    :raises ValueError: a size or duration is out of range.
    """

    def __init__(
        self,
        *,
        history_size: int = 1000,
        history_ttl: float | None = 3600.0,
        subscriber_buffer: int = 64,
        slow_subscriber_policy: SlowSubscriberPolicy = SlowSubscriberPolicy.CATCH_UP,
        max_catching_up: int = 16,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        super().__init__(
            subscriber_buffer=subscriber_buffer,
            slow_subscriber_policy=slow_subscriber_policy,
            max_catching_up=max_catching_up,
        )
        check_count("history_size", history_size)
        check_duration("history_ttl", history_ttl, optional=True)
        check_count("max_event_size", max_event_size)
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.max_event_size = max_event_size
        self._histories: dict[str, _History] = {}
        self._last_key: EventKey = (0, -1)  # the last id given out, to any topic
        self._closed = False  # its async with block has exited
        self._next_sweep = time.monotonic() + (history_ttl or 0.0)

    async def __aenter__(self) -> Self:
        self._closed = False
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closed = True
        self._close_subscriptions()

    def _check_open(self, topic: str) -> None:
        # Once its block has exited, its subscriptions are shut: an event published then would
        # reach no one, and no one would know. (One never entered is served: it runs nothing.)
        if self._closed:
            raise _closed_error(
                f"an event published to topic {topic!r:.80} would reach no subscriber", "publish"
            )

    def _check_subscribable(self, topic: str) -> None:
        # Likewise: a subscriber would wait for ever, for events that no publish can send.
        if self._closed:
            raise _closed_error(
                f"a subscriber to topic {topic!r:.80} would get no event", "subscribe"
            )

    async def publish(self, topic: str, event: ServerSentEvent | str) -> str:
        """Append *event* to *topic*'s history and offer it to the topic's subscribers.

        :param topic: the topic's name.
        :param event: the data, or an event with data and perhaps an event name.
        :returns: the id given to the event.
        :raises ValueError: the topic name is invalid, or the event carries an id, retry or
            comment, or no data, or is over ``max_event_size``.
        :raises RuntimeError: the broker is closed: its ``async with`` block has exited.
        """
        check_topic(topic)
        name, data = event_fields(event, topic=topic, max_size=self.max_event_size)
        self._check_open(topic)
        await anyio.lowlevel.checkpoint()
        self._check_open(topic)  # closed while this waited
        return self._append(topic, name, data)

    async def publish_many(self, topic: str, events: Iterable[ServerSentEvent | str]) -> list[str]:
        """Publish *events* to *topic* in order, as a burst: one checkpoint, then all of them,
        handed to each subscriber that keeps up in one call, and written by its stream in one
        write. What the subscribers' buffers cannot hold meets their
        :class:`~streamkit.broadcast.SlowSubscriberPolicy`, as with :meth:`publish_nowait`.

        :returns: the events' ids, in order.
        :raises TypeError: *events* is one event's value (a ``str``, ``bytes``, a mapping),
            not an iterable of events; or an event is neither a ``ServerSentEvent`` nor a
            ``str``.
        :raises ValueError: as :meth:`publish`, for any of the events; then none is
            published.
        :raises RuntimeError: as :meth:`publish`.
        """
        check_topic(topic)
        size = self.max_event_size
        # All checked before any is published.
        fields = events_fields(events, topic=topic, max_size=size)
        self._check_open(topic)
        await anyio.lowlevel.checkpoint()
        self._check_open(topic)
        entries = self._record_many(topic, fields)
        self._deliver_many(topic, entries)
        return [event.id or "" for _, event in entries]

    def publish_nowait(self, topic: str, event: ServerSentEvent | str) -> str:
        """What :meth:`publish` does, without its checkpoint: for a function of the event
        loop that cannot await (a protocol's callback, say), and for a burst.

        :meth:`publish` lets the loop run before it returns, so a subscriber that keeps up
        takes each event as it comes. Events published with this, back to back, are taken
        together instead: each subscriber's stream writes all that are in its buffer at once,
        one write where ``publish`` makes one per event. More than a subscriber's buffers
        hold (its stream's ``buffer_size`` and ``subscriber_buffer``) without letting the loop
        run meets the :class:`~streamkit.broadcast.SlowSubscriberPolicy` of every subscriber,
        as a slow one would.

        Call it in the event loop's thread; from another thread, through
        ``anyio.from_thread.run_sync(broker.publish_nowait, topic, event)``.

        :returns: the id given to the event.
        :raises ValueError: as :meth:`publish`.
        :raises RuntimeError: called from a thread that runs no event loop, or the broker is
            closed.
        """
        check_topic(topic)
        name, data = event_fields(event, topic=topic, max_size=self.max_event_size)
        _check_in_loop_thread()
        self._check_open(topic)
        return self._append(topic, name, data)

    def _append(self, topic: str, name: str | None, data: str) -> str:
        """Append an event, its fields checked, to *topic*'s history, deliver it, return its
        id."""
        entry = self._record(topic, name, data)
        self._deliver(topic, entry)
        return entry[1].id or ""

    def _record(self, topic: str, name: str | None, data: str) -> Entry:
        """Append an event, its fields checked, to *topic*'s history; return it as an entry,
        not yet delivered."""
        return self._record_many(topic, [(name, data)])[0]

    def _record_many(self, topic: str, fields: list[tuple[str | None, str]]) -> list[Entry]:
        """Append events, their fields checked, to *topic*'s history, in order; return them
        as entries, not yet delivered. The history is found, and the clocks read, once for
        them all: a burst's events cost that once."""
        self._sweep()
        history = self._history(topic)
        if history is None:
            history = self._histories[topic] = _History(self.history_size)
        keys = history.keys
        # From the broker's last id, not the topic's: ids are unique across topics, so an id
        # another topic gave out is in no other's history, and resuming from it is a reset,
        # where two topics' first events of one millisecond were both MILLISECONDS-0.
        milliseconds, sequence = self._last_key
        now = time.time_ns() // 1_000_000
        if now > milliseconds:
            milliseconds, sequence = now, -1
        entries = []
        for name, data in fields:
            sequence += 1
            key = (milliseconds, sequence)
            # Made without the event's checks: its name and data were checked by
            # event_fields(), and the id is the broker's own. They cost more than the rest.
            entries.append((key, trusted_event(data, name, format_event_id(key), None)))
        if entries:
            self._last_key = entries[-1][0]
        keys.extend(key for key, _ in entries)
        history.events.extend(event for _, event in entries)
        history.touched_at = time.monotonic()
        self._published += len(entries)
        return entries

    def _history(self, topic: str) -> _History | None:
        history = self._histories.get(topic)
        if history is not None and self.history_ttl is not None:
            if time.monotonic() - history.touched_at > self.history_ttl:
                del self._histories[topic]
                return None
        return history

    def _sweep(self) -> None:
        if self.history_ttl is None or time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.history_ttl
        for topic in list(self._histories):
            self._history(topic)

    async def _history_after(self, topic: str, after: str, limit: int) -> HistoryPage:
        await anyio.lowlevel.checkpoint()
        history = self._history(topic)
        if history is None or not history.keys:
            return HistoryPage(reset=ResetReason.EXPIRED)
        key = parse_event_id(after)
        assert key is not None
        index = bisect.bisect_left(history.keys, key)
        if index == len(history.keys) or history.keys[index] != key:
            reason = ResetReason.TRIMMED if index == 0 else ResetReason.UNKNOWN
            return HistoryPage(reset=reason, latest=format_event_id(history.keys[-1]))
        stop = index + 1 + limit
        return HistoryPage(
            entries=list(
                zip(
                    itertools.islice(history.keys, index + 1, stop),
                    itertools.islice(history.events, index + 1, stop),
                    strict=True,
                )
            )
        )

    async def _latest_id(self, topic: str) -> str | None:
        await anyio.lowlevel.checkpoint()
        history = self._history(topic)
        return format_event_id(history.keys[-1]) if history and history.keys else None


def _idle_fallback(last: object) -> ServerSentEvent | None:
    """A topic stream's idle fallback: the default ``stale`` event, but none after a reset,
    which is no state to repeat."""
    if isinstance(last, ServerSentEvent) and last.event == RESET_EVENT:
        return None
    return EventSourceResponse.default_idle_fallback(last)


#: What a subscriber disconnected for being too slow is sent last: reconnect in 5 seconds,
#: resuming from the history then.
DEFAULT_SLOW_SUBSCRIBER_EVENT = ServerSentEvent(event="slow-subscriber", data="", retry=5000)


class TopicNameError(StreamkitError, HTTPException, ValueError):
    """A topic name :func:`topic_response` was given cannot be a topic (empty, over 256
    characters, a control character or a lone surrogate).

    It is a :class:`ValueError` to a caller, and a Starlette ``HTTPException`` with status
    400 whose detail names the rule: in a Starlette or FastAPI application, a topic taken from
    the URL that no topic may have is answered ``400 Bad Request``, before any stream starts.
    """

    def __init__(self, detail: str) -> None:
        HTTPException.__init__(self, status_code=400, detail=detail)

    def __str__(self) -> str:
        return self.detail


def topic_response(
    broker: Broker,
    topic: str,
    *,
    slow_subscriber_event: ServerSentEvent | None = DEFAULT_SLOW_SUBSCRIBER_EVENT,
    **arguments: Unpack[EventSourceArguments],
) -> EventSourceResponse:
    """Serve *topic* as an event stream: ``return topic_response(broker, "prices")``.

    A reconnecting client's ``Last-Event-ID`` resumes it after that event (or is answered
    with a :data:`~streamkit.broadcast.RESET_EVENT`); heartbeats, timeouts and shutdown are those of
    :class:`~streamkit.EventSourceResponse`. The subscription is closed whatever ends the
    stream (closing it awaits nothing that a cancellation could cut short).

    :param broker: the broker that holds the topic.
    :param topic: the topic's name.
    :param slow_subscriber_event: sent last to a subscriber the broker disconnected for being
        too slow (the stream then ends with :attr:`~streamkit.EndReason.SEND_TIMEOUT`; the
        broker counts it in ``slow_disconnects``); carry a ``retry``. ``None`` sends nothing.

    The other arguments are those of :class:`~streamkit.EventSourceResponse`, but for the
    default ``buffer_size`` with either of streamkit's brokers: the broker's
    ``subscriber_buffer``. The frames in that buffer are the broker's one encoding of each
    event, shared by the subscribers, so a frame waiting there costs a subscriber a slot in a
    list while the others still hold it too; and a burst that fits goes out in one write per
    subscriber, where one that does not is sent on event by event. A subscriber that stopped
    reading keeps up to that many frames alive until its ``send_timeout`` ends it: with large
    events, a smaller ``buffer_size`` bounds that. And for the default ``idle_fallback``
    (with an ``idle_timeout``): the ``stale`` event repeats the last event, but none follows a
    reset, which is no state to repeat.

    :raises TopicNameError: the topic name is invalid (a :class:`ValueError`, answered 400
        by Starlette's exception handling).
    """
    try:
        check_topic(topic)
    except ValueError as exc:
        raise TopicNameError(str(exc)) from None
    if isinstance(broker, TopicHub):
        arguments.setdefault("buffer_size", broker.subscriber_buffer)
    arguments.setdefault("idle_fallback", _idle_fallback)

    # A partial of a function, not a closure: one object and its arguments' tuple per
    # subscriber rather than a function, its closure and a cell per variable (0.2 KiB).
    produce = partial(_produce_topic, broker, topic, slow_subscriber_event)
    return EventSourceResponse(produce, **arguments)


async def _produce_topic(
    broker: Broker,
    topic: str,
    slow_subscriber_event: ServerSentEvent | None,
    send: StreamSender[ServerSentEvent | str],
) -> None:
    """The producer of :func:`topic_response`'s stream."""
    # A Last-Event-ID discarded as invalid is still handed on: the client expected to
    # resume, and is sent the `invalid` reset rather than started live without a word.
    resume = send.last_event_id
    if resume is None:
        resume = send.discarded_last_event_id
    subscription = broker.subscribe(topic, last_event_id=resume)
    try:
        if isinstance(subscription, Subscription):
            # Left by a call of its own, which awaits nothing, so it completes in a cancelled
            # producer too: no exit stack (about 1 KiB per subscriber) is needed to run it
            # shielded; and not by `async with`, which would keep its exit, a bound method,
            # on the stack meanwhile.
            await subscription.__aenter__()
            try:
                # The live events straight to the buffer. No cancel scope is open here,
                # so the one it listens in can stand in for the stream's (unscoped).
                await subscription._feed(send, unscoped=True)
            finally:
                subscription._leave()
        else:
            async for event in await send.enter_async_context(subscription):
                await send(event)
    except SlowSubscriberError as exc:
        logger.info("stream of topic %r: %s", topic, exc)
        if slow_subscriber_event is not None:
            await send(slow_subscriber_event)
        send.end(EndReason.SEND_TIMEOUT)
