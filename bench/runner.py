"""The order of a run: which servers are up when, and what is measured against them.

Per backend: one server per implementation for throughput (of every producer shape) and
disconnects (throughput rounds interleave the implementations, so load from elsewhere on the
machine hits them alike); fresh servers for the timer, and again for memory, started together
and measured one at a time; and fresh servers side by side for the stalled client.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from typing import IO, Any

from . import measure
from .apps import IMPLEMENTATIONS, SHAPES
from .measure import DISCONNECT_PATHS
from .proc import machine
from .server import raise_open_file_limit
from .servers import ServerProcess, start_all, stop_all

__all__ = ["FULL", "MEASUREMENTS", "QUICK", "Plan", "run"]

MEASUREMENTS = ("throughput", "shapes", "timer", "disconnect", "mass", "memory", "stall")
#: The measurements made on the servers of the lifecycle phase.
LIFECYCLE = frozenset(("throughput", "shapes", "disconnect", "mass"))
BACKENDS = ("asyncio", "trio")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How much of everything a run does.

    :param sizes: event data sizes for throughput, in bytes.
    :param warmup: seconds a throughput stream runs before it is measured.
    :param window: seconds a throughput stream is measured.
    :param rounds: throughput rounds per implementation; the best is reported.
    :param shapes: the producer shapes whose throughput is measured beside the busy one's
        (names of :data:`bench.apps.SHAPES`), at the same sizes, warm-up and window.
    :param shape_rounds: rounds per implementation for each of *shapes*; the best is reported.
    :param timer_streams: ticking streams open at once in the timer measurement.
    :param timer_rate: events per second of each ticking stream.
    :param timer_warmup: seconds the ticking streams run, once all are open, before the
        timer measurement's window.
    :param timer_window: seconds over which events and server CPU are counted.
    :param disconnects: single disconnects timed per producer kind.
    :param cleanup_within: seconds a single disconnect's cleanup may take before the series
        stops; how much later it came is then followed for *cleanup_late* more.
    :param mass: streams closed at once in the mass disconnect (having beaten twice, for the
        CPU per heartbeat).
    :param memory_steps: idle stream counts at which worker memory is read.
    :param memory_settle: seconds the memory server is left alone before each reading.
    :param memory_heartbeat_interval: heartbeat interval of the memory and timer servers
        (15 s, the default of streamkit, sse-starlette and FastAPI: at 10,000 streams a short
        one keeps a worker busy enough to slow the test down, see ``docs/benchmarks.md``; and
        the timer counts events, which sse-starlette's heartbeats, sent whether the stream is
        idle or not, would add to).
    :param stall_duration: seconds a client stays stalled.
    :param heartbeat_interval: heartbeat interval of the other servers.
    :param send_timeout: the implementations' send timeout, where they have one.
    """

    sizes: tuple[int, ...] = (64, 1024)
    warmup: float = 0.5
    window: float = 1.0
    rounds: int = 3
    shapes: tuple[str, ...] = ("checkpoint", "upstream")
    shape_rounds: int = 2
    timer_streams: int = 1000
    timer_rate: float = 50.0
    timer_warmup: float = 1.0
    timer_window: float = 1.5
    disconnects: int = 200
    cleanup_within: float = 2.0
    cleanup_late: float = 10.0
    mass: int = 1000
    memory_steps: tuple[int, ...] = (2000, 10000)
    memory_settle: float = 1.0
    memory_heartbeat_interval: float = 15.0
    stall_duration: float = 20.0
    heartbeat_interval: float = 1.0
    send_timeout: float = 10.0


FULL = Plan()
QUICK = Plan(
    warmup=0.1,
    window=0.3,
    rounds=1,
    shape_rounds=1,
    timer_streams=100,
    timer_warmup=0.5,
    timer_window=0.5,
    disconnects=20,
    cleanup_within=0.5,
    cleanup_late=1.0,
    mass=100,
    memory_steps=(50, 150),
    memory_settle=0.2,
    stall_duration=1.5,
    heartbeat_interval=0.2,
)


