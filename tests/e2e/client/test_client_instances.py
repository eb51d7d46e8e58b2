"""A client moved from one instance to another: two server processes (one on each backend)
share a topic through one Redis, behind a small TCP forwarder standing in for a load
balancer. The client follows the topic through it; the forwarder is pointed at the second
instance and the first is shut down (SIGTERM: its streams end with the ``shutdown`` farewell
and its ``retry:``), and the client, reconnecting with its ``Last-Event-ID``, gets from the
second what was published meanwhile (from the Redis history), then the live events: every
event once, in order.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import httpx
import pytest

from streamkit.client import Backoff, open_event_stream

if TYPE_CHECKING:
    from support.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

TESTS = Path(__file__).resolve().parents[2]
#: Events published in all; the client is moved after MOVE_AT of them.
TOTAL = 200
MOVE_AT = 80


async def _read_line(stream: anyio.abc.ByteReceiveStream) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        line += await stream.receive(1)
    return line


@asynccontextmanager
async def instance(
    stack: AsyncExitStack, backend: str, redis_url: str, prefix: str
) -> AsyncIterator[tuple[anyio.abc.Process, int]]:
    """One ``support.topic_service`` process; SIGTERM, then its exit checked, on the way out."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), *filter(None, [environment.get("PYTHONPATH")])]
    )
    command = [sys.executable, "-m", "support.topic_service", backend, redis_url, prefix]
    async with await anyio.open_process(command, env=environment, stderr=None) as process:
        try:
            assert process.stdout is not None
            with anyio.fail_after(30):
                port = int(await _read_line(process.stdout))
            yield process, port
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    assert process.returncode == 0, f"{backend} instance exited with {process.returncode}"


@asynccontextmanager
async def forwarder(target: list[int]) -> AsyncIterator[int]:
    """Forward each new connection to 127.0.0.1:``target[0]`` (read when it connects)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)

    async def pipe(
        source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, scope: anyio.CancelScope
    ) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()  # one side ended: end both, as a proxy does

    async def handle(client: anyio.abc.SocketStream) -> None:
        async with client:
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", target[0])
            except OSError:
                return
            async with upstream, anyio.create_task_group() as task_group:
                task_group.start_soon(pipe, client, upstream, task_group.cancel_scope)
                task_group.start_soon(pipe, upstream, client, task_group.cancel_scope)

    async with listener, anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, handle)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        task_group.cancel_scope.cancel()


async def test_a_client_moved_between_two_instances_sharing_redis_misses_nothing(
    anyio_backend: str, redis: RedisServer
) -> None:
    other = "trio" if anyio_backend == "asyncio" else "asyncio"
    prefix = f"test:{uuid.uuid4().hex}:"
    published: list[str] = []  # the id of each event, data i at index i
    received: list[tuple[str, str | None]] = []
    on_first = 0
    async with AsyncExitStack() as stack:
        first, first_port = await stack.enter_async_context(
            instance(stack, anyio_backend, redis.url, prefix)
        )
        _, second_port = await stack.enter_async_context(instance(stack, other, redis.url, prefix))
        target = [first_port]
        through = await stack.enter_async_context(forwarder(target))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        alive = [first_port, second_port]

        async def publish(i: int) -> None:
            port = alive[i % len(alive)]
            response = await http.post(f"http://127.0.0.1:{port}/topics/t", content=str(i))
            response.raise_for_status()
            published.append(response.text)

        await publish(0)
        moved = anyio.Event()

        async def publish_all() -> None:
            for i in range(1, TOTAL + 1):
                if i == MOVE_AT + 20:
                    await moved.wait()  # some are published while the client is away
                await publish(i)
                await anyio.sleep(0.005)

        async def move() -> None:
            target[0] = second_port
            alive.remove(first_port)
            first.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                await first.wait()
            moved.set()

        async with (
            anyio.create_task_group() as task_group,
            open_event_stream(
                f"http://127.0.0.1:{through}/topics/t",
                last_event_id=published[0],
                heartbeat_interval=1.0,
                backoff=Backoff(initial_delay=0.05, max_reconnect_time=30.0),
            ) as stream,
        ):
            task_group.start_soon(publish_all)
            with anyio.fail_after(60):
                async for event in stream:
                    if event.event is not None:
                        assert event.event == "shutdown"  # the first instance's farewell
                        continue
                    received.append((event.data or "", event.id))
                    if stream.statistics().connections == 1:
                        on_first = len(received)
                    if len(received) == MOVE_AT:
                        task_group.start_soon(move)
                    if len(received) == TOTAL:
                        break
            statistics = stream.statistics()

    assert received == [(str(i), published[i]) for i in range(1, TOTAL + 1)]
    assert statistics.connections == 2
    assert statistics.resets == 0
    print(
        f"\ntwo instances ({anyio_backend} then {other}): published {len(published) - 1}, "
        f"client received {len(received)} ({len(set(received))} distinct): {on_first} from "
        f"the first instance, {len(received) - on_first} from the second"
    )
