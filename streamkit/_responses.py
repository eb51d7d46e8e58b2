"""The response classes: Starlette responses whose body is a stream run by the runtime.

They differ from Starlette's ``StreamingResponse`` on purpose: the body is produced in a task
group tied to the connection (see ``_runtime``), so a client that leaves cancels the producer
and its cleanup still completes; and a stream's end is reported with one :class:`EndReason`.
Sync iterators are refused: a thread cannot be cancelled when the client leaves.

Each class's ``__init__`` names ``status_code`` with its default: FastAPI reads it there to
document a route declared with ``response_class=``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterable, Callable, Mapping
from contextlib import AsyncExitStack
from types import MappingProxyType
from typing import Any, ClassVar, Generic, Self, TypedDict, TypeVar, Unpack

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ._checks import (
    check_callable,
    check_header,
    check_status_code,
    check_text,
    check_type,
    given_headers,
)
from ._ends import EndReason, StreamEnd
from ._json import JSONEncoder, check_json_encoder, encode_json, shown
from ._options import OptionArguments, StreamOptions
from ._runtime import deliver, printable
from ._sender import Producer
from ._sse import ServerSentEvent, encode_comment, encode_data, encode_event, event_from_item

__all__ = [
    "DEFAULT_ERROR_EVENT",
    "DEFAULT_SHUTDOWN_EVENT",
    "BytesStreamArguments",
    "EventSourceArguments",
    "EventSourceClassArguments",
    "EventSourceResponse",
    "JSONEncoding",
    "NDJSONClassArguments",
    "NDJSONEndings",
    "NDJSONResponse",
    "ResponseArguments",
    "SSEFarewells",
    "StreamArguments",
    "StreamResponse",
]

logger = logging.getLogger("streamkit")

# Headers as StreamResponse.init_headers encoded them, by content type, charset and headers:
# the first sets seen, up to a bound (headers that differ per request fill it once).
_ENCODED_HEADERS_KEPT = 256
_encoded_headers: dict[tuple[object, ...], tuple[tuple[bytes, bytes], ...]] = {}

ItemT = TypeVar("ItemT")


class ResponseArguments(OptionArguments, total=False):
    """The keyword arguments every stream response takes besides ``status_code``, which each
    class's ``__init__`` names (see :class:`StreamResponse`): the stream options, and these."""

    headers: Mapping[str, str] | None
    media_type: str | None
    background: BackgroundTask | None
    idle_fallback: Callable[[Any], Any] | None
    on_end: Callable[[StreamEnd], None] | None


class StreamArguments(ResponseArguments, total=False):
    """The keyword arguments every stream response takes (see :class:`StreamResponse`)."""

    status_code: int


class BytesStreamArguments(StreamArguments, total=False):
    """The keyword arguments :class:`StreamResponse` takes: what
    :meth:`StreamResponse.with_options` is given."""

    heartbeat_chunk: bytes | None


async def _no_content(send: object) -> None:
    """Stands in for the content when a class's default arguments are checked."""


