"""The same endpoints, written with each implementation the way its documentation shows.

Producers of different shapes, each ``GET /PATH?size=N&...`` with events whose data is N bytes:

- ``/events?seconds=S``, the busy producer: sends as fast as the client takes the events,
  never awaiting anything but the send, for S seconds (forever without S), then ends normally.
- ``/checkpoint?seconds=S``: the same, awaiting ``anyio.lowlevel.checkpoint()`` after each
  event, as a producer that awaits something before each item does.
- ``/upstream?seconds=S``: a task started for the stream (the upstream) sends payloads into a
  memory object stream of :data:`UPSTREAM_BUFFER` items, as fast as they are taken, for S
  seconds, then closes it; the producer sends each payload it reads as an event, until the
  upstream has closed. The upstream task is the stream's resource: it counts the stream in,
  and its cleanup, once it has ended, is the one the probe records.
- ``/ticks?rate=R``: an event every 1/R seconds (50 by default), on a schedule from the
  stream's start, so that a late event is not made up for by a longer wait, forever.
- ``/idle``: one ``ready`` event and then nothing but heartbeats.

Every producer (the upstream task, for ``/upstream``) counts itself in and, as the last step
of its cleanup, awaits once (shielded, the way cleanup that closes something must) and
timestamps it.

Where an implementation has an option for a behaviour streamkit has (heartbeats, a send
timeout), it is set to the same value; where it has none, the hand-written apps do it by hand
and the others go without. Wire formats match to within a byte per event.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .probe import ASGIApp, Probe, Receive, Scope, Send

__all__ = [
    "IMPLEMENTATIONS",
    "SHAPES",
    "UPSTREAM_BUFFER",
    "AppSettings",
    "make_app",
    "raw_lifespan",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class AppSettings:
    """What every implementation is configured with.

    :param heartbeat_interval: seconds between heartbeats on an idle stream.
    :param send_timeout: seconds a write may block before the stream is abandoned, where the
        implementation can do that.
    :param cleanup_timeout: the bound on the producer's shielded cleanup.
    """

    heartbeat_interval: float = 5.0
    send_timeout: float = 10.0
    cleanup_timeout: float = 5.0


#: The paths of the producers a throughput measurement can read, by shape.
SHAPES = {"busy": "/events", "checkpoint": "/checkpoint", "upstream": "/upstream"}
#: The capacity of the memory object stream between an upstream task and its producer.
UPSTREAM_BUFFER = 8
#: Events per second of a ``/ticks`` stream unless its ``rate`` says otherwise.
TICK_RATE = 50.0


async def _cleanup(probe: Probe) -> None:
    # Stands for closing a resource: one real trip through the event loop.
    await anyio.lowlevel.checkpoint()
    probe.cleanup_done()


def _ends_at(seconds: float) -> float:
    return time.monotonic() + seconds if seconds > 0 else math.inf


#: A busy producer looks at the clock once every this many events (a power of two, minus 1).
CLOCK_MASK = 255
#: The hand-written busy producer yields to the event loop once every this many events (ditto).
YIELD_MASK = 15


async def feed_upstream(
    probe: Probe,
    settings: AppSettings,
    sender: MemoryObjectSendStream[str],
    payload: str,
    ends_at: float,
) -> None:
    """The upstream task of a ``/upstream`` stream: send *payload* into *sender* as fast as it
    is taken until *ends_at* (``time.monotonic()``), then close it; or until cancelled, or
    the producer has closed its end."""
    probe.stream_started()
    try:
        async with sender:
            count = 0
            while True:
                await sender.send(payload)
                count += 1
                if not count & CLOCK_MASK and time.monotonic() >= ends_at:
                    return
    except anyio.BrokenResourceError:
        pass  # the producer has gone, and the stream with it: nobody is left to tell
    finally:
        with anyio.move_on_after(settings.cleanup_timeout, shield=True):
            await _cleanup(probe)


def _upstream(
    probe: Probe, settings: AppSettings, size: int, seconds: float
) -> tuple[Callable[[], Any], MemoryObjectReceiveStream[str]]:
    """A ``/upstream`` stream's upstream task, ready to start, and the stream it feeds."""
    sender, receiver = anyio.create_memory_object_stream[str](UPSTREAM_BUFFER)
    feed = partial(feed_upstream, probe, settings, sender, "x" * size, _ends_at(seconds))
    return feed, receiver


SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
HEARTBEAT = b": ping\n\n"
ROUTES = frozenset([*SHAPES.values(), "/ticks", "/idle"])
Write = Callable[[bytes], Awaitable[None]]


