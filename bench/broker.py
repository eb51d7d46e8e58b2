"""Broadcast benchmarks: ``python -m bench.broker`` (``--quick`` for small counts).

One topic, many SSE subscribers, and three servers measured side by side in one run: a
fan-out written by hand in plain ASGI (``raw``, the baseline), and streamkit's
:func:`~streamkit.broadcast.topic_response` over a :class:`~streamkit.broadcast.MemoryBroker`
(``memory``) and over a :class:`~streamkit.broadcast.RedisBroker` (``redis``), each on
hypercorn's asyncio and trio workers (the apps: ``bench/broker_apps.py``). Every figure of
streamkit's is also given as a ratio to raw's from the same run.

1. At each subscriber count (``--subscribers``), on a fresh server: publish-to-socket
   latency, p50 and p99, at a stated load (``--load`` deliveries a second: 20 events/s to 100
   subscribers, 2/s to 1,000); deliveries (events x subscribers) per second of the server's
   CPU time (``/proc``), at that load, where each event is written on its own, and over a
   burst published back to back, where writes carry many; memory per idle subscriber, the
   server's RSS growth while all but the first subscriber arrive, over their number, from a
   baseline read after a full collection and with the C allocator's free pages handed back
   to the kernel (glibc): what a topic costs once, and memory a server's startup happened
   to leave free, are no subscriber's. Once they are all in, the server runs a full garbage
   collection, which their arrival made due: left to come when it will, it lands in the
   latency window or not by the phase of the collector's counts. The server's full
   collections in that window, and its time in all collections, are reported beside it.
2. At 1,000 subscribers: the highest publish rate raw sustains with p99 under 50 ms, found by
   stepping up ``--rates`` (a short window each) and bisecting between the last rate that
   held and the first that did not; then streamkit's p99 at that same rate.
3. On the same server: 10 of the 1,000 subscribers stall (they never read; small receive
   buffer): the server's RSS over the window, when each stalled one left the fan-out, whether
   the server closed it, and the other 990's latency.
4. ``python -m streamkit run --workers 2`` with the Redis broker, 2,500 subscribers per
   worker spread by the kernel (the workers share one listening socket): latency,
   deliveries per CPU-second summed over the workers, and Redis's count of ``XREAD`` calls,
   which shows each worker reading the stream once for all its subscribers.

Redis is a ``redis-server`` started here on a free port. Run it alone on the machine: the
figures are only as quiet as the machine is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .audience import Audience
from .broker_apps import SEND_TIMEOUT
from .broker_report import markdown
from .proc import cpu_seconds, machine, rss_bytes
from .server import raise_open_file_limit

IMPLEMENTATIONS = ("raw", "memory", "redis")
BACKENDS = ("asyncio", "trio")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What one run measures.

    :param subscribers: the subscriber counts of the main figures.
    :param load: deliveries a second while latency is measured: the publish rate is this
        over the subscriber count.
    :param latency_seconds: how long latency is measured (at least 3 events).
    :param burst_deliveries: about how many deliveries a burst makes; it is at most
        *max_burst* events, which a subscriber's buffer holds.
    :param rates: the rates the search steps up, events a second.
    :param latency_limit_ms: the p99 a sustained rate keeps under.
    :param search_subscribers: the subscriber count of the search and the stall.
    :param search_seconds: the window at each rate tried.
    :param bisections: how many times the search halves the gap it ends in.
    :param stalled: stalled subscribers among *search_subscribers*.
    :param stall_seconds: how long they stay stalled; events go at the *load*'s rate.
    :param stall_size: bytes of padding per event meanwhile, so that the stalled
        connections' kernel buffers fill within a second or two.
    :param send_timeout: the servers' send timeout, in seconds, which the stall outlasts.
    :param workers: worker processes in the last measurement (1: none).
    :param worker_subscribers: subscribers per worker there.
    """

    subscribers: tuple[int, ...] = (100, 1000, 5000)
    load: float = 2000.0
    latency_seconds: float = 4.0
    burst_deliveries: int = 25_000
    max_burst: int = 200
    rates: tuple[float, ...] = (2, 4, 8, 16, 32, 64, 128, 256)
    latency_limit_ms: float = 50.0
    search_subscribers: int = 1000
    search_seconds: float = 2.0
    bisections: int = 2
    stalled: int = 10
    stall_seconds: float = 12.0
    stall_size: int = 16384
    send_timeout: float = SEND_TIMEOUT
    workers: int = 2
    worker_subscribers: int = 2500

    def rate(self, subscribers: int) -> float:
        """The publish rate of the latency figures at *subscribers*."""
        return self.load / subscribers


