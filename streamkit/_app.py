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

import inspect
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
from starlette.routing import BaseRoute, Route, get_name
from starlette.types import ExceptionHandler, Receive, Scope, Send

from ._checks import check_callable, check_duration, check_type
from ._ends import StreamEnd
from ._exceptions import LifespanError, MetricsUnavailableError
from ._lifespan import LifespanScope
from ._metrics import AppStatistics, StreamMetrics, open_metrics, statistics_document
from ._options import OptionArguments, StreamOptions
from ._registry import StreamRegistry, current_registry, using_registry
from ._responses import (
    EventSourceResponse,
    NDJSONEndings,
    NDJSONResponse,
    SSEFarewells,
    StreamResponse,
)
from ._routes import (
    AppRoute,
    StreamRouteInfo,
    check_endpoint,
    check_route,
    declare_stream_route,
)
from ._server_shutdown import arm_shutdown_watch

__all__ = ["App"]

logger = logging.getLogger("streamkit")

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])
UserLifespan = Callable[["App"], AbstractAsyncContextManager[Mapping[str, Any] | None]]


class SSERouteArguments(OptionArguments, SSEFarewells, total=False):
    """What :meth:`App.sse` takes besides its route's path, name and methods."""


class NDJSONRouteArguments(OptionArguments, NDJSONEndings, total=False):
    """What :meth:`App.ndjson` takes besides its route's path, name and methods."""


#: The App's default heartbeat, where :class:`StreamOptions` has none.
DEFAULT_HEARTBEAT_INTERVAL = 15.0


@asynccontextmanager
async def _no_lifespan(app: App) -> AsyncIterator[None]:
    yield None


