"""The hub: fan-out to the subscribers of each topic in this process, each subscriber's side
of it, and what happens to a subscriber that cannot keep up. One state machine, one module.

A broker keeps each topic's history and hands every new event to its :class:`TopicHub`, which
encodes it once and offers it to each local :class:`Subscription` without waiting. A
subscription that feeds a stream (:meth:`Subscription.feed`, what ``topic_response`` does) and
keeps up has those bytes put straight into its stream's buffer: no task wakes for it but the
stream's writer. One whose stream is behind gets the events in its own bounded buffer
instead, sent on by its producer as the stream makes room; when that buffer is full too, by
the broker's :class:`~streamkit.broadcast.SlowSubscriberPolicy` it reads the history at its
own pace instead, loses its oldest buffered events, or is disconnected. A subscription reads
the history through the hub when it resumes or falls behind, and rejoins the live events
once caught up.
The plain values both sides use (ids, policies, statistics) are in ``_topics``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self

import anyio
import anyio.lowlevel

from ._buffer import Waitable
from ._checks import check_count
from ._exceptions import SlowSubscriberError
from ._loop import loop_facts
from ._sender import StreamSender
from ._sse import MAX_LAST_EVENT_ID_LENGTH, ServerSentEvent, encode_event
from ._topics import (
    RESET_EVENT,
    BrokerStatistics,
    Entry,
    EventKey,
    HistoryPage,
    ResetReason,
    SlowSubscriberPolicy,
    TopicStatistics,
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
        self._counts: dict[str, _TopicCounts] = {}  # per topic with local subscribers
        # Per topic whose first local subscriber has the broker watch it: set once it has.
        self._watching: dict[str, anyio.Event] = {}
        self._catching_up = 0
        self._published = self._delivered = self._dropped = self._slow_disconnects = 0

    def subscribe(self, topic: str, *, last_event_id: str | None = None) -> Subscription:
        """Subscribe to *topic*; enter the result with ``async with`` and iterate it.

        :param topic: the topic's name.
        :param last_event_id: resume after this event (a client's ``Last-Event-ID``): the
            events published since are replayed first. An id the history does not hold is
            answered with a :data:`RESET_EVENT`. ``None`` starts with the next event.
        :raises ValueError: the topic name is empty, too long or holds a control character.
        :raises TypeError: the topic or *last_event_id* is not a ``str``.
        """
        check_topic(topic)
        if last_event_id is not None and not isinstance(last_event_id, str):
            raise TypeError(
                f"last_event_id must be a str or None, got {type(last_event_id).__name__}: "
                f"{last_event_id!r:.80}"
            )
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

    def topic_statistics(self, topic: str) -> TopicStatistics:
        """The counts of *topic* in this process, since its first local subscriber came (all
        zero once its last one has left)."""
        counts = self._counts.get(topic) or _TopicCounts()
        return TopicStatistics(
            topic=topic,
            subscribers=len(self._subscribers.get(topic, ())),
            deliveries=counts.deliveries,
            drops=counts.drops,
            resets=counts.resets,
            catch_ups=counts.catch_ups,
            slow_disconnects=counts.slow_disconnects,
        )

    # -- for the brokers ----------------------------------------------------------------------

    def _deliver(self, topic: str, entry: Entry) -> None:
        subscriptions = self._subscribers.get(topic)
        if not subscriptions:
            return
        frame = encode_event(entry[1])  # once, for every subscriber
        self._offer_each(topic, subscriptions, entry, frame, wait_for_room=False)

    def _count_deliveries(self, topic: str, delivered: int) -> None:
        self._delivered += delivered
        counts = self._counts.get(topic)
        if counts is not None:
            counts.deliveries += delivered

    def _deliver_many(self, topic: str, entries: Sequence[Entry]) -> None:
        """Deliver events published together (``publish_many``): each subscriber that keeps
        up takes them all in one call; the rest go on event by event, as :meth:`_deliver`
        would have them, each subscriber from the first it did not take."""
        subscriptions = self._subscribers.get(topic)
        if not subscriptions:
            return
        frames = [encode_event(event) for _, event in entries]  # once, for every subscriber
        behind = self._offer_burst(topic, subscriptions, entries, frames)
        for index, entry in enumerate(entries) if behind else ():
            rest = [subscription for subscription, took in behind.items() if took <= index]
            self._offer_each(topic, rest, entry, frames[index], wait_for_room=False)

    async def _deliver_batch(self, topic: str, entries: Sequence[Entry]) -> None:
        """Deliver events that arrived together (one read of a broker's reader), paced by the
        subscribers' room.

        Each subscriber that keeps up takes them all in one call. A batch can be larger than
        a buffer, though: handed over at once it would overflow every subscriber, those that
        keep up too. So from the first event a subscriber could not take, it is given the
        loop to drain its buffer before the next event is offered to it or to any other
        subscriber still behind. One that made no room for :data:`BATCH_ROOM_WAIT` seconds,
        or has kept the batch waiting longer in all than that and as much again for each
        ``subscriber_buffer`` events of it that it took, meets the slow-subscriber policy, and
        leaves the fan-out so it delays no later event (one whose oldest events the policy
        drops stays, but is not waited for again until it reads). In all, and not only for
        each event: one that reads slowly makes room now and then, and would set the pace of
        the whole batch, and of the reads of every topic after it. And more for each buffer's
        worth taken: one that keeps up with a large batch is not taken for slow when the
        loop's turns are long (a few hundred subscribers on trio). Nothing is checked or
        awaited while every buffer has room. A subscriber that arrives during such a wait
        starts live from the next batch.
        """
        subscriptions = self._subscribers.get(topic)
        if not subscriptions:
            return
        frames = [encode_event(event) for _, event in entries]
        behind = self._offer_burst(topic, subscriptions, entries, frames)
        # How long each subscriber has kept this batch waiting, in all.
        kept_waiting: dict[Subscription, float] = {}
        for index, entry in enumerate(entries) if behind else ():
            subscriptions = self._subscribers.get(topic, {})
            rest = [s for s, took in behind.items() if took <= index and s in subscriptions]
            frame = frames[index]
            waiting = self._offer_each(topic, rest, entry, frame, wait_for_room=True)
            deadline, turns = anyio.current_time() + BATCH_ROOM_WAIT, 0
            # Each of them has taken the *index* events before this one.
            allowed = BATCH_ROOM_WAIT * (1 + index / self.subscriber_buffer)
            while waiting:
                if anyio.current_time() >= deadline:
                    done, waiting = waiting, []  # no room made for this event meanwhile
                else:
                    done = [s for s in waiting if kept_waiting.get(s, 0.0) >= allowed]
                    waiting = [s for s in waiting if kept_waiting.get(s, 0.0) < allowed]
                if done:
                    # Still full, and waited for long enough: the policy applies now.
                    self._offer_each(topic, done, entry, frame, wait_for_room=False)
                if not waiting:
                    break
                # A turn of the loop is what a subscriber that keeps up needs to take an
                # event; past a few, a short sleep, so a stalled one does not spin the loop.
                started = anyio.current_time()
                await anyio.sleep(0 if turns < 32 else 0.001)
                turns += 1
                waiting = self._offer_each(topic, waiting, entry, frame, wait_for_room=True)
                waited = anyio.current_time() - started
                for subscription in waiting:
                    kept_waiting[subscription] = kept_waiting.get(subscription, 0.0) + waited

    def _offer_burst(
        self,
        topic: str,
        subscriptions: Iterable[Subscription],
        entries: Sequence[Entry],
        frames: list[bytes],
    ) -> dict[Subscription, int]:
        """Offer all of *entries*, encoded as *frames*, to the stream buffer of each of
        *subscriptions* at once, and count the deliveries; return those that did not take
        them all (their buffer full, or not attached), with how many each took."""
        behind: dict[Subscription, int] = {}
        delivered = 0
        count = len(frames)
        size = sum(map(len, frames))  # once, for every subscriber's buffer
        for subscription in subscriptions:
            offer_many = subscription._sink_many
            if offer_many is None:
                behind[subscription] = 0
                continue
            try:
                took = offer_many(frames, size)
            except anyio.ClosedResourceError:
                subscription._detach()  # the stream is ending
                continue
            if took:
                delivered += took
                key, event = entries[took - 1]
                subscription._position = key
                if (note := subscription._note) is not None:
                    note(event)
            if took < count:
                behind[subscription] = took
        self._count_deliveries(topic, delivered)
        return behind

    def _offer_each(
        self,
        topic: str,
        subscriptions: Iterable[Subscription],
        entry: Entry,
        frame: bytes,
        *,
        wait_for_room: bool,
    ) -> list[Subscription]:
        """Offer *entry*, encoded as *frame*, to each of *subscriptions*, and count the
        deliveries; return those whose buffers were full (only with *wait_for_room*, see
        :meth:`Subscription._hold`)."""
        key, event = entry
        full = []
        delivered = 0
        for subscription in subscriptions:
            # One that keeps up takes the frame straight into its stream's buffer, here: a
            # call of the subscription's own per delivery was a fifth of a burst's cost.
            sink = subscription._sink
            if sink is not None:
                try:
                    offered = sink(frame)
                except anyio.ClosedResourceError:
                    subscription._detach()  # the stream is ending
                    continue
                if offered:
                    subscription._position = key
                    if (note := subscription._note) is not None:
                        note(event)
                    delivered += 1
                    continue
                if wait_for_room:
                    full.append(subscription)
                    continue
                # Its stream is behind: its own buffer (empty while attached) takes the
                # events from here, and feed() sends them as its stream makes room.
                subscription._detach()
            held = subscription._hold(entry, wait_for_room=wait_for_room)
            if held is None:
                full.append(subscription)
            elif held:
                delivered += 1
        self._count_deliveries(topic, delivered)
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

    def _check_subscribable(self, topic: str) -> None:
        """Called as a subscriber to *topic* is added: raises :exc:`RuntimeError` when the
        broker is closed, so no event will come."""

    async def _watch(self, topic: str) -> None:
        """Called once before a topic's first local subscriber is added (those arriving
        meanwhile wait for it to return)."""

    def _unwatch(self, topic: str) -> None:
        """Called once a topic's last local subscriber has left."""

    async def _history_after(self, topic: str, after: str, limit: int) -> HistoryPage:
        raise NotImplementedError

    async def _latest_id(self, topic: str) -> str | None:
        raise NotImplementedError

    # -- for the subscriptions ----------------------------------------------------------------

    async def _add(self, subscription: Subscription) -> None:
        topic = subscription.topic
        self._check_subscribable(topic)
        # The topic's first subscriber has the broker watch it; those arriving meanwhile wait
        # for that rather than each having it watched (with Redis, a thousand arriving at once
        # each asked where the topic's stream ends, and waited for a connection to ask it).
        # If the first cannot (the broker failed, or it was cancelled), the next one does.
        while topic not in self._subscribers:
            watching = self._watching.get(topic)
            if watching is not None:
                await watching.wait()
                continue
            self._watching[topic] = watching = anyio.Event()
            try:
                try:
                    await self._watch(topic)
                except BaseException:
                    # Cut short (cancelled, failed) once the broker watches it, perhaps: the
                    # topic has no subscriber to unwatch it when it leaves, so undone here.
                    self._unwatch(topic)
                    raise
                self._counts[topic] = _TopicCounts()
                self._subscribers[topic] = {}
            finally:
                del self._watching[topic]
                watching.set()
        self._subscribers[topic][subscription] = None

    def _remove(self, subscription: Subscription) -> None:
        self._caught_up(subscription)
        group = self._subscribers.get(subscription.topic)
        if group is not None:
            group.pop(subscription, None)
            if not group:
                del self._subscribers[subscription.topic]
                self._counts.pop(subscription.topic, None)
                self._unwatch(subscription.topic)

    def _caught_up(self, subscription: Subscription) -> None:
        if subscription._lagging:
            subscription._lagging = False
            self._catching_up -= 1

    def _overflow(self, subscription: Subscription, entry: Entry) -> bool:
        policy = self.slow_subscriber_policy
        counts = self._counts.get(subscription.topic) or _TopicCounts()
        if policy is SlowSubscriberPolicy.DROP_OLDEST:
            subscription._drop_oldest(entry)
            self._dropped += 1
            counts.drops += 1
            return True
        if policy is SlowSubscriberPolicy.CATCH_UP and (
            subscription._lagging or self._catching_up < self.max_catching_up
        ):
            subscription._fall_behind()
            if not subscription._lagging:
                subscription._lagging = True
                self._catching_up += 1
                counts.catch_ups += 1
            return False
        self._slow_disconnects += 1
        counts.slow_disconnects += 1
        subscription._fail(
            SlowSubscriberError(
                f"subscriber to {subscription.topic!r} had {self.subscriber_buffer} events "
                f"waiting and was disconnected ({policy.name}, "
                f"{self._catching_up} of {self.max_catching_up} catching up)"
            )
        )
        return False


class _TopicCounts:
    """What :meth:`TopicHub.topic_statistics` reports of one topic, counted as it happens."""

    __slots__ = ("catch_ups", "deliveries", "drops", "resets", "slow_disconnects")

    def __init__(self) -> None:
        self.deliveries = self.drops = self.resets = self.catch_ups = self.slow_disconnects = 0


#: The longest a batch of events read together waits for a subscriber with a full buffer to
#: make room, for one event, or in all but for each buffer's worth it takes (see
#: :meth:`TopicHub._deliver_batch`).
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
    read, so nothing published meanwhile is missed. Iterating ends when the broker closes, or
    when the block is left (a reader in another task too). Taking the next event is a
    checkpoint, and a wait for it cut short by a timeout or a cancellation loses nothing: the
    next one taken is still the next event::

        with anyio.move_on_after(15):
            event = await anext(subscription)

    When the history cannot go on from ``last_event_id`` (see :class:`ResetReason`), the first
    event is a :data:`RESET_EVENT` whose id is the newest event at that moment: the events up
    to it are not sent (the client reloads its state instead), the ones after it follow.

    :ivar topic: the topic's name.
    :ivar last_event_id: the id it resumes after, as given.
    :raises SlowSubscriberError: from iteration, when the broker's policy disconnected this
        subscriber for falling behind.
    """

    # Slots: one per subscriber, so its size counts.
    __slots__ = (
        "_attached",
        "_buffering",
        "_closed",
        "_dropped_through",
        "_entered",
        "_failure",
        "_given",
        "_hub",
        "_invalid_id",
        "_lagging",
        "_make_wakeup",
        "_more_history",
        "_note",
        "_page",
        "_pending",
        "_position",
        "_reading",
        "_replaying",
        "_sink",
        "_sink_many",
        "_wakeup",
        "last_event_id",
        "topic",
    )

    def __init__(self, hub: TopicHub, topic: str, last_event_id: str | None) -> None:
        self.topic = topic
        self.last_event_id = last_event_id
        self._hub = hub
        # Its own buffer: the live events it takes (while _buffering) and has not yet
        # given; made by the first one, as a subscriber that keeps up never holds any.
        self._buffering = False
        self._pending: deque[Entry] | None = None
        # What its reader waits on: an event buffered, the buffer closed, or (feed()) its
        # stream no longer taking the events.
        self._wakeup: Waitable | None = None
        self._make_wakeup: Callable[[], Waitable] | None = None  # the loop's, once entered
        self._entered = False
        self._closed = False
        self._replaying = False
        self._lagging = False
        self._failure: SlowSubscriberError | None = None
        self._dropped_through: str | None = None
        # Reading the history (_replaying): a pass over it is under way (_reading), the last
        # page read was full (_more_history), and that page.
        self._reading = False
        self._more_history = True
        self._page: Sequence[Entry] = ()
        self._given = 0  # of that page
        # The last event this subscriber was given (sent, or put into its stream's buffer).
        self._position: EventKey | None = None
        # A Last-Event-ID that is no id is answered with a reset first (see _next()).
        self._invalid_id = False
        if last_event_id:  # an empty one is what a reset's empty id leads to: none
            self._position = parse_event_id(last_event_id)
            self._invalid_id = self._position is None
            self._replaying = not self._invalid_id
        # While attached to a stream (see feed()): queues a live event's frame there, false
        # when that buffer is full; queues as many of a burst's frames as fit there; and,
        # unless None, what to tell the stream each event was.
        self._sink: Callable[[bytes], bool] | None = None
        self._sink_many: Callable[[Sequence[bytes], int], int] | None = None
        self._note: Callable[[ServerSentEvent], None] | None = None
        # Cancelled by _detach(): what feed() listens for the disconnect in while attached.
        self._attached: anyio.CancelScope | None = None

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError(f"a subscription to {self.topic!r} can be entered only once")
        self._entered = True
        self._make_wakeup = loop_facts().wakeup
        self._open_buffer()
        try:
            await self._hub._add(self)
        except BaseException:
            self._close_buffer(discard=True)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._leave()

    def _leave(self) -> None:
        # Awaits nothing, so it completes even in a cancelled task (topic_response relies on
        # it: it leaves a subscription with no exit stack to shield the exit).
        self._shut()  # a reader in another task ends, rather than read the history again
        self._hub._remove(self)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ServerSentEvent:
        if not self._entered:
            raise RuntimeError("enter the subscription (async with) before iterating it")
        # A checkpoint, as any receive is, whether an event waits or not.
        await anyio.lowlevel.checkpoint()
        return await self._next()

    async def feed(self, send: StreamSender[Any]) -> None:
        """Send this subscription's events to *send*'s stream until the broker closes, or the
        client leaves (its stream has then ended, and the calling producer is cancelled, at
        its next await, as for any end).

        What iterating it and awaiting ``send(event)`` for each does, for less: while this
        subscriber keeps up, the hub puts each live event's frame, encoded once for all
        subscribers, straight into the stream's buffer, and nothing here wakes for it. When
        that buffer is full, the event goes to this subscription's own buffer instead and is
        sent from here, where the slow-subscriber policy applies once that one is full too.

        :raises SlowSubscriberError: the broker's policy disconnected this subscriber.
        """
        await self._feed(send, unscoped=False)

    async def _feed(self, send: StreamSender[Any], *, unscoped: bool) -> None:
        """What :meth:`feed` does; *unscoped*: the calling producer has no cancel scope of
        its own open around this call (``topic_response``'s), so the scope it listens in can
        stand in for its stream's (see ``StreamSender._listen_instead``)."""
        while True:
            if self._can_attach():
                self._sink, self._sink_many, self._note = send._frame_sink
                self._pending = None  # empty, and no use while the stream takes the events
                # Nothing to do here until _detach(): this task listens for the disconnect
                # meanwhile, in place of the stream's watcher, whose task is spared.
                self._attached = attached = anyio.CancelScope()
                try:
                    if await send._listen_instead(attached, unscoped=unscoped):
                        # The client left: the stream has ended and this task is cancelled,
                        # which the producer's next await raises; returning spares the
                        # exception through these frames.
                        return
                finally:
                    self._attached = None
            event = await anext(self, None)
            if event is None:
                return  # the broker closed
            await send(event)

    def _can_attach(self) -> bool:
        # Live, with nothing waiting in its own buffer: what comes next is the next event.
        return (
            self._buffering
            and not self._pending
            and not self._replaying
            and not self._invalid_id
            and self._dropped_through is None
            and self._failure is None
            and not self._closed
        )

    def _detach(self) -> None:
        if self._sink is not None:
            self._sink = self._sink_many = None
            if self._attached is not None:
                self._attached.cancel()  # feed() stops listening, and feeds the stream itself

    async def _wait(self) -> None:
        if self._wakeup is not None:
            raise RuntimeError(f"the subscription to {self.topic!r} is read by one task at a time")
        assert self._make_wakeup is not None  # entered
        self._wakeup = wakeup = self._make_wakeup()
        try:
            await wakeup.wait()
        finally:
            if self._wakeup is wakeup:  # cancelled, not woken
                self._wakeup = None

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.set()

    @property
    def catching_up(self) -> bool:
        """Whether it fell behind and reads the history instead of the live events."""
        return self._lagging

    @property
    def buffered(self) -> int:
        """Live events waiting in this subscriber's buffer."""
        return len(self._pending) if self._pending else 0

    # -- called by the hub, never waiting -----------------------------------------------------

    def _open_buffer(self) -> None:
        self._buffering = True

    def _close_buffer(self, *, discard: bool) -> None:
        """Stop buffering live events; with *discard*, free the ones buffered too."""
        self._buffering = False
        if discard:
            self._pending = None
        self._wake()

    def _hold(self, entry: Entry, *, wait_for_room: bool) -> bool | None:
        """Keep *entry* in this subscription's own buffer, its stream not taking the events
        (see :meth:`TopicHub._offer_each`): true if it was kept, false if not (catching up, or
        the policy dropped or disconnected it); ``None`` with *wait_for_room* when the buffer
        is full, the policy not applied yet."""
        if not self._buffering:
            return False  # catching up: it reads this event from the history
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        elif len(pending) >= self._hub.subscriber_buffer:
            # Not waited for again once its oldest events were dropped, until it reads: a
            # buffer the policy keeps full would hold back every event of every batch.
            if wait_for_room and self._dropped_through is None:
                return None
            return self._hub._overflow(self, entry)
        pending.append(entry)
        self._wake()
        return True

    def _drop_oldest(self, entry: Entry) -> None:
        assert self._pending
        _, dropped = self._pending.popleft()
        self._dropped_through = dropped.id
        self._pending.append(entry)

    def _fall_behind(self) -> None:
        # A live buffer holds the very next events: they are read first, then the history
        # from the last of them. While replaying, it holds later ones, past a gap: dropped.
        self._detach()
        self._close_buffer(discard=self._replaying)

    def _fail(self, failure: SlowSubscriberError) -> None:
        self._failure = failure
        self._detach()
        self._close_buffer(discard=True)

    def _shut(self) -> None:
        self._closed = True
        self._detach()
        self._close_buffer(discard=True)

    # -- the iteration ------------------------------------------------------------------------

    def _reset(
        self,
        reason: ResetReason,
        resume_id: str | None,
        position: EventKey | None,
        *,
        reset_before: bool = False,
    ) -> ServerSentEvent:
        # The last event this subscriber was sent, where the client's state stands; before
        # the first, the id it came with (none if a reset came since: *reset_before*), unless
        # it is longer than any the server reads: not sent back, as whatever a client puts in
        # its header would be, up to the server's limit (about 16 KiB), and six times that
        # once escaped as JSON.
        last = self.last_event_id if position is None else format_event_id(position)
        if reset_before or (last is not None and len(last) > MAX_LAST_EVENT_ID_LENGTH):
            last = None
        data = json.dumps({"reason": reason.value, "last_event_id": last})
        counts = self._hub._counts.get(self.topic)
        if counts is not None:
            counts.resets += 1
        # An empty id clears the browser's last event id: it then reconnects without one.
        return ServerSentEvent(event=RESET_EVENT, id=resume_id or "", data=data)

    async def _next(self) -> ServerSentEvent:
        # Every await here comes before what the step changes: a wait cancelled (a timeout on
        # the next event) leaves the subscription where it was, and the next call goes on.
        if self._invalid_id:
            latest = await self._hub._latest_id(self.topic)
            self._invalid_id = False
            self._position = None if latest is None else parse_event_id(latest)
            return self._reset(ResetReason.INVALID, latest, None)
        while True:
            if self._failure is not None:
                raise self._failure
            if self._closed:
                raise StopAsyncIteration
            if self._replaying:
                event = await self._replay_step()
                if event is not None:
                    return event
                continue
            pending = self._pending
            if not pending:
                if self._buffering:
                    await self._wait()  # for an event, or the buffer closed
                else:
                    self._replaying = True  # fell behind, and read what its buffer held
                continue
            key, event = pending.popleft()
            if self._dropped_through is not None:
                resume_id, self._dropped_through = self._dropped_through, None
                dropped = parse_event_id(resume_id)
                if dropped is not None and (self._position is None or dropped > self._position):
                    pending.appendleft((key, event))  # given after the reset
                    reset = self._reset(ResetReason.OVERFLOW, resume_id, self._position)
                    self._position = dropped
                    return reset
            if self._position is not None and key <= self._position:
                continue  # read from the history already
            self._position = key
            return event

    async def _replay_step(self) -> ServerSentEvent | None:
        """The next event from the history, or a reset; ``None`` once this pass over it is
        through (caught up, unless the live events overflowed again meanwhile)."""
        page = self._page
        if self._given == len(page):
            if not self._reading and not self._buffering and self._position is None:
                # It fell behind with no event to read the history on from (right after an
                # expired reset): the events it missed left its buffer, and nothing says
                # where it stood in the history. A reset from the newest event tells it so;
                # what comes after is read from there.
                latest = await self._hub._latest_id(self.topic)
                self._position = None if latest is None else parse_event_id(latest)
                self._open_buffer()
                return self._reset(ResetReason.OVERFLOW, latest, None, reset_before=True)
            if not self._reading:  # a pass over the history begins
                self._reading = self._more_history = True
                if not self._buffering:
                    # Rejoin before the last reads of the history, so what is published
                    # after them is buffered; what both hold is dropped by its id in _next().
                    self._open_buffer()
            if self._position is None or not self._more_history:
                self._reading = False
                self._page, self._given = (), 0
                if self._buffering:  # it did not overflow again meanwhile: caught up
                    self._replaying = False
                    self._hub._caught_up(self)
                return None
            after = format_event_id(self._position)
            read = await self._hub._history_after(self.topic, after, REPLAY_PAGE_SIZE)
            if read.reset is not None:
                reset = self._reset(read.reset, read.latest, self._position)
                self._position = None if read.latest is None else parse_event_id(read.latest)
                return reset
            self._page = page = read.entries
            self._given = 0
            self._more_history = len(page) == REPLAY_PAGE_SIZE
            if not page:
                return None
        key, event = page[self._given]
        self._given += 1
        self._position = key
        return event
