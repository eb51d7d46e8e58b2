"""The broker benchmark's markdown report: streamkit's figures with their ratio to the
hand-written fan-out's (raw) in parentheses, and streamkit's targets, met or missed."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["markdown"]

BASELINE = "raw"
#: streamkit's deliveries per CPU-second, at least this times raw's, by broker.
DELIVERY_TARGETS = {"memory": 0.8, "redis": 0.7}
#: streamkit's p99 at the rate raw sustains, under this many ms, by broker; the memory
#: broker's is the limit raw is held to (the run's ``latency_limit_ms``).
REDIS_LATENCY_TARGET_MS = 80.0
#: streamkit's memory per idle subscriber, at most raw's and this many KiB.
MEMORY_TARGET_KIB = 10.0


def _number(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base or math.isnan(value) or math.isnan(base):
        return ""
    return f" ({value / base:.2f}x)"


def _beyond(value: float, base: float | None) -> str:
    return "" if base is None else f" ({value - base:+,.0f})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _rate(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:g}/s"


def _main_table(backend: str, rows: list[dict[str, Any]]) -> list[str]:
    base = {row["subscribers"]: row for row in rows if row["implementation"] == BASELINE}
    table = []
    for row in rows:
        raw = base.get(row["subscribers"], {}) if row["implementation"] != BASELINE else {}
        kib = _number(row["kib_per_idle_subscriber"], 1)
        if raw:
            kib += f" ({row['kib_per_idle_subscriber'] - raw['kib_per_idle_subscriber']:+.1f})"
        table.append(
            [
                f"{row['subscribers']:,}",
                row["implementation"],
                _rate(round(row["rate"], 2)),
                _number(row["p50_ms"], 1) + _ratio(row["p50_ms"], raw.get("p50_ms")),
                _number(row["p99_ms"], 1) + _ratio(row["p99_ms"], raw.get("p99_ms")),
                _number(row["deliveries_per_cpu_second"])
                + _ratio(row["deliveries_per_cpu_second"], raw.get("deliveries_per_cpu_second")),
                _collections(row),
                _number(row["burst_deliveries_per_cpu_second"])
                + _ratio(
                    row["burst_deliveries_per_cpu_second"],
                    raw.get("burst_deliveries_per_cpu_second"),
                ),
                kib,
            ]
        )
    header = [
        "subscribers", "implementation", "publish rate", "p50 ms", "p99 ms",
        "deliveries/CPU-s at that rate", "full collections at that rate (ms in all)",
        "deliveries/CPU-s, burst", "KiB per idle subscriber",
    ]  # fmt: skip
    return [f"### {backend}", "", *_table(header, table), ""]


def _collections(row: dict[str, Any]) -> str:
    """The server's full collections in the window at the rate, and its CPU time in every
    collection meanwhile."""
    full, milliseconds = row.get("full_collections"), row.get("collection_ms")
    if full is None or milliseconds is None:
        return "n/a"
    return f"{full} ({milliseconds:,.0f})"


def _sustained_table(results: dict[str, Any]) -> list[str]:
    limit = results["plan"]["latency_limit_ms"]
    table = []
    for backend in dict.fromkeys(entry["backend"] for entry in results["sustained"]):
        entries = {e["implementation"]: e for e in results["sustained"] if e["backend"] == backend}
        raw = entries.get(BASELINE)
        if raw is None:
            continue
        tried = ", ".join(
            f"{figures['rate']:g}/s: {_number(figures['p99_ms'], 1)}" for figures in raw["tried"]
        )
        held = raw["held"]
        at_held = next((f for f in raw["tried"] if f["rate"] == held), None)
        raw_p99 = at_held["p99_ms"] if at_held else None
        if held is None:
            verdict = f"none (p99 ≥ {limit:g} ms from the first rate)"
        elif raw["failed"] is None:
            verdict = f"{_rate(held)} or more (the highest tried)"
        else:
            verdict = _rate(held)
        cells = [backend, verdict]
        cells.append(_number(raw_p99, 1))
        for impl in ("memory", "redis"):
            entry = entries.get(impl)
            if entry is None:
                cells.append("n/a")
                continue
            p99 = entry["at_rate"]["p99_ms"]
            note = "" if held else f" at {_rate(entry['at_rate']['rate'])}"
            cells.append(_number(p99, 1) + _ratio(p99, raw_p99) + note)
        cells.append(tried)
        table.append(cells)
    if not table:
        return []
    subscribers = results["plan"]["search_subscribers"]
    header = [
        "backend", f"raw's highest rate, p99 < {limit:g} ms", "raw p99 ms", "memory p99 ms",
        "redis p99 ms", "raw's p99 ms at each rate tried",
    ]  # fmt: skip
    return [
        f"### The rate raw sustains at {subscribers:,} subscribers",
        "",
        *_table(header, table),
        "",
    ]


def _seconds(values: list[float | None]) -> str:
    done = [value for value in values if value is not None]
    if not done:
        return "never"
    first, last = min(done), max(done)
    span = f"{first:.1f}" if first == last else f"{first:.1f} to {last:.1f}"
    return span + (f" ({len(done)} of {len(values)})" if len(done) < len(values) else "")


def _stall_table(results: dict[str, Any]) -> list[str]:
    raws = {e["backend"]: e for e in results["stalls"] if e["implementation"] == BASELINE}
    table = []
    for entry in results["stalls"]:
        raw = raws.get(entry["backend"], {}) if entry["implementation"] != BASELINE else {}
        counters = ", ".join(f"{key} {value}" for key, value in entry["counters"].items() if value)
        first_second = entry["rss_growth_first_second_kib"]
        after = entry["rss_growth_kib"] - first_second
        raw_after = raw["rss_growth_kib"] - raw["rss_growth_first_second_kib"] if raw else None
        table.append(
            [
                entry["backend"],
                entry["implementation"],
                f"{_number(first_second)}"
                + _beyond(first_second, raw.get("rss_growth_first_second_kib"))
                + f" / {_number(after)}"
                + _beyond(after, raw_after),
                _seconds(entry["left_after_s"]),
                f"{entry['closed_by_server']} of {entry['stalled']}",
                counters or "none",
                _number(entry["others_p99_ms"], 1)
                + _ratio(entry["others_p99_ms"], raw.get("others_p99_ms")),
            ]
        )
    if not results["stalls"]:
        return []
    first = results["stalls"][0]
    others = first["subscribers"] - first["stalled"]
    header = [
        "backend", "implementation", "server RSS growth KiB: first second / after",
        "stalled ones left the fan-out after s", "closed by the server", "broker counters",
        f"the other {others:,}: p99 ms",
    ]  # fmt: skip
    return [
        f"### {first['stalled']} stalled subscribers among {first['subscribers']:,}",
        "",
        f"{first['rate']:g} events/s of {first['event_bytes'] // 1024} KiB for "
        f"{results['plan']['stall_seconds']:g} s; the servers' send timeout is "
        f"{results['plan']['send_timeout']:g} s.",
        "",
        *_table(header, table),
        "",
    ]


def _workers_table(results: dict[str, Any]) -> list[str]:
    if not results["workers"]:
        return []
    table = []
    for entry in results["workers"]:
        split = " + ".join(f"{count:,}" for count in entry["per_worker"])
        table.append(
            [
                entry["backend"],
                f"{entry['workers']} x {entry['subscribers'] // entry['workers']:,} ({split})",
                _rate(round(entry["rate"], 2)),
                _number(entry["p50_ms"], 1),
                _number(entry["p99_ms"], 1),
                _number(entry["deliveries_per_cpu_second"]),
                _number(entry["burst_deliveries_per_cpu_second"]),
                f"{entry['xread_calls']:,} for {entry['published']:,} events "
                f"({entry['xread_calls_per_event']:.2f} per event)",
                str(entry["readers"]),
            ]
        )
    header = [
        "backend", "workers x subscribers (as the kernel spread them)", "publish rate", "p50 ms",
        "p99 ms", "deliveries/CPU-s, all workers", "burst", "XREAD calls", "connections in XREAD",
    ]  # fmt: skip
    return ["### Several workers, Redis broker", "", *_table(header, table), ""]


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def _worst_ratio(pairs: list[tuple[dict[str, Any], dict[str, Any]]], impl: str, key: str) -> float:
    """The lowest of *impl*'s *key* over raw's, among (row, raw's row) *pairs*."""
    return min(float(row[key] / base[key]) for row, base in pairs if row["implementation"] == impl)


def _targets(results: dict[str, Any]) -> list[str]:
    rows = results["rows"]
    backends = list(dict.fromkeys(row["backend"] for row in rows))
    limits = {"memory": results["plan"]["latency_limit_ms"], "redis": REDIS_LATENCY_TARGET_MS}
    lines: dict[str, list[str]] = {
        "deliveries/CPU-s ≥ "
        + ", ".join(f"{share:g}x raw ({impl})" for impl, share in DELIVERY_TARGETS.items())
        + ": the worst, at the rate / burst": [],
        "p99 at raw's sustainable rate < "
        + ", ".join(f"{limit:g} ms ({impl})" for impl, limit in limits.items()): [],
        f"memory per idle subscriber ≤ raw + {MEMORY_TARGET_KIB:g} KiB (worst)": [],
    }
    cells = list(lines.values())
    for backend in backends:
        mine = [row for row in rows if row["backend"] == backend]
        raw = {row["subscribers"]: row for row in mine if row["implementation"] == BASELINE}
        theirs = [row for row in mine if row["implementation"] != BASELINE]
        pairs = [(row, raw[row["subscribers"]]) for row in theirs if row["subscribers"] in raw]
        if not pairs:
            for cell in cells:
                cell.append("n/a")
            continue
        shares = []
        for impl in dict.fromkeys(row["implementation"] for row, _ in pairs):
            paced = _worst_ratio(pairs, impl, "deliveries_per_cpu_second")
            burst = _worst_ratio(pairs, impl, "burst_deliveries_per_cpu_second")
            met = min(paced, burst) >= DELIVERY_TARGETS[impl]
            shares.append(f"{impl} {paced:.2f}x / {burst:.2f}x, {_verdict(met)}")
        cells[0].append("; ".join(shares))
        at_rate = [
            entry
            for entry in results["sustained"]
            if entry["backend"] == backend and entry["implementation"] != BASELINE
        ]
        if at_rate:
            held = at_rate[0]["held"]
            p99s = []
            for entry in at_rate:
                impl, p99 = entry["implementation"], entry["at_rate"]["p99_ms"]
                met = p99 < limits[impl]
                p99s.append(f"{impl} {p99:.1f} ms" + (f", {_verdict(met)}" if held else ""))
            # Without a rate raw sustains, the target has nothing to be held to.
            where = "" if held else f" at {_rate(at_rate[0]['at_rate']['rate'])}: raw holds no rate"
            cells[1].append("; ".join(p99s) + where)
        else:
            cells[1].append("n/a")
        extra = max(
            row["kib_per_idle_subscriber"] - base["kib_per_idle_subscriber"] for row, base in pairs
        )
        cells[2].append(f"{extra:+.1f} KiB — {_verdict(extra <= MEMORY_TARGET_KIB)}")
    table = [[target, *values] for target, values in lines.items()]
    return ["### streamkit's targets", "", *_table(["target", *backends], table), ""]


def markdown(results: dict[str, Any]) -> str:
    """The report of a run of ``python -m bench.broker``."""
    about = results["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in about["packages"].items())
    lines = [
        f"Run of {results['started']}, {results['seconds']:.0f} s. Machine: {about['cpu']}, "
        f"{about['cores']} cores, {about['memory']}, Linux {about['kernel']}, {about['python']}. "
        f"{packages}.",
        "",
        "Ratios in parentheses are to the hand-written fan-out (raw) in the same run; memory "
        "differences are KiB beyond raw's. Latency at "
        f"{results['plan']['load']:,.0f} deliveries a second (the rate is that over the "
        "subscribers).",
        "",
    ]
    rows = results["rows"]
    windows = rows + [entry["at_rate"] for entry in results["sustained"] if "at_rate" in entry]
    windows += [figures for entry in results["sustained"] for figures in entry.get("tried", [])]
    windows += results["workers"]
    busiest = max((window["client_cpu_share"] for window in windows), default=0.0)
    lines += [
        f"The client (one process) used at most {busiest:.0%} of a core in any window.",
        "",
    ]
    for backend in dict.fromkeys(row["backend"] for row in rows):
        lines += _main_table(backend, [row for row in rows if row["backend"] == backend])
    lines += _sustained_table(results)
    lines += _stall_table(results)
    lines += _workers_table(results)
    lines += _targets(results)
    return "\n".join(lines)