QUICK = Plan(
    subscribers=(200,),
    latency_seconds=2.0,
    burst_deliveries=10_000,
    rates=(4, 16, 64, 256),
    search_subscribers=200,
    search_seconds=1.0,
    bisections=1,
    # The stall's end is what matters there, not how long a client may stall: a shorter
    # timeout ends it sooner.
    stall_seconds=3.5,
    send_timeout=1.5,
    worker_subscribers=200,
)


# -- processes --------------------------------------------------------------------------------


@dataclass
class Server:
    """Where a server listens, and its processes (the workers, if several)."""

    port: int
    pids: list[int]


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def server_process(
    impl: str, backend: str, redis_url: str, *, send_timeout: float
) -> Iterator[Server]:
    """``python -m bench.broker_server`` serving *impl*: one worker, a fresh process."""
    command = [sys.executable, "-m", "bench.broker_server", "--impl", impl, "--backend", backend]
    command += ["--send-timeout", f"{send_timeout!r}"]
    if impl == "redis":
        command += ["--redis-url", redis_url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        announced = json.loads(process.stdout.readline())
        yield Server(port=announced["port"], pids=[announced["pid"]])
    finally:
        _stop(process)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _workers_of(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return [
        child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


@contextmanager
def workers_process(backend: str, redis_url: str, workers: int) -> Iterator[Server]:
    """``python -m streamkit run bench.broker_worker:app --workers N`` with the Redis
    broker, every worker on the same topic."""
    port = _free_port()
    environment = {
        **os.environ,
        "BENCH_REDIS_URL": redis_url,
        "BENCH_KEY_PREFIX": f"bench:{uuid.uuid4().hex}:",
    }
    command = [
        sys.executable, "-m", "streamkit", "run", "bench.broker_worker:app",
        "--workers", str(workers), "--backend", backend, "--bind", f"127.0.0.1:{port}",
        "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=environment)
    try:
        deadline = time.monotonic() + 30
        while True:
            pids = _workers_of(process.pid)
            if len(pids) == workers:
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{workers} workers did not start serving on {port}")
            time.sleep(0.05)
        yield Server(port=port, pids=pids)
    finally:
        _stop(process)


@dataclass
class Redis:
    """A ``redis-server`` of this run's own, and the few commands the benchmark sends it."""

    url: str
    port: int

    def command(self, *arguments: str) -> str:
        """One command's reply, which must be a bulk string (``INFO``, ``CLIENT LIST``)."""
        message = f"*{len(arguments)}\r\n" + "".join(
            f"${len(argument)}\r\n{argument}\r\n" for argument in arguments
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(message.encode())
            data = b""
            while b"\r\n" not in data:
                data += sock.recv(65536)
            header, _, data = data.partition(b"\r\n")
            if not header.startswith(b"$"):
                raise RuntimeError(f"redis answered {header!r} to {arguments}")
            size = int(header[1:])
            while len(data) < size:
                data += sock.recv(65536)
        return data[:size].decode()

    def calls(self) -> dict[str, int]:
        """Calls so far, by command (``INFO commandstats``)."""
        calls = {}
        for line in self.command("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, _, fields = line[len("cmdstat_") :].partition(":")
                calls[name] = int(fields.split(",")[0].split("=")[1])
        return calls

    def readers(self) -> int:
        """Connections whose last command was ``XREAD``."""
        return sum(
            " cmd=xread " in line + " " for line in self.command("CLIENT", "LIST").splitlines()
        )


@contextmanager
def redis_server() -> Iterator[Redis]:
    port = _free_port()
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
            yield Redis(url=f"redis://127.0.0.1:{port}/0", port=port)
        finally:
            process.terminate()
            process.wait()


# -- measurements -----------------------------------------------------------------------------


def percentile(samples: list[int], fraction: float) -> float:
    """The *fraction* percentile of nanosecond *samples*, in milliseconds (NaN if none)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6


@dataclass
class Window:
    """What one publish request did."""

    events: int
    subscribers: int
    latencies: list[int]
    missing: int
    server_cpu: float
    client_cpu: float
    seconds: float
    #: The server's full collections meanwhile, and its CPU seconds in all collections
    #: (``None``: several workers, which are not asked).
    full_collections: int | None = None
    collection_seconds: float | None = None

    def figures(self) -> dict[str, Any]:
        deliveries = self.events * self.subscribers - self.missing
        return {
            "p50_ms": percentile(self.latencies, 0.50),
            "p99_ms": percentile(self.latencies, 0.99),
            "missing": self.missing,
            "deliveries_per_cpu_second": deliveries / self.server_cpu,
            "server_cpu_share": self.server_cpu / self.seconds,
            "client_cpu_share": self.client_cpu / self.seconds,
            "full_collections": self.full_collections,
            "collection_ms": None
            if self.collection_seconds is None
            else self.collection_seconds * 1000,
        }


class Session:
    """A server (one process, or workers on one socket) and this process's subscribers."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.audience = Audience(server.port)

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.server.pids)

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.server.pids)

    def statistics(self) -> dict[str, Any]:
        """The answer of ``/statistics``: of one worker, whichever took the connection."""
        return self.audience.call("GET", "/statistics")

    def collector(self, *, collect: bool = False, trim: bool = False) -> dict[str, Any] | None:
        """What the server's garbage collector did so far (see ``bench.broker_server``),
        after a full collection with *collect*, and the C allocator's free pages handed
        back with *trim* too; ``None`` from several workers."""
        if len(self.server.pids) > 1:
            return None
        if trim:
            return self.audience.call("POST", "/collector?trim=1")
        return self.audience.call("POST" if collect else "GET", "/collector")

    def wait_subscribed(self, count: int, *, within: float = 120.0) -> None:
        """Until the server (one process) counts *count* subscribers."""
        deadline = time.monotonic() + within
        while self.statistics()["subscribers"] != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not count {count} subscribers")
            self.audience.pump_for(0.05)

    def publish(self, count: int, *, rate: float, size: int = 0, slack: float = 60.0) -> Window:
        """Have the server publish *count* events at *rate* (0: back to back); read until
        every reading subscriber has them all, or *slack* seconds past the schedule."""
        audience = self.audience
        subscribers = len(audience.subscribers)
        target = audience.delivered + count * subscribers
        collector = self.collector()
        started, client, server = time.monotonic(), time.process_time(), self.cpu()
        request = audience.start("POST", f"/publish?count={count}&rate={rate:g}&size={size}")
        audience.pump(
            lambda: request.done and audience.delivered >= target,
            within=(count / rate if rate else 0.0) + slack,
        )
        window = Window(
            events=count,
            subscribers=subscribers,
            latencies=audience.take_latencies(),
            missing=max(0, target - audience.delivered),
            server_cpu=self.cpu() - server,
            client_cpu=time.process_time() - client,
            seconds=time.monotonic() - started,
        )
        after = self.collector()
        if collector is not None and after is not None:
            window.full_collections = after["full"] - collector["full"]
            window.collection_seconds = after["seconds"] - collector["seconds"]
        return window

    def at_rate(self, rate: float, seconds: float) -> dict[str, Any]:
        """Latency and CPU at *rate*, for about *seconds* (at least 3 events)."""
        return {"rate": rate, **self.publish(max(3, round(rate * seconds)), rate=rate).figures()}

    def burst(self, plan: Plan) -> dict[str, float]:
        """Deliveries per CPU-second of the server over events published back to back."""
        subscribers = len(self.audience.subscribers)
        count = min(plan.max_burst, max(5, plan.burst_deliveries // subscribers))
        figures = self.publish(count, rate=0).figures()
        return {
            "burst_events": count,
            "burst_deliveries_per_cpu_second": figures["deliveries_per_cpu_second"],
            "burst_missing": figures["missing"],
        }

    def warm(self) -> None:
        """A few subscribers and events, then none: what loads on first use has."""
        self.audience.open(8)
        self.wait_subscribed(8)
        self.publish(3, rate=0)
        self.audience.close_all()
        self.wait_subscribed(0)


def search(session: Session, plan: Plan) -> dict[str, Any]:
    """The highest rate at which raw keeps p99 under the limit and misses nothing: up the
    ladder until a rate fails, then bisect (geometrically) between the last that held and it.
    """
    tried: dict[float, dict[str, Any]] = {}

    def holds(rate: float) -> bool:
        figures = session.at_rate(rate, plan.search_seconds)
        tried[rate] = figures
        return bool(figures["missing"] == 0 and figures["p99_ms"] < plan.latency_limit_ms)

    held: float | None = None
    failed: float | None = None
    for rate in sorted(plan.rates):
        if not holds(rate):
            failed = rate
            break
        held = rate
    for _ in range(plan.bisections):
        if held is None or failed is None:
            break
        middle = float(round(math.sqrt(held * failed)))
        if middle in (held, failed):
            break
        if holds(middle):
            held = middle
        else:
            failed = middle
    return {
        "held": held,
        "failed": failed,
        "tried": [tried[rate] for rate in sorted(tried)],
    }


def stall(session: Session, plan: Plan) -> dict[str, Any]:
    """Some of the subscribers stop reading (fresh connections that never read take their
    place); what the server does over the window that follows."""
    audience = session.audience
    total = len(audience.subscribers)
    audience.close(audience.subscribers[: plan.stalled])
    session.wait_subscribed(total - plan.stalled)
    audience.open_stalled(plan.stalled)
    session.wait_subscribed(total)
    rate = plan.rate(total)
    count = max(3, round(rate * plan.stall_seconds))
    target = audience.delivered + count * len(audience.subscribers)
    rss_start = session.rss()
    started = time.monotonic()
    request = audience.start("POST", f"/publish?count={count}&rate={rate:g}&size={plan.stall_size}")
    timeline = []
    # Polled: the statistics are the server's. Until every event is delivered to the readers.
    while not (request.done and audience.delivered >= target):
        if time.monotonic() > started + plan.stall_seconds + 60:
            break
        timeline.append(
            {"seconds": time.monotonic() - started, "rss": session.rss(), **session.statistics()}
        )
        audience.pump(lambda: request.done and audience.delivered >= target, within=0.25)
    latencies = audience.take_latencies()
    left = [
        next(
            (point["seconds"] for point in timeline if point["subscribers"] <= total - number),
            None,
        )
        for number in range(1, plan.stalled + 1)
    ]
    closed = audience.drain_stalled(within=3.0)
    final = timeline[-1]
    after_first_second = next(
        (point["rss"] for point in timeline if point["seconds"] >= 1.0), final["rss"]
    )
    return {
        "stalled": plan.stalled,
        "rate": rate,
        "event_bytes": plan.stall_size,
        "seconds": time.monotonic() - started,
        # The first events cost what they cost without a stall too (a copy per subscriber,
        # say); what a stall costs is what grows after.
        "rss_growth_first_second_kib": (after_first_second - rss_start) / 1024,
        "rss_growth_kib": (max(point["rss"] for point in timeline) - rss_start) / 1024,
        "rss_growth_end_kib": (final["rss"] - rss_start) / 1024,
        "left_after_s": left,
        "closed_by_server": closed,
        "farewells": sum(subscriber.farewell for subscriber in audience.stalled),
        "counters": {
            key: final[key]
            for key in ("catching_up", "dropped", "slow_disconnects")
            if key in final
        },
        "others_p50_ms": percentile(latencies, 0.50),
        "others_p99_ms": percentile(latencies, 0.99),
        "others_missing": max(0, target - audience.delivered),
        "timeline": timeline,
    }


def measure(session: Session, plan: Plan, count: int, *, redis: Redis | None) -> dict[str, Any]:
    """The main figures at *count* subscribers, on a fresh server."""
    session.warm()
    # Counted from the topic's first subscriber on, which is in already: what a topic costs
    # once is not a cost per subscriber. With Redis, those that come while the first has the
    # reader watch the topic wait for it, all at once: what each held only while it waited
    # leaves some 300 KiB of freed blocks among the live ones in Python's allocator, still
    # resident, which the next hundred arrivals took back. One by one, they left none.
    session.audience.open(1)
    session.wait_subscribed(1)
    # Nothing left free in the allocator that the subscribers could take at no cost in RSS:
    # how much there is depends on how the server started (see trim_heap).
    session.collector(collect=True, trim=True)
    rss_before = session.rss()
    session.audience.open(count - 1)
    session.wait_subscribed(count)
    figures: dict[str, Any] = {
        "kib_per_idle_subscriber": (session.rss() - rss_before) / (count - 1) / 1024
        if count > 1
        else math.nan
    }
    # The subscribers' arrival leaves the collector owing a full collection sooner or later;
    # run now, it falls in no measurement. Otherwise whether it lands in the window below is
    # a matter of phase: it moved the figures at 5,000 subscribers by 2x between two
    # versions of streamkit that differed in what a delivery leaves, not in what it costs.
    session.collector(collect=True)
    calls = redis.calls() if redis else {}
    figures.update(session.at_rate(plan.rate(count), plan.latency_seconds))
    if redis:
        figures["xread_calls"] = redis.calls().get("xread", 0) - calls.get("xread", 0)
    figures.update(session.burst(plan))
    return figures


def measure_workers(backend: str, plan: Plan, redis: Redis) -> dict[str, Any]:
    """Several ``streamkit run`` workers on one socket, the Redis broker."""
    count = plan.workers * plan.worker_subscribers
    with workers_process(backend, redis.url, plan.workers) as server:
        session = Session(server)
        audience = session.audience
        audience.open(count)
        # A worker counts only its own subscribers: probe events, one after another, until
        # every subscriber has had one, and so every subscription is live.
        deadline = time.monotonic() + 120
        while not audience.received(1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not all of {count} subscribers were subscribed")
            audience.call("POST", "/publish?count=1")
            audience.pump(lambda: audience.received(1), within=1.0)
        audience.settle()  # the probes still on their way
        audience.take_latencies()
        # Which worker answers is the kernel's choice too: it may keep picking the same one.
        split: dict[int, int] = {}
        for _ in range(10 * plan.workers):
            statistics = session.statistics()
            split[statistics["pid"]] = statistics["subscribers"]
            if len(split) == plan.workers:
                break
        if len(split) == plan.workers - 1:  # every subscriber is somewhere: the rest is its
            split[0] = count - sum(split.values())
        # Counted while events go one at a time, so that each is read on its own: a worker
        # that reads once for all its subscribers makes one XREAD per event.
        calls = redis.calls()
        figures: dict[str, Any] = {
            "workers": plan.workers,
            "subscribers": count,
            "per_worker": sorted(split.values(), reverse=True),
            **session.at_rate(plan.rate(count), plan.latency_seconds),
        }
        xread = redis.calls().get("xread", 0) - calls.get("xread", 0)
        published = max(3, round(figures["rate"] * plan.latency_seconds))
        figures.update(
            published=published,
            xread_calls=xread,
            xread_calls_per_event=xread / published,
            readers=redis.readers(),
            **session.burst(plan),
        )
        audience.close_all()
    return figures


def _log(record: dict[str, Any]) -> None:
    brief = {key: value for key, value in record.items() if key not in ("timeline", "tried")}
    print(json.dumps(brief, default=str), file=sys.stderr, flush=True)


def run(
    plan: Plan, *, backends: tuple[str, ...], implementations: tuple[str, ...]
) -> dict[str, Any]:
    """Every measurement of *plan*; the figures, JSON-ready."""
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    sustained: list[dict[str, Any]] = []
    stalls: list[dict[str, Any]] = []
    workers: list[dict[str, Any]] = []
    with redis_server() as redis:
        for backend in backends:
            held: float | None = None
            for impl in implementations:
                for count in plan.subscribers:
                    key = {"implementation": impl, "backend": backend, "subscribers": count}
                    with server_process(
                        impl, backend, redis.url, send_timeout=plan.send_timeout
                    ) as server:
                        session = Session(server)
                        figures = measure(
                            session, plan, count, redis=redis if impl == "redis" else None
                        )
                        rows.append({**key, **figures})
                        _log(rows[-1])
                        if count == plan.search_subscribers:
                            if impl == "raw":
                                found = search(session, plan)
                                held = found["held"]
                                sustained.append({**key, **found})
                            else:
                                rate = held or min(plan.rates)
                                figures = session.at_rate(rate, plan.search_seconds)
                                sustained.append({**key, "held": held, "at_rate": figures})
                            _log(sustained[-1])
                            stalls.append({**key, **stall(session, plan)})
                            _log(stalls[-1])
                        session.audience.close_all()
            if "redis" in implementations and plan.workers > 1:
                workers.append({"backend": backend, **measure_workers(backend, plan, redis)})
                _log(workers[-1])
    return {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": time.monotonic() - started,
        "plan": asdict(plan),
        "rows": rows,
        "sustained": sustained,
        "stalls": stalls,
        "workers": workers,
    }


def _numbers(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> tuple[int | float, ...]:
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None

    return parse


def _names(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        names = {name.strip() for name in text.split(",") if name.strip()}
        if unknown := names.difference(allowed):
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, sorted(unknown)))}; choose from {', '.join(allowed)}"
            )
        return tuple(name for name in allowed if name in names)  # raw first: its rate is used

    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.broker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small counts, short windows")
    parser.add_argument(
        "--subscribers", type=_numbers(int), help="subscriber counts, such as 100,1000,5000"
    )
    parser.add_argument("--load", type=float, help="deliveries a second while latency is measured")
    parser.add_argument("--rates", type=_numbers(float), help="the search's rates: 2,4,8,16")
    parser.add_argument("--search-subscribers", type=int, help="subscribers of search and stall")
    parser.add_argument("--workers", type=int, help="workers in the last measurement; 1: none")
    parser.add_argument("--worker-subscribers", type=int, help="subscribers per worker there")
    parser.add_argument(
        "--impl",
        type=_names(IMPLEMENTATIONS),
        help=f"comma-separated, of: {', '.join(IMPLEMENTATIONS)} (default: all)",
    )
    parser.add_argument(
        "--backend",
        type=_names(BACKENDS),
        help=f"comma-separated, of: {', '.join(BACKENDS)} (default: both)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    options = parser.parse_args(argv)
    plan = QUICK if options.quick else Plan()
    changes: dict[str, Any] = {
        "subscribers": options.subscribers,
        "load": options.load,
        "rates": options.rates,
        "search_subscribers": options.search_subscribers,
        "workers": options.workers,
        "worker_subscribers": options.worker_subscribers,
    }
    plan = replace(plan, **{name: value for name, value in changes.items() if value})
    if plan.search_subscribers not in plan.subscribers:
        print(
            f"the search and the stall run at {plan.search_subscribers} subscribers, which are "
            "not among --subscribers: both are left out",
            file=sys.stderr,
        )
    raise_open_file_limit()
    results = run(
        plan,
        backends=options.backend or BACKENDS,
        implementations=options.impl or IMPLEMENTATIONS,
    )
    if options.json is not None:  # first: the figures survive a report that fails
        options.json.write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    if options.markdown is not None:
        options.markdown.write_text(report + "\n")
    sys.stdout.write(report + "\n")


if __name__ == "__main__":
    main()
