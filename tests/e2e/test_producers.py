"""Producers that misbehave, and a buffer with no room, through real hypercorn on asyncio and
trio: each stream still ends within a stated bound, says why, and leaves nothing running."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.stubborn import fan_out_refusing

from streamkit import (
    EndReason,
    EventSourceResponse,
    NDJSONResponse,
    StreamResponse,
    StreamSender,
    shielded_cleanup,
)
from streamkit.testing import LeakError, LiveServer, open_leak_check, open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def app_for(route: Callable[[Request], Any]) -> Starlette:
    return Starlette(routes=[Route("/stream", route)])


@pytest.mark.parametrize("kind", ["sse", "ndjson", "bytes"])
async def test_a_stream_with_no_buffer_room_hands_each_item_over(kind: str) -> None:
    async def produce(send: StreamSender[Any]) -> None:
        for n in range(5):
            await send({"sse": str(n), "ndjson": {"n": n}}.get(kind, f"{n}\n"))

    async def route(request: Request) -> Response:
        if kind == "sse":
            return EventSourceResponse(produce, buffer_size=0, max_duration=30)
        if kind == "ndjson":
            return NDJSONResponse(produce, buffer_size=0, max_duration=30)
        return StreamResponse(produce, buffer_size=0, max_duration=30)

    async with open_server(app_for(route)) as server, open_stream(server, "/stream") as client:
        with anyio.fail_after(5):
            body = await client.read_all()
        end = await server.wait_ended(EndReason.COMPLETED)
    assert client.complete
    assert end.items_sent == 5
    assert body.count(b"\n") == (10 if kind == "sse" else 5)


@pytest.mark.parametrize("kind", ["sse", "ndjson", "bytes"])
async def test_a_stream_the_client_left_gets_no_end_of_body(kind: str) -> None:
    """A busy producer and a client that half-closes (it leaves, and still reads): once the
    disconnect is decided nothing more is written, so the cut body cannot pass for a whole
    one. On asyncio, writes that do not block never yield, and the terminator went out."""

    async def flat_out(send: StreamSender[Any]) -> None:
        n = 0
        while True:
            await send({"sse": str(n), "ndjson": {"n": n}}.get(kind, f"{n}\n"))
            n += 1

    async def route(request: Request) -> Response:
        if kind == "sse":
            return EventSourceResponse(flat_out)
        if kind == "ndjson":
            return NDJSONResponse(flat_out)
        return StreamResponse(flat_out)

    async with open_server(app_for(route)) as server:
        for _ in range(5):
            async with open_stream(server, "/stream") as client:
                await client.receive_chunk()
                await client.half_close()
                await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
                with (
                    anyio.fail_after(5),
                    pytest.raises(ConnectionError, match=r"broke off|terminator"),
                ):
                    await client.read_all()
            assert not client.complete


async def test_an_await_in_a_plain_finally_is_reported_with_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pattern most guides teach, `finally: await client.aclose()`, never completes its
    await once the stream is cancelled: a warning names the stream, the producer and the fix,
    and the leak check fails on it."""
    closed: list[bool] = []

    async def careless(send: StreamSender[Any]) -> None:
        try:
            await send("first")
            await anyio.sleep_forever()
        finally:
            await anyio.sleep(0.01)  # closing an upstream client, say
            closed.append(True)

    async def route(request: Request) -> Response:
        return EventSourceResponse(careless)

    async def leave_then_check() -> None:
        async with open_leak_check(), open_server(app_for(route)) as server:
            async with open_stream(server, "/stream") as client:
                await client.read_event()
                await client.reset()
            await server.wait_ended(EndReason.CLIENT_DISCONNECTED)

    with (
        caplog.at_level(logging.WARNING, logger="streamkit"),
        pytest.raises(LeakError, match="careless") as caught,
    ):
        await leave_then_check()
    assert closed == []
    assert len(caught.value.faults) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "/stream" in warnings[0]
    assert "careless" in warnings[0]
    assert "push_async_callback" in warnings[0]
    assert "shielded_cleanup" in warnings[0]


