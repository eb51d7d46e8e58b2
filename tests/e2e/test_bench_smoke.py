"""Smoke tests of the benchmarks in ``bench/``: quick runs of a few measurements on one
backend, through the real command line.

It starts a real hypercorn server process and a real client, so it is an e2e test; it asserts
that the runner produces a well-formed result, never how fast anything is (speed is measured
by ``python -m bench``, not asserted in tests).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_quick_throughput_run_writes_a_well_formed_result(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--impl=streamkit",
        "--backend=asyncio",
        "--only=throughput",
        f"--json={output}",
    ]
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=45, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]

    data = json.loads(output.read_text())
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
    assert "#### asyncio: throughput" in completed.stdout
    assert "| streamkit |" in completed.stdout


def test_quick_shapes_and_timer_run_reports_every_shape_and_the_timer(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--impl=raw,streamkit",
        "--backend=asyncio",
        "--only=shapes,timer",
        f"--json={output}",
    ]
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=45, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]

    data = json.loads(output.read_text())
    plan = data["plan"]
    for impl in ("raw", "streamkit"):
        result = data["results"]["asyncio"][impl]
        assert set(result) == {"shapes", "timer"}
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

    report = completed.stdout
    assert "#### asyncio: throughput, producers that await between events" in report
    assert "| upstream | streamkit |" in report
    assert f"#### asyncio: a timer producer, {plan['timer_streams']} streams" in report


def test_the_http2_benchmark_prints_its_tables() -> None:
    command = [
        sys.executable,
        "-m",
        "bench.h2",
        "--backend=trio",
        "--seconds=2",
        "--streams=20",
        "--connections=2",
    ]
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=90, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = completed.stdout
    assert "### A stalled HTTP/2 stream, worker RSS growth over 2 s" in report
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
