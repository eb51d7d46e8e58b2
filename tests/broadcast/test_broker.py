"""The brokers in process, without a server: ids, resume, resets and the slow-subscriber
policies, each against the in-memory broker and against a real Redis (``redis-server``
started for the module; those skip, saying why, where it cannot be found).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from support import redis_server
from support.brokers import AnyBroker, MakeBroker, take, until

from streamkit import ServerSentEvent
from streamkit._topics import HistoryPage, parse_event_id
from streamkit.broadcast import (
    RESET_EVENT,
    MemoryBroker,
    RedisBroker,
    ResetReason,
    SlowSubscriberError,
    SlowSubscriberPolicy,
    Subscription,
)

pytestmark = pytest.mark.anyio


async def publish_all(broker: AnyBroker, topic: str, data: Iterator[str] | range) -> list[str]:
    return [await broker.publish(topic, str(item)) for item in data]


async def resume(broker: AnyBroker, topic: str, last_event_id: str) -> list[Any]:
    """What a subscriber resuming after *last_event_id* is sent first, then the event
    published next (``"next"``), as :func:`take` gives them."""
    async with broker.subscribe(topic, last_event_id=last_event_id) as subscription:
        first = await take(subscription, 1)
        await broker.publish(topic, "next")
        return first + await take(subscription, 1)


# -- ids and arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("1-0", (1, 0)),
        ("1795322817838-12", (1795322817838, 12)),
        (f"{2**64 - 1}-{2**64 - 1}", (2**64 - 1, 2**64 - 1)),
        (f"{2**64}-0", None),
        ("5", None),
        ("1-2-3", None),
        ("-1-0", None),
        ("abc", None),
        ("\u0661-\u0660", None),  # digits, but not ASCII ones
        ("", None),
    ],
)
def test_event_ids_are_two_unsigned_64_bit_numbers(text: str, key: tuple[int, int] | None) -> None:
    assert parse_event_id(text) == key


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (ServerSentEvent(data="x", id="1-0"), "not id"),
        (ServerSentEvent(data="x", retry=5), "not retry"),
        (ServerSentEvent(event="tick"), "must have data"),
    ],
)
async def test_publish_refuses_what_the_broker_owns(event: ServerSentEvent, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await MemoryBroker().publish("topic", event)
    with pytest.raises(ValueError, match=message):
        MemoryBroker().publish_nowait("topic", event)


@pytest.mark.parametrize("topic", ["", "a\nb", "x" * 257])
def test_a_topic_name_is_checked(topic: str) -> None:
    with pytest.raises(ValueError, match="topic must be"):
        MemoryBroker().subscribe(topic)


@pytest.mark.parametrize("last_event_id", [0, 17, b"1-0", b"", 1.5, ("1", "0")])
def test_a_last_event_id_that_is_no_str_is_a_type_error_naming_it(
    make_broker: MakeBroker, last_event_id: object
) -> None:
    # Where the subscription is made, not a regular expression's error once it is entered;
    # and 0 or b"" is not taken for no id at all.
    name = type(last_event_id).__name__
    with pytest.raises(TypeError, match=rf"last_event_id must be a str or None, got {name}: "):
        make_broker().subscribe("t", last_event_id=last_event_id)  # type: ignore[arg-type]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="subscriber_buffer must be an int of at least 1, got 0"):
        MemoryBroker(subscriber_buffer=0)
    with pytest.raises(ValueError, match="history_ttl"):
        MemoryBroker(history_ttl=-1.0)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "max_event_size must be an int of at least 1, got 0"),
        ("1", TypeError, "max_event_size must be an int, got str: '1'"),
    ],
)
def test_max_event_size_is_checked(
    make_broker: MakeBroker, value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make_broker(max_event_size=value)


async def test_an_event_over_max_event_size_is_refused_where_it_is_published(
    make_broker: MakeBroker,
) -> None:
    # Counted in UTF-8 bytes, the event's name with its data: what the history holds of it.
    async with make_broker(max_event_size=16) as broker, broker.subscribe("t") as subscription:
        fits = ServerSentEvent(event="tick", data="é" * 6)  # 4 + 12 bytes
        refused: list[ServerSentEvent | str] = [
            ServerSentEvent(event="ticks", data="é" * 6),
            "x" * 17,
            ServerSentEvent(data={"n": "x" * 9}),  # 17 bytes of JSON
        ]
        for event in refused:
            with pytest.raises(ValueError, match=r"17 bytes to topic 't'.* max_event_size \(16\)"):
                await broker.publish("t", event)
            with pytest.raises(ValueError, match="max_event_size"):
                await broker.publish_many("t", ["ok", event])  # none of them published
            if isinstance(broker, MemoryBroker):
                with pytest.raises(ValueError, match="max_event_size"):
                    broker.publish_nowait("t", event)
        await broker.publish("t", fits)
        assert await take(subscription, 1) == ["é" * 6]
        assert broker.statistics().published == 1
    async with make_broker() as broker:
        with pytest.raises(ValueError, match=r"104857600 bytes to topic 'big'"):
            await broker.publish("big", "x" * (100 << 20))  # the default bound is 1 MiB
        assert parse_event_id(await broker.publish("big", "x" * (1 << 20))) is not None


async def test_publishing_to_a_closed_memory_broker_is_an_error_and_reentering_reopens_it() -> None:
    broker = MemoryBroker()
    async with broker:
        await broker.publish("t", "kept")
    message = r"MemoryBroker is closed .*topic 't'"
    with pytest.raises(RuntimeError, match=message):
        await broker.publish("t", "lost")
    with pytest.raises(RuntimeError, match=message):
        broker.publish_nowait("t", "lost")
    with pytest.raises(RuntimeError, match=message):
        await broker.publish_many("t", ["lost"])
    assert broker.statistics().published == 1
    async with broker:  # entered again: open again
        async with broker.subscribe("t") as subscription:
            await broker.publish("t", "again")
            assert await take(subscription, 1) == ["again"]
    assert broker.statistics().published == 2


# -- publish, subscribe, resume -------------------------------------------------------------


async def test_subscribers_get_live_events_in_order_with_their_ids(make_broker: MakeBroker) -> None:
    async with make_broker() as broker:
        async with broker.subscribe("t") as first, broker.subscribe("t") as second:
            ids = await publish_all(broker, "t", range(5))
            keys = [parse_event_id(i) or (0, 0) for i in ids]
            assert keys == sorted(set(keys))
            for subscription in (first, second):
                events = [await anext(subscription) for _ in range(5)]
                assert [e.data for e in events] == ["0", "1", "2", "3", "4"]
                assert [e.id for e in events] == ids
            assert broker.statistics().subscribers == 2
        assert broker.statistics().subscribers == 0


async def test_publish_many_publishes_each_in_order_with_an_id_of_its_own(
    make_broker: MakeBroker,
) -> None:
    async with make_broker() as broker, broker.subscribe("t") as subscription:
        before = await broker.publish("t", "before")
        batch: list[ServerSentEvent | str] = ["a", ServerSentEvent(event="named", data="b"), "c"]
        ids = await broker.publish_many("t", batch)
        after = await broker.publish("t", "after")
        keys = [parse_event_id(i) or (0, 0) for i in [before, *ids, after]]
        assert keys == sorted(set(keys))
        with anyio.fail_after(5):
            events = [await anext(subscription) for _ in range(5)]
        assert [(e.id, e.event, e.data) for e in events] == [
            (before, None, "before"),
            (ids[0], None, "a"),
            (ids[1], "named", "b"),
            (ids[2], None, "c"),
            (after, None, "after"),
        ]
        assert await broker.publish_many("t", []) == []


async def test_publish_many_refuses_a_bad_event_before_publishing_any(
    make_broker: MakeBroker,
) -> None:
    async with make_broker() as broker:
        first = await broker.publish("t", "first")
        with pytest.raises(ValueError, match=r"not id.*'1-0'"):
            await broker.publish_many("t", ["a", ServerSentEvent(data="x", id="1-0"), "b"])
        with pytest.raises(TypeError, match="got bytes"):
            await broker.publish_many("t", ["a", b"b"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="topic must be"):
            await broker.publish_many("", ["a"])
        # One event, not a batch: a str (or a dict) would be iterated, its characters (its
        # keys) each published as an event.
        for one in ("ab", b"ab", {"a": 1}):
            with pytest.raises(TypeError, match=rf"takes events .*{type(one).__name__}: "):
                await broker.publish_many("t", one)  # type: ignore[arg-type]
        async with broker.subscribe("t", last_event_id=first) as subscription:
            following = await broker.publish("t", "next")
            # Had "a" been published, it would come first.
            with anyio.fail_after(5):
                event = await anext(subscription)
            assert (event.id, event.data) == (following, "next")


async def test_an_event_name_travels_with_the_event(make_broker: MakeBroker) -> None:
    async with make_broker() as broker, broker.subscribe("t") as subscription:
        await broker.publish("t", ServerSentEvent(event="price", data="a\nb"))
        event = await anext(subscription)
        assert (event.event, event.data) == ("price", "a\nb")


#: Text that an encoding on the way to the store and back could change: quotes, escapes,
#: control characters (NUL too), JSON's own syntax, characters past ASCII and the BMP.
AWKWARD_TEXT = [
    "",
    "a\nb\r\nc",
    '"quoted" \\ back\\slash \\u0041',
    "nul\x00 and \x1f and \x7f",
    '[1, "two"] {"k": null}',
    "é € 😀 \u2028 \ufeff",
    " spaced ",
]


async def test_any_text_comes_back_as_it_was_published(make_broker: MakeBroker) -> None:
    named = [ServerSentEvent(event=f"n{i} é", data=text) for i, text in enumerate(AWKWARD_TEXT)]
    named.append(ServerSentEvent(event="", data="an empty name is a name"))
    sent = [(None, text) for text in AWKWARD_TEXT] + [(e.event, e.data) for e in named]
    async with make_broker() as broker:
        async with broker.subscribe("t") as subscription:
            first = await broker.publish("t", "first")
            ids = await broker.publish_many("t", [*AWKWARD_TEXT, *named])
            with anyio.fail_after(5):
                live = [await anext(subscription) for _ in range(1 + len(ids))]
        assert [(e.event, e.data) for e in live[1:]] == sent
        assert [e.id for e in live] == [first, *ids]
        # And from the history, as a client resuming from the first is sent them.
        async with broker.subscribe("t", last_event_id=first) as subscription:
            with anyio.fail_after(5):
                replayed = [await anext(subscription) for _ in range(len(ids))]
        assert [(e.id, e.event, e.data) for e in replayed] == [
            (e.id, e.event, e.data) for e in live[1:]
        ]


async def test_data_that_is_not_text_is_kept_and_sent_as_its_json(make_broker: MakeBroker) -> None:
    async with make_broker() as broker:
        first = await broker.publish("t", "first")
        with pytest.raises(TypeError, match=r"published data is not JSON-serialisable: \{1j\}"):
            await broker.publish("t", ServerSentEvent(data={1j}))
        await broker.publish("t", ServerSentEvent(event="", data={"a": [1, 2]}))
        # Replayed from the history: the value that could not be encoded was never kept.
        async with broker.subscribe("t", last_event_id=first) as subscription:
            with anyio.fail_after(5):
                event = await anext(subscription)
                # Live too (and Redis's reader connected before the broker closes: coredis
                # leaves a connection it was making when cancelled with its buffers open).
                await broker.publish("t", ServerSentEvent(data=[3]))
                live = await anext(subscription)
    # The same text from every broker.
    assert (event.event, event.data, live.data) == ("", '{"a":[1,2]}', "[3]")


async def test_data_nested_too_deeply_for_json_is_refused_where_published(
    make_broker: MakeBroker,
) -> None:
    nested: list[Any] = []
    innermost = nested
    for _ in range(100_000):
        innermost.append([])
        innermost = innermost[0]
    async with make_broker() as broker:
        with pytest.raises(
            ValueError, match=r"published data cannot be encoded as JSON: .*nested too deeply"
        ):
            await broker.publish("t", ServerSentEvent(data=nested))
        assert await broker._latest_id("t") is None  # nothing of it was kept


async def test_a_publish_in_a_cancelled_scope_publishes_nothing(make_broker: MakeBroker) -> None:
    async with make_broker() as broker:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await broker.publish("t", "cancelled")
        with anyio.CancelScope() as scope:
            scope.cancel()
            await broker.publish_many("t", ["cancelled", "too"])
        assert await broker._latest_id("t") is None


@pytest.mark.parametrize("where", ["subscribe", "publish"])
async def test_commands_cancelled_midway_leave_the_broker_working(
    make_broker: MakeBroker, where: str
) -> None:
    # More than a connection pool holds (coredis's: 64): a cancelled command must give its
    # connection back, or the broker runs out and every publish and subscribe waits for ever.
    async def subscribe(topic: str) -> None:
        async with broker.subscribe(topic):
            await anyio.sleep_forever()

    async with make_broker() as broker:
        for attempt in range(150):
            async with anyio.create_task_group() as task_group:
                if where == "subscribe":  # a client that left while its subscription began
                    task_group.start_soon(subscribe, f"topic-{attempt}")
                else:
                    task_group.start_soon(broker.publish, "t", str(attempt))
                for _ in range(attempt % 3):
                    await anyio.lowlevel.checkpoint()
                task_group.cancel_scope.cancel()
        await until(lambda: broker.statistics().subscribers == 0)
        with anyio.fail_after(5):
            async with broker.subscribe("t") as subscription:
                await broker.publish("t", "after")
                assert await take(subscription, 1) == ["after"]


async def test_resume_replays_what_was_missed_then_goes_live(make_broker: MakeBroker) -> None:
    async with make_broker() as broker:
        ids = await publish_all(broker, "t", range(10))
        async with broker.subscribe("t", last_event_id=ids[6]) as subscription:
            last = await broker.publish("t", "10")
            assert await take(subscription, 4) == ["7", "8", "9", "10"]
        async with broker.subscribe("t", last_event_id=last) as subscription:
            await broker.publish("t", "11")
            assert await take(subscription, 1) == ["11"]


async def test_resume_while_publishing_has_no_gap_and_no_duplicate(make_broker: MakeBroker) -> None:
    # A small buffer, so the live events overflow it while the history is replayed.
    async with make_broker(subscriber_buffer=3) as broker:
        ids = await publish_all(broker, "t", range(150))

        async def publish_more() -> None:
            for item in range(150, 400):
                await broker.publish("t", str(item))
                await anyio.lowlevel.checkpoint()

        async with broker.subscribe("t", last_event_id=ids[20]) as subscription:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(publish_more)
                assert await take(subscription, 379, within=20) == [str(i) for i in range(21, 400)]
        assert broker.statistics().catching_up == 0


@pytest.mark.parametrize("last_event_id", ["abc", "5", f"{2**64}-0"])
async def test_an_invalid_id_is_answered_with_a_reset(
    make_broker: MakeBroker, last_event_id: str
) -> None:
    async with make_broker() as broker:
        ids = await publish_all(broker, "t", range(3))
        assert await resume(broker, "t", last_event_id) == [
            (RESET_EVENT, "invalid", ids[-1]),
            "next",
        ]


async def test_an_id_the_history_never_held_is_answered_with_a_reset(
    make_broker: MakeBroker,
) -> None:
    async with make_broker() as broker:
        ids = await publish_all(broker, "t", range(3))
        later = f"{parse_event_id(ids[-1])[0] + 10_000}-0"  # type: ignore[index]
        assert await resume(broker, "t", later) == [(RESET_EVENT, "unknown", ids[-1]), "next"]
        assert await resume(broker, "other", ids[0]) == [(RESET_EVENT, "expired", ""), "next"]


async def test_an_id_from_another_topic_is_answered_with_a_reset(make_broker: MakeBroker) -> None:
    # Topics published to in the same millisecond: were their ids each topic's own sequence,
    # both would be MILLISECONDS-0, and a client resuming "b" from the id "a" gave it would
    # go on from the event of b's with that id, the events up to it silently skipped.
    async with make_broker() as broker:
        for attempt in range(20):
            a, b = f"a{attempt}", f"b{attempt}"
            ids = [await broker.publish(b, "b0")]
            from_a = await broker.publish(a, "a0")
            ids.append(await broker.publish(b, "b1"))
            async with broker.subscribe(b, last_event_id=from_a) as subscription:
                await broker.publish(b, "b2")
                (first,) = await take(subscription, 1)
            assert first[:2] in {(RESET_EVENT, "unknown"), (RESET_EVENT, "trimmed")}, attempt
            assert from_a not in ids


async def test_a_trimmed_history_is_answered_with_a_reset(make_broker: MakeBroker) -> None:
    # Redis trims whole blocks of 100 entries (MAXLEN ~), so it takes a few hundred.
    async with make_broker(history_size=10) as broker:
        ids = await publish_all(broker, "t", range(300))
        assert await resume(broker, "t", ids[0]) == [(RESET_EVENT, "trimmed", ids[-1]), "next"]


async def test_an_idle_topic_expires(make_broker: MakeBroker) -> None:
    async with make_broker(history_ttl=0.05) as broker:
        ids = await publish_all(broker, "t", range(2))
        await anyio.sleep(0.2)
        assert await resume(broker, "t", ids[0]) == [(RESET_EVENT, "expired", ""), "next"]


# -- slow subscribers --------------------------------------------------------------------------


async def test_a_slow_subscriber_catches_up_from_the_history(make_broker: MakeBroker) -> None:
    async with make_broker(subscriber_buffer=4) as broker:
        async with broker.subscribe("t") as slow:
            await publish_all(broker, "t", range(50))
            await until(lambda: broker.statistics().catching_up == 1)
            statistics = broker.statistics()
            assert statistics.catching_up == 1
            assert statistics.buffered <= 4
            assert await take(slow, 50) == [str(i) for i in range(50)]
            await broker.publish("t", "50")
            assert await take(slow, 1) == ["50"]
            assert broker.statistics().catching_up == 0


async def test_falling_behind_right_after_an_expired_reset_is_told_by_a_reset(
    make_broker: MakeBroker,
) -> None:
    # After an expired reset it has no event to read the history on from; overflowing then,
    # it cannot catch up from the history: what it missed is told by a reset from the newest
    # event, and the events after it follow. (It went live, silently past them.)
    async with make_broker(subscriber_buffer=4) as broker:
        async with broker.subscribe("t", last_event_id="1-0") as subscription:
            assert await take(subscription, 1) == [(RESET_EVENT, "expired", "")]
            ids = await publish_all(broker, "t", range(10))
            await until(lambda: broker.statistics().catching_up == 1)
            assert await take(subscription, 1) == [(RESET_EVENT, "overflow", ids[-1])]
            await publish_all(broker, "t", range(10, 12))
            assert await take(subscription, 2) == ["10", "11"]  # from the history
            await broker.publish("t", "12")
            assert await take(subscription, 1) == ["12"]  # live again, none twice
            assert broker.statistics().catching_up == 0


async def test_beyond_the_catching_up_cap_a_subscriber_is_disconnected(
    make_broker: MakeBroker,
) -> None:
    async with make_broker(subscriber_buffer=2, max_catching_up=1) as broker:
        async with broker.subscribe("t") as first, broker.subscribe("t") as second:
            await publish_all(broker, "t", range(5))
            await until(lambda: broker.statistics().slow_disconnects == 1)
            assert broker.statistics().catching_up == 1
            assert broker.statistics().slow_disconnects == 1
            assert await take(first, 5) == ["0", "1", "2", "3", "4"]
            with pytest.raises(SlowSubscriberError, match="disconnected"):
                await take(second, 1)


async def test_the_disconnect_policy_disconnects_at_once(make_broker: MakeBroker) -> None:
    async with make_broker(
        subscriber_buffer=2, slow_subscriber_policy=SlowSubscriberPolicy.DISCONNECT
    ) as broker:
        async with broker.subscribe("t") as subscription:
            await publish_all(broker, "t", range(3))
            await until(lambda: broker.statistics().slow_disconnects == 1)
            with pytest.raises(SlowSubscriberError, match="DISCONNECT"):
                await take(subscription, 1)


async def test_the_drop_oldest_policy_says_what_it_dropped(make_broker: MakeBroker) -> None:
    async with make_broker(
        subscriber_buffer=3, slow_subscriber_policy=SlowSubscriberPolicy.DROP_OLDEST
    ) as broker:
        async with broker.subscribe("t") as subscription:
            ids = await publish_all(broker, "t", range(10))
            await until(lambda: broker.statistics().dropped == 7)
            assert broker.statistics().buffered == 3
            assert await take(subscription, 4) == [(RESET_EVENT, "overflow", ids[6]), "7", "8", "9"]
            assert broker.statistics().dropped == 7


async def test_closing_the_broker_ends_its_subscriptions(make_broker: MakeBroker) -> None:
    ended = anyio.Event()
    received: list[str | None] = []

    async def subscriber(broker: AnyBroker, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with broker.subscribe("t") as subscription:
            task_status.started()
            async for event in subscription:
                received.append(event.data)
        ended.set()

    async with anyio.create_task_group() as task_group:
        async with make_broker() as broker:
            await task_group.start(subscriber, broker)
            await broker.publish("t", "0")
            await until(lambda: received == ["0"])
        with anyio.fail_after(1):
            await ended.wait()
        assert broker.statistics().subscribers == 0


async def test_a_timeout_on_the_next_event_loses_nothing(make_broker: MakeBroker) -> None:
    # `with move_on_after(...): await anext(subscription)` is how a consumer waits for an event
    # with a fallback. The subscription goes on after it: the timed-out wait neither ends it
    # (a loop over it would stop as if the broker had closed) nor loses an event.
    async with make_broker() as broker, broker.subscribe("t") as subscription:
        with anyio.move_on_after(0.05) as quiet:
            await anext(subscription)
        assert quiet.cancelled_caught
        await broker.publish("t", "after the timeout")
        assert await take(subscription, 1) == ["after the timeout"]


async def cancelled_take(subscription: Subscription) -> bool:
    """Whether the next event, asked for in a cancelled scope, was refused: a cancellation."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await anext(subscription)
    return scope.cancelled_caught


