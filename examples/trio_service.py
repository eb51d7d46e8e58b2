"""A trio-native service: ``trio.run``, the service's own nursery, and ``streamkit.serve`` in it.

A sampler task, started in the service's nursery beside the server, reads a (simulated) sensor
every second and hands each reading to every subscriber; each ``/readings`` stream subscribes
with a trio memory channel for as long as its client stays. Run it, then
``curl -N http://127.0.0.1:8000/readings``::

    python examples/trio_service.py

Ctrl+C (or SIGTERM) drains the streams first: each client gets a ``shutdown`` event with a
``retry:`` hint, and the sampler stops once the server has.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamkit import EventSourceResponse, ServerAddress, ServerSentEvent, StreamSender, serve


class Readings:
    """Hands every reading to every subscriber; one that falls behind skips readings."""

    def __init__(self) -> None:
        self._subscribers: set[trio.MemorySendChannel[float]] = set()

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[float]]:
        send_channel, receive_channel = trio.open_memory_channel[float](8)
        self._subscribers.add(send_channel)
        try:
            with send_channel, receive_channel:
                yield receive_channel
        finally:
            self._subscribers.discard(send_channel)

    def publish(self, value: float) -> None:
        for channel in self._subscribers:
            try:
                channel.send_nowait(value)
            except trio.WouldBlock:
                pass  # a slow client skips a reading rather than holding up the others


async def sample(readings: Readings, interval: float) -> None:
    """Read the sensor every *interval* seconds, for as long as the service runs."""
    step = 0
    while True:
        readings.publish(20.0 + 2.0 * math.sin(step / 10))
        step += 1
        await trio.sleep(interval)


def create_app(readings: Readings) -> Starlette:
    async def stream_readings(request: Request) -> Response:
        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            with readings.subscribe() as channel:
                async for value in channel:
                    await send(ServerSentEvent(event="reading", data=f"{value:.2f}"))

        return EventSourceResponse(produce, heartbeat_interval=5.0)

    return Starlette(routes=[Route("/readings", stream_readings)])


async def main(
    *,
    bind: str = "127.0.0.1:8000",
    interval: float = 1.0,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[ServerAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until SIGINT or SIGTERM, or until *shutdown_trigger* returns.

    :param bind: ``HOST:PORT`` to listen on.
    :param interval: seconds between two readings.
    :param shutdown_trigger: an async function whose return begins shutdown.
    :param task_status: started with the server's address, for ``nursery.start``.
    """
    readings = Readings()
    app = create_app(readings)
    async with trio.open_nursery() as service:
        service.start_soon(sample, readings, interval)
        async with trio.open_nursery() as server:
            address = await server.start(
                partial(serve, app, bind=bind, grace_period=5.0, shutdown_trigger=shutdown_trigger)
            )
            task_status.started(address)
        service.cancel_scope.cancel()  # the server has stopped: so does the sampler


if __name__ == "__main__":
    # It takes no options: --help says so, and any other is refused, not ignored.
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    logging.basicConfig(level=logging.INFO)
    trio.run(main)
