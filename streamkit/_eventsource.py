"""Following a stream from Python as a browser's ``EventSource`` does, and resuming it.

One loop serves both formats: connect; check the answer; read, parsing as the bytes come;
when the connection ends without the server's word to stop, wait (the server's ``retry:``,
a ``Retry-After``, or the :class:`~streamkit.client.Backoff`) and connect again with
``Last-Event-ID``. The reconnection rules are the WHATWG ones: a 204 ends the stream, any
other status outside 2xx (but a 429 or 503 carrying ``Retry-After``) or a body of the wrong
type is an error, not a reason to hammer the server. A connection that sent no byte for
``missed_heartbeats`` heartbeat intervals counts as dropped (a stalled server, a dead NAT).

A connection counts as working, and clears the failures in a row, once it has handed over an
event, or sent bytes (heartbeats) for at least the read timeout: a server that answers with a
heartbeat, or a ``retry: 0``, and hangs up or falls silent is backed off like one that
refuses. Its bytes are held only up to
``max_event_size`` an event (or NDJSON line), and the ``Last-Event-ID`` sent back is the id
as a browser sends it: UTF-8, without the spaces around it that HTTP drops.

Each connection's response is closed in this task, shielded and bounded, however the
iteration ends: the block left early, cancelled, or the stream failed. httpx is imported
lazily, so that the proxy, which resumes with this loop, imports without it.
"""

from __future__ import annotations

import codecs
import functools
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import anyio

from ._backoff import Backoff, retry_after_seconds
from ._checks import check_count, check_duration, check_type
from ._content_encoding import ask_for_decodable, decoded_body, unwind
from ._exceptions import ReconnectError, UpstreamError, shown_url
from ._json import read_json_line, shown
from ._sse import ServerSentEvent, trusted_event
from ._sse_decoder import PIECES, FrameTooLarge, SSEDecoder, join_tail
from ._topics import RESET_EVENT

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ClientStatistics",
    "EventStream",
    "NDJSONStream",
    "open_event_stream",
    "open_ndjson_stream",
]

T = TypeVar("T")

#: How long closing one connection may take, shielded, when the iteration ends.
CLOSE_TIMEOUT = 5.0
#: Statuses that are retried when they carry a ``Retry-After``; every other one is final.
RETRIED_STATUSES = frozenset({429, 503})
NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
#: The default bound on one event (or NDJSON line) while it arrives: a few base64 images.
MAX_EVENT_SIZE = 16 * 1024 * 1024

# What no header value may hold: a control character other than TAB (RFC 9110, 5.5).
_UNSENDABLE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStatistics:
    """A snapshot of a followed stream.

    :param connections: connections that were answered with the stream (2xx, right type).
    :param reconnects: of those, the ones after the first.
    :param failed_attempts: attempts that failed: refused, a 503, dropped before an event
        (unless its heartbeats had kept it alive for the read timeout)...
    :param last_event_id: what the next connection sends as ``Last-Event-ID`` (``""``: none).
    :param connected_time: seconds connected in all, up to now.
    :param connected: whether a connection is open now.
    :param received: events (or NDJSON items) handed to the caller.
    :param resets: ``event: reset`` events received: the history had a gap (see
        ``streamkit.broadcast``).
    """

    connections: int
    reconnects: int
    failed_attempts: int
    last_event_id: str
    connected_time: float
    connected: bool
    received: int
    resets: int


def last_event_id_header(id_: str) -> bytes | None:
    """*id_* as the ``Last-Event-ID`` header a browser sends: UTF-8, without the spaces and
    tabs around it (which HTTP drops, so a server never sees them); ``None`` if it holds a
    control character or a lone surrogate, which no header can carry."""
    try:
        value = id_.encode().strip(b" \t")
    except UnicodeEncodeError:
        return None
    return None if _UNSENDABLE.search(value) else value


def set_last_event_id(request: httpx.Request, value: bytes | None) -> None:
    """Send *value* (see :func:`last_event_id_header`) as *request*'s ``Last-Event-ID``, in
    place of the one it has; ``None``: send none."""
    import httpx

    # New headers, not one set in place: httpx decodes them all with the encoding it found
    # first (ASCII, say), which a UTF-8 id would then break.
    fields = [(k, v) for k, v in request.headers.raw if k.lower() != b"last-event-id"]
    if value is not None:
        fields.append((b"Last-Event-ID", value))
    request.headers = httpx.Headers(fields)


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """httpx's default SSL context, loaded once (tens of milliseconds: keep it off the loop)."""
    import httpx

    return httpx.create_ssl_context()


