"""The hub: fan-out to the subscribers of each topic in this process, each subscriber's side
of it, and what happens to a subscriber that cannot keep up. One state machine, one module.

A broker keeps each topic's history and hands every new event to its :class:`TopicHub`, which
offers it to each local :class:`Subscription` without waiting, through a bounded buffer per
subscriber. A subscriber whose buffer is full never makes the buffer grow: by the broker's
:class:`~streamkit.broadcast.SlowSubscriberPolicy` it reads the history at its own pace
instead, loses its oldest buffered events, or is disconnected. A subscription reads the history
through the hub when it resumes or falls behind, and rejoins the live events once caught up.
The plain values both sides use (ids, policies, statistics) are in ``_topics``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Self

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._checks import check_count
from ._exceptions import SlowSubscriberError
from ._sse import ServerSentEvent
from ._topics import (
    RESET_EVENT,
    BrokerStatistics,
    Entry,
    EventKey,
    HistoryPage,
    ResetReason,
    SlowSubscriberPolicy,
    check_topic,
    format_event_id,
    parse_event_id,
)

__all__ = ["Subscription", "TopicHub"]


class TopicHub:
    """What both brokers share: the subscribers of each topic in this process, and the
    slow-subscriber policy. A broker calls :meth:`_deliver` for every new event.

    :param subscriber_buffer: live events a subscriber may have waiting before the
        *slow_subscriber_policy* applies.
    :param slow_subscriber_policy: what happens to a subscriber whose buffer is full.
    :param max_catching_up: how many subscribers may read the history at once after falling
        behind; with :attr:`SlowSubscriberPolicy.CATCH_UP`, one more is disconnected.
    :raises TypeError: *subscriber_buffer* or *max_catching_up* is not an int, or the policy
        is not a :class:`~streamkit.broadcast.SlowSubscriberPolicy`.
    :raises ValueError: *subscriber_buffer* is below 1 or *max_catching_up* below 0.
    """

    def __init__(
        self,
        *,
        subscriber_buffer: int,
        slow_subscriber_policy: SlowSubscriberPolicy,
        max_catching_up: int,
    ) -> None:
        check_count("subscriber_buffer", subscriber_buffer)
        check_count("max_catching_up", max_catching_up, least=0)
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

    async def _deliver_batch(self, topic: str, entries: Sequence[Entry]) -> None:
        """Deliver events that arrived together (one read of a broker's reader), paced by the
        subscribers' room.

        A batch can be larger than a buffer: handed over at once it would overflow every
        subscriber, those that keep up too. So a subscriber whose buffer is full when an event
        comes is given the loop to drain it, for at most :data:`BATCH_ROOM_WAIT` seconds,
        before the next event is delivered to anyone; one that made no room by then meets the
        slow-subscriber policy, and leaves the fan-out so it delays no later event. Nothing is
        checked or awaited while every buffer has room.
        """
        for entry in entries:
            waiting = self._offer_all(self._subscribers.get(topic, ()), entry)
            deadline, turns = anyio.current_time() + BATCH_ROOM_WAIT, 0
            while waiting and anyio.current_time() < deadline:
                # A turn of the loop is what a subscriber that keeps up needs to take an
                # event; past a few, a short sleep, so a stalled one does not spin the loop.
                await anyio.sleep(0 if turns < 32 else 0.001)
                turns += 1
                waiting = self._offer_all(waiting, entry)
            for subscription in waiting:
                if subscription._offer(entry):  # still full: the policy applies now
                    self._delivered += 1

    def _offer_all(self, subscriptions: Iterable[Subscription], entry: Entry) -> list[Subscription]:
        """Offer *entry* to each of *subscriptions*; return those whose buffer was full."""
        full = []
        for subscription in subscriptions:
            offered = subscription._offer(entry, wait_for_room=True)
            if offered is None:
                full.append(subscription)
            elif offered:
                self._delivered += 1
        return full

    def _history_lost(self, topic: str) -> None:
        """The broker's history lost events of *topic* that its live subscribers may not have
        had: each reads the history from its last event instead, which sends it the reset a
        client resuming from there gets."""
        for subscription in self._subscribers.get(topic, ()):
            subscription._fall_behind()

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


#: The longest a batch of events read together waits, before each of its events, for a
#: subscriber with a full buffer to make room (see :meth:`TopicHub._deliver_batch`).
BATCH_ROOM_WAIT = 0.25

#: How many history events a catching-up subscriber reads at once.
REPLAY_PAGE_SIZE = 100


class Subscription:
    """One subscriber to a topic: the events after its ``last_event_id`` from the history,
    then the live ones, each once and in order. Made by a broker's ``subscribe()``::

        async with broker.subscribe("prices", last_event_id=request_id) as subscription:
            async for event in subscription:
                ...

    Live events are buffered from the moment the block is entered, before the history is
    read, so nothing published meanwhile is missed. Iterating ends when the broker closes.

    When the history cannot go on from ``last_event_id`` (see :class:`ResetReason`), the first
    event is a :data:`RESET_EVENT` whose id is the newest event at that moment: the events up
    to it are not sent (the client reloads its state instead), the ones after it follow.

    :ivar topic: the topic's name.
    :ivar last_event_id: the id it resumes after, as given.
    :raises SlowSubscriberError: from iteration, when the broker's policy disconnected this
        subscriber for falling behind.
    """

    def __init__(self, hub: TopicHub, topic: str, last_event_id: str | None) -> None:
        self.topic = topic
        self.last_event_id = last_event_id
        self._hub = hub
        self._send: MemoryObjectSendStream[Entry] | None = None
        self._receive: MemoryObjectReceiveStream[Entry] | None = None
        self._entered = False
        self._closed = False
        self._replaying = False
        self._lagging = False
        self._failure: SlowSubscriberError | None = None
        self._dropped_through: str | None = None
        self._iterator: AsyncGenerator[ServerSentEvent] | None = None

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError(f"a subscription to {self.topic!r} can be entered only once")
        self._entered = True
        self._open_buffer()
        try:
            await self._hub._add(self)
        except BaseException:
            self._close_buffer(discard=True)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close_buffer(discard=True)
        self._hub._remove(self)
        if self._iterator is not None:
            await self._iterator.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ServerSentEvent:
        if self._iterator is None:
            if not self._entered:
                raise RuntimeError("enter the subscription (async with) before iterating it")
            self._iterator = self._events()
        return await self._iterator.__anext__()

    @property
    def catching_up(self) -> bool:
        """Whether it fell behind and reads the history instead of the live events."""
        return self._lagging

    @property
    def buffered(self) -> int:
        """Live events waiting in this subscriber's buffer."""
        receive = self._receive
        return 0 if receive is None else receive.statistics().current_buffer_used

    # -- called by the hub, never waiting -----------------------------------------------------

    def _open_buffer(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Entry](
            self._hub.subscriber_buffer
        )

    def _close_buffer(self, *, discard: bool) -> None:
        """Stop buffering live events; with *discard*, free the ones buffered too."""
        send, receive = self._send, self._receive
        self._send = None
        if send is not None:
            send.close()
        if discard and receive is not None:
            self._receive = None
            # A reader waiting on the (then empty) buffer is woken by EndOfStream and closes
            # it itself; closing it under that reader would leave it waiting.
            if not receive.statistics().tasks_waiting_receive:
                receive.close()

    def _offer(self, entry: Entry, *, wait_for_room: bool = False) -> bool | None:
        """Buffer *entry*: true if it was, false if not (catching up, or the policy dropped or
        disconnected it); ``None`` with *wait_for_room* when the buffer is full, the policy
        not applied yet."""
        send = self._send
        if send is None:
            return False  # catching up: it reads this event from the history
        try:
            send.send_nowait(entry)
        except anyio.WouldBlock:
            return None if wait_for_room else self._hub._overflow(self, entry)
        return True

    def _drop_oldest(self, entry: Entry) -> None:
        assert self._send is not None
        assert self._receive is not None
        _, dropped = self._receive.receive_nowait()
        self._dropped_through = dropped.id
        self._send.send_nowait(entry)

    def _fall_behind(self) -> None:
        # A live buffer holds the very next events: they are read first, then the history
        # from the last of them. While replaying, it holds later ones, past a gap: dropped.
        self._close_buffer(discard=self._replaying)

    def _fail(self, failure: SlowSubscriberError) -> None:
        self._failure = failure
        self._close_buffer(discard=True)

    def _shut(self) -> None:
        self._closed = True
        self._close_buffer(discard=True)

    # -- the iteration ------------------------------------------------------------------------

    def _reset(
        self, reason: ResetReason, resume_id: str | None, position: EventKey | None
    ) -> ServerSentEvent:
        # The last event this subscriber was sent, where the client's state stands; before
        # the first, the id it came with.
        last = self.last_event_id if position is None else format_event_id(position)
        data = json.dumps({"reason": reason.value, "last_event_id": last})
        # An empty id clears the browser's last event id: it then reconnects without one.
        return ServerSentEvent(event=RESET_EVENT, id=resume_id or "", data=data)

    async def _events(self) -> AsyncGenerator[ServerSentEvent]:
        hub, topic = self._hub, self.topic
        position: EventKey | None = None
        if self.last_event_id:  # an empty one is what a reset's empty id leads to: none
            position = parse_event_id(self.last_event_id)
            if position is None:
                latest = await hub._latest_id(topic)
                yield self._reset(ResetReason.INVALID, latest, None)
                position = None if latest is None else parse_event_id(latest)
            else:
                self._replaying = True
        while True:
            if self._failure is not None:
                raise self._failure
            if self._closed:
                return
            if self._replaying:
                if self._send is None:
                    # Rejoin before the last reads of the history, so what is published after
                    # them is buffered; what both hold is dropped by its id below.
                    self._open_buffer()
                while position is not None:
                    after = format_event_id(position)
                    page = await hub._history_after(topic, after, REPLAY_PAGE_SIZE)
                    if page.reset is not None:
                        yield self._reset(page.reset, page.latest, position)
                        position = None if page.latest is None else parse_event_id(page.latest)
                        continue
                    for key, event in page.entries:
                        position = key
                        yield event
                    if len(page.entries) < REPLAY_PAGE_SIZE:
                        break
                if self._send is not None:  # it did not overflow again meanwhile: caught up
                    self._replaying = False
                    hub._caught_up(self)
                continue
            receive = self._receive
            if receive is None:
                self._replaying = True  # fell behind, and read what its buffer held
                continue
            try:
                key, event = await receive.receive()
            except anyio.EndOfStream:
                receive.close()
                if self._receive is receive:
                    self._receive = None
                continue
            except anyio.ClosedResourceError:
                continue  # closed by the broker or by an overflow: decided at the top
            if self._dropped_through is not None:
                resume_id, self._dropped_through = self._dropped_through, None
                dropped = parse_event_id(resume_id)
                if dropped is not None and (position is None or dropped > position):
                    yield self._reset(ResetReason.OVERFLOW, resume_id, position)
                    position = dropped
            if position is not None and key <= position:
                continue  # read from the history already
            position = key
            yield event
