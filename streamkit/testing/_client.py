"""Clients that read streams over real sockets, and misbehave on command.

An in-process test client holds the connection for the whole stream, so the disconnect path
is never exercised. These clients speak HTTP/1.1 (through h11) or HTTP/2 (through h2, with
prior knowledge) to a real server, and can leave the way real clients leave: a clean close
(FIN), a reset (RST), a half-close, a stall (stop reading, with a small receive buffer so the
server's writes block soon), or, on HTTP/2, a ``RST_STREAM`` of just that stream (which httpx
never sends, so with it the server never learns).
"""

from __future__ import annotations

import errno
import math
import re
import socket
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import h11
from anyio.abc import SocketStream

from .._checks import check_count, check_duration, check_type, is_token
from .._sse import ServerSentEvent
from ._parsing import NDJSONReader, SSEReader

__all__ = ["StreamClient", "open_stream"]

_RECEIVE_SIZE = 65536
#: What a read waits for the server by default: past any event a test's server should send
#: soon, short of the test's own timeout, so a hang names the request it hung on.
DEFAULT_READ_TIMEOUT = 10.0
#: What a request header's value cannot hold: a line break or NUL (which would end it early), a
#: space or tab at either end (which a server strips). Beyond Latin-1 is allowed: sent in UTF-8.
_UNSENDABLE = re.compile(r"[\r\n\0]|^[ \t]|[ \t]$")


def check_server(base: object) -> None:
    """Refuse a *base* to connect to that is not a server: one without ``host`` and ``port``
    (its ``url``, say), which would fail only as an :exc:`AttributeError` of the connection;
    or a :class:`~streamkit.testing.LiveServer` that has stopped, whose refused connection
    would read as a wrong port.

    :raises TypeError: *base* has no ``host`` or no ``port``.
    :raises RuntimeError: *base* is a server that has stopped.
    """
    if not (hasattr(base, "host") and hasattr(base, "port")):
        raise TypeError(
            "base must be the server (a LiveServer, or anything with host and port), "
            f"got {type(base).__name__}: {base!r:.80}"
        )
    stopped = getattr(base, "stopped", None)
    if isinstance(stopped, anyio.Event) and stopped.is_set():
        raise RuntimeError(
            f"the server at {getattr(base, 'url', f'{base.host}:{base.port}')} has stopped "
            "(its open_server block ended, or shutdown() was called): nothing can connect to it"
        )


def check_header_types(headers: Mapping[Any, object]) -> None:
    """Refuse a request header whose name or value is not a ``str``, naming it.

    :raises TypeError: a header's name or value is not a ``str``.
    """
    for name, value in headers.items():
        if not isinstance(name, str):
            raise TypeError(f"a header name must be a str, got {type(name).__name__}: {name!r:.80}")
        if not isinstance(value, str):
            raise TypeError(
                f"header {name!r} must be a str, got {type(value).__name__}: {value!r:.80}"
            )


def check_request(method: object, path: object, headers: Mapping[Any, object]) -> None:
    """Refuse a request that a request line and its headers cannot carry as given, where it is
    given: h11 would refuse it only once connected, mostly without naming it, and over HTTP/2
    the server would close the connection without a word of why, or answer another request
    (a path's line break dropped, a header's value stripped).

    :raises TypeError: *method*, *path*, or a header's name or value is not a ``str``.
    :raises ValueError: *method* or a header's name is not an HTTP token; *path* does not
        start with ``/``, or holds a character that is not printable ASCII (a space, a line
        break, a letter beyond ASCII: a browser sends those percent-encoded); a header's value
        holds a line break or NUL, or begins or ends with a space or tab.
    """
    check_type("method", method, str)
    assert isinstance(method, str)
    if not is_token(method):
        raise ValueError(f"method must be an HTTP token (GET, POST, ...), got {method!r:.80}")
    check_type("path", path, str)
    assert isinstance(path, str)
    if not path.startswith("/") or not all("!" <= character <= "~" for character in path):
        raise ValueError(
            "path must start with '/' and hold only printable ASCII, anything else "
            f"percent-encoded as a browser sends it ('/caf%C3%A9' for '/café'), got {path!r}"
        )
    check_header_types(headers)
    for name, value in cast("Mapping[str, str]", headers).items():
        if not is_token(name):
            raise ValueError(
                f"header name {name!r:.80} must be an HTTP token: letters, digits and "
                "!#$%&'*+-.^_`|~"
            )
        if _UNSENDABLE.search(value):
            raise ValueError(
                f"header {name!r} cannot be sent with the value {value!r:.80}: no line break "
                "or NUL, no space or tab at either end"
            )