class StreamResponse(Response, Generic[ItemT]):
    """A streamed body of ``bytes`` or ``str`` chunks (``str`` is sent as UTF-8).

    :param content: an async iterable of items, or a producer: an async function that is
        handed a :class:`~streamkit.StreamSender` and awaits ``send(item)`` for each item.
    :param status_code: the HTTP status: a final one (200 to 599) whose response has a body,
        so not 204 or 304.
    :param headers: extra response headers; one given in any spelling of its name replaces
        the default (``cache-control: no-store``, for SSE ``x-accel-buffering: no`` too). One
        that HTTP cannot carry (a name that is not a token, a value with a line break or
        beyond Latin-1) is refused here, and so are ``Content-Length`` and
        ``Transfer-Encoding``, which the server sets for a stream.
    :param media_type: the content type; one that cannot be sent as a header is refused here.
    :param background: a task run after the stream ends, whatever the reason.
    :param heartbeat_interval: see :class:`~streamkit.StreamOptions`; a bytes stream needs
        ``heartbeat_chunk`` too.
    :param send_timeout: see :class:`~streamkit.StreamOptions`.
    :param max_duration: see :class:`~streamkit.StreamOptions`.
    :param idle_timeout: see :class:`~streamkit.StreamOptions`.
    :param idle_fallback: what to send when the producer was idle for ``idle_timeout``: called
        with the last item the producer sent (``None`` before the first) and returning the item
        to send, or ``None`` to send nothing. By default the last item again (for SSE, a
        ``stale`` event carrying the last event's data).
    :param end_when_idle: see :class:`~streamkit.StreamOptions`.
    :param cleanup_timeout: see :class:`~streamkit.StreamOptions`.
    :param buffer_size: see :class:`~streamkit.StreamOptions`.
    :param on_end: called with the :class:`~streamkit.StreamEnd` once the stream has ended;
        a plain function (async work belongs in ``background``).
    :param heartbeat_chunk: the bytes a heartbeat writes.
    :raises TypeError: *content* is neither an async iterable nor a callable, *on_end* or
        *idle_fallback* is not callable or is an async function, *headers* is no mapping,
        *status_code* is not an ``int``, or *media_type* or a header's name or value is not a
        ``str``.
    :raises ValueError: an option is out of range (see :class:`~streamkit.StreamOptions`),
        *status_code* is one no stream can be sent with, or a header (the content type
        included) cannot be sent, or frames the body.
    """

    media_type = "application/octet-stream"
    default_heartbeat_interval: ClassVar[float | None] = None

    def __init__(
        self,
        content: Producer[ItemT] | AsyncIterable[ItemT],
        *,
        status_code: int = 200,
        heartbeat_chunk: bytes | None = None,
        **arguments: Unpack[ResponseArguments],
    ) -> None:
        check_type("heartbeat_chunk", heartbeat_chunk, bytes, optional=True)
        self._heartbeat_chunk = heartbeat_chunk
        self._setup(content, status_code, arguments)
        if self.options.heartbeat_interval is not None and not heartbeat_chunk:
            raise ValueError(
                f"a bytes stream needs a non-empty heartbeat_chunk to send heartbeats "
                f"every {self.options.heartbeat_interval!r} s, got {heartbeat_chunk!r}"
            )

    def _setup(
        self,
        content: Producer[ItemT] | AsyncIterable[ItemT],
        status_code: int,
        arguments: ResponseArguments,
    ) -> None:
        unknown = sorted(set(arguments) - _ARGUMENT_NAMES)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got an unknown argument {unknown[0]!r}; "
                f"it takes {', '.join(sorted(_ARGUMENT_NAMES | self._own_arguments()))}"
            )
        if not (callable(content) or hasattr(content, "__aiter__")):
            raise TypeError(
                "stream content must be an async iterable or an async function taking send, "
                f"got {type(content).__name__}: {content!r:.80}"
            )
        on_end = arguments.get("on_end")
        check_callable("on_end", on_end, optional=True)
        if on_end is not None and inspect.iscoroutinefunction(on_end):
            raise TypeError(
                f"on_end must be a plain function, got the async function {on_end!r}; "
                "put async work in background="
            )
        idle_fallback = arguments.get("idle_fallback")
        # Checked now: a wrong one would fail only when the producer first goes idle, the
        # stream long under way, and end it as an error.
        check_callable("idle_fallback", idle_fallback, optional=True)
        if idle_fallback is not None and inspect.iscoroutinefunction(idle_fallback):
            raise TypeError(
                "idle_fallback must be a plain function returning the item to send, "
                f"got the async function {idle_fallback!r}"
            )
        self.content = content
        self.on_end = on_end
        self.idle_fallback = idle_fallback or self.default_idle_fallback
        given, _ = StreamOptions.split(dict(arguments))
        given.setdefault("heartbeat_interval", self.default_heartbeat_interval)
        self.options = StreamOptions(**given)
        check_status_code(status_code)
        self.status_code = status_code
        media_type = arguments.get("media_type")
        if media_type is not None:
            check_type("media_type", media_type, str)
            check_header("content-type", media_type)  # else a 500 when the response starts
            self.media_type = media_type
        self.background = arguments.get("background")
        headers = given_headers(arguments.get("headers"))
        # Header names are case-insensitive: a default is left out if given in any spelling
        # ("Cache-Control"), or both would be sent. A name that is no str is refused below.
        given_names = {name.lower() for name in headers if isinstance(name, str)}
        defaults = {
            name: value for name, value in self.default_headers().items() if name not in given_names
        }
        self.init_headers(defaults | headers)

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        """Set :attr:`raw_headers` from *headers*, the content type and the charset, as
        Starlette's does, after checking each header can be sent.

        :raises TypeError: a header's name or value is not a ``str``.
        :raises ValueError: a header cannot be sent (see :class:`StreamResponse`).
        """
        # The encoding of a set of headers is kept: the responses of a route send the same
        # headers, and each encoding them would hold copies of its own (0.4 KiB a response;
        # one response per subscriber of a topic).
        key = (self.media_type, self.charset, *(headers.items() if headers else ()))
        try:
            raw = _encoded_headers.get(key)
        except TypeError:  # a value that cannot be hashed: check_header names it below
            raw = None
        if raw is not None:
            self.raw_headers = list(raw)
            return
        for name, value in (headers or {}).items():
            check_header(name, value)  # a set kept is checked once
        super().init_headers(headers)
        if len(_encoded_headers) < _ENCODED_HEADERS_KEPT:
            _encoded_headers[key] = tuple(self.raw_headers)

    @classmethod
    def _own_arguments(cls) -> frozenset[str]:
        """The keyword arguments this class takes besides :class:`StreamArguments`."""
        return frozenset({"heartbeat_chunk"})

    @classmethod
    def with_options(cls, **arguments: Unpack[BytesStreamArguments]) -> type[Self]:
        """A subclass whose instances take *arguments* as their defaults, for FastAPI's
        ``response_class=`` (see ``streamkit.fastapi``)::

            @app.get("/ticks", response_class=EventSourceResponse.with_options(max_duration=60))

        Typed with the class's own arguments, as its constructor is: a type checker names
        one misspelt or of the wrong type where it is written.

        :param arguments: any keyword arguments the class takes, but ``content``.
        :raises TypeError: an argument is unknown or has the wrong type.
        :raises ValueError: an argument is out of range.
        """
        return cls._with_options(dict(arguments))

    @classmethod
    def _with_options(cls, arguments: dict[str, Any]) -> type[Self]:
        cls(_no_content, **arguments)  # refuse a bad argument now, not at the first request
        status = arguments.pop("status_code", 200)

        def __init__(self: Any, content: Any, *, status_code: int = status, **more: Any) -> None:
            cls.__init__(self, content, status_code=status_code, **(arguments | more))

        return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})

    def default_headers(self) -> dict[str, str]:
        """Headers sent unless the caller gives its own."""
        return {"cache-control": "no-store"}

    def encode(self, item: ItemT) -> bytes:
        """Encode one item as the bytes written for it.

        :raises TypeError: the item is not ``bytes`` or ``str``.
        """
        if isinstance(item, bytes | bytearray | memoryview):
            return bytes(item)
        if isinstance(item, str):
            check_text("a bytes stream's str item", item)
            return item.encode()
        raise TypeError(
            f"a bytes stream takes bytes or str items, got {type(item).__name__}: {shown(item)}"
        )

    def heartbeat_frame(self) -> bytes | None:
        """The bytes a heartbeat writes, or ``None`` for no heartbeats."""
        return self._heartbeat_chunk

    def start_message(self) -> Message:
        """The ``http.response.start`` message: the status and headers."""
        return {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }

    def idle_frame(self, last: ItemT | None) -> bytes | None:
        """The idle fallback for the *last* item, encoded; ``None`` sends nothing."""
        fallback = self.idle_fallback(last)
        return None if fallback is None else self.encode(fallback)

    @staticmethod
    def default_idle_fallback(last: Any) -> Any:
        """The item sent after ``idle_timeout`` unless ``idle_fallback`` says otherwise: the last
        item again."""
        return last

    def closing_frame(self, reason: EndReason) -> bytes | None:
        """The bytes written last when the stream ends early for *reason*, if any."""
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = await deliver(self, scope, receive, send)
        if self.background is not None:
            await self.background()
        if error is not None:
            await _exit_dependencies(scope, error)


