"""Stream routes: what a route declared on an :class:`~streamkit.App` is, the checks it passes
when it is declared, and the endpoint that serves it.

:class:`StreamRouteInfo` describes a declared route, as :attr:`App.stream_routes` lists it.
:func:`declare_stream_route` applies a route's overrides to the App's defaults and checks them,
with the response's other arguments, at declaration rather than at the first request.
:class:`StreamEndpoint` builds a route's response for each request and delivers it under the
registry the App hands it; it knows the App only through that callback, so this module sits
below the App. :class:`AppRoute` is the Starlette route the App declares each route with.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Collection
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
from starlette.requests import Request
from starlette.routing import Match, Route, compile_path, get_name
from starlette.types import Message, Receive, Scope, Send

from ._checks import check_callable, check_type, is_token
from ._ends import StreamEnd
from ._metrics import StreamMetrics
from ._options import StreamOptions
from ._registry import StreamRegistry, using_registry
from ._responses import StreamResponse

__all__ = [
    "AppRoute",
    "RequestMessages",
    "StreamEndpoint",
    "StreamRequest",
    "StreamRouteInfo",
    "check_endpoint",
    "check_route",
    "declare_stream_route",
]

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


#: Bytes of a request's body the stream's watcher keeps for the request, unread, until the
#: producer begins to read it: more than a body a producer ignores most often holds (a prompt,
#: a form). Past it, a body the producer is reading waits in the connection (the watcher reads
#: no more until the producer takes some), and one it has not begun to read is dropped.
MAX_UNREAD_BODY = 64 * 1024


class RequestMessages:
    """The one reader of a stream route's ``receive``, shared by its request and its stream.

    The stream's watcher reads the connection while the producer runs, for the disconnect; the
    producer may read the request's body meanwhile (``request.body()``, ``request.stream()``).
    Both reading the server's ``receive`` would split the body between them, and the watcher
    drops what it takes. So only the watcher reads it (:meth:`for_stream`), and keeps the body
    for the request, which takes it in order (:meth:`for_request`), then the disconnect.

    The body's bytes wait unread as one piece, however many messages they came in: a client
    that sends its body in one-byte chunks (or HTTP/2 frames) would otherwise have each byte
    held as a message, some 200 bytes of it. At most :data:`MAX_UNREAD_BODY` bytes wait
    unread. Past that, once the producer has begun to read the body, the watcher waits for it
    to take some: it is reading, and gets to the disconnect in its turn. Until then, the
    watcher drops the body, what it kept included, and reads on, and the request's next read
    raises :exc:`RuntimeError`. A watcher that stopped
    reading for a producer that may never read would not hear the client leave: over HTTP/1.1
    until a write failed, over HTTP/2 not at all (a reset stream's writes are dropped), and
    there hypercorn, which hands each stream its body in the connection's reader, would stop
    reading the whole connection.
    """

    __slots__ = (
        "_arrived",
        "_dropped",
        "_ended",
        "_more_body",
        "_reading",
        "_receive",
        "_taken",
        "_unread",
        "_unread_body",
    )

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._unread = False  # body messages arrived that the request has not taken
        self._unread_body = bytearray()  # their bytes, joined
        self._more_body = True  # the last of them said more of the body is to come
        self._reading = False  # the request has begun to read the body
        self._dropped = False  # the body was dropped, the request not reading it
        self._ended: Message | None = None  # the disconnect, once read
        self._arrived: anyio.Event | None = None  # while the request waits for a message
        self._taken: anyio.Event | None = None  # while the watcher waits for room

    async def for_stream(self) -> Message:
        """The stream's ``receive``: the server's next message, a body's kept for the request.
        Cancelling it loses nothing (the server holds a message until it is taken)."""
        while len(self._unread_body) > MAX_UNREAD_BODY and self._reading:
            self._taken = taken = anyio.Event()
            await taken.wait()
        message = await self._receive()
        if message["type"] != "http.request":
            self._ended = message
        elif self._dropped or len(self._unread_body) > MAX_UNREAD_BODY:
            # The producer has not begun to read a body this large: dropped, so that the
            # connection is still read and the client's leaving heard.
            self._dropped = True
            self._unread = False
            self._unread_body = bytearray()
        else:
            self._unread = True
            self._unread_body += message.get("body", b"")
            self._more_body = message.get("more_body", False)
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None
        return message

    @property
    def disconnected(self) -> bool:
        """Whether the watcher has heard the client leave."""
        return self._ended is not None

    async def for_request(self) -> Message:
        """The request's ``receive``: the body in order, each time all that has arrived of it
        in one message, then the disconnect.

        A receive in a scope already cancelled raises its cancellation and takes nothing of
        the body. It is a poll (Starlette's ``is_disconnected()`` asks so; a
        :class:`StreamRequest` answers without one), which must not begin the read of the
        body, or the read of a producer whose stream has ended, the disconnect among the
        reasons, which must be cancelled, not told (``ClientDisconnect``, an error).

        :raises RuntimeError: the body was dropped, more than :data:`MAX_UNREAD_BODY` bytes of
            it having arrived before the request began to read it.
        """
        if anyio.current_effective_deadline() == -math.inf:
            await anyio.lowlevel.checkpoint()
        self._reading = True
        while not self._unread:
            if self._ended is not None:
                # The disconnect decided the stream's end: a producer reading the body is
                # cancelled here rather than told (ClientDisconnect, logged as an error).
                await anyio.lowlevel.checkpoint()
                return self._ended
            if self._dropped:
                raise RuntimeError(
                    f"the request's body was dropped: more than {MAX_UNREAD_BODY} bytes of it "
                    "arrived before the stream's producer began to read it, and the stream "
                    "reads on to hear the client leave. Read a body that may be larger first "
                    "thing in the producer (await request.body())"
                )
            if self._arrived is None:
                self._arrived = anyio.Event()
            await self._arrived.wait()
        body = bytes(self._unread_body)
        self._unread = False
        self._unread_body = bytearray()
        if self._taken is not None:
            self._taken.set()
            self._taken = None
        return {"type": "http.request", "body": body, "more_body": self._more_body}


class StreamRequest(Request):
    """The request a stream route's producer is handed: its ``receive`` is
    :meth:`RequestMessages.for_request`, and :meth:`is_disconnected` asks the stream's watcher.
    """

    def __init__(self, scope: Scope, messages: RequestMessages, send: Send) -> None:
        super().__init__(scope, messages.for_request, send)
        self._messages = messages

    async def is_disconnected(self) -> bool:
        """Whether the client has left, as the stream's watcher, which reads the connection,
        has heard: a poll, which takes nothing of the body (Starlette's receives in a
        cancelled scope, which the stream's own cancellation could not be told from)."""
        return self._messages.disconnected


class AppRoute(Route):
    """A Starlette route whose path parameter, refused by its convertor, is no match (a 404),
    as one its pattern does not match is.

    Starlette lets the convertor's ``ValueError`` out of the match, a 500 for a client's
    mistake: its ``int`` convertor matches any run of digits, then ``int()`` refuses one of
    more than 4,300.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        try:
            return super().matches(scope)
        except ValueError:
            return Match.NONE, {}


def check_route(path: object, methods: object, name: object) -> frozenset[str]:
    """Refuse a stream route's path, methods or name where the route is declared, naming the
    value; Starlette would take a bare ``"GET"`` as the methods ``G``, ``E`` and ``T``, and
    refuse a bad path with an assertion (none under ``python -O``).

    :return: the methods, upper-cased.
    :raises TypeError: a value has the wrong type.
    :raises ValueError: the path does not start with ``/`` or has an unknown convertor, no
        method is given, or a method is not an HTTP token.
    """
    if not isinstance(path, str):
        raise TypeError(f"a route's path must be a str, got {type(path).__name__}: {path!r:.80}")
    if not path.startswith("/"):
        raise ValueError(f"a route's path must start with '/', got {path!r:.80}")
    try:
        compile_path(path)
    except (AssertionError, ValueError) as exc:
        raise ValueError(f"route {path!r}: {exc}") from None
    if isinstance(methods, str | bytes) or not isinstance(methods, Collection):
        raise TypeError(
            f"route {path!r}: methods must be a collection of str, such as ('GET', 'POST'), "
            f"got {type(methods).__name__}: {methods!r:.80}"
        )
    if not methods:
        raise ValueError(f"route {path!r}: methods must name at least one method, got {methods!r}")
    for method in methods:
        if not isinstance(method, str):
            raise TypeError(
                f"route {path!r}: a method must be a str, got {type(method).__name__}: "
                f"{method!r:.80}"
            )
        if not is_token(method):
            raise ValueError(f"route {path!r}: method {method!r:.80} must be an HTTP token")
    try:
        check_type("name", name, str, optional=True)
    except TypeError as exc:
        raise TypeError(f"route {path!r}: {exc}") from None
    return frozenset(method.upper() for method in methods)


def check_endpoint(path: str, endpoint: object) -> None:
    """Refuse a plain route's endpoint where the route is declared, naming it: Starlette takes
    any, and one it cannot call, or whose call returns no response, fails each request with a
    500.

    :raises TypeError: *endpoint* is not callable, or is a generator function.
    """
    try:
        check_callable("endpoint", endpoint)
    except TypeError as exc:
        raise TypeError(f"route {path!r}: {exc}") from None
    if inspect.isasyncgenfunction(endpoint) or inspect.isgeneratorfunction(endpoint):
        kind = "an async generator" if inspect.isasyncgenfunction(endpoint) else "a generator"
        raise TypeError(
            f"route {path!r}: endpoint {get_name(endpoint)} is {kind} function, which returns "
            "no response: declare a stream route with app.sse, app.ndjson or app.stream"
        )


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
        # A partial or a callable object has no __qualname__: its repr names it.
        named = getattr(handler, "__qualname__", None) or repr(handler)
        raise TypeError(
            f"route {path!r}: {named} must take {expected}, its signature is {signature}"
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
        messages = RequestMessages(receive)
        request = StreamRequest(scope, messages, send)
        receive = messages.for_stream
        content = self.handler(request) if self.generator else partial(self.handler, request)
        path, metrics, user_on_end = self.route.path, self._metrics, self.on_end
        if scope.get("method") == "HEAD":
            metrics = None  # answered with headers alone: no stream runs, or is counted
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