def raw_app(probe: Probe, settings: AppSettings) -> ASGIApp:
    """The limit: plain ASGI, one task group per stream, nothing that is not needed.

    The producer writes itself. One task beside it watches for the disconnect, another for a
    write stuck past the send timeout. Heartbeats are timed by whatever knows when the stream
    goes quiet, at no cost per event: the idle and the ticking producers time their own; the
    upstream stream has a third task that wakes once per interval after the last write began.
    """

    async def watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def watch_send(state: list[float], scope: anyio.CancelScope) -> None:
        # Cheap to arm: the writer only stores when its write began (0.0: none pending).
        while True:
            since = state[0]
            if not since:
                await anyio.sleep(settings.send_timeout)
                continue
            await anyio.sleep_until(since + settings.send_timeout)
            if state[0] == since:
                scope.cancel()
                return

    async def keep_alive(state: list[float], send: Send, scope: anyio.CancelScope) -> None:
        # Its heartbeat does not go through the producer's write(), whose state the send
        # watchdog follows, so it bounds that write itself.
        interval = settings.heartbeat_interval
        while True:
            due = state[1] + interval
            now = anyio.current_time()
            if now < due:
                await anyio.sleep_until(due)
            elif state[0]:
                await anyio.sleep(interval)  # a write is pending: the send watchdog's business
            else:
                state[1] = now
                with anyio.move_on_after(settings.send_timeout) as timeout:
                    await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
                if timeout.cancelled_caught:
                    scope.cancel()
                    return

    async def busy(write: Write, payload: str, ends_at: float) -> None:
        count = 0
        while True:
            await write(f"data: {payload}\n\n".encode())
            count += 1
            if not count & YIELD_MASK:
                # hypercorn's asyncio worker returns from a send without yielding, even once
                # the connection is gone: without this the disconnect watcher would never run.
                await anyio.lowlevel.checkpoint()
                if not count & CLOCK_MASK and time.monotonic() >= ends_at:
                    return

    async def checkpoint(write: Write, payload: str, ends_at: float) -> None:
        count = 0
        while True:
            await write(f"data: {payload}\n\n".encode())
            await anyio.lowlevel.checkpoint()
            count += 1
            if not count & CLOCK_MASK and time.monotonic() >= ends_at:
                return

    async def forward(write: Write, receiver: MemoryObjectReceiveStream[str]) -> None:
        async with receiver:
            async for payload in receiver:
                await write(f"data: {payload}\n\n".encode())

    async def ticks(write: Write, payload: str, rate: float) -> None:
        interval, beat = 1.0 / rate, settings.heartbeat_interval
        next_at = last = anyio.current_time()
        while True:
            while next_at - last > beat:  # slower than the heartbeats: beat in between
                last += beat
                await anyio.sleep_until(last)
                await write(HEARTBEAT)
            await anyio.sleep_until(next_at)
            await write(f"data: {payload}\n\n".encode())
            last = next_at
            next_at += interval

    async def idle(write: Write) -> None:
        await write(b"data: ready\n\n")
        never = anyio.Event()
        while True:
            with anyio.move_on_after(settings.heartbeat_interval):
                await never.wait()
            await write(HEARTBEAT)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await raw_lifespan(receive, send)
            return
        path = scope["path"]
        if path not in ROUTES:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
        size, seconds = int(query.get("size", "64")), float(query.get("seconds", "0"))
        payload, ends_at = "x" * size, _ends_at(seconds)
        # When the pending write began (0.0: none pending), and when the last one did.
        state = [0.0, anyio.current_time()]

        async def write(body: bytes) -> None:
            state[0] = state[1] = anyio.current_time()
            await send({"type": "http.response.body", "body": body, "more_body": True})
            state[0] = 0.0

        completed = False
        fed = path == SHAPES["upstream"]  # the upstream task counts the stream in and out
        stream_scope = anyio.CancelScope()
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(watch_disconnect, receive, stream_scope)
            task_group.start_soon(watch_send, state, stream_scope)
            if not fed:
                probe.stream_started()
            with stream_scope:
                try:
                    await send(
                        {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS}
                    )
                    if path == SHAPES["busy"]:
                        await busy(write, payload, ends_at)
                    elif path == SHAPES["checkpoint"]:
                        await checkpoint(write, payload, ends_at)
                    elif fed:
                        feed, receiver = _upstream(probe, settings, size, seconds)
                        task_group.start_soon(feed)
                        task_group.start_soon(keep_alive, state, send, stream_scope)
                        await forward(write, receiver)
                    elif path == "/ticks":
                        await ticks(write, payload, float(query.get("rate", TICK_RATE)))
                    else:
                        await idle(write)
                    completed = True
                finally:
                    if not fed:
                        with anyio.move_on_after(settings.cleanup_timeout, shield=True):
                            await _cleanup(probe)
            task_group.cancel_scope.cancel()
        if completed:
            # Only now, with the watchers gone: hypercorn reports the disconnect that ends
            # a complete response from inside this very send, and a watcher cancelling it
            # there would leave the connection open.
            await send({"type": "http.response.body", "body": b""})

    return app


