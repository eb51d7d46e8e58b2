"""The stream runtime through real hypercorn, on asyncio and trio, with clients that leave.

Bounds asserted here are generous (a loaded 2-core CI machine); the figures they guard are
measured in bench/ and reported there.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import streamkit._runtime
from streamkit import (
    EndReason,
    EventSourceResponse,
    NDJSONResponse,
    ServerSentEvent,
    StreamEnd,
    StreamResponse,
    StreamSender,
    registry,
    shielded_cleanup,
)
from streamkit.testing import (
    NDJSONReader,
    SSEReader,
    StreamClient,
    open_h2_stream,
    open_server,
    open_stream,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: A disconnect must reach the producer within this (measured: about 1 ms).
DISCONNECT_BOUND = 1.0
KINDS = ["sse", "ndjson", "bytes"]


class Probe:
    """What a test's producer did, with timestamps."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cleaned = anyio.Event()
        self.produced = 0
        self.cancelled_at: float | None = None
        self.cleaned_at: float | None = None
        self.ends: list[StreamEnd] = []
        self.background_ran: list[EndReason] = []

    async def cleanup(self) -> None:
        await anyio.sleep(0.01)  # awaited cleanup, like closing an upstream client
        self.cleaned_at = anyio.current_time()
        self.cleaned.set()


def item(kind: str, n: int, size: int = 8) -> Any:
    if kind == "sse":
        return ServerSentEvent(data=str(n).zfill(size), id=str(n))
    if kind == "ndjson":
        return {"n": n, "pad": "x" * size}
    return f"{n:0{size}d}\n"


def respond(kind: str, content: Any, probe: Probe, **options: Any) -> Response:
    options.setdefault("on_end", probe.ends.append)
    ends = probe.ends

    async def after() -> None:
        probe.background_ran.append(ends[-1].reason)

    options.setdefault("background", BackgroundTask(after))
    if kind == "sse":
        return EventSourceResponse(content, **options)
    if kind == "ndjson":
        return NDJSONResponse(content, **options)
    return StreamResponse(content, **options)


def producer(
    kind: str, probe: Probe, *, count: int | None, pace: float | None, size: int = 8
) -> Any:
    """A producer of *count* items (endless if None), *pace* seconds apart (flat out if None),
    with an awaited cleanup registered through send."""

    async def produce(send: StreamSender[Any]) -> None:
        send.push_async_callback(probe.cleanup)
        probe.started.set()
        try:
            n = 0
            while count is None or n < count:
                await send(item(kind, n, size))
                probe.produced += 1
                n += 1
                if pace is not None:
                    await anyio.sleep(pace)
        except BaseException:
            probe.cancelled_at = anyio.current_time()
            raise

    return produce


def app_for(route: Callable[[Request], Any]) -> Starlette:
    return Starlette(routes=[Route("/stream", route)])


async def read_one(client: StreamClient, kind: str) -> None:
    if kind == "sse":
        await client.read_event()
    elif kind == "ndjson":
        await client.read_item()
    else:
        await client.receive_chunk()


# -- completion -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", ["producer", "iterable"])
async def test_a_stream_completes_and_reports_once(kind: str, form: str) -> None:
    probe = Probe()

    async def gen() -> AsyncIterator[Any]:
        for n in range(5):
            yield item(kind, n)

    async def route(request: Request) -> Response:
        content = producer(kind, probe, count=5, pace=None) if form == "producer" else gen()
        return respond(kind, content, probe)

    before = registry.statistics().ended[EndReason.COMPLETED]
    async with open_server(app_for(route)) as server, open_stream(server, "/stream") as client:
        body = await client.read_all()
        end = await server.wait_ended(EndReason.COMPLETED)
    assert client.complete, "the body must end with its terminator"
    assert client.status == 200
    expected_type = {"sse": "text/event-stream", "ndjson": "application/x-ndjson"}
    assert client.headers["content-type"].startswith(
        expected_type.get(kind, "application/octet-stream")
    )
    if kind == "sse":
        assert body.count(b"\n\n") == 5
    else:
        assert body.count(b"\n") == 5
    assert (end.items_sent, end.bytes_sent) == (5, len(body))
    assert probe.ends == [end]
    assert probe.background_ran == [EndReason.COMPLETED]
    assert registry.statistics().ended[EndReason.COMPLETED] == before + 1


