"""The servers of the broker benchmark: one topic fanned out to SSE subscribers.

Every app here answers the same three requests:

- ``GET /events``: the topic as an event stream, live from the moment it is subscribed;
- ``POST /publish?count=N&rate=R&size=S``: publishes N events, R a second on a fixed
  schedule (0: as fast as it goes), and answers once the last is published. Each event's data
  is ``"<time_ns> <index>"``, stamped just before the event is published (or, by hand,
  encoded and fanned out), then S bytes of padding. Back to back, each app publishes all at
  once, the fastest way it has: the hand-written one extends each subscriber's queue once
  with the burst (``RawFanOut.publish_many``), the memory broker hands it to each subscriber
  that keeps up in one call (``publish_many``), the Redis broker appends it in one script
  (``publish_many``), which its reader takes in one read and hands on as the memory broker
  does;
- ``GET /statistics``: JSON, this process's ``pid`` and its subscriber counts.

:func:`streamkit_app` is streamkit's public API as its documentation shows it:
``topic_response`` over a :class:`~streamkit.broadcast.MemoryBroker` or
:class:`~streamkit.broadcast.RedisBroker`, in a Starlette app. :func:`raw_app` is the
baseline, a fan-out written by hand in plain ASGI (no Starlette, no streamkit), described in
its docstring. Both are configured alike: no heartbeats, a send timeout of
:data:`SEND_TIMEOUT` unless told otherwise, at most :data:`SUBSCRIBER_BUFFER` events waiting
per subscriber.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import anyio

from .apps import raw_lifespan
from .probe import ASGIApp, Receive, Scope, Send

__all__ = ["SEND_TIMEOUT", "SUBSCRIBER_BUFFER", "TOPIC", "raw_app", "send_json", "streamkit_app"]

TOPIC = "bench"
#: Seconds a write to a subscriber may block before its stream is ended, in every app.
SEND_TIMEOUT = 5.0
#: Events that may wait for one subscriber: streamkit's ``subscriber_buffer``, and the bound
#: of the hand-written app's queue.
SUBSCRIBER_BUFFER = 256
#: Events each broker keeps per topic (streamkit's default).
HISTORY_SIZE = 1000

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]


async def publish_paced(
    publish: Callable[[str], Awaitable[object]],
    *,
    count: int,
    rate: float,
    size: int,
    publish_all: Callable[[list[str]], Awaitable[object]] | None = None,
) -> None:
    """Publish *count* stamped events, *rate* a second (0: back to back), on a schedule
    fixed in advance: a late event is published at once, not pushed back with the rest.
    Back to back, *publish_all*, if given, publishes them all in one call."""
    padding = " " + "x" * size if size else ""
    if not rate and publish_all is not None:
        await publish_all([f"{time.time_ns()} {index}{padding}" for index in range(count)])
        return
    start = anyio.current_time()
    for index in range(count):
        if rate:
            await anyio.sleep_until(start + index / rate)
        await publish(f"{time.time_ns()} {index}{padding}")


def _publish_options(query: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "count": int(query["count"][-1]),
        "rate": float(query.get("rate", ["0"])[-1]),
        "size": int(query.get("size", ["0"])[-1]),
    }


# -- streamkit ----------------------------------------------------------------------------


def streamkit_app(
    broker_kind: str,
    *,
    redis_url: str | None = None,
    key_prefix: str = "",
    send_timeout: float = SEND_TIMEOUT,
) -> Any:
    """A Starlette app serving :data:`TOPIC` with ``streamkit.broadcast.topic_response``.

    :param broker_kind: ``"memory"`` or ``"redis"``.
    :param redis_url: the Redis server, for ``"redis"``.
    :param key_prefix: the Redis key prefix; processes serving the same topic share it.
    :param send_timeout: seconds a write to a subscriber may block.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    import streamkit.broadcast

    broker: streamkit.broadcast.MemoryBroker | streamkit.broadcast.RedisBroker
    if broker_kind == "memory":
        broker = streamkit.broadcast.MemoryBroker(
            history_size=HISTORY_SIZE, subscriber_buffer=SUBSCRIBER_BUFFER
        )
    elif broker_kind == "redis" and redis_url:
        broker = streamkit.broadcast.RedisBroker(
            redis_url,
            key_prefix=key_prefix or f"bench:{uuid.uuid4().hex}:",
            history_size=HISTORY_SIZE,
            subscriber_buffer=SUBSCRIBER_BUFFER,
        )
    else:
        raise ValueError(f"broker must be memory, or redis with a URL, got {broker_kind!r}")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with broker:
            yield

    async def events(request: Request) -> Response:
        return streamkit.broadcast.topic_response(
            broker, TOPIC, heartbeat_interval=None, send_timeout=send_timeout
        )

    publish_one: Callable[[str], Awaitable[object]]
    if isinstance(broker, streamkit.broadcast.MemoryBroker):
        memory = broker

        async def publish_one(data: str) -> None:
            # A plain function, as the hand-written publish is.
            memory.publish_nowait(TOPIC, data)

        # A burst handed to each subscriber in one call, as the hand-written publish_many
        # does, and sent by each stream in one write.
        publish_all = partial(memory.publish_many, TOPIC)
    else:
        publish_one = partial(broker.publish, TOPIC)  # a round trip to Redis each
        # A burst in one script, which the reader takes in one read.
        publish_all = partial(broker.publish_many, TOPIC)

    async def publish(request: Request) -> Response:
        options = _publish_options(parse_qs(request.url.query))
        await publish_paced(publish_one, publish_all=publish_all, **options)
        return JSONResponse({"published": options["count"]})

    async def statistics(request: Request) -> Response:
        return JSONResponse({"pid": os.getpid(), **asdict(broker.statistics())})

    return Starlette(
        routes=[
            Route("/events", events),
            Route("/publish", publish, methods=["POST"]),
            Route("/statistics", statistics),
        ],
        lifespan=lifespan,
    )


