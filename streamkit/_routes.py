"""Stream routes: what a route declared on an :class:`~streamkit.App` is, the checks it passes
when it is declared, and the endpoint that serves it.

:class:`StreamRoute` describes a declared route, as :attr:`App.stream_routes` lists it.
:func:`route_options` applies a route's overrides to the App's defaults and checks them, with
the response's other arguments, at declaration rather than at the first request.
:class:`_StreamEndpoint` builds a route's response for each request and hands it to the App,
which runs it under its lifespan's registries.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypedDict

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from ._ends import StreamEnd
from ._options import StreamOptions
from ._responses import StreamResponse

if TYPE_CHECKING:
    from ._app import App

__all__ = ["StreamRoute"]


class StreamOverrides(TypedDict, total=False):
    """The per-route overrides of the App's defaults (see :class:`~streamkit.StreamOptions`)."""

    heartbeat_interval: float | None
    send_timeout: float | None
    max_duration: float | None
    cleanup_timeout: float
    buffer_size: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StreamRoute:
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


def route_options(
    path: str,
    defaults: StreamOptions,
    overrides: dict[str, Any],
    response_class: type[StreamResponse[Any]],
    arguments: dict[str, Any],
    on_end: Callable[[StreamEnd], None] | None,
) -> StreamOptions:
    """A route's options: the App's *defaults* with the route's *overrides* applied, checked
    with the route's response arguments when the route is declared.

    :param path: the route's path, which the error messages name.
    :param defaults: the App's options.
    :param overrides: the route's overrides of them.
    :param response_class: the route's response class.
    :param arguments: the response's other arguments; the options are added to them.
    :param on_end: the route's ``on_end``.
    :raises TypeError: an override is unknown, or a value has the wrong type.
    :raises ValueError: a value is out of range.
    """
    unknown = sorted(set(overrides) - StreamOptions.names())
    if unknown:
        raise TypeError(
            f"route {path!r}: unknown stream option {unknown[0]!r}; "
            f"the options are {', '.join(sorted(StreamOptions.names()))}"
        )
    try:
        options = dataclasses.replace(defaults, **overrides)
        arguments |= {field: getattr(options, field) for field in StreamOptions.names()}
        # One response built now checks the route's response arguments (an NDJSON
        # closing item JSON cannot carry, an async on_end) at declaration, not at the
        # first request.
        response_class(_placeholder, on_end=on_end, **arguments)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"route {path!r}: {exc}") from None
    return options


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


class _StreamEndpoint:
    """The ASGI endpoint of one stream route: it builds the response per request and runs it
    under the route's registry."""

    def __init__(
        self,
        app: App,
        route: StreamRoute,
        handler: Callable[..., Any],
        response_class: type[StreamResponse[Any]],
        arguments: dict[str, Any],
        on_end: Callable[[StreamEnd], None] | None,
    ) -> None:
        self.app = app
        self.route = route
        self.handler = handler
        self.generator = _check_handler(route.path, handler)
        self.response_class = response_class
        self.arguments = arguments
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        content = self.handler(request) if self.generator else partial(self.handler, request)
        await self.app._run_stream(self, content, scope, receive, send)