async def test_a_head_request_gets_the_headers_and_is_no_stream_ended() -> None:
    # A HEAD never runs the producer: it is not counted as a stream that completed, logged or
    # handed to on_end, which a GET after it is.
    probe = Probe()

    async def route(request: Request) -> Response:
        return respond("sse", producer("sse", probe, count=2, pace=None), probe, background=None)

    app = Starlette(routes=[Route("/stream", route, methods=["GET", "HEAD"])])
    async with open_server(app) as server:
        async with open_stream(server, "/stream", method="HEAD") as client:
            assert client.status == 200
            assert client.headers["content-type"].startswith("text/event-stream")
            with anyio.fail_after(5):
                assert await client.read_all() == b""
        assert not probe.started.is_set()
        async with open_stream(server, "/stream") as client:
            with anyio.fail_after(5):
                assert [event.data async for event in client.events()] == ["00000000", "00000001"]
        end = await server.wait_end()
        assert server.streams.statistics().ended[EndReason.COMPLETED] == 1
    assert (end.reason, end.items_sent) == (EndReason.COMPLETED, 2)
    assert probe.ends == [end]


# -- disconnects ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pace", [None, 3600.0], ids=["busy", "idle"])
@pytest.mark.parametrize("how", ["close", "reset", "half_close"])
async def test_a_disconnect_cancels_the_producer_and_cleanup_completes(
    kind: str, pace: float | None, how: str
) -> None:
    probe = Probe()

    async def route(request: Request) -> Response:
        return respond(kind, producer(kind, probe, count=None, pace=pace), probe)

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream") as client:
            await read_one(client, kind)
            left_at = anyio.current_time()
            await getattr(client, how)()
            end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert probe.cancelled_at is not None
    assert probe.cleaned_at is not None
    assert probe.cancelled_at - left_at < DISCONNECT_BOUND
    assert probe.cleaned_at >= probe.cancelled_at, "the awaited cleanup ran after the cancel"
    assert probe.ends == [end]
    assert probe.background_ran == [EndReason.CLIENT_DISCONNECTED]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pace", [None, 3600.0], ids=["busy", "idle"])
async def test_an_http2_rst_stream_is_a_disconnect(kind: str, pace: float | None) -> None:
    probe = Probe()

    async def route(request: Request) -> Response:
        return respond(kind, producer(kind, probe, count=None, pace=pace), probe)

    async with open_server(app_for(route)) as server:
        async with open_h2_stream(server, "/stream") as client:
            await read_one(client, kind)
            left_at = anyio.current_time()
            await client.reset_stream()
            end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert probe.cancelled_at is not None
    assert probe.cleaned_at is not None
    assert probe.cancelled_at - left_at < DISCONNECT_BOUND
    assert probe.ends == [end]


@pytest.mark.parametrize("kind", KINDS)
async def test_an_http2_stream_completes(kind: str) -> None:
    probe = Probe()

    async def route(request: Request) -> Response:
        return respond(kind, producer(kind, probe, count=5, pace=None), probe)

    async with open_server(app_for(route)) as server, open_h2_stream(server, "/stream") as client:
        body = await client.read_all()
        end = await server.wait_ended(EndReason.COMPLETED)
    assert client.complete
    assert (end.items_sent, end.bytes_sent) == (5, len(body))


async def test_a_producer_that_never_awaits_does_not_pin_the_loop() -> None:
    """An async generator that yields flat out, never awaiting: the runtime checkpoints."""
    yielded = 0
    closed = anyio.Event()

    async def flat_out() -> AsyncIterator[str]:
        nonlocal yielded
        try:
            while True:
                yielded += 1
                yield "x" * 1024
        finally:
            closed.set()

    async def route(request: Request) -> Response:
        return StreamResponse(flat_out())

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream") as client:
            await client.receive_chunk()
            await client.reset()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        with anyio.fail_after(DISCONNECT_BOUND):
            await closed.wait()
        # The loop is free: the server still answers.
        async with open_stream(server, "/stream") as second:
            assert await second.receive_chunk()


