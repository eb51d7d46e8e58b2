"""The runtime on its own contract: a minimal body (not a Starlette response) delivered over a
:class:`~streamkit.testing.FakeConnection`, on both backends. Fast; the same behaviours through
real servers are in ``tests/e2e/test_runtime.py``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import time
import types
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from functools import partial
from typing import Any

import anyio
import pytest
import sniffio
import trio
from starlette.types import Message
from support.bodies import Body
from support.stubborn import fan_out_refusing

import streamkit._runtime
from streamkit import EndReason, StreamOptions, StreamSender
from streamkit._registry import StreamRegistry, using_registry
from streamkit._runtime import LOOP_HELD, WRITES_UNASKED, StreamBody, deliver
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


async def test_a_head_request_is_answered_with_headers_and_is_no_stream() -> None:
    # The producer never runs; an iterable handed over is still closed. Nothing is tracked,
    # counted, logged or handed to on_end: a HEAD is not a stream that completed.
    closed: list[str] = []

    async def items() -> AsyncGenerator[str, None]:
        try:
            yield "never"
        finally:
            closed.append("closed")

    iterator = items()
    await iterator.asend(None)  # started: its finally has something to run
    body = Body(iterator)
    connection = FakeConnection(method="HEAD")
    streams = StreamRegistry()
    with using_registry(streams):
        await connection.run(partial(deliver, body))
    assert (connection.status, connection.body, connection.complete) == (200, b"", True)
    assert closed == ["closed"]
    assert body.ends == []
    assert streams.statistics().active == 0
    assert sum(streams.statistics().ended.values()) == 0
    assert streams.recent_ends() == ()


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


async def test_once_the_client_left_nothing_more_is_written_not_even_what_cleanup_sends() -> None:
    async def goodbye(send: StreamSender[str]) -> None:
        await send("sent from the cleanup, after the client left")

    async def produce(send: StreamSender[str]) -> None:
        send.push_async_callback(goodbye, send)
        await send("first")
        await anyio.sleep_forever()

    body = Body(produce)
    connection = FakeConnection(disconnect_after_body=1)
    await connection.run(partial(deliver, body), within=2)
    assert body.end.reason is EndReason.CLIENT_DISCONNECTED
    assert connection.refused == []  # no write was tried, the end of the body neither
    assert not connection.complete


class ClosingConnection(FakeConnection):
    """A connection that hypercorn's trio worker is shutting as the first body write is made:
    that write raises ``BusyResourceError``, outside hypercorn's send lock."""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            raise trio.BusyResourceError("another task is currently sending data")
        await super().send(message)


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize("pause", [False, True], ids=["writer", "producer"])
async def test_a_write_that_collides_with_the_servers_close_is_the_client_gone(
    pause: bool,
) -> None:
    # Written by the stream's writer (a producer that never yields queues its item), or by
    # the producer itself (one that awaits between items writes when the writer is idle).
    async def produce(send: StreamSender[str]) -> None:
        if pause:
            await anyio.sleep(0.01)
        await send("first")
        await anyio.sleep_forever()

    body = Body(produce)
    connection = ClosingConnection()
    await connection.run(partial(deliver, body), within=2)
    assert body.end.reason is EndReason.CLIENT_DISCONNECTED
    assert body.end.exception is None
    assert body.end.items_sent == 0


async def test_frames_the_writer_was_woken_for_are_not_written_once_the_client_is_gone() -> None:
    # A producer that never yields queues its items as the first one is written: the writer
    # is woken for them before the disconnect is heard, and must not write them after (on
    # asyncio, a write that does not block never yields, so its cancellation could not stop
    # it there).
    body = Body(_as_fast_as_taken)
    connection = FakeConnection(disconnect_after_body=1)
    await connection.run(partial(deliver, body), within=2)
    assert body.end.reason is EndReason.CLIENT_DISCONNECTED
    assert connection.refused == []  # no write was tried once the client was heard leaving


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


class ReportingList(list[Any]):
    """A list of end reports that sets *event* when one is added."""

    def __init__(self, event: anyio.Event) -> None:
        super().__init__()
        self._event = event

    def append(self, end: Any) -> None:
        super().append(end)
        self._event.set()


