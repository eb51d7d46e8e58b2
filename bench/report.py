"""The markdown report: absolute figures, each with its ratio to raw ASGI, and streamkit's
targets, met or missed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["markdown"]

BASELINE = "raw"
#: A throughput row whose server was below this CPU share was limited by something else.
FULL_CPU = 0.85
#: A timer row whose streams got less than this share of their events fell behind.
KEPT_UP = 0.95


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return ""
    return f" ({value / base:.2f}x)"


def _get(result: dict[str, Any], *keys: str) -> Any:
    found: Any = result
    for key in keys:
        if not isinstance(found, dict) or key not in found:
            return None
        found = found[key]
    return found


def _cell(
    results: dict[str, Any], impl: str, keys: tuple[str, ...], digits: int, ratio: bool = True
) -> str:
    value = _get(results.get(impl, {}), *keys)
    base = _get(results.get(BASELINE, {}), *keys) if ratio and impl != BASELINE else None
    return _number(value, digits) + _ratio(value, base)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _size_columns(sizes: list[str]) -> list[str]:
    header = []
    for size in sizes:
        label = f"{int(size) // 1024} KiB" if int(size) >= 1024 else f"{size} B"
        header += [f"{label} events/s", f"{label} MiB/s", f"{label} CPU µs/event"]
    return [*header, "server / client CPU"]


def _throughput_cells(
    results: dict[str, Any], impl: str, keys: tuple[str, ...], sizes: list[str]
) -> list[str]:
    """A throughput row's figures at each size, from ``results[impl][*keys][size]``."""
    row, shares = [], []
    for size in sizes:
        row.append(_cell(results, impl, (*keys, size, "events_per_s"), 0))
        row.append(_cell(results, impl, (*keys, size, "mib_per_s"), 1))
        row.append(_cell(results, impl, (*keys, size, "server_cpu_us_per_event"), 2))
        server = _get(results.get(impl, {}), *keys, size, "server_cpu_share")
        client = _get(results.get(impl, {}), *keys, size, "client_cpu_share")
        if server is not None:
            flag = "" if server >= FULL_CPU else " ⚠"
            shares.append(f"{server:.0%}/{client:.0%}{flag}")
    return [*row, ", ".join(shares) or "n/a"]


def _throughput(
    backend: str, results: dict[str, Any], impls: list[str], plan: dict[str, Any]
) -> list[str]:
    sizes = [str(size) for size in plan["sizes"]]
    header = ["implementation", *_size_columns(sizes)]
    rows = [[impl, *_throughput_cells(results, impl, ("throughput",), sizes)] for impl in impls]
    return [f"#### {backend}: throughput", "", *_table(header, rows), ""]


def _shapes(
    backend: str, results: dict[str, Any], impls: list[str], plan: dict[str, Any]
) -> list[str]:
    sizes = [str(size) for size in plan["sizes"]]
    header = ["producer", "implementation", *_size_columns(sizes)]
    rows = [
        [shape, impl, *_throughput_cells(results, impl, ("shapes", shape), sizes)]
        for shape in plan["shapes"]
        for impl in impls
    ]
    title = f"#### {backend}: throughput, producers that await between events"
    return [title, "", *_table(header, rows), ""]


def _timer(
    backend: str, results: dict[str, Any], impls: list[str], plan: dict[str, Any]
) -> list[str]:
    header = ["implementation", "CPU µs per event", "events/s delivered", "server / client CPU"]
    rows = []
    for impl in impls:
        found = _get(results.get(impl, {}), "timer")
        if found is None or "error" in found:  # a failure is listed under the tables
            rows.append([impl, "n/a", "n/a", "n/a"])
            continue
        flag = "" if found["kept_up"] >= KEPT_UP else " ⚠"
        delivered = (
            f"{found['events_per_s']:,.0f} of {found['target_events_per_s']:,.0f}"
            f" ({found['kept_up']:.0%}){flag}"
        )
        shares = f"{found['server_cpu_share']:.0%}/{found['client_cpu_share']:.0%}"
        cpu = _cell(results, impl, ("timer", "server_cpu_us_per_event"), 1)
        rows.append([impl, cpu, delivered, shares])
    title = (
        f"#### {backend}: a timer producer, {plan['timer_streams']:,} streams"
        f" at {plan['timer_rate']:g} events/s each"
    )
    return [title, "", *_table(header, rows), ""]