async def test_an_async_generator_is_closed_in_the_task_group_with_awaited_cleanup() -> None:
    """aclose() runs shielded, so awaits in the generator's finally complete; a plain await in
    a finally reached by the cancellation itself is cancelled (the known trap)."""
    record: list[str] = []
    done = anyio.Event()

    async def at_a_yield() -> AsyncIterator[str]:
        try:
            yield "first"
            await anyio.sleep_forever()
            yield "never"
        finally:
            try:
                await anyio.sleep(0.01)
                record.append("plain await in finally completed")
            except anyio.get_cancelled_exc_class():
                record.append("plain await in finally cancelled")
                raise
            finally:
                with shielded_cleanup(1.0):
                    await anyio.sleep(0.01)
                    record.append("shielded cleanup completed")
                done.set()

    async def route(request: Request) -> Response:
        return StreamResponse(at_a_yield())

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream") as client:
            assert await client.receive_chunk() == b"first"
            await client.close()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        with anyio.fail_after(DISCONNECT_BOUND):
            await done.wait()
    assert record == ["plain await in finally cancelled", "shielded cleanup completed"]


async def test_a_resource_entered_through_send_is_closed_shielded() -> None:
    events: list[str] = []
    closed = anyio.Event()

    class Upstream:
        async def __aenter__(self) -> Upstream:
            events.append("opened")
            return self

        async def __aexit__(self, *exc_info: object) -> None:
            await anyio.sleep(0.02)  # e.g. an HTTP client draining its pool
            events.append("closed")
            closed.set()

    async def produce(send: StreamSender[str]) -> None:
        await send.enter_async_context(Upstream())
        await send("data: opened\n\n")
        await anyio.sleep_forever()

    async def route(request: Request) -> Response:
        return EventSourceResponse(produce)

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream") as client:
            await client.read_event()
            await client.reset()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert events == ["opened", "closed"]
    assert end.cleanup_duration >= 0.02


@pytest.mark.parametrize(
    ("ending", "outcome"), [("complete", "commit"), ("reset", "rollback"), ("error", "rollback")]
)
async def test_resources_entered_through_send_see_how_the_producer_ended(
    ending: str, outcome: str
) -> None:
    """A transaction entered through send commits only when the producer finished."""
    outcomes: list[str] = []
    closed = anyio.Event()

    @asynccontextmanager
    async def transaction() -> AsyncIterator[None]:
        try:
            yield
        except BaseException:
            await anyio.sleep(0.01)  # an awaited rollback, shielded by the runtime
            outcomes.append("rollback")
            raise
        else:
            outcomes.append("commit")
        finally:
            closed.set()

    async def produce(send: StreamSender[Any]) -> None:
        await send.enter_async_context(transaction())
        await send({"row": 1})
        if ending == "error":
            raise RuntimeError("query failed")
        if ending == "reset":
            await anyio.sleep_forever()

    async def route(request: Request) -> Response:
        return NDJSONResponse(produce)

    async with open_server(app_for(route)) as server, open_stream(server, "/stream") as client:
        assert await client.read_item() == {"row": 1}
        if ending == "reset":
            await client.reset()
        with anyio.fail_after(DISCONNECT_BOUND):
            await closed.wait()
    assert outcomes == [outcome]


