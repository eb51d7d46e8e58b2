"""The same two endpoints, written with each implementation the way its documentation shows.

``GET /events?size=N&seconds=S`` streams events whose data is N bytes, as fast as the client
takes them, for S seconds (forever without S) and then ends normally: the busy producer.
``GET /idle`` sends one ``ready`` event and then nothing but heartbeats: the idle producer.
Every producer counts itself in and, as the last step of its cleanup, awaits once (shielded,
the way cleanup that closes something must) and timestamps it.

Where an implementation has an option for a behaviour streamkit has (heartbeats, a send
timeout), it is set to the same value; where it has none, the hand-written apps do it by hand
and the others go without. Wire formats match to within a byte per event.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.lowlevel

from .probe import ASGIApp, Probe, Receive, Scope, Send

__all__ = ["IMPLEMENTATIONS", "AppSettings", "make_app"]


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


async def _cleanup(probe: Probe) -> None:
    # Stands for closing a resource: one real trip through the event loop.
    await anyio.lowlevel.checkpoint()
    probe.cleanup_done()


def _ends_at(seconds: float) -> float:
    return time.monotonic() + seconds if seconds > 0 else math.inf


#: A busy producer looks at the clock once every this many events (a power of two, minus 1).
CLOCK_MASK = 255
#: The hand-written producer yields to the event loop once every this many events (ditto).
YIELD_MASK = 15


SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]


def raw_app(probe: Probe, settings: AppSettings) -> ASGIApp:
    """The limit: plain ASGI, one task group per stream, nothing that is not needed.

    The producer writes itself and, while idle, times its own heartbeats; one task beside it
    watches for the disconnect, another for a write stuck past the send timeout.
    """
    heartbeat = b": ping\n\n"

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

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path = scope["path"]
        if path not in ("/events", "/idle"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        state = [0.0]

        async def write(body: bytes) -> None:
            state[0] = anyio.current_time()
            await send({"type": "http.response.body", "body": body, "more_body": True})
            state[0] = 0.0

        completed = False
        stream_scope = anyio.CancelScope()
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(watch_disconnect, receive, stream_scope)
            task_group.start_soon(watch_send, state, stream_scope)
            probe.stream_started()
            with stream_scope:
                try:
                    await send(
                        {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS}
                    )
                    if path == "/events":
                        query = parse_qs(scope["query_string"].decode())
                        payload = "x" * int(query.get("size", ["64"])[-1])
                        ends_at = _ends_at(float(query.get("seconds", ["0"])[-1]))
                        count = 0
                        while True:
                            await write(f"data: {payload}\n\n".encode())
                            count += 1
                            if not count & YIELD_MASK:
                                # hypercorn's asyncio worker returns from a send without
                                # yielding, even once the connection is gone: without this
                                # the disconnect watcher would never run.
                                await anyio.lowlevel.checkpoint()
                                if not count & CLOCK_MASK and time.monotonic() >= ends_at:
                                    break
                        completed = True
                    else:
                        await write(b"data: ready\n\n")
                        never = anyio.Event()
                        while True:
                            with anyio.move_on_after(settings.heartbeat_interval):
                                await never.wait()
                            await write(heartbeat)
                finally:
                    with anyio.move_on_after(settings.cleanup_timeout, shield=True):
                        await _cleanup(probe)
            task_group.cancel_scope.cancel()
        if completed:
            # Only now, with the watchers gone: hypercorn reports the disconnect that ends
            # a complete response from inside this very send, and a watcher cancelling it
            # there would leave the connection open.
            await send({"type": "http.response.body", "body": b""})

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def streamkit_app(probe: Probe, settings: AppSettings) -> ASGIApp:
    """streamkit: a producer handed ``send``; cleanup registered with the sender."""
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

    async def idle(request: Request) -> EventSourceResponse:
        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            probe.stream_started()
            send.push_async_callback(_cleanup, probe)
            await send(ServerSentEvent(data="ready"))
            await anyio.sleep_forever()

        return EventSourceResponse(produce, **options)

    return Starlette(routes=[Route("/events", events), Route("/idle", idle)])


def _generators(
    probe: Probe, settings: AppSettings, event: Callable[[str], Any], heartbeat: Any | None
) -> tuple[Callable[..., AsyncIterator[Any]], Callable[[], AsyncIterator[Any]]]:
    """The busy and idle async generators, each yielding what *event* makes of a payload.

    With *heartbeat* given, the idle one times its own heartbeats (for frameworks that send
    none); otherwise it just waits.
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

    return busy, idle


def _busy_arguments(request: Any) -> dict[str, Any]:
    query = request.query_params
    return {"size": int(query.get("size", "64")), "seconds": float(query.get("seconds", "0"))}


def starlette_app(probe: Probe, settings: AppSettings) -> ASGIApp:
    """Starlette's ``StreamingResponse`` over an async generator that frames SSE by hand."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    busy, idle_events = _generators(probe, settings, lambda data: f"data: {data}\n\n", ": ping\n\n")
    headers = {"cache-control": "no-store"}

    async def events(request: Request) -> StreamingResponse:
        stream = busy(**_busy_arguments(request))
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    async def idle(request: Request) -> StreamingResponse:
        return StreamingResponse(idle_events(), media_type="text/event-stream", headers=headers)

    return Starlette(routes=[Route("/events", events), Route("/idle", idle)])


def sse_starlette_app(probe: Probe, settings: AppSettings) -> ASGIApp:
    """sse-starlette's ``EventSourceResponse`` over an async generator of dicts (its README)."""
    from sse_starlette import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    busy, idle_events = _generators(probe, settings, lambda data: {"data": data}, None)
    options: dict[str, Any] = {
        "ping": settings.heartbeat_interval,
        "send_timeout": settings.send_timeout,
        "sep": "\n",
    }

    async def events(request: Request) -> EventSourceResponse:
        return EventSourceResponse(busy(**_busy_arguments(request)), **options)

    async def idle(request: Request) -> EventSourceResponse:
        return EventSourceResponse(idle_events(), **options)

    return Starlette(routes=[Route("/events", events), Route("/idle", idle)])


def fastapi_app(probe: Probe, settings: AppSettings) -> ASGIApp:
    """FastAPI's own SSE (``fastapi.sse``, FastAPI >= 0.135): a path operation that yields
    ``ServerSentEvent(raw_data=...)`` with ``response_class=EventSourceResponse``.

    Its heartbeat interval is the module constant ``fastapi.routing._PING_INTERVAL`` (15 s),
    which FastAPI's tests patch; so does this.
    """
    import fastapi.routing
    from fastapi import FastAPI
    from fastapi.sse import EventSourceResponse, ServerSentEvent

    fastapi.routing._PING_INTERVAL = settings.heartbeat_interval  # type: ignore[attr-defined]
    busy, idle_events = _generators(
        probe, settings, lambda data: ServerSentEvent(raw_data=data), None
    )
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    # The generators are the path operations themselves: ``size`` and ``seconds`` are query
    # parameters.
    app.get("/events", response_class=EventSourceResponse)(busy)
    app.get("/idle", response_class=EventSourceResponse)(idle_events)
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
