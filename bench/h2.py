"""``python -m bench.h2``: HTTP/2 beside HTTP/1.1, under hypercorn, printed as markdown.

- **Stalled stream**: one HTTP/2 stream of 1 KiB events whose client never reads (its window
  stays 0, while the connection is open); worker RSS followed for ``--seconds``. streamkit
  (``streamkit.serve``, hypercorn's HTTP/2 buffer repaired) with ``send_timeout`` far away,
  so the bound is what holds the stream, and the raw ASGI app under plain hypercorn, which
  shows hypercorn's own behaviour.
- **Idle streams**: ``--streams`` idle SSE streams, each having had its first event, over
  HTTP/1.1 (a connection each) and over HTTP/2 (``--connections`` connections, streams
  spread over them); worker RSS growth per stream, and the time to open them all.
- **Throughput**: one stream of 1 KiB events read flat out for 2 s, over each protocol. The
  HTTP/2 client is pure Python (h2) and acknowledges every frame, so its figure is the
  client's limit as much as the server's.

Servers are ``python -m bench.server`` processes, one at a time, on one backend per run.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import IO, Any

import anyio
import anyio.to_thread

from streamkit.testing import H2Connection, H2StreamClient, open_h2_connection

from .client import Fleet, Stream
from .proc import rss_bytes
from .servers import ServerProcess, stop_all

KIB = 1024
#: Far beyond any run: what bounds the stalled stream is the buffer, not the timer.
NO_SEND_TIMEOUT = 3600.0
THROUGHPUT_SECONDS = 2.0


@dataclass(frozen=True)
class Address:
    host: str
    port: int


def _discard() -> IO[bytes]:
    """Where the servers' logs go: a stalled-stream run makes nothing worth reading."""
    return open(os.devnull, "wb")


@asynccontextmanager
async def server(impl: str, backend: str, *, send_timeout: float) -> AsyncIterator[ServerProcess]:
    with _discard() as log:
        process = ServerProcess(
            impl, backend, heartbeat_interval=15.0, send_timeout=send_timeout, log=log
        )
        try:
            await anyio.to_thread.run_sync(process.wait_ready)
            await anyio.sleep(0.3)
            yield process
        finally:
            await anyio.to_thread.run_sync(stop_all, [process])


async def stalled(backend: str, impl: str, seconds: float) -> dict[str, Any]:
    async with server(impl, backend, send_timeout=NO_SEND_TIMEOUT) as process:
        address = Address("127.0.0.1", process.port)
        before = rss_bytes(process.pid)
        samples: list[int] = []
        async with (
            open_h2_connection(address) as connection,
            connection.open_stream("/events?size=1024") as stream,
        ):
            stream.stall()
            for _ in range(int(seconds)):
                await anyio.sleep(1.0)
                samples.append(rss_bytes(process.pid) - before)
            # The connection's other uses go on meanwhile.
            ping = await connection.ping()
        return {
            "impl": impl,
            "growth_kib": [sample / KIB for sample in samples],
            "ping_ms": ping * 1e3,
        }


async def _open_h2_idle(
    connection: H2Connection, stack: AsyncExitStack, count: int
) -> list[H2StreamClient]:
    streams = []
    for _ in range(count):
        stream = await stack.enter_async_context(connection.open_stream("/idle"))
        streams.append(stream)
    for stream in streams:
        await stream.read_event()
    return streams