def _pair(
    result: dict[str, Any], keys: tuple[str, ...], first: str, second: str, plan: dict[str, Any]
) -> str:
    found = _get(result, *keys)
    if found is None:
        return "n/a"
    stopped = found.get("stopped")
    if stopped:
        if stopped["reason"] == "server unresponsive":
            return f"never: worker spins at {stopped['server_cpu_share']:.0%} CPU"
        after = stopped.get("cleaned_after_s")
        within = plan["cleanup_within"] + plan["cleanup_late"]
        late = f"after {after:.1f} s" if after is not None else f"not within {within:g} s"
        return f"cleaned {late} ({found['count']} before in time)"
    return f"{_number(found.get(first), 2)} / {_number(found.get(second), 2)}"


def _lifecycle(
    backend: str, results: dict[str, Any], impls: list[str], plan: dict[str, Any]
) -> list[str]:
    steps = plan["memory_steps"]
    header = [
        "implementation",
        "disconnect → cleanup, idle p50 / p99 ms",
        "busy p50 / p99 ms",
        "upstream p50 / p99 ms",
        f"{plan['mass']} closed at once: all cleaned, ms after last close",
        "CPU µs per heartbeat",
        *(f"KiB per idle stream at {n:,}" for n in steps),
        "stream setup CPU µs",
        f"stalled {plan['stall_duration']:g} s: RSS growth KiB",
        "stalled stream ended after s",
    ]
    rows = []
    for impl in impls:
        result = results.get(impl, {})
        row = [
            impl,
            _pair(result, ("disconnect", "idle"), "p50_ms", "p99_ms", plan),
            _pair(result, ("disconnect", "busy"), "p50_ms", "p99_ms", plan),
            _pair(result, ("disconnect", "upstream"), "p50_ms", "p99_ms", plan),
        ]
        mass = _get(result, "mass_disconnect")
        if mass is None or "error" in mass:  # a failure is listed under the tables
            row.append("n/a")
        elif mass["all_cleaned_after_last_close_ms"] is None:
            row.append(f"only {mass['cleaned']} of {mass['count']} cleaned")
        else:
            cell = _cell(results, impl, ("mass_disconnect", "all_cleaned_after_last_close_ms"), 1)
            if mass.get("full_collections"):  # absent from runs before it was counted
                cell += f", {mass['full_collections']} full GC ({mass['collection_ms']:,.0f} ms)"
            row.append(cell)
        row.append(_cell(results, impl, ("mass_disconnect", "cpu_us_per_heartbeat"), 0))
        memory_steps = _get(result, "memory", "steps") or []
        base_steps = _get(results.get(BASELINE, {}), "memory", "steps") or []
        for index in range(len(steps)):
            value = memory_steps[index]["kib_per_stream"] if index < len(memory_steps) else None
            base = base_steps[index]["kib_per_stream"] if index < len(base_steps) else None
            row.append(_number(value, 1) + (_ratio(value, base) if impl != BASELINE else ""))
        setup = memory_steps[-1]["setup_cpu_us_per_stream"] if memory_steps else None
        base_setup = base_steps[-1]["setup_cpu_us_per_stream"] if base_steps else None
        row.append(_number(setup, 0) + (_ratio(setup, base_setup) if impl != BASELINE else ""))
        row.append(_number(_get(result, "stall", "growth_kib"), 0))
        row.append(_number(_get(result, "stall", "stream_ended_after_s"), 1).replace("n/a", "no"))
        rows.append(row)
    return [f"#### {backend}: disconnects, memory, a stalled client", "", *_table(header, rows), ""]


Check = Callable[[dict[str, Any]], tuple[str, bool | None]]