def as_request(
    target: httpx.Request | str,
    *,
    client: httpx.AsyncClient | None = None,
    accept: str | None = None,
    what: str = "a stream's target",
) -> httpx.Request:
    """*target* as a request: a ``str`` is a URL to ``GET``, built by *client* when there is
    one (its ``base_url``, headers and cookies, as ``client.stream("GET", url)`` sends it).
    A request's ``Accept-Encoding`` keeps only the codings the body's reader decodes (see
    :func:`ask_for_decodable`).

    :param client: the client the request will be sent with, if the caller's.
    :param accept: the ``Accept`` of a URL's request (not the client's ``*/*``); a request
        given keeps its own, if it has one.
    :param what: how the messages name it.
    :raises TypeError: it is neither, or *client* is no ``httpx.AsyncClient``.
    :raises ValueError: its URL is not ``http`` or ``https``, or has no host, or a port
        outside 1 to 65535: no attempt could succeed, and a stream retried for ever (or a
        proxy's failed after its 200) would not say why.
    """
    import httpx

    # Here, where it is given: a wrong one would fail only as the first request is sent,
    # after a proxy's 200 (an httpx.Client's send() cannot be awaited).
    check_type("client", client, httpx.AsyncClient, optional=True)
    if isinstance(target, httpx.Request):
        request = target
    elif isinstance(target, str):
        # httpx's send() merges none of the client's defaults: build_request() does.
        request = (
            httpx.Request("GET", target) if client is None else client.build_request("GET", target)
        )
    else:
        raise TypeError(
            f"{what} must be a URL or an httpx.Request, got {type(target).__name__}: {target!r}"
        )
    if accept is not None:
        if request is target:
            request.headers.setdefault("accept", accept)  # the caller's own, if it has one
        else:
            request.headers["accept"] = accept  # not the client's */*
    if request.url.scheme not in ("http", "https"):
        raise ValueError(f"{what} must be an http or https URL, got {shown_url(request.url)!r}")
    # Nor could a URL with no host or port to connect to: on asyncio a port past 65535
    # failed each attempt with an OverflowError out of anyio's task group, not httpx's error.
    shown = repr(shown_url(request.url, target if isinstance(target, str) else None))
    if client is not None and isinstance(target, str):
        shown += f" (built by the client as {shown_url(request.url)!r})"
    if not request.url.host:
        raise ValueError(f"{what} has no host: {shown}")
    port = request.url.port
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{what} has the port {port}, not one of 1 to 65535: {shown}")
    ask_for_decodable(request)
    return request


class Unreadable(Exception):
    """A body that breaks its format; the loop hands over :attr:`items` (those read before
    the fault), then raises an :class:`UpstreamError` from this."""

    def __init__(self, message: str, items: list[Any]) -> None:
        super().__init__(message)
        self.items = items