# -- heartbeats -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sse", "ndjson"])
async def test_heartbeats_fill_silence(kind: str) -> None:
    probe = Probe()

    async def route(request: Request) -> Response:
        return respond(
            kind, producer(kind, probe, count=None, pace=3600.0), probe, heartbeat_interval=0.05
        )

    sse, ndjson = SSEReader(), NDJSONReader()
    async with open_server(app_for(route)) as server, open_stream(server, "/stream") as client:
        with anyio.fail_after(5):
            while (len(sse.comments) if kind == "sse" else ndjson.blank_lines) < 3:
                chunk = await client.receive_chunk()
                assert chunk is not None
                (sse if kind == "sse" else ndjson).feed(chunk)
    if kind == "sse":
        assert set(sse.comments) == {"ping"}


async def test_no_heartbeat_when_disabled_or_when_data_flows() -> None:
    async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
        for n in range(10):
            await send(str(n))
            await anyio.sleep(0.02)

    async def route(request: Request) -> Response:
        disabled = request.query_params.get("off") == "1"
        return EventSourceResponse(produce, heartbeat_interval=None if disabled else 0.1)

    async with open_server(app_for(route)) as server:
        for query in ("?off=1", ""):
            async with open_stream(server, "/stream" + query) as client:
                events = [event async for event in client.events()]
            assert [event.data for event in events] == [str(n) for n in range(10)]
            assert client.comments == []


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_disconnect_is_seen_while_timers_keep_waking_the_watcher(how: str) -> None:
    """Heartbeats every 2 ms: the watcher's wait for the disconnect is interrupted each time,
    and the disconnect must still be taken, once."""
    probe = Probe()

    async def route(request: Request) -> Response:
        content = producer("sse", probe, count=None, pace=3600.0)
        return respond("sse", content, probe, heartbeat_interval=0.002, send_timeout=5.0)

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream") as client:
            await client.read_event()
            beats = SSEReader()
            with anyio.fail_after(5):
                while len(beats.comments) < 20:
                    chunk = await client.receive_chunk()
                    assert chunk is not None
                    beats.feed(chunk)
            left_at = anyio.current_time()
            await getattr(client, how)()
            end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert probe.cancelled_at is not None
    assert probe.cleaned_at is not None
    assert probe.cancelled_at - left_at < DISCONNECT_BOUND
    assert probe.cleaned_at - left_at < DISCONNECT_BOUND, "the awaited cleanup finished"
    assert probe.ends == [end]


@pytest.mark.parametrize("beat", ["comment", "event"])
async def test_heartbeat_writes_count_for_the_send_timeout(beat: str) -> None:
    """A stalled client and a silent producer: only heartbeats are written, and they stall,
    be they comments or events a page can see."""

    async def silent(send: StreamSender[ServerSentEvent | str]) -> None:
        await anyio.sleep_forever()

    async def route(request: Request) -> Response:
        big = "h" * 65536  # fills the socket buffers in a few beats
        if beat == "event":
            return EventSourceResponse(
                silent,
                heartbeat_interval=0.01,
                heartbeat_event=lambda: ServerSentEvent(event="ping", data={"pad": big}),
                send_timeout=0.3,
            )
        return EventSourceResponse(
            silent, heartbeat_interval=0.01, heartbeat_comment=big, send_timeout=0.3
        )

    async with (
        open_server(app_for(route)) as server,
        open_stream(server, "/stream", receive_buffer=4096),
    ):
        end = await server.wait_ended(EndReason.SEND_TIMEOUT, within=10)
    assert end.items_sent == 0


