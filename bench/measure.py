"""The measurements, one function each, every one against a running :class:`ServerProcess`.

Server-side figures come from the server: its CPU time and RSS from ``/proc``, cleanup
timestamps from its probe (``time.monotonic()``, the same clock as the client's).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from .apps import SHAPES
from .client import Fleet, Stream, control
from .proc import cpu_seconds, rss_bytes
from .servers import ServerProcess

__all__ = [
    "DISCONNECT_PATHS",
    "disconnects",
    "mass_disconnect",
    "memory",
    "stall",
    "throughput",
    "timer",
]

MIB = 1024 * 1024


def throughput(
    server: ServerProcess, *, path: str = "/events", size: int, warmup: float, window: float
) -> dict[str, Any]:
    """One stream of *size*-byte events from the producer at *path* (the busy one unless
    said otherwise), read flat out: *warmup* seconds unmeasured, then about *window* seconds
    measured, until the stream ends."""
    stream = Stream(server.port, f"{path}?size={size}&seconds={warmup + window}")
    try:
        stream.read_head()
        stream.read_for(warmup)
        bytes0, events0 = stream.bytes, stream.events
        cpu0, client0, time0 = cpu_seconds(server.pid), time.process_time(), time.monotonic()
        stream.read_to_end()
        elapsed = time.monotonic() - time0
        server_cpu = cpu_seconds(server.pid) - cpu0
        client_cpu = time.process_time() - client0
        events, received = stream.events - events0, stream.bytes - bytes0
    finally:
        stream.close()
    server.wait_quiet()
    return {
        "events_per_s": events / elapsed,
        "mib_per_s": received / elapsed / MIB,
        "server_cpu_us_per_event": server_cpu / events * 1e6 if events else None,
        "server_cpu_share": server_cpu / elapsed,
        "client_cpu_share": client_cpu / elapsed,
        "seconds": elapsed,
    }


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def _summary_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": statistics.median(values) * 1e3,
        "p99_ms": _percentile(values, 0.99) * 1e3,
        "max_ms": max(values) * 1e3,
    }


#: The producer each kind of single disconnect is timed on.
DISCONNECT_PATHS = {
    "idle": "/idle",
    "busy": f"{SHAPES['busy']}?size=64",
    "upstream": f"{SHAPES['upstream']}?size=64",
}


def disconnects(
    server: ServerProcess, *, kind: str, count: int, within: float = 2.0, late: float = 10.0
) -> dict[str, Any]:
    """Open a stream, let it run, close it, and time the server's cleanup; *count* times.

    An idle stream is closed with nothing unread, so the close is a FIN; a busy or upstream
    one with data unread, so the kernel resets it, as it does when a real client goes away
    mid-stream. An upstream stream's cleanup is its upstream task's, once that has ended.

    A series stops at the first stream not cleaned up within *within* seconds; how much
    later it was (up to *late* seconds more) is reported, and whether the server still
    answered at all (if not, the CPU share it was using). After a stopped series the server
    should be replaced.
    """
    path = DISCONNECT_PATHS[kind]
    busy = kind != "idle"
    latencies: list[float] = []
    cleaned = server.state()["cleaned"]
    result: dict[str, Any] = {"stopped": None}
    for _ in range(count):
        stream = Stream(server.port, path)
        stream.read_head()
        stream.read_events(100 if busy else 1)
        if not busy:
            stream.drain()
        closed_at = stream.close()
        try:
            state = server.wait_cleaned(cleaned + 1, within=within, since=cleaned)
            if state["cleaned"] <= cleaned:
                state = server.wait_cleaned(cleaned + 1, within=late, since=cleaned)
                after = state["cleanups"][0] - closed_at if state["cleanups"] else None
                result["stopped"] = {"reason": "not cleaned up in time", "cleaned_after_s": after}
                break
        except (TimeoutError, OSError):
            cpu0, time0 = cpu_seconds(server.pid), time.monotonic()
            time.sleep(0.5)
            share = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - time0)
            result["stopped"] = {"reason": "server unresponsive", "server_cpu_share": share}
            break
        latencies.append(state["cleanups"][0] - closed_at)
        cleaned += 1
    if result["stopped"] is None:
        server.wait_quiet()
    return result | {"count": len(latencies)} | _summary_ms(latencies)


def mass_disconnect(
    server: ServerProcess, *, count: int, heartbeat_interval: float, within: float = 10.0
) -> dict[str, Any]:
    """Open *count* idle streams, let them beat for two heartbeat intervals (the worker's CPU
    per heartbeat is measured meanwhile), then close them all at once and time until every
    cleanup ran.

    Once the streams are open the server runs a full garbage collection, which their
    arrival made due: left to come when it will, it falls in the teardown or not by the phase
    of the collector's counts, and a change that only makes a stream hold fewer objects can
    move it there (the broker benchmark does the same, for the same reason)."""
    fleet = Fleet(server.port, "/idle")
    fleet.open(count)
    control(server.port, "/_bench/collect")
    cpu0 = cpu_seconds(server.pid)
    beats = fleet.pump_for(2 * heartbeat_interval)
    heartbeat_cpu = cpu_seconds(server.pid) - cpu0
    before = server.state()
    cleaned = before["cleaned"]
    first, last = fleet.close_all()
    state = server.wait_cleaned(cleaned + count, within=within, since=cleaned)
    stamps: list[float] = state["cleanups"]
    done = len(stamps)
    server.wait_quiet()
    return {
        "count": count,
        "cleaned": done,
        "close_span_ms": (last - first) * 1e3,
        "all_cleaned_after_last_close_ms": (max(stamps) - last) * 1e3 if done >= count else None,
        "median_after_close_ms": (statistics.median(stamps) - first) * 1e3 if stamps else None,
        "heartbeats_per_stream": beats / count,
        "cpu_us_per_heartbeat": heartbeat_cpu / beats * 1e6 if beats else None,
        # From the last heartbeats to the last cleanup (the server's own count).
        "full_collections": state["full_collections"] - before["full_collections"],
        "collection_ms": (state["collection_seconds"] - before["collection_seconds"]) * 1e3,
    }


def timer(
    server: ServerProcess, *, streams: int, rate: float, warmup: float, window: float
) -> dict[str, Any]:
    """Open *streams* ticking streams of 64-byte events, *rate* a second each, all at once;
    after *warmup* seconds, count the events that arrive over *window* seconds and the
    server's CPU time meanwhile, then close them all."""
    fleet = Fleet(server.port, f"/ticks?size=64&rate={rate:g}")
    try:
        fleet.open(streams)
        fleet.pump_for(warmup)
        cpu0, client0, time0 = cpu_seconds(server.pid), time.process_time(), time.monotonic()
        events = fleet.pump_for(window)
        elapsed = time.monotonic() - time0
        server_cpu = cpu_seconds(server.pid) - cpu0
        client_cpu = time.process_time() - client0
    finally:
        fleet.close_all()
    server.wait_quiet()
    target = streams * rate
    return {
        "streams": streams,
        "target_events_per_s": target,
        "events_per_s": events / elapsed,
        "kept_up": events / elapsed / target,
        "server_cpu_us_per_event": server_cpu / events * 1e6 if events else None,
        "server_cpu_share": server_cpu / elapsed,
        "client_cpu_share": client_cpu / elapsed,
        "seconds": elapsed,
    }