async def test_taking_an_event_is_a_cancel_point_that_loses_nothing(
    make_broker: MakeBroker,
) -> None:
    # As any receive is, on anyio and trio: asked for in a cancelled scope, the next event is
    # not taken, whether it waits in the subscriber's buffer or in a page of the history read
    # already, and it is still there afterwards, in order.
    async with make_broker() as broker:
        ids = await publish_all(broker, "t", range(4))
        async with broker.subscribe("t", last_event_id=ids[0]) as subscription:
            assert await take(subscription, 1) == ["1"]
            assert await cancelled_take(subscription)  # "2" and "3" read from the history
            assert await take(subscription, 2) == ["2", "3"]
            await publish_all(broker, "t", range(4, 7))
            await until(lambda: subscription.buffered == 3)
            assert await cancelled_take(subscription)
            assert await take(subscription, 3) == ["4", "5", "6"]


async def test_a_read_of_the_history_cancelled_midway_is_read_again() -> None:
    class SlowHistory(MemoryBroker):
        def __init__(self) -> None:
            super().__init__()
            self.reading = anyio.Event()
            self.readable = anyio.Event()

        async def _history_after(self, topic: str, after: str, limit: int) -> HistoryPage:
            self.reading.set()
            await self.readable.wait()
            return await super()._history_after(topic, after, limit)

    async with SlowHistory() as broker:
        ids = await publish_all(broker, "t", range(3))
        async with broker.subscribe("t", last_event_id=ids[0]) as subscription:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(anext, subscription)
                with anyio.fail_after(5):
                    await broker.reading.wait()
                task_group.cancel_scope.cancel()
            broker.readable.set()
            await broker.publish("t", "3")
            assert await take(subscription, 3) == ["1", "2", "3"]