async def idle(backend: str, streams: int, connections: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with server("streamkit", backend, send_timeout=10.0) as process:
        fleet = Fleet(process.port, "/idle")

        def warm_up() -> None:
            fleet.open(20)
            fleet.close_all()

        await anyio.to_thread.run_sync(warm_up)
        await anyio.sleep(1.0)
        baseline = rss_bytes(process.pid)
        started = time.monotonic()
        fleet = Fleet(process.port, "/idle")
        await anyio.to_thread.run_sync(lambda: fleet.open(streams, within=300.0))
        opened = time.monotonic() - started
        await anyio.sleep(1.0)
        results["http/1.1"] = {
            "connections": streams,
            "kib_per_stream": (rss_bytes(process.pid) - baseline) / streams / KIB,
            "open_seconds": opened,
        }
        await anyio.to_thread.run_sync(fleet.close_all)
    async with server("streamkit", backend, send_timeout=10.0) as process:
        address = Address("127.0.0.1", process.port)
        async with AsyncExitStack() as stack:
            warm = await stack.enter_async_context(open_h2_connection(address))
            async with AsyncExitStack() as warming:
                await _open_h2_idle(warm, warming, 20)
            await anyio.sleep(1.0)
            baseline = rss_bytes(process.pid)
            started = time.monotonic()
            per_connection = -(-streams // connections)
            opened_streams = 0
            for _ in range(connections):
                connection = await stack.enter_async_context(open_h2_connection(address))
                count = min(per_connection, streams - opened_streams)
                await _open_h2_idle(connection, stack, count)
                opened_streams += count
            opened = time.monotonic() - started
            await anyio.sleep(1.0)
            results["h2"] = {
                "connections": connections,
                "kib_per_stream": (rss_bytes(process.pid) - baseline) / streams / KIB,
                "open_seconds": opened,
            }
    return results


async def throughput(backend: str) -> dict[str, float]:
    results: dict[str, float] = {}
    async with server("streamkit", backend, send_timeout=10.0) as process:

        def read_http11() -> int:
            stream = Stream(process.port, "/events?size=1024")
            try:
                stream.read_head()
                received = 0
                deadline = time.monotonic() + THROUGHPUT_SECONDS
                while time.monotonic() < deadline:
                    received += len(stream.sock.recv(65536))
                return received
            finally:
                stream.close()

        results["http/1.1"] = await anyio.to_thread.run_sync(read_http11) / THROUGHPUT_SECONDS
        address = Address("127.0.0.1", process.port)
        async with (
            open_h2_connection(address) as connection,
            connection.open_stream("/events?size=1024") as stream,
        ):
            received = 0
            deadline = time.monotonic() + THROUGHPUT_SECONDS
            while time.monotonic() < deadline:
                received += len(await stream.receive_chunk() or b"")
        results["h2"] = received / THROUGHPUT_SECONDS
    return results


async def measure(arguments: argparse.Namespace) -> str:
    backend = arguments.backend
    lines = [f"## HTTP/2 beside HTTP/1.1 (hypercorn, {backend})", ""]
    lines += [
        f"### A stalled HTTP/2 stream, worker RSS growth over {arguments.seconds:.0f} s",
        "",
        "| server | after 1 s | after 5 s | at the end | PING on the connection |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for impl, label in (("streamkit", "streamkit.serve"), ("raw", "plain hypercorn")):
        row = await stalled(backend, impl, arguments.seconds)
        growth = row["growth_kib"]
        lines.append(
            f"| {label} | {growth[0]:.0f} KiB | {growth[min(4, len(growth) - 1)]:.0f} KiB | "
            f"{growth[-1]:.0f} KiB | {row['ping_ms']:.1f} ms |"
        )
    rows = await idle(backend, arguments.streams, arguments.connections)
    lines += [
        "",
        f"### {arguments.streams} idle streams",
        "",
        "| protocol | connections | RSS per stream | time to open all |",
        "| --- | ---: | ---: | ---: |",
    ]
    for protocol, row in rows.items():
        lines.append(
            f"| {protocol} | {row['connections']} | {row['kib_per_stream']:.1f} KiB | "
            f"{row['open_seconds']:.2f} s |"
        )
    rates = await throughput(backend)
    lines += [
        "",
        "### One stream read flat out (1 KiB events)",
        "",
        "| protocol | MiB/s received |",
        "| --- | ---: |",
    ]
    lines += [f"| {protocol} | {rate / KIB / KIB:.1f} |" for protocol, rate in rates.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.h2", description=__doc__)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=10)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(anyio.run(measure, arguments, backend=arguments.backend))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