async def _exit_dependencies(scope: Scope, error: BaseException) -> None:
    """Exit FastAPI's dependencies with ``yield`` telling them of *error*, which ended the
    stream, as they are told of an error that ends FastAPI's own streams: a dependency that
    commits a transaction when nothing went wrong rolls it back instead. FastAPI keeps their
    exits in this stack and exits it after the response; the error, logged and reported as
    the stream's end already, is not raised past them for the server to log again. Outside
    FastAPI there is no such stack, and nothing to do.

    An exception a dependency raises in its place (FastAPI's pattern: an ``HTTPException``
    for the error it sees) is logged, not raised: no response can follow the stream's head,
    and FastAPI's handlers would take it for an error of their own ("response already
    started") and the server drop the connection.
    """
    stack = scope.get("fastapi_inner_astack")
    if not isinstance(stack, AsyncExitStack):
        return
    try:
        await stack.__aexit__(type(error), error, error.__traceback__)
    except Exception as raised:
        if raised is not error:
            logger.error(
                "stream %s: a dependency's exit raised on its error",
                printable(scope.get("path", "")),
                exc_info=raised,
            )


#: The farewell an SSE stream sends on a graceful shutdown: reconnect after a second.
DEFAULT_SHUTDOWN_EVENT = ServerSentEvent(event="shutdown", data="", retry=1000)
#: What an SSE stream sends when its producer raises; the exception text is not sent.
DEFAULT_ERROR_EVENT = ServerSentEvent(event="error", data="")
_DEFAULT_CLOSING: Mapping[EndReason, ServerSentEvent | None] = MappingProxyType(
    {
        EndReason.SHUTDOWN: DEFAULT_SHUTDOWN_EVENT,
        EndReason.DEADLINE: None,
        EndReason.ERROR: DEFAULT_ERROR_EVENT,
    }
)