async def test_leaving_the_block_ends_a_reader_in_another_task(make_broker: MakeBroker) -> None:
    received: list[str | None] = []
    ended = anyio.Event()

    async def read(subscription: Subscription) -> None:
        async for event in subscription:
            received.append(event.data)
        ended.set()

    async with make_broker() as broker, anyio.create_task_group() as task_group:
        async with broker.subscribe("t") as subscription:
            task_group.start_soon(read, subscription)
            await broker.publish("t", "0")
            await until(lambda: received == ["0"])
        with anyio.fail_after(2):
            await ended.wait()
        assert broker.statistics().subscribers == 0
        await broker.publish("t", "1")
        assert received == ["0"]


def test_reset_reasons_are_named_for_the_client() -> None:
    assert {reason.value for reason in ResetReason} == {
        "trimmed",
        "expired",
        "unknown",
        "invalid",
        "overflow",
    }


def test_redis_server_helper_knows_where_it_runs(tmp_path: Path) -> None:
    server = redis_server.RedisServer(tmp_path)
    assert server.url == f"redis://127.0.0.1:{server.port}/0"


async def test_publish_refuses_a_lone_surrogate_naming_it() -> None:
    # Accepted, it would end every live subscriber and every resume from before it.
    broker = MemoryBroker()
    async with broker, broker.subscribe("t") as subscription:
        with pytest.raises(ValueError, match=r"data .*lone surrogate.*'\\ud800'"):
            await broker.publish("t", "a\ud800")
        published = await broker.publish("t", "fine")
        with anyio.fail_after(5):
            received = await subscription.__anext__()
        assert (received.id, received.data) == (published, "fine")