async def raw_lifespan(receive: Receive, send: Send) -> None:
    """The lifespan protocol of a hand-written app: nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def streamkit_app(probe: Probe, settings: AppSettings) -> ASGIApp:
    """streamkit: a producer handed ``send``; cleanup registered with the sender; the upstream
    task in a task group of the producer's own."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    from streamkit import EventSourceResponse, ServerSentEvent, StreamSender

    options: dict[str, Any] = {
        "heartbeat_interval": settings.heartbeat_interval,
        "send_timeout": settings.send_timeout,
        "cleanup_timeout": settings.cleanup_timeout,
    }

    async def events(request: Request) -> EventSourceResponse:
        payload = "x" * int(request.query_params.get("size", "64"))
        ends_at = _ends_at(float(request.query_params.get("seconds", "0")))

        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            probe.stream_started()
            send.push_async_callback(_cleanup, probe)
            count = 0
            while True:
                await send(ServerSentEvent(data=payload))
                count += 1
                if not count & CLOCK_MASK and time.monotonic() >= ends_at:
                    return

        return EventSourceResponse(produce, **options)

    async def checkpoint(request: Request) -> EventSourceResponse:
        payload = "x" * int(request.query_params.get("size", "64"))
        ends_at = _ends_at(float(request.query_params.get("seconds", "0")))

        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            probe.stream_started()
            send.push_async_callback(_cleanup, probe)
            count = 0
            while True:
                await send(ServerSentEvent(data=payload))
                await anyio.lowlevel.checkpoint()
                count += 1
                if not count & CLOCK_MASK and time.monotonic() >= ends_at:
                    return

        return EventSourceResponse(produce, **options)

    async def upstream(request: Request) -> EventSourceResponse:
        feed, receiver = _upstream(probe, settings, **_busy_arguments(request))

        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            async with anyio.create_task_group() as task_group, receiver:
                task_group.start_soon(feed)
                async for payload in receiver:
                    await send(ServerSentEvent(data=payload))

        return EventSourceResponse(produce, **options)

    async def ticks(request: Request) -> EventSourceResponse:
        payload = "x" * int(request.query_params.get("size", "64"))
        interval = 1.0 / float(request.query_params.get("rate", TICK_RATE))

        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            probe.stream_started()
            send.push_async_callback(_cleanup, probe)
            next_at = anyio.current_time()
            while True:
                await anyio.sleep_until(next_at)
                await send(ServerSentEvent(data=payload))
                next_at += interval

        return EventSourceResponse(produce, **options)

    async def idle(request: Request) -> EventSourceResponse:
        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            probe.stream_started()
            send.push_async_callback(_cleanup, probe)
            await send(ServerSentEvent(data="ready"))
            await anyio.sleep_forever()

        return EventSourceResponse(produce, **options)

    endpoints = {"busy": events, "checkpoint": checkpoint, "upstream": upstream}
    routes = [Route(SHAPES[shape], endpoint) for shape, endpoint in endpoints.items()]
    return Starlette(routes=[*routes, Route("/ticks", ticks), Route("/idle", idle)])


@dataclass(frozen=True, slots=True)
class _Generators:
    """A generator-based implementation's producers, each yielding what its ``event`` makes of
    a payload."""

    busy: Callable[..., AsyncIterator[Any]]
    checkpoint: Callable[..., AsyncIterator[Any]]
    forward: Callable[[MemoryObjectReceiveStream[str]], AsyncIterator[Any]]
    ticks: Callable[..., AsyncIterator[Any]]
    idle: Callable[[], AsyncIterator[Any]]


