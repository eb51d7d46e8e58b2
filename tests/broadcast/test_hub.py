"""The hub and its subscriptions, on the in-memory broker: each slow-subscriber policy acts at
the subscriber's buffer and on that subscriber only, the catching-up slots are given back,
and what a subscriber reads after a gap resumes exactly (the cases common to both brokers are
in ``test_broker.py``)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from support.brokers import take

from streamkit.broadcast import (
    RESET_EVENT,
    MemoryBroker,
    SlowSubscriberError,
    SlowSubscriberPolicy,
)

pytestmark = pytest.mark.anyio


async def publish(broker: MemoryBroker, topic: str, items: range) -> list[str]:
    return [await broker.publish(topic, str(item)) for item in items]


def drop_oldest(**options: Any) -> MemoryBroker:
    return MemoryBroker(slow_subscriber_policy=SlowSubscriberPolicy.DROP_OLDEST, **options)


# -- drop oldest ------------------------------------------------------------------------------


async def test_after_a_drop_the_reset_id_resumes_exactly_where_the_subscriber_goes_on() -> None:
    async with drop_oldest(subscriber_buffer=3) as broker, broker.subscribe("t") as slow:
        ids = await publish(broker, "t", range(10))
        received = await take(slow, 4)
        assert received == [(RESET_EVENT, "overflow", ids[6]), "7", "8", "9"]
        # A client that reconnects with the reset's id is sent what followed it, no more.
        async with broker.subscribe("t", last_event_id=received[0][2]) as resumed:
            assert await take(resumed, 3) == ["7", "8", "9"]
        await broker.publish("t", "10")
        assert await take(slow, 1) == ["10"], "live again, without another reset"


async def test_a_second_overflow_is_told_with_its_own_reset() -> None:
    async with drop_oldest(subscriber_buffer=2) as broker, broker.subscribe("t") as slow:
        ids = await publish(broker, "t", range(5))
        assert await take(slow, 3) == [(RESET_EVENT, "overflow", ids[2]), "3", "4"]
        ids += await publish(broker, "t", range(5, 9))
        assert await take(slow, 3) == [(RESET_EVENT, "overflow", ids[6]), "7", "8"]
        assert broker.statistics().dropped == 3 + 2


async def test_dropping_for_a_slow_subscriber_leaves_a_reader_that_keeps_up_whole() -> None:
    async with drop_oldest(subscriber_buffer=2) as broker:
        async with broker.subscribe("t") as slow, broker.subscribe("t") as reader:
            ids = []
            for item in range(6):
                ids.append(await broker.publish("t", str(item)))
                assert await take(reader, 1) == [str(item)]
            assert broker.statistics().dropped == 4
            assert await take(slow, 3) == [(RESET_EVENT, "overflow", ids[3]), "4", "5"]


# -- disconnect -------------------------------------------------------------------------------


async def test_disconnecting_a_slow_subscriber_leaves_the_others_subscribed() -> None:
    async with MemoryBroker(
        subscriber_buffer=2, slow_subscriber_policy=SlowSubscriberPolicy.DISCONNECT
    ) as broker:
        async with broker.subscribe("t") as reader:
            async with broker.subscribe("t") as slow:
                for item in range(3):
                    await broker.publish("t", str(item))
                    assert await take(reader, 1) == [str(item)]
                statistics = broker.statistics()
                assert (statistics.slow_disconnects, statistics.buffered) == (1, 0)
                with pytest.raises(SlowSubscriberError, match="had 2 events waiting"):
                    await anext(slow)
            assert broker.statistics().subscribers == 1
            await broker.publish("t", "3")
            assert await take(reader, 1) == ["3"]


async def test_with_no_catching_up_slot_a_slow_subscriber_is_disconnected_at_once() -> None:
    async with MemoryBroker(subscriber_buffer=1, max_catching_up=0) as broker:
        async with broker.subscribe("t") as slow:
            await publish(broker, "t", range(2))
            assert broker.statistics().slow_disconnects == 1
            assert broker.statistics().catching_up == 0
            with pytest.raises(SlowSubscriberError, match="CATCH_UP, 0 of 0 catching up"):
                await take(slow, 2)


# -- catch up ---------------------------------------------------------------------------------


async def test_a_catching_up_slot_is_given_back_when_its_subscriber_leaves() -> None:
    async with MemoryBroker(subscriber_buffer=1, max_catching_up=1) as broker:
        async with broker.subscribe("t") as first:
            await publish(broker, "t", range(3))
            assert first.catching_up
            assert broker.statistics().catching_up == 1
        assert broker.statistics().catching_up == 0
        async with broker.subscribe("t") as second:
            await publish(broker, "t", range(3, 6))
            assert second.catching_up, "the slot was free again: caught up, not disconnected"
            assert broker.statistics().slow_disconnects == 0
            assert await take(second, 3) == ["3", "4", "5"]
            await broker.publish("t", "6")
            assert await take(second, 1) == ["6"]
            assert not second.catching_up


async def test_a_catching_up_subscriber_whose_history_was_trimmed_is_reset_then_goes_live() -> None:
    async with MemoryBroker(subscriber_buffer=2, history_size=5) as broker:
        async with broker.subscribe("t") as slow:
            ids = await publish(broker, "t", range(20))
            # what its buffer held, then the gap, then the newest event as where to go on from
            assert await take(slow, 3) == ["0", "1", (RESET_EVENT, "trimmed", ids[-1])]
            for item in ("20", "21"):  # read from the history, then live: no duplicate
                await broker.publish("t", item)
                assert await take(slow, 1) == [item]
            assert broker.statistics().catching_up == 0


# -- the subscription -------------------------------------------------------------------------


async def test_an_empty_last_event_id_starts_with_the_next_event() -> None:
    # A reset with no event to go on from has an empty id; the browser then sends none, or
    # an empty one: either starts afresh, with no second reset.
    async with MemoryBroker() as broker:
        await publish(broker, "t", range(3))
        async with broker.subscribe("t", last_event_id="") as subscription:
            await broker.publish("t", "3")
            assert await take(subscription, 1) == ["3"]


async def test_an_invalid_id_on_a_topic_without_history_resets_to_an_empty_id() -> None:
    async with MemoryBroker() as broker, broker.subscribe("t", last_event_id="x") as subscription:
        first = await anext(subscription)
        assert (first.event, first.id) == (RESET_EVENT, "")
        await broker.publish("t", "0")
        assert await take(subscription, 1) == ["0"]


async def test_a_subscription_is_entered_once_and_before_it_is_read() -> None:
    async with MemoryBroker() as broker:
        subscription = broker.subscribe("t")
        with pytest.raises(RuntimeError, match="enter the subscription"):
            await anext(subscription)
        async with subscription:
            with pytest.raises(RuntimeError, match="can be entered only once"):
                async with subscription:
                    pass  # pragma: no cover


async def test_leaving_a_subscription_frees_its_buffer_and_its_topic() -> None:
    async with MemoryBroker(subscriber_buffer=8) as broker:
        async with broker.subscribe("t") as subscription, broker.subscribe("other"):
            await publish(broker, "t", range(3))
            assert await take(subscription, 1) == ["0"]
            statistics = broker.statistics()
            assert (statistics.topics, statistics.subscribers, statistics.buffered) == (2, 2, 2)
        statistics = broker.statistics()
        assert (statistics.topics, statistics.subscribers, statistics.buffered) == (0, 0, 0)
        assert (statistics.published, statistics.delivered) == (3, 3)


async def test_closing_the_broker_ends_a_waiting_reader() -> None:
    ended = anyio.Event()
    async with anyio.create_task_group() as task_group:
        async with MemoryBroker() as broker:
            subscription = await broker.subscribe("t").__aenter__()

            async def read() -> None:
                async for _ in subscription:
                    pass  # pragma: no cover
                ended.set()

            task_group.start_soon(read)
            await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5):
            await ended.wait()
        await subscription.__aexit__(None, None, None)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"slow_subscriber_policy": "drop_oldest"}, TypeError, "got 'drop_oldest'"),
        ({"max_catching_up": -1}, ValueError, "max_catching_up must be an int of at least 0"),
        ({"subscriber_buffer": 2.0}, TypeError, "subscriber_buffer must be an int, got float"),
    ],
)
def test_the_hubs_options_are_checked(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        MemoryBroker(**options)


async def test_a_topic_is_watched_once_for_the_subscribers_arriving_before_it_is() -> None:
    # A broker whose watch awaits (Redis asks where the topic's stream ends) is asked once;
    # the subscribers arriving meanwhile wait for that, then are all subscribed.
    class SlowWatch(MemoryBroker):
        watched = 0

        async def _watch(self, topic: str) -> None:
            self.watched += 1
            await anyio.wait_all_tasks_blocked()  # the others arrive meanwhile

    subscribed = anyio.Event()
    async with SlowWatch() as broker:

        async def subscriber() -> None:
            async with broker.subscribe("t"):
                if broker.statistics().subscribers == 20:
                    subscribed.set()
                await subscribed.wait()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                for _ in range(20):
                    task_group.start_soon(subscriber)
    assert broker.watched == 1
    assert subscribed.is_set()