# -- stalled clients --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stalled_client_ends_with_send_timeout_and_memory_stays_bounded(kind: str) -> None:
    probe = Probe()
    send_timeout, buffer_size = 0.3, 4

    async def route(request: Request) -> Response:
        content = producer(kind, probe, count=None, pace=None, size=32768)
        return respond(kind, content, probe, send_timeout=send_timeout, buffer_size=buffer_size)

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream", receive_buffer=4096) as client:
            await client.receive_chunk()
            stalled_at = anyio.current_time()
            end = await server.wait_ended(EndReason.SEND_TIMEOUT, within=10)
            with anyio.fail_after(5):
                await probe.cleaned.wait()
            assert probe.cleaned_at is not None
            assert probe.cleaned_at - stalled_at < send_timeout + 1.0
            # The producer was held by the buffer: beyond what was written, at most one
            # write's worth of frames (up to the buffer again) and a full buffer.
            assert probe.produced <= end.items_sent + 2 * buffer_size + 1
    assert probe.background_ran == [EndReason.SEND_TIMEOUT]


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_client_that_leaves_while_the_producers_farewell_is_written(leave: str) -> None:
    # The producer ends the stream itself after a farewell too large for a client that
    # stopped reading; the client then leaves. Nothing more need be written: the stream ends
    # then, with the producer's reason, not at send_timeout (none here, so never). hypercorn
    # lets a write to a lost connection return; a server that raises OSError there (ASGI 2.4)
    # left such a stream waiting for ever, which tests/test_sender.py covers on FakeConnection.
    returned = anyio.Event()
    ends: list[StreamEnd] = []

    async def produce(send: StreamSender[Any]) -> None:
        await send("first")
        await send("farewell " + "x" * (8 << 20))
        send.end(EndReason.SEND_TIMEOUT)
        returned.set()

    async def route(request: Request) -> Response:
        return EventSourceResponse(
            produce, send_timeout=None, heartbeat_interval=None, on_end=ends.append
        )

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream", receive_buffer=4096) as client:
            assert (await client.read_event()).data == "first"
            client.stall()
            with anyio.fail_after(5):
                await returned.wait()  # the farewell is queued, and being written
            await (client.reset() if leave == "reset" else client.close())
            left_at = anyio.current_time()
            end = await server.wait_ended(EndReason.SEND_TIMEOUT, within=DISCONNECT_BOUND + 2)
            ended_after = anyio.current_time() - left_at
    assert ended_after < DISCONNECT_BOUND
    assert end.path == "/stream"
    assert [e.reason for e in ends] == [EndReason.SEND_TIMEOUT]


async def test_a_client_that_stalls_after_a_quiet_spell_ends_with_send_timeout() -> None:
    # The send timeout is a timer set at a write when none is: the one set at the first write
    # goes off during the quiet spell with nothing under way, and the flood must set it again.
    probe = Probe()
    send_timeout = 0.3
    flood_started_at: float | None = None

    async def produce(send: StreamSender[str]) -> None:
        nonlocal flood_started_at
        send.push_async_callback(probe.cleanup)
        await send("first\n")
        await anyio.sleep(send_timeout * 3)  # quiet, three send timeouts long
        flood_started_at = anyio.current_time()
        while True:
            await send("x" * 32768 + "\n")
            probe.produced += 1

    async def route(request: Request) -> Response:
        return respond("bytes", produce, probe, send_timeout=send_timeout, buffer_size=4)

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream", receive_buffer=4096) as client:
            assert await client.receive_chunk() == b"first\n"
            client.stall()
            end = await server.wait_ended(EndReason.SEND_TIMEOUT, within=10)
            with anyio.fail_after(5):
                await probe.cleaned.wait()
    assert flood_started_at is not None
    assert probe.cleaned_at is not None
    # No sooner than a write has been blocked for send_timeout; soon after that.
    assert send_timeout * 0.99 <= probe.cleaned_at - flood_started_at < send_timeout + 1.0
    assert end.items_sent >= 1
    assert probe.background_ran == [EndReason.SEND_TIMEOUT]


async def test_a_send_its_producer_gave_up_on_leaves_no_write_to_time_out() -> None:
    """A producer drops an item a slow client is not taking in time (``move_on_after`` around
    its send): on asyncio that send was the producer's own write, and, given up, it was still
    timed as a write under way, ending a stream whose client went on reading with
    SEND_TIMEOUT, its connection cut, a send timeout later."""
    send_timeout = 1.0
    dropped = anyio.Event()
    drained = anyio.Event()

    async def produce(send: StreamSender[str]) -> None:
        await send("first\n")
        while True:
            with anyio.move_on_after(0.2) as scope:
                await send("x" * 65536 + "\n")
            if scope.cancelled_caught:
                break
            await anyio.sleep(0.01)  # awaits between items: the producer writes them itself
        dropped.set()
        await drained.wait()
        await anyio.sleep(2 * send_timeout)  # quiet, past the dropped send's timeout
        await send("last\n")

    async def route(request: Request) -> Response:
        return StreamResponse(produce, send_timeout=send_timeout)

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream", receive_buffer=4096) as client:
            assert (await client.receive_chunk() or b"").startswith(b"first")
            # Not read from now on: the server's writes back up until the producer gives up.
            with anyio.fail_after(10):
                await dropped.wait()
            drained.set()
            with anyio.fail_after(10):
                body = await client.read_all()
        await server.wait_ended(EndReason.COMPLETED)
    assert body.endswith(b"\nlast\n")
    assert client.complete


