"""What a producer is handed: the shielded cleanup block, and the StreamSender's resources,
end() and last_event_id, through the runtime on a
:class:`~streamkit.testing.FakeConnection`."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
import anyio.lowlevel
import pytest
from starlette.types import Message
from support.bodies import Body

from streamkit import EndReason, StreamOptions, StreamSender, shielded_cleanup
from streamkit._registry import StreamRegistry, using_registry
from streamkit._runtime import deliver
from streamkit._sse import MAX_LAST_EVENT_ID_LENGTH
from streamkit.testing import FakeConnection

pytestmark = pytest.mark.anyio


# -- shielded_cleanup -------------------------------------------------------------------------


async def test_awaited_cleanup_completes_after_a_cancel_and_the_cancel_goes_on() -> None:
    log: list[str] = []
    with anyio.CancelScope() as outer:
        try:
            outer.cancel()
            await anyio.lowlevel.checkpoint()
        finally:
            with shielded_cleanup(5.0):
                await anyio.lowlevel.checkpoint()  # outside the block, this would raise
                log.append("first await")
                await anyio.lowlevel.checkpoint()
                log.append("closed")
        log.append("not reached: the cancellation continues")  # pragma: no cover
    assert log == ["first await", "closed"]
    assert outer.cancelled_caught


async def test_cleanup_that_does_not_finish_is_cancelled_after_its_timeout_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = anyio.Event()
    started = anyio.current_time()
    with caplog.at_level(logging.WARNING, logger="streamkit"):
        with anyio.fail_after(5), shielded_cleanup(0.05) as scope:
            await never.wait()
    elapsed = anyio.current_time() - started
    assert scope.cancelled_caught
    assert 0.05 <= elapsed < 2.0
    assert "cleanup did not finish within 0.050 s and was cancelled" in caplog.text


async def test_cleanup_that_finishes_in_time_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streamkit"), shielded_cleanup(5.0) as scope:
        await anyio.lowlevel.checkpoint()
    assert not scope.cancelled_caught
    assert caplog.records == []


async def test_the_cleanup_timeout_runs_from_when_the_block_is_entered() -> None:
    block = shielded_cleanup(5.0)
    await anyio.sleep(0.01)  # the clock moves on between making the block and entering it
    entered = anyio.current_time()
    with block as scope:
        assert scope.shield
        assert entered + 5.0 <= scope.deadline < entered + 6.0
        await anyio.lowlevel.checkpoint()
    assert not scope.cancelled_caught


@pytest.mark.parametrize(
    ("timeout", "error", "message"),
    [
        (None, TypeError, r"shielded_cleanup's cleanup_timeout must be a number .* None"),
        ("5", TypeError, r"shielded_cleanup's cleanup_timeout must be a number .* '5'"),
        (0, ValueError, r"shielded_cleanup's cleanup_timeout must be a positive, finite .* 0"),
        (-1.0, ValueError, r"positive, finite number of seconds, got -1.0"),
        (math.nan, ValueError, r"positive, finite number of seconds, got nan"),
        (math.inf, ValueError, r"positive, finite number of seconds, got inf"),
    ],
)
def test_shielded_cleanup_refuses_a_timeout_that_bounds_nothing_where_it_is_made(
    timeout: object, error: type[Exception], message: str
) -> None:
    # Where it is made, not where it is entered: in a finally, after a cancellation, a
    # refusal there would take the place of the error being handled.
    with pytest.raises(error, match=message):
        shielded_cleanup(timeout)  # type: ignore[arg-type]


# -- resources entered through send -----------------------------------------------------------


class Resource:
    """An async context manager that logs how it was exited, after an awaited close."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def __aenter__(self) -> str:
        self.log.append(f"enter {self.name}")
        return self.name

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        await anyio.lowlevel.checkpoint()  # awaited: raises unless shielded
        outcome = "ok" if kind is None else kind.__name__
        self.log.append(f"exit {self.name} ({outcome})")


