"""Redis losing entries under live subscribers, through real hypercorn on asyncio and trio:
redis-server killed and restarted empty (no persistence) while a client follows a topic. The
client must be told, with the reset a client resuming from the same id gets, never skip the
lost events silently.
"""

from __future__ import annotations

import gc
import json

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support import redis_server
from support.brokers import until

from streamkit.broadcast import RESET_EVENT, RedisBroker, topic_response
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_a_live_subscriber_is_sent_a_reset_when_redis_restarts_empty(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The restart shows once the reader's blocked read returns on the new server: after
    # 5 s, or 1 s here, to spare the suite the wait.
    monkeypatch.setattr("streamkit._redis_broker._BLOCK_MILLISECONDS", 1000)
    with redis_server.running(tmp_path_factory.mktemp("redis")) as redis:
        broker = RedisBroker(redis.url)

        async def events(request: Request) -> Response:
            return topic_response(broker, "t", heartbeat_interval=None)

        app = Starlette(routes=[Route("/t", events)])
        async with broker, open_server(app) as server, open_stream(server, "/t") as client:
            await until(lambda: broker.statistics().subscribers == 1)
            ids = [await broker.publish("t", str(i)) for i in range(3)]
            with anyio.fail_after(5):
                assert [(await client.read_event()).id for _ in ids] == ids
            redis.kill()
            redis.start()  # empty: what the client has seen is gone, and whatever followed
            with anyio.fail_after(10):
                reset = await client.read_event()
            assert reset.event == RESET_EVENT
            assert reset.data is not None
            # What a client resuming from ids[-1] is sent: the topic has no history now.
            assert json.loads(reset.data) == {"reason": "expired", "last_event_id": ids[-1]}
            assert reset.id == ""
            after = await broker.publish("t", "after")
            with anyio.fail_after(5):
                event = await client.read_event()
            assert (event.id, event.data) == (after, "after")
            assert broker.statistics().slow_disconnects == 0
    gc.collect()
