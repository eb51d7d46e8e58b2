"""The garbage collector's share of a fan-out, in one process: ``python -m bench.collector``
(``--quick`` for small counts).

No sockets and no server: the broker benchmark's apps (``bench/broker_apps.py``), the
hand-written fan-out (``raw``) and streamkit's ``topic_response`` over a ``MemoryBroker``
(``memory``), called with a ``send`` that does nothing, so that what is measured is theirs
and the collector's alone. Each implementation runs on each backend in a fresh process:

1. ``--subscribers`` subscribe; three events go out; then, the collector disabled, one more
   event reaches them all, and the tracked objects still in the youngest generation are
   counted, per subscriber: what a delivery leaves for the collector to follow until the
   next event (each outlives the collections of the young generations, and brings the next
   full collection nearer);
2. after a full collection, events are published at ``--rate`` for ``--seconds`` (the
   publisher waits for its timer between events, as a live source does): the process's CPU
   time per delivery, and the collector's (every collection, timed by ``gc.callbacks``),
   with its full collections counted.

Figures are also given as ratios to raw's from the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio

from .broker_apps import SEND_TIMEOUT, SUBSCRIBER_BUFFER, TOPIC, RawFanOut
from .cli import publish
from .probe import Collections, Message

__all__ = ["main"]

IMPLEMENTATIONS = ("raw", "memory")
BACKENDS = ("asyncio", "trio")
#: Events each broker keeps per topic, as in the broker benchmark.
HISTORY_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Plan:
    subscribers: int = 5000
    rate: float = 2.0
    seconds: float = 15.0


QUICK = Plan(subscribers=200, rate=10.0, seconds=2.0)

_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/events",
    "raw_path": b"/events",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"bench")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 80),
}


async def measure(impl: str, plan: Plan) -> dict[str, Any]:
    """Both figures of *impl* on the running backend (see the module's docstring)."""
    import streamkit.broadcast

    left = anyio.Event()
    received = 0  # events, over every subscriber: a write may carry several

    async def receive() -> Message:
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal received
        received += message.get("body", b"").count(b"data: ")

    async with anyio.create_task_group() as task_group:
        if impl == "raw":
            fanout = RawFanOut()

            async def publish(data: str) -> None:
                fanout.publish(data)

            def subscribers() -> int:
                return len(fanout.subscribers)

            for _ in range(plan.subscribers):
                task_group.start_soon(fanout.stream, receive, send)
        else:
            broker = streamkit.broadcast.MemoryBroker(
                history_size=HISTORY_SIZE, subscriber_buffer=SUBSCRIBER_BUFFER
            )
            await task_group.start(_entered, broker)

            async def publish(data: str) -> None:
                await broker.publish(TOPIC, data)

            def subscribers() -> int:
                return broker.statistics().subscribers

            for _ in range(plan.subscribers):
                response = streamkit.broadcast.topic_response(
                    broker, TOPIC, heartbeat_interval=None, send_timeout=SEND_TIMEOUT
                )
                task_group.start_soon(response, dict(_SCOPE, state={}), receive, send)

        async def delivered(count: int) -> None:
            with anyio.fail_after(60):
                while received < count:  # noqa: ASYNC110  (polled: the apps signal nothing)
                    await anyio.sleep(0.01)

        with anyio.fail_after(120):
            while subscribers() < plan.subscribers:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        for number in range(3):
            await publish(f"warm {number}")
        await delivered(3 * plan.subscribers)

        gc.collect()
        gc.disable()
        try:
            await publish("counted")
            await delivered(4 * plan.subscribers)
            young = gc.get_objects(generation=0)
        finally:
            gc.enable()
        left_behind = Counter(type(item).__qualname__ for item in young)
        del young

        gc.collect()
        collections = Collections()
        cpu, before = time.process_time(), received
        started, count = anyio.current_time(), round(plan.rate * plan.seconds)
        for number in range(count):
            await anyio.sleep_until(started + number / plan.rate)
            await publish(f"{time.perf_counter_ns()} {number} {'x' * 64}")
        await delivered(before + count * plan.subscribers)
        cpu = time.process_time() - cpu
        deliveries = received - before
        collections.stop()
        left.set()
        task_group.cancel_scope.cancel()
    return {
        "objects_left_per_delivery": sum(left_behind.values()) / plan.subscribers,
        "objects_left": dict(left_behind.most_common(6)),
        "deliveries": deliveries,
        "cpu_us_per_delivery": cpu / deliveries * 1e6,
        "collector_us_per_delivery": collections.seconds / deliveries * 1e6,
        "full_collections": collections.full,
    }


async def _entered(broker: Any, *, task_status: Any) -> None:
    async with broker:
        task_status.started()
        await anyio.sleep_forever()


def _one(impl: str, backend: str, plan: Plan) -> dict[str, Any]:
    """*impl* on *backend*, in a fresh process."""
    command = [sys.executable, "-m", "bench.collector", "--one", impl, "--backend", backend]
    command += ["--plan", json.dumps(asdict(plan))]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    figures: dict[str, Any] = json.loads(completed.stdout)
    return figures


def markdown(plan: Plan, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{plan.subscribers:,} subscribers in one process, {plan.rate:g} events a second for "
        f"{plan.seconds:g} s; ratios to raw's in the same run.",
        "",
        "| backend | implementation | objects left per delivery | CPU µs per delivery "
        "| of which the collector's | full collections |",
        "|---|---|---|---|---|---|",
    ]
    raw = {row["backend"]: row for row in rows if row["implementation"] == "raw"}
    for row in rows:
        base = raw.get(row["backend"]) if row["implementation"] != "raw" else None
        cells = []
        for key, digits in (
            ("objects_left_per_delivery", 1),
            ("cpu_us_per_delivery", 1),
            ("collector_us_per_delivery", 1),
        ):
            cell = f"{row[key]:.{digits}f}"
            if base and base[key]:
                cell += f" ({row[key] / base[key]:.2f}x)"
            cells.append(cell)
        lines.append(
            f"| {row['backend']} | {row['implementation']} | "
            + " | ".join(cells)
            + f" | {row['full_collections']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.collector", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, short windows")
    parser.add_argument("--subscribers", type=int)
    parser.add_argument("--rate", type=float, help="events a second")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--backend", choices=BACKENDS)
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--one", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.one:  # a measurement's own process: its figures, as JSON
        plan = Plan(**json.loads(options.plan))
        figures = anyio.run(measure, options.one, plan, backend=options.backend)
        print(json.dumps(figures))
        return 0
    plan = QUICK if options.quick else Plan()
    changes = {"subscribers": options.subscribers, "rate": options.rate, "seconds": options.seconds}
    plan = Plan(**{**asdict(plan), **{k: v for k, v in changes.items() if v}})
    rows = []
    for backend in [options.backend] if options.backend else BACKENDS:
        for impl in IMPLEMENTATIONS:
            rows.append({"implementation": impl, "backend": backend, **_one(impl, backend, plan)})
    return publish(markdown(plan, rows), plan, rows, options.json)


if __name__ == "__main__":
    sys.exit(main())