def _note(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def _guarded(what: str, measurement: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; a failure is recorded (and noted) rather than ending the run."""
    try:
        return measurement()
    except Exception as exc:
        _note(f"{what}: failed: {exc!r}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def _lifecycle_phase(
    plan: Plan, impls: list[str], backend: str, only: set[str], log: IO[bytes]
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {impl: {} for impl in impls}
    options = {"heartbeat_interval": plan.heartbeat_interval, "send_timeout": plan.send_timeout}
    servers = start_all(impls, backend, log=log, **options)

    def replace(impl: str) -> None:
        # Streams left behind, or a spinning worker, would skew what follows.
        stop_all([servers[impl]])
        servers[impl] = ServerProcess(
            impl,
            backend,
            log=log,
            heartbeat_interval=plan.heartbeat_interval,
            send_timeout=plan.send_timeout,
        )
        servers[impl].wait_ready()

    def best_of(shape: str, size: int, count: int) -> dict[str, dict[str, Any]]:
        # Rounds interleave the implementations; the best round of each is kept.
        rounds: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
        for number in range(count):
            _note(f"{backend}: throughput, {shape} producer, {size} B, round {number + 1}/{count}")
            for impl in impls:
                found = _guarded(
                    f"{backend}: {impl}: throughput, {shape} producer",
                    partial(
                        measure.throughput,
                        servers[impl],
                        path=SHAPES[shape],
                        size=size,
                        warmup=plan.warmup,
                        window=plan.window,
                    ),
                )
                rounds[impl].append(found)
                if "error" in found:
                    replace(impl)
        best = {}
        for impl in impls:
            done = [found for found in rounds[impl] if "error" not in found]
            top = max(done, key=lambda found: found["events_per_s"]) if done else {}
            best[impl] = top | {"rounds": rounds[impl]}
        return best

    try:
        if "throughput" in only:
            for size in plan.sizes:
                for impl, found in best_of("busy", size, plan.rounds).items():
                    results[impl].setdefault("throughput", {})[str(size)] = found
        if "shapes" in only:
            for shape in plan.shapes:
                for size in plan.sizes:
                    for impl, found in best_of(shape, size, plan.shape_rounds).items():
                        by_shape = results[impl].setdefault("shapes", {})
                        by_shape.setdefault(shape, {})[str(size)] = found
        for impl in impls:
            if "disconnect" in only:
                kinds = results[impl]["disconnect"] = {}
                kinds_named = ", ".join(DISCONNECT_PATHS)
                _note(f"{backend}: {impl}: {plan.disconnects} disconnects each, {kinds_named}")
                for kind in DISCONNECT_PATHS:
                    found = kinds[kind] = _guarded(
                        f"{backend}: {impl}: {kind} disconnects",
                        partial(
                            measure.disconnects,
                            servers[impl],
                            kind=kind,
                            count=plan.disconnects,
                            within=plan.cleanup_within,
                            late=plan.cleanup_late,
                        ),
                    )
                    if found.get("stopped"):
                        _note(f"{backend}: {impl}: {kind}: {found['stopped']}")
                    if found.get("stopped") or "error" in found:
                        replace(impl)
            if "mass" in only:
                _note(f"{backend}: {impl}: {plan.mass} streams closed at once")
                found = results[impl]["mass_disconnect"] = _guarded(
                    f"{backend}: {impl}: mass disconnect",
                    partial(
                        measure.mass_disconnect,
                        servers[impl],
                        count=plan.mass,
                        heartbeat_interval=plan.heartbeat_interval,
                    ),
                )
                if "error" in found:
                    replace(impl)
    finally:
        stop_all(list(servers.values()))
    return results


def _one_at_a_time(
    plan: Plan,
    impls: list[str],
    backend: str,
    log: IO[bytes],
    what: str,
    measurement: Callable[[ServerProcess], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """*measurement* of each implementation on a fresh server: the servers start together
    and are measured one at a time, each stopped after. A server waiting its turn has served
    nothing, so its memory is as it was when it started, and it takes no CPU from the one
    measured."""
    servers = start_all(
        impls,
        backend,
        heartbeat_interval=plan.memory_heartbeat_interval,
        send_timeout=plan.send_timeout,
        log=log,
    )
    results = {}
    try:
        for impl in impls:
            _note(f"{backend}: {impl}: {what}")
            results[impl] = _guarded(
                f"{backend}: {impl}: {what}", partial(measurement, servers[impl])
            )
            stop_all([servers[impl]])
    finally:
        stop_all(list(servers.values()))
    return results


def _timer_phase(
    plan: Plan, impls: list[str], backend: str, log: IO[bytes]
) -> dict[str, dict[str, Any]]:
    timer = partial(
        measure.timer,
        streams=plan.timer_streams,
        rate=plan.timer_rate,
        warmup=plan.timer_warmup,
        window=plan.timer_window,
    )
    what = f"{plan.timer_streams} streams ticking {plan.timer_rate:g} times a second"
    return _one_at_a_time(plan, impls, backend, log, what, timer)


def _memory_phase(
    plan: Plan, impls: list[str], backend: str, log: IO[bytes]
) -> dict[str, dict[str, Any]]:
    memory = partial(measure.memory, steps=plan.memory_steps, settle=plan.memory_settle)
    what = f"memory with {', '.join(map(str, plan.memory_steps))} idle streams"
    return _one_at_a_time(plan, impls, backend, log, what, memory)


def _stall_phase(
    plan: Plan, impls: list[str], backend: str, log: IO[bytes]
) -> dict[str, dict[str, Any]]:
    _note(f"{backend}: a stalled client on every implementation for {plan.stall_duration} s")
    servers = start_all(
        impls,
        backend,
        heartbeat_interval=plan.heartbeat_interval,
        send_timeout=plan.send_timeout,
        log=log,
    )
    try:
        outcome = measure.stall(list(servers.values()), duration=plan.stall_duration)
    except Exception as exc:
        _note(f"{backend}: stalled clients: failed: {exc!r}")
        return {impl: {"error": f"{type(exc).__name__}: {exc}"} for impl in impls}
    finally:
        stop_all(list(servers.values()))
    return {result.pop("impl"): result for result in outcome}


def run(
    plan: Plan,
    *,
    impls: list[str] | None = None,
    backends: list[str] | None = None,
    only: set[str] | None = None,
) -> dict[str, Any]:
    """Run *plan*; return every figure, as the JSON output holds them.

    :param impls: the implementations to measure (``raw`` first when given, as ratios need
        it); all by default.
    :param backends: ``asyncio``, ``trio`` or both (the default).
    :param only: the measurements to run (of :data:`MEASUREMENTS`); all by default.
    """
    impls = list(impls or IMPLEMENTATIONS)
    backends = list(backends or BACKENDS)
    only = set(only or MEASUREMENTS)
    raise_open_file_limit()
    started = time.monotonic()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryFile() as log:
        try:
            for backend in backends:
                per_impl = results[backend] = {impl: {} for impl in impls}
                if only & LIFECYCLE:
                    for impl, found in _lifecycle_phase(plan, impls, backend, only, log).items():
                        per_impl[impl].update(found)
                if "timer" in only:
                    for impl, found in _timer_phase(plan, impls, backend, log).items():
                        per_impl[impl]["timer"] = found
                if "memory" in only:
                    for impl, found in _memory_phase(plan, impls, backend, log).items():
                        per_impl[impl]["memory"] = found
                if "stall" in only:
                    for impl, found in _stall_phase(plan, impls, backend, log).items():
                        per_impl[impl]["stall"] = found
        except BaseException:
            log.seek(0)
            tail = log.read()[-4000:].decode(errors="replace")
            if tail:
                _note(f"server output, last lines:\n{tail}")
            raise
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "plan": asdict(plan) | {"quick": plan == QUICK},
        "implementations": impls,
        "seconds": time.monotonic() - started,
        "results": results,
    }
