"""Smoke tests of the benchmarks in ``bench/``: quick runs of a few measurements on one
backend, through the real command line.

It starts a real hypercorn server process and a real client, so it is an e2e test; it asserts
that the runner produces a well-formed result, never how fast anything is (speed is measured
by ``python -m bench``, not asserted in tests).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import redis_server
from support.unavailable import service_unavailable

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def run_quick(tmp_path: Path, module: str, *options: str, timeout: float = 45) -> tuple[Any, str]:
    """Run ``python -m <module> --quick <options>``; return its JSON figures and its report."""
    output = tmp_path / "figures.json"
    command = [sys.executable, "-m", module, "--quick", *options, f"--json={output}"]
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(output.read_text()), completed.stdout


def test_quick_throughput_run_writes_a_well_formed_result(tmp_path: Path) -> None:
    data, report = run_quick(
        tmp_path, "bench", "--impl=streamkit", "--backend=asyncio", "--only=throughput"
    )
    assert data["implementations"] == ["streamkit"]
    assert data["plan"]["quick"] is True
    assert data["machine"]["cores"] >= 1
    assert set(data["results"]) == {"asyncio"}
    throughput = data["results"]["asyncio"]["streamkit"]["throughput"]
    assert set(throughput) == {str(size) for size in data["plan"]["sizes"]}
    for result in throughput.values():
        for key in ("events_per_s", "mib_per_s", "server_cpu_us_per_event", "server_cpu_share"):
            assert isinstance(result[key], float)
            assert math.isfinite(result[key])
            assert result[key] > 0, key
        assert len(result["rounds"]) == data["plan"]["rounds"]

    # The markdown report went to stdout, with the throughput table and streamkit's row.
    assert "#### asyncio: throughput" in report
    assert "| streamkit |" in report


def test_quick_shapes_timer_and_mass_run_reports_each(tmp_path: Path) -> None:
    data, report = run_quick(
        tmp_path, "bench", "--impl=raw,streamkit", "--backend=asyncio", "--only=shapes,timer,mass"
    )
    plan = data["plan"]
    for impl in ("raw", "streamkit"):
        result = data["results"]["asyncio"][impl]
        assert set(result) == {"shapes", "timer", "mass_disconnect"}
        mass = result["mass_disconnect"]
        assert mass["cleaned"] == mass["count"] == plan["mass"]
        # What the server's collector did during the teardown, as the server counted it.
        assert mass["full_collections"] >= 0
        assert mass["collection_ms"] >= 0
        assert set(result["shapes"]) == set(plan["shapes"])
        for by_size in result["shapes"].values():
            assert set(by_size) == {str(size) for size in plan["sizes"]}
            for found in by_size.values():
                assert math.isfinite(found["events_per_s"])
                assert found["events_per_s"] > 0
                assert found["server_cpu_us_per_event"] > 0
        timer = result["timer"]
        assert timer["streams"] == plan["timer_streams"]
        assert timer["target_events_per_s"] == plan["timer_streams"] * plan["timer_rate"]
        assert timer["events_per_s"] > 0
        assert timer["server_cpu_us_per_event"] > 0

    assert "#### asyncio: throughput, producers that await between events" in report
    assert "| upstream | streamkit |" in report
    assert f"#### asyncio: a timer producer, {plan['timer_streams']} streams" in report


def test_quick_broker_run_measures_each_broker_beside_the_hand_written_fan_out(
    tmp_path: Path,
) -> None:
    if redis_server.find() is None:
        service_unavailable(redis_server.NOT_FOUND)
    data, report = run_quick(tmp_path, "bench.broker", "--backend=asyncio", timeout=180)
    plan = data["plan"]
    implementations = ("raw", "memory", "redis")
    rows = {row["implementation"]: row for row in data["rows"]}
    assert set(rows) == set(implementations)
    for impl, row in rows.items():
        assert row["subscribers"] == plan["subscribers"][0]
        assert row["p50_ms"] <= row["p99_ms"], impl
        assert row["deliveries_per_cpu_second"] > 0, impl
        assert row["kib_per_idle_subscriber"] > 0, impl
        # What the server's collector did in the window, as the server itself counted.
        assert row["full_collections"] >= 0, impl
        assert row["collection_ms"] >= 0, impl
        if impl != "raw":  # a broker's subscriber that falls behind catches up: no gap
            assert row["missing"] == row["burst_missing"] == 0, impl
    stalls = {stall["implementation"]: stall for stall in data["stalls"]}
    assert set(stalls) == set(implementations)
    for impl, stall in stalls.items():
        # Every stalled subscriber was ended by the server; the others missed nothing.
        assert stall["closed_by_server"] == plan["stalled"], impl
        assert len(stall["left_after_s"]) == plan["stalled"], impl
        assert stall["others_missing"] == 0, impl
    (workers,) = data["workers"]
    assert len(workers["per_worker"]) == plan["workers"]
    assert sum(workers["per_worker"]) == workers["subscribers"]
    assert workers["missing"] == 0

    assert f"### The rate raw sustains at {plan['search_subscribers']} subscribers" in report
    for impl in implementations:
        assert f"| {plan['subscribers'][0]:,} | {impl} |" in report
    assert "p99 at raw's sustainable rate < 50 ms (memory), 80 ms (redis)" in report


# Frees 32 MiB of the C heap below a block still in use, which the allocator then keeps; its
# RSS in KiB with them free, and after the broker servers' trim before memory is measured.
FREED_IN_THE_HEAP = """
from bench.broker_server import trim_heap
from bench.proc import rss_bytes
import os
blocks = [bytearray(4000) for _ in range(8192)]
kept = bytearray(4000)  # above them in the heap: what they free is no free top to give back
del blocks
before = rss_bytes(os.getpid())
print(trim_heap(), before // 1024, rss_bytes(os.getpid()) // 1024)
"""


def test_a_broker_servers_memory_is_measured_with_no_freed_heap_left_resident() -> None:
    # A server whose startup freed memory in its heap (modules compiled from source) held
    # its first subscribers for less RSS than one whose imports had filled it, for the same
    # allocations: the heap's free pages go back to the kernel before the baseline is read.
    completed = subprocess.run(
        [sys.executable, "-c", FREED_IN_THE_HEAP],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    trimmed, before, after = completed.stdout.split()
    if trimmed == "False":
        pytest.skip("no malloc_trim in this C library: the benchmark reads RSS as it is")
    assert int(before) - int(after) > 24 * 1024


# Writes to a loopback connection whose client reads 300 ms later, through the broker
# benchmark's client's own read, and prints how long after the write each read says the
# bytes arrived.
LATE_READ = """
import socket, time
from bench.audience import _STAMP_SPACE, _arrival, _connect
listener = socket.create_server(("127.0.0.1", 0))
client = _connect(listener.getsockname()[1])
server, _ = listener.accept()
client.setblocking(True)
# The kernel turns its receive stamps on for the whole machine a moment after the first
# socket asks (a deferred work item): until then a read is stamped as it is made. The
# benchmark's subscribers are open long before its events; here, wait for it.
for _ in range(100):
    written = time.time_ns()
    server.send(b"warm-up")
    time.sleep(0.02)
    _, messages, _, _ = client.recvmsg_into([bytearray(1024)], _STAMP_SPACE)
    if _arrival(messages) - written < 10_000_000:
        break
for _ in range(3):
    written = time.time_ns()
    server.send(b"data: 1 0\\n\\n")
    time.sleep(0.3)
    _, messages, _, _ = client.recvmsg_into([bytearray(1024)], _STAMP_SPACE)
    print((_arrival(messages) - written) / 1e6)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="SO_TIMESTAMPNS: Linux's socket option")
