"""Instructions per event in the server, counted by callgrind: ``python -m bench.instructions``
(``--quick`` for one short window per implementation, on asyncio).

The throughput of one stream moves by a fifth between runs on a shared machine, more than
most changes to a producer's path; the instructions the server executes per event do not
depend on the machine's load. Each implementation's server (``python -m bench.server``) runs
under valgrind's callgrind with counting off. A client reads one stream of a producer that
awaits between events (the checkpoint and upstream shapes of ``bench/apps.py``); after a
warm-up, counting is switched on for a window (``callgrind_control``) while the client counts
the events it receives. The figure is the server's instructions over the window per event
received in it, and its ratio to raw ASGI's, for the same shape, size and backend. The
``heartbeat`` shape is idle streams instead (``/idle``, :attr:`Plan.idle_streams` of them,
beating every :data:`HEARTBEAT_INTERVAL` seconds): instructions per heartbeat received.

Instructions are not time: a cache miss or a system call costs more than its count says.
The count leaves those out, which is why it is steady; read it beside the timed figures of
``python -m bench``, not instead of them. Needs valgrind (``callgrind_control`` comes with it).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import callgrind
from .apps import SHAPES
from .cli import names, publish
from .client import Fleet, Stream
from .servers import ServerProcess

__all__ = ["main"]

IMPLEMENTATIONS = ("raw", "streamkit", "starlette", "sse-starlette", "fastapi")
BACKENDS = ("asyncio", "trio")
PRODUCERS = ("checkpoint", "upstream", "heartbeat")
SIZES = (64, 1024)
#: Seconds between an idle stream's heartbeats in the ``heartbeat`` shape: the server, some
#: fifty times slower under callgrind, keeps up with a few hundred streams at this rate.
HEARTBEAT_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Plan:
    """How long each stream is read: *warmup* seconds uncounted, then *window* counted (the
    server runs some fifty times slower under callgrind), and on until *least_events* have
    arrived (of heartbeats: one per stream); *idle_streams* of the ``heartbeat`` shape."""

    warmup: float = 3.0
    window: float = 6.0
    least_events: int = 200
    idle_streams: int = 200


QUICK = Plan(warmup=1.0, window=1.0, least_events=60, idle_streams=20)
#: Seconds the counted window may be drawn out to receive ``least_events``.
LONGEST_WINDOW = 300.0


def measure(backend: str, producer: str, impl: str, size: int, plan: Plan) -> dict[str, Any]:
    """The server's instructions per event for one stream of *producer*, *size*-byte events
    (for ``heartbeat``, per heartbeat of idle streams; *size* does not apply)."""
    with tempfile.TemporaryDirectory(prefix="streamkit-instructions-") as directory:
        out = Path(directory, "callgrind.out")
        log = Path(directory, "server.log").open("wb")
        idle = producer == "heartbeat"
        interval = HEARTBEAT_INTERVAL if idle else 5.0
        server = ServerProcess(
            impl,
            backend,
            heartbeat_interval=interval,
            send_timeout=10.0,
            log=log,
            wrapper=callgrind.wrapper(out),
        )
        try:
            server.wait_ready(within=300.0)
            # What reads the server's events for a duration, returning how many arrived, and
            # what closes the connections.
            read: Callable[[float], int]
            close: Callable[[], object]
            if idle:
                fleet = Fleet(server.port, "/idle")
                fleet.open(plan.idle_streams, within=300.0)
                read, close = fleet.pump_for, fleet.close_all
            else:
                stream = Stream(server.port, f"{SHAPES[producer]}?size={size}&seconds=100000")
                stream.read_head()
                read, close = partial(_read_counting, stream), stream.close
            read(plan.warmup)
            callgrind.control(server.pid, "--instr=on", out)
            events = read(plan.window)
            # A figure of a few events is noise; and on a loaded machine the server, slowed
            # under callgrind, can send a handful in the window (one heartbeat in a second
            # of twenty streams was seen).
            least = plan.idle_streams if idle else plan.least_events
            given_up = time.monotonic() + LONGEST_WINDOW
            while events < least and time.monotonic() < given_up:
                events += read(0.25)
            callgrind.control(server.pid, "--instr=off", out)
            callgrind.control(server.pid, "--dump", out)
            close()
        finally:
            server.kill()
            log.close()
        instructions = callgrind.totals(Path(f"{out}.1"))
    if not events:
        raise RuntimeError(f"{impl}/{backend}: no {producer} event arrived in the counted window")
    return {"events": events, "instructions": instructions, "per_event": instructions / events}


def _read_counting(stream: Stream, duration: float) -> int:
    """Read *stream* for *duration* seconds; return how many events arrived meanwhile."""
    before = stream.events
    stream.read_for(duration)
    return stream.events - before


def markdown(plan: Plan, rows: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    figures = {
        (row["backend"], row["producer"], row["implementation"], row["size"]): row["per_event"]
        for row in rows
    }

    def cell(backend: str, producer: str, impl: str, size: int | None) -> str:
        figure = figures.get((backend, producer, impl, size))
        if figure is None:
            return ""
        base = figures.get((backend, producer, "raw", size))
        ratio = f" ({figure / base:.2f}x)" if base and impl != "raw" else ""
        return f"{figure:,.0f}{ratio}"

    seen: dict[tuple[str, str, str], None] = {}
    for row in rows:
        seen[(row["backend"], row["producer"], row["implementation"])] = None
    streams = [key for key in seen if key[1] != "heartbeat"]
    beats = [key for key in seen if key[1] == "heartbeat"]
    if streams:
        lines += [
            f"Server instructions per event (callgrind; {plan.window:g} s counted after "
            f"{plan.warmup:g} s of warm-up, longer if fewer than {plan.least_events} events "
            "arrived, one stream); ratios to raw ASGI's in the same run.",
            "",
            "| backend | producer | implementation | 64 B | 1 KiB |",
            "|---|---|---|---|---|",
        ]
        for backend, producer, impl in streams:
            cells = [cell(backend, producer, impl, size) for size in SIZES]
            lines.append(f"| {backend} | {producer} | {impl} | " + " | ".join(cells) + " |")
    if beats:
        if lines:
            lines.append("")
        lines += [
            f"Server instructions per heartbeat ({plan.idle_streams} idle streams, one every "
            f"{HEARTBEAT_INTERVAL:g} s each; the same windows); ratios to raw ASGI's.",
            "",
            "| backend | implementation | per heartbeat |",
            "|---|---|---|",
        ]
        for backend, producer, impl in beats:
            lines.append(f"| {backend} | {impl} | {cell(backend, producer, impl, None)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short windows, asyncio, 64 B")
    parser.add_argument(
        "--impl",
        type=names(IMPLEMENTATIONS, "implementation"),
        default=["raw", "streamkit"],
        help=f"comma-separated, of: {', '.join(IMPLEMENTATIONS)} (default: raw, streamkit)",
    )
    parser.add_argument(
        "--backend",
        type=names(BACKENDS, "backend"),
        help="comma-separated, of: asyncio, trio (default: both; asyncio with --quick)",
    )
    parser.add_argument(
        "--producer",
        type=names(PRODUCERS, "producer"),
        default=list(PRODUCERS),
        help=f"comma-separated, of: {', '.join(PRODUCERS)} (default: all)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="servers measured at once")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    options = parser.parse_args(argv)
    if options.jobs < 1:
        parser.error(f"--jobs: at least 1 server at a time, got {options.jobs}")
    callgrind.require("python -m bench.instructions")
    impls = options.impl if "raw" in options.impl else ["raw", *options.impl]  # the baseline
    producers = options.producer
    backends = options.backend or (["asyncio"] if options.quick else list(BACKENDS))
    sizes = SIZES[:1] if options.quick else SIZES
    plan = QUICK if options.quick else Plan()
    # A heartbeat has no size: its shape is measured once per backend and implementation.
    cases = [
        (backend, producer, impl, None if producer == "heartbeat" else size)
        for backend, producer, impl, size in itertools.product(backends, producers, impls, sizes)
        if producer != "heartbeat" or size == sizes[0]
    ]

    def row(case: tuple[str, str, str, int | None]) -> dict[str, Any]:
        backend, producer, impl, size = case
        names = {"backend": backend, "producer": producer, "implementation": impl, "size": size}
        return names | measure(backend, producer, impl, size or 0, plan)

    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        rows = list(pool.map(row, cases))
    return publish(markdown(plan, rows), plan, rows, options.json)


if __name__ == "__main__":
    sys.exit(main())
