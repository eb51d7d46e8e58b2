"""Fan-out to streams (``topic_response``) over :class:`~streamkit.testing.FakeConnection`: each
event is encoded once for all its subscribers, the ones that keep up are fed straight into
their streams' buffers, one whose stream is behind still gets every event in order, and the
per-topic statistics count what happened."""

from __future__ import annotations

import gc
import re
import types
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.types import ASGIApp, Message
from support.brokers import until

import streamkit._hub
import streamkit._runtime
import streamkit._sse
from streamkit import EndReason, EventSourceResponse, ServerSentEvent, StreamEnd, StreamSender
from streamkit._loop import TIMERS_TASK
from streamkit._topics import parse_event_id
from streamkit.broadcast import MemoryBroker, SlowSubscriberPolicy, topic_response
from streamkit.testing import FakeConnection

pytestmark = pytest.mark.anyio

RUNTIME = streamkit._runtime.__file__
HUB = streamkit._hub.__file__
_DATA = re.compile(rb"^data: (.*)$", re.MULTILINE)


def data_of(connection: FakeConnection) -> list[str]:
    return [match.decode() for match in _DATA.findall(connection.body)]


def has_events(connection: FakeConnection, count: int) -> bool:
    return len(data_of(connection)) == count


def serve(connection: FakeConnection, response: ASGIApp) -> Callable[[], Coroutine[Any, Any, None]]:
    return partial(connection.run, response, within=10.0)


async def test_each_event_is_encoded_once_for_all_subscribers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded: list[object] = []
    encode = streamkit._sse.encode_event

    def counting(event: object) -> bytes:
        encoded.append(event)
        return encode(event)  # type: ignore[arg-type]  # the hub's one argument

    monkeypatch.setattr(streamkit._hub, "encode_event", counting)
    connections = [FakeConnection(path="/t") for _ in range(50)]
    async with MemoryBroker() as broker, anyio.create_task_group() as task_group:
        for connection in connections:
            task_group.start_soon(serve(connection, topic_response(broker, "t")))
        await until(lambda: broker.statistics().subscribers == 50)
        for number in range(20):
            await broker.publish("t", str(number))
            await anyio.sleep(0.001)  # a live source: the streams keep up
        expected = [str(number) for number in range(20)]
        await until(lambda: all(data_of(c) == expected for c in connections))
        assert len(encoded) == 20  # not 50 x 20
        statistics = broker.topic_statistics("t")
        assert statistics.subscribers == 50
        assert statistics.deliveries == 50 * 20
        for connection in connections:
            connection.disconnect()
    assert broker.topic_statistics("t").subscribers == 0


def running_tasks() -> int:
    """The tasks running, but the trio run's timer task, which the first stream starts."""
    return sum(task.name != TIMERS_TASK for task in anyio.get_running_tasks())


async def starting(broker: MemoryBroker, start: str) -> tuple[dict[str, str] | None, list[str]]:
    """The request headers of a subscriber of topic ``t`` that starts *start*, and the events
    it is sent first: a ``"resumed"`` one saw "seen", and missed "missed"."""
    if start != "resumed":
        return None, []
    headers = {"last-event-id": await broker.publish("t", "seen")}
    await broker.publish("t", "missed")
    return headers, ["missed"]


@pytest.mark.parametrize("start", ["live", "resumed"])
async def test_a_subscriber_that_keeps_up_costs_its_streams_writer_and_no_task_of_its_own(
    start: str,
) -> None:
    # Its producer's task, with nothing to do but wait while the hub fills its stream's
    # buffer, listens for the disconnect itself: the stream's watcher task is not needed.
    # A live subscriber gets there before the watcher begins; a resumed one sends what it
    # missed first, and stops the watcher, which had begun, once it is live.
    count = 20

    async with MemoryBroker() as broker, anyio.create_task_group() as task_group:
        headers, missed = await starting(broker, start)
        connections = [FakeConnection(path="/t", headers=headers) for _ in range(count)]
        before = running_tasks()
        for connection in connections:
            task_group.start_soon(serve(connection, topic_response(broker, "t")))
        await until(lambda: broker.statistics().subscribers == count)
        await until(lambda: all(data_of(c) == missed for c in connections))
        await broker.publish("t", "one")  # a resumed subscriber is live from its first
        await until(lambda: all(data_of(c) == [*missed, "one"] for c in connections))
        # Each connection's own task (its request's) and its stream's writer: no more, once
        # the tasks the streams started and stopped have finished.
        await until(lambda: running_tasks() - before == 2 * count)
        await broker.publish("t", "two")
        await until(lambda: all(data_of(c) == [*missed, "one", "two"] for c in connections))
        for connection in connections:
            connection.disconnect()
        with anyio.fail_after(2):
            await until(lambda: broker.statistics().subscribers == 0)
    assert all(connection.receive_calls for connection in connections)