class _Resuming(Generic[T]):
    """The loop both streams share; a subclass parses the bytes of one connection."""

    _media_types: frozenset[str]
    _accept: str

    def __init__(
        self,
        target: httpx.Request | str,
        *,
        client: httpx.AsyncClient | None,
        last_event_id: str | None,
        heartbeat_interval: float,
        missed_heartbeats: int,
        connect_timeout: float,
        backoff: Backoff,
        max_event_size: int,
    ) -> None:
        check_duration("heartbeat_interval", heartbeat_interval)
        check_count("missed_heartbeats", missed_heartbeats)
        check_duration("connect_timeout", connect_timeout)
        check_count("max_event_size", max_event_size)
        if not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff, got {type(backoff).__name__}")
        if last_event_id is not None and not isinstance(last_event_id, str):
            raise TypeError(f"last_event_id must be a str or None, got {last_event_id!r}")
        given = as_request(target, client=client, accept=self._accept)
        import httpx

        # A copy: each attempt sets its own Last-Event-ID, and the caller's request is theirs.
        self._request = httpx.Request(
            given.method, given.url, headers=given.headers, stream=given.stream
        )
        self._request.headers.setdefault("cache-control", "no-store")
        self.read_timeout = heartbeat_interval * missed_heartbeats
        timeout = httpx.Timeout(
            connect=connect_timeout,
            read=self.read_timeout,
            write=self.read_timeout,
            pool=connect_timeout,
        )
        self._request.extensions = {**given.extensions, "timeout": timeout.as_dict()}
        # Each attempt sends the cookies the client holds then (a load balancer's sticky
        # session, set by the last answer), as a browser does; unless the caller's request
        # carries a Cookie of its own.
        self._jar_cookies = isinstance(target, str) or "cookie" not in given.headers
        self._client = client
        self._owned: httpx.AsyncClient | None = None
        self.backoff = backoff
        self.max_event_size = max_event_size
        named = "last_event_id"
        if last_event_id is None:
            named = "the request's Last-Event-ID header"
            last_event_id = given.headers.get("last-event-id")
        self._last_event_id = last_event_id or ""
        if self._last_event_id:
            header = last_event_id_header(self._last_event_id)
            if header is None:
                raise ValueError(
                    f"{named} holds a control character, which no Last-Event-ID header can "
                    f"carry: {self._last_event_id!r}"
                )
            self._set_last_event_id(header)
        else:  # none: a last_event_id="" given means from the start, whatever the request says
            self._set_last_event_id(None)
        self._server_retry: float | None = None
        self._iterator: AsyncGenerator[T] | None = None
        self._cut_short = False  # a wait for the next event was cancelled: the stream ended
        self._entered = False
        self._connections = self._failed = self._received = self._resets = 0
        self._connected_since: float | None = None
        self._connected_total = 0.0

    @property
    def url(self) -> str:
        """The stream's URL."""
        return str(self._request.url)

    @property
    def _shown_url(self) -> str:
        return shown_url(self._request.url)

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError(f"a stream of {self._shown_url} can be entered only once")
        self._entered = True
        import httpx

        if isinstance(self._request.stream, httpx.AsyncByteStream) and not isinstance(
            self._request.stream, httpx.ByteStream
        ):
            # A body streamed from an iterator can be sent once: read whole, it is sent again
            # on each connection, where the second raised httpx's StreamConsumed.
            await self._request.aread()
        if self._client is None:
            context = await anyio.to_thread.run_sync(default_ssl_context)
            self._owned = self._client = httpx.AsyncClient(verify=context)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            iterator = self._iterator
            if iterator is not None:
                if getattr(iterator, "ag_running", False):  # awaited in another task
                    # Its read cannot be broken off from here without paying for a cancel
                    # scope on every event: say what to do rather than what failed inside.
                    raise RuntimeError(
                        f"the block of the stream of {self._shown_url} was left while another task "
                        "was reading it: end that task first (read in a task group inside "
                        "the block)"
                    )
                await iterator.aclose()
        finally:
            if self._owned is not None:
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + CLOSE_TIMEOUT
                    await self._owned.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        if self._iterator is None:
            if not self._entered:
                raise RuntimeError("enter the stream (async with) before iterating it")
            self._iterator = self._run()
        elif self._cut_short:
            # Not StopAsyncIteration: a loop over the stream would end as at a 204, quietly.
            raise RuntimeError(
                f"the stream of {self._shown_url} was closed when a wait for its next event was "
                "cancelled; bound the whole `async with` block (or read in a task of its "
                "own), not one wait"
            )
        try:
            return await self._iterator.__anext__()
        except anyio.get_cancelled_exc_class():
            self._cut_short = True  # the iteration closed the connection on its way out
            raise

    def statistics(self) -> ClientStatistics:
        """The counts as they are now."""
        connected = self._connected_total
        if self._connected_since is not None:
            connected += anyio.current_time() - self._connected_since
        return ClientStatistics(
            connections=self._connections,
            reconnects=max(0, self._connections - 1),
            failed_attempts=self._failed,
            last_event_id=self._last_event_id,
            connected_time=connected,
            connected=self._connected_since is not None,
            received=self._received,
            resets=self._resets,
        )

    # -- for the subclasses -------------------------------------------------------------------

    def _begin(self) -> None:
        """A connection was answered with the stream: start parsing afresh."""
        raise NotImplementedError

    def _parse(self, chunk: bytes) -> list[T]:
        """The items *chunk* completed, updating ``_last_event_id`` and ``_server_retry``.

        :raises Unreadable: the body breaks its format, said in the message.
        """
        raise NotImplementedError

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> AsyncGenerator[T]:
        import httpx

        failures = 0  # attempts in a row that did not work (see the module's docstring)
        lost_at: float | None = None
        retry_after: float | None = None  # the last answer's Retry-After: a floor, once
        failure: BaseException | None = None
        first = True
        while True:
            if not first:
                now = anyio.current_time()
                lost_at = now if lost_at is None else lost_at
                wait = self.backoff.delay(
                    failures, server_retry=self._server_retry, retry_after=retry_after
                )
                if self.backoff.gives_up(failures, now - lost_at, wait):
                    raise ReconnectError(
                        f"gave up reconnecting to {self._shown_url} after {failures} failed "
                        f"attempts in {now - lost_at:.1f} s (the next would wait {wait:.3g} s)",
                        url=self.url,
                        attempts=failures,
                        last_event_id=self._last_event_id,
                    ) from failure
                await anyio.sleep(wait)
            first = False
            retry_after = failure = None
            worked = False
            response: httpx.Response | None = None
            chunks: AsyncIterator[bytes] | None = None
            assert self._client is not None
            if self._jar_cookies:
                self._request.headers.pop("cookie", None)
                self._client.cookies.set_cookie_header(self._request)
            try:
                response = await self._client.send(self._request, stream=True)
                status = response.status_code
                if status == 204:
                    return  # the server's word to stop
                if status in RETRIED_STATUSES:
                    retry_after = retry_after_seconds(response.headers.get("retry-after"))
                if retry_after is not None:
                    failure = UpstreamError(
                        f"{self._shown_url} answered {status} {reason_phrase(response)}, "
                        f"retry after {retry_after:g} s",
                        status_code=status,
                        url=self.url,
                    )
                else:
                    self._check(response)
                    self._connections += 1
                    self._connected_since = opened = last_byte = anyio.current_time()
                    self._begin()
                    chunks = decoded_body(response)
                    async for chunk in chunks:
                        if not worked:  # heartbeats alone so far: when the last one came
                            last_byte = anyio.current_time()
                        try:
                            items = self._parse(chunk)
                            unreadable = None
                        except Unreadable as exc:
                            items, unreadable = exc.items, exc
                        for item in items:
                            worked = True
                            self._received += 1
                            yield item
                        if unreadable is not None:
                            raise UpstreamError(
                                f"{self._shown_url} sent a body that cannot be read: {unreadable}",
                                status_code=status,
                                url=self.url,
                            ) from unreadable
                    # Ended cleanly: without an event, it worked if the server kept it alive
                    # for a read timeout (a quiet stream's heartbeats).
                    worked = worked or last_byte - opened >= self.read_timeout
            except httpx.UnsupportedProtocol:
                # A redirect to a scheme httpx cannot speak: no attempt will ever succeed.
                raise
            except httpx.TransportError as exc:
                # Refused, reset, broken off, or no byte within the read timeout: dropped.
                failure = exc
                if self._connected_since is not None:
                    worked = worked or last_byte - opened >= self.read_timeout
            finally:
                if self._connected_since is not None:
                    self._connected_total += anyio.current_time() - self._connected_since
                    self._connected_since = None
                if response is not None:
                    await _release(response, chunks)
            if chunks is not None:
                self._resume_from(status)
            if worked:
                failures = 0
                lost_at = None
            else:
                failures += 1
                self._failed += 1

    def _resume_from(self, status: int) -> None:
        """Set the next request's ``Last-Event-ID`` to the last id the body of a response
        with *status* set."""
        if not self._last_event_id:
            self._set_last_event_id(None)
            return
        value = last_event_id_header(self._last_event_id)
        if value is None:
            raise UpstreamError(
                f"{self._shown_url} sent the event id {shown(self._last_event_id)}, which holds a "
                "control character: no Last-Event-ID header can carry it, so the stream "
                "cannot be resumed",
                status_code=status,
                url=self.url,
            )
        self._set_last_event_id(value)

    def _set_last_event_id(self, value: bytes | None) -> None:
        set_last_event_id(self._request, value)

    def _check(self, response: httpx.Response) -> None:
        if not response.is_success:
            raise UpstreamError(
                f"{self._shown_url} answered {response.status_code} {reason_phrase(response)}, "
                "expected a 2xx status",
                status_code=response.status_code,
                url=self.url,
            )
        content_type = response.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() not in self._media_types:
            raise UpstreamError(
                f"{self._shown_url} sent {content_type!r}, expected "
                + " or ".join(repr(t) for t in sorted(self._media_types)),
                status_code=response.status_code,
                url=self.url,
            )


