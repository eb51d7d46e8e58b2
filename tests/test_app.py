"""streamkit.App without a server: declaring routes, defaults and overrides, the checks made at
declaration, and the lifespan's task group run directly (on asyncio and trio)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from streamkit import (
    App,
    LifespanError,
    MetricsUnavailableError,
    ServerSentEvent,
    StreamkitError,
    StreamOptions,
    StreamSender,
    shielded_cleanup,
)


async def tokens(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
    await send("x")


async def rows(request: Request) -> AsyncIterator[dict[str, int]]:
    yield {"n": 1}


# -- declaring routes -------------------------------------------------------------------------


def test_an_app_is_a_starlette_app_with_its_routes_declared_in_order() -> None:
    app = App()

    app.sse("/tokens")(tokens)
    app.ndjson("/rows", methods=["POST"])(rows)

    @app.get("/price")
    async def price(request: Request) -> Response:
        return PlainTextResponse("1")

    assert isinstance(app, Starlette)
    assert [route.path for route in app.stream_routes] == ["/tokens", "/rows"]
    assert [route.kind for route in app.stream_routes] == ["sse", "ndjson"]
    assert app.stream_routes[1].methods == frozenset({"POST"})
    assert [getattr(route, "path", None) for route in app.routes] == ["/tokens", "/rows", "/price"]
    assert app.url_path_for("tokens") == "/tokens"


def test_routes_take_the_app_defaults_and_their_own_overrides() -> None:
    app = App(heartbeat_interval=5.0, send_timeout=2.0, cleanup_timeout=1.0, buffer_size=4)
    app.sse("/defaults")(tokens)
    app.sse("/overridden", max_duration=300, heartbeat_interval=None, buffer_size=0)(tokens)

    defaults, overridden = (route.options for route in app.stream_routes)
    assert app.options == StreamOptions(
        heartbeat_interval=5.0, send_timeout=2.0, cleanup_timeout=1.0, buffer_size=4
    )
    assert defaults == app.options
    assert overridden == StreamOptions(
        heartbeat_interval=None,
        send_timeout=2.0,
        max_duration=300,
        cleanup_timeout=1.0,
        buffer_size=0,
    )


def test_a_bytes_route_sends_heartbeats_only_with_a_heartbeat_chunk() -> None:
    app = App(heartbeat_interval=5.0)
    app.stream("/plain")(tokens)
    app.stream("/beating", heartbeat_chunk=b"\n")(tokens)

    plain, beating = app.stream_routes
    assert plain.options.heartbeat_interval is None
    assert beating.options.heartbeat_interval == 5.0
    with pytest.raises(ValueError, match=r"route '/bad'.*heartbeat_chunk"):
        app.stream("/bad", heartbeat_interval=1.0)(tokens)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"send_timeout": -1}, ValueError, r"send_timeout .* got -1"),
        ({"heartbeat_interval": 0}, ValueError, r"heartbeat_interval .* got 0"),
        ({"max_duration": float("inf")}, ValueError, r"max_duration .* got inf"),
        ({"cleanup_timeout": None}, TypeError, r"cleanup_timeout .* got NoneType: None"),
        ({"buffer_size": -1}, ValueError, r"buffer_size .* got -1"),
        ({"send_timeout": "10"}, TypeError, r"send_timeout .* '10'"),
        ({"grace_period": 0}, ValueError, r"grace_period .* got 0"),
        (
            {"metrics_path": "metrics"},
            ValueError,
            r"metrics_path must start with '/', got 'metrics'",
        ),
    ],
)
def test_bad_app_defaults_are_refused(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        App(**options)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"send_timeout": 0}, ValueError, r"route '/x': send_timeout .* got 0"),
        ({"max_duration": -5}, ValueError, r"route '/x': max_duration .* got -5"),
        ({"buffer_size": 1.5}, TypeError, r"route '/x': buffer_size .* 1.5"),
        (
            {"heartbeat": 1.0},
            TypeError,
            r"route '/x': EventSourceResponse got an unknown argument 'heartbeat'",
        ),
        ({"headers": {"x-id": "a\nb"}}, ValueError, r"route '/x': header 'x-id' cannot be sent"),
    ],
)
def test_bad_route_overrides_are_refused_at_declaration(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    app = App()
    with pytest.raises(error, match=match):
        app.sse("/x", **options)
    assert app.stream_routes == ()


def test_a_handler_of_neither_shape_is_refused_at_declaration() -> None:
    app = App()

    def sync_handler(request: Request) -> None: ...

    async def no_send(request: Request) -> None: ...

    async def generator_with_send(request: Request, send: object) -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"route '/a': a stream handler must be an async"):
        app.sse("/a")(sync_handler)
    with pytest.raises(TypeError, match=r"route '/b': .*no_send must take \(request, send\)"):
        app.sse("/b")(no_send)
    with pytest.raises(TypeError, match=r"route '/c': .*generator_with_send must take \(request\)"):
        app.ndjson("/c")(generator_with_send)
    assert app.stream_routes == ()


def test_response_arguments_are_checked_at_declaration() -> None:
    app = App()

    async def async_on_end(end: object) -> None: ...

    with pytest.raises(TypeError, match=r"route '/rows': NDJSON item is not JSON-serialisable"):
        app.ndjson("/rows", shutdown_item=object())
    with pytest.raises(TypeError, match=r"route '/tokens': on_end must be a plain function"):
        app.sse("/tokens", on_end=async_on_end)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"route '/pings': heartbeat_event must be a"):
        app.sse("/pings", heartbeat_event="ping")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"route '/json': json_encoder must be a function"):
        app.ndjson("/json", json_encoder="orjson")  # type: ignore[arg-type]


# -- metrics without prometheus-client --------------------------------------------------------


def test_metrics_without_prometheus_client_give_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)

    with pytest.raises(MetricsUnavailableError, match=r"install streamkit\[metrics\]"):
        App(metrics_path="/metrics")
    app = App()  # metrics not asked for: the App works, and says why when they are
    app.sse("/tokens")(tokens)
    with pytest.raises(ImportError, match=r"prometheus-client"):
        _ = app.metrics
    assert issubclass(MetricsUnavailableError, StreamkitError)


# -- the lifespan, run directly ---------------------------------------------------------------


def test_the_task_group_exists_only_while_the_lifespan_runs() -> None:
    with pytest.raises(LifespanError, match="only while its lifespan runs"):
        _ = App().task_group


@pytest.mark.anyio
async def test_the_lifespan_cancels_and_awaits_tasks_before_the_users_lifespan_exits() -> None:
    log: list[tuple[str, float]] = []
    started = anyio.Event()

    async def refresh_forever() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            log.append(("task cancelled", anyio.current_time()))
            with shielded_cleanup(1.0):
                await anyio.sleep(0.01)  # awaited cleanup, like closing a client
                log.append(("task cleaned up", anyio.current_time()))

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[dict[str, Any]]:
        app.task_group.start_soon(refresh_forever)
        yield {"client": "open"}
        log.append(("user lifespan exits", anyio.current_time()))

    app = App(lifespan=lifespan, grace_period=5.0)
    async with app.lifespan() as state:
        assert state == {"client": "open"}
        with anyio.fail_after(5):
            await started.wait()
        with pytest.raises(LifespanError, match="already running"):
            async with app.lifespan():
                pass  # pragma: no cover
        assert app.statistics().running
        stopping_at = anyio.current_time()
    stopped_at = anyio.current_time()

    assert [entry for entry, _ in log] == [
        "task cancelled",
        "task cleaned up",
        "user lifespan exits",
    ]
    assert stopped_at - stopping_at < 1.0  # measured: about 11 ms (the 10 ms cleanup)
    assert not app.statistics().running
    with pytest.raises(LifespanError):
        _ = app.task_group


@pytest.mark.anyio
async def test_a_task_that_outlives_the_grace_period_does_not_hold_the_users_lifespan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exited_at: list[float] = []
    # The task's cleanup outlasts the grace period by far more than a loaded machine's delay
    # (a CI run took 0.68 s to exit when it lasted 0.6 s): exiting well before it ends is
    # what shows the lifespan did not wait for it.
    cleanup = 1.5

    async def stubborn() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(cleanup)

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        app.task_group.start_soon(stubborn)
        yield
        exited_at.append(anyio.current_time())

    app = App(lifespan=lifespan, grace_period=0.2)
    with caplog.at_level(logging.WARNING, logger="streamkit"):
        async with app.lifespan():
            stopping_at = anyio.current_time()
    assert 0.2 <= exited_at[0] - stopping_at < cleanup - 0.5
    assert "exceeded its grace period of 0.200 s" in caplog.text


def test_a_route_declared_with_a_lone_surrogate_is_refused_naming_it() -> None:
    app = App()
    with pytest.raises(ValueError, match=r"route '/a': .*heartbeat_comment .*lone surrogate"):
        app.sse("/a", heartbeat_comment="ping\ud800")(tokens)
    with pytest.raises(ValueError, match=r"route ./b.: .*lone surrogate.*\(the error_item\)"):
        app.ndjson("/b", error_item={"error": "\udfff"})(rows)


@pytest.mark.parametrize(
    ("declaration", "error", "match"),
    [
        # A bare str was split into its letters: the route answered GET with 405.
        ({"methods": "GET"}, TypeError, r"route '/x': methods must be a collection of .* 'GET'"),
        ({"methods": ()}, ValueError, r"route '/x': methods must name at least one"),
        ({"methods": ["GET", 5]}, TypeError, r"route '/x': a method must be a str, got int: 5"),
        ({"methods": ["GET", "G T"]}, ValueError, r"route '/x': method 'G T' must be an HTTP tok"),
        ({"name": 5}, TypeError, r"route '/x': name must be a str or None, got int: 5"),
        ({"on_end": 5}, TypeError, r"route '/x': on_end must be callable, got int: 5"),
    ],
)
def test_bad_route_declarations_are_refused_naming_the_value(
    declaration: dict[str, Any], error: type[Exception], match: str
) -> None:
    app = App()
    with pytest.raises(error, match=match):
        app.sse("/x", **declaration)(tokens)
    assert app.stream_routes == ()


@pytest.mark.parametrize(
    ("path", "error", "match"),
    [
        ("x", ValueError, r"a route's path must start with '/', got 'x'"),
        (b"/x", TypeError, r"a route's path must be a str, got bytes: b'/x'"),
        ("/a/{x:nope}", ValueError, r"route '/a/\{x:nope\}': .*Unknown path convertor 'nope'"),
    ],
)
def test_a_bad_route_path_is_refused_with_an_error_naming_it(
    path: Any, error: type[Exception], match: str
) -> None:
    app = App()
    with pytest.raises(error, match=match):
        app.ndjson(path)(rows)
    with pytest.raises(error, match=match):
        app.stream(path)(rows)
    assert app.stream_routes == ()


@pytest.mark.parametrize("name", ["streams_path", "metrics_path"])
def test_an_introspection_path_that_is_not_a_str_is_refused_naming_it(name: str) -> None:
    with pytest.raises(TypeError, match=rf"{name} must be a str or None, got bytes: b'/s'"):
        App(**{name: b"/s"})  # type: ignore[arg-type]


def test_a_media_type_that_cannot_be_sent_is_refused_at_declaration() -> None:
    # It failed only at the request, as a 500 from the server refusing the header.
    app = App()
    with pytest.raises(ValueError, match=r"route '/x': header 'content-type' cannot be sent"):
        app.stream("/x", media_type="text/plain\r\nx-injected: 1")(rows)
    with pytest.raises(TypeError, match=r"route '/x': media_type must be a str, got int: 5"):
        app.stream("/x", media_type=5)(rows)  # type: ignore[arg-type]
    assert app.stream_routes == ()


def test_a_lifespan_that_is_not_callable_is_refused_where_the_app_is_made() -> None:
    # It failed only as the server started, in the lifespan's startup.
    with pytest.raises(TypeError, match=r"lifespan must be callable, got int: 5"):
        App(lifespan=5)  # type: ignore[arg-type]


def test_a_lifespan_that_is_no_context_manager_function_is_refused_where_the_app_is_made() -> None:
    # It failed only as the server started: an async generator is no async context manager.
    async def plain_async_generator(app: App) -> AsyncIterator[None]:
        yield

    def plain_generator(app: App) -> Any:
        yield

    async def coroutine_function(app: App) -> Any:
        return {"db": "open"}

    for lifespan in (plain_async_generator, plain_generator, coroutine_function):
        with pytest.raises(
            TypeError,
            match=rf"lifespan must return an async context manager.*{lifespan.__name__}: make "
            r"it an async generator function .*@contextlib.asynccontextmanager",
        ):
            App(lifespan=lifespan)  # type: ignore[arg-type]


def test_a_stream_handler_without_a_name_is_declared_and_a_non_callable_refused() -> None:
    # Both failed with AttributeError: '...' object has no attribute '__name__'.
    app = App()

    async def limited(request: Request, send: StreamSender[str], *, limit: int) -> None: ...

    app.sse("/limited")(partial(limited, limit=3))
    app.sse("/named", name="named")(partial(limited, limit=3))
    assert [route.name for route in app.stream_routes] == ["partial", "named"]
    assert app.url_path_for("named") == "/named"
    with pytest.raises(TypeError, match=r"route '/a': a stream handler must be .*got 5"):
        app.sse("/a")(5)  # type: ignore[type-var]
    with pytest.raises(TypeError, match=r"route '/b': functools.partial\(.*limited.* must take"):
        app.ndjson("/b")(partial(limited, None, None, limit=3))  # type: ignore[arg-type]
    assert len(app.stream_routes) == 2


async def page(request: Request) -> Response:
    return PlainTextResponse("page")


@pytest.mark.parametrize(
    ("declaration", "endpoint", "error", "match"),
    [
        # A bare str was split into its letters: the route answered POST with 405.
        ({"methods": "POST"}, page, TypeError, r"route '/x': methods must be a collection"),
        ({"methods": ["GET", "G T"]}, page, ValueError, r"route '/x': method 'G T' must be an"),
        ({"name": 5}, page, TypeError, r"route '/x': name must be a str or None, got int: 5"),
        # Served, each failed at the request with a 500.
        ({}, 5, TypeError, r"route '/x': endpoint must be callable, got int: 5"),
        ({}, rows, TypeError, r"route '/x': .*rows is an async generator function.*app.sse"),
    ],
)
def test_bad_plain_route_declarations_are_refused_naming_the_value(
    declaration: dict[str, Any], endpoint: Any, error: type[Exception], match: str
) -> None:
    app = App()
    with pytest.raises(error, match=match):
        app.route("/x", **declaration)(endpoint)
    assert app.routes == []


@pytest.mark.parametrize(
    ("path", "error", "match"),
    [
        # Starlette's assertions: none under python -O.
        ("x", ValueError, r"a route's path must start with '/', got 'x'"),
        ("/a/{x:nope}", ValueError, r"route '/a/\{x:nope\}': .*Unknown path convertor 'nope'"),
    ],
)
def test_a_bad_plain_route_path_is_refused_with_an_error_naming_it(
    path: str, error: type[Exception], match: str
) -> None:
    app = App()
    for declare in (app.get, app.post, app.route):
        with pytest.raises(error, match=match):
            declare(path)(page)
    assert app.routes == []


def test_a_route_whose_path_and_method_are_taken_is_refused_naming_the_first() -> None:
    # It was appended behind the first, which answered every request it was declared for.
    app = App(routes=[Route("/given", page, methods=["POST"])])
    app.sse("/tokens")(tokens)
    app.ndjson("/tokens", methods=["POST"])(rows)  # another method: both are reached
    taken = r"route '/tokens': GET, HEAD is answered by the route tokens declared before it"
    with pytest.raises(ValueError, match=taken):
        app.ndjson("/tokens")(rows)
    with pytest.raises(ValueError, match=taken):
        app.get("/tokens")(page)
    with pytest.raises(ValueError, match=r"route '/given': POST is answered by the route page"):
        app.stream("/given", methods=["PUT", "POST"])(rows)
    assert [route.methods for route in app.stream_routes] == [{"GET"}, {"POST"}]
    assert len(app.routes) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("state", ["abc", ["db"], 5])
async def test_a_lifespan_that_yields_no_mapping_fails_its_startup_naming_the_value(
    state: object,
) -> None:
    # Starlette's update of the requests' state failed on it ("dictionary update sequence
    # element #0 has length 1; 2 is required"), or took a list of pairs for a mapping.
    exited: list[str] = []

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[Any]:
        try:
            yield state
        finally:
            exited.append("user lifespan")

    app = App(lifespan=lifespan)
    with anyio.fail_after(5), pytest.raises(TypeError) as caught:
        async with app.lifespan():
            pass  # pragma: no cover
    assert str(caught.value) == (
        f"the lifespan given to App(lifespan=...) must yield a mapping (the requests' state) "
        f"or None, got {type(state).__name__}: {state!r}"
    )
    assert exited == ["user lifespan"]
    assert not app.statistics().running


def test_an_introspection_path_that_a_route_answers_is_refused_naming_it() -> None:
    # The second was appended behind the first, and never reached.
    with pytest.raises(ValueError, match=r"route '/s': GET, HEAD is answered by the route strea"):
        App(streams_path="/s", metrics_path="/s")
    with pytest.raises(ValueError, match=r"route '/s': GET, HEAD is answered by the route page"):
        App(routes=[Route("/s", page)], streams_path="/s")


def test_the_app_pages_table_of_defaults_lists_every_stream_option_with_its_app_default() -> None:
    # idle_timeout and end_when_idle were missing: a reader took them for no App default.
    page = (Path(__file__).parent.parent / "docs" / "app.md").read_text(encoding="utf-8")
    section = page.split("## Defaults and overrides", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", section, flags=re.M)
    defaults = App().options
    assert {name: value.strip("`") for name, value in rows} == {
        name: repr(getattr(defaults, name)) for name in sorted(StreamOptions.names())
    }


@pytest.mark.anyio
async def test_the_task_group_refused_once_the_shutdown_began_says_so() -> None:
    # It said the task group exists only while the lifespan runs, to start tasks in the
    # lifespan or in a request: where it was asked, in the lifespan that was running.
    refused: list[str] = []

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        yield
        try:
            _ = app.task_group
        except LifespanError as exc:
            refused.append(str(exc))

    app = App(lifespan=lifespan)
    with anyio.fail_after(5):
        async with app.lifespan():
            pass
    assert refused == [
        "the App's task group takes no more tasks: the App's shutdown has begun, or a task "
        "in it failed and the server is stopping"
    ]


@pytest.mark.parametrize("decorator", ["get", "post", "route", "sse", "ndjson", "stream"])
def test_a_route_decorator_applied_without_its_path_is_refused_naming_the_function(
    decorator: str,
) -> None:
    # @app.get without its path replaced the function with the decorator's inner function
    # and declared no route: each request answered 404.
    app = App()
    with pytest.raises(TypeError, match=r"a route's path must be a str, got function: <function"):
        getattr(app, decorator)(page)
    assert app.routes == []
