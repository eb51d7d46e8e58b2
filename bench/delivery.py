"""Instructions per delivery of a broadcast, in one process, counted by callgrind:
``python -m bench.delivery`` (``--quick``: asyncio, 100 subscribers).

The timed figures of ``python -m bench.broker`` move by tenths between runs on a shared
machine, more than most changes to a fan-out; the instructions a fan-out executes do not
depend on the machine's load. Here each app of ``bench/broker_apps.py`` (the hand-written
fan-out, the memory broker, the Redis broker) runs in one process under valgrind's callgrind,
without a server: its subscribers are ASGI calls of ``GET /events`` whose ``send`` only
counts the events it is handed, and a ``POST /publish`` publishes each burst. After a warm-up
burst, counting is switched on (``callgrind_control``) for :attr:`Plan.rounds` bursts of
:attr:`Plan.burst` events, each awaited until every subscriber has all of it (the loop then
idles, as a server's does while its writes drain). The figure is the process's instructions
over those bursts per delivery (events times subscribers), and its ratio to the hand-written
fan-out's for the same backend and number of subscribers.

With one subscriber, a delivery's count is the cost of an event itself: publishing it
(for Redis, the script that appends it and the read that brings it back), encoding it, one
write. With a hundred or more, it is mostly the fan-out. No server runs, so hypercorn's send
path, which every app pays alike, is not in the counts: the ratios are of what each app does
itself. Needs valgrind, and ``redis-server`` for the Redis broker.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio

from . import callgrind
from .broker import redis_server
from .broker_apps import raw_app, streamkit_app
from .cli import names, publish
from .probe import ASGIApp, Message

__all__ = ["main"]

IMPLEMENTATIONS = ("raw", "memory", "redis")
BACKENDS = ("asyncio", "trio")
SUBSCRIBERS = (1, 100, 1000)
#: Seconds any one burst may take to reach every subscriber (under callgrind, some fifty
#: times slower than without).
BURST_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class Plan:
    """*rounds* bursts of *burst* events are counted, after one uncounted burst."""

    burst: int = 200
    rounds: int = 3


class _Audience:
    """The subscribers' side of the ASGI calls: counts the events they are sent (an event
    ends with a blank line), and wakes whoever waits for a number of them."""

    def __init__(self) -> None:
        self.received = 0
        self._target = 0
        self._reached = anyio.Event()
        self.leave = anyio.Event()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            self.received += message.get("body", b"").count(b"\n\n")
            if self.received >= self._target:
                self._reached.set()

    async def receive(self) -> Message:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def wait_for(self, target: int) -> None:
        self._target = target
        if self.received < target:
            self._reached = anyio.Event()
            await self._reached.wait()


def _scope(path: str, method: str = "GET") -> dict[str, Any]:
    route, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }


async def _publish(app: ASGIApp, count: int) -> None:
    """One burst of *count* events, through the app's ``POST /publish``."""
    answer: list[int] = []
    asked = False

    async def receive() -> Message:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer.append(message["status"])

    await app(_scope(f"/publish?count={count}&rate=0&size=0", "POST"), receive, send)
    if answer != [200]:
        raise RuntimeError(f"POST /publish answered {answer}")