def live_cancel_scopes() -> int:
    gc.collect()
    return sum(isinstance(item, anyio.CancelScope) for item in gc.get_objects())


async def waits_for_the_disconnect(scope: Any, receive: Any, send: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@pytest.mark.parametrize("start", ["live", "resumed", "caught up"])
async def test_a_subscriber_that_keeps_up_holds_three_cancel_scopes(start: str) -> None:
    # Its stream's task group's, its writer's (anyio makes one for every task), and the one
    # its producer listens for the disconnect in, which is also the one that cancels the
    # producer once the end is decided: each is about 0.6 KiB (two sets) on asyncio, 0.7 on
    # trio. The same once its stream fell behind and caught up (its producer fed it and the
    # watcher listened meanwhile). The harness's own, per connection, are counted on an app
    # that only waits.
    count = 20

    async with MemoryBroker() as broker, anyio.create_task_group() as task_group:
        headers, missed = await starting(broker, start)
        before = live_cancel_scopes()
        waiting = [FakeConnection(path="/") for _ in range(count)]
        for connection in waiting:
            task_group.start_soon(serve(connection, waits_for_the_disconnect))
        await until(lambda: all(connection.receive_calls == 2 for connection in waiting))
        harness = live_cancel_scopes() - before
        tasks = running_tasks()
        if start == "caught up":
            slow = [SlowConnection() for _ in range(count)]
            connections: list[FakeConnection] = list(slow)
            for connection in slow:
                task_group.start_soon(serve(connection, topic_response(broker, "t", buffer_size=2)))
        else:
            connections = [FakeConnection(path="/t", headers=headers) for _ in range(count)]
            for connection in connections:
                task_group.start_soon(serve(connection, topic_response(broker, "t")))
        await until(lambda: broker.statistics().subscribers == count)
        await until(lambda: all(data_of(c) == missed for c in connections))
        if start == "caught up":  # past its stream's buffer: its producer feeds it
            missed = [f"behind {number}" for number in range(10)]
            for event in missed:
                await broker.publish("t", event)
            await until(lambda: running_tasks() - tasks == 3 * count)  # and the watcher listens
            for connection in slow:
                for _ in range(20):
                    connection.room.release()
            await until(lambda: all(data_of(c) == missed for c in connections))
        await broker.publish("t", "one")  # a resumed subscriber is live from its first
        await until(lambda: all(data_of(c) == [*missed, "one"] for c in connections))
        await until(lambda: running_tasks() - tasks == 2 * count)  # the watchers have returned
        held = live_cancel_scopes() - before - 2 * harness
        for connection in [*waiting, *connections]:
            connection.disconnect()
        with anyio.fail_after(2):
            await until(lambda: broker.statistics().subscribers == 0)
    assert harness % count == 0
    assert held == 3 * count, f"{held / count} per subscriber"


@pytest.mark.parametrize("start", ["live", "caught up"])
async def test_an_end_decided_while_the_producer_listens_cancels_it_and_the_farewell_is_written(
    start: str,
) -> None:
    # The stream's max_duration passes while the producer listens for the disconnect in the
    # scope that stands in for its own (after its stream fell behind and caught up, a scope
    # made anew): the producer is cancelled, and only it, its subscription left; the writer
    # still writes the farewell and ends the body.
    ends: list[StreamEnd] = []
    farewell = ServerSentEvent(event="deadline", data="")
    slow = SlowConnection() if start == "caught up" else None
    connection = slow or FakeConnection(path="/t")

    with anyio.fail_after(5):
        async with MemoryBroker() as broker, anyio.create_task_group() as task_group:
            response = topic_response(
                broker,
                "t",
                buffer_size=2,
                max_duration=1.0,
                deadline_event=farewell,
                on_end=ends.append,
            )
            tasks = running_tasks()
            task_group.start_soon(serve(connection, response))
            await until(lambda: broker.statistics().subscribers == 1)
            sent = [f"event {number}" for number in range(10 if slow else 1)]
            for event in sent:
                await broker.publish("t", event)
            if slow is not None:  # past its stream's buffer, then let go
                for _ in range(100):
                    slow.room.release()
            await until(lambda: data_of(connection) == sent)
            # Its request's task and its writer: the producer listens, no watcher.
            await until(lambda: running_tasks() - tasks == 2)
            assert not ends
    assert [end.reason for end in ends] == [EndReason.DEADLINE]
    assert broker.statistics().subscribers == 0
    assert [event.event for event in connection.events()][-1] == "deadline"
    assert connection.complete


@pytest.mark.parametrize("start", ["live", "resumed"])
async def test_a_subscriber_that_leaves_leaves_no_reference_cycle_for_the_collector(
    start: str,
) -> None:
    # Its producer heard the disconnect itself and returned; a resumed one had stopped the
    # watcher by a cancellation. Neither may leave the stream in a cycle with their frames.
    gc.collect()
    gc.disable()
    try:
        async with MemoryBroker() as broker:
            headers = None
            if start == "resumed":
                headers = {"last-event-id": await broker.publish("t", "seen")}
                await broker.publish("t", "missed")
            connection = FakeConnection(path="/t", headers=headers)
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(serve(connection, topic_response(broker, "t")))
                await until(lambda: broker.statistics().subscribers == 1)
                await broker.publish("t", "live")
                await until(lambda: data_of(connection)[-1:] == ["live"])
                connection.disconnect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [
            type(item).__name__
            for item in gc.garbage
            if type(item).__name__ in ("_Stream", "Subscription")
            or (isinstance(item, types.FrameType) and item.f_code.co_filename in (RUNTIME, HUB))
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


async def test_a_delivery_leaves_no_list_per_subscriber_for_the_collector_to_follow() -> None:
    # What a delivery makes and keeps until the next event is followed by the garbage
    # collector meanwhile: it outlives the collections of young objects, and each such
    # object brings the next full collection, which walks every subscriber, nearer. The
    # writer took the frames of every write as a list, and left a new one in the buffer.
    connections = [FakeConnection(path="/t") for _ in range(50)]
    async with MemoryBroker() as broker, anyio.create_task_group() as task_group:
        for connection in connections:
            task_group.start_soon(serve(connection, topic_response(broker, "t")))
        await until(lambda: broker.statistics().subscribers == 50)
        await broker.publish("t", "first")
        await until(lambda: all(has_events(c, 1) for c in connections))
        gc.collect()
        gc.disable()
        try:
            await broker.publish("t", "second")
            await until(lambda: all(has_events(c, 2) for c in connections))
            lists = sum(type(item) is list for item in gc.get_objects(generation=0))
        finally:
            gc.enable()
        for connection in connections:
            connection.disconnect()
    assert lists < len(connections)  # two per subscriber before


async def test_a_producer_of_your_own_is_cancelled_after_feed_returns_when_the_client_left() -> (
    None
):
    # feed() returns once it hears the client leave; what the producer does after it is
    # cancelled as for any stream that ended.
    went_on = anyio.Event()
    ends: list[StreamEnd] = []

    async def produce(send: StreamSender[Any]) -> None:
        async with broker.subscribe("t") as subscription:
            await subscription.feed(send)
        went_on.set()
        await anyio.sleep_forever()

    connection = FakeConnection(path="/t")
    with anyio.fail_after(5):
        async with MemoryBroker() as broker, anyio.create_task_group() as task_group:
            response = EventSourceResponse(produce, on_end=ends.append)
            task_group.start_soon(serve(connection, response))
            await until(lambda: broker.statistics().subscribers == 1)
            await broker.publish("t", "one")
            await until(lambda: data_of(connection) == ["one"])
            connection.disconnect()
            await went_on.wait()
    assert [end.reason for end in ends] == [EndReason.CLIENT_DISCONNECTED]


class SlowConnection(FakeConnection):
    """A client that takes each body write only when :attr:`room` lets it."""

    def __init__(self) -> None:
        super().__init__(path="/t")
        self.room = anyio.Semaphore(0)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            await self.room.acquire()
        await super().send(message)


@asynccontextmanager
async def fast_and_slow(
    policy: SlowSubscriberPolicy, **options: Any
) -> AsyncIterator[tuple[MemoryBroker, FakeConnection, SlowConnection]]:
    """A broker with *policy* (64 events per subscriber), and two subscribers to ``t`` with
    the response *options*: one that keeps up, and a :class:`SlowConnection` whose stream's
    buffer holds 4 frames."""
    fast, slow = FakeConnection(path="/t"), SlowConnection()
    async with (
        MemoryBroker(subscriber_buffer=64, slow_subscriber_policy=policy) as broker,
        anyio.create_task_group() as task_group,
    ):
        task_group.start_soon(serve(fast, topic_response(broker, "t", **options)))
        slow_response = topic_response(broker, "t", buffer_size=4, **options)
        task_group.start_soon(serve(slow, slow_response))
        await until(lambda: broker.statistics().subscribers == 2)
        yield broker, fast, slow


@pytest.mark.parametrize("policy", list(SlowSubscriberPolicy))
async def test_a_subscriber_whose_stream_falls_behind_and_catches_up_misses_nothing(
    policy: SlowSubscriberPolicy,
) -> None:
    # Its stream's buffer fills, the events go to its own buffer, and that one stays below
    # its size here: whatever the policy, nothing is dropped, and the order holds.
    async with fast_and_slow(policy) as (broker, fast, slow):
        for number in range(40):
            await broker.publish("t", str(number))
            await anyio.lowlevel.checkpoint()
        expected = [str(number) for number in range(40)]
        await until(lambda: data_of(fast) == expected)
        for _ in range(41):
            slow.room.release()
        await until(lambda: data_of(slow) == expected)
        statistics = broker.topic_statistics("t")
        assert (statistics.drops, statistics.catch_ups, statistics.slow_disconnects) == (0, 0, 0)
        # Back to its stream's buffer once caught up: the next events reach it directly.
        for number in range(40, 45):
            await broker.publish("t", str(number))
        for _ in range(5):
            slow.room.release()
        await until(lambda: data_of(slow) == [str(number) for number in range(45)])
        fast.disconnect()
        slow.disconnect()


@asynccontextmanager
async def one_slow_subscriber(
    buffer_size: int, **options: Any
) -> AsyncIterator[tuple[MemoryBroker, SlowConnection]]:
    """A broker with *options*, and one :class:`SlowConnection` subscribed to ``t``."""
    slow = SlowConnection()
    async with MemoryBroker(**options) as broker, anyio.create_task_group() as task_group:
        task_group.start_soon(serve(slow, topic_response(broker, "t", buffer_size=buffer_size)))
        await until(lambda: broker.statistics().subscribers == 1)
        yield broker, slow


async def test_a_subscriber_that_fell_behind_is_still_heard_leaving() -> None:
    # Fallen behind, it is fed by its producer again, whose task no longer listens: the
    # watcher listens in its place, and the disconnect still ends the stream at once.
    async with one_slow_subscriber(2, subscriber_buffer=64) as (broker, slow):
        for number in range(10):
            await broker.publish("t", str(number))
        slow.disconnect()
        with anyio.fail_after(2):
            await until(lambda: broker.statistics().subscribers == 0)
        for _ in range(20):
            slow.room.release()
    assert slow.body.count(b"data: ") < 10  # not all written: it left behind


async def test_topic_statistics_count_catch_ups_and_resets() -> None:
    async with one_slow_subscriber(1, subscriber_buffer=2, max_catching_up=4) as (broker, slow):
        for number in range(20):
            await broker.publish("t", str(number))
        assert broker.topic_statistics("t").catch_ups == 1
        for _ in range(100):
            slow.room.release()
        expected = [str(number) for number in range(20)]
        await until(lambda: data_of(slow) == expected)  # from the history, in order
        slow.disconnect()
    # A resume from an id the history never held is a reset, counted for its topic.
    async with MemoryBroker() as broker, anyio.create_task_group() as task_group:
        await broker.publish("u", "first")
        resuming = FakeConnection(path="/u", headers={"last-event-id": "1-1"})
        task_group.start_soon(serve(resuming, topic_response(broker, "u")))
        await until(lambda: b"event: reset" in resuming.body)
        assert broker.topic_statistics("u").resets == 1
        assert broker.topic_statistics("other").subscribers == 0
        resuming.disconnect()


async def test_the_idle_fallback_repeats_the_last_event_fed_to_the_stream() -> None:
    # The first event is sent by the subscription, the next ones straight into the stream's
    # buffer: the fallback is made of the last of them, not of the last one sent.
    connection = FakeConnection(path="/t")
    async with MemoryBroker() as broker, anyio.create_task_group() as task_group:
        response = topic_response(broker, "t", idle_timeout=0.2, heartbeat_interval=None)
        task_group.start_soon(serve(connection, response))
        await until(lambda: broker.statistics().subscribers == 1)
        for number in range(1, 4):
            await broker.publish("t", str(number - 1))
            await until(partial(has_events, connection, number))
        await until(partial(has_events, connection, 4))
        assert data_of(connection) == ["0", "1", "2", "2"]
        connection.disconnect()


async def test_the_idle_fallback_repeats_no_reset() -> None:
    # A reset is no state to repeat: a stream whose last event was one sends no `stale` after
    # it, and repeats the next real event once there is one.
    connection = FakeConnection(path="/t", headers={"last-event-id": "junk"})
    async with MemoryBroker() as broker, anyio.create_task_group() as task_group:
        await broker.publish("t", "before")
        response = topic_response(broker, "t", idle_timeout=0.05, heartbeat_interval=None)
        task_group.start_soon(serve(connection, response))
        await until(lambda: b"event: reset" in connection.body)
        await until(lambda: broker.statistics().subscribers == 1)
        await anyio.sleep(0.2)  # four idle periods: a fallback would have been sent by now
        assert b"stale" not in connection.body
        await broker.publish("t", "after")
        await until(lambda: data_of(connection)[1:3] == ["after", "after"])  # then its stale
        connection.disconnect()


async def publish_burst(broker: MemoryBroker, how: str, count: int) -> list[str]:
    """Publish *count* events to ``t`` without letting the loop run in between: with
    ``publish_nowait`` back to back, or with one ``publish_many``."""
    data = [str(number) for number in range(count)]
    if how == "publish_many":
        return await broker.publish_many("t", data)
    await anyio.lowlevel.checkpoint()  # as publish_many's own, before the burst
    return [broker.publish_nowait("t", item) for item in data]


BURSTS = pytest.mark.parametrize("how", ["publish_nowait", "publish_many"])


@BURSTS
async def test_a_burst_published_without_yielding_goes_out_in_one_write_per_subscriber(
    how: str,
) -> None:
    # publish() lets the loop run after each event, so a stream that keeps up writes each
    # event on its own (or a few together, as the loop has it). publish_nowait() back to back
    # fills every stream's buffer first, and each stream's writer sends the burst at once;
    # publish_many() hands each stream the whole burst in one call.
    connections = [FakeConnection(path="/t") for _ in range(10)]
    # More than StreamOptions' default buffer_size (16): a topic stream's buffer holds the
    # broker's subscriber_buffer (64) frames, so the burst goes straight into it.
    burst = 40
    async with MemoryBroker() as broker, anyio.create_task_group() as task_group:
        for connection in connections:
            task_group.start_soon(serve(connection, topic_response(broker, "t")))
        await until(lambda: broker.statistics().subscribers == 10)
        before = [len(connection.body_chunks) for connection in connections]
        ids = await publish_burst(broker, how, burst)
        expected = [str(number) for number in range(burst)]
        await until(lambda: all(data_of(c) == expected for c in connections))
        writes = [len(c.body_chunks) - count for c, count in zip(connections, before, strict=True)]
        assert writes == [1] * 10
        keys = [parse_event_id(identifier) for identifier in ids]
        assert None not in keys
        assert keys == sorted(set(keys), key=lambda key: key or (0, 0))  # rising, none twice
        assert broker.topic_statistics("t").deliveries == 10 * burst
        for connection in connections:
            connection.disconnect()


@BURSTS
async def test_a_burst_beyond_the_buffers_meets_the_policy_and_loses_nothing(how: str) -> None:
    # 8 frames in the stream's buffer (the broker's subscriber_buffer) and 8 in the
    # subscription's: the 17th event finds both full, and the default policy has the
    # subscriber read the rest from the history.
    connection = FakeConnection(path="/t")
    async with (
        MemoryBroker(subscriber_buffer=8) as broker,
        anyio.create_task_group() as task_group,
    ):
        task_group.start_soon(serve(connection, topic_response(broker, "t")))
        await until(lambda: broker.statistics().subscribers == 1)
        await publish_burst(broker, how, 60)
        expected = [str(number) for number in range(60)]
        await until(lambda: data_of(connection) == expected)
        assert broker.topic_statistics("t").catch_ups == 1
        connection.disconnect()


@pytest.mark.parametrize("policy", list(SlowSubscriberPolicy))
async def test_a_burst_that_one_stream_takes_only_part_of_reaches_it_whole_and_in_order(
    policy: SlowSubscriberPolicy,
) -> None:
    # The stream that keeps up takes the burst at once; the slow one's buffer (4 frames)
    # takes the first 4, and the rest go through its subscription's own buffer (64 events):
    # whatever the policy, nothing is dropped, none is repeated, and the order holds. The
    # idle fallback of each is made of the burst's last event, however its stream took it.
    async with fast_and_slow(policy, idle_timeout=0.5) as (broker, fast, slow):
        await publish_burst(broker, "publish_many", 30)
        expected = [str(number) for number in range(30)]
        await until(lambda: data_of(fast)[:30] == expected)
        for _ in range(31):
            slow.room.release()
        await until(lambda: data_of(slow) == expected)
        statistics = broker.topic_statistics("t")
        assert (statistics.drops, statistics.catch_ups, statistics.slow_disconnects) == (0, 0, 0)
        assert statistics.deliveries == 60
        slow.room.release()
        # Then the idle fallback (repeated every idle_timeout: only the first is looked at).
        await until(lambda: data_of(fast)[:31] == [*expected, "29"])
        await until(lambda: data_of(slow)[:31] == [*expected, "29"])
        fast.disconnect()
        slow.disconnect()


async def test_a_subscriber_disconnected_by_the_policy_that_leaves_during_the_farewell() -> None:
    # The policy ends the stream with a farewell event; the client leaves once it has it. The
    # stream ends then, not at send_timeout (none here), and nothing is left subscribed.
    connection = FakeConnection(path="/t", disconnect_after_body=2)
    policy = SlowSubscriberPolicy.DISCONNECT
    async with MemoryBroker(subscriber_buffer=4, slow_subscriber_policy=policy) as broker:
        response = topic_response(broker, "t", buffer_size=2, send_timeout=None)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(serve(connection, response))
                await until(lambda: broker.statistics().subscribers == 1)
                for number in range(7):
                    broker.publish_nowait("t", str(number))
        # The task group waited for the stream: it has ended.
        assert b"event: slow-subscriber" in connection.body
        assert connection.disconnected
        assert not connection.complete
        assert broker.statistics().subscribers == 0


async def test_publish_nowait_runs_in_a_callback_of_the_loop_and_refuses_another_thread(
    anyio_backend: str,
) -> None:
    async with MemoryBroker() as broker, broker.subscribe("t") as subscription:
        published: list[str] = []
        done = anyio.Event()

        def callback() -> None:  # no task: a function the loop calls
            published.append(broker.publish_nowait("t", "from a callback"))
            done.set()

        if anyio_backend == "trio":
            import trio

            trio.lowlevel.current_trio_token().run_sync_soon(callback)
        else:
            import asyncio

            asyncio.get_running_loop().call_soon(callback)
        with anyio.fail_after(5):
            await done.wait()
            event = await subscription.__anext__()
        assert (event.id, event.data) == (published[0], "from a callback")
        with pytest.raises(RuntimeError, match=r"event loop's thread.*from_thread\.run_sync"):
            await anyio.to_thread.run_sync(broker.publish_nowait, "t", "from a thread")
        # The way the message gives works, and the refused one left nothing behind.
        relayed = await anyio.to_thread.run_sync(
            anyio.from_thread.run_sync, broker.publish_nowait, "t", "relayed"
        )
        with anyio.fail_after(5):
            event = await subscription.__anext__()
        assert (event.id, event.data) == (relayed, "relayed")
