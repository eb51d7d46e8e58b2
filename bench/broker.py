"""Broadcast benchmarks: ``python -m bench.broker`` (``--quick`` for small counts).

For each broker (memory, Redis) and each hypercorn worker (asyncio, trio), a server process
serves one topic with :func:`streamkit.broadcast.topic_response`; this process opens 1, 100
and 1,000 SSE subscribers to it over real sockets and measures:

- publish-to-socket latency, p50 and p99: the server stamps each event with
  ``time.perf_counter_ns()`` just before ``publish``; a subscriber subtracts it from the same
  clock (CLOCK_MONOTONIC, shared by the processes) when the event's line arrives;
- deliveries per second per core: events x subscribers, over the server's CPU time (from
  ``/proc``) for a burst published as fast as it goes;
- memory per idle subscriber: the server's RSS growth over the subscribers it holds, divided.

Redis is a ``redis-server`` started here on a free port (Debian's package). Run it alone on
the machine: the figures are only as quiet as the machine is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from functools import partial

import anyio
from anyio.abc import SocketStream

from .proc import cpu_seconds, rss_bytes
from .server import raise_open_file_limit

TOPIC = "bench"


# -- the server process ---------------------------------------------------------------------


def make_app(broker_kind: str, redis_url: str | None) -> object:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    import streamkit.broadcast

    broker: streamkit.broadcast.MemoryBroker | streamkit.broadcast.RedisBroker
    if broker_kind == "memory":
        broker = streamkit.broadcast.MemoryBroker(history_size=20_000, subscriber_buffer=256)
    else:
        assert redis_url is not None
        broker = streamkit.broadcast.RedisBroker(
            redis_url, key_prefix=f"bench:{uuid.uuid4().hex}:", history_size=20_000,
            subscriber_buffer=256,
        )  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with broker:
            yield

    async def events(request: Request) -> Response:
        return streamkit.broadcast.topic_response(
            broker, TOPIC, heartbeat_interval=None, send_timeout=60.0
        )

    async def publish(request: Request) -> Response:
        count = int(request.query_params["count"])
        interval = float(request.query_params.get("interval", "0"))
        for index in range(count):
            await broker.publish(TOPIC, f"{time.perf_counter_ns()} {index}")
            if interval:
                await anyio.sleep(interval)
        return JSONResponse({"published": count})

    async def statistics(request: Request) -> Response:
        return JSONResponse(asdict(broker.statistics()))

    return Starlette(
        routes=[
            Route("/events", events),
            Route("/publish", publish, methods=["POST"]),
            Route("/statistics", statistics),
        ],
        lifespan=lifespan,
    )


async def serve(broker_kind: str, redis_url: str | None) -> None:
    import streamkit

    app = make_app(broker_kind, redis_url)
    async with anyio.create_task_group() as task_group:
        address = await task_group.start(
            lambda task_status: streamkit.serve(
                app,  # type: ignore[arg-type]
                bind="127.0.0.1:0",
                grace_period=2.0,
                task_status=task_status,
            )
        )
        print(json.dumps({"port": address.port, "pid": os.getpid()}), flush=True)


# -- this process: subscribers and measurements -------------------------------------------------


@dataclass
class Server:
    port: int
    pid: int


async def request(server: Server, method: str, target: str) -> dict[str, object]:
    """One HTTP/1.1 request on a connection of its own; the JSON body of the answer."""
    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        head = f"{method} {target} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n"
        await stream.send((head + "content-length: 0\r\n\r\n").encode())
        answer = b""
        try:
            while True:
                answer += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    body = answer.split(b"\r\n\r\n", 1)[1]
    if b"transfer-encoding: chunked" in answer.split(b"\r\n\r\n", 1)[0].lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    result: dict[str, object] = json.loads(body)
    return result


class Subscriber:
    """One SSE connection; records the latency of each event line as it arrives."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.received = 0
        self.latencies: list[int] = []
        self.changed = anyio.Event()

    async def read(self) -> None:
        pending = b""
        while True:
            try:
                chunk = await self.stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            now = time.perf_counter_ns()
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if line.startswith(b"data:"):
                    self.latencies.append(now - int(line[5:].split()[0]))
                    self.received += 1
            self.changed.set()
            self.changed = anyio.Event()