def test_a_topic_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="topic"):
        MemoryBroker().subscribe("a\ud800")


async def test_a_mid_stream_reset_names_the_last_event_the_subscriber_had(
    make_broker: MakeBroker,
) -> None:
    async with make_broker(
        subscriber_buffer=3, slow_subscriber_policy=SlowSubscriberPolicy.DROP_OLDEST
    ) as broker:
        async with broker.subscribe("t") as subscription:
            ids = await publish_all(broker, "t", range(2))
            assert await take(subscription, 2) == ["0", "1"]
            await publish_all(broker, "t", range(2, 12))
            await until(lambda: broker.statistics().dropped == 7)
            with anyio.fail_after(5):
                reset = await anext(subscription)
            assert reset.event == RESET_EVENT
            assert reset.data is not None
            # Where the client's state stands: after "1", not where it subscribed (nowhere).
            assert json.loads(reset.data) == {"reason": "overflow", "last_event_id": ids[1]}


async def test_a_batch_is_paced_for_a_reader_and_a_stalled_subscriber_meets_the_policy() -> None:
    # What the Redis reader does with one read: hand the hub more events than a buffer holds.
    broker = MemoryBroker(
        subscriber_buffer=4, slow_subscriber_policy=SlowSubscriberPolicy.DISCONNECT
    )
    entries = [((1, n), ServerSentEvent(id=f"1-{n}", data=str(n))) for n in range(50)]
    received: list[str | None] = []
    async with broker, broker.subscribe("t") as reader, broker.subscribe("t") as stalled:

        async def read() -> None:
            async for event in reader:
                received.append(event.data)
                if len(received) == len(entries):
                    return

        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(read)
                started = anyio.current_time()
                await broker._deliver_batch("t", entries)
                waited = anyio.current_time() - started
        assert received == [str(n) for n in range(50)]
        assert broker.statistics().slow_disconnects == 1
        # The stalled one held the batch once, for at most the bound, then left the fan-out.
        assert waited < 2.0
        with pytest.raises(SlowSubscriberError):
            await anext(stalled)