def reason_phrase(response: httpx.Response) -> str:
    """*response*'s reason phrase, or the standard one for its status: HTTP/2, and some
    HTTP/1.1 servers (hypercorn), send none."""
    import httpx

    return response.reason_phrase or httpx.codes.get_reason_phrase(response.status_code)


async def _release(response: httpx.Response, chunks: AsyncIterator[bytes] | None) -> None:
    # Shielded: it runs when the caller's block is cancelled too, and must still close the
    # connection (a response left unread to its end takes its connection with it).
    with anyio.CancelScope(shield=True) as scope:
        scope.deadline = anyio.current_time() + CLOSE_TIMEOUT
        if chunks is not None:
            await unwind(chunks)
        await response.aclose()


class EventStream(_Resuming[ServerSentEvent]):
    """An event stream being followed; made by :func:`open_event_stream`. Iterate it for the
    events a browser would dispatch (those with a ``data:`` line), each with ``id`` set to the
    last event id in effect (as ``MessageEvent.lastEventId``), ``event`` ``None`` for a
    message, and ``retry`` when its frame carried one.

    An ``event: reset`` (:data:`streamkit.broadcast.RESET_EVENT`) is handed over like any
    other: it says the server's history had a gap, and what was built from earlier events
    must be loaded again. :meth:`statistics` counts them.

    :ivar read_timeout: seconds without a byte after which a connection counts as dropped.
    :ivar backoff: when it reconnects, and when it gives up.
    :ivar max_event_size: the most characters (NDJSON: bytes) one event or line may hold.
    """

    _media_types = frozenset({"text/event-stream"})
    _accept = "text/event-stream"

    def _begin(self) -> None:
        self._decoder = SSEDecoder(max_size=self.max_event_size)
        self._decoder.last_event_id = self._last_event_id

    def _parse(self, chunk: bytes) -> list[ServerSentEvent]:
        decoder = self._decoder
        try:
            frames = decoder.feed(chunk)
        except FrameTooLarge as exc:
            raise Unreadable(str(exc), self._events(exc.frames)) from None
        if decoder.retry is not None:
            self._server_retry = decoder.retry / 1000
        return self._events(frames) if frames else frames

    def _events(self, frames: list[ServerSentEvent]) -> list[ServerSentEvent]:
        """Of *frames*, the events a browser dispatches, as it sees them."""
        events = []
        for frame in frames:
            if frame.id is not None:
                self._last_event_id = frame.id
            if frame.data is None:
                continue  # not dispatched: its id and retry still count
            if frame.event == RESET_EVENT:
                self._resets += 1
            last = self._last_event_id or None
            if frame.id == last and frame.event != "":
                events.append(frame)  # already as a browser would see it: no copy
            else:
                events.append(trusted_event(frame.data, frame.event or None, last, frame.retry))
        return events


