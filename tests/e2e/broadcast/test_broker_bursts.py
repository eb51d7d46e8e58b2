"""Bursts through real hypercorn on asyncio and trio: the Redis reader takes up to
``read_batch`` entries at once, and subscribers that keep up must get them all without being
taken for slow ones, even beyond their buffers; a burst published with ``publish_many``
reaches every subscriber in order, with one of them leaving in the middle of it.
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support import redis_server
from support.brokers import MakeBroker, until

from streamkit import EndReason
from streamkit.broadcast import RedisBroker, SlowSubscriberPolicy, topic_response
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.mark.parametrize("clients", [24])
async def test_a_burst_in_one_read_does_not_disconnect_subscribers_that_keep_up(
    redis: redis_server.RedisServer, clients: int
) -> None:
    import coredis

    prefix, burst = f"test:{uuid.uuid4().hex}:", 200
    broker = RedisBroker(redis.url, key_prefix=prefix)  # buffers of 64, 16 may catch up

    async def events(request: Request) -> Response:
        return topic_response(broker, "t", heartbeat_interval=None)

    app = Starlette(routes=[Route("/t", events)])
    writer = coredis.Redis.from_url(redis.url, decode_responses=True)
    async with writer, broker, open_server(app) as server, AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(open_stream(server, "/t")) for _ in range(clients)
        ]
        await until(lambda: broker.statistics().subscribers == clients)
        first = await broker.publish("t", "first")
        for stream in streams:
            with anyio.fail_after(5):
                assert (await stream.read_event()).id == first
        # One transaction: the reader's next XREAD takes the whole burst at once.
        async with writer.pipeline(transaction=True) as pipeline:
            added = [pipeline.xadd(prefix + "t", {"d": str(i)}) for i in range(burst)]
        ids = [str(await identifier) for identifier in added]
        for stream in streams:
            with anyio.fail_after(10):
                received = [await stream.read_event() for _ in range(burst)]
            assert [(event.event, event.id) for event in received] == [(None, i) for i in ids]
        assert broker.statistics().slow_disconnects == 0


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_burst_published_at_once_reaches_every_subscriber_in_order_when_one_leaves(
    make_broker: MakeBroker, leave: str
) -> None:
    # publish_many: one transaction for Redis (one read for its reader), one checkpoint for
    # the memory broker; within the buffers, every subscriber's stream writes it at once.
    clients, burst = 8, 200
    broker = make_broker(subscriber_buffer=256)

    async def events(request: Request) -> Response:
        return topic_response(broker, "t", heartbeat_interval=None)

    app = Starlette(routes=[Route("/t", events)])
    async with broker, open_server(app) as server, AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(open_stream(server, "/t")) for _ in range(clients)
        ]
        await until(lambda: broker.statistics().subscribers == clients)
        leaving = streams.pop()
        ids = await broker.publish_many("t", [str(number) for number in range(burst)])
        left_at = anyio.current_time()
        await getattr(leaving, leave)()
        for stream in streams:
            with anyio.fail_after(10):
                received = [await stream.read_event() for _ in range(burst)]
            assert [(event.id, event.data) for event in received] == [
                (identifier, str(number)) for number, identifier in enumerate(ids)
            ]
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=5.0)
        await until(lambda: broker.statistics().subscribers == clients - 1, within=1.0)
        closed_in = anyio.current_time() - left_at
        assert closed_in < 1.0
        assert end.cleanup_duration < 1.0
        assert broker.statistics().slow_disconnects == 0
        print(f"subscription closed {closed_in * 1000:.1f} ms after the client left")


async def test_a_stalled_subscriber_whose_oldest_events_are_dropped_holds_back_the_reader_once(
    redis: redis_server.RedisServer,
) -> None:
    # The reader waits up to BATCH_ROOM_WAIT (0.25 s) in all for a subscriber with a full
    # buffer to make room before the policy applies to it. Dropping its oldest event leaves
    # its buffer full: were it waited for again, each read would wait, and the reader, every
    # topic's, would read four times a second until the stalled stream ended.
    broker = RedisBroker(
        redis.url,
        key_prefix=f"test:{uuid.uuid4().hex}:",
        subscriber_buffer=4,
        slow_subscriber_policy=SlowSubscriberPolicy.DROP_OLDEST,
    )

    async def events(request: Request) -> Response:
        # The stalled stream is not ended by its send_timeout while the test runs.
        return topic_response(broker, "t", heartbeat_interval=None, send_timeout=60.0)

    app = Starlette(routes=[Route("/t", events)])
    async with (
        broker,
        # Nor is its connection, by the kernel.
        open_server(app, stalled_connection_timeout=60.0) as server,
        AsyncExitStack() as stack,
    ):
        stalled = await stack.enter_async_context(open_stream(server, "/t", receive_buffer=4096))
        stalled.stall()
        reader = await stack.enter_async_context(open_stream(server, "/t"))
        await until(lambda: broker.statistics().subscribers == 2)
        # Large events, until the stalled stream's socket, its stream's buffer and its own
        # buffer are full, and its oldest events are dropped.
        published = 0
        with anyio.fail_after(30):
            while not broker.topic_statistics("t").drops:
                await broker.publish("t", f"{published:06d}" + "x" * 16_000)
                published += 1
                assert (await reader.read_event()).data == f"{published - 1:06d}" + "x" * 16_000
        # Then each event is a read of its own.
        with anyio.fail_after(5):  # 10 s, where each read waited for the stalled one
            for number in range(40):
                identifier = await broker.publish("t", str(number))
                event = await reader.read_event()
                assert (event.id, event.data) == (identifier, str(number))
        assert broker.topic_statistics("t").slow_disconnects == 0


async def test_a_subscriber_that_reads_slowly_holds_back_a_read_once_not_at_each_event(
    redis: redis_server.RedisServer,
) -> None:
    # The reader waits for a subscriber with a full buffer to make room, 0.25 s in all for
    # one read. One that reads slowly makes room now and then: waited for at each event, it
    # set the pace of the whole read (its own, one event every 50 ms), and of every topic's
    # reads after it, and never met the slow-subscriber policy.
    burst = 300
    broker = RedisBroker(redis.url, key_prefix=f"test:{uuid.uuid4().hex}:", subscriber_buffer=16)

    async def events(request: Request) -> Response:
        return topic_response(broker, "t", heartbeat_interval=None)

    app = Starlette(routes=[Route("/t", events)])
    async with (
        broker,
        open_server(app) as server,
        open_stream(server, "/t") as reader,
        broker.subscribe("t") as slow,
    ):
        await until(lambda: broker.statistics().subscribers == 2)

        async def read_slowly() -> None:
            async for _ in slow:
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(read_slowly)
            ids = await broker.publish_many("t", [str(number) for number in range(burst)])
            with anyio.fail_after(5):  # 14 s, where the slow one set the pace
                received = [await reader.read_event() for _ in range(burst)]
            task_group.cancel_scope.cancel()
        assert [(event.id, event.data) for event in received] == [
            (identifier, str(number)) for number, identifier in enumerate(ids)
        ]
        # The slow one reads the rest from the history, at its own pace.
        statistics = broker.topic_statistics("t")
        assert (statistics.catch_ups, statistics.slow_disconnects) == (1, 0)
