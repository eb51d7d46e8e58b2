"""Clients that stop reading among subscribers that keep up, through real hypercorn, on asyncio
and trio, with each broker and each slow-subscriber policy: the policy acts on the stalled
ones, what waits for them stays within their buffers, their streams end after
``send_timeout``, and the others get every event in order meanwhile.

Bounds are generous (a loaded 2-core machine); the costs are measured in bench/broker.py.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import anyio.lowlevel
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.brokers import AnyBroker, MakeBroker, until

from streamkit import EndReason, StreamEnd
from streamkit.broadcast import SlowSubscriberPolicy, TopicStatistics, topic_response
from streamkit.testing import StreamClient, open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

READERS, STALLED = 8, 2
SUBSCRIBER_BUFFER, STREAM_BUFFER = 8, 4
SEND_TIMEOUT = 1.0
#: The kernel's bound on a stalled connection, past the send timeout: the stream ends first.
STALLED_CONNECTION_TIMEOUT = SEND_TIMEOUT + 3.0
END = "end"


def numbered(index: int) -> str:
    return f"{index:06d}" + "x" * 16_000  # big events, so that a stalled socket fills soon


def acted(policy: SlowSubscriberPolicy, statistics: TopicStatistics) -> bool:
    """Whether *policy* has acted on every stalled subscriber (or, for drop-oldest, at all:
    it counts drops, not subscribers)."""
    if policy is SlowSubscriberPolicy.CATCH_UP:
        return statistics.catch_ups >= STALLED
    if policy is SlowSubscriberPolicy.DROP_OLDEST:
        return statistics.drops > 0
    return statistics.slow_disconnects == STALLED


async def read_until_end(client: StreamClient, into: list[str]) -> None:
    while not into or into[-1] != END:
        event = await client.read_event()
        assert event.data is not None
        into.append(event.data)


@pytest.mark.parametrize("policy", list(SlowSubscriberPolicy), ids=lambda p: p.value)
async def test_stalled_subscribers_are_bounded_and_ended_while_the_others_keep_up(
    make_broker: MakeBroker, policy: SlowSubscriberPolicy
) -> None:
    broker: AnyBroker = make_broker(
        history_size=20_000, subscriber_buffer=SUBSCRIBER_BUFFER, slow_subscriber_policy=policy
    )

    async def events(request: Request) -> Response:
        return topic_response(broker, "t", buffer_size=STREAM_BUFFER, send_timeout=SEND_TIMEOUT)

    app = Starlette(routes=[Route("/t", events)])
    async with (
        broker,
        open_server(app, stalled_connection_timeout=STALLED_CONNECTION_TIMEOUT) as server,
        AsyncExitStack() as stack,
    ):
        for _ in range(STALLED):  # they never read
            await stack.enter_async_context(open_stream(server, "/t", receive_buffer=4096))
        readers = [
            await stack.enter_async_context(open_stream(server, "/t")) for _ in range(READERS)
        ]
        await until(lambda: broker.statistics().subscribers == READERS + STALLED)
        received: list[list[str]] = [[] for _ in readers]
        published = 0

        async def publish_next() -> None:
            # In step with the readers, so that only the stalled ones ever fall behind.
            nonlocal published
            await broker.publish("t", numbered(published))
            published += 1
            await until(lambda: all(len(into) == published for into in received), within=10)
            assert broker.statistics().buffered <= SUBSCRIBER_BUFFER * STALLED

        with anyio.fail_after(SEND_TIMEOUT + 30):
            async with anyio.create_task_group() as task_group:
                for client, into in zip(readers, received, strict=True):
                    task_group.start_soon(read_until_end, client, into)
                # Until the policy acted on the stalled ones, then until their streams ended.
                while not acted(policy, broker.topic_statistics("t")):
                    await publish_next()
                acted_at = anyio.current_time()
                ends: list[StreamEnd] = []
                while len(ends) < STALLED:
                    with anyio.move_on_after(0.01):
                        ends.append(await server.wait_end(within=SEND_TIMEOUT + 10))
                    await publish_next()
                ended_in = anyio.current_time() - acted_at
                await broker.publish("t", END)
        assert [end.reason for end in ends] == [EndReason.SEND_TIMEOUT] * STALLED
        # The writes blocked before the policy acted, so the streams end within one timeout.
        assert ended_in < SEND_TIMEOUT + 2.0
        expected = [numbered(i) for i in range(published)] + [END]
        for into in received:
            assert into == expected
        await until(lambda: broker.statistics().subscribers == READERS)
        print(f"{policy.value}: {published} events, stalled streams ended {ended_in:.2f} s later")