def test_the_broker_client_times_an_event_by_its_arrival_not_by_its_read() -> None:
    # The client reads a thousand subscribers one after another; the last is read long after
    # its bytes arrived. Its latency is the server's: publish to socket, not to read.
    completed = subprocess.run(
        [sys.executable, "-c", LATE_READ], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    delays = [float(line) for line in completed.stdout.split()]
    assert len(delays) == 3
    assert all(0 <= delay < 100 for delay in delays), delays  # read at 300 ms


def test_quick_collector_run_compares_what_a_delivery_leaves_behind(tmp_path: Path) -> None:
    data, report = run_quick(tmp_path, "bench.collector", "--backend=asyncio")
    rows = {row["implementation"]: row for row in data["rows"]}
    assert set(rows) == {"raw", "memory"}
    for impl, row in rows.items():
        # Every subscriber got every event of the window, and one left something behind
        # (at least the wait for the next event).
        assert (
            row["deliveries"]
            == round(data["plan"]["rate"] * data["plan"]["seconds"]) * (data["plan"]["subscribers"])
        ), impl
        assert row["objects_left_per_delivery"] >= 1, impl
        assert row["cpu_us_per_delivery"] > 0, impl
    assert "| asyncio | memory |" in report


def test_quick_instructions_run_counts_each_implementations_server(tmp_path: Path) -> None:
    if shutil.which("callgrind_control") is None:
        service_unavailable("valgrind is not installed (Debian: valgrind)")
    # A producer that awaits and the heartbeats: both of its tables, each a callgrind run.
    data, report = run_quick(
        tmp_path, "bench.instructions", "--producer=checkpoint,heartbeat", timeout=180
    )
    rows = {(row["producer"], row["implementation"]): row for row in data["rows"]}
    shapes = ("checkpoint", "heartbeat")
    assert set(rows) == {(shape, impl) for shape in shapes for impl in ("raw", "streamkit")}
    plan = data["plan"]
    for (producer, impl), row in rows.items():
        # A window of real events (of heartbeats: at least one per idle stream), each
        # costing the server what a hypercorn write at least costs: tens of thousands of
        # instructions.
        least = plan["idle_streams"] if producer == "heartbeat" else plan["least_events"]
        assert row["events"] >= least, (producer, impl)
        assert 10_000 < row["per_event"] < 10_000_000, (producer, impl)
        assert row["instructions"] == pytest.approx(row["per_event"] * row["events"])
    assert "| asyncio | checkpoint | streamkit |" in report
    assert "| asyncio | streamkit |" in report  # the heartbeat table's row
    assert "x) |" in report  # the ratio to raw's


def test_quick_delivery_run_counts_each_fan_out_beside_the_hand_written_one(
    tmp_path: Path,
) -> None:
    if shutil.which("callgrind_control") is None:
        service_unavailable("valgrind is not installed (Debian: valgrind)")
    if redis_server.find() is None:
        service_unavailable(redis_server.NOT_FOUND)
    # The hand-written fan-out and the broker that costs the most: the memory broker's
    # delivery is the Redis one's fan-out without Redis.
    data, report = run_quick(tmp_path, "bench.delivery", "--impl=raw,redis", timeout=180)
    plan = data["plan"]
    rows = {row["implementation"]: row for row in data["rows"]}
    assert set(rows) == {"raw", "redis"}
    for impl, row in rows.items():
        # Every subscriber had every counted burst; each delivery cost some hundreds of
        # instructions at least (a write, a frame queued), far from nothing or from millions.
        assert row["deliveries"] == plan["rounds"] * plan["burst"] * row["subscribers"], impl
        assert 100 < row["per_delivery"] < 1_000_000, impl
        assert row["instructions"] == pytest.approx(row["per_delivery"] * row["deliveries"])
    assert "| asyncio | redis |" in report
    assert "x) |" in report  # the ratio to the hand-written fan-out's


def test_the_http2_benchmark_prints_its_tables() -> None:
    command = [
        sys.executable,
        "-m",
        "bench.h2",
        "--backend=trio",
        "--seconds=1",
        "--streams=20",
        "--connections=2",
    ]
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=90, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = completed.stdout
    assert "### A stalled HTTP/2 stream, worker RSS growth over 1 s" in report
    assert "| streamkit.serve |" in report
    assert "| plain hypercorn |" in report
    assert "| h2 | 2 |" in report
    assert "| http/1.1 | 20 |" in report


def test_the_parser_benchmark_parses_every_event_with_each_parser(tmp_path: Path) -> None:
    output = tmp_path / "parser.json"
    command = [sys.executable, "-m", "bench.parser", "--events=300", f"--json={output}"]
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=45, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    figures = json.loads(output.read_text())
    assert len(figures) == 3
    for by_parser in figures.values():
        assert set(by_parser) == {
            "streamkit SSEDecoder",
            "streamkit client (decoder + last id)",
            "httpx-sse 0.4",
        }
        assert all(math.isfinite(rate) and rate > 0 for rate in by_parser.values())
