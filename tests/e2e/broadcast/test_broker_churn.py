"""Clients that subscribe and leave at once, a thousand times, through real hypercorn, on
asyncio and trio, with each broker: some reset the connection as soon as the response head
arrives, some before it does. Afterwards the broker holds nothing of them: its statistics,
its per-topic state, its tasks, its file descriptors and its Redis connections are back where
they were.
"""

from __future__ import annotations

import socket
import struct

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.brokers import AnyBroker, MakeBroker, until

from streamkit._loop import TIMERS_TASK
from streamkit.broadcast import RedisBroker, topic_response
from streamkit.testing import LiveServer, ResourceSnapshot, open_server, open_stream
from streamkit.testing._client import connect

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CYCLES = 1000
TOPICS = 50  # each cycle's topic is one of these, so topics come and go as subscribers do


def topic_app(broker: AnyBroker) -> Starlette:
    async def events(request: Request) -> Response:
        return topic_response(broker, request.path_params["topic"], heartbeat_interval=None)

    return Starlette(routes=[Route("/topics/{topic}", events)])


def held(broker: AnyBroker) -> dict[str, int]:
    """What the broker holds per topic and per subscriber, counted."""
    counts = {
        "topics": broker.statistics().topics,
        "subscribers": broker.statistics().subscribers,
        "catching_up": broker.statistics().catching_up,
        "buffered": broker.statistics().buffered,
        "subscriber groups": len(broker._subscribers),
        "topic counts": len(broker._counts),
        "topics being watched": len(broker._watching),
    }
    if isinstance(broker, RedisBroker):
        counts["reader positions"] = len(broker._positions)
    return counts


def running_tasks() -> int:
    # But the trio run's timer task, which the first stream starts.
    return sum(task.name != TIMERS_TASK for task in anyio.get_running_tasks())


async def redis_clients(broker: AnyBroker) -> int | None:
    """The connections the Redis server has open, this test's broker's among them."""
    if not isinstance(broker, RedisBroker):
        return None
    from coredis import Redis

    async with Redis.from_url(broker.url, decode_responses=True) as redis:
        return len(await redis.client_list()) - 1  # but this one


async def leave_before_the_head(server: LiveServer, path: str) -> None:
    stream = await connect(server.host, server.port)
    try:
        request = f"GET {path} HTTP/1.1\r\nhost: {server.host}:{server.port}\r\n\r\n"
        await stream.send(request.encode())
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        await stream.aclose()


async def test_a_thousand_clients_that_leave_at_once_leave_nothing_behind(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker()
    async with broker, open_server(topic_app(broker)) as server:
        # Once, so that what is made on first use (the reader's connection) is there before.
        async with open_stream(server, "/topics/warm") as client:
            await until(lambda: broker.statistics().subscribers == 1)
            await client.reset()
        await until(lambda: server.streams.statistics().active == 0)
        await until(lambda: held(broker)["subscribers"] == 0)
        baseline = held(broker)
        tasks = running_tasks()
        descriptors = len(ResourceSnapshot.take(tasks=False).file_descriptors)
        connections = await redis_clients(broker)

        with anyio.fail_after(120):
            for cycle in range(CYCLES):
                path = f"/topics/t{cycle % TOPICS}"
                if cycle % 4 == 3:
                    await leave_before_the_head(server, path)
                    continue
                async with open_stream(server, path) as client:
                    assert client.status == 200
                    if cycle % 4 == 1:
                        await client.close()
                    else:
                        await client.reset()
            await until(lambda: server.streams.statistics().active == 0, within=10)
            await until(lambda: held(broker) == baseline, within=10)
            await until(lambda: running_tasks() <= tasks, within=10)
            await until(
                lambda: len(ResourceSnapshot.take(tasks=False).file_descriptors) <= descriptors,
                within=10,
            )
            if connections is not None:
                # Fewer is fine: the reader, with no topic left to read, holds no connection.
                # Polled: Redis signals no change of its client count.
                while (await redis_clients(broker) or 0) > connections:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
        assert broker.statistics().published == 0
        if isinstance(broker, RedisBroker):
            from coredis import Redis

            async with Redis.from_url(broker.url, decode_responses=True) as redis:
                # Subscribing makes no key: a topic taken from a URL costs Redis nothing.
                assert await redis.keys(broker.key_prefix + "*") == set()
        # The broker still serves: a subscriber gets the next event.
        async with open_stream(server, "/topics/t0") as client:
            await until(lambda: broker.statistics().subscribers == 1)
            published = await broker.publish("t0", "after")
            with anyio.fail_after(5):
                event = await client.read_event()
            assert (event.id, event.data) == (published, "after")


async def test_topics_subscribed_one_after_another_each_get_their_live_events(
    make_broker: MakeBroker,
) -> None:
    # More than a connection pool holds (coredis's: 64): each topic's first subscriber has
    # the Redis reader read again with it; that must cost the reader no connection for good.
    broker = make_broker()
    async with broker, open_server(topic_app(broker)) as server:
        for index in range(100):
            topic = f"room-{index}"
            async with open_stream(server, f"/topics/{topic}") as client:
                await until(lambda: broker.statistics().subscribers == 1)
                # Blocked in its read again before the next topic comes.
                await anyio.sleep(0.02)
                published = await broker.publish(topic, str(index))
                with anyio.fail_after(5):
                    event = await client.read_event()
                assert (event.id, event.data) == (published, str(index))
                await client.close()
            await until(lambda: broker.statistics().subscribers == 0)