async def test_a_stalled_client_of_a_producer_that_gives_up_its_sends_is_timed_out() -> None:
    """A producer drops each item its client is not taking in time (``move_on_after`` around
    its send) and its client stops reading: on asyncio each send was the producer's own
    write, each given up and the next one timed afresh, so send_timeout never ended the
    stream (the kernel cut the connection only at stalled_connection_timeout, and under a
    server that sets none, each given-up write was left in its buffer)."""
    send_timeout = 0.5

    async def produce(send: StreamSender[str]) -> None:
        await send("first\n")
        while True:
            with anyio.move_on_after(0.1):
                await send("x" * 65536 + "\n")
            await anyio.sleep(0.01)  # awaits between items: the producer writes them itself

    async def route(request: Request) -> Response:
        return StreamResponse(produce, send_timeout=send_timeout)

    async with open_server(app_for(route), stalled_connection_timeout=30.0) as server:
        async with open_stream(server, "/stream", receive_buffer=4096) as client:
            assert (await client.receive_chunk() or b"").startswith(b"first")
            client.stall()
            stalled_at = anyio.current_time()
            end = await server.wait_ended(EndReason.SEND_TIMEOUT, within=10)
    assert anyio.current_time() - stalled_at < send_timeout + 2.0
    assert end.cleanup_duration < 1.0


async def test_a_stalled_clients_end_counts_the_items_it_was_given() -> None:
    # A write given up at send_timeout may have reached the client in part: on trio, the
    # last small items were joined with a large one into one write, which never returned, and
    # the end reported fewer items (none at all, had they been the first) than the client read.
    received = 5

    async def produce(send: StreamSender[str]) -> None:
        for n in range(received):
            await send(f"item {n}\n")
        while True:
            await send("x" * 32768 + "\n")

    async def route(request: Request) -> Response:
        return StreamResponse(produce, send_timeout=0.3, buffer_size=4)

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream", receive_buffer=4096) as client:
            read = b""
            with anyio.fail_after(5):
                while read.count(b"\n") < received:
                    read += await client.receive_chunk() or b""
            client.stall()
            end = await server.wait_ended(EndReason.SEND_TIMEOUT, within=10)
    assert end.items_sent >= received
    assert end.bytes_sent >= len(read)


async def test_a_stalled_client_the_kernel_gives_up_is_no_error_in_the_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # send_timeout longer than stalled_connection_timeout: the kernel aborts the connection
    # first. On asyncio, hypercorn's worker met the abort (ETIMEDOUT) as it closed the
    # connection, and asyncio logged "Unhandled exception in client_connected_cb" at ERROR,
    # with its traceback, for each client that stopped reading.
    async def produce(send: StreamSender[str]) -> None:
        while True:
            await send("x" * 65536 + "\n")

    async def route(request: Request) -> Response:
        return StreamResponse(produce, send_timeout=30.0)

    async with open_server(app_for(route), stalled_connection_timeout=0.5) as server:
        async with open_stream(server, "/stream", receive_buffer=4096) as client:
            assert await client.receive_chunk()
            client.stall()
            await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=10)
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, caplog.text


# -- deadlines and errors ---------------------------------------------------------------------