def resources_producer(log: list[str], *, then: str) -> Body:
    async def callback(name: str) -> None:
        await anyio.lowlevel.checkpoint()
        log.append(f"callback {name}")

    async def produce(send: StreamSender[str]) -> None:
        send.push_async_callback(callback, "a")
        assert await send.enter_async_context(Resource("b", log)) == "b"
        send.push_async_callback(callback, "c")
        await send("x")
        if then == "wait":
            await anyio.sleep_forever()
        elif then == "raise":
            raise RuntimeError("upstream failed")

    return Body(produce)


@pytest.mark.parametrize(
    ("then", "disconnect_after_body", "reason", "outcome"),
    [
        ("finish", None, EndReason.COMPLETED, "ok"),
        ("raise", None, EndReason.ERROR, "RuntimeError"),
        ("wait", 1, EndReason.CLIENT_DISCONNECTED, "Cancelled"),
    ],
)
async def test_resources_close_last_in_first_out_and_see_how_the_producer_ended(
    then: str, disconnect_after_body: int | None, reason: EndReason, outcome: str
) -> None:
    log: list[str] = []
    body = resources_producer(log, then=then)
    await FakeConnection(disconnect_after_body=disconnect_after_body).run(partial(deliver, body))
    assert body.end.reason is reason
    # asyncio's CancelledError or trio's Cancelled: either way, not "ok", so a transaction
    # entered through send rolls back when the client leaves.
    exit_b = log[2]
    assert exit_b.startswith("exit b (")
    assert outcome in exit_b
    assert log == ["enter b", "callback c", exit_b, "callback a"]


async def test_a_cleanup_that_raises_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []

    async def broken() -> None:
        raise OSError("close failed")

    async def close() -> None:
        await anyio.lowlevel.checkpoint()
        log.append("closed")

    async def produce(send: StreamSender[str]) -> None:
        send.push_async_callback(close)
        send.push_async_callback(broken)
        await send("x")

    body = Body(produce)
    connection = FakeConnection()
    with caplog.at_level(logging.ERROR, logger="streamkit"):
        await connection.run(partial(deliver, body))
    assert log == ["closed"]
    assert body.end.reason is EndReason.COMPLETED
    assert connection.body == b"x|"
    assert "cleanup raised" in caplog.text


async def test_cleanup_past_cleanup_timeout_is_cut_short_and_the_stream_still_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = anyio.Event()

    async def produce(send: StreamSender[str]) -> None:
        send.push_async_callback(never.wait)
        await send("x")
        await anyio.sleep_forever()

    body = Body(produce, StreamOptions(cleanup_timeout=0.05))
    with caplog.at_level(logging.WARNING, logger="streamkit"):
        await FakeConnection(disconnect_after_body=1).run(partial(deliver, body), within=5)
    assert body.end.reason is EndReason.CLIENT_DISCONNECTED
    assert 0.05 <= body.end.cleanup_duration < 2.0
    assert "cleanup did not finish within 0.050 s" in caplog.text


async def test_a_resource_is_not_entered_twice_nor_left_open_when_entering_fails() -> None:
    log: list[str] = []

    @asynccontextmanager
    async def refused() -> AsyncIterator[None]:
        raise ConnectionRefusedError("upstream down")
        yield  # pragma: no cover

    async def produce(send: StreamSender[str]) -> None:
        await send.enter_async_context(Resource("first", log))
        await send.enter_async_context(refused())

    body = Body(produce)
    await FakeConnection().run(partial(deliver, body))
    assert body.end.reason is EndReason.ERROR
    assert isinstance(body.end.exception, ConnectionRefusedError)
    assert log == ["enter first", "exit first (ConnectionRefusedError)"]


# -- end() ------------------------------------------------------------------------------------


async def test_end_writes_what_was_queued_then_ends_with_its_reason() -> None:
    after_end: list[str] = []

    async def produce(send: StreamSender[str]) -> None:
        await send("a")
        await send("b")
        send.end(EndReason.SEND_TIMEOUT)
        send.end(EndReason.ERROR)  # decided already: no effect
        try:
            await send("c")
        finally:
            after_end.append("cancelled at the next await")

    body = Body(produce)
    connection = FakeConnection()
    await connection.run(partial(deliver, body))
    assert connection.body == b"a|b|<send_timeout>"
    assert connection.complete
    assert body.end.reason is EndReason.SEND_TIMEOUT
    assert body.end.items_sent == 2
    assert after_end == ["cancelled at the next await"]


