"""The runtime on its own contract: a minimal body (not a Starlette response) delivered over a
:class:`~streamkit.testing.FakeConnection`, on both backends. Fast; the same behaviours through
real servers are in ``tests/e2e/test_runtime.py``."""

from __future__ import annotations

from collections.abc import AsyncIterable
from functools import partial
from typing import Any

import anyio
import pytest
from starlette.types import Message
from support.bodies import Body

from streamkit import EndReason, StreamOptions, StreamSender
from streamkit._runtime import StreamBody, deliver
from streamkit.testing import FakeConnection

pytestmark = pytest.mark.anyio


def _implements_the_contract(body: Body) -> StreamBody[str]:
    return body  # checked by mypy: Body is a StreamBody


async def test_a_producer_that_finishes_completes_the_body() -> None:
    async def produce(send: StreamSender[str]) -> None:
        for word in ("a", "b", "c"):
            await send(word)

    body = Body(produce)
    connection = FakeConnection()
    await connection.run(partial(deliver, _implements_the_contract(body)))
    assert connection.body == b"a|b|c|"
    assert connection.complete
    assert body.end.reason is EndReason.COMPLETED
    assert body.end.items_sent == 3


async def test_a_client_that_leaves_cancels_the_producer_and_its_cleanup_completes() -> None:
    cleaned = anyio.Event()

    async def close_upstream() -> None:
        await anyio.sleep(0.01)  # awaited cleanup: it must not be cancelled
        cleaned.set()

    async def produce(send: StreamSender[str]) -> None:
        send.push_async_callback(close_upstream)
        await send("first")
        await anyio.sleep_forever()

    body = Body(produce)
    connection = FakeConnection(disconnect_after_body=1)
    with anyio.fail_after(2):
        await connection.run(partial(deliver, body))
    assert cleaned.is_set()
    assert body.end.reason is EndReason.CLIENT_DISCONNECTED
    assert body.end.cleanup_duration < 1.0
    assert not connection.complete


async def test_an_async_iterable_is_closed_when_the_client_leaves() -> None:
    closed = False

    async def words() -> AsyncIterable[str]:
        nonlocal closed
        try:
            while True:
                yield "w"
                await anyio.sleep(0.001)
        finally:
            closed = True

    body = Body(words())
    connection = FakeConnection(disconnect_after_body=2)
    await connection.run(partial(deliver, body))
    assert closed
    assert body.end.reason is EndReason.CLIENT_DISCONNECTED


async def test_a_quiet_stream_gets_heartbeats() -> None:
    async def produce(send: StreamSender[str]) -> None:
        await anyio.sleep_forever()

    body = Body(produce, StreamOptions(heartbeat_interval=0.01))
    connection = FakeConnection(disconnect_after_body=3)
    await connection.run(partial(deliver, body))
    assert connection.body_chunks[:3] == [b".", b".", b"."]


async def test_max_duration_ends_with_the_deadline_frame() -> None:
    async def produce(send: StreamSender[str]) -> None:
        await send("x")
        await anyio.sleep_forever()

    body = Body(produce, StreamOptions(max_duration=0.05))
    connection = FakeConnection()
    await connection.run(partial(deliver, body))
    assert connection.body == b"x|<deadline>"
    assert connection.complete
    assert body.end.reason is EndReason.DEADLINE


async def test_a_producer_that_raises_ends_with_the_error_frame() -> None:
    async def produce(send: StreamSender[str]) -> None:
        await send("x")
        raise RuntimeError("upstream failed")

    body = Body(produce)
    connection = FakeConnection()
    await connection.run(partial(deliver, body))
    assert connection.body == b"x|<error>"
    assert body.end.reason is EndReason.ERROR
    assert isinstance(body.end.exception, RuntimeError)


async def test_an_item_the_body_cannot_encode_raises_at_send() -> None:
    raised: list[BaseException] = []

    async def produce(send: StreamSender[Any]) -> None:
        try:
            await send(42)
        except TypeError as exc:
            raised.append(exc)
            raise

    body = Body(produce)
    connection = FakeConnection()
    await connection.run(partial(deliver, body))
    assert "got 42" in str(raised[0])
    assert body.end.reason is EndReason.ERROR


async def test_the_idle_fallback_is_sent_then_the_stream_ends_when_idle() -> None:
    async def produce(send: StreamSender[str]) -> None:
        await send("last")
        await anyio.sleep_forever()

    options = StreamOptions(idle_timeout=0.02, end_when_idle=True)
    body = Body(produce, options)
    connection = FakeConnection()
    await connection.run(partial(deliver, body))
    assert connection.body == b"last|stale:last|<deadline>"
    assert body.end.reason is EndReason.DEADLINE


class StalledConnection(FakeConnection):
    """A client that stops reading after the response starts: every body write blocks."""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            await anyio.sleep_forever()
        await super().send(message)


async def test_a_client_that_stops_reading_is_given_up_after_send_timeout() -> None:
    async def produce(send: StreamSender[str]) -> None:
        while True:
            await send("x" * 100)

    body = Body(produce, StreamOptions(send_timeout=0.05, buffer_size=2))
    connection = StalledConnection()
    started = anyio.current_time()
    await connection.run(partial(deliver, body))
    assert body.end.reason is EndReason.SEND_TIMEOUT
    assert anyio.current_time() - started < 1.0