class SlowConnection(FakeConnection):
    """A client that takes each body write a tenth of a second after it is made."""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            await anyio.sleep(0.1)
        await super().send(message)


async def test_a_producer_that_returned_before_max_duration_completes_its_last_writes() -> None:
    # max_duration bounds the producer: its items still being written when it passes are
    # written, and the stream completes, with no deadline frame after them.
    async def produce(send: StreamSender[str]) -> None:
        for item in "abc":
            await send(item)

    body = Body(produce, StreamOptions(max_duration=0.15))
    connection = SlowConnection()
    await connection.run(partial(deliver, body))
    assert body.end.reason is EndReason.COMPLETED
    assert body.end.duration > 0.15
    assert connection.body == b"a|b|c|"
    assert connection.complete


async def test_a_producer_refusing_cancellation_at_max_duration_is_abandoned() -> None:
    refused = anyio.Event()
    release = anyio.Event()

    async def produce(send: StreamSender[str]) -> None:
        await send("x")
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            refused.set()
            with anyio.CancelScope(shield=True):
                await release.wait()

    ended = anyio.Event()
    body = Body(produce, StreamOptions(max_duration=0.05, cleanup_timeout=0.05))
    body.ends = ReportingList(ended)
    connection = FakeConnection()
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(partial(connection.run, partial(deliver, body)))
        try:
            with anyio.fail_after(2):
                await ended.wait()  # reported with the producer still refusing
            assert refused.is_set()
        finally:
            release.set()
    assert body.end.reason is EndReason.DEADLINE
    assert body.end.duration >= 0.1
    assert connection.body == b"x|<deadline>"
    assert connection.complete


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


async def test_a_streams_end_is_logged_in_one_shape_whatever_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The error's line left out the bytes, which a parser of the others' lines reads.
    async def produce(send: StreamSender[str], *, fail: bool) -> None:
        await send("x")
        if fail:
            raise RuntimeError("upstream failed")

    shape = r"stream / ended: (completed|error) after \d+\.\d{3} s, 1 items, \d+ bytes"
    with caplog.at_level(logging.INFO, logger="streamkit"):
        for fail in (True, False):
            await FakeConnection().run(partial(deliver, Body(partial(produce, fail=fail))))
    lines = [r.getMessage() for r in caplog.records if " ended: " in r.getMessage()]
    assert len(lines) == 2
    assert all(re.fullmatch(shape, line) for line in lines), lines


@pytest.mark.parametrize("reason", [EndReason.ERROR, EndReason.DEADLINE])
async def test_a_closing_frame_that_fails_is_left_out_and_the_body_still_ends(
    reason: EndReason, caplog: pytest.LogCaptureFixture
) -> None:
    # The exception was raised out of the writer into the server, and the body cut.
    class FailingFarewell(Body):
        def closing_frame(self, reason: EndReason) -> bytes | None:
            raise RuntimeError("the encoder broke")

    async def produce(send: StreamSender[str]) -> None:
        await send("x")
        if reason is EndReason.ERROR:
            raise KeyError("the producer failed")
        await anyio.sleep_forever()

    body = FailingFarewell(produce, StreamOptions(max_duration=0.05))
    connection = FakeConnection()
    with caplog.at_level(logging.ERROR, logger="streamkit"):
        await connection.run(partial(deliver, body))
    assert connection.body == b"x|"
    assert connection.complete
    assert body.end.reason is reason
    assert f"its {reason.value} farewell could not be encoded" in caplog.text
    assert "the encoder broke" in caplog.text


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


async def test_the_idle_fallback_is_made_in_the_requests_context() -> None:
    # A middleware's context variable (a request id for the logs, say) is seen by what the
    # stream does for the request, its timers' work included, on both backends.
    request_id: ContextVar[str] = ContextVar("request_id", default="none")

    class RequestBody(Body):
        def idle_frame(self, last: str | None) -> bytes | None:
            return f"stale for {request_id.get()}|".encode()

    async def produce(send: StreamSender[str]) -> None:
        await send("last")
        await anyio.sleep_forever()

    body = RequestBody(produce, StreamOptions(idle_timeout=0.02, end_when_idle=True))
    request_id.set("request 7")
    connection = FakeConnection()
    await connection.run(partial(deliver, body))
    assert connection.body == b"last|stale for request 7|<deadline>"
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