@pytest.mark.parametrize("when", ["after-the-report", "while-the-body-is-ended"])
async def test_end_from_a_task_left_running_after_the_producer_returned_changes_nothing(
    when: str,
) -> None:
    # The producer returned, which decided a completion; a task it left running (in a task
    # group of the app's) calls end() later: once the stream is reported, or while the end of
    # its body is being written. The first end wins: the report, its log and the registry's
    # count say COMPLETED once.
    kept: list[StreamSender[str]] = []
    ending = anyio.Event()
    release = anyio.Event()

    async def produce(send: StreamSender[str]) -> None:
        await send("a")
        kept.append(send)

    class SlowToEnd(FakeConnection):
        async def send(self, message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                ending.set()
                await release.wait()
            await super().send(message)

    async def end_later() -> None:
        await ending.wait()
        if when == "after-the-report":
            release.set()
            await streams.wait_ended()
        kept[0].end(EndReason.DEADLINE)
        release.set()

    body = Body(produce, StreamOptions(heartbeat_interval=None))
    connection = SlowToEnd()
    streams = StreamRegistry()
    with using_registry(streams), anyio.fail_after(2):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(end_later)
            await connection.run(partial(deliver, body))
    assert body.end.reason is EndReason.COMPLETED
    assert connection.body == b"a|"
    ended = streams.statistics().ended
    assert (ended[EndReason.COMPLETED], ended[EndReason.DEADLINE]) == (1, 0)


class StuckAfter(FakeConnection):
    """A client that takes *taken* body writes, then none: the next one blocks for good."""

    def __init__(self, taken: int) -> None:
        super().__init__()
        self.taken = taken

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            if not self.taken:
                await anyio.sleep_forever()
            self.taken -= 1
        await super().send(message)


@pytest.mark.parametrize("how", ["write-fails", "write-blocks"])
async def test_a_client_that_leaves_while_the_end_is_written_ends_the_stream_at_once(
    how: str,
) -> None:
    # The producer ended the stream itself, its last items still to be written (a farewell);
    # the client leaves meanwhile. Whether the write fails (an ASGI 2.4 server's OSError) or
    # blocks, nothing more need be written: the stream ends now, not at send_timeout (none
    # here), keeping the reason the producer gave.
    async def produce(send: StreamSender[str]) -> None:
        await send("a")
        await send("farewell")
        send.end(EndReason.SEND_TIMEOUT)

    body = Body(produce, StreamOptions(send_timeout=None, heartbeat_interval=None))
    if how == "write-fails":
        connection = FakeConnection(disconnect_after_body=1)
    else:
        connection = StuckAfter(1)

        async def leave_once_stuck() -> None:
            await anyio.wait_all_tasks_blocked()
            connection.disconnect()

    with anyio.fail_after(2):
        async with anyio.create_task_group() as task_group:
            if how == "write-blocks":
                task_group.start_soon(leave_once_stuck)
            await connection.run(partial(deliver, body))
    assert body.end.reason is EndReason.SEND_TIMEOUT
    assert not connection.complete


# -- last_event_id ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Last-Event-ID": "1795322817838-12"}, "1795322817838-12"),
        ({"Last-Event-ID": "x" * (MAX_LAST_EVENT_ID_LENGTH + 1)}, None),
        # Sent in UTF-8, as a browser sends an id beyond ASCII (and as the testing kit's
        # clients send it over a connection).
        ({"Last-Event-ID": "\u00e9t\u00e9-7"}, "\u00e9t\u00e9-7"),
        ({"Last-Event-ID": "\u20ac-7"}, "\u20ac-7"),
    ],
)
async def test_last_event_id_is_the_validated_header_of_the_request(
    headers: dict[str, str], expected: str | None
) -> None:
    seen: list[str | None] = []

    async def produce(send: StreamSender[str]) -> None:
        seen.append(send.last_event_id)

    await FakeConnection(headers=headers).run(partial(deliver, Body(produce)))
    assert seen == [expected]