async def connect(host: str, port: int, *, receive_buffer: int | None = None) -> SocketStream:
    """Connect over TCP; *receive_buffer* sets ``SO_RCVBUF`` before connecting, so the TCP
    window stays that small.

    :raises TypeError: *receive_buffer* is not an ``int`` (nothing connected).
    :raises ValueError: *receive_buffer* is not positive (nothing connected).
    """
    if receive_buffer is not None:
        check_count("receive_buffer", receive_buffer)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        error = sock.connect_ex((host, port))
        if error not in (0, errno.EINPROGRESS):
            raise OSError(error, f"cannot connect to {host}:{port}")
        await anyio.wait_writable(sock)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, f"cannot connect to {host}:{port}")
        return await SocketStream.from_socket(sock)
    except BaseException:
        sock.close()
        raise


class StreamClient:
    """One streamed response being read. Made by :func:`open_stream` (HTTP/1.1) or
    :func:`~streamkit.testing.open_h2_stream` (HTTP/2).

    Every read waits at most :attr:`read_timeout` for the server, then raises
    :exc:`TimeoutError` naming the request, what it waited for and what of the body had
    arrived.

    :ivar status: the response status.
    :ivar headers: the response headers, lower-cased names, values decoded from Latin-1 (a
        byte a character, as Starlette encodes them).
    :ivar complete: whether the whole body arrived (the chunked terminator, or END_STREAM).
    :ivar stalled: whether :meth:`stall` was called.
    """

    status: int
    headers: dict[str, str]

    def __init__(
        self,
        stream: SocketStream,
        *,
        request: str = "the request",
        read_timeout: float | None = None,
    ) -> None:
        self.stream = stream
        self.complete = False
        self.stalled = False
        self._read_timeout = read_timeout
        self._request = request
        self._left: str | None = None  # how this client left, once it did
        self._sse = SSEReader()
        self._ndjson = NDJSONReader()
        self._events: list[ServerSentEvent] = []
        self._items: list[Any] = []
        self._pieces = 0
        self._received = 0
        self._last = b""

    @property
    def raw_socket(self) -> socket.socket:
        """The connection's socket."""
        sock: socket.socket = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
        return sock

    @property
    def read_timeout(self) -> float | None:
        """Seconds each read waits for the server, or ``None`` for no bound; a test may
        change it between reads.

        :raises TypeError: (set) not a number.
        :raises ValueError: (set) not a positive, finite number of seconds.
        """
        return self._read_timeout

    @read_timeout.setter
    def read_timeout(self, value: float | None) -> None:
        check_duration("read_timeout", value, optional=True)
        self._read_timeout = value

    @property
    def comments(self) -> list[str]:
        """The SSE comments :meth:`read_event` has parsed so far: heartbeats. (A body read
        with :meth:`read_all` or :meth:`receive_chunk` is not parsed.)"""
        return self._sse.comments

    @property
    def blank_lines(self) -> int:
        """The empty NDJSON lines :meth:`read_item` has parsed so far: heartbeats."""
        return self._ndjson.blank_lines

    async def receive_chunk(self) -> bytes | None:
        """The next piece of the body as it arrived, or ``None`` once it is complete.

        :raises TimeoutError: nothing arrived within :attr:`read_timeout`.
        :raises RuntimeError: the client was told to :meth:`stall`, or has left.
        :raises ConnectionError: the connection ended before the body did.
        """
        return await self._receive("the next piece of the body", self._deadline())

    def _deadline(self) -> float:
        """When a read begun now has waited :attr:`read_timeout`."""
        if self.read_timeout is None:
            return math.inf
        return anyio.current_time() + self.read_timeout

    async def _receive(self, awaited: str, deadline: float) -> bytes | None:
        if self.complete:
            return None
        self._check_reading()
        try:
            with anyio.CancelScope(deadline=deadline) as scope:
                chunk = await self._receive_piece()
        except ConnectionError as exc:
            raise type(exc)(f"{exc}, while reading {self._request}; {self._so_far()}") from exc
        if scope.cancelled_caught:
            raise TimeoutError(
                f"{awaited} of {self._request} did not arrive within {self.read_timeout} s; "
                f"{self._so_far()}"
            )
        if chunk is not None:
            self._pieces += 1
            self._received += len(chunk)
            self._last = chunk
        return chunk

    async def _receive_piece(self) -> bytes | None:
        """The next piece of the body, or ``None`` at its end: the protocol's part."""
        raise NotImplementedError

    def _so_far(self) -> str:
        if not self._pieces:
            return "no body had arrived"
        pieces = "1 piece" if self._pieces == 1 else f"{self._pieces} pieces"
        return f"the body so far: {pieces}, {self._received} bytes, the last {self._last!r:.200}"

    def _check_reading(self) -> None:
        self._check_here()
        if self.stalled:
            # Reading would undo the stall the test is relying on.
            raise RuntimeError("this client was told to stall; it must not read any more")

    def _check_here(self) -> None:
        if self._left is not None:
            raise RuntimeError(f"this client already left ({self._left}); it cannot be used")

    def _status_said(self) -> str:
        # A body read as a stream that is an error page: the status says why it ended.
        return "" if 200 <= self.status < 300 else f"; the response's status was {self.status}"

    def _broken(self) -> ConnectionError:
        return ConnectionResetError("the connection was reset by the server")

    async def read_all(self) -> bytes:
        """Read until the body is complete; return what was not read yet."""
        chunks = []
        # Each piece is waited for afresh: a long body that keeps arriving is no hang.
        while (chunk := await self._receive("the rest of the body", self._deadline())) is not None:
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_event(self) -> ServerSentEvent:
        """The next SSE frame.

        :raises EOFError: the body ended first.
        :raises TimeoutError: no frame was completed within :attr:`read_timeout`; heartbeats
            (comments) that arrived meanwhile do not extend it.
        """
        # One deadline for the whole frame, not one per piece: a stream of heartbeats and no
        # event would hold the read for ever.
        deadline = self._deadline()
        while not self._events:
            chunk = await self._receive("another event", deadline)
            if chunk is None:
                discarded = (
                    "; an unfinished event at its end was discarded, as a browser does"
                    if self._sse.end()
                    else ""
                )
                raise EOFError(
                    f"the stream of {self._request} ended before another event arrived"
                    f"{self._status_said()}{discarded}"
                )
            self._events.extend(self._sse.feed(chunk))
        return self._events.pop(0)

    async def events(self) -> AsyncIterator[ServerSentEvent]:
        """Every SSE frame until the body ends."""
        while True:
            try:
                yield await self.read_event()
            except EOFError:
                return

    async def read_item(self) -> Any:
        """The next NDJSON value.

        :raises EOFError: the body ended first.
        :raises ValueError: the next line is not UTF-8 or not JSON; the message names its
            number. The lines after it are read by the next calls.
        :raises TimeoutError: no value was completed within :attr:`read_timeout`; heartbeats
            (empty lines) that arrived meanwhile do not extend it.
        """
        deadline = self._deadline()
        while not self._items:
            chunk = await self._receive("another item", deadline)
            if chunk is None:
                discarded = (
                    "; an unfinished line at its end was discarded" if self._ndjson.end() else ""
                )
                raise EOFError(
                    f"the stream of {self._request} ended before another item arrived"
                    f"{self._status_said()}{discarded}"
                )
            self._feed_items(chunk)
        item = self._items.pop(0)
        if isinstance(item, ValueError):  # no JSON value is one
            raise item
        return item

    def _feed_items(self, chunk: bytes) -> None:
        """Queue the values of the lines *chunk* completes, and the error of a bad one in its
        place: the values before it are read first, and those after it after, as
        :func:`~streamkit.client.open_ndjson_stream` hands them over."""
        start = 0
        while end := chunk.find(b"\n", start) + 1:
            try:
                self._items.extend(self._ndjson.feed(chunk[start:end]))
            except ValueError as exc:
                self._items.append(exc)
            start = end
        self._ndjson.feed(chunk[start:])

    async def close(self) -> None:
        """Leave cleanly: send FIN, then close the socket.

        :raises RuntimeError: the client already left.
        """
        self._check_here()
        self._left = "by close()"
        try:
            self.raw_socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        await self.stream.aclose()

    async def reset(self) -> None:
        """Leave abruptly: close with ``SO_LINGER`` 0, which sends RST.

        :raises RuntimeError: the client already left.
        """
        self._check_here()
        self._left = "by reset()"
        self.raw_socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.stream.aclose()

    async def half_close(self) -> None:
        """Send FIN but keep reading: the request side is done, the response side is not.

        :raises RuntimeError: the client already left.
        """
        self._check_here()
        self.raw_socket.shutdown(socket.SHUT_WR)

    def stall(self) -> None:
        """Stop reading, for good: the server's writes back up once the socket buffers are
        full, until its ``send_timeout`` ends the stream. Open the client with a small
        ``receive_buffer`` (4096) so that happens after little data. Reading afterwards raises
        :exc:`RuntimeError`.

        :raises RuntimeError: the client already left.
        """
        self._check_here()
        self.stalled = True