class NDJSONStream(_Resuming[Any]):
    """An NDJSON stream being followed; made by :func:`open_ndjson_stream`. Iterate it for
    each line's JSON value; empty lines (heartbeats) are skipped.

    :ivar read_timeout: seconds without a byte after which a connection counts as dropped.
    :ivar backoff: when it reconnects, and when it gives up.
    :ivar max_event_size: the most characters (NDJSON: bytes) one event or line may hold.
    """

    _media_types = NDJSON_TYPES
    _accept = "application/x-ndjson"

    def __init__(
        self,
        target: httpx.Request | str,
        *,
        item_id: Callable[[Any], str | None] | None,
        **arguments: Any,
    ) -> None:
        if item_id is not None and not callable(item_id):
            raise TypeError(f"item_id must be callable, got {item_id!r}")
        super().__init__(target, **arguments)
        self._item_id = item_id
        self._pending: list[bytes] = []

    def _begin(self) -> None:
        self._pending = []  # a line the last connection broke off is discarded
        self._pending_size = 0
        self._pending_joined = 0  # its pieces before this one are joined (see SSEDecoder)
        self._lines = 0  # lines of this connection's body read so far

    def _parse(self, chunk: bytes) -> list[Any]:
        lines = chunk.split(b"\n")
        if len(lines) == 1:
            self._pending.append(chunk)
            if len(self._pending) - self._pending_joined >= PIECES:
                self._pending_joined = join_tail(self._pending, self._pending_joined, b"")
            self._pending_size += len(chunk)
            if self._pending_size > self.max_event_size:
                raise Unreadable(
                    f"line {self._lines + 1} of the NDJSON body grew past "
                    f"{self.max_event_size} bytes without ending ({self._pending_size} read)",
                    [],
                )
            return []
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending = []
            self._pending_joined = 0
        tail = lines.pop()
        self._pending_size = len(tail)
        if tail:
            self._pending.append(tail)
        read = self._lines
        if not read and lines[0].startswith(codecs.BOM_UTF8):
            lines[0] = lines[0][len(codecs.BOM_UTF8) :]  # the body's, as a browser drops it
        self._lines += len(lines)
        limit = self.max_event_size
        if self._pending_size <= limit and max(map(len, lines)) <= limit:
            try:
                items = [read_json_line(line) for line in lines if line.strip()]
            except ValueError:
                pass
            else:
                return self._identified(items)
        # Again, line by line: the items before the fault are handed over, then it is named.
        items = []
        for number, line in enumerate(lines, read + 1):
            if len(line) > limit:
                fault = f"line {number} of the NDJSON body is longer than {limit} bytes"
                raise Unreadable(fault, self._identified(items))
            try:
                if line.strip():
                    items.append(read_json_line(line))
            except ValueError as exc:
                fault = f"line {number} of the NDJSON body {exc}"
                raise Unreadable(fault, self._identified(items)) from None
        fault = (
            f"line {self._lines + 1} of the NDJSON body grew past {limit} bytes without ending "
            f"({self._pending_size} read)"
        )
        raise Unreadable(fault, self._identified(items))

    def _identified(self, items: list[Any]) -> list[Any]:
        """*items*, the last id among them taken."""
        if self._item_id is not None:
            for item in items:
                found = self._item_id(item)
                if found is not None:
                    self._last_event_id = _check_item_id(found, item)
        return items


