"""streamkit as a microframework: an :class:`App` whose streams are declared as routes, and
whose lifespan owns one task group for the app's own work.

:class:`App` is a Starlette application: its routing, middleware, exception handlers and
``state`` are Starlette's. It adds stream routes (:meth:`App.sse`, :meth:`App.ndjson`,
:meth:`App.stream`) that take app-wide :class:`~streamkit.StreamOptions` defaults, a lifespan
that drains the app's streams and cancels its background work on shutdown, and introspection.

It differs from Starlette where Starlette leaves a gap: Starlette never runs the lifespan of a
mounted application, so an App mounted in another app needs that app to run it, with
``lifespan=streams_app.lifespan``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any, TypeVar, Unpack

from anyio.abc import TaskGroup
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ExceptionHandler, Receive, Scope, Send

from ._ends import StreamEnd
from ._exceptions import LifespanError, MetricsUnavailableError
from ._lifespan import LifespanRun
from ._metrics import AppStatistics, StreamMetrics, open_metrics, statistics_document
from ._options import StreamOptions, _check_duration
from ._registry import StreamRegistry, current_registry, using_registry
from ._responses import (
    DEFAULT_ERROR_EVENT,
    DEFAULT_SHUTDOWN_EVENT,
    EventSourceResponse,
    NDJSONResponse,
    StreamResponse,
)
from ._routes import StreamOverrides, StreamRoute, _StreamEndpoint, route_options
from ._sse import ServerSentEvent

__all__ = ["App"]

logger = logging.getLogger("streamkit")

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])
UserLifespan = Callable[["App"], AbstractAsyncContextManager[Mapping[str, Any] | None]]


@asynccontextmanager
async def _no_lifespan(app: App) -> AsyncIterator[None]:
    yield None


class App(Starlette):
    """A Starlette application whose streams are declared as routes::

        app = streamkit.App(heartbeat_interval=15.0, send_timeout=10.0)

        @app.sse("/tokens", max_duration=300)
        async def tokens(request, send):
            async for chunk in upstream(request):
                await send(streamkit.ServerSentEvent(data=chunk))

    Its lifespan (run by the server, or by the app it is mounted in: see :meth:`lifespan`)
    owns :attr:`task_group`. On shutdown the App's streams drain (an SSE stream sends its
    farewell and ``retry:``), then the task group's work is cancelled and awaited, then the
    user's *lifespan* exits, all within *grace_period*.

    :param heartbeat_interval: the default for every stream route; a bytes route sends
        heartbeats only if it is given a ``heartbeat_chunk``. ``None`` disables them.
    :param send_timeout: the default for every stream route (see
        :class:`~streamkit.StreamOptions`).
    :param max_duration: the default for every stream route.
    :param cleanup_timeout: the default for every stream route.
    :param buffer_size: the default for every stream route.
    :param grace_period: seconds the lifespan's shutdown may take: the drain, then the
        cancelled tasks' cleanup.
    :param streams_path: if given, a ``GET`` route there answers :meth:`statistics` as JSON.
        It shows client addresses: do not expose it publicly.
    :param metrics_path: if given, a ``GET`` route there serves the Prometheus metrics (see
        :class:`~streamkit.StreamMetrics`); needs ``prometheus-client``.
    :param routes: Starlette routes, served before the declared ones.
    :param middleware: Starlette middleware.
    :param exception_handlers: Starlette exception handlers.
    :param lifespan: the user's lifespan, ``lifespan(app)`` returning an async context
        manager that may yield a state mapping. It runs inside the App's, so it can start
        tasks in :attr:`task_group`, and it exits after the streams drained and the tasks
        ended, so what it opened outlives what uses it.
    :param debug: Starlette's debug tracebacks.
    :raises ValueError: a default or the grace period is out of range, or a path does not
        start with ``/``.
    :raises TypeError: a value has the wrong type.
    :raises MetricsUnavailableError: *metrics_path* is given without ``prometheus-client``.

    :ivar options: the defaults, as a :class:`~streamkit.StreamOptions`.
    :ivar grace_period: as given.
    """

    def __init__(
        self,
        *,
        heartbeat_interval: float | None = 15.0,
        send_timeout: float | None = 10.0,
        max_duration: float | None = None,
        cleanup_timeout: float = 5.0,
        buffer_size: int = 16,
        grace_period: float = 10.0,
        streams_path: str | None = None,
        metrics_path: str | None = None,
        routes: Sequence[BaseRoute] | None = None,
        middleware: Sequence[Middleware] | None = None,
        exception_handlers: Mapping[Any, ExceptionHandler] | None = None,
        lifespan: UserLifespan | None = None,
        debug: bool = False,
    ) -> None:
        self.options = StreamOptions(
            heartbeat_interval=heartbeat_interval,
            send_timeout=send_timeout,
            max_duration=max_duration,
            cleanup_timeout=cleanup_timeout,
            buffer_size=buffer_size,
        )
        _check_duration("grace_period", grace_period, optional=False)
        self.grace_period = grace_period
        for name, path in (("streams_path", streams_path), ("metrics_path", metrics_path)):
            if path is not None and not path.startswith("/"):
                raise ValueError(f"{name} must start with '/', got {path!r}")
        super().__init__(
            debug=debug,
            routes=routes,
            middleware=middleware,
            exception_handlers=exception_handlers,
            lifespan=self.lifespan,
        )
        self._user_lifespan: UserLifespan = lifespan or _no_lifespan
        self._metrics = open_metrics(required=metrics_path is not None)
        self._stream_routes: list[StreamRoute] = []
        self._running: LifespanRun | None = None
        self._streams = StreamRegistry()
        self._route_streams: dict[str, StreamRegistry] = {}
        self._warned_no_lifespan = False
        if streams_path is not None:
            self.router.add_route(
                streams_path, self._streams_endpoint, ["GET"], "streamkit_streams", False
            )
        if metrics_path is not None:
            self.router.add_route(
                metrics_path, self._metrics_endpoint, ["GET"], "streamkit_metrics", False
            )

    # -- declaring routes ----------------------------------------------------------------------

    def sse(
        self,
        path: str,
        *,
        methods: Collection[str] = ("GET",),
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        on_end: Callable[[StreamEnd], None] | None = None,
        heartbeat_comment: str = "ping",
        shutdown_event: ServerSentEvent | None = DEFAULT_SHUTDOWN_EVENT,
        deadline_event: ServerSentEvent | None = None,
        error_event: ServerSentEvent | None = DEFAULT_ERROR_EVENT,
        **options: Unpack[StreamOverrides],
    ) -> Callable[[HandlerT], HandlerT]:
        """Declare an event-stream route; the decorated function is returned unchanged.

        It is an async generator function ``(request)`` yielding
        :class:`~streamkit.ServerSentEvent` or ``str`` items, or an async function
        ``(request, send)`` awaiting ``send(item)``.

        :param path: the route's path, with Starlette's ``{param}`` syntax.
        :param methods: the HTTP methods it answers.
        :param name: the route's name; by default the function's.
        :param headers: extra response headers.
        :param on_end: called with each stream's :class:`~streamkit.StreamEnd`.
        :param heartbeat_comment: see :class:`~streamkit.EventSourceResponse`.
        :param shutdown_event: see :class:`~streamkit.EventSourceResponse`.
        :param deadline_event: see :class:`~streamkit.EventSourceResponse`.
        :param error_event: see :class:`~streamkit.EventSourceResponse`.
        :param options: overrides of the App's defaults: ``heartbeat_interval``,
            ``send_timeout``, ``max_duration``, ``cleanup_timeout``, ``buffer_size``.
        :raises ValueError: an option is out of range.
        :raises TypeError: an option is unknown or has the wrong type, or the function has
            neither shape.
        """
        arguments = {
            "headers": headers,
            "heartbeat_comment": heartbeat_comment,
            "shutdown_event": shutdown_event,
            "deadline_event": deadline_event,
            "error_event": error_event,
        }
        return self._stream_decorator(
            "sse", EventSourceResponse, path, methods, name, on_end, arguments, dict(options)
        )

    def ndjson(
        self,
        path: str,
        *,
        methods: Collection[str] = ("GET",),
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        on_end: Callable[[StreamEnd], None] | None = None,
        error_item: object = None,
        shutdown_item: object = None,
        deadline_item: object = None,
        **options: Unpack[StreamOverrides],
    ) -> Callable[[HandlerT], HandlerT]:
        """Declare a newline-delimited JSON route, whose items are JSON-serialisable values;
        the function has the shapes :meth:`sse` takes.

        :param error_item: see :class:`~streamkit.NDJSONResponse`.
        :param shutdown_item: see :class:`~streamkit.NDJSONResponse`.
        :param deadline_item: see :class:`~streamkit.NDJSONResponse`.

        The other arguments are those of :meth:`sse`.
        """
        arguments = {
            "headers": headers,
            "error_item": error_item,
            "shutdown_item": shutdown_item,
            "deadline_item": deadline_item,
        }
        return self._stream_decorator(
            "ndjson", NDJSONResponse, path, methods, name, on_end, arguments, dict(options)
        )

    def stream(
        self,
        path: str,
        *,
        methods: Collection[str] = ("GET",),
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        on_end: Callable[[StreamEnd], None] | None = None,
        media_type: str = "application/octet-stream",
        heartbeat_chunk: bytes | None = None,
        **options: Unpack[StreamOverrides],
    ) -> Callable[[HandlerT], HandlerT]:
        """Declare a route streaming ``bytes`` or ``str`` chunks; the function has the shapes
        :meth:`sse` takes.

        :param media_type: the content type.
        :param heartbeat_chunk: the bytes a heartbeat writes; without it the route sends no
            heartbeats, whatever the App's default.

        The other arguments are those of :meth:`sse`.
        """
        if heartbeat_chunk is None:
            options.setdefault("heartbeat_interval", None)
        arguments = {
            "headers": headers,
            "media_type": media_type,
            "heartbeat_chunk": heartbeat_chunk,
        }
        return self._stream_decorator(
            "bytes", StreamResponse, path, methods, name, on_end, arguments, dict(options)
        )

    def route(
        self,
        path: str,
        *,
        methods: Collection[str] | None = None,
        name: str | None = None,
        include_in_schema: bool = True,
    ) -> Callable[[HandlerT], HandlerT]:
        """Declare a plain Starlette endpoint, ``async def endpoint(request) -> Response``;
        the function is returned unchanged.

        :param methods: the HTTP methods it answers; by default ``GET`` (and ``HEAD``).
        :param name: the route's name; by default the function's.
        :param include_in_schema: Starlette's schema flag.
        """

        def declare(endpoint: HandlerT) -> HandlerT:
            self.router.add_route(path, endpoint, methods, name, include_in_schema)
            return endpoint

        return declare

    def get(self, path: str, *, name: str | None = None) -> Callable[[HandlerT], HandlerT]:
        """Declare a plain ``GET`` endpoint (see :meth:`route`)."""
        return self.route(path, methods=("GET",), name=name)

    def post(self, path: str, *, name: str | None = None) -> Callable[[HandlerT], HandlerT]:
        """Declare a plain ``POST`` endpoint (see :meth:`route`)."""
        return self.route(path, methods=("POST",), name=name)

    def _stream_decorator(
        self,
        kind: str,
        response_class: type[StreamResponse[Any]],
        path: str,
        methods: Collection[str],
        name: str | None,
        on_end: Callable[[StreamEnd], None] | None,
        arguments: dict[str, Any],
        overrides: dict[str, Any],
    ) -> Callable[[HandlerT], HandlerT]:
        options = route_options(path, self.options, overrides, response_class, arguments, on_end)

        def declare(handler: HandlerT) -> HandlerT:
            route = StreamRoute(
                path=path,
                name=name or handler.__name__,
                kind=kind,
                methods=frozenset(method.upper() for method in methods),
                options=options,
            )
            endpoint = _StreamEndpoint(self, route, handler, response_class, arguments, on_end)
            self.router.routes.append(
                Route(path, endpoint, methods=list(route.methods), name=route.name)
            )
            self._stream_routes.append(route)
            if self._metrics is not None:
                self._metrics.add_route(path)
            return handler

        return declare

    @property
    def stream_routes(self) -> tuple[StreamRoute, ...]:
        """The stream routes declared so far, in order."""
        return tuple(self._stream_routes)

    # -- serving -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        running = self._running
        if running is None or scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        # Streams of plain routes that return a stream response report here too.
        with using_registry(running.streams):
            await super().__call__(scope, receive, send)

    async def _run_stream(
        self, endpoint: _StreamEndpoint, content: Any, scope: Scope, receive: Receive, send: Send
    ) -> None:
        path = endpoint.route.path
        metrics = self._metrics
        ended = False

        def on_end(end: StreamEnd) -> None:
            nonlocal ended
            ended = True
            if metrics is not None:
                metrics.stream_ended(path, end)
            if endpoint.on_end is not None:
                endpoint.on_end(end)

        response = endpoint.response_class(content, on_end=on_end, **endpoint.arguments)
        if metrics is not None:
            metrics.stream_started(path)
        try:
            running = self._running
            if running is None:
                self._warn_no_lifespan(path)
                await response(scope, receive, send)
            else:
                with using_registry(running.route_registry(path)):
                    await response(scope, receive, send)
        finally:
            if metrics is not None and not ended:
                metrics.stream_ended(path, None)

    def _warn_no_lifespan(self, path: str) -> None:
        if not self._warned_no_lifespan:
            self._warned_no_lifespan = True
            logger.warning(
                "stream route %s is served without its App's lifespan running: the App "
                "neither drains its streams nor lists them; mounted in another app, pass "
                "lifespan=<the App>.lifespan to that app",
                path,
            )

    # -- the lifespan --------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[Any]:
        """The App's lifespan, an async context manager. The server runs it when it serves
        the App; an app the App is mounted in must run it, as its own lifespan or inside it::

            outer = Starlette(routes=[Mount("/streams", app)], lifespan=app.lifespan)

        :param app: the application running it (Starlette passes it); unused: the user's
            lifespan is handed this App.
        :return: a context manager yielding what the user's lifespan yields (its state).
        :raises LifespanError: it is already running.
        """
        if self._running is not None:
            raise LifespanError(f"the lifespan of {self!r} is already running")
        # A child of the registry current here: under streamkit.serve, the server's, so
        # the server's drain reaches these streams too.
        running = LifespanRun(
            StreamRegistry(parent=current_registry()), grace_period=self.grace_period
        )
        self._running, self._streams = running, running.streams
        self._route_streams = running.route_streams
        try:
            async with running.run(partial(self._user_lifespan, self)) as state:
                yield state
        finally:
            self._running = None

    @property
    def task_group(self) -> TaskGroup:
        """The App's task group, for app-level work (a cache refresher, a broadcast reader):
        ``app.task_group.start_soon(refresh_forever)`` in the user's lifespan or later.

        Its tasks are cancelled on shutdown once the streams drained, and awaited before the
        user's lifespan exits. An exception escaping a task ends the lifespan (as in any
        task group): catch inside the task what it should survive.

        :raises LifespanError: the lifespan is not running.
        """
        task_group = None if self._running is None else self._running.task_group
        if task_group is None:
            raise LifespanError(
                "the App's task group exists only while its lifespan runs; start tasks in "
                "the lifespan given to App(lifespan=...), or in a request"
            )
        return task_group

    # -- introspection -------------------------------------------------------------------------

    @property
    def streams(self) -> StreamRegistry:
        """The registry of the App's streams in its current lifespan (or its last one)."""
        return self._streams

    @property
    def draining(self) -> bool:
        """Whether the App's streams are draining: its shutdown, or the server's, began."""
        return self._running is not None and self._streams.draining

    @property
    def metrics(self) -> StreamMetrics:
        """The App's Prometheus metrics.

        :raises MetricsUnavailableError: ``prometheus-client`` is not installed.
        """
        if self._metrics is None:
            raise MetricsUnavailableError(
                "Prometheus metrics need prometheus-client, which is not installed: "
                "install streamkit[metrics]"
            )
        return self._metrics

    def statistics(self) -> AppStatistics:
        """A snapshot of the App's stream routes: what runs now, and how the others ended."""
        registries = {
            route.path: self._route_streams.get(route.path) for route in self._stream_routes
        }
        empty = StreamRegistry()
        return AppStatistics(
            running=self._running is not None,
            draining=self.draining,
            active={path: (r or empty).active_streams() for path, r in registries.items()},
            ended={path: (r or empty).statistics().ended for path, r in registries.items()},
            recent_ends=self._streams.recent_ends(),
        )

    async def _streams_endpoint(self, request: Request) -> Response:
        return JSONResponse(statistics_document(self.statistics()))

    async def _metrics_endpoint(self, request: Request) -> Response:
        body, content_type = self.metrics.exposition()
        return Response(body, headers={"content-type": content_type})