async def _drive(
    app: ASGIApp, subscribers: int, plan: Plan, counting: Callable[[str], None]
) -> int:
    """Serve *subscribers*, warm up, count *plan*'s bursts; the deliveries counted."""
    to_app, from_harness = anyio.create_memory_object_stream[Message](4)
    ready, done = anyio.Event(), anyio.Event()

    async def lifespan_send(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete":
            ready.set()
        elif message["type"] == "lifespan.shutdown.complete":
            done.set()
        elif message["type"].endswith(".failed"):
            raise RuntimeError(f"lifespan: {message}")

    audience = _Audience()
    # Each ASGI call a task of its own, as a server runs it (the apps return coroutines).
    call = cast(Callable[..., Coroutine[Any, Any, None]], app)
    async with anyio.create_task_group() as task_group:
        lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        task_group.start_soon(call, lifespan, from_harness.receive, lifespan_send)
        await to_app.send({"type": "lifespan.startup"})
        with anyio.fail_after(BURST_TIMEOUT):
            await ready.wait()
        async with anyio.create_task_group() as streams:
            for _ in range(subscribers):
                streams.start_soon(call, _scope("/events"), audience.receive, audience.send)
            with anyio.fail_after(BURST_TIMEOUT):
                # Until each is subscribed: a first event reached every one.
                await _until_all_subscribed(app, audience, subscribers)
            # One burst uncounted: what only a first burst pays (a script loaded on the
            # server, a module imported, a pipeline's first use) is no cost of a delivery.
            warmed = audience.received + plan.burst * subscribers
            with anyio.fail_after(BURST_TIMEOUT):
                await _publish(app, plan.burst)
                await audience.wait_for(warmed)
            base = audience.received
            await anyio.to_thread.run_sync(counting, "--instr=on")
            for round_ in range(1, plan.rounds + 1):
                with anyio.fail_after(BURST_TIMEOUT):
                    await _publish(app, plan.burst)
                    await audience.wait_for(base + round_ * plan.burst * subscribers)
            await anyio.to_thread.run_sync(counting, "--instr=off")
            delivered = audience.received - base
            audience.leave.set()
        await to_app.send({"type": "lifespan.shutdown"})
        with anyio.fail_after(BURST_TIMEOUT):
            await done.wait()
    return delivered


async def _until_all_subscribed(app: ASGIApp, audience: _Audience, subscribers: int) -> None:
    """Publish one event at a time until one reaches every subscriber (a subscriber that
    arrived late misses the events before it)."""
    while True:
        before = audience.received
        await _publish(app, 1)
        with anyio.move_on_after(0.5):
            await audience.wait_for(before + subscribers)
        if audience.received - before >= subscribers:
            return


def _child(
    implementation: str, backend: str, subscribers: int, plan: Plan, out: Path, redis_url: str
) -> None:
    """Run in the process callgrind counts, which dumps to *out*: drive the app and print the
    deliveries."""
    pid = os.getpid()

    def counting(option: str) -> None:
        callgrind.control(pid, option, out)

    if implementation == "raw":
        app: ASGIApp = raw_app()
    else:
        key_prefix = f"bench-delivery:{uuid.uuid4().hex}:"
        app = streamkit_app(implementation, redis_url=redis_url or None, key_prefix=key_prefix)
    delivered = anyio.run(_drive, app, subscribers, plan, counting, backend=backend)
    print(delivered)


def measure(
    implementation: str, backend: str, subscribers: int, plan: Plan, redis_url: str
) -> dict[str, Any]:
    """The instructions per delivery of *implementation* fanning bursts out to
    *subscribers*."""
    with tempfile.TemporaryDirectory(prefix="streamkit-delivery-") as directory:
        out = Path(directory, "callgrind.out")
        command = [
            *callgrind.wrapper(out),
            sys.executable,
            "-m",
            "bench.delivery",
            "--child",
            f"{implementation},{backend},{subscribers},{plan.burst},{plan.rounds},{out},{redis_url}",
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=Path(__file__).parent.parent
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{implementation}/{backend}/{subscribers}: exit {done.returncode}\n"
                f"{done.stderr[-3000:]}"
            )
        delivered = int(done.stdout.split()[-1])
        instructions = callgrind.totals(out)  # dumped as the process exits
    return {
        "deliveries": delivered,
        "instructions": instructions,
        "per_delivery": instructions / delivered,
    }


def markdown(plan: Plan, rows: list[dict[str, Any]]) -> str:
    figures = {
        (row["backend"], row["implementation"], row["subscribers"]): row["per_delivery"]
        for row in rows
    }
    counts = sorted({row["subscribers"] for row in rows})

    def cell(backend: str, implementation: str, subscribers: int) -> str:
        figure = figures.get((backend, implementation, subscribers))
        if figure is None:
            return ""
        base = figures.get((backend, "raw", subscribers))
        ratio = f" ({base / figure:.2f}x)" if base and implementation != "raw" else ""
        return f"{figure:,.0f}{ratio}"

    lines = [
        f"Instructions per delivery in one process (callgrind; {plan.rounds} bursts of "
        f"{plan.burst} events counted); in brackets, the hand-written fan-out's figure over "
        "this one (as deliveries per CPU-second compare: 1.00x is as cheap, below is dearer).",
        "",
        "| backend | implementation | "
        + " | ".join(f"{n:,} subscriber{'s' if n > 1 else ''}" for n in counts)
        + " |",
        "|---|---|" + "---|" * len(counts),
    ]
    seen = dict.fromkeys((row["backend"], row["implementation"]) for row in rows)
    for backend, implementation in seen:
        cells = [cell(backend, implementation, n) for n in counts]
        lines.append(f"| {backend} | {implementation} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="asyncio, 100 subscribers")
    parser.add_argument(
        "--impl",
        type=names(IMPLEMENTATIONS, "implementation"),
        default=list(IMPLEMENTATIONS),
        help=f"comma-separated, of: {', '.join(IMPLEMENTATIONS)} (default: all)",
    )
    parser.add_argument(
        "--backend",
        type=names(BACKENDS, "backend"),
        help="comma-separated, of: asyncio, trio (default: both; asyncio with --quick)",
    )
    parser.add_argument(
        "--subscribers",
        type=lambda text: [int(n) for n in text.split(",")],
        help="comma-separated counts (default: 1,100,1000; 100 with --quick)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes measured at once")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        implementation, backend, subscribers, burst, rounds, out, url = options.child.split(",", 6)
        plan = Plan(int(burst), int(rounds))
        _child(implementation, backend, int(subscribers), plan, Path(out), url)
        return 0
    if options.jobs < 1:
        parser.error(f"--jobs: at least 1 process at a time, got {options.jobs}")
    counts = options.subscribers or ([100] if options.quick else list(SUBSCRIBERS))
    if any(n < 1 for n in counts):
        parser.error(f"--subscribers: each at least 1, got {counts}")
    callgrind.require("python -m bench.delivery")
    impls = options.impl if "raw" in options.impl else ["raw", *options.impl]  # the baseline
    backends = options.backend or (["asyncio"] if options.quick else list(BACKENDS))
    plan = Plan()
    cases = list(itertools.product(backends, impls, counts))
    redis: AbstractContextManager[Any] = redis_server() if "redis" in impls else nullcontext()
    with redis as server:
        url = server.url if server is not None else ""

        def row(case: tuple[str, str, int]) -> dict[str, Any]:
            backend, implementation, subscribers = case
            names = {"backend": backend, "implementation": implementation}
            figures = measure(implementation, backend, subscribers, plan, url)
            return names | {"subscribers": subscribers} | figures

        with ThreadPoolExecutor(max_workers=options.jobs) as pool:
            rows = list(pool.map(row, cases))
    return publish(markdown(plan, rows), plan, rows, options.json)


if __name__ == "__main__":
    sys.exit(main())