def _check_item_id(found: object, item: object) -> str:
    # The user's function: what it returned is refused here, where it was made.
    if not isinstance(found, str):
        raise TypeError(
            f"item_id must return a str or None, got {type(found).__name__}: {shown(found)} "
            f"for the item {shown(item)}"
        )
    if last_event_id_header(found) is None:
        raise ValueError(
            f"item_id returned {shown(found)} for the item {shown(item)}: it holds a control "
            "character, which no Last-Event-ID header can carry"
        )
    return found


def open_event_stream(
    target: httpx.Request | str,
    *,
    client: httpx.AsyncClient | None = None,
    last_event_id: str | None = None,
    heartbeat_interval: float = 15.0,
    missed_heartbeats: int = 3,
    connect_timeout: float = 10.0,
    backoff: Backoff = Backoff(),  # noqa: B008 (frozen: one shared default is safe)
    max_event_size: int = MAX_EVENT_SIZE,
) -> EventStream:
    """Follow the event stream at *target*, reconnecting as a browser would::

        async with open_event_stream(url, heartbeat_interval=15.0) as stream:
            async for event in stream:
                handle(event)

    The iteration ends when the server answers 204; it raises when the server refuses (a
    status outside 2xx, a body that is not ``text/event-stream``) or the *backoff* gives up.
    Every other end of a connection (closed, reset, silent for too long) is followed by a
    new one, with ``Last-Event-ID``. Leaving the block, or its cancellation, closes the
    connection before the block is left.

    :param target: the URL to ``GET``, or the request to send; a body it streams from an
        async iterator is read whole when the block is entered, to be sent on each connection.
        A URL is built by *client* when one is given, as ``client.stream("GET", url)``
        builds it: relative to its ``base_url``, with its headers and cookies.
    :param client: the client to send with (kept open); by default one of its own, closed
        with the block.
    :param last_event_id: resume after this id from the first connection on (``""``: from
        the start, the request's ``Last-Event-ID`` not sent); by default the request's own
        ``Last-Event-ID`` header, if it has one.
    :param heartbeat_interval: the server's heartbeat interval, in seconds.
    :param missed_heartbeats: a connection that sent no byte for this many heartbeat
        intervals is dropped and made again.
    :param connect_timeout: seconds to wait for a connection.
    :param backoff: when to reconnect, and when to give up.
    :param max_event_size: the most characters one event may hold while it arrives (16 MiB
        by default): a server that never ends its line or its event fills no more memory.
        A ``gzip`` or ``deflate`` body is decoded 64 KiB at a time, so the bound holds for
        a compression bomb too.
    :raises UpstreamError: (from the iteration) the server refused the stream; it names the
        status, the content type, or a ``Content-Encoding`` other than ``gzip`` and
        ``deflate``. Or its body broke the format: an event past *max_event_size*, or an id
        no ``Last-Event-ID`` can carry when a resume needs it.
    :raises ReconnectError: (from the iteration) the *backoff* allowed no more attempts.
    :raises TypeError: an argument has the wrong type.
    :raises ValueError: a duration or count is out of range, or the URL is not http or
        https, or has no host, or a port outside 1 to 65535.
    """
    return EventStream(
        target,
        client=client,
        last_event_id=last_event_id,
        heartbeat_interval=heartbeat_interval,
        missed_heartbeats=missed_heartbeats,
        connect_timeout=connect_timeout,
        backoff=backoff,
        max_event_size=max_event_size,
    )