async def test_shielded_cleanup_in_a_finally_is_no_fault(caplog: pytest.LogCaptureFixture) -> None:
    closed = anyio.Event()

    async def careful(send: StreamSender[Any]) -> None:
        try:
            await send("first")
            await anyio.sleep_forever()
        finally:
            with shielded_cleanup(1.0):
                await anyio.sleep(0.01)
                closed.set()

    async def route(request: Request) -> Response:
        return EventSourceResponse(careful)

    with caplog.at_level(logging.WARNING, logger="streamkit"):
        async with open_leak_check(), open_server(app_for(route)) as server:
            async with open_stream(server, "/stream") as client:
                await client.read_event()
                await client.reset()
            await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert closed.is_set()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


class Stubborn:
    """A producer that catches its cancellation and carries on, until released."""

    def __init__(self) -> None:
        self.refusals = 0
        self.release = anyio.Event()
        self.returned = anyio.Event()

    async def stubborn_producer(self, send: StreamSender[Any]) -> None:
        await send("first")
        try:
            while not self.release.is_set():
                try:
                    await anyio.sleep(0.05)
                except anyio.get_cancelled_exc_class():
                    self.refusals += 1
                    with anyio.CancelScope(shield=True):
                        await anyio.sleep(0.05)
        finally:
            self.returned.set()