class _H11Client(StreamClient):
    def __init__(self, stream: SocketStream, *, request: str, read_timeout: float | None) -> None:
        super().__init__(stream, request=request, read_timeout=read_timeout)
        self._connection = h11.Connection(h11.CLIENT)

    async def _next_event(self) -> Any:
        while True:
            try:
                event = self._connection.next_event()
            except h11.RemoteProtocolError as exc:
                raise ConnectionError(f"the response broke off: {exc}") from exc
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive(_RECEIVE_SIZE)
            except anyio.EndOfStream:
                data = b""
            except anyio.BrokenResourceError as exc:
                raise self._broken() from exc
            self._connection.receive_data(data)

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], host: str
    ) -> None:
        # Values in UTF-8, as a browser sends a Last-Event-ID and as h2 sends a str: h11
        # would take only ASCII.
        fields = [(name.encode(), value.encode()) for name, value in headers.items()]
        if not any(name.lower() == "host" for name in headers):
            # A Host given is the host the request is for; h11 refuses a second one.
            fields.insert(0, (b"host", host.encode()))
        request = h11.Request(method=method, target=target, headers=fields)
        await self.stream.send(
            self._connection.send(request) + self._connection.send(h11.EndOfMessage())
        )
        with anyio.move_on_after(self.read_timeout) as scope:
            response = await self._next_event()
        if scope.cancelled_caught:
            raise TimeoutError(
                f"the response head of {self._request} did not arrive within {self.read_timeout} s"
            )
        if not isinstance(response, h11.Response):
            raise ConnectionError(f"expected a response head, got {response!r}")
        self.status = response.status_code
        # Latin-1, a byte a character, as Starlette encodes a response's headers.
        self.headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in response.headers
        }

    async def _receive_piece(self) -> bytes | None:
        event = await self._next_event()
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            self.complete = True
            return None
        raise ConnectionError(f"the body ended without its terminator: {event!r}")


