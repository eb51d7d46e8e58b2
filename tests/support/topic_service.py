"""A service of one route per topic over a shared :class:`~streamkit.broadcast.RedisBroker`:
GET ``/topics/{topic}`` streams it, POST publishes the body to it and answers the new id.

Run as ``python -m support.topic_service BACKEND REDIS_URL KEY_PREFIX``, it serves on a free
port of 127.0.0.1 and prints the port on its first line; SIGTERM shuts it down gracefully.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from streamkit import serve
from streamkit.broadcast import RedisBroker, topic_response


def make_app(redis_url: str, key_prefix: str) -> Starlette:
    """The service, over a broker of its own on *redis_url*."""
    broker = RedisBroker(redis_url, key_prefix=key_prefix)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with broker:
            yield

    async def events(request: Request) -> Response:
        return topic_response(broker, request.path_params["topic"], heartbeat_interval=1.0)

    async def publish(request: Request) -> Response:
        body = (await request.body()).decode()
        return PlainTextResponse(await broker.publish(request.path_params["topic"], body))

    return Starlette(
        routes=[
            Route("/topics/{topic}", events, methods=["GET"]),
            Route("/topics/{topic}", publish, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


async def _main(redis_url: str, key_prefix: str) -> None:
    app = make_app(redis_url, key_prefix)
    async with anyio.create_task_group() as task_group:
        address = await task_group.start(partial(serve, app, bind="127.0.0.1:0", grace_period=2.0))
        print(address.port, flush=True)


if __name__ == "__main__":
    anyio.run(_main, sys.argv[2], sys.argv[3], backend=sys.argv[1])