async def redis_calls(server: redis_server.RedisServer, command: str) -> int:
    """How many times *server* has run *command* (its ``INFO commandstats``)."""
    from coredis import Redis

    async with Redis.from_url(server.url, decode_responses=True) as client:
        stats = await client.info("commandstats")
    counts = stats.get(f"cmdstat_{command}")
    return int(counts["calls"]) if isinstance(counts, dict) else 0


async def test_subscribers_arriving_together_on_an_unwatched_topic_ask_redis_once(
    redis: redis_server.RedisServer,
) -> None:
    # The first subscriber of a topic asks Redis where its stream ends; those arriving
    # meanwhile wait for that answer. Each asked on its own, and the requests of a thousand
    # arriving together (a deploy, a reconnect storm) waited for a connection of the pool,
    # not subscribed yet, their memory held, the server asked a thousand times.
    before = await redis_calls(redis, "xrevrange")
    received: list[str] = []
    count = 100
    async with RedisBroker(redis.url, key_prefix=f"test:{uuid.uuid4().hex}:") as broker:
        subscribed = anyio.Event()

        async def subscriber() -> None:
            async with broker.subscribe("t") as subscription:
                if broker.statistics().subscribers == count:
                    subscribed.set()
                received.extend(await take(subscription, 1))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                for _ in range(count):
                    task_group.start_soon(subscriber)
                await subscribed.wait()
                await broker.publish("t", "first")
    assert received == ["first"] * count
    assert await redis_calls(redis, "xrevrange") - before == 1