@asynccontextmanager
async def open_stream(
    base: Any,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    receive_buffer: int | None = None,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
) -> AsyncIterator[StreamClient]:
    """Request *path* over HTTP/1.1 and yield the client once the response head arrived.

    :param base: the server: a :class:`~streamkit.testing.LiveServer` or anything with
        ``host`` and ``port``.
    :param headers: extra request headers (``Last-Event-ID``, say); values are sent in
        UTF-8, as a browser sends a ``Last-Event-ID``. A ``Host`` is sent in place of the
        server's address.
    :param receive_buffer: ``SO_RCVBUF`` in bytes, set before connecting; small values make
        :meth:`StreamClient.stall` take effect after little data.
    :param read_timeout: seconds the response head, and then each read, may wait for the
        server before :exc:`TimeoutError` (see :attr:`StreamClient.read_timeout`); ``None``
        waits for as long as it takes.
    :raises TimeoutError: the response head did not arrive within *read_timeout*.
    :raises RuntimeError: *base* is a server that has stopped (before connecting).
    :raises TypeError: *base* is not a server, *method*, *path* or a header not a ``str``,
        *receive_buffer* not an ``int`` or *read_timeout* not a number (before connecting).
    :raises ValueError: the request cannot be sent as given (see below), *receive_buffer* is
        not positive, or *read_timeout* is not a positive, finite number of seconds (before
        connecting).

    *path* starts with ``/`` and holds only printable ASCII: anything else is sent
    percent-encoded, as a browser sends it (``/caf%C3%A9`` for ``/café``). *method* and the
    headers' names are HTTP tokens; a header's value holds no line break or NUL, and no space
    or tab at either end.
    """
    check_duration("read_timeout", read_timeout, optional=True)
    check_request(method, path, headers or {})
    check_server(base)
    stream = await connect(base.host, base.port, receive_buffer=receive_buffer)
    client = _H11Client(stream, request=f"{method} {path}", read_timeout=read_timeout)
    try:
        await client.request(method, path, dict(headers or {}), f"{base.host}:{base.port}")
        yield client
    finally:
        if client._left is None:
            client._left = "at the end of its open_stream block"
        await stream.aclose()
