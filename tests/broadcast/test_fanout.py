"""Fan-out to streams (``topic_response``) over :class:`~streamkit.testing.FakeConnection`: each
event is encoded once for all its subscribers, the ones that keep up are fed straight into
their streams' buffers, one whose stream is behind still gets every event in order, and the
per-topic statistics count what happened."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.types import ASGIApp, Message
from support.brokers import until

import streamkit._hub
import streamkit._sse
from streamkit.broadcast import MemoryBroker, SlowSubscriberPolicy, topic_response
from streamkit.testing import FakeConnection

pytestmark = pytest.mark.anyio

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


class SlowConnection(FakeConnection):
    """A client that takes each body write only when :attr:`room` lets it."""

    def __init__(self) -> None:
        super().__init__(path="/t")
        self.room = anyio.Semaphore(0)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            await self.room.acquire()
        await super().send(message)


@pytest.mark.parametrize("policy", list(SlowSubscriberPolicy))
async def test_a_subscriber_whose_stream_falls_behind_and_catches_up_misses_nothing(
    policy: SlowSubscriberPolicy,
) -> None:
    # Its stream's buffer fills, the events go to its own buffer, and that one stays below
    # its size here: whatever the policy, nothing is dropped, and the order holds.
    fast, slow = FakeConnection(path="/t"), SlowConnection()
    async with (
        MemoryBroker(subscriber_buffer=64, slow_subscriber_policy=policy) as broker,
        anyio.create_task_group() as task_group,
    ):
        for connection in (fast, slow):
            response = topic_response(broker, "t", buffer_size=4)
            task_group.start_soon(serve(connection, response))
        await until(lambda: broker.statistics().subscribers == 2)
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


async def test_topic_statistics_count_catch_ups_and_resets() -> None:
    slow = SlowConnection()
    async with (
        MemoryBroker(subscriber_buffer=2, max_catching_up=4) as broker,
        anyio.create_task_group() as task_group,
    ):
        task_group.start_soon(serve(slow, topic_response(broker, "t", buffer_size=1)))
        await until(lambda: broker.statistics().subscribers == 1)
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