async def _placeholder_handler(request: Request, send: object) -> None:
    """Stands in for a route's handler while its arguments are checked."""


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

    :param options: the defaults of every stream route, any of
        :class:`~streamkit.StreamOptions`' fields (``heartbeat_interval``, ``send_timeout``,
        ``max_duration``, ``idle_timeout``, ``end_when_idle``, ``cleanup_timeout``,
        ``buffer_size``), with ``heartbeat_interval`` 15 seconds unless given; a bytes route
        sends heartbeats only if it is given a ``heartbeat_chunk``.
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
    :raises TypeError: a value has the wrong type, or *lifespan* is not callable, or is a
        generator or async function (not made an async context manager).
    :raises MetricsUnavailableError: *metrics_path* is given without ``prometheus-client``.

    :ivar options: the defaults, as a :class:`~streamkit.StreamOptions`.
    :ivar grace_period: as given.
    """

    def __init__(
        self,
        *,
        grace_period: float = 10.0,
        streams_path: str | None = None,
        metrics_path: str | None = None,
        routes: Sequence[BaseRoute] | None = None,
        middleware: Sequence[Middleware] | None = None,
        exception_handlers: Mapping[Any, ExceptionHandler] | None = None,
        lifespan: UserLifespan | None = None,
        debug: bool = False,
        **options: Unpack[OptionArguments],
    ) -> None:
        unknown = sorted(set(options) - StreamOptions.names())
        if unknown:
            raise TypeError(
                f"App got an unknown argument {unknown[0]!r}; the stream options are "
                f"{', '.join(sorted(StreamOptions.names()))}"
            )
        options.setdefault("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL)
        self.options = StreamOptions(**options)
        check_duration("grace_period", grace_period)
        self.grace_period = grace_period
        check_callable("lifespan", lifespan, optional=True)
        if (
            inspect.isasyncgenfunction(lifespan)
            or inspect.isgeneratorfunction(lifespan)
            or inspect.iscoroutinefunction(lifespan)
        ):
            # Starlette takes a generator function (deprecated); entered as a context
            # manager, it, or what an async function returns, failed only as the server
            # started.
            raise TypeError(
                f"lifespan must return an async context manager, got the function "
                f"{lifespan.__qualname__}: make it an async generator function that yields "
                "once, decorated with @contextlib.asynccontextmanager"
            )
        for name, path in (("streams_path", streams_path), ("metrics_path", metrics_path)):
            check_type(name, path, str, optional=True)
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
        self._stream_routes: list[StreamRouteInfo] = []
        self._running: LifespanScope | None = None
        self._streams = StreamRegistry()
        self._route_streams: dict[str, StreamRegistry] = {}
        self._warned_no_lifespan = False
        for path, endpoint, name in (
            (streams_path, self._streams_endpoint, "streamkit_streams"),
            (metrics_path, self._metrics_endpoint, "streamkit_metrics"),
        ):
            if path is not None:
                route = AppRoute(
                    path, endpoint, methods=["GET"], name=name, include_in_schema=False
                )
                self._add_route(route)

    # -- declaring routes ----------------------------------------------------------------------

    def sse(
        self,
        path: str,
        *,
        methods: Collection[str] = ("GET",),
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        on_end: Callable[[StreamEnd], None] | None = None,
        **arguments: Unpack[SSERouteArguments],
    ) -> Callable[[HandlerT], HandlerT]:
        """Declare an event-stream route; the decorated function is returned unchanged.

        It is an async generator function ``(request)`` yielding
        :class:`~streamkit.ServerSentEvent` items (or data: see
        :class:`~streamkit.EventSourceResponse`), or an async function ``(request, send)``
        awaiting ``send(item)``.

        :param path: the route's path, with Starlette's ``{param}`` syntax.
        :param methods: the HTTP methods it answers.
        :param name: the route's name; by default the function's.
        :param headers: extra response headers.
        :param on_end: called with each stream's :class:`~streamkit.StreamEnd`.
        :param arguments: overrides of the App's stream options (any field of
            :class:`~streamkit.StreamOptions`), and the event stream's own
            ``heartbeat_comment``, ``heartbeat_event``, ``shutdown_event``,
            ``deadline_event``, ``error_event`` and ``json_encoder`` (see
            :class:`~streamkit.EventSourceResponse`).
        :raises ValueError: an option is out of range.
        :raises TypeError: an argument is unknown or has the wrong type, or the function has
            neither shape.
        """
        return self._declare(
            "sse", EventSourceResponse, path, methods, name, headers, on_end, dict(arguments)
        )

    def ndjson(
        self,
        path: str,
        *,
        methods: Collection[str] = ("GET",),
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        on_end: Callable[[StreamEnd], None] | None = None,
        **arguments: Unpack[NDJSONRouteArguments],
    ) -> Callable[[HandlerT], HandlerT]:
        """Declare a newline-delimited JSON route, whose items are JSON-serialisable values
        (Pydantic models and dataclasses included); the function has the shapes :meth:`sse`
        takes.

        :param arguments: overrides of the App's stream options, and the stream's own
            ``error_item``, ``shutdown_item``, ``deadline_item`` and ``json_encoder`` (see
            :class:`~streamkit.NDJSONResponse`).

        The other arguments are those of :meth:`sse`.
        """
        return self._declare(
            "ndjson", NDJSONResponse, path, methods, name, headers, on_end, dict(arguments)
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
        **options: Unpack[OptionArguments],
    ) -> Callable[[HandlerT], HandlerT]:
        """Declare a route streaming ``bytes`` or ``str`` chunks; the function has the shapes
        :meth:`sse` takes.

        :param media_type: the content type.
        :param heartbeat_chunk: the bytes a heartbeat writes; without it the route sends no
            heartbeats, whatever the App's default.
        :param options: overrides of the App's stream options.

        The other arguments are those of :meth:`sse`.
        """
        if heartbeat_chunk is None:
            options.setdefault("heartbeat_interval", None)
        arguments = {"media_type": media_type, "heartbeat_chunk": heartbeat_chunk, **options}
        return self._declare(
            "bytes", StreamResponse, path, methods, name, headers, on_end, arguments
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
        :raises TypeError: the path, methods, name or function has the wrong type, or the
            function is a generator function.
        :raises ValueError: the path does not start with ``/`` or has an unknown convertor,
            or a method is not an HTTP token.
        """
        # Checked as a stream route's are (None is Starlette's default: GET and HEAD).
        check_route(path, ("GET",) if methods is None else methods, name)

        def declare(endpoint: HandlerT) -> HandlerT:
            check_endpoint(path, endpoint)
            self._add_route(
                AppRoute(
                    path, endpoint, methods=methods, name=name, include_in_schema=include_in_schema
                )
            )
            return endpoint

        return declare

    def get(self, path: str, *, name: str | None = None) -> Callable[[HandlerT], HandlerT]:
        """Declare a plain ``GET`` endpoint (see :meth:`route`)."""
        return self.route(path, methods=("GET",), name=name)

    def post(self, path: str, *, name: str | None = None) -> Callable[[HandlerT], HandlerT]:
        """Declare a plain ``POST`` endpoint (see :meth:`route`)."""
        return self.route(path, methods=("POST",), name=name)

    def _declare(
        self,
        kind: str,
        response_class: type[StreamResponse[Any]],
        path: str,
        methods: Collection[str],
        name: str | None,
        headers: Mapping[str, str] | None,
        on_end: Callable[[StreamEnd], None] | None,
        arguments: dict[str, Any],
    ) -> Callable[[HandlerT], HandlerT]:
        # The arguments are checked now, with a placeholder handler: a bad one fails at
        # declaration, not at the first request.
        declared = partial(
            declare_stream_route,
            path=path,
            kind=kind,
            methods=check_route(path, methods, name),
            response_class=response_class,
            defaults=self.options,
            arguments={"headers": headers, **arguments},
            on_end=on_end,
            metrics=self._metrics,
            registry_for=self._route_registry,
        )
        declared(name="", handler=_placeholder_handler)

        def declare(handler: HandlerT) -> HandlerT:
            # Starlette's name for an endpoint, which a partial or a callable object has too.
            endpoint = declared(name=name or get_name(handler), handler=handler)
            route = endpoint.route
            self._add_route(AppRoute(path, endpoint, methods=list(route.methods), name=route.name))
            self._stream_routes.append(route)
            if self._metrics is not None:
                self._metrics.add_route(path)
            return handler

        return declare

    def _add_route(self, route: AppRoute) -> None:
        """Append *route*, refused if a route before it answers its path with one of its
        methods: Starlette takes the first that matches, and this one would never be reached.

        :raises ValueError: the path and a method are taken, naming the route that has them.
        """
        for earlier in self.router.routes:
            if not isinstance(earlier, Route) or earlier.path != route.path:
                continue
            if earlier.methods is None or route.methods is None:
                # No methods: Starlette's, for an ASGI endpoint, which answers every method.
                taken = set(route.methods or earlier.methods or {"every method"})
            else:
                taken = earlier.methods & route.methods
            if taken:
                raise ValueError(
                    f"route {route.path!r}: {', '.join(sorted(taken))} is answered by the "
                    f"route {earlier.name} declared before it; give this one another path or "
                    "method"
                )
        self.router.routes.append(route)

    @property
    def stream_routes(self) -> tuple[StreamRouteInfo, ...]:
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

    def _route_registry(self, path: str) -> StreamRegistry | None:
        """The registry the streams of the route at *path* report to, while the lifespan
        runs."""
        running = self._running
        if running is None:
            self._warn_no_lifespan(path)
            return None
        return running.route_registry(path)

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
        :raises TypeError: the user's lifespan yielded neither a mapping nor ``None``.
        """
        if self._running is not None:
            raise LifespanError(f"the lifespan of {self!r} is already running")
        arm_shutdown_watch()
        # A child of the registry current here: under streamkit.serve, the server's, so
        # the server's drain reaches these streams too.
        running = LifespanScope(
            StreamRegistry(parent=current_registry()), grace_period=self.grace_period
        )
        self._running, self._streams = running, running.streams
        self._route_streams = running.route_streams
        try:
            async with running.open(partial(self._user_lifespan, self)) as state:
                if state is not None and not isinstance(state, Mapping):
                    # Starlette would fail on it with no word of the lifespan, or take a
                    # list of pairs for a mapping.
                    raise TypeError(
                        "the lifespan given to App(lifespan=...) must yield a mapping (the "
                        f"requests' state) or None, got {type(state).__name__}: {state!r:.80}"
                    )
                yield state
        finally:
            self._running = None

    @property
    def task_group(self) -> TaskGroup:
        """The App's task group, for app-level work (a cache refresher, a broadcast reader):
        ``app.task_group.start_soon(refresh_forever)`` in the user's lifespan or later.

        Its tasks are cancelled on shutdown once the streams drained, and awaited before the
        user's lifespan exits. An exception escaping a task ends the lifespan (as in any
        task group); under :func:`streamkit.serve` the server stops gracefully first, then
        raises it. Catch inside the task what it should survive.

        :raises LifespanError: the lifespan is not running, or its shutdown has begun.
        """
        if self._running is None:
            raise LifespanError(
                "the App's task group exists only while its lifespan runs; start tasks in "
                "the lifespan given to App(lifespan=...), or in a request"
            )
        task_group = self._running.task_group
        if task_group is None:
            raise LifespanError(
                "the App's task group takes no more tasks: the App's shutdown has begun, or "
                "a task in it failed and the server is stopping"
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
