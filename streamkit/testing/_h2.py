"""HTTP/2 for tests: prior knowledge over cleartext, several streams on one connection, and a
``RST_STREAM`` of just one of them.

httpx, leaving an HTTP/2 stream early, sends no ``RST_STREAM``, so the server never learns the
reader has gone. :meth:`H2StreamClient.reset_stream` sends one, so a test can prove the server
ends that stream alone while the connection stays usable.

There is no reader task: whichever stream is being read drives the socket and keeps what
arrives for the others. Data is acknowledged (``WINDOW_UPDATE``) per stream only once it has
been read, so a stream nobody reads stalls the server at flow control after one window, like
a real slow reader; the connection's own window is opened wide at the start, so one stalled
stream cannot hold up the others.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from anyio.abc import SocketStream

from .._checks import check_duration
from ._client import (
    DEFAULT_READ_TIMEOUT,
    StreamClient,
    check_request,
    check_server,
    connect,
)

__all__ = ["H2Connection", "H2StreamClient", "open_h2_connection", "open_h2_stream"]

_RECEIVE_SIZE = 65536
_LARGEST_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535
# Sending a frame is a local socket write; if even that cannot finish, the peer is gone.
_GOODBYE_TIMEOUT = 1.0
_CLOSED = (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError)


def _text(value: str | bytes) -> str:
    # Latin-1, a byte a character, as Starlette encodes a response's headers: not h2's
    # header_encoding, which would decode them as UTF-8 and fail on such a byte.
    return value.decode("latin-1") if isinstance(value, bytes) else value


class H2StreamClient(StreamClient):
    """One HTTP/2 stream being read: the :class:`StreamClient` reading API, plus
    :meth:`reset_stream`.

    :meth:`close`, :meth:`reset` and :meth:`half_close` act on the whole connection's socket,
    and so on every stream on it. After :meth:`stall`, this stream's data is no longer
    acknowledged, so the server is held at the stream's flow-control window (64 KiB) while
    the connection's other streams go on.

    :ivar connection: the :class:`H2Connection` the stream is on.
    :ivar stream_id: the HTTP/2 stream identifier.
    :ivar reset_code: the error code of the server's ``RST_STREAM``, if it reset the stream.
    """

    def __init__(
        self, connection: H2Connection, stream_id: int, *, request: str = "the request"
    ) -> None:
        super().__init__(connection.stream, request=request, read_timeout=connection.read_timeout)
        self.connection = connection
        self.stream_id = stream_id
        self.reset_code: int | None = None
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._head_received = False
        self._ended = False
        self._reset_sent = False

    @property
    def unread(self) -> int:
        """Body bytes that arrived for this stream and were not read yet, and so are not
        acknowledged to the server."""
        return sum(len(data) for data, _ in self._chunks)

    def _arrived(self) -> bool:
        return bool(self._chunks) or self._ended or self.reset_code is not None

    async def _receive_piece(self) -> bytes | None:
        while not self.complete:
            if self._reset_sent:
                raise RuntimeError(f"stream {self.stream_id} was reset by this client")
            await self.connection._receive_until(self._arrived)
            if self._chunks:
                data, flow_controlled = self._chunks.popleft()
                await self.connection._acknowledge(self.stream_id, flow_controlled)
                if data:
                    return data
            elif self._ended:
                self.complete = True
            else:
                raise ConnectionResetError(
                    f"the server reset stream {self.stream_id} (error code {self.reset_code})"
                )
        return None

    async def reset_stream(self, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Send ``RST_STREAM`` for this stream alone, as a browser does when a page stops
        reading; the connection and its other streams go on.

        :param error_code: the HTTP/2 error code sent; ``CANCEL`` (8) by default.
        :raises RuntimeError: the client already left.
        """
        self._check_here()
        self._reset_sent = True
        await self.connection._reset(self, error_code)


