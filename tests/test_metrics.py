"""What an App tells about its streams, without a server: the Prometheus series of
:class:`StreamMetrics` and the JSON document of a statistics snapshot (the same through a
real server is in ``tests/e2e/test_app_routes.py``)."""

from __future__ import annotations

import json
import sys
import types

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamkit import EndReason, MetricsUnavailableError, StreamEnd
from streamkit._metrics import AppStatistics, StreamMetrics, open_metrics, statistics_document
from streamkit._registry import ActiveStream


def end(
    reason: EndReason, *, cleanup: float = 0.002, exception: BaseException | None = None
) -> StreamEnd:
    return StreamEnd(
        reason=reason,
        path="/items/7",
        duration=1.23456789,
        items_sent=3,
        bytes_sent=42,
        cleanup_duration=cleanup,
        exception=exception,
    )


def sample(metrics: StreamMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_declared_route_has_every_series_at_zero_before_its_first_stream() -> None:
    metrics = StreamMetrics()
    metrics.add_route("/items/{id}")
    route = {"route": "/items/{id}"}
    assert sample(metrics, "streamkit_active_streams", **route) == 0
    for reason in EndReason:
        assert sample(metrics, "streamkit_stream_ends_total", reason=reason.value, **route) == 0
    assert sample(metrics, "streamkit_stream_cleanup_seconds_count", **route) == 0
    assert sample(metrics, "streamkit_send_stalls_total", **route) == 0


def test_streams_are_counted_by_route_and_reason() -> None:
    metrics = StreamMetrics()
    route = {"route": "/items/{id}"}
    for _ in range(3):
        metrics.stream_started("/items/{id}")
    metrics.stream_ended("/items/{id}", end(EndReason.COMPLETED, cleanup=0.0003))
    metrics.stream_ended("/items/{id}", end(EndReason.SEND_TIMEOUT, cleanup=0.2))
    assert sample(metrics, "streamkit_active_streams", **route) == 1
    ends = "streamkit_stream_ends_total"
    assert sample(metrics, ends, reason="completed", **route) == 1
    assert sample(metrics, ends, reason="send_timeout", **route) == 1
    assert sample(metrics, "streamkit_send_stalls_total", **route) == 1, "a send timeout is a stall"
    cleanup = "streamkit_stream_cleanup_seconds"
    assert sample(metrics, f"{cleanup}_count", **route) == 2
    assert sample(metrics, f"{cleanup}_sum", **route) == pytest.approx(0.2003)
    assert sample(metrics, f"{cleanup}_bucket", le="0.0005", **route) == 1
    assert sample(metrics, f"{cleanup}_bucket", le="0.1", **route) == 1
    assert sample(metrics, f"{cleanup}_bucket", le="0.5", **route) == 2


def test_a_stream_that_failed_before_its_end_report_leaves_the_running_count_only() -> None:
    metrics = StreamMetrics()
    metrics.stream_started("/x")
    metrics.stream_ended("/x", None)
    assert sample(metrics, "streamkit_active_streams", route="/x") == 0
    assert sample(metrics, "streamkit_stream_cleanup_seconds_count", route="/x") is None
    assert (
        sum(
            sample(metrics, "streamkit_stream_ends_total", route="/x", reason=reason.value) or 0
            for reason in EndReason
        )
        == 0
    )


def test_the_exposition_is_prometheus_text_of_this_apps_series_only() -> None:
    metrics, other = StreamMetrics(), StreamMetrics()
    metrics.add_route("/a")
    other.add_route("/b")
    other.stream_started("/b")
    text, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(text.decode())}
    assert set(families) >= {
        "streamkit_active_streams",
        "streamkit_stream_ends",
        "streamkit_stream_cleanup_seconds",
        "streamkit_send_stalls",
    }
    routes = {s.labels["route"] for family in families.values() for s in family.samples}
    assert routes == {"/a"}


def test_without_prometheus_client_metrics_are_none_unless_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    assert open_metrics(required=False) is None
    with pytest.raises(MetricsUnavailableError, match=r"install streamkit\[metrics\]") as raised:
        open_metrics(required=True)
    assert isinstance(raised.value, ImportError)
    assert isinstance(raised.value.__cause__, ImportError)


def test_the_statistics_document_is_json_with_reasons_as_their_values() -> None:
    statistics = AppStatistics(
        running=True,
        draining=False,
        active=types.MappingProxyType(
            {
                "/items/{id}": (
                    ActiveStream(
                        path="/items/7",
                        client=("::1", 5000),
                        age=0.1234567891,
                        items_sent=2,
                        bytes_sent=20,
                    ),
                    ActiveStream(path="/items/8", client=None, age=2.0, items_sent=0, bytes_sent=0),
                ),
                "/idle": (),
            }
        ),
        ended={"/items/{id}": {EndReason.COMPLETED: 4, EndReason.ERROR: 1}},
        recent_ends=(end(EndReason.ERROR, exception=RuntimeError("the source broke")),),
    )
    document = json.loads(json.dumps(statistics_document(statistics)))
    assert (document["running"], document["draining"]) == (True, False)
    assert document["active"] == [
        {
            "route": "/items/{id}",
            "path": "/items/7",
            "client": "[::1]:5000",  # bracketed, as in a URL: "::1:5000" is ambiguous
            "age": 0.123457,
            "items_sent": 2,
            "bytes_sent": 20,
        },
        {
            "route": "/items/{id}",
            "path": "/items/8",
            "client": None,
            "age": 2.0,
            "items_sent": 0,
            "bytes_sent": 0,
        },
    ]
    assert document["ended"] == {"/items/{id}": {"completed": 4, "error": 1}}
    (recent,) = document["recent_ends"]
    assert recent == {
        "path": "/items/7",
        "reason": "error",
        "duration": 1.234568,
        "items_sent": 3,
        "bytes_sent": 42,
        "cleanup_duration": 0.002,
        "exception": "RuntimeError('the source broke')",
    }


class UnprintableError(Exception):
    """An error whose repr fails, as one built from a broken object's may."""

    def __repr__(self) -> str:
        raise ValueError("no repr")


def test_an_exception_whose_repr_fails_is_named_by_its_type_in_the_statistics_document() -> None:
    # Its repr raised out of the document: the introspection route answered 500 until a
    # hundred more streams had pushed the end out of the recent ones.
    statistics = AppStatistics(
        running=True,
        draining=False,
        active={},
        ended={},
        recent_ends=(end(EndReason.ERROR, exception=UnprintableError()),),
    )
    (recent,) = statistics_document(statistics)["recent_ends"]
    assert recent["exception"] == "<UnprintableError: its repr() raised ValueError>"