def _targets(data: dict[str, Any]) -> list[str]:
    sizes = [str(size) for size in data["plan"]["sizes"]]

    def ratio_to(other: str, floor: float) -> Check:
        def check(results: dict[str, Any]) -> tuple[str, bool | None]:
            parts, verdict = [], True
            for size in sizes:
                mine = _get(results, "streamkit", "throughput", size, "events_per_s")
                theirs = _get(results, other, "throughput", size, "events_per_s")
                if mine is None or not theirs:
                    return "n/a", None
                parts.append(f"{mine / theirs:.2f}x")
                verdict = verdict and mine / theirs >= floor
            return " / ".join(parts), verdict

        return check

    def p99(results: dict[str, Any]) -> tuple[str, bool | None]:
        idle = _get(results, "streamkit", "disconnect", "idle", "p99_ms")
        busy = _get(results, "streamkit", "disconnect", "busy", "p99_ms")
        if idle is None or busy is None:
            return "n/a", None
        return f"{idle:.2f} / {busy:.2f} ms", max(idle, busy) < 5.0

    def mass(results: dict[str, Any]) -> tuple[str, bool | None]:
        after = _get(results, "streamkit", "mass_disconnect", "all_cleaned_after_last_close_ms")
        if after is None:
            found = _get(results, "streamkit", "mass_disconnect")
            return "n/a", None if found is None or "error" in found else False
        return f"{after:.1f} ms", after <= 50.0

    def per_stream(results: dict[str, Any]) -> tuple[str, bool | None]:
        mine = _get(results, "streamkit", "memory", "steps")
        raw = _get(results, BASELINE, "memory", "steps")
        if not mine or not raw:
            return "n/a", None
        extra = mine[-1]["kib_per_stream"] - raw[-1]["kib_per_stream"]
        return f"{extra:+.1f} KiB", extra <= 20.0

    checks: list[tuple[str, Check]] = [
        ("throughput ≥ 0.95x raw ASGI (" + " / ".join(sizes) + " B)", ratio_to(BASELINE, 0.95)),
        ("throughput ≥ 1.5x sse-starlette", ratio_to("sse-starlette", 1.5)),
        ("single disconnect → cleanup p99 < 5 ms (idle / busy)", p99),
        (f"{data['plan']['mass']} at once: all cleaned ≤ 50 ms after the last close", mass),
        ("idle stream ≤ 20 KiB beyond raw ASGI's, at the largest count", per_stream),
    ]
    backends = list(data["results"])
    rows = []
    for label, check in checks:
        row = [label]
        for backend in backends:
            text, verdict = check(data["results"][backend])
            row.append(text + {True: " — met", False: " — **missed**", None: ""}[verdict])
        rows.append(row)
    return ["#### streamkit's targets", "", *_table(["target", *backends], rows), ""]


def markdown(data: dict[str, Any]) -> str:
    """The report for one run's *data* (as :func:`bench.runner.run` returns it)."""
    info = data["machine"]
    plan = data["plan"]
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items())
    quick = " (quick mode: small counts, not comparable)" if plan["quick"] else ""
    lines = [
        f"Run of {data['date']}{quick},"
        f" {data['seconds']:.0f} s. Machine: {info['cpu']}, {info['cores']} cores,"
        f" {info['memory']}, Linux {info['kernel']}, {info['python']}. {packages}.",
        "",
        f"Ratios in parentheses are to raw ASGI. Throughput: best of {plan['rounds']} rounds of"
        f" {plan['window']:g} s (producers that await between events:"
        f" best of {plan.get('shape_rounds', 'n/a')}). ⚠ marks a throughput figure whose server"
        f" was below {FULL_CPU:.0%} CPU (limited by something else), or a timer figure whose"
        f" streams got less than {KEPT_UP:.0%} of their events (the worker fell behind).",
        "",
    ]
    impls = data["implementations"]
    for backend, results in data["results"].items():
        if any("throughput" in result for result in results.values()):
            lines += _throughput(backend, results, impls, plan)
        if any("shapes" in result for result in results.values()):
            lines += _shapes(backend, results, impls, plan)
        if any("timer" in result for result in results.values()):
            lines += _timer(backend, results, impls, plan)
        lifecycle = ("disconnect", "mass_disconnect", "memory", "stall")
        if any(key in result for result in results.values() for key in lifecycle):
            lines += _lifecycle(backend, results, impls, plan)
    if "streamkit" in impls:
        lines += _targets(data)
    errors = [
        f"- {backend} / {impl} / {name}: {found['error']}"
        for backend, results in data["results"].items()
        for impl, result in results.items()
        for name, found in result.items()
        if isinstance(found, dict) and "error" in found
    ]
    if errors:
        lines += ["#### Measurements that failed", "", *errors, ""]
    return "\n".join(lines)
