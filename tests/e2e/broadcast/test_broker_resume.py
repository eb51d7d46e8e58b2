"""Resume across servers: two server processes share one Redis, one on asyncio and one on
trio. A client reads from the first, leaves, and reconnects to the second with its
``Last-Event-ID``: it gets exactly what it missed, then the live events.

Run as a script, this module is the server: ``python test_broker_resume.py BACKEND REDIS_URL``
serves the app below with :func:`streamkit.serve` and prints its port.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from streamkit import serve
from streamkit.broadcast import RedisBroker, topic_response
from streamkit.testing import open_stream

if TYPE_CHECKING:
    # Not at run time: run as a script, this module has no tests/ on its path.
    from support.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def make_app(redis_url: str) -> Starlette:
    """Serve ``/topics/{topic}``: GET streams it, POST publishes the body to it."""
    broker = RedisBroker(redis_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with broker:
            yield

    async def events(request: Request) -> Response:
        return topic_response(broker, request.path_params["topic"])

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


async def serve_and_print_port(redis_url: str) -> None:
    async with anyio.create_task_group() as task_group:
        address = await task_group.start(
            partial(serve, make_app(redis_url), bind="127.0.0.1:0", grace_period=5.0)
        )
        print(address.port, flush=True)


# -- the test ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    backend: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


async def _read_line(stream: anyio.abc.ByteReceiveStream) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        line += await stream.receive(1)
    return line


@asynccontextmanager
async def server_processes(redis_url: str, *backends: str) -> AsyncIterator[list[Endpoint]]:
    """Start one server process per backend, all at once; SIGTERM them on the way out and
    check they stopped cleanly."""
    async with AsyncExitStack() as stack:
        processes = []
        for backend in backends:
            process = await anyio.open_process(
                [sys.executable, str(Path(__file__)), backend, redis_url], stderr=None
            )
            processes.append(await stack.enter_async_context(process))

            async def stop(process: anyio.abc.Process = process) -> None:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                    raise AssertionError(f"server process {process.pid} ignored SIGTERM for 10 s")
                assert process.returncode == 0

            stack.push_async_callback(stop)
        endpoints = []
        with anyio.fail_after(30):
            for backend, process in zip(backends, processes, strict=True):
                assert process.stdout is not None
                port = int(await _read_line(process.stdout))
                endpoints.append(Endpoint("127.0.0.1", port, backend))
        yield endpoints


async def test_resume_across_an_asyncio_server_and_a_trio_server(redis: RedisServer) -> None:
    async with (
        server_processes(redis.url, "asyncio", "trio") as (first, second),
        httpx.AsyncClient(timeout=10) as http,
    ):
        published: dict[str, str] = {}

        async def publish(server: Endpoint, data: str) -> str:
            response = await http.post(f"{server.url}/topics/t", content=data)
            response.raise_for_status()
            published[data] = response.text
            return response.text

        await publish(second, "0")
        # Each connection resumes from an id, so no event depends on when it subscribed.
        headers = {"last-event-id": published["0"]}
        async with open_stream(first, "/topics/t", headers=headers) as client:
            for i in range(1, 5):
                await publish((first, second)[i % 2], str(i))
            with anyio.fail_after(10):
                received = [await client.read_event() for _ in range(4)]
            assert [(e.data, e.id) for e in received] == [
                (str(i), published[str(i)]) for i in range(1, 5)
            ]
            await client.close()
        for i in range(5, 10):
            await publish((first, second)[i % 2], str(i))
        headers = {"last-event-id": published["4"]}
        async with open_stream(second, "/topics/t", headers=headers) as client:
            with anyio.fail_after(10):
                replayed = [await client.read_event() for _ in range(5)]
                await publish(first, "10")
                live = await client.read_event()
            assert [(e.data, e.id) for e in [*replayed, live]] == [
                (str(i), published[str(i)]) for i in range(5, 11)
            ]


if __name__ == "__main__":
    anyio.run(serve_and_print_port, sys.argv[2], backend=sys.argv[1])