async def test_when_the_first_subscriber_cannot_ask_redis_the_next_one_asks(
    redis: redis_server.RedisServer,
) -> None:
    class FailingOnce(RedisBroker):
        asked = 0

        async def _latest_id(self, topic: str) -> str | None:
            self.asked += 1
            if self.asked == 1:
                await anyio.wait_all_tasks_blocked()  # the others wait for its answer
                raise ConnectionError("the connection to Redis was lost")
            return await super()._latest_id(topic)

    outcomes: list[str] = []
    everyone = anyio.Event()
    async with FailingOnce(redis.url, key_prefix=f"test:{uuid.uuid4().hex}:") as broker:

        async def subscriber() -> None:
            try:
                async with broker.subscribe("t") as subscription:
                    outcomes.append("subscribed")
                    if len(outcomes) == 5:
                        everyone.set()
                    # Stays (the topic stays watched) until the next event, which it gets.
                    received.extend(await take(subscription, 1))
            except ConnectionError:
                outcomes.append("failed")
                if len(outcomes) == 5:
                    everyone.set()

        received: list[str] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                for _ in range(5):
                    task_group.start_soon(subscriber)
                await everyone.wait()
                await broker.publish("t", "first")
    assert sorted(outcomes) == ["failed"] + ["subscribed"] * 4
    assert received == ["first"] * 4
    assert broker.asked == 2


@pytest.mark.parametrize("connection", ["kept", "lost"])
async def test_the_reader_asks_which_server_it_reads_once_per_connection(
    redis: redis_server.RedisServer, connection: str
) -> None:
    # Before it delivers what it read, the reader must know whether it now reads another
    # server (a restart, a failover). A connection talks to one server all its life: asking
    # after every read (INFO, a third of the reader's time per event) tells nothing new, but
    # a connection the client made again on its own must be asked about.
    from coredis import Redis
    from coredis.tokens import PureToken

    async with (
        RedisBroker(redis.url, key_prefix=f"test:{uuid.uuid4().hex}:") as broker,
        broker.subscribe("t") as subscription,
    ):
        with anyio.fail_after(10):
            await broker.publish("t", "first")
            assert await take(subscription, 1) == ["first"]
            before = await redis_calls(redis, "info")
            if connection == "lost":
                async with Redis.from_url(redis.url, decode_responses=True) as killer:
                    # Every client's connections, the reader's among them; it reads on.
                    assert await killer.client_kill(type_=PureToken.NORMAL, skipme=True) >= 1
            for n in range(20):
                await broker.publish("t", str(n))
                assert await take(subscription, 1) == [str(n)]
    asked = await redis_calls(redis, "info") - before - 1  # less redis_calls' own
    assert asked == (1 if connection == "lost" else 0)