@asynccontextmanager
async def subscribers(server: Server, count: int) -> AsyncIterator[list[Subscriber]]:
    async with anyio.create_task_group() as task_group:
        opened = []
        for _ in range(count):
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            await stream.send(
                b"GET /events HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n"
            )
            subscriber = Subscriber(stream)
            opened.append(subscriber)
            task_group.start_soon(subscriber.read)
        with anyio.fail_after(60):
            # Polled: the count is the server process's.
            while (await request(server, "GET", "/statistics"))["subscribers"] != count:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        try:
            yield opened
        finally:
            for subscriber in opened:
                await subscriber.stream.aclose()
            task_group.cancel_scope.cancel()


async def wait_received(group: list[Subscriber], total: int, *, within: float = 120.0) -> None:
    with anyio.fail_after(within):
        for subscriber in group:
            while subscriber.received < total:
                await subscriber.changed.wait()


def percentile(samples: list[int], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6


async def measure(
    server: Server, count: int, *, latency_events: int, burst: int
) -> dict[str, float]:
    rss_before = rss_bytes(server.pid)
    async with subscribers(server, count) as group:
        rss_idle = rss_bytes(server.pid)
        # Spaced so that one event's fan-out is done before the next: latency, not queueing.
        interval = max(0.01, count * 0.0003)
        await request(server, "POST", f"/publish?count={latency_events}&interval={interval}")
        await wait_received(group, latency_events)
        latencies = [latency for subscriber in group for latency in subscriber.latencies]
        cpu_before = cpu_seconds(server.pid)
        await request(server, "POST", f"/publish?count={burst}")
        await wait_received(group, latency_events + burst)
        cpu = cpu_seconds(server.pid) - cpu_before
    return {
        "subscribers": count,
        "latency_p50_ms": percentile(latencies, 0.50),
        "latency_p99_ms": percentile(latencies, 0.99),
        "deliveries_per_cpu_second": burst * count / cpu if cpu else float("nan"),
        "kib_per_idle_subscriber": (rss_idle - rss_before) / count / 1024,
    }


@contextmanager
def server_process(backend: str, broker_kind: str, redis_url: str | None) -> Iterator[Server]:
    command = [sys.executable, "-m", "bench.broker", "serve", backend, broker_kind]
    process = subprocess.Popen([*command, redis_url or ""], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        announced = json.loads(process.stdout.readline())
        yield Server(port=announced["port"], pid=announced["pid"])
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def redis_server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
             "--save", "", "--appendonly", "no", "--logfile", "redis.log"],
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait()


def main(argv: list[str] | None = None) -> None:
    arguments = argv if argv is not None else sys.argv[1:]
    if arguments[:1] == ["serve"]:
        raise_open_file_limit()
        backend, broker_kind, redis_url = arguments[1:4]
        anyio.run(serve, broker_kind, redis_url or None, backend=backend)
        return
    parser = argparse.ArgumentParser(prog="python -m bench.broker", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts")
    parser.add_argument("--json", help="also write the figures to this file")
    options = parser.parse_args(arguments)
    raise_open_file_limit()
    sizes = (1, 100) if options.quick else (1, 100, 1000)
    rows = []
    with redis_server() as redis_url:
        for broker_kind in ("memory", "redis"):
            for backend in ("asyncio", "trio"):
                for count in sizes:
                    with server_process(backend, broker_kind, redis_url) as server:
                        figures = anyio.run(
                            partial(
                                measure,
                                server,
                                count,
                                latency_events=20 if options.quick or count >= 1000 else 100,
                                burst=max(20, (2_000 if options.quick else 10_000) // count),
                            )
                        )
                    rows.append({"broker": broker_kind, "backend": backend, **figures})
                    print(json.dumps(rows[-1]), file=sys.stderr)
    print("| broker | backend | subscribers | p50 ms | p99 ms | deliveries/s/core | KiB/idle sub |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['broker']} | {row['backend']} | {row['subscribers']} "
            f"| {row['latency_p50_ms']:.2f} | {row['latency_p99_ms']:.2f} "
            f"| {row['deliveries_per_cpu_second']:,.0f} | {row['kib_per_idle_subscriber']:.1f} |"
        )
    if options.json:
        with open(options.json, "w") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
