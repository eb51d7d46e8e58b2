"""The stream options: declared once in StreamOptions, everything else held to it."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest

from streamkit import App, EventSourceResponse, NDJSONResponse, StreamOptions, StreamResponse
from streamkit._options import OptionArguments
from streamkit._responses import StreamArguments


def test_the_keyword_arguments_are_the_dataclass_fields_with_their_types() -> None:
    fields = {field.name: field.type for field in dataclasses.fields(StreamOptions)}
    hints = typing.get_type_hints(OptionArguments)
    assert set(hints) == set(fields) == StreamOptions.names()
    resolved = typing.get_type_hints(StreamOptions)
    assert hints == resolved
    assert OptionArguments.__optional_keys__ <= StreamArguments.__optional_keys__


async def _producer(send: Any) -> None:
    """Never run: the tests only build responses."""


@pytest.mark.parametrize("response_class", [StreamResponse, EventSourceResponse, NDJSONResponse])
@pytest.mark.parametrize("field", dataclasses.fields(StreamOptions), ids=lambda f: f.name)
def test_every_option_reaches_responses_apps_and_routes(
    response_class: type[StreamResponse[Any]], field: dataclasses.Field[Any]
) -> None:
    value = {
        "buffer_size": 3,
        "end_when_idle": True,
        "cleanup_timeout": 1.25,
    }.get(field.name, 7.5)
    given = {field.name: value}
    chunk = {"heartbeat_chunk": b"\n"} if response_class is StreamResponse else {}
    response = response_class(_producer, **chunk, **given)  # type: ignore[arg-type]
    assert getattr(response.options, field.name) == value

    app = App(**given)  # type: ignore[arg-type]
    assert getattr(app.options, field.name) == value
    app.sse("/sse", **given)(_handler)  # type: ignore[arg-type]
    app.ndjson("/ndjson", **given)(_handler)  # type: ignore[arg-type]
    app.stream("/bytes", heartbeat_chunk=b"\n", **given)(_handler)  # type: ignore[arg-type]
    for route in app.stream_routes:
        assert getattr(route.options, field.name) == value, route.path


async def _handler(request: Any, send: Any) -> None:
    """Never run."""


def test_a_route_inherits_the_app_defaults_it_does_not_override() -> None:
    app = App(idle_timeout=2.0, send_timeout=3.0)
    app.sse("/x", idle_timeout=1.0)(_handler)
    (route,) = app.stream_routes
    assert (route.options.idle_timeout, route.options.send_timeout) == (1.0, 3.0)
    assert route.options.heartbeat_interval == 15.0


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"end_when_idle": 1}, TypeError, r"end_when_idle must be a bool, got 1"),
        ({"buffer_size": True}, TypeError, r"buffer_size must be an int, got bool: True"),
        ({"buffer_size": -1}, ValueError, r"buffer_size must be an int of at least 0, got -1"),
        ({"idle_timeout": "1"}, TypeError, r"idle_timeout must be a number of seconds, got str"),
        ({"max_duration": float("nan")}, ValueError, r"max_duration .* got nan"),
    ],
)
def test_a_bad_option_names_itself_and_its_value(
    arguments: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        StreamOptions(**arguments)


def test_an_unknown_argument_is_refused_naming_it() -> None:
    with pytest.raises(TypeError, match="NDJSONResponse got an unknown argument 'heartbeat'"):
        NDJSONResponse(_producer, heartbeat=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="App got an unknown argument 'heartbeat'"):
        App(heartbeat=1.0)  # type: ignore[call-arg]