def open_ndjson_stream(
    target: httpx.Request | str,
    *,
    client: httpx.AsyncClient | None = None,
    item_id: Callable[[Any], str | None] | None = None,
    last_event_id: str | None = None,
    heartbeat_interval: float = 15.0,
    missed_heartbeats: int = 3,
    connect_timeout: float = 10.0,
    backoff: Backoff = Backoff(),  # noqa: B008 (frozen: one shared default is safe)
    max_event_size: int = MAX_EVENT_SIZE,
) -> NDJSONStream:
    """Follow the NDJSON stream at *target*, reconnecting as :func:`open_event_stream` does.

    NDJSON has no ids of its own: give *item_id* to take one from each item, which the
    next connection sends as ``Last-Event-ID`` so the server can resume after it. Without
    it, a reconnection asks for the stream from wherever the server starts it.

    :param item_id: the id of an item (``None``: it has none). What it returns must be a
        ``str`` a header can carry (no control character); else the iteration raises
        :class:`TypeError` or :class:`ValueError` naming it and the item.
    :param target: see :func:`open_event_stream`.
    :param client: see :func:`open_event_stream`.
    :param last_event_id: see :func:`open_event_stream`.
    :param heartbeat_interval: see :func:`open_event_stream`.
    :param missed_heartbeats: see :func:`open_event_stream`.
    :param connect_timeout: see :func:`open_event_stream`.
    :param backoff: see :func:`open_event_stream`.
    :param max_event_size: the most bytes one line may hold while it arrives.
    :raises UpstreamError: (from the iteration) the server refused the stream, or sent a line
        longer than *max_event_size*, or one that is not UTF-8 JSON (a BOM past the body's
        start, ``NaN``, ``Infinity`` and lone surrogates are refused); it names the line's
        number in the body.
    :raises ReconnectError: (from the iteration) the *backoff* allowed no more attempts.
    :raises TypeError: an argument has the wrong type.
    :raises ValueError: a duration or count is out of range, or the URL is not http or
        https, or has no host, or a port outside 1 to 65535.
    """
    return NDJSONStream(
        target,
        item_id=item_id,
        client=client,
        last_event_id=last_event_id,
        heartbeat_interval=heartbeat_interval,
        missed_heartbeats=missed_heartbeats,
        connect_timeout=connect_timeout,
        backoff=backoff,
        max_event_size=max_event_size,
    )
