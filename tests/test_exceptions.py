"""The error tree: the one drawn in ``streamkit/_exceptions.py``'s docstring is the one the
classes have, and each error is caught by the standard base a caller would think of."""

from __future__ import annotations

import builtins
import inspect
import re

import httpx
import pytest

import streamkit._exceptions as exceptions
from streamkit import LifespanError, MetricsUnavailableError, ServeError, StreamkitError
from streamkit._exceptions import shown_url
from streamkit.broadcast import SlowSubscriberError
from streamkit.fallback import FallbackUnavailableError
from streamkit.resources import ProcessExitError, UpstreamError
from streamkit.testing import LeakError


def defined_errors() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(exceptions).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == exceptions.__name__
    }


def test_the_tree_in_the_docstring_is_the_tree_of_the_classes() -> None:
    assert exceptions.__doc__ is not None
    drawn = dict(re.findall(r"[├└]── (\w+) +\((\w+)\)", exceptions.__doc__))
    errors = defined_errors()
    assert set(drawn) == set(errors) - {"StreamkitError"}, "every error is drawn, once"
    for name, base in drawn.items():
        assert errors[name].__bases__ == (StreamkitError, getattr(builtins, base))


@pytest.mark.parametrize(
    ("error", "standard"),
    [
        (FallbackUnavailableError("late", key="k", cached_age=None), TimeoutError),
        (MetricsUnavailableError("no prometheus-client"), ImportError),
        (LeakError("fd 7 left open"), AssertionError),
        (ServeError("port in use"), RuntimeError),
        (LifespanError("not running"), RuntimeError),
        (SlowSubscriberError("fell behind"), RuntimeError),
        (UpstreamError("502", status_code=502, url="http://upstream/"), RuntimeError),
        (ProcessExitError("exit 2", command=["ls"], returncode=2), RuntimeError),
    ],
)
def test_each_error_is_caught_as_streamkits_and_as_its_standard_kind(
    error: StreamkitError, standard: type[BaseException]
) -> None:
    for catch in (standard, StreamkitError):
        with pytest.raises(catch):
            raise error


def test_errors_keep_what_a_handler_needs() -> None:
    fallback = FallbackUnavailableError("no value for 'k' within 0.5 s", key="k", cached_age=12.5)
    assert (str(fallback), fallback.key, fallback.cached_age) == (
        "no value for 'k' within 0.5 s",
        "k",
        12.5,
    )
    upstream = UpstreamError("GET http://u/ answered 503", status_code=503, url="http://u/")
    assert (upstream.status_code, upstream.url) == (503, "http://u/")
    process = ProcessExitError("['false'] exited with 1", command=["false"], returncode=1)
    assert (process.command, process.returncode) == (["false"], 1)
    leak = LeakError("1 task left", tasks=("task 'poll'",))
    assert (leak.tasks, leak.file_descriptors, leak.child_processes) == (("task 'poll'",), (), ())


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("https://example.com/events", "https://example.com/events"),
        ("https://reader@example.com/events", "https://reader@example.com/events"),
        ("https://reader:s3cret@example.com/e?a=1", "https://reader:[secure]@example.com/e?a=1"),
        ("https://reader:p%40ss@example.com/", "https://reader:[secure]@example.com/"),
        ("https://reader:p ss@example.com/", "https://reader:[secure]@example.com/"),
    ],
)
def test_a_url_is_shown_without_its_password(given: str, shown: str) -> None:
    assert shown_url(httpx.URL(given), given) == shown
    assert "s3cret" not in shown_url(httpx.URL(given))