async def test_a_stream_entry_that_is_no_event_is_skipped_not_sent(
    redis: redis_server.RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Something other than a broker wrote to the topic's stream: an event name holding a line
    # break would inject a field into every subscriber's stream. The reader makes events of
    # entries without their checks, so it must refuse this one itself.
    from coredis import Redis

    prefix = f"test:{uuid.uuid4().hex}:"
    async with (
        RedisBroker(redis.url, key_prefix=prefix) as broker,
        broker.subscribe("t") as subscription,
    ):
        with anyio.fail_after(10):
            await broker.publish("t", "first")
            assert await take(subscription, 1) == ["first"]
            async with Redis.from_url(redis.url, decode_responses=True) as writer:
                await writer.xadd(prefix + "t", {"d": "x", "e": "a\ndata: injected"})
                await writer.xadd(prefix + "t", {"d": "next", "e": "named"})
            event = await anext(subscription)
    assert (event.event, event.data) == ("named", "next")
    assert "skipping a stream entry that is no event" in caplog.text


async def test_a_server_that_refuses_scripts_is_read_with_xread_alone(
    redis: redis_server.RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A reader reads on past a burst's first entries with a script; a server whose ACL
    # refuses scripts must still have its bursts delivered whole, not retried for ever.
    from coredis import Redis

    prefix = f"test:{uuid.uuid4().hex}:"
    user = f"noscripts{uuid.uuid4().hex[:8]}"
    async with Redis.from_url(redis.url, decode_responses=True) as admin:
        await admin.execute_command(
            admin.create_request(
                b"ACL",
                b"SETUSER",
                user,
                b"on",
                b">secret",
                b"~*",
                b"+@all",
                b"-@scripting",
                callback=lambda response, **options: response,
            )
        )
    refused = redis.url.replace("redis://", f"redis://{user}:secret@")
    burst = [f"event {n}" for n in range(30)]
    async with (
        RedisBroker(redis.url, key_prefix=prefix) as publisher,
        RedisBroker(refused, key_prefix=prefix, subscriber_buffer=64) as reader,
        reader.subscribe("t") as subscription,
    ):
        with anyio.fail_after(10):
            await publisher.publish("t", "first")
            assert await take(subscription, 1) == ["first"]
            await publisher.publish_many("t", burst)
            assert await take(subscription, len(burst)) == burst
            await publisher.publish_many("t", burst)
            assert await take(subscription, len(burst)) == burst
    assert caplog.text.count("reading with XREAD alone") == 1


async def test_a_burst_with_entries_of_another_writer_is_read_whole_in_order(
    redis: redis_server.RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Entries appended in one script reach the reader in one read: the first few come with
    # its blocking read, the rest as one JSON text (see _READ_ON). Both paths must give the
    # same events, in order, an entry of another writer's that is no event skipped, one
    # without data sent as empty data, the fields in any order, a name that is empty kept.
    from coredis import Redis

    prefix = f"test:{uuid.uuid4().hex}:"
    script = """
    for i = 1, #ARGV, 2 do
      if ARGV[i] == '' then
        redis.call('XADD', KEYS[1], '*', 'd', ARGV[i + 1])
      else
        redis.call('XADD', KEYS[1], '*', unpack(cjson.decode(ARGV[i + 1])))
      end
    end
    """
    written = [
        ("", "one"),
        ("", "two"),
        ("", "three"),
        ("fields", json.dumps(["e", "price", "d", "é\n\x00"])),
        ("fields", json.dumps(["d", "x", "e", "a\ndata: injected"])),
        ("fields", json.dumps(["other", "field"])),
        ("fields", json.dumps(["e", "", "d", "empty name"])),
        *[("", f"more {n}") for n in range(40)],
    ]
    expected = [
        (None, "one"),
        (None, "two"),
        (None, "three"),
        ("price", "é\n\x00"),
        (None, ""),
        ("", "empty name"),
        *[(None, f"more {n}") for n in range(40)],
    ]
    async with (
        RedisBroker(redis.url, key_prefix=prefix, subscriber_buffer=128) as broker,
        broker.subscribe("t") as subscription,
    ):
        with anyio.fail_after(10):
            await broker.publish("t", "first")
            assert await take(subscription, 1) == ["first"]
            async with Redis.from_url(redis.url, decode_responses=True) as writer:
                await writer.eval(script, keys=[prefix + "t"], args=list(itertools.chain(*written)))
                stored = [str(entry.identifier) for entry in await writer.xrange(prefix + "t")]
            events = [await anext(subscription) for _ in expected]
    assert [(event.event, event.data) for event in events] == expected
    # Every id as Redis gave it, the skipped entry's left out.
    assert [event.id for event in events] == stored[1:5] + stored[6:]
    assert "skipping a stream entry that is no event" in caplog.text


async def test_a_server_that_refuses_client_unblock_still_delivers_a_new_topic(
    redis: redis_server.RedisServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A managed server's ACL may refuse CLIENT UNBLOCK: a new topic's live events then wait
    # for the reader's blocked read to return (5 s; 1 s here, to spare the suite the wait),
    # and none is lost.
    from coredis import Redis

    monkeypatch.setattr("streamkit._redis_broker._BLOCK_MILLISECONDS", 1000)

    user, password = f"u{uuid.uuid4().hex}", uuid.uuid4().hex
    async with Redis.from_url(redis.url, decode_responses=True) as admin:
        rules = ("on", f">{password}", "~*", "&*", "+@all", "-client|unblock")
        await admin.acl_setuser(user, *rules)
    url = f"redis://{user}:{password}@127.0.0.1:{redis.port}/0"
    async with RedisBroker(url, key_prefix=f"test:{uuid.uuid4().hex}:") as broker:
        async with broker.subscribe("first") as first:
            await broker.publish("first", "1")
            assert await take(first, 1) == ["1"]
            async with broker.subscribe("second") as second:
                await broker.publish("second", "2")
                assert await take(second, 1, within=10) == ["2"]
            await broker.publish("first", "3")
            assert await take(first, 1) == ["3"]
    refused = [r for r in caplog.records if "reader's wait ends" in r.getMessage()]
    assert len(refused) == 1, caplog.records


async def refused_scripts(server: redis_server.RedisServer) -> int:
    """How many times *server* has answered a script call with ``NOSCRIPT`` (its ``INFO
    errorstats``)."""
    from coredis import Redis

    async with Redis.from_url(server.url, decode_responses=True) as client:
        stats = await client.info("errorstats")
    counts = stats.get("errorstat_NOSCRIPT")  # "count=N", which the client leaves as text
    return int(str(counts).removeprefix("count=")) if counts else 0


async def test_a_readers_first_burst_finds_its_script_loaded(tmp_path: Path) -> None:
    # The reader reads on past a burst's first entries with a script. Loaded only when the
    # first burst came, the script was refused (NOSCRIPT) and loaded then: two round trips
    # more in the middle of that burst. A server of its own: another test's scripts would
    # be loaded already.
    burst = [f"event {n}" for n in range(30)]
    with redis_server.running(tmp_path) as server:
        async with (
            RedisBroker(server.url, key_prefix=f"test:{uuid.uuid4().hex}:") as broker,
            broker.subscribe("t") as subscription,
        ):
            with anyio.fail_after(10):
                await broker.publish("t", "first")  # loads the publishing script
                assert await take(subscription, 1) == ["first"]
                refused = await refused_scripts(server)
                await broker.publish_many("t", burst)
                assert await take(subscription, len(burst)) == burst
            assert await refused_scripts(server) == refused


async def test_bursts_read_together_come_whole_and_in_order(
    redis: redis_server.RedisServer,
) -> None:
    # After a burst, the reader takes the next with its blocking read and the script in one
    # round trip, the script reading from where the last read stopped. Over read_batch's
    # bound, an entry of another writer's between bursts, and a script the server lost
    # (SCRIPT FLUSH), every event comes once, in order, with the id it was published with;
    # and a topic watched meanwhile ends that read (CLIENT UNBLOCK), not waiting out its 5 s.
    from coredis import Redis

    prefix = f"test:{uuid.uuid4().hex}:"
    bursts = [[f"{name} {n}" for n in range(40)] for name in ("a", "b", "c", "d")]
    async with (
        RedisBroker(redis.url, key_prefix=prefix, read_batch=16) as broker,
        broker.subscribe("t") as subscription,
        Redis.from_url(redis.url, decode_responses=True) as writer,
    ):
        with anyio.fail_after(10):
            await broker.publish("t", "first")
            assert await take(subscription, 1) == ["first"]
            for index, burst in enumerate(bursts):
                if index == 1:
                    await writer.xadd(prefix + "t", {"d": "another writer's"})
                    assert await take(subscription, 1) == ["another writer's"]
                if index == 2:
                    await writer.script_flush()
                ids = await broker.publish_many("t", burst)
                events = [await anext(subscription) for _ in burst]
                assert [event.data for event in events] == burst
                assert [event.id for event in events] == ids
            async with broker.subscribe("u") as other:
                await broker.publish("u", "new topic")
                assert await take(other, 1, within=2.5) == ["new topic"]


class RedisProxy:
    """A TCP proxy in front of Redis that, once told, loses a reply or holds a request.

    :meth:`drop_reply_to` lets the next request holding a marker through and closes that
    connection as its reply comes back: a command that ran on the server, whose reply the
    client never got (coredis sends such a command again, on a new connection).
    :meth:`hold_request` holds the next request holding a marker until it is let go.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._marker: bytes | None = None
        self._left = 0
        self.dropped = 0
        self._hold: tuple[bytes, anyio.Event, anyio.Event] | None = None

    def drop_reply_to(self, marker: bytes, *, times: int = 1) -> None:
        self._marker, self._left = marker, times

    def hold_request(self, marker: bytes) -> tuple[anyio.Event, anyio.Event]:
        """Hold the next request holding *marker* until the second event is set; the first
        is set once it is held."""
        self._hold = (marker, anyio.Event(), anyio.Event())
        return self._hold[1], self._hold[2]

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started()
            await listener.serve(self._relay)

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        drop = anyio.Event()  # this connection's next reply is to be lost
        async with (
            client,
            await anyio.connect_tcp("127.0.0.1", self.target_port) as server,
            anyio.create_task_group() as task_group,
        ):

            async def requests() -> None:
                async for chunk in client:
                    if self._left and self._marker is not None and self._marker in chunk:
                        self._left -= 1
                        drop.set()
                    if self._hold is not None and self._hold[0] in chunk:
                        _, held, release = self._hold
                        self._hold = None
                        held.set()
                        await release.wait()
                    await server.send(chunk)

            async def replies() -> None:
                async for chunk in server:
                    if drop.is_set():
                        self.dropped += 1
                        break
                    await client.send(chunk)
                task_group.cancel_scope.cancel()

            task_group.start_soon(requests)
            task_group.start_soon(replies)


async def test_a_publish_whose_reply_was_lost_is_not_published_twice(
    redis: redis_server.RedisServer,
) -> None:
    # coredis retries a command whose connection was lost (twice, by default): a publish that
    # had run, its reply lost with the connection, appended its events again, and every
    # subscriber got them twice, under new ids.
    proxy = RedisProxy(redis.port)
    async with anyio.create_task_group() as task_group:
        await task_group.start(proxy.serve)
        url = f"redis://127.0.0.1:{proxy.port}"
        prefix = f"test:{uuid.uuid4().hex}:"
        async with (
            RedisBroker(url, key_prefix=prefix) as broker,
            broker.subscribe("t") as subscription,
        ):
            with anyio.fail_after(10):
                await broker.publish("t", "first")  # the publishing script loaded
                assert await take(subscription, 1) == ["first"]
                proxy.drop_reply_to(b"EVALSHA")
                ids = await broker.publish_many("t", ["a", "b"])
                assert proxy.dropped == 1
                last = await broker.publish("t", "last")
                events = [await anext(subscription) for _ in range(3)]
        task_group.cancel_scope.cancel()
    assert [(event.data, event.id) for event in events] == [
        ("a", ids[0]),
        ("b", ids[1]),
        ("last", last),
    ]


async def test_a_check_of_a_new_server_cut_short_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Meeting a new server (its run_id changed), the reader looks for the last entry it read
    # of each topic, and sends the topic's subscribers a reset where it is gone. It took the
    # new run_id as known before looking: a check cut short by a lost connection (the
    # client's own retries failing too) was never made again, and the loss went unsaid.
    monkeypatch.setattr("streamkit._redis_broker._BLOCK_MILLISECONDS", 1000)
    with redis_server.running(tmp_path) as server:
        proxy = RedisProxy(server.port)
        async with anyio.create_task_group() as task_group:
            await task_group.start(proxy.serve)
            url = f"redis://127.0.0.1:{proxy.port}"
            async with (
                RedisBroker(url, key_prefix=f"test:{uuid.uuid4().hex}:") as broker,
                broker.subscribe("t") as subscription,
            ):
                with anyio.fail_after(10):
                    ids = [await broker.publish("t", str(n)) for n in range(3)]
                    assert await take(subscription, 3) == ["0", "1", "2"]
                # The client tries a command three times: each look is cut short.
                proxy.drop_reply_to(b"XRANGE", times=3)
                server.kill()
                server.start()  # empty: what was read is gone
                assert await take(subscription, 1, within=10) == [(RESET_EVENT, "expired", "")]
                assert proxy.dropped == 3
            task_group.cancel_scope.cancel()
    assert ids


#: A script that keeps Redis busy for a while (well past the busy threshold set below).
BUSY_SCRIPT = "for i = 1, 30000000 do end return 1"


async def test_a_server_busy_with_another_script_leaves_the_reader_reading_on_with_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # While another client's script runs past the busy threshold, Redis answers every other
    # command BUSY. The reader took that answer to its read-on script for a refusal of
    # scripts, and read with XREAD alone for the rest of the broker's life, at some three
    # times the cost of a burst's read. It is a failed read: read again once Redis answers.
    from coredis import Redis
    from coredis.exceptions import ResponseError

    from streamkit._redis_broker import _READ_ON

    read_on = hashlib.sha1(_READ_ON.encode()).hexdigest().encode()
    burst = [f"event {n}" for n in range(30)]
    with redis_server.running(tmp_path) as server:
        proxy = RedisProxy(server.port)
        async with anyio.create_task_group() as task_group:
            await task_group.start(proxy.serve)
            async with (
                Redis.from_url(server.url, decode_responses=True) as busy,
                Redis.from_url(server.url, decode_responses=True) as looking,
                RedisBroker(f"redis://127.0.0.1:{proxy.port}", key_prefix="t:") as broker,
                broker.subscribe("t") as subscription,
            ):
                await busy.config_set({"busy-reply-threshold": 20})
                with anyio.fail_after(20):
                    await broker.publish("t", "first")
                    assert await take(subscription, 1) == ["first"]
                    held, release = proxy.hold_request(read_on)
                    await broker.publish_many("t", burst)
                    await held.wait()  # the reader has the burst's first two, and reads on

                    async def run_busy() -> None:
                        await busy.eval(BUSY_SCRIPT, [], [])

                    task_group.start_soon(run_busy)
                    answer = ""
                    while not answer.startswith("BUSY"):  # until Redis answers BUSY
                        try:
                            await looking.get("t:nothing")
                        except ResponseError as exc:
                            answer = str(exc)
                    release.set()  # answered BUSY
                    assert await take(subscription, len(burst), within=20) == burst
                    await broker.publish_many("t", burst)
                    assert await take(subscription, len(burst)) == burst
            task_group.cancel_scope.cancel()
    said = [record.getMessage() for record in caplog.records]
    assert any("BUSY" in line and "retrying, positions kept" in line for line in said), said
    assert not [line for line in said if "reading with XREAD alone" in line]