# -- by hand ------------------------------------------------------------------------------


class _Subscriber:
    __slots__ = ("frames", "scope", "wakeup", "writing_since")

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.frames: list[bytes] = []
        self.scope = scope
        self.wakeup: anyio.Event | None = None  # set while the writer waits for frames
        self.writing_since = 0.0  # when the write under way began; 0.0: none is


class RawFanOut:
    """The hand-written fan-out: a set of subscribers, each a bounded queue and a writer.

    ``publish`` encodes an event once and appends the one frame to every subscriber's queue,
    without waiting for anyone; each connection's writer sends what its queue holds (joined,
    one write) and a watcher beside it ends the connection at the disconnect. A subscriber is
    dropped, its connection cancelled, when an event finds its queue full
    (:data:`SUBSCRIBER_BUFFER` frames) or its write blocked for more than
    its send timeout: the publisher looks at each subscriber anyway, so that costs one
    comparison rather than a timer per write.

    A publisher that wrote to each ``send`` itself, in turn, would be simpler still, but one
    stalled client would hold every event up for the whole timeout, and on hypercorn's trio
    worker, which shields its socket writes from cancellation, until the kernel gives up on
    the connection.
    """

    def __init__(self, send_timeout: float = SEND_TIMEOUT) -> None:
        self.send_timeout = send_timeout
        self.subscribers: set[_Subscriber] = set()
        self.published = 0
        self.delivered = 0
        self.slow_disconnects = 0

    def publish(self, data: str) -> str:
        event_id, frame = self._encode(data)
        stalled_since = time.monotonic() - self.send_timeout
        slow = []
        for subscriber in self.subscribers:
            frames = subscriber.frames
            if len(frames) >= SUBSCRIBER_BUFFER or 0.0 < subscriber.writing_since < stalled_since:
                slow.append(subscriber)
                continue
            frames.append(frame)
            if subscriber.wakeup is not None:
                subscriber.wakeup.set()
                subscriber.wakeup = None
        self.delivered += len(self.subscribers) - len(slow)
        self._drop(slow)
        return event_id

    def publish_many(self, data: list[str]) -> list[str]:
        """Publish a burst: each event encoded once, and each subscriber's queue extended
        once with them all (a subscriber whose queue cannot take them all is dropped)."""
        ids, burst = [], []
        for item in data:
            event_id, frame = self._encode(item)
            ids.append(event_id)
            burst.append(frame)
        room = SUBSCRIBER_BUFFER - len(burst)
        stalled_since = time.monotonic() - self.send_timeout
        slow = []
        for subscriber in self.subscribers:
            frames = subscriber.frames
            if len(frames) > room or 0.0 < subscriber.writing_since < stalled_since:
                slow.append(subscriber)
                continue
            frames.extend(burst)
            if subscriber.wakeup is not None:
                subscriber.wakeup.set()
                subscriber.wakeup = None
        self.delivered += (len(self.subscribers) - len(slow)) * len(burst)
        self._drop(slow)
        return ids

    def _encode(self, data: str) -> tuple[str, bytes]:
        self.published += 1
        event_id = f"{time.time_ns() // 1_000_000}-{self.published}"
        return event_id, f"id: {event_id}\ndata: {data}\n\n".encode()

    def _drop(self, slow: list[_Subscriber]) -> None:
        for subscriber in slow:
            self.subscribers.discard(subscriber)
            subscriber.scope.cancel()
            self.slow_disconnects += 1

    async def stream(self, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        async with anyio.create_task_group() as task_group:
            subscriber = _Subscriber(task_group.cancel_scope)
            task_group.start_soon(_watch_disconnect, receive, task_group.cancel_scope)
            self.subscribers.add(subscriber)
            try:
                await self._write(subscriber, send)
            finally:
                self.subscribers.discard(subscriber)

    @staticmethod
    async def _write(subscriber: _Subscriber, send: Send) -> None:
        frames = subscriber.frames
        while True:
            if not frames:
                wakeup = subscriber.wakeup = anyio.Event()
                await wakeup.wait()
            body = b"".join(frames)
            frames.clear()
            subscriber.writing_since = time.monotonic()
            await send({"type": "http.response.body", "body": body, "more_body": True})
            subscriber.writing_since = 0.0

    def statistics(self) -> dict[str, int]:
        return {
            "pid": os.getpid(),
            "subscribers": len(self.subscribers),
            "published": self.published,
            "delivered": self.delivered,
            "slow_disconnects": self.slow_disconnects,
        }


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def send_json(send: Send, status: int, body: object) -> None:
    """Answer with *body* as JSON."""
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def raw_app(send_timeout: float = SEND_TIMEOUT) -> ASGIApp:
    """The baseline: :class:`RawFanOut` behind a plain ASGI router."""
    fanout = RawFanOut(send_timeout)

    async def publish(data: str) -> None:
        fanout.publish(data)

    async def publish_all(data: list[str]) -> None:
        fanout.publish_many(data)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await raw_lifespan(receive, send)
            return
        path = scope["path"]
        if path == "/events":
            await fanout.stream(receive, send)
        elif path == "/publish" and scope["method"] == "POST":
            options = _publish_options(parse_qs(scope["query_string"].decode()))
            await publish_paced(publish, publish_all=publish_all, **options)
            await send_json(send, 200, {"published": options["count"]})
        elif path == "/statistics":
            await send_json(send, 200, fanout.statistics())
        else:
            await send_json(send, 404, {"error": f"no {path}"})

    return app