@pytest.mark.parametrize("ending", ["reset", "shutdown", "deadline"])
async def test_a_producer_refusing_cancellation_is_abandoned_after_cleanup_timeout(
    ending: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The end is decided (the client left, the server shuts down, max_duration passed), the
    producer swallows its cancellation: cleanup_timeout later the stream is reported ended all
    the same (so a drain does not wait for it), and a warning names the producer."""
    cleanup_timeout, grace = 0.3, 3.0
    max_duration = 0.5 if ending == "deadline" else None
    stubborn = Stubborn()

    async def route(request: Request) -> Response:
        return EventSourceResponse(
            stubborn.stubborn_producer, cleanup_timeout=cleanup_timeout, max_duration=max_duration
        )

    with caplog.at_level(logging.WARNING, logger="streamkit"):
        async with open_server(app_for(route), grace_period=grace) as server:
            async with (
                anyio.create_task_group() as task_group,
                open_stream(server, "/stream") as client,
            ):
                await client.read_event()
                decided_at = anyio.current_time()
                if ending == "reset":
                    await client.reset()
                elif ending == "shutdown":
                    task_group.start_soon(server.shutdown)
                else:
                    # The deadline passes at most max_duration after the first event is read.
                    decided_at += max_duration or 0
                reason = {
                    "reset": EndReason.CLIENT_DISCONNECTED,
                    "shutdown": EndReason.SHUTDOWN,
                    "deadline": EndReason.DEADLINE,
                }[ending]
                try:
                    end = await server.wait_ended(reason, within=(max_duration or 0) + 2.3)
                    reported_after = anyio.current_time() - decided_at
                    assert not stubborn.returned.is_set(), "still refusing when reported"
                finally:
                    stubborn.release.set()
                if ending == "shutdown":
                    assert [event.event async for event in client.events()][-1] == "shutdown"
                if ending != "reset":
                    with anyio.fail_after(5):
                        await client.read_all()
                    assert client.complete
            with anyio.fail_after(2):
                await stubborn.returned.wait()
            if ending == "shutdown":
                with anyio.fail_after(grace):
                    await server.stopped.wait()
                assert anyio.current_time() - decided_at < grace
    assert stubborn.refusals >= 1
    assert reported_after < cleanup_timeout + 2.0
    assert end.duration >= (max_duration or 0) + cleanup_timeout
    if ending != "deadline":  # whose decided_at is a bound, not the moment
        assert reported_after >= cleanup_timeout
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("stubborn_producer" in w and "refuses cancellation" in w for w in warnings)


@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "in_a_nested_group"])
@pytest.mark.parametrize("fatal", [SystemExit, KeyboardInterrupt])
async def test_system_exit_in_a_producer_ends_its_stream_as_an_error_then_stops_the_server(
    fatal: type[BaseException], grouped: bool
) -> None:
    """Python's meaning: the process must stop. The stream that raised ends as an error (the
    error event, then the end of the body); the others drain with their farewell; then the
    server stops and serve() raises the exception itself, unwrapped, for the process to end.
    Raised inside a group (a task group of the producer's own, in another), the same, and
    the group is what is raised."""
    raised: BaseException = fatal(3)
    if grouped:
        inner = BaseExceptionGroup("inner", [raised])
        raised = BaseExceptionGroup("outer", [ValueError("beside it"), inner])

    async def fatal_producer(send: StreamSender[Any]) -> None:
        await send("one")
        raise raised

    async def quiet(send: StreamSender[Any]) -> None:
        await send("waiting")
        await anyio.sleep_forever()

    async def route(request: Request) -> Response:
        if request.query_params.get("fatal"):
            return EventSourceResponse(fatal_producer)
        return EventSourceResponse(quiet)

    servers: list[LiveServer] = []
    seen: dict[str, list[Any]] = {}

    async def serve_until_stopped() -> None:
        with anyio.fail_after(10):
            async with open_server(app_for(route), grace_period=3.0) as server:
                servers.append(server)
                async with open_stream(server, "/stream") as bystander:
                    await bystander.read_event()
                    async with open_stream(server, "/stream?fatal=1") as client:
                        seen["events"] = [event async for event in client.events()]
                        assert client.complete
                    seen["farewell"] = [event async for event in bystander.events()]
                    assert bystander.complete
                    await anyio.sleep_forever()  # the server's stop cancels the block

    with pytest.raises((fatal, BaseExceptionGroup)) as caught:
        await serve_until_stopped()
    assert caught.value is raised
    events, farewell = seen["events"], seen["farewell"]
    assert [event.data for event in events] == ["one", ""]
    assert events[-1].event == "error"
    assert farewell[-1].event == "shutdown"
    by_reason = {end.reason: end for end in servers[0].streams.recent_ends()}
    assert by_reason[EndReason.ERROR].exception is raised
    assert EndReason.SHUTDOWN in by_reason


@pytest.mark.parametrize(
    "raised",
    [
        lambda: GeneratorExit(),
        lambda: BaseExceptionGroup("fan-out", [ValueError("bad"), GeneratorExit()]),
        # Raised by hand, or by a future cancelled elsewhere: on trio, another loop's; on
        # asyncio, one that nothing asked of the producer's task.
        lambda: asyncio.CancelledError(),
    ],
    ids=["GeneratorExit", "BaseExceptionGroup", "CancelledError"],
)
async def test_a_producer_raising_what_is_no_exception_nor_cancellation_ends_with_an_error(
    raised: Callable[[], BaseException],
) -> None:
    """Neither an Exception nor the loop's cancellation: the client still gets the error event
    and the end of the body, the server keeps serving, and the end says ERROR."""
    exception = raised()

    async def careless(send: StreamSender[Any]) -> None:
        await send("one")
        raise exception

    async def route(request: Request) -> Response:
        return EventSourceResponse(careless)

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream") as client:
            with anyio.fail_after(5):
                events = [event async for event in client.events()]
            assert client.complete
        end = await server.wait_ended(EndReason.ERROR)
        async with open_stream(server, "/stream") as again:  # the server still serves
            assert (await again.read_event()).data == "one"
    assert [event.data for event in events] == ["one", ""]
    assert events[-1].event == "error"
    assert end.exception is exception


async def test_a_producer_whose_own_task_refuses_cancellation_holds_no_other_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The refusal is in a task of the producer's own task group: at a graceful shutdown the
    stream is still reported ended cleanup_timeout later, its producer named; another stream
    drains with its farewell meanwhile, and the server stops once the task gives in."""
    release = anyio.Event()
    fan_out = fan_out_refusing(release)

    async def quiet(send: StreamSender[Any]) -> None:
        await send("waiting")
        await anyio.sleep_forever()

    async def route(request: Request) -> Response:
        if request.query_params.get("stubborn"):
            return EventSourceResponse(fan_out, cleanup_timeout=0.2)
        return EventSourceResponse(quiet)

    with caplog.at_level(logging.WARNING, logger="streamkit"):
        async with open_server(app_for(route), grace_period=3.0) as server:
            async with (
                anyio.create_task_group() as task_group,
                open_stream(server, "/stream") as bystander,
                open_stream(server, "/stream?stubborn=1") as client,
            ):
                await bystander.read_event()
                await client.read_event()
                task_group.start_soon(server.shutdown)
                try:
                    with anyio.fail_after(2.5):
                        farewell = [event.event async for event in bystander.events()]
                        ends = [await server.wait_ended(EndReason.SHUTDOWN) for _ in range(2)]
                finally:
                    release.set()
                with anyio.fail_after(3):
                    await server.stopped.wait()
    assert farewell[-1] == "shutdown"
    assert bystander.complete
    assert max(end.duration for end in ends) >= 0.2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("fan_out refuses cancellation" in w for w in warnings), warnings


async def test_a_keyboard_interrupt_from_an_async_generators_closing_stops_the_server() -> None:
    """Raised by the generator's finally as the stream closes it, after the client left: the
    server stops gracefully and raises it, as when a producer raises it."""
    closing = anyio.Event()

    async def items() -> AsyncIterator[str]:
        try:
            while True:
                yield "x"  # never awaits: the stream's end finds it here, and closes it
        finally:
            closing.set()
            raise KeyboardInterrupt

    async def route(request: Request) -> Response:
        return EventSourceResponse(items(), buffer_size=1)

    servers: list[LiveServer] = []

    async def leave_then_wait() -> None:
        with anyio.fail_after(10):
            async with open_server(app_for(route), grace_period=3.0) as server:
                servers.append(server)
                async with open_stream(server, "/stream") as client:
                    await client.read_event()
                    await client.reset()
                await closing.wait()
                await anyio.sleep_forever()  # the server's stop cancels the block

    with pytest.raises(KeyboardInterrupt):
        await leave_then_wait()
    (end,) = servers[0].streams.recent_ends()
    assert end.reason is EndReason.CLIENT_DISCONNECTED


async def test_a_producer_that_blocks_the_loop_leaves_no_send_timeout_behind_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A producer that calls time.sleep() holds every stream of the process: a write that
    was under way then could not finish, through no fault of its client. Once the loop runs
    again, the streams go on; none is given up as a stalled client, its connection aborted."""
    blocked = anyio.Event()

    async def bulk(send: StreamSender[bytes]) -> None:
        chunk = b"x" * (1 << 20)  # a write is under way, its client reading, when the loop stops
        while True:
            await send(chunk)

    async def beating(send: StreamSender[Any]) -> None:
        await send("hello")
        await anyio.sleep_forever()

    async def blocking(send: StreamSender[Any]) -> None:
        await send("before")
        await anyio.sleep(0.2)  # the bulk stream's writes are under way
        time.sleep(1.5)  # noqa: ASYNC251  (the careless producer under test)
        blocked.set()
        await send("after")
        await anyio.sleep_forever()

    async def route(request: Request) -> Response:
        kind = request.query_params.get("kind")
        if kind == "bulk":
            return StreamResponse(bulk, send_timeout=0.5)
        if kind == "beating":
            return EventSourceResponse(beating, send_timeout=0.5, heartbeat_interval=0.1)
        return EventSourceResponse(blocking, send_timeout=0.5)

    read_after_block = 0
    read_enough = anyio.Event()  # 8 MiB more of the bulk stream after the loop ran again

    async def read_bulk(client: Any) -> None:
        nonlocal read_after_block
        while (chunk := await client.receive_chunk()) is not None:
            if blocked.is_set():
                read_after_block += len(chunk)
                if read_after_block >= 8 << 20:
                    read_enough.set()

    with caplog.at_level(logging.INFO, logger="streamkit"):
        async with (
            open_server(app_for(route)) as server,
            open_stream(server, "/stream?kind=bulk") as bulk_client,
            open_stream(server, "/stream?kind=beating") as beating_client,
            open_stream(server, "/stream?kind=blocking") as blocking_client,
            anyio.create_task_group() as task_group,
        ):
            task_group.start_soon(read_bulk, bulk_client)
            await beating_client.read_event()
            await blocking_client.read_event()
            with anyio.fail_after(5):
                await blocked.wait()
                assert (await blocking_client.read_event()).data == "after"
                # Longer than the send timeout: the bulk stream's writes go on, heartbeats too.
                for _ in range(10):
                    heartbeat = await beating_client.receive_chunk()
                    assert heartbeat is not None
                    assert heartbeat.startswith(b": ping")
                await read_enough.wait()
            assert [end.reason for end in server.streams.recent_ends()] == []
            task_group.cancel_scope.cancel()
    assert not [r for r in caplog.records if "send_timeout" in r.getMessage()]
