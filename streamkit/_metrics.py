"""What an :class:`~streamkit.App` tells about its streams: a statistics snapshot, its JSON
form, and Prometheus metrics.

The metrics live in a :class:`prometheus_client.CollectorRegistry` of their own, one per App,
not in the process-wide default registry, so that several apps (or several tests) in one
process never count into each other's series. ``prometheus-client`` is an optional dependency
(``streamkit[metrics]``); everything else here works without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._ends import EndReason, StreamEnd
from ._exceptions import MetricsUnavailableError
from ._registry import ActiveStream

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["AppStatistics", "StreamMetrics", "open_metrics", "statistics_document"]

#: Bucket bounds, in seconds, of the cleanup-duration histogram: cleanup is usually well under
#: a millisecond, and bounded by ``cleanup_timeout`` (5 s by default).
CLEANUP_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppStatistics:
    """A snapshot of an App's streams, from :meth:`streamkit.App.statistics`.

    It covers the streams served during the App's current lifespan (or its last one, once it
    has ended).

    :param running: whether the App's lifespan is running.
    :param draining: whether its shutdown has begun: new streams end at once.
    :param active: the running streams of each stream route, by the route's declared path.
    :param ended: how many streams of each stream route ended, per reason.
    :param recent_ends: the most recent end reports of the App's streams, oldest first.
    """

    running: bool
    draining: bool
    active: Mapping[str, tuple[ActiveStream, ...]]
    ended: Mapping[str, Mapping[EndReason, int]]
    recent_ends: tuple[StreamEnd, ...]


def statistics_document(statistics: AppStatistics) -> dict[str, Any]:
    """*statistics* as JSON-serialisable data, for the App's optional introspection route."""

    def client(stream: ActiveStream) -> str | None:
        if stream.client is None:
            return None
        host, port = stream.client
        # An IPv6 address is bracketed, as in a URL: "::1:5000" could be read either way.
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def described(exc: BaseException) -> str:
        # A repr that raises (a broken object's, in the message) must not fail the document.
        try:
            return repr(exc)
        except Exception as failure:
            return f"<{type(exc).__qualname__}: its repr() raised {type(failure).__qualname__}>"

    return {
        "running": statistics.running,
        "draining": statistics.draining,
        "active": [
            {
                "route": route,
                "path": stream.path,
                "client": client(stream),
                "age": round(stream.age, 6),
                "items_sent": stream.items_sent,
                "bytes_sent": stream.bytes_sent,
            }
            for route, streams in statistics.active.items()
            for stream in streams
        ],
        "ended": {
            route: {reason.value: count for reason, count in counts.items()}
            for route, counts in statistics.ended.items()
        },
        "recent_ends": [
            {
                "path": end.path,
                "reason": end.reason.value,
                "duration": round(end.duration, 6),
                "items_sent": end.items_sent,
                "bytes_sent": end.bytes_sent,
                "cleanup_duration": round(end.cleanup_duration, 6),
                "exception": None if end.exception is None else described(end.exception),
            }
            for end in statistics.recent_ends
        ],
    }


class StreamMetrics:
    """The Prometheus metrics of one App's stream routes, labelled by the route's declared
    path (not the request path, which could have unbounded values):

    - ``streamkit_active_streams`` (gauge): streams running now;
    - ``streamkit_stream_ends_total`` (counter, also labelled ``reason``): streams ended, per
      :class:`~streamkit.EndReason` value;
    - ``streamkit_stream_cleanup_seconds`` (histogram): how long each stream's producer
      cleanup took once its end was decided;
    - ``streamkit_send_stalls_total`` (counter): streams ended because a write to the client
      stalled past ``send_timeout``.

    Made by the App; read it with :meth:`exposition`, or hand :attr:`registry` to your own
    exporter.

    :ivar registry: the :class:`prometheus_client.CollectorRegistry` holding them.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = CollectorRegistry()
        self._active = Gauge(
            "streamkit_active_streams",
            "Streams running now.",
            ["route"],
            registry=self.registry,
        )
        self._ends = Counter(
            "streamkit_stream_ends",
            "Streams ended, by why they ended.",
            ["route", "reason"],
            registry=self.registry,
        )
        self._cleanup = Histogram(
            "streamkit_stream_cleanup_seconds",
            "Seconds a stream's producer cleanup took once its end was decided.",
            ["route"],
            buckets=CLEANUP_BUCKETS,
            registry=self.registry,
        )
        self._stalls = Counter(
            "streamkit_send_stalls",
            "Streams ended because a write to the client stalled past send_timeout.",
            ["route"],
            registry=self.registry,
        )

    def add_route(self, route: str) -> None:
        """Create *route*'s series at zero, so dashboards see the route before its first end."""
        self._active.labels(route)
        for reason in EndReason:
            self._ends.labels(route, reason.value)
        self._cleanup.labels(route)
        self._stalls.labels(route)

    def stream_started(self, route: str) -> None:
        """Count a stream of *route* as running."""
        self._active.labels(route).inc()

    def stream_ended(self, route: str, end: StreamEnd | None) -> None:
        """Count a stream of *route* as ended; *end* is ``None`` for one that failed before
        its runtime could report an end."""
        self._active.labels(route).dec()
        if end is None:
            return
        self._ends.labels(route, end.reason.value).inc()
        self._cleanup.labels(route).observe(end.cleanup_duration)
        if end.reason is EndReason.SEND_TIMEOUT:
            self._stalls.labels(route).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in the Prometheus text format, with the content type to serve them as."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def open_metrics(*, required: bool) -> StreamMetrics | None:
    """A new :class:`StreamMetrics`, or ``None`` when ``prometheus-client`` is missing and
    metrics were not *required*.

    :raises MetricsUnavailableError: metrics are *required* and ``prometheus-client`` is not
        installed.
    """
    try:
        return StreamMetrics()
    except ImportError as exc:
        if not required:
            return None
        raise MetricsUnavailableError(
            f"Prometheus metrics need prometheus-client, which cannot be imported ({exc}): "
            "install streamkit[metrics]"
        ) from exc