def memory(server: ServerProcess, *, steps: tuple[int, ...], settle: float = 1.0) -> dict[str, Any]:
    """Worker RSS with *steps* idle streams open (each has had its first event, and its
    heartbeat timer is armed), per stream; the server's CPU per stream set up, too.

    The baseline is taken after a few streams have been opened and closed, so that code
    paths are loaded and the figure is what each further stream costs.
    """
    warm = Fleet(server.port, "/idle")
    warm.open(20)
    warm.close_all()
    server.wait_quiet()
    time.sleep(settle)
    baseline = rss_bytes(server.pid)
    fleet = Fleet(server.port, "/idle")
    results: list[dict[str, Any]] = []
    try:
        for target in steps:
            adding = target - len(fleet)
            cpu0, opened_at = cpu_seconds(server.pid), time.monotonic()
            fleet.open(adding, within=300.0)
            opening = time.monotonic() - opened_at
            setup_cpu = cpu_seconds(server.pid) - cpu0
            fleet.pump_for(settle)
            rss = rss_bytes(server.pid)
            results.append(
                {
                    "streams": target,
                    "rss_mib": rss / MIB,
                    "kib_per_stream": (rss - baseline) / target / 1024,
                    "open_seconds": opening,
                    "setup_cpu_us_per_stream": setup_cpu / adding * 1e6,
                }
            )
    finally:
        fleet.close_all()
    server.wait_quiet(within=60.0)
    return {"baseline_mib": baseline / MIB, "steps": results}


def stall(
    servers: list[ServerProcess], *, duration: float, interval: float = 0.5
) -> list[dict[str, Any]]:
    """Open one busy stream of 1 KiB events to each server, never read it, and follow each
    worker's RSS for *duration* seconds (the servers are measured side by side: a stalled
    stream should cost no CPU)."""
    before = {server.pid: rss_bytes(server.pid) for server in servers}
    cpu0 = {server.pid: cpu_seconds(server.pid) for server in servers}
    cleaned0 = {server.pid: server.state()["cleaned"] for server in servers}
    streams = []
    for server in servers:
        stream = Stream(server.port, "/events?size=1024", receive_buffer=4096)
        stream.read_head()
        streams.append(stream)
    started = time.monotonic()
    peak = dict(before)
    ended_after: dict[int, float | None] = {server.pid: None for server in servers}
    try:
        while (now := time.monotonic()) < started + duration:
            time.sleep(min(interval, started + duration - now))
            for server in servers:
                peak[server.pid] = max(peak[server.pid], rss_bytes(server.pid))
                if ended_after[server.pid] is None:
                    state = server.state(since=cleaned0[server.pid])
                    if state["cleanups"]:
                        ended_after[server.pid] = state["cleanups"][0] - started
        results = []
        for server in servers:
            end = rss_bytes(server.pid)
            results.append(
                {
                    "impl": server.impl,
                    "seconds": duration,
                    "growth_kib": (end - before[server.pid]) / 1024,
                    "peak_growth_kib": (max(peak[server.pid], end) - before[server.pid]) / 1024,
                    "cpu_seconds": cpu_seconds(server.pid) - cpu0[server.pid],
                    "stream_ended_after_s": ended_after[server.pid],
                }
            )
    finally:
        for stream in streams:
            stream.close()
    return results