class JSONEncoding(TypedDict, total=False):
    """How the items that are not text are encoded (see :class:`EventSourceResponse` and
    :class:`NDJSONResponse`)."""

    json_encoder: JSONEncoder | None


class SSEFarewells(JSONEncoding, total=False):
    """What an event stream sends besides its items, and how it encodes them (see
    :class:`EventSourceResponse`)."""

    heartbeat_comment: str
    heartbeat_event: ServerSentEvent | Callable[[], ServerSentEvent] | None
    shutdown_event: ServerSentEvent | None
    deadline_event: ServerSentEvent | None
    error_event: ServerSentEvent | None


class EventSourceArguments(ResponseArguments, SSEFarewells, total=False):
    """The keyword arguments :class:`EventSourceResponse` takes besides ``status_code``."""


class EventSourceClassArguments(EventSourceArguments, total=False):
    """The keyword arguments :class:`EventSourceResponse` takes: what
    :meth:`EventSourceResponse.with_options` is given."""

    status_code: int


class EventSourceResponse(StreamResponse[Any]):
    """A ``text/event-stream`` of :class:`~streamkit.ServerSentEvent` items.

    Any other item is an event's data: a ``str`` is sent as it is, anything else as JSON (a
    ``dict``, a list, a number, a Pydantic model, a dataclass). A ``dict`` whose keys are all
    event fields and include ``data`` or ``event`` (sse-starlette's items) is that event.

    Heartbeats are on by default: a comment every 15 seconds with nothing else written, which
    keeps proxies from timing the stream out but which ``EventSource`` never shows to a page.
    With ``heartbeat_event``, a heartbeat is an event a page can listen to instead.

    :param heartbeat_comment: the text of the heartbeat comment; ``"ping"`` by default.
    :param heartbeat_event: send this event as the heartbeat instead of the comment, such as
        ``ServerSentEvent(event="ping", data="")``; or a function returning the event, called
        for each heartbeat (``lambda: ServerSentEvent(event="ping", data={"at": time.time()})``).
        It is checked (and, if a function, called once) when the response is made.
    :param shutdown_event: sent when the server shuts down gracefully; carry a ``retry`` to
        tell the browser when to reconnect. ``None`` sends nothing. By default
        ``event: shutdown`` with ``retry: 1000``.
    :param deadline_event: sent when ``max_duration`` ends the stream, or ``end_when_idle``
        after the idle fallback; none by default.
    :param error_event: sent when the producer raises; by default ``event: error`` with empty
        data (the exception text is not sent). A farewell event whose data cannot be encoded
        is refused here (``TypeError`` or ``ValueError``, naming it); one that fails when
        encoded again at the end is left out and logged, and the body still ends.
    :param json_encoder: encodes data that is not a ``str``: a function of one value returning
        ``str`` or ``bytes``, such as ``orjson.dumps``. By default the standard library's
        ``json``, which also takes Pydantic models and dataclasses.

    The other arguments are those of :class:`StreamResponse`.
    """

    media_type = "text/event-stream"
    default_heartbeat_interval = 15.0

    def __init__(
        self,
        content: Producer[Any] | AsyncIterable[Any],
        *,
        status_code: int = 200,
        **arguments: Unpack[EventSourceArguments],
    ) -> None:
        self.json_encoder = check_json_encoder(arguments.pop("json_encoder", None))
        comment = arguments.pop("heartbeat_comment", "ping")
        check_type("heartbeat_comment", comment, str)
        check_text("heartbeat_comment", comment)
        self._heartbeat = encode_comment(comment)
        self._heartbeat_event = arguments.pop("heartbeat_event", None)
        if self._heartbeat_event is not None:
            self._heartbeat = self._heartbeat_event_frame()  # a bad event is refused now
        closing = {
            EndReason.SHUTDOWN: arguments.pop("shutdown_event", DEFAULT_SHUTDOWN_EVENT),
            EndReason.DEADLINE: arguments.pop("deadline_event", None),
            EndReason.ERROR: arguments.pop("error_event", DEFAULT_ERROR_EVENT),
        }
        for reason, event in closing.items():
            # Checked now: a wrong type, or data the encoder refuses, would otherwise fail
            # only when the stream ends so.
            name = f"{reason.value}_event"
            check_type(name, event, ServerSentEvent, optional=True)
            if event is not None and event is not _DEFAULT_CLOSING[reason]:
                try:
                    encode_event(event, self.json_encoder)
                except TypeError as exc:
                    raise TypeError(f"{exc} (the {name})") from None
                except ValueError as exc:
                    raise ValueError(f"{exc} (the {name})") from None
        # The defaults' mapping is shared: one response per subscriber, each holding its own
        # copy, would cost every one of them a dict.
        same = all(closing[reason] is event for reason, event in _DEFAULT_CLOSING.items())
        self._closing: Mapping[EndReason, ServerSentEvent | None] = (
            _DEFAULT_CLOSING if same else closing
        )
        self._setup(content, status_code, arguments)

    def _heartbeat_event_frame(self) -> bytes:
        given = self._heartbeat_event
        event = given() if callable(given) else given
        if not isinstance(event, ServerSentEvent):
            raise TypeError(
                "heartbeat_event must be a ServerSentEvent or a function returning one, "
                f"got {type(event).__name__}: {event!r:.80}"
            )
        return encode_event(event, self.json_encoder)

    # Its own arguments, as its constructor takes: not the base's (heartbeat_chunk).
    @classmethod
    def with_options(  # type: ignore[override]
        cls, **arguments: Unpack[EventSourceClassArguments]
    ) -> type[Self]:
        """See :meth:`StreamResponse.with_options`; the arguments are this class's."""
        return cls._with_options(dict(arguments))

    @classmethod
    def _own_arguments(cls) -> frozenset[str]:
        return frozenset(SSEFarewells.__optional_keys__)

    def default_headers(self) -> dict[str, str]:
        # x-accel-buffering: tell nginx-style proxies not to hold events back.
        return {"cache-control": "no-store", "x-accel-buffering": "no"}

    def encode(self, item: Any) -> bytes:
        """Encode one item as an event (see the class for how items are read).

        :raises TypeError: the item's data cannot be encoded as JSON, or a ``dict`` event's
            field has the wrong type; the message names the value.
        :raises ValueError: the item holds a value JSON cannot carry, or a ``dict`` event's
            field is invalid.
        """
        kind = type(item)
        if kind is str:
            return encode_data(item)  # a token, a line: the event need not be made
        if kind is ServerSentEvent:
            return encode_event(item, self.json_encoder)
        return encode_event(event_from_item(item), self.json_encoder)

    def heartbeat_frame(self) -> bytes | None:
        if callable(self._heartbeat_event):
            try:
                self._heartbeat = self._heartbeat_event_frame()  # kept: the last good one
            except Exception:
                # A heartbeat is not worth ending a stream for: send the last good one.
                logger.exception("heartbeat_event %r raised", self._heartbeat_event)
        return self._heartbeat

    @staticmethod
    def default_idle_fallback(last: Any) -> ServerSentEvent | None:
        """A ``stale`` event carrying the last event's data (nothing before the first event)."""
        if last is None:
            return None
        return ServerSentEvent(event="stale", data=event_from_item(last).data)

    def closing_frame(self, reason: EndReason) -> bytes | None:
        event = self._closing.get(reason)
        return None if event is None else encode_event(event, self.json_encoder)


