"""Topics served as event streams through real hypercorn, on asyncio and trio, with each
broker: fan-out, resume, resets, slow clients, clients that leave, and a Redis restart.

Bounds are generous (a loaded 2-core machine); what they guard is measured in bench/.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support import redis_server
from support.brokers import AnyBroker, MakeBroker, until

from streamkit import EndReason, ServerSentEvent
from streamkit.broadcast import MemoryBroker, RedisBroker, topic_response
from streamkit.testing import (
    LiveServer,
    StreamClient,
    open_leak_check,
    open_server,
    open_stream,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def topic_app(broker: AnyBroker, **options: Any) -> Starlette:
    async def events(request: Request) -> Response:
        return topic_response(broker, request.path_params["topic"], **options)

    return Starlette(routes=[Route("/topics/{topic}", events)])


@asynccontextmanager
async def serving(broker: AnyBroker, **options: Any) -> AsyncIterator[LiveServer]:
    async with broker, open_server(topic_app(broker, **options)) as server:
        yield server


async def read_events(client: StreamClient, count: int, *, within: float = 5.0) -> list[Any]:
    with anyio.fail_after(within):
        return [await client.read_event() for _ in range(count)]


def reset_of(event: ServerSentEvent) -> tuple[str | None, str, str | None]:
    assert event.data is not None
    return event.event, json.loads(event.data)["reason"], event.id


async def test_fan_out_to_many_subscribers(make_broker: MakeBroker) -> None:
    subscribers, events = 50, 20
    broker = make_broker()
    async with serving(broker) as server, AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(open_stream(server, "/topics/news"))
            for _ in range(subscribers)
        ]
        await until(lambda: broker.statistics().subscribers == subscribers)
        ids = [await broker.publish("news", f"story {i}") for i in range(events)]
        for client in clients:
            received = await read_events(client, events)
            assert [event.data for event in received] == [f"story {i}" for i in range(events)]
            assert [event.id for event in received] == ids
        for client in clients:
            await client.close()
        for _ in range(subscribers):
            await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=5.0)
        # Each subscription is closed before its stream's end is reported.
        assert broker.statistics().subscribers == 0


async def test_a_reconnecting_client_resumes_after_its_last_event_id(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker()
    async with serving(broker) as server:
        ids = [await broker.publish("t", str(i)) for i in range(5)]
        headers = {"last-event-id": ids[1]}
        async with open_stream(server, "/topics/t", headers=headers) as client:
            replayed = await read_events(client, 3)
            assert [(e.data, e.id) for e in replayed] == [(str(i), ids[i]) for i in (2, 3, 4)]
            live = await broker.publish("t", "5")
            assert [(e.data, e.id) for e in await read_events(client, 1)] == [("5", live)]


async def test_a_trimmed_history_is_answered_with_a_reset(make_broker: MakeBroker) -> None:
    broker = make_broker(history_size=10)
    async with serving(broker) as server:
        # Redis trims in whole blocks of 100 entries (MAXLEN ~): it takes a few hundred.
        ids = [await broker.publish("t", str(i)) for i in range(300)]
        async with open_stream(server, "/topics/t", headers={"last-event-id": ids[0]}) as client:
            assert client.status == 200
            [reset] = await read_events(client, 1)
            assert reset_of(reset) == ("reset", "trimmed", ids[-1])
            live = await broker.publish("t", "300")
            assert [(e.data, e.id) for e in await read_events(client, 1)] == [("300", live)]


@pytest.mark.parametrize("last_event_id", ["garbage", "1-2-3", f"{2**64}-1"])
async def test_an_invalid_last_event_id_is_a_reset_not_an_error(
    make_broker: MakeBroker, last_event_id: str
) -> None:
    broker = make_broker()
    async with serving(broker) as server:
        latest = await broker.publish("t", "0")
        headers = {"last-event-id": last_event_id}
        async with open_stream(server, "/topics/t", headers=headers) as client:
            assert client.status == 200
            [reset] = await read_events(client, 1)
            assert reset_of(reset) == ("reset", "invalid", latest)


def numbered(index: int) -> str:
    return f"{index:06d}" + "x" * 16_000  # big events, so that a stalled socket fills soon


async def publish_until(broker: AnyBroker, condition: Callable[[], bool]) -> int:
    """Publish numbered events to ``t`` until *condition* holds; return how many it took."""
    published = 0
    with anyio.fail_after(20):
        while not condition():
            await broker.publish("t", numbered(published))
            published += 1
            await anyio.lowlevel.checkpoint()  # let the Redis reader deliver as it goes
    return published


async def test_a_resume_reads_the_history_past_entries_that_are_no_events(
    redis: redis_server.RedisServer,
) -> None:
    # Something other than a broker wrote entries to the topic's stream that can be no event
    # (a name holding a line break): each is skipped, and what follows it in the history is
    # still sent, however many pages of history it takes (100 entries a page).
    from coredis import Redis

    broker = RedisBroker(redis.url, key_prefix=f"test:{uuid.uuid4().hex}:")
    key = broker.key_prefix + "t"
    async with serving(broker) as server:
        first = await broker.publish("t", "first")
        async with Redis.from_url(redis.url, decode_responses=True) as writer:
            await writer.xadd(key, {"d": "x", "e": "a\nb"})
            ids = await broker.publish_many("t", [str(i) for i in range(120)])
            for _ in range(150):  # a page and a half of them
                await writer.xadd(key, {"d": "x", "e": "a\nb"})
            ids += await broker.publish_many("t", [str(i) for i in range(120, 150)])
        headers = {"last-event-id": first}
        async with open_stream(server, "/topics/t", headers=headers) as client:
            replayed = await read_events(client, 150)
            assert [(e.data, e.id) for e in replayed] == [(str(i), ids[i]) for i in range(150)]
            live = await broker.publish("t", "live")
            assert [(e.data, e.id) for e in await read_events(client, 1)] == [("live", live)]


async def test_a_slow_subscriber_is_bounded_then_caught_up_in_order(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(history_size=20_000, subscriber_buffer=8)
    async with serving(broker, buffer_size=4, send_timeout=30.0) as server:
        async with open_stream(server, "/topics/t", receive_buffer=4096) as client:
            await until(lambda: broker.statistics().subscribers == 1)
            # The client does not read: the socket, then the stream's buffer, then the
            # subscriber's buffer fill up, and the subscriber falls back to the history.
            published = await publish_until(broker, lambda: broker.statistics().catching_up != 0)
            for _ in range(300):
                await broker.publish("t", numbered(published))
                published += 1
                assert broker.statistics().buffered <= 8
            started = anyio.current_time()
            received = await read_events(client, published, within=20)
            caught_up_in = anyio.current_time() - started
            assert [e.data for e in received] == [numbered(i) for i in range(published)]
            await until(lambda: broker.statistics().catching_up == 0)
            live = await broker.publish("t", "live")
            assert [(e.data, e.id) for e in await read_events(client, 1)] == [("live", live)]
            print(f"{published} events, {caught_up_in:.3f} s to read them back")


async def test_beyond_the_catching_up_cap_a_slow_client_is_told_to_retry(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(subscriber_buffer=8, max_catching_up=0)
    async with serving(broker, buffer_size=4, send_timeout=30.0) as server:
        async with open_stream(server, "/topics/t", receive_buffer=4096) as client:
            await until(lambda: broker.statistics().subscribers == 1)
            await publish_until(broker, lambda: broker.statistics().slow_disconnects != 0)
            with anyio.fail_after(10):
                received = [event async for event in client.events()]
            farewell = received.pop()
            assert (farewell.event, farewell.retry) == ("slow-subscriber", 5000)
            # What it did get came in order, without a gap; the rest it resumes later.
            assert [e.data for e in received] == [numbered(i) for i in range(len(received))]
            assert client.complete
        # The farewell was written, and the end is counted as the client being too slow.
        end = await server.wait_ended(EndReason.SEND_TIMEOUT)
        assert end.items_sent == len(received) + 1
        assert broker.statistics().subscribers == 0


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_client_that_leaves_closes_its_subscription(
    make_broker: MakeBroker, leave: str
) -> None:
    broker = make_broker()
    async with serving(broker) as server:
        async with open_stream(server, "/topics/t") as client:
            await until(lambda: broker.statistics().subscribers == 1)
            await broker.publish("t", "0")
            await read_events(client, 1)
            left_at = anyio.current_time()
            await getattr(client, leave)()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=5.0)
        closed_in = anyio.current_time() - left_at
        assert broker.statistics().subscribers == 0
        assert closed_in < 1.0
        assert end.cleanup_duration < 1.0
        print(f"subscription closed {closed_in * 1000:.1f} ms after the client left")


async def test_a_client_of_a_closed_broker_is_sent_an_error_not_kept_waiting(
    make_broker: MakeBroker,
) -> None:
    # The broker's block has exited (it was closed before the server, say): no event will
    # ever be published to it, so a subscription to it is refused, as a publish is, rather
    # than holding the client for ever with heartbeats.
    broker = make_broker()
    async with broker:
        await broker.publish("t", "before")
    async with open_server(topic_app(broker, heartbeat_interval=None)) as server:
        async with open_stream(server, "/topics/t") as client:
            with anyio.fail_after(5):
                event = await client.read_event()
                assert event.event == "error"
                assert await client.read_all() == b""
        await server.wait_ended(EndReason.ERROR, within=5.0)
    assert broker.statistics().subscribers == 0
    with pytest.raises(RuntimeError, match=r"closed|enter"):
        async with broker.subscribe("t"):
            pass


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_burst_published_without_yielding_reaches_the_others_when_one_leaves_in_it(
    leave: str,
) -> None:
    # publish_nowait() puts the whole burst into every stream's buffer before any writer
    # runs; the one that leaves with it unread has its subscription closed, the others get
    # every event in order.
    broker = MemoryBroker()
    async with serving(broker) as server, AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(open_stream(server, "/topics/t")) for _ in range(5)
        ]
        await until(lambda: broker.statistics().subscribers == 5)
        leaving = clients.pop()
        ids = [broker.publish_nowait("t", numbered(i)) for i in range(16)]
        left_at = anyio.current_time()
        await getattr(leaving, leave)()
        for client in clients:
            received = await read_events(client, 16)
            assert [(e.id, e.data) for e in received] == [(ids[i], numbered(i)) for i in range(16)]
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=5.0)
        closed_in = anyio.current_time() - left_at
        await until(lambda: broker.statistics().subscribers == 4, within=1.0)
        assert closed_in < 1.0
        assert end.cleanup_duration < 1.0
        print(f"subscription closed {closed_in * 1000:.1f} ms after the client left")


async def test_shutdown_tells_subscribers_to_come_back(make_broker: MakeBroker) -> None:
    broker = make_broker()
    async with serving(broker) as server:
        async with open_stream(server, "/topics/t") as client:
            await until(lambda: broker.statistics().subscribers == 1)
            took = await server.shutdown(within=10.0)
            with anyio.fail_after(5):
                received = [event async for event in client.events()]
            assert [(e.event, e.retry) for e in received] == [("shutdown", 1000)]
        assert broker.statistics().subscribers == 0
        assert took < 5.0


async def redis_clients(url: str) -> int:
    """The connections the Redis server at *url* has open, but the one asking."""
    from coredis import Redis

    async with Redis.from_url(url, decode_responses=True) as redis:
        return len(await redis.client_list()) - 1


async def test_shutdown_with_subscribers_on_many_topics_leaves_nothing_open(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker()
    url = broker.url if isinstance(broker, RedisBroker) else None
    before = None if url is None else await redis_clients(url)
    async with open_leak_check(within=5.0):
        async with serving(broker) as server, AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(open_stream(server, f"/topics/t{index % 3}"))
                for index in range(6)
            ]
            await until(lambda: broker.statistics().subscribers == 6)
            ids = [await broker.publish(f"t{index}", "0") for index in range(3)]
            for index, client in enumerate(clients):
                [event] = await read_events(client, 1)
                assert event.id == ids[index % 3]
            await server.shutdown(within=10.0)
            for client in clients:
                with anyio.fail_after(5):
                    received = [event async for event in client.events()]
                assert [(e.event, e.retry) for e in received] == [("shutdown", 1000)]
            assert broker.statistics().subscribers == 0
    if url is not None:
        # The broker's connections closed with it: as many as before it was entered.
        assert await redis_clients(url) == before


async def test_the_redis_reader_survives_a_restart_without_losing_events(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with redis_server.running(tmp_path_factory.mktemp("redis"), persistent=True) as redis:
        broker = RedisBroker(redis.url)
        async with serving(broker, heartbeat_interval=0.2) as server:
            async with open_stream(server, "/topics/t") as client:
                await until(lambda: broker.statistics().subscribers == 1)
                before = [await broker.publish("t", str(i)) for i in range(3)]
                assert [e.id for e in await read_events(client, 3)] == before
                redis.kill()
                # The stream lives on through the outage: heartbeats keep coming.
                with anyio.fail_after(5):
                    for _ in range(2):
                        heartbeat = await client.receive_chunk()
                        assert heartbeat is not None
                        assert heartbeat.startswith(b":")
                redis.start()
                after = [await broker.publish("t", str(i)) for i in range(3, 6)]
                received = await read_events(client, 3, within=10)
                assert [(e.data, e.id) for e in received] == list(
                    zip(["3", "4", "5"], after, strict=True)
                )
                assert server.streams.statistics().active == 1


@pytest.mark.parametrize("resuming", [False, True], ids=["new", "resuming"])
async def test_a_subscriber_arriving_while_redis_is_down_is_sent_an_error_and_let_go(
    tmp_path_factory: pytest.TempPathFactory, resuming: bool
) -> None:
    # What docs/broadcast.md promises: the stream ends at once with the error event, so the
    # client reconnects after its retry; it is not held open on a subscription that cannot
    # begin, and the server goes on serving.
    with redis_server.running(tmp_path_factory.mktemp("redis"), persistent=True) as redis:
        broker = RedisBroker(redis.url)
        async with serving(broker, heartbeat_interval=0.2) as server:
            first = await broker.publish("t", "before")
            redis.kill()
            headers = {"Last-Event-ID": first} if resuming else {}
            async with open_stream(server, "/topics/t", headers=headers) as client:
                assert client.status == 200
                received = await read_events(client, 1)
                assert [(e.event, e.data) for e in received] == [("error", "")]
                with anyio.fail_after(5):
                    assert await client.read_all() == b""
            await until(lambda: server.streams.statistics().active == 0)
            assert server.streams.statistics().ended[EndReason.ERROR] == 1
