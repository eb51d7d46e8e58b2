"""A burst larger than a subscriber's buffer, through real hypercorn on asyncio and trio: the
Redis reader takes up to ``read_batch`` entries at once, and subscribers that keep up must get
them all without being taken for slow ones.
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
from support.brokers import until

from streamkit.broadcast import RedisBroker, topic_response
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