async def test_max_duration_ends_with_deadline_and_a_final_event() -> None:
    probe = Probe()

    async def route(request: Request) -> Response:
        return respond(
            "sse",
            producer("sse", probe, count=None, pace=0.01),
            probe,
            max_duration=0.2,
            deadline_event=ServerSentEvent(event="deadline", data="", retry=5000),
        )

    async with open_server(app_for(route)) as server, open_stream(server, "/stream") as client:
        events = [event async for event in client.events()]
        end = await server.wait_ended(EndReason.DEADLINE)
    assert client.complete
    assert events[-1] == ServerSentEvent(event="deadline", data="", retry=5000)
    assert 0.2 <= end.duration < 2.0
    assert probe.cleaned.is_set()
    assert probe.background_ran == [EndReason.DEADLINE]


@pytest.mark.parametrize("ending", ["deadline", "shutdown"])
async def test_a_stalled_client_at_a_deadline_or_shutdown_is_released_at_once(ending: str) -> None:
    """max_duration passes, or the server shuts down, while a write to a client that stopped
    reading is stuck: the producer's cleanup runs at once, and the end, for its own reason,
    is reported once the stuck write gives up at send_timeout (its closing event unwritten)."""
    probe = Probe()
    send_timeout = 2.0
    max_duration = 0.4 if ending == "deadline" else None
    reason = EndReason.DEADLINE if ending == "deadline" else EndReason.SHUTDOWN
    made_at: float | None = None
    sending = anyio.Event()

    async def produce(send: StreamSender[Any]) -> None:
        send.push_async_callback(probe.cleanup)
        await send("first")
        sending.set()
        # More than the kernel's buffers on both sides hold: its write never completes.
        await send("x" * (8 << 20))
        await anyio.sleep_forever()

    async def route(request: Request) -> Response:
        nonlocal made_at
        made_at = anyio.current_time()  # before the stream's first write, which sets its timer
        return respond(
            "sse",
            produce,
            probe,
            send_timeout=send_timeout,
            max_duration=max_duration,
            deadline_event=ServerSentEvent(event="deadline", data="", retry=5000),
        )

    async with open_server(app_for(route)) as server, anyio.create_task_group() as task_group:
        async with open_stream(server, "/stream", receive_buffer=4096) as client:
            assert (await client.read_event()).data == "first"
            client.stall()
            with anyio.fail_after(5):
                await sending.wait()
            assert made_at is not None
            if ending == "shutdown":
                decided_at = anyio.current_time()
                task_group.start_soon(server.shutdown)
            else:
                decided_at = made_at + 0.4
            end = await server.wait_ended(reason, within=send_timeout + 5)
            reported_at = anyio.current_time()
    assert made_at is not None
    assert probe.cleaned_at is not None
    assert probe.cleaned_at - decided_at < DISCONNECT_BOUND
    assert send_timeout * 0.99 <= reported_at - made_at < send_timeout + 3.0
    assert end.cleanup_duration < DISCONNECT_BOUND
    assert probe.background_ran == [reason]