class H2Connection:
    """An HTTP/2 connection to a test server, made by :func:`open_h2_connection`.

    :ivar stream: the connection's socket stream.
    :ivar goaway_code: the error code of the server's ``GOAWAY``, once it sent one.
    :ivar read_timeout: seconds a wait for the server (a response head, a read, a ``PING``'s
        acknowledgement, the ``GOAWAY``) may take before :exc:`TimeoutError`, or ``None`` for
        no bound; each stream takes the value it has when the stream is opened.
    """

    def __init__(
        self,
        stream: SocketStream,
        authority: str,
        *,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
    ) -> None:
        self.stream = stream
        self.goaway_code: int | None = None
        self.read_timeout = read_timeout
        self._closed = False
        self._authority = authority
        self._h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self._streams: dict[int, H2StreamClient] = {}
        self._ping_acks: set[bytes] = set()
        self._pings_sent = 0
        self._receive_lock = anyio.Lock()
        self._send_lock = anyio.Lock()

    async def _start(self) -> None:
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(_LARGEST_WINDOW - _DEFAULT_WINDOW)
        await self._flush()

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._h2.data_to_send()
            if data:
                await self.stream.send(data)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this HTTP/2 connection was closed at the end of its block")

    async def _wait_for(self, awaited: str, ready: Callable[[], bool]) -> None:
        """Receive until *ready*, within :attr:`read_timeout`."""
        with anyio.move_on_after(self.read_timeout) as scope:
            await self._receive_until(ready)
        if scope.cancelled_caught:
            raise TimeoutError(f"{awaited} did not arrive within {self.read_timeout} s")

    async def _receive_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            async with self._receive_lock:
                # Another stream's reader may have received what we wait for meanwhile.
                if not ready():
                    await self._receive_once()

    async def _receive_once(self) -> None:
        try:
            data = await self.stream.receive(_RECEIVE_SIZE)
        except anyio.EndOfStream:
            raise ConnectionError("the server closed the HTTP/2 connection") from None
        except anyio.BrokenResourceError as exc:
            raise ConnectionResetError("the server reset the HTTP/2 connection") from exc
        for event in self._h2.receive_data(data):
            self._dispatch(event)
        await self._flush()

    def _dispatch(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        client = self._streams.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.DataReceived):
            if client is None or client._reset_sent:
                # Nobody will read it: hand the window back at once.
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                client._chunks.append((event.data, event.flow_controlled_length))
        elif isinstance(event, h2.events.ResponseReceived) and client is not None:
            headers = [(_text(name), _text(value)) for name, value in event.headers]
            client.status = int(dict(headers)[":status"])
            client.headers = {name: value for name, value in headers if not name.startswith(":")}
            client._head_received = True
        elif isinstance(event, h2.events.StreamEnded) and client is not None:
            client._ended = True
        elif isinstance(event, h2.events.StreamReset) and client is not None:
            client.reset_code = int(event.error_code or 0)
        elif isinstance(event, h2.events.PingAckReceived):
            self._ping_acks.add(event.ping_data)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_code = int(event.error_code or 0)

    async def _acknowledge(self, stream_id: int, flow_controlled: int) -> None:
        if flow_controlled:
            self._h2.acknowledge_received_data(flow_controlled, stream_id)
            await self._flush()

    async def _reset(self, client: H2StreamClient, error_code: int) -> None:
        unread = sum(length for _, length in client._chunks)
        client._chunks.clear()
        self._h2.reset_stream(client.stream_id, error_code)
        if unread:
            # The stream is closed: this returns the bytes to the connection's window only.
            self._h2.acknowledge_received_data(unread, client.stream_id)
        await self._flush()

    async def ping(self) -> float:
        """Send ``PING`` and wait for its acknowledgement: proof the connection still works.

        :returns: the round trip, in seconds.
        :raises ConnectionError: the server closed the connection first.
        :raises TimeoutError: no acknowledgement within :attr:`read_timeout`.
        :raises RuntimeError: the connection's block has ended.
        """
        self._check_open()
        self._pings_sent += 1
        opaque = self._pings_sent.to_bytes(8, "big")
        started = anyio.current_time()
        self._h2.ping(opaque)
        await self._flush()
        await self._wait_for("the PING's acknowledgement", lambda: opaque in self._ping_acks)
        self._ping_acks.discard(opaque)
        return anyio.current_time() - started

    async def wait_goaway(self) -> int:
        """Read until the server's ``GOAWAY`` arrives, and return its error code (``0``,
        ``NO_ERROR``, for a graceful close).

        :raises ConnectionError: the server closed the connection without one.
        :raises TimeoutError: no ``GOAWAY`` within :attr:`read_timeout`.
        :raises RuntimeError: the connection's block has ended.
        """
        self._check_open()
        await self._wait_for("the server's GOAWAY", lambda: self.goaway_code is not None)
        assert self.goaway_code is not None
        return self.goaway_code

    @asynccontextmanager
    async def open_stream(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[H2StreamClient]:
        """Request *path* on a new stream and yield its client once the response head arrived.

        Leaving the block with the stream still open resets it (``RST_STREAM`` ``CANCEL``), as
        a browser does.

        :param headers: extra request headers; names are sent lower-cased, values in
            UTF-8. A ``Host`` is sent as the ``:authority`` in place of the server's address.
        :raises ConnectionResetError: the server reset the stream before answering.
        :raises TimeoutError: the response head did not arrive within :attr:`read_timeout`.
        :raises RuntimeError: the connection's block has ended.
        :raises TypeError: *method*, *path* or a header is not a ``str``.
        :raises ValueError: the request cannot be sent as given (see
            :func:`~streamkit.testing.open_stream`).
        """
        self._check_open()
        check_request(method, path, headers or {})
        stream_id = self._h2.get_next_available_stream_id()
        client = H2StreamClient(self, stream_id, request=f"{method} {path}")
        self._streams[stream_id] = client
        fields = {name.lower(): value for name, value in (headers or {}).items()}
        # A Host given is the host the request is for, as a browser makes it the :authority;
        # h2 refuses a Host beside an :authority that differs.
        authority = fields.pop("host", self._authority)
        request = [
            (":method", method),
            (":scheme", "http"),
            (":authority", authority),
            (":path", path),
            *fields.items(),
        ]
        try:
            self._h2.send_headers(stream_id, request, end_stream=True)
            await self._flush()
            await self._wait_for(
                f"the response head of {method} {path}",
                lambda: client._head_received or client._arrived(),
            )
            if not client._head_received:
                raise ConnectionResetError(
                    f"the server reset stream {stream_id} before answering "
                    f"(error code {client.reset_code})"
                )
            yield client
        finally:
            del self._streams[stream_id]
            if client._left is None:
                client._left = "at the end of its open_stream block"
            if not (client._ended or client._reset_sent or client.reset_code is not None):
                with anyio.move_on_after(_GOODBYE_TIMEOUT, shield=True):
                    try:
                        await self._reset(client, h2.errors.ErrorCodes.CANCEL)
                    except (*_CLOSED, h2.exceptions.ProtocolError):
                        pass  # the test closed or reset the connection itself


@asynccontextmanager
async def open_h2_connection(
    base: Any,
    *,
    receive_buffer: int | None = None,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
) -> AsyncIterator[H2Connection]:
    """Open an HTTP/2 connection (prior knowledge, cleartext) to *base* and yield it.

    Leaving the block sends ``GOAWAY`` and closes the socket.

    :param base: the server: a :class:`~streamkit.testing.LiveServer` or anything with
        ``host`` and ``port``.
    :param receive_buffer: ``SO_RCVBUF`` in bytes, set before connecting.
    :param read_timeout: seconds each wait for the server may take before
        :exc:`TimeoutError` (see :attr:`H2Connection.read_timeout`); ``None`` for no bound.
    :raises RuntimeError: *base* is a server that has stopped (before connecting).
    :raises TypeError: *base* is not a server, *receive_buffer* not an ``int`` or
        *read_timeout* not a number (before connecting).
    :raises ValueError: *receive_buffer* is not positive, or *read_timeout* not a positive,
        finite number of seconds (before connecting).
    """
    check_duration("read_timeout", read_timeout, optional=True)
    check_server(base)
    stream = await connect(base.host, base.port, receive_buffer=receive_buffer)
    connection = H2Connection(stream, f"{base.host}:{base.port}", read_timeout=read_timeout)
    try:
        await connection._start()
        yield connection
    finally:
        connection._closed = True
        with anyio.move_on_after(_GOODBYE_TIMEOUT, shield=True):
            try:
                connection._h2.close_connection()
                await connection._flush()
            except (*_CLOSED, h2.exceptions.ProtocolError):
                pass  # already closed, by the test or the server
            await stream.aclose()


@asynccontextmanager
async def open_h2_stream(
    base: Any,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    receive_buffer: int | None = None,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
) -> AsyncIterator[H2StreamClient]:
    """Request *path* over a new HTTP/2 connection of its own and yield the stream's client
    once the response head arrived. To put several streams on one connection, use
    :func:`open_h2_connection` and :meth:`H2Connection.open_stream`.

    :param base: the server: a :class:`~streamkit.testing.LiveServer` or anything with
        ``host`` and ``port``.
    :param headers: extra request headers (``Last-Event-ID``, say); values are sent in
        UTF-8, as a browser sends a ``Last-Event-ID``. A ``Host`` is sent as the
        ``:authority`` in place of the server's address.
    :param receive_buffer: ``SO_RCVBUF`` in bytes, set before connecting.
    :param read_timeout: seconds the response head, and then each read, may wait for the
        server before :exc:`TimeoutError`; ``None`` for no bound.
    :raises TimeoutError: the response head did not arrive within *read_timeout*.
    :raises RuntimeError: *base* is a server that has stopped (before connecting).
    :raises TypeError: *base* is not a server, *method*, *path* or a header not a ``str``,
        *receive_buffer* not an ``int`` or *read_timeout* not a number (before connecting).
    :raises ValueError: the request cannot be sent as given (see
        :func:`~streamkit.testing.open_stream`), *receive_buffer* is not positive, or
        *read_timeout* is not a positive, finite number of seconds (before connecting).
    """
    check_request(method, path, headers or {})
    async with (
        open_h2_connection(
            base, receive_buffer=receive_buffer, read_timeout=read_timeout
        ) as connection,
        connection.open_stream(path, method=method, headers=headers) as client,
    ):
        yield client