def _generators(
    probe: Probe, settings: AppSettings, event: Callable[[str], Any], heartbeat: Any | None
) -> _Generators:
    """The async generators of a framework that streams what a generator yields.

    With *heartbeat* given, the idle one times its own heartbeats (for frameworks that send
    none); otherwise it just waits. The others are never idle for long (the upstream one, as
    long as its upstream is not), and time none.
    """

    async def busy(size: int, seconds: float = 0.0) -> AsyncIterator[Any]:
        payload = "x" * size
        ends_at = _ends_at(seconds)
        probe.stream_started()
        try:
            count = 0
            while True:
                yield event(payload)
                count += 1
                if not count & CLOCK_MASK and time.monotonic() >= ends_at:
                    return
        finally:
            with anyio.move_on_after(settings.cleanup_timeout, shield=True):
                await _cleanup(probe)

    async def checkpoint(size: int, seconds: float = 0.0) -> AsyncIterator[Any]:
        payload = "x" * size
        ends_at = _ends_at(seconds)
        probe.stream_started()
        try:
            count = 0
            while True:
                yield event(payload)
                await anyio.lowlevel.checkpoint()
                count += 1
                if not count & CLOCK_MASK and time.monotonic() >= ends_at:
                    return
        finally:
            with anyio.move_on_after(settings.cleanup_timeout, shield=True):
                await _cleanup(probe)

    async def forward(receiver: MemoryObjectReceiveStream[str]) -> AsyncIterator[Any]:
        # The upstream task counts the stream in and out; this only passes its payloads on.
        async with receiver:
            async for payload in receiver:
                yield event(payload)

    async def ticks(size: int = 64, rate: float = TICK_RATE) -> AsyncIterator[Any]:
        payload = "x" * size
        interval = 1.0 / rate
        probe.stream_started()
        try:
            next_at = anyio.current_time()
            while True:
                await anyio.sleep_until(next_at)
                yield event(payload)
                next_at += interval
        finally:
            with anyio.move_on_after(settings.cleanup_timeout, shield=True):
                await _cleanup(probe)

    async def idle() -> AsyncIterator[Any]:
        probe.stream_started()
        try:
            yield event("ready")
            if heartbeat is None:
                await anyio.sleep_forever()
            never = anyio.Event()
            while True:
                with anyio.move_on_after(settings.heartbeat_interval):
                    await never.wait()
                yield heartbeat
        finally:
            with anyio.move_on_after(settings.cleanup_timeout, shield=True):
                await _cleanup(probe)

    return _Generators(busy, checkpoint, forward, ticks, idle)


def _busy_arguments(request: Any) -> dict[str, Any]:
    query = request.query_params
    return {"size": int(query.get("size", "64")), "seconds": float(query.get("seconds", "0"))}


def _tick_arguments(request: Any) -> dict[str, Any]:
    query = request.query_params
    return {"size": int(query.get("size", "64")), "rate": float(query.get("rate", TICK_RATE))}