@pytest.mark.parametrize("kind", ["sse", "ndjson"])
async def test_a_producer_error_is_reported_and_the_body_still_ends_properly(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    probe = Probe()

    async def failing(send: StreamSender[Any]) -> None:
        send.push_async_callback(probe.cleanup)
        await send(item(kind, 0))
        raise RuntimeError("secret upstream detail")

    async def route(request: Request) -> Response:
        if kind == "ndjson":
            return respond(kind, failing, probe, error_item={"error": "internal"})
        return respond(kind, failing, probe)

    with caplog.at_level(logging.INFO, logger="streamkit"):
        async with open_server(app_for(route)) as server, open_stream(server, "/stream") as client:
            body = await client.read_all()
            end = await server.wait_ended(EndReason.ERROR)
    assert client.complete, "the chunked terminator must be sent after an error"
    assert b"secret" not in body
    if kind == "sse":
        assert body.endswith(b"event: error\ndata: \n\n")
    else:
        assert body.endswith(b'{"error":"internal"}\n')
    assert isinstance(end.exception, RuntimeError)
    assert probe.cleaned.is_set()
    assert probe.background_ran == [EndReason.ERROR]
    errors = [record for record in caplog.records if record.name == "streamkit"]
    assert len(errors) == 1
    assert errors[0].levelno == logging.ERROR
    assert errors[0].exc_info


async def test_an_item_that_cannot_be_encoded_is_an_error_naming_it() -> None:
    async def produce(send: StreamSender[Any]) -> None:
        await send({"ok": 1})
        await send({"bad": object()})

    async def route(request: Request) -> Response:
        return NDJSONResponse(produce)

    async with open_server(app_for(route)) as server, open_stream(server, "/stream") as client:
        assert await client.read_item() == {"ok": 1}
        await client.read_all()
        end = await server.wait_ended(EndReason.ERROR)
    assert isinstance(end.exception, TypeError)
    assert "'bad'" in str(end.exception)


async def test_a_producer_can_decide_its_own_end_reason_and_its_last_items_still_go_out() -> None:
    async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
        for n in range(3):
            await send(str(n))
        await send(ServerSentEvent(event="too-slow", data="", retry=5000))
        send.end(EndReason.SEND_TIMEOUT)
        await anyio.sleep_forever()  # cancelled: the end is decided

    async def route(request: Request) -> Response:
        return EventSourceResponse(produce)

    async with open_server(app_for(route)) as server, open_stream(server, "/stream") as client:
        events = [event async for event in client.events()]
        end = await server.wait_ended(EndReason.SEND_TIMEOUT)
    assert [event.data for event in events] == ["0", "1", "2", ""]
    assert events[-1].event == "too-slow"
    assert client.complete
    assert end.items_sent == 4


# -- Last-Event-ID ----------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "seen"), [("41", "41"), ("bad\x01id", None), (None, None)])
async def test_the_producer_sees_a_valid_last_event_id(
    header: str | None, seen: str | None
) -> None:
    async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
        await send(ServerSentEvent(data=repr(send.last_event_id)))

    async def route(request: Request) -> Response:
        return EventSourceResponse(produce)

    headers = {} if header is None else {"last-event-id": header}
    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream", headers=headers) as client:
            event = await client.read_event()
    assert client.status == 200
    assert event.data == repr(seen)


# -- registry and introspection ---------------------------------------------------------------


async def test_streams_that_ended_are_not_held_by_their_timers() -> None:
    """A stream's deadline and idle timers an hour off are cancelled as it ends; on trio they
    held it, and all it holds (its response, its buffer, its request's context), for that
    hour: every short stream of a route with a max_duration piled up."""

    async def produce(send: StreamSender[str]) -> None:
        await send("done")

    async def route(request: Request) -> Response:
        return EventSourceResponse(produce, max_duration=3600, idle_timeout=3600)

    def streams_alive() -> list[str]:
        gc.collect()
        kind = streamkit._runtime._Stream
        alive = [item.path for item in gc.get_objects() if type(item) is kind]
        return [path for path in alive if path == "/timed"]  # not another test's

    app = Starlette(routes=[Route("/timed", route)])
    async with open_server(app) as server:
        for _ in range(5):
            async with open_stream(server, "/timed") as client:
                assert [event.data async for event in client.events()] == ["done"]
            await server.wait_ended(EndReason.COMPLETED)
    # The server has stopped, every stream's task returned: only a timer could hold one now
    # (on trio, the run's timers outlive the server).
    assert streams_alive() == []


async def test_the_registry_sees_active_streams() -> None:
    probe = Probe()

    async def route(request: Request) -> Response:
        return respond("sse", producer("sse", probe, count=None, pace=3600.0), probe)

    async with open_server(app_for(route)) as server:
        async with open_stream(server, "/stream") as client:
            await client.read_event()
            (active,) = server.streams.active_streams()
            assert active.path == "/stream"
            assert active.client is not None
            assert active.items_sent == 1  # counted as its write began
            assert server.streams.statistics().active == 1
            assert registry.statistics().active >= 1
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        assert server.streams.statistics().active == 0