#: What line readers other than NDJSON's own split on (``str.splitlines``, so httpx's
#: ``aiter_lines()``) that JSON leaves raw in strings: written escaped.
_LINE_SEPARATORS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class NDJSONEndings(JSONEncoding, total=False):
    """The last lines an NDJSON stream writes when it ends early, and how it encodes its items
    (see :class:`NDJSONResponse`)."""

    error_item: object
    shutdown_item: object
    deadline_item: object


class NDJSONClassArguments(StreamArguments, NDJSONEndings, total=False):
    """The keyword arguments :class:`NDJSONResponse` takes: what
    :meth:`NDJSONResponse.with_options` is given."""


class NDJSONResponse(StreamResponse[Any]):
    """Newline-delimited JSON: one JSON document a line, for any JSON-serialisable item,
    Pydantic models and dataclasses included.

    With ``heartbeat_interval`` set, a heartbeat is an empty line, which NDJSON readers skip.
    Text is written as UTF-8, except U+0085, U+2028 and U+2029, written as JSON escapes:
    readers that split lines as ``str.splitlines`` does (httpx's ``aiter_lines()``) would cut
    a line there.

    :param error_item: written as the last line when the producer raises. ``None`` (the
        default) writes nothing, so the body then ends as a completed one does and a client
        cannot tell an error from the end of the data: give one (``{"error": true}``, say)
        when the client must know.
    :param shutdown_item: written as the last line on a graceful shutdown.
    :param deadline_item: written as the last line when ``max_duration`` ends the stream,
        or ``end_when_idle`` after the idle fallback.
        Each is refused here if it cannot be encoded; one that fails when encoded again at
        the end (by an encoder with state, or changed since) is left out and logged, and the
        body still ends.
    :param json_encoder: encodes each item: a function of one value returning ``str`` or
        ``bytes`` (without a line break), such as ``orjson.dumps``. By default the standard
        library's ``json``, which also takes Pydantic models and dataclasses.

    The other arguments are those of :class:`StreamResponse`.
    """

    media_type = "application/x-ndjson"

    def __init__(
        self,
        content: Producer[Any] | AsyncIterable[Any],
        *,
        status_code: int = 200,
        error_item: object = None,
        shutdown_item: object = None,
        deadline_item: object = None,
        json_encoder: JSONEncoder | None = None,
        **arguments: Unpack[ResponseArguments],
    ) -> None:
        self.json_encoder = check_json_encoder(json_encoder)
        self._closing = {
            EndReason.SHUTDOWN: shutdown_item,
            EndReason.DEADLINE: deadline_item,
            EndReason.ERROR: error_item,
        }
        self._setup(content, status_code, arguments)
        named = {"error_item": error_item, "shutdown_item": shutdown_item}
        for name, item in (named | {"deadline_item": deadline_item}).items():
            if item is not None:
                # Refuse an unencodable closing item now, not at the end, naming it.
                try:
                    self.encode(item)
                except TypeError as exc:
                    raise TypeError(f"{exc} (the {name})") from None
                except ValueError as exc:
                    raise ValueError(f"{exc} (the {name})") from None

    # Its own arguments, as its constructor takes: not the base's (heartbeat_chunk).
    @classmethod
    def with_options(  # type: ignore[override]
        cls, **arguments: Unpack[NDJSONClassArguments]
    ) -> type[Self]:
        """See :meth:`StreamResponse.with_options`; the arguments are this class's."""
        return cls._with_options(dict(arguments))

    @classmethod
    def _own_arguments(cls) -> frozenset[str]:
        return frozenset(NDJSONEndings.__optional_keys__)

    def encode(self, item: Any) -> bytes:
        """Encode one item as a compact JSON line.

        :raises TypeError: the item is not JSON-serialisable.
        :raises ValueError: the item holds NaN or an infinity, which JSON cannot carry.
        """
        try:
            line = encode_json(item, self.json_encoder)
        except TypeError as exc:
            raise TypeError(f"NDJSON item {exc}") from None
        except ValueError as exc:  # a subclass (UnicodeError) may not take one message
            raise ValueError(f"NDJSON item {exc}") from None
        if "\n" in line or "\r" in line:
            raise ValueError(f"NDJSON item encoded across several lines: {shown(item)}")
        if not line.isascii():
            # Outside JSON's strings nothing is non-ASCII, so these are escaped in strings.
            line = line.translate(_LINE_SEPARATORS)
        return (line + "\n").encode()

    def heartbeat_frame(self) -> bytes | None:
        return b"\n"

    def closing_frame(self, reason: EndReason) -> bytes | None:
        item = self._closing.get(reason)
        return None if item is None else self.encode(item)


_ARGUMENT_NAMES = frozenset(StreamArguments.__optional_keys__)