def starlette_app(probe: Probe, settings: AppSettings) -> ASGIApp:
    """Starlette's ``StreamingResponse`` over an async generator that frames SSE by hand.

    Starlette has no place for a task beside a response, and a task group inside the
    generator would be exited by whichever task finalizes the generator (PEP 789): the
    upstream task runs in a task group around the response instead, in a subclass.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    class FedStreamingResponse(StreamingResponse):
        """A ``StreamingResponse`` with a task that feeds it, run beside it and cancelled
        once the response is done, however it ended."""

        def __init__(self, content: Any, *, feed: Callable[[], Any], **arguments: Any) -> None:
            super().__init__(content, **arguments)
            self.feed = feed

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self.feed)
                await super().__call__(scope, receive, send)
                task_group.cancel_scope.cancel()

    generators = _generators(probe, settings, lambda data: f"data: {data}\n\n", ": ping\n\n")
    media: dict[str, Any] = {
        "media_type": "text/event-stream",
        "headers": {"cache-control": "no-store"},
    }

    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(generators.busy(**_busy_arguments(request)), **media)

    async def checkpoint(request: Request) -> StreamingResponse:
        return StreamingResponse(generators.checkpoint(**_busy_arguments(request)), **media)

    async def upstream(request: Request) -> StreamingResponse:
        feed, receiver = _upstream(probe, settings, **_busy_arguments(request))
        return FedStreamingResponse(generators.forward(receiver), feed=feed, **media)

    async def ticks(request: Request) -> StreamingResponse:
        return StreamingResponse(generators.ticks(**_tick_arguments(request)), **media)

    async def idle(request: Request) -> StreamingResponse:
        return StreamingResponse(generators.idle(), **media)

    endpoints = {"busy": events, "checkpoint": checkpoint, "upstream": upstream}
    routes = [Route(SHAPES[shape], endpoint) for shape, endpoint in endpoints.items()]
    return Starlette(routes=[*routes, Route("/ticks", ticks), Route("/idle", idle)])


def sse_starlette_app(probe: Probe, settings: AppSettings) -> ASGIApp:
    """sse-starlette's ``EventSourceResponse`` over an async generator of dicts (its README);
    the upstream task is its ``data_sender_callable``, as its README's memory stream example
    has it."""
    from sse_starlette import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    generators = _generators(probe, settings, lambda data: {"data": data}, None)
    options: dict[str, Any] = {
        "ping": settings.heartbeat_interval,
        "send_timeout": settings.send_timeout,
        "sep": "\n",
    }

    async def events(request: Request) -> EventSourceResponse:
        return EventSourceResponse(generators.busy(**_busy_arguments(request)), **options)

    async def checkpoint(request: Request) -> EventSourceResponse:
        return EventSourceResponse(generators.checkpoint(**_busy_arguments(request)), **options)

    async def upstream(request: Request) -> EventSourceResponse:
        feed, receiver = _upstream(probe, settings, **_busy_arguments(request))
        return EventSourceResponse(
            generators.forward(receiver), data_sender_callable=feed, **options
        )

    async def ticks(request: Request) -> EventSourceResponse:
        return EventSourceResponse(generators.ticks(**_tick_arguments(request)), **options)

    async def idle(request: Request) -> EventSourceResponse:
        return EventSourceResponse(generators.idle(), **options)

    endpoints = {"busy": events, "checkpoint": checkpoint, "upstream": upstream}
    routes = [Route(SHAPES[shape], endpoint) for shape, endpoint in endpoints.items()]
    return Starlette(routes=[*routes, Route("/ticks", ticks), Route("/idle", idle)])


def fastapi_app(probe: Probe, settings: AppSettings) -> ASGIApp:
    """FastAPI's own SSE (``fastapi.sse``, FastAPI >= 0.135): a path operation that yields
    ``ServerSentEvent(raw_data=...)`` with ``response_class=EventSourceResponse``.

    The upstream task runs in a task group of a dependency with ``yield``, which FastAPI
    exits once the response is done, in the request's task.

    Its heartbeat interval is the module constant ``fastapi.routing._PING_INTERVAL`` (15 s),
    which FastAPI's tests patch; so does this.
    """
    import fastapi.routing
    from fastapi import Depends, FastAPI
    from fastapi.sse import EventSourceResponse, ServerSentEvent

    fastapi.routing._PING_INTERVAL = settings.heartbeat_interval  # type: ignore[attr-defined]
    generators = _generators(probe, settings, lambda data: ServerSentEvent(raw_data=data), None)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    async def open_upstream(
        size: int = 64, seconds: float = 0.0
    ) -> AsyncIterator[MemoryObjectReceiveStream[str]]:
        feed, receiver = _upstream(probe, settings, size, seconds)
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(feed)
            yield receiver
            task_group.cancel_scope.cancel()

    async def upstream(
        # A default rather than Annotated[...]: this module's annotations are strings, which
        # FastAPI resolves in the module's namespace, where open_upstream is not.
        receiver: MemoryObjectReceiveStream[str] = Depends(open_upstream),  # noqa: B008
    ) -> AsyncIterator[Any]:
        async with receiver:
            async for payload in receiver:
                yield ServerSentEvent(raw_data=payload)

    # The other generators are the path operations themselves: their arguments are query
    # parameters.
    route = partial(app.get, response_class=EventSourceResponse)
    route(SHAPES["busy"])(generators.busy)
    route(SHAPES["checkpoint"])(generators.checkpoint)
    route(SHAPES["upstream"])(upstream)
    route("/ticks")(generators.ticks)
    route("/idle")(generators.idle)
    return app


#: The implementations, by the name the runner and the server take.
IMPLEMENTATIONS: dict[str, Callable[[Probe, AppSettings], ASGIApp]] = {
    "raw": raw_app,
    "streamkit": streamkit_app,
    "starlette": starlette_app,
    "sse-starlette": sse_starlette_app,
    "fastapi": fastapi_app,
}


def make_app(impl: str, probe: Probe, settings: AppSettings) -> ASGIApp:
    """The ASGI app for *impl*, with the control endpoints beside it.

    :raises ValueError: *impl* is not one of :data:`IMPLEMENTATIONS`.
    """
    from .probe import with_probe

    try:
        factory = IMPLEMENTATIONS[impl]
    except KeyError:
        raise ValueError(
            f"unknown implementation {impl!r}; choose from {', '.join(IMPLEMENTATIONS)}"
        ) from None
    return with_probe(factory(probe, settings), probe)