@pytest.mark.parametrize(
    ("http_version", "aborted"),
    [("1.1", True), ("1.0", True), ("1.9", True), ("2.0", True), ("2", False), ("3", False)],
)
async def test_a_given_up_write_aborts_the_connection_unless_it_carries_other_streams(
    http_version: str, aborted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HTTP/2 and HTTP/3 connections carry other streams, which may be reading; any other
    # version is one request at a time over its connection, whatever the request line says
    # (h11 takes "HTTP/1.9" and "HTTP/2.0" alike, and the scope says what the client wrote):
    # a client must not keep a stalled connection by claiming a version.
    aborts: list[tuple[Any, Any]] = []
    monkeypatch.setattr(
        streamkit._runtime, "abort_connection_soon", lambda *address: aborts.append(address)
    )

    async def produce(send: StreamSender[str]) -> None:
        while True:
            await send("x" * 100)

    body = Body(produce, StreamOptions(send_timeout=0.05, buffer_size=2))
    connection = StalledConnection()
    connection.scope["http_version"] = http_version
    await connection.run(partial(deliver, body))
    assert body.end.reason is EndReason.SEND_TIMEOUT
    expected = [(("testserver", 80), ("127.0.0.1", 50000))] if aborted else []
    assert aborts == expected


async def test_writes_that_complete_leave_the_disconnect_listener_waiting() -> None:
    # send_timeout bounds a write under way; once the writes have completed, nothing but the
    # disconnect wakes the task that listens for it, however long the stream stays quiet.
    # (A wake-up there is a cancellation, and every quiet subscriber of a fan-out paid one
    # per send_timeout after each event.)
    written = anyio.Event()

    async def produce(send: StreamSender[str]) -> None:
        for word in ("a", "b", "c"):
            await send(word)
            await anyio.sleep(0.001)
        written.set()
        await anyio.sleep_forever()

    timeout = 0.02
    body = Body(produce, StreamOptions(send_timeout=timeout, heartbeat_interval=None))
    connection = FakeConnection()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(connection.run, partial(deliver, body))
            await written.wait()
            listening = connection.receive_calls
            await anyio.sleep(timeout * 10)  # quiet for ten send timeouts
            assert connection.receive_calls == listening
            connection.disconnect()
    assert connection.body == b"a|b|c|"
    assert body.end.reason is EndReason.CLIENT_DISCONNECTED


class WatchedConnection(FakeConnection):
    """A connection that records how many writes were in flight at once, and whose body
    writes wait for :attr:`gate` while it is set up."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = self.most_in_flight = 0
        self.gate: anyio.Event | None = None
        self.waiting = anyio.Event()

    async def send(self, message: Message) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None and message.get("body"):
                gate, self.gate = self.gate, None
                self.waiting.set()
                await gate.wait()
            await super().send(message)
        finally:
            self.in_flight -= 1


async def test_a_producer_that_awaits_between_items_has_each_item_written_in_order(
    anyio_backend_name: str,
) -> None:
    # The shape of an upstream feeding tokens: an await between items. On asyncio the
    # producer writes each item itself (the write is done when send returns); on trio the
    # writer does. Either way each item is written once, in order, one write at a time.
    on_the_wire: list[bool] = []
    connection = WatchedConnection()

    async def produce(send: StreamSender[str]) -> None:
        for number in range(50):
            await send(str(number))
            on_the_wire.append(f"{number}|".encode() in connection.body)
            await anyio.lowlevel.checkpoint()

    body = Body(produce)
    await connection.run(partial(deliver, body))
    assert connection.body == b"".join(f"{number}|".encode() for number in range(50))
    assert body.end.items_sent == 50
    assert connection.most_in_flight == 1
    # Written from the producer's task on asyncio, where the server's send can be cancelled.
    assert all(on_the_wire[1:]) is (anyio_backend_name == "asyncio")


async def test_a_producer_that_never_yields_has_its_items_joined_into_few_writes() -> None:
    async def produce(send: StreamSender[str]) -> None:
        await anyio.sleep(0.01)  # the writer waits for items, with nothing queued
        for _ in range(1000):
            await send("x")

    body = Body(produce, StreamOptions(buffer_size=1000))
    connection = FakeConnection()
    await connection.run(partial(deliver, body))
    assert connection.body == b"x|" * 1000
    # The first few items may be written alone (on asyncio, by the producer, before it is
    # asked whether it yields); the rest wait for the writer and share writes.
    assert len(connection.body_chunks) <= WRITES_UNASKED + 3


async def test_a_heartbeat_due_during_the_producers_own_write_is_written_after_it() -> None:
    connection = WatchedConnection()
    release = anyio.Event()

    async def produce(send: StreamSender[str]) -> None:
        await send("a")
        await anyio.sleep(0.05)  # past the heartbeat interval: the writer beats meanwhile
        connection.gate = release
        await send("b")  # held by the client for more than a heartbeat interval
        await send("c")

    async def release_later() -> None:
        await connection.waiting.wait()
        await anyio.sleep(0.05)
        release.set()

    body = Body(produce, StreamOptions(heartbeat_interval=0.02))
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(release_later)
        await connection.run(partial(deliver, body))
    assert connection.most_in_flight == 1
    items = connection.body.replace(b".", b"")
    assert items == b"a|b|c|"
    assert b"." in connection.body.split(b"a|")[1].split(b"b|")[0]  # beats while silent


async def test_a_write_the_client_never_takes_ends_with_send_timeout_and_frees_the_producer() -> (
    None
):
    # A producer that awaits between items writes itself on asyncio: the write that blocks
    # is its own, and the send timeout must still free it.
    cleaned = anyio.Event()

    async def produce(send: StreamSender[str]) -> None:
        send.push_async_callback(_set, cleaned)
        while True:
            await send("x")
            await anyio.lowlevel.checkpoint()

    connection = StalledAfterFirstConnection()
    body = Body(produce, StreamOptions(send_timeout=0.05))
    started = anyio.current_time()
    await connection.run(partial(deliver, body), within=2)
    assert body.end.reason is EndReason.SEND_TIMEOUT
    assert cleaned.is_set()
    assert anyio.current_time() - started < 1.0


async def _set(event: anyio.Event) -> None:
    event.set()


class StalledAfterFirstConnection(FakeConnection):
    """A client that reads the first body write, then stops reading."""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and self.body_chunks:
            await anyio.sleep_forever()
        await super().send(message)


RUNTIME = deliver.__code__.co_filename  # streamkit/_runtime.py


async def _first_then_wait(send: StreamSender[str]) -> None:
    await send("first")
    await anyio.sleep_forever()


async def _one_then_return(send: StreamSender[str]) -> None:
    await send("only")


async def _as_fast_as_taken(send: StreamSender[str]) -> None:
    while True:
        await send("x")  # never yields but here: its items are the writer's to write


@pytest.mark.parametrize(
    ("connection", "produce", "reason"),
    [
        # The producer returns, the client still connected: the watcher is stopped.
        (FakeConnection, _one_then_return, EndReason.COMPLETED),
        # The client leaves: the producer is cancelled where it waits.
        (
            partial(FakeConnection, disconnect_after_body=1),
            _first_then_wait,
            EndReason.CLIENT_DISCONNECTED,
        ),
        # The client stops reading: the writer is cancelled in the middle of a write.
        (StalledAfterFirstConnection, _as_fast_as_taken, EndReason.SEND_TIMEOUT),
    ],
    ids=["completed", "disconnect", "send_timeout"],
)
async def test_a_stream_leaves_no_reference_cycle_for_the_collector(
    connection: Callable[[], FakeConnection],
    produce: Callable[[StreamSender[str]], Awaitable[None]],
    reason: EndReason,
) -> None:
    # A cycle through a cancelled task's frames holds them, the stream, and all they hold (a
    # full buffer, say) until a garbage collection finds it: a collection over every live
    # stream of the process, in the middle of everyone's events. On asyncio, anyio makes
    # such a cycle of every child task that ends cancelled, a stream that ends well included.
    gc.collect()
    gc.disable()
    try:
        body = Body(produce, StreamOptions(send_timeout=0.05))
        await connection().run(partial(deliver, body), within=2)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [
            f"{type(item).__name__} {getattr(getattr(item, 'f_code', None), 'co_name', '')}"
            for item in gc.garbage
            if type(item).__name__ == "_Stream"
            or (
                isinstance(item, types.FrameType)
                and (item.f_code is produce.__code__ or item.f_code.co_filename == RUNTIME)
            )
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert body.end.reason is reason
    assert left == []


# -- careless producers ---------------------------------------------------------------------


async def test_a_producer_whose_own_task_group_refuses_cancellation_is_abandoned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The producer's body waits in its task group's exit for a child that swallows every
    # cancellation: the stream is reported ended cleanup_timeout after the client left.
    release = anyio.Event()
    fan_out = fan_out_refusing(release)

    ended = anyio.Event()
    body = Body(fan_out, StreamOptions(cleanup_timeout=0.1))
    body.ends = ReportingList(ended)
    connection = FakeConnection(disconnect_after_body=1)
    with caplog.at_level(logging.WARNING, logger="streamkit"):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(partial(connection.run, partial(deliver, body)))
            try:
                with anyio.fail_after(2):
                    await ended.wait()
            finally:
                release.set()
    assert body.end.reason is EndReason.CLIENT_DISCONNECTED
    assert body.end.duration >= 0.1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "fan_out refuses cancellation" in warning


def _foreign_cancellation() -> BaseException:
    """The cancellation class of the loop that is not running (trio's cannot be made)."""
    if sniffio.current_async_library() == "trio":
        return asyncio.CancelledError()
    pytest.skip("trio.Cancelled cannot be raised outside trio")


@pytest.mark.parametrize(
    "raised",
    [
        lambda: GeneratorExit(),
        lambda: StopAsyncIteration(),
        lambda: ExceptionGroup("upstream", [ValueError("bad")]),
        lambda: BaseExceptionGroup("upstream", [ValueError("bad"), GeneratorExit()]),
        _foreign_cancellation,
    ],
    ids=["GeneratorExit", "StopAsyncIteration", "ExceptionGroup", "BaseExceptionGroup", "foreign"],
)
async def test_what_a_producer_raises_that_is_no_cancellation_ends_it_as_an_error(
    raised: Callable[[], BaseException],
) -> None:
    # Not Exception, but not the loop's cancellation either (a GeneratorExit raised by hand,
    # asyncio's CancelledError on trio): an error like any other, with its frame and the end
    # of the body, not a cancellation raised out of the stream as if the server had cancelled it.
    exception = raised()

    async def produce(send: StreamSender[str]) -> None:
        await send("x")
        raise exception

    body = Body(produce)
    connection = FakeConnection()
    await connection.run(partial(deliver, body), within=2)
    assert body.end.reason is EndReason.ERROR
    assert body.end.exception is exception
    assert connection.body == b"x|<error>"
    assert connection.complete


async def test_a_cancellation_nothing_asked_for_is_an_error(anyio_backend_name: str) -> None:
    # An asyncio future that something else cancelled, awaited by the producer: its
    # CancelledError is no cancellation of the stream nor of the server's, but an error.
    if anyio_backend_name != "asyncio":
        pytest.skip("trio.Cancelled cannot be made by hand")
    cancelled_elsewhere: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    cancelled_elsewhere.cancel()

    async def produce(send: StreamSender[str]) -> None:
        await send("x")
        await send(await cancelled_elsewhere)

    body = Body(produce)
    connection = FakeConnection()
    await connection.run(partial(deliver, body), within=2)
    assert body.end.reason is EndReason.ERROR
    assert isinstance(body.end.exception, asyncio.CancelledError)
    assert connection.body == b"x|<error>"
    assert connection.complete


async def test_an_error_beside_a_cancellation_from_outside_is_reported_and_raised_on(
    anyio_backend_name: str,
) -> None:
    # A group holding an error and a cancellation the stream did not make (the server's, as
    # it tears the connection down): the error is the stream's end, and the cancellation is
    # not swallowed with it.
    if anyio_backend_name != "asyncio":
        pytest.skip("trio.Cancelled cannot be made by hand")
    group = BaseExceptionGroup("fan-out", [ValueError("bad"), asyncio.CancelledError()])

    async def produce(send: StreamSender[str]) -> None:
        await send("x")
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # what the server does as it tears the connection down
        raise group

    body = Body(produce)
    with pytest.raises(BaseExceptionGroup) as caught:
        await FakeConnection().run(partial(deliver, body), within=2)
    assert caught.value.split(asyncio.CancelledError)[0] is not None
    assert body.end.reason is EndReason.ERROR
    assert body.end.exception is group


async def test_a_keyboard_interrupt_in_a_nested_group_stops_as_one_alone_does() -> None:
    # A task group of the producer's own wraps it, twice: Python's word that the process must
    # stop all the same. The stream ends as an error, and the group is raised on, untouched.
    interrupt = KeyboardInterrupt()
    group = BaseExceptionGroup("outer", [ValueError("v"), BaseExceptionGroup("inner", [interrupt])])

    async def produce(send: StreamSender[str]) -> None:
        await send("x")
        raise group

    body = Body(produce)
    connection = FakeConnection()
    with pytest.raises(BaseExceptionGroup) as caught:
        await connection.run(partial(deliver, body), within=2)
    assert caught.value is group
    assert body.end.reason is EndReason.ERROR
    assert body.end.exception is group
    assert connection.body == b"x|<error>"
    assert connection.complete


async def test_a_send_kept_past_the_end_refuses_items_and_resources_naming_the_stream() -> None:
    # A task that outlives the producer with its send: nothing it sends or enters is lost
    # without a word, and nothing is entered that no one would exit.
    kept: list[StreamSender[str]] = []
    entered: list[str] = []

    async def produce(send: StreamSender[str]) -> None:
        kept.append(send)
        await send("x")

    @contextlib.asynccontextmanager
    async def resource() -> AsyncIterator[None]:
        entered.append("entered")
        yield

    async def callback() -> None:
        entered.append("called")

    body = Body(produce)
    connection = FakeConnection("/feed")
    await connection.run(partial(deliver, body), within=2)
    (send,) = kept
    with pytest.raises(anyio.ClosedResourceError, match="stream /feed has ended"):
        await send("late")
    with pytest.raises(RuntimeError, match="stream /feed has ended"):
        await send.enter_async_context(resource())
    with pytest.raises(RuntimeError, match="stream /feed has ended"):
        send.push_async_callback(callback)
    send.end(EndReason.SHUTDOWN)  # documented: no effect once the end was decided
    assert entered == []
    assert body.end.reason is EndReason.COMPLETED
    assert connection.body == b"x|"


def _closing_generator(how: str, closed: list[str]) -> Callable[[], AsyncIterator[str]]:
    """An async generator that never awaits, so a stream's end finds it at a ``yield`` and
    closes it with ``aclose()``; *how* its closing goes wrong."""

    async def items() -> AsyncIterator[str]:
        try:
            while True:
                yield "x"
        except GeneratorExit:
            closed.append("GeneratorExit")
            if how == "yields":
                yield "after GeneratorExit"
            raise
        finally:
            if how == "raises":
                closed.append("finally")
                raise ValueError("closing failed")
            if how == "interrupted":
                closed.append("finally")
                raise KeyboardInterrupt

    return items


@pytest.mark.parametrize(
    ("how", "logged"),
    [("yields", "ignored GeneratorExit"), ("raises", "closing failed")],
)
async def test_an_async_generator_whose_closing_fails_is_closed_once_and_logged_once(
    how: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed: list[str] = []
    body = Body(_closing_generator(how, closed)())
    connection = FakeConnection("/feed", disconnect_after_body=1)
    with caplog.at_level(logging.WARNING, logger="streamkit"):
        await connection.run(partial(deliver, body), within=2)
    assert body.end.reason is EndReason.CLIENT_DISCONNECTED
    assert closed.count("GeneratorExit") == 1
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.getMessage() == "stream /feed: cleanup raised"
    assert record.exc_info is not None
    assert logged in str(record.exc_info[1])


async def test_a_keyboard_interrupt_from_an_async_generators_closing_stops_as_from_its_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Raised by the generator's finally as the stream closes it: Python's word that the
    # process must stop, as when the generator raises it while it runs. The end stays what
    # it was (a cleanup's error does not change it), and the interrupt is raised on, alone.
    closed: list[str] = []
    body = Body(_closing_generator("interrupted", closed)())
    connection = FakeConnection("/feed", disconnect_after_body=1)
    with (
        caplog.at_level(logging.WARNING, logger="streamkit"),
        pytest.raises(KeyboardInterrupt),
    ):
        await connection.run(partial(deliver, body), within=2)
    assert closed == ["GeneratorExit", "finally"]
    assert body.end.reason is EndReason.CLIENT_DISCONNECTED
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.getMessage() == "stream /feed: cleanup raised"


class YieldingConnection(WatchedConnection):
    """A watched connection whose every write yields to the loop before it completes."""

    async def send(self, message: Message) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await anyio.lowlevel.checkpoint()
            await FakeConnection.send(self, message)
        finally:
            self.in_flight -= 1


async def test_two_tasks_sending_at_once_write_one_at_a_time_each_in_its_order() -> None:
    # A producer that hands its send to two tasks of its own: their writes, each yielding on
    # the way, never overlap, and every item is written once, whole.
    async def one_task(tag: str, send: StreamSender[str]) -> None:
        for number in range(100):
            await send(f"{tag}{number}")
            if number % 3:
                await anyio.lowlevel.checkpoint()

    async def produce(send: StreamSender[str]) -> None:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(one_task, "a", send)
            task_group.start_soon(one_task, "b", send)

    body = Body(produce, StreamOptions(buffer_size=2))
    connection = YieldingConnection()
    await connection.run(partial(deliver, body))
    items = connection.body.decode().split("|")
    assert items.pop() == ""
    for tag in "ab":
        assert [item for item in items if item[0] == tag] == [f"{tag}{n}" for n in range(100)]
    assert len(items) == 200
    assert connection.most_in_flight == 1
    assert connection.complete


async def test_a_write_held_up_by_a_blocked_loop_is_not_given_up_as_a_stalled_client() -> None:
    # A write is under way when a task blocks the loop for five send timeouts (longer than
    # LOOP_HELD past the timer's time); the client
    # takes the write as soon as the loop runs again (as a client in the same process does),
    # but the send timer comes due first: the write is timed afresh, the stream goes on.
    timeout = 0.1
    assert timeout * 4 > LOOP_HELD
    connection = WatchedConnection()
    connection.gate = gate = anyio.Event()
    release = anyio.Event()

    async def produce(send: StreamSender[str]) -> None:
        await send("held")
        await send("after")
        await release.wait()

    body = Body(produce, StreamOptions(send_timeout=timeout, heartbeat_interval=None))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(connection.run, partial(deliver, body))
            await connection.waiting.wait()  # the first write is under way
            time.sleep(timeout * 5)  # noqa: ASYNC251  (the careless producer's block)
            await anyio.lowlevel.checkpoint()  # the timer's turn comes before the client's
            gate.set()
            while b"after" not in connection.body:
                await anyio.lowlevel.checkpoint()
            assert body.ends == []
            release.set()
    assert connection.body == b"held|after|"
    assert body.end.reason is EndReason.COMPLETED


@pytest.mark.anyio
async def test_a_write_that_a_held_loop_excused_once_is_given_up_when_late_again() -> None:
    # A loop held at every timer's time (a server past its capacity) must not excuse a
    # stalled write for ever: one write is timed afresh once, then given up.
    timeout = 0.1
    connection = WatchedConnection()
    connection.gate = anyio.Event()  # never set: the client never takes the write

    async def produce(send: StreamSender[str]) -> None:
        await send("held")
        await anyio.sleep_forever()

    body = Body(produce, StreamOptions(send_timeout=timeout, heartbeat_interval=None))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(connection.run, partial(deliver, body))
            await connection.waiting.wait()  # the write is under way
            for _ in range(6):
                if body.ends:
                    break
                time.sleep(timeout * 5)  # noqa: ASYNC251  (the loop held past the timer's time)
                await anyio.lowlevel.checkpoint()  # the timer runs, late every time
            task_group.cancel_scope.cancel()
    assert [end.reason for end in body.ends] == [EndReason.SEND_TIMEOUT]
