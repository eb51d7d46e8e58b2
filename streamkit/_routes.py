"""Stream routes: what a route declared on an :class:`~streamkit.App` is, the checks it passes
when it is declared, and the endpoint that serves it.

:class:`StreamRouteInfo` describes a declared route, as :attr:`App.stream_routes` lists it.
:func:`declare_stream_route` applies a route's overrides to the App's defaults and checks them,
with the response's other arguments, at declaration rather than at the first request.
:class:`StreamEndpoint` builds a route's response for each request and delivers it under the
registry the App hands it; it knows the App only through that callback, so this module sits
below the App.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from ._ends import StreamEnd
from ._metrics import StreamMetrics
from ._options import StreamOptions
from ._registry import StreamRegistry, using_registry
from ._responses import StreamResponse

__all__ = ["StreamEndpoint", "StreamRouteInfo", "declare_stream_route"]

#: Gives the registry a route's streams report to, by its path; ``None`` when the App's
#: lifespan is not running (the stream then reports to the registry current there).
RegistryFor = Callable[[str], StreamRegistry | None]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StreamRouteInfo:
    """A stream route declared on an :class:`App`, as listed by :attr:`App.stream_routes`.

    :param path: the declared path, such as ``/items/{id}``; it labels the route's metrics.
    :param name: the route's name, for ``url_path_for``.
    :param kind: ``"sse"``, ``"ndjson"`` or ``"bytes"``.
    :param methods: the HTTP methods it answers.
    :param options: its options: the App's defaults with the route's overrides applied.
    """

    path: str
    name: str
    kind: str
    methods: frozenset[str]
    options: StreamOptions


async def _placeholder(send: object) -> None:
    """Stands in for a handler when a route's response arguments are checked."""


def _check_handler(path: str, handler: Callable[..., Any]) -> bool:
    """Whether *handler* is an async generator function (else a producer taking send)."""
    generator = inspect.isasyncgenfunction(handler)
    if not (generator or inspect.iscoroutinefunction(handler)):
        raise TypeError(
            f"route {path!r}: a stream handler must be an async generator function taking "
            f"(request) or an async function taking (request, send), got {handler!r}"
        )
    expected = "(request)" if generator else "(request, send)"
    signature = inspect.signature(handler)
    try:
        signature.bind(*([None] * (1 if generator else 2)))
    except TypeError:
        raise TypeError(
            f"route {path!r}: {handler.__qualname__} must take {expected}, "
            f"its signature is {signature}"
        ) from None
    return generator


class StreamEndpoint:
    """The ASGI endpoint of one stream route: it builds the response per request and delivers
    it under the route's registry.

    Made by :func:`declare_stream_route`, which checks its arguments first.
    """

    def __init__(
        self,
        route: StreamRouteInfo,
        handler: Callable[..., Any],
        response_class: type[StreamResponse[Any]],
        arguments: dict[str, Any],
        on_end: Callable[[StreamEnd], None] | None,
        *,
        metrics: StreamMetrics | None,
        registry_for: RegistryFor,
    ) -> None:
        self.route = route
        self.handler = handler
        self.generator = _check_handler(route.path, handler)
        self.response_class = response_class
        self.arguments = arguments
        self.on_end = on_end
        self._metrics = metrics
        self._registry_for = registry_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        content = self.handler(request) if self.generator else partial(self.handler, request)
        path, metrics, user_on_end = self.route.path, self._metrics, self.on_end
        ended = False

        def on_end(end: StreamEnd) -> None:
            nonlocal ended
            ended = True
            if metrics is not None:
                metrics.stream_ended(path, end)
            if user_on_end is not None:
                user_on_end(end)

        response = self.response_class(content, on_end=on_end, **self.arguments)
        if metrics is not None:
            metrics.stream_started(path)
        try:
            registry = self._registry_for(path)
            if registry is None:
                await response(scope, receive, send)
            else:
                with using_registry(registry):
                    await response(scope, receive, send)
        finally:
            if metrics is not None and not ended:
                metrics.stream_ended(path, None)


def declare_stream_route(
    *,
    path: str,
    name: str,
    kind: str,
    methods: frozenset[str],
    handler: Callable[..., Any],
    response_class: type[StreamResponse[Any]],
    defaults: StreamOptions,
    arguments: dict[str, Any],
    on_end: Callable[[StreamEnd], None] | None,
    metrics: StreamMetrics | None,
    registry_for: RegistryFor,
) -> StreamEndpoint:
    """The endpoint of a stream route, checked now rather than at its first request.

    :param arguments: the response's arguments, the overrides of the App's *defaults*
        among them (the stream options are told apart by their names).
    :raises TypeError: an argument is unknown, or a value has the wrong type, or the handler
        has neither shape.
    :raises ValueError: a value is out of range.
    """
    overrides, rest = StreamOptions.split(arguments)
    try:
        options = dataclasses.replace(defaults, **overrides)
        rest |= dataclasses.asdict(options)
        # One response built now checks the route's response arguments (an NDJSON closing
        # item JSON cannot carry, an async on_end, an unknown argument) at declaration.
        response_class(_placeholder, on_end=on_end, **rest)
    except TypeError as exc:
        raise TypeError(f"route {path!r}: {exc}") from None
    except ValueError as exc:  # a subclass (UnicodeError) may not take one message
        raise ValueError(f"route {path!r}: {exc}") from None
    route = StreamRouteInfo(path=path, name=name, kind=kind, methods=methods, options=options)
    return StreamEndpoint(
        route, handler, response_class, rest, on_end, metrics=metrics, registry_for=registry_for
    )
