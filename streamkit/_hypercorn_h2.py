"""Per-stream bounds on HTTP/2 under hypercorn, and its connections kept from faults a client
can cause: repairs made for the servers streamkit runs and for nothing else in the process.

hypercorn keeps, for each HTTP/2 stream, a buffer between the application and the
connection's sending task. A write waits while the buffer holds two frames' worth (32 KiB),
and is meant to be let go once the sending task has taken enough of it. In hypercorn 0.18 the
writer is let go after every take shorter than half that, an empty take included; and when
the client's flow-control window for the stream is 0, every take is empty. So a write to a
stream whose reader stopped never waits: the buffer grows with whatever the application
makes, and ``send_timeout`` never fires. Over HTTP/1.1 the socket itself holds the writer.

Thirteen changes, applied to the connections of servers that :func:`streamkit.serve` runs,
and of the server a worker of the ``hypercorn`` command runs (see
:func:`_bound_the_hypercorn_command`):

- the writer is let go only once the buffer has fallen below half its high-water mark, so a
  stalled stream holds at most the buffer and one write, and its writer waits;
- a stream the application left without finishing its body, or with the end of it still
  buffered (a write gave up at ``send_timeout``, the last one included), is reset with
  ``RST_STREAM`` (``CANCEL``) and its buffer dropped;
  hypercorn would leave it open, and the client waiting, until the connection closed;
- a connection the server closes as it shuts down is sent ``GOAWAY`` first, so the client
  knows that the streams it had were ended on purpose; so is one cancelled as the grace
  period ends (hypercorn's trio worker gives it no close to answer), its unfinished streams
  reset first;
- a tunnel's ``CONNECT``, the one request without a path, is answered 405, and one whose
  method or path is not ASCII 400, without the app; hypercorn raised ``UnboundLocalError``
  or ``UnicodeDecodeError`` out of the connection;
- body that arrives for a stream whose response has ended is acknowledged and dropped;
  hypercorn raised ``KeyError`` out of the connection;
- a stream's body is handed to its app without the connection's reader waiting for room in
  the app's queue: hypercorn waited there, so one app reading its body slowly (or not at
  all) stopped the whole connection being read, its other streams starved of window updates
  and its PINGs and resets unanswered. A body the app has no room for waits for it in a task
  of the stream's own, joined into one piece as it comes, and only the stream's flow-control
  window stays closed meanwhile, which holds the client back to the stream's window. The
  stream's close (the app's disconnect) follows its body the same way, and what is held for
  an app that has returned is dropped: hypercorn waited for good to put the close into a
  queue the app had left full, and the connection's task never ended;
- a ``PRIORITY`` signal orders only the streams being served: hypercorn kept every stream a
  client named in one, for good, and past 1000 of them raised out of the connection;
- on asyncio, a stream cancelled as the grace period ends does not ask for the connection's
  idle timer: hypercorn would start it in the connection's task group, then being cancelled,
  whose RuntimeError came out of ``serve()``;
- a client's ``GOAWAY`` without an error code lets the streams it has open run to their end,
  refuses (``REFUSED_STREAM``) any it opens after, and closes the connection once the last
  has ended: RFC 9113 makes it a promise to open no more streams, and hypercorn closed the
  connection at once, every stream cut. One with an error code closes it, as before;
- the connection's socket is closed only once the writes under way have finished, and none
  begins after: hypercorn's trio worker shut it while another stream's write began, and the
  ``BusyResourceError`` stopped the server (a client's ``GOAWAY`` as data flowed was
  enough);
- a client that resets more than ``RESET_BURST`` streams at once, or more than
  ``RESET_RATE`` a second after, has its connection closed with ``GOAWAY``
  (``ENHANCE_YOUR_CALM``): streams reset as they open (CVE-2023-44487, rapid reset) leave the
  client's concurrency limit at once while the server starts, cancels and cleans up each,
  and hypercorn bounded them only by ``keep_alive_max_requests`` (1000 a connection);
- a connection closed (or cancelled as the grace period ends) whose writes a client that
  stopped reading its socket still holds a second later is aborted: hypercorn's trio worker
  shields a write, and its asyncio worker's close waits for the bytes to be sent, both for
  good where the kernel does not give the client up, the server's shutdown with them; its
  streams' ``send_timeout`` leaves a connection that may carry others alone;
- a connection by prior knowledge that opens no stream, or never ends its first header block,
  is closed at ``keep_alive_timeout``, as one over TLS is: its preface parses as an HTTP/1
  request, which stopped the idle timer, and nothing started it again until a stream ended, so
  a client that sent the preface and nothing else held the connection for good.

The repair depends on hypercorn's internals, so it is applied only to a hypercorn version it
was checked against, and only where a probe of hypercorn's own buffer shows the fault; a
version that has the fault but was not checked is served as it is, with a warning.
"""

from __future__ import annotations

import importlib.metadata
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import anyio
import h2.errors
import h2.events
import h2.exceptions
import hypercorn.protocol
import hypercorn.protocol.h2 as hypercorn_h2
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import Body, EndBody, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hyperframe.frame import GoAwayFrame
from priority.priority import PriorityError

from ._backends import being_cancelled, hand_over_nowait
from ._connections import abort_connection_soon
from ._server_shutdown import hypercorn_worker_config

__all__ = ["bound_h2_streams", "h2_streams_bounded"]

logger = logging.getLogger("streamkit")

#: The hypercorn releases whose internals the repair was checked against.
CHECKED_RELEASES = ("0.18.",)

# The configs of the servers streamkit runs; a config dropped by its server leaves by itself.
_bounded_configs: weakref.WeakSet[Any] = weakref.WeakSet()
_decision: bool | None = None
#: The longest a connection cancelled mid-stream spends saying goodbye: a few frames, held
#: up only by a client that stopped reading its socket (which ``stalled_connection_timeout``
#: bounds, in the kernel, where hypercorn shields the write).
_GOODBYE_TIMEOUT = 1.0
#: A connection's client may reset this many of the streams being served at once, and
#: RESET_RATE more a second; past that, the connection is closed (see _count_reset()).
RESET_BURST = 200
RESET_RATE = 20.0
#: How long a connection closed for too many resets is read and dropped before its socket
#: is closed.
_LINGER = 1.0


class _ProbeEvent:
    """Stands in for hypercorn's event class, so that its buffer can be run without a loop."""

    def __init__(self) -> None:
        self.is_set = False

    async def set(self) -> None:
        self.is_set = True

    async def clear(self) -> None:
        self.is_set = False

    async def wait(self) -> None:
        pass


def _run_at_once(coroutine: Coroutine[Any, Any, object]) -> None:
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("the probe suspended")


def writer_released_at_zero_window(buffer_class: Any) -> bool:
    """Whether a buffer of *buffer_class* lets a waiting writer go on an empty take, as a
    zero flow-control window makes every take (the fault this module repairs)."""
    buffer = buffer_class(_ProbeEvent)
    buffer.buffer.extend(bytes(hypercorn_h2.BUFFER_HIGH_WATER))  # a writer now waits
    events = [value for value in vars(buffer).values() if isinstance(value, _ProbeEvent)]
    for event in events:
        event.is_set = False
    _run_at_once(buffer.pop(0))
    return any(event.is_set for event in events)


class _BoundedStreamBuffer(hypercorn_h2.StreamBuffer):
    """hypercorn's buffer, letting the writer go only once the buffer has room again."""

    async def pop(self, max_length: int) -> bytes:
        taken = bytes(self.buffer[: max(max_length, 0)])
        del self.buffer[: len(taken)]
        if len(self.buffer) < hypercorn_h2.BUFFER_LOW_WATER:
            await self._paused.set()
        if not self.buffer:
            await self._is_empty.set()
        return taken


class _BoundedBuffers(dict[int, Any]):
    """The per-stream buffer table: each buffer hypercorn puts in becomes a bounded one.

    hypercorn makes a stream's buffer and puts it here before the application can write to
    it, so the change of class happens while it is empty and unused.
    """

    def __setitem__(self, stream_id: int, buffer: Any) -> None:
        if type(buffer) is hypercorn_h2.StreamBuffer:
            buffer.__class__ = _BoundedStreamBuffer
        super().__setitem__(stream_id, buffer)


#: How an HTTP stream sends its app's messages: ``None`` once the app has returned.
AppSend = Callable[[Any], Awaitable[None]]
#: How an HTTP stream puts a message into its app's queue, waiting for room.
AppPut = Callable[[Any], Awaitable[None]]


class _Streams(dict[int, Any]):
    """The stream table: the app of each HTTP stream hypercorn puts in sends through
    *app_send* (``app_send(stream, send, message)``), which tells the connection when the app
    has returned. Put in before the stream starts its app, which takes the stream's
    ``app_send`` then."""

    def __init__(self, app_send: Callable[[HTTPStream, AppSend, Any], Awaitable[None]]) -> None:
        super().__init__()
        self._app_send = app_send

    def __setitem__(self, stream_id: int, stream: Any) -> None:
        if isinstance(stream, HTTPStream):
            stream.app_send = partial(self._app_send, stream, stream.app_send)  # type: ignore[method-assign, assignment]
        super().__setitem__(stream_id, stream)


class _BoundedH2Protocol(H2Protocol):
    """hypercorn's HTTP/2 connection with the thirteen changes the module docstring lists."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_buffers = _BoundedBuffers()
        self._goaway_sent = False
        self.streams = _Streams(self._app_send)
        # The messages that wait for room in a stream's app queue, in order, each with the
        # flow-controlled bytes to hand back to the stream's window once the app has it: only
        # while a task of the stream's own puts them (see _put_or_hold()), whose scope is
        # kept beside.
        self._held: dict[int, deque[tuple[Any, int]]] = {}
        self._feeders: dict[int, anyio.CancelScope] = {}
        self._send_to_server = self.send
        self.send = self._send
        # Writes under way (waiting for the server's send lock, or sending), and whether the
        # socket is being closed: see _send().
        self._writes = 0
        self._writes_done = anyio.Event()
        self._socket_closing = False
        # A client's GOAWAY without an error: it opens no more streams, those open go on (see
        # _receive_goaway()). h2 would close the connection on the frame, as hypercorn did.
        # h2's own table, made for each connection: a release without it keeps h2's reading.
        frames = getattr(self.connection, "_frame_dispatch_table", None)
        if isinstance(frames, dict) and GoAwayFrame in frames:
            self._h2_receive_goaway = frames[GoAwayFrame]
            frames[GoAwayFrame] = self._receive_goaway
        self._client_going_away = False
        # The client's resets it may still make at once, as of _resets_counted_at (its
        # first reset's time, until then).
        self._resets_left = float(RESET_BURST)
        self._resets_counted_at: float | None = None
        # Closed for too many resets, what the client still sends is dropped (_calm_down()).
        self._lingering = False
        self._socket_closed = anyio.Event()
        # Set once the connection has handled its close (see _goodbye_if_cancelled()).
        self._handled_close = anyio.Event()

    async def initiate(self, *args: Any, **kwargs: Any) -> None:
        await super().initiate(*args, **kwargs)
        self.task_group.spawn(self._goodbye_if_cancelled)
        if not self.streams:
            # Started by prior knowledge, the connection began as HTTP/1, which stopped the
            # idle timer for a request: its preface parses as one ("PRI * HTTP/2.0"). Nothing
            # started it again until a stream ended, so a client that opened none (or never
            # finished its first header block) held the connection for good.
            await self.send(Updated(idle=True))

    async def _goodbye_if_cancelled(self) -> None:
        """Say goodbye on the wire to a connection cancelled before it was closed: its
        unfinished streams reset, then ``GOAWAY``. hypercorn's trio worker cancels the
        connections still open as its graceful timeout ends, and gives them no close to
        answer: a client was left with its streams open and no GOAWAY, only the socket shut.
        (On asyncio the cancelled apps' ends did it already.) Frames only: the streams' apps
        are being cancelled with the connection."""
        try:
            await self._handled_close.wait()
        finally:
            if not self.closed:
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(_GOODBYE_TIMEOUT) as goodbye:
                        await self._say_goodbye()
                        await self._wait_sent()
                    if goodbye.cancelled_caught:
                        self._abort()

    async def _wait_sent(self) -> None:
        """Wait until what the connection wrote has left the server for the kernel: the
        writes under way have finished, and hypercorn's asyncio worker's transport has
        nothing left buffered (its close waits for that, for good if the client stopped
        reading its socket)."""
        while self._writes:
            self._writes_done = anyio.Event()
            await self._writes_done.wait()
        # hypercorn's asyncio worker's StreamWriter, whose transport buffers what the kernel
        # has not taken yet; its trio worker's writes have finished once they return.
        writer: Any = getattr(getattr(self._send_to_server, "__self__", None), "writer", None)
        transport = getattr(writer, "transport", None)
        if transport is not None and transport.get_write_buffer_size():
            # drain() waits while the buffer is above its high-water mark: 0, until it is empty.
            transport.set_write_buffer_limits(high=0)
            try:
                await writer.drain()
            except (ConnectionError, RuntimeError):
                pass  # the connection is gone: nothing more is sent

    def _abort(self) -> None:
        """Abort the connection's socket: it is being closed, and what it wrote is still held
        by a client that stopped reading the socket. hypercorn's trio worker shields its
        writes, so the connection, and the server's shutdown with it, waited for such a write
        for good where the kernel does not give the client up; its asyncio worker's close
        waited for the bytes to be sent. Its streams' ``send_timeout`` leaves the connection
        alone, since it may carry others; once it is closing, it carries none."""
        if isinstance(self.client, tuple) and isinstance(self.server, tuple):
            abort_connection_soon((self.server[0], self.server[1]), self.client)

    async def _say_goodbye(self) -> None:
        self._goaway_sent = True
        try:
            for stream_id, buffer in list(self.stream_buffers.items()):
                if not buffer.complete:
                    self.connection.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            self.connection.close_connection()
        except h2.exceptions.ProtocolError:
            pass  # the connection was closing already
        await self._flush()

    async def _send(self, event: Event) -> None:
        if isinstance(event, Updated) and being_cancelled():
            # An Updated restarts or stops the connection's idle timer. hypercorn's asyncio
            # worker starts the timer in the connection's task group, which raises
            # RuntimeError once it is being cancelled, out of serve(): so it was when a stream
            # that outlived the grace period was cancelled and ended. The connection is being
            # closed; there is no timer to keep.
            return
        if isinstance(event, RawData):
            if self._socket_closing:
                return  # nothing more reaches the client
            self._writes += 1
            try:
                await self._send_to_server(event)
            finally:
                self._writes -= 1
                if not self._writes:
                    self._writes_done.set()
            return
        if isinstance(event, Closed) and not self._socket_closing:
            # hypercorn's trio worker shuts the socket's sending side outside its send lock,
            # and a write that began meanwhile (another stream's data) raised
            # BusyResourceError out of the server: a client's GOAWAY or a protocol error, as
            # data flowed, stopped every connection. Writes still to begin are dropped, and
            # those under way finish first, within a bound: one held by a client that stopped
            # reading holds the socket, and the shutdown then finds it busy, which hypercorn
            # allows for.
            self._socket_closing = True
            with anyio.move_on_after(_GOODBYE_TIMEOUT) as sending:
                await self._wait_sent()
            if sending.cancelled_caught:
                self._abort()
        await self._send_to_server(event)

    def _receive_goaway(self, frame: GoAwayFrame) -> tuple[list[Any], list[h2.events.Event]]:
        """h2's reading of a client's ``GOAWAY``, but for one without an error, which leaves
        the connection open: RFC 9113 (6.8) makes it a promise to open no more streams (its
        last stream id is about the server's pushes), and a client shutting down gracefully
        waits for the streams it has. Chromium sends GOAWAY only with an error code, and
        closes the socket: such a frame ends the connection, as it did."""
        if frame.error_code != h2.errors.ErrorCodes.NO_ERROR:
            return self._h2_receive_goaway(frame)  # type: ignore[no-any-return]
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    async def _finish_going_away(self) -> None:
        """Close the connection of a client that said GOAWAY once its last stream has ended,
        every byte of it sent (its END_STREAM included): GOAWAY, then the socket."""
        if not self._client_going_away or self.closed or self._socket_closing or self.streams:
            return
        # A buffer whose end is set is the sending task's to finish (END_STREAM) or drop; one
        # without, of a stream no longer served, was reset by the client and is left over.
        if any(buffer._complete for buffer in self.stream_buffers.values()):
            return
        await self._send_goaway()
        await self.send(Closed())

    async def _send_goaway(
        self,
        error_code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.NO_ERROR,
        additional_data: bytes | None = None,
    ) -> None:
        """Send ``GOAWAY``, unless the connection is closing already. Noted as sent first: a
        GOAWAY whose write fails makes the server close the connection, which would say
        it again."""
        self._goaway_sent = True
        try:
            self.connection.close_connection(error_code, additional_data=additional_data)
        except h2.exceptions.ProtocolError:
            pass  # the connection was closing already
        else:
            await self._flush()

    async def _send_data(self, stream_id: int) -> None:
        await super()._send_data(stream_id)
        await self._finish_going_away()

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, StreamClosed):
            await self._reset_if_unfinished(event.stream_id)
        await super().stream_send(event)
        if isinstance(event, StreamClosed):
            await self._finish_going_away()

    async def _reset_if_unfinished(self, stream_id: int) -> None:
        buffer = self.stream_buffers.get(stream_id)
        if buffer is None or buffer.complete:
            # Finished, and all of it taken: the sending task ends the stream. A body that
            # ended with bytes still held (its last write, the wait for them to go, gave up)
            # is as unfinished to the client as one that stopped midway.
            return
        try:
            self.connection.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            pass  # the client reset it first, or the connection is closing
        else:
            await self._flush()
        # Emptied and marked complete; the sending task, finding the stream closed, removes
        # it (as it does for a stream the client reset).
        await buffer.close()
        self.priority.unblock(stream_id)
        await self.has_data.set()

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # A request hypercorn cannot make is answered here (see _refused). Body for a stream
        # hypercorn no longer serves (its response ended while the client still sent its
        # body, as it may) is acknowledged and dropped, as h2 does for a closed stream;
        # hypercorn looked the stream up and raised KeyError out of the connection, and on
        # trio out of the server. Looked up as it comes: a stream is served from its
        # request's event on, which may be in the same batch.
        batch: list[h2.events.Event] = []
        for event in events:
            if (
                isinstance(event, h2.events.ConnectionTerminated)
                and event.error_code == h2.errors.ErrorCodes.NO_ERROR
            ):
                # The client's graceful GOAWAY (see _receive_goaway()): the connection closes
                # once its streams have ended, now if it has none.
                if batch:
                    await super()._handle_events(batch)
                    batch = []
                self._client_going_away = True
                await self._finish_going_away()
                continue
            if isinstance(event, h2.events.StreamReset) and not self._count_reset():
                if batch:
                    await super()._handle_events(batch)
                await self._calm_down()
                return
            if isinstance(event, h2.events.RequestReceived) and self._client_going_away:
                # It said it would open no more: refused, so it may retry it elsewhere.
                self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                continue
            if isinstance(event, h2.events.RequestReceived) and (
                status := _refused(event.headers or ())
            ):
                refusal = [(b":status", b"%d" % status), (b"content-length", b"0")]
                refusal += self.config.response_headers("h2")
                self.connection.send_headers(event.stream_id, refusal, end_stream=True)
                continue
            if isinstance(event, h2.events.DataReceived | h2.events.StreamEnded):
                if batch:
                    await super()._handle_events(batch)
                    batch = []
                stream = self.streams.get(event.stream_id)
                if isinstance(stream, HTTPStream):
                    if isinstance(event, h2.events.DataReceived):
                        body = Body(stream_id=event.stream_id, data=event.data)
                        self._hand_over(stream, body, event.flow_controlled_length)
                    else:
                        self._hand_over(stream, EndBody(stream_id=event.stream_id), 0)
                    continue
                if stream is None and isinstance(event, h2.events.DataReceived):
                    self.connection.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                    continue
            batch.append(event)
        await super()._handle_events(batch)

    def _count_reset(self) -> bool:
        """Count a stream the client reset; false once it has reset more than RESET_BURST
        at once, or more than RESET_RATE a second since.

        A stream reset as soon as it is opened leaves the client's concurrency limit at
        once, while its app starts, is cancelled and cleans up: a client that resets
        every stream it opens (CVE-2023-44487, rapid reset) makes the server work without
        waiting for anything, bounded only by hypercorn's keep_alive_max_requests (1000 a
        connection). A browser resets a stream when a page stops reading it, a few at once.
        """
        now = anyio.current_time()
        since = 0.0 if self._resets_counted_at is None else now - self._resets_counted_at
        self._resets_left = min(float(RESET_BURST), self._resets_left + since * RESET_RATE)
        self._resets_counted_at = now
        if self._resets_left < 1:
            return False
        self._resets_left -= 1
        return True

    async def _calm_down(self) -> None:
        """Close the connection of a client that resets too many streams: GOAWAY
        (ENHANCE_YOUR_CALM), its streams ended as on a disconnect, and the socket closed
        _LINGER seconds later, or as soon as the client closes it. Meanwhile what it sends
        is read and dropped: closing a socket with unread data resets it, and the client's
        kernel may then drop the GOAWAY before its reader sees why."""
        self._lingering = True
        await self._send_goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, b"too many resets")
        await self.handle(Closed())
        self.task_group.spawn(self._close_after_lingering)

    async def _close_after_lingering(self) -> None:
        with anyio.move_on_after(_LINGER):
            await self._socket_closed.wait()
        await self.send(Closed())

    def _hand_over(self, stream: HTTPStream, event: StreamEvent, length: int) -> None:
        """Hand *event*, a stream's body or its end (*length* flow-controlled bytes), to the
        stream's app without waiting (see _put_or_hold()). The connection's window is handed
        back at once; the stream's once the app has the bytes, so that the client sends no
        more to a stream than its window while the app has no room for it."""
        stream_id = event.stream_id
        if stream.closed:  # as hypercorn's stream does: its app is told nothing more
            delivered = True
        else:
            delivered = self._put_or_hold(stream_id, stream.app_put, _message(event), length)
        if not length:
            return
        if delivered:
            self.connection.acknowledge_received_data(length, stream_id)
        else:
            self.connection.increment_flow_control_window(length)

    def _put_or_hold(self, stream_id: int, put: AppPut, message: Any, length: int = 0) -> bool:
        """Put *message* into a stream's app queue through *put*, hypercorn's, if it has room
        and nothing is held before it; else hold it, to be put by a task of the stream's own
        that waits for the room, after what was held before. True if it was put now. Never
        waits: hypercorn waited in the connection's reader (or, for the stream's close, in
        the app's task), for good if the app never made room."""
        held = self._held.get(stream_id)
        if held is None:
            if hand_over_nowait(put, message):
                return True
            self._held[stream_id] = held = deque()
            # Made here, not in the task: the app may return before the task first runs.
            self._feeders[stream_id] = feeder = anyio.CancelScope()
            self.task_group.spawn(self._feed, stream_id, put, held, feeder)
        if len(held) > 1 and _is_body(message) and _is_body(held[-1][0]):
            # Joined to the body held before it (not the first, being put): one message a
            # DATA frame cost hundreds of bytes each, and empty or one-byte frames, which
            # cost the client no window or one byte of it, made the server hold memory
            # without bound, or many times the window.
            waiting, waiting_length = held[-1]
            waiting["body"] += message["body"]
            held[-1] = (waiting, waiting_length + length)
        elif _is_body(message):
            held.append(({**message, "body": bytearray(message["body"])}, length))
        else:
            held.append((message, length))
        return False

    async def _feed(
        self,
        stream_id: int,
        put: AppPut,
        held: deque[tuple[Any, int]],
        feeder: anyio.CancelScope,
    ) -> None:
        """Put what is *held* for a stream into its app's queue through *put*, waiting for
        room; hand each body's bytes back to the stream's window as it goes. Stopped, through
        *feeder*, once the app has returned (see _app_send())."""
        with feeder:
            try:
                while held:
                    message, length = held[0]
                    if _is_body(message):
                        message = {**message, "body": bytes(message["body"])}
                    await put(message)  # waits for room in the app's queue
                    held.popleft()
                    if length:
                        try:
                            self.connection.increment_flow_control_window(length, stream_id)
                        except (KeyError, h2.exceptions.ProtocolError):
                            pass  # the stream is closed: no window to hand back
                        else:
                            await self._flush()
            finally:
                if self._held.get(stream_id) is held:
                    del self._held[stream_id], self._feeders[stream_id]

    def _app_send(self, stream: HTTPStream, send: AppSend, message: Any) -> Awaitable[None]:
        """A stream's app sends *message* through *send*, hypercorn's; ``None`` once the app
        has returned. Then nothing waits for room in its queue any more: what was held for
        it is dropped. *send*'s own awaitable, not a coroutine around it: one per write."""
        if message is None and (feeder := self._feeders.pop(stream.stream_id, None)):
            del self._held[stream.stream_id]
            feeder.cancel()
        return send(message)

    async def _close_stream(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if not isinstance(stream, HTTPStream) or stream.app_put is None:
            await super()._close_stream(stream_id)
            return
        # Closed as hypercorn closes it, but its disconnect is put or held (after the body
        # held before it), not waited for: an app that left its queue full kept the close
        # waiting for good, in the connection's reader or in the app's own task.
        put = stream.app_put
        stream.app_put = partial(self._put_disconnect, stream_id, put)
        try:
            await super()._close_stream(stream_id)
        finally:
            stream.app_put = put

    async def _put_disconnect(self, stream_id: int, put: AppPut, message: Any) -> None:
        self._put_or_hold(stream_id, put, message)

    async def _priority_updated(self, event: h2.events.PriorityUpdated) -> None:
        # hypercorn puts a stream it does not serve (a PRIORITY frame's, or the stream one
        # depends on) in its priority tree, where it stays: past the tree's 1000 streams the
        # next insertion raises out of the connection, and on trio out of the server. HTTP/2
        # makes priorities advice (RFC 9113 deprecates them), so only streams being served
        # are ordered, and a dependency on any other stream is one on the connection.
        if event.stream_id not in self.stream_buffers:
            return
        if event.depends_on not in self.stream_buffers:
            event.depends_on = 0
        try:
            await super()._priority_updated(event)
        except PriorityError:
            pass  # advice that cannot be followed (a loop, say) is left

    async def handle(self, event: Event) -> None:
        if isinstance(event, RawData) and self._lingering:
            if not event.data:  # the client closed the socket
                self._socket_closed.set()
            return
        if isinstance(event, Closed) and self._lingering and self.closed:
            self._socket_closed.set()
        if (
            isinstance(event, Closed)
            and not self.closed
            and not self._goaway_sent
            and self.context.terminated.is_set()
        ):
            await self._send_goaway()
        await super().handle(event)
        if isinstance(event, Closed):
            self._handled_close.set()


def _message(event: StreamEvent) -> dict[str, Any]:
    """The ASGI message hypercorn makes of a stream's body or its end."""
    if isinstance(event, Body):
        return {"type": "http.request", "body": bytes(event.data), "more_body": True}
    return {"type": "http.request", "body": b"", "more_body": False}


def _is_body(message: Any) -> bool:
    """Whether *message* is a piece of a request's body with more to come."""
    return message.get("type") == "http.request" and bool(message.get("more_body"))


def _refused(headers: Any) -> int | None:
    """The status a request with these headers is answered, without the app, where hypercorn
    cannot make a request of it: it raised out of the connection (on trio, out of the server).
    """
    pseudo = {name: value for name, value in headers if name in (b":method", b":path")}
    if b":path" not in pseudo:
        # A tunnel's CONNECT, the one request HTTP/2 allows without a path (hypercorn read it
        # regardless: UnboundLocalError). No ASGI app serves a tunnel.
        return 405
    if not all(value.isascii() for value in pseudo.values()):
        # HTTP/1.1's parser refuses such a request line; h2 passes the bytes on, and
        # hypercorn decodes them as ASCII (UnicodeDecodeError).
        return 400
    return None


def _h2_protocol(app: Any, config: Any, *args: Any, **kwargs: Any) -> Any:
    """Stands in for hypercorn's ``H2Protocol`` class where its connections make one."""
    protocol = _BoundedH2Protocol if config in _bounded_configs else H2Protocol
    return protocol(app, config, *args, **kwargs)


def _decide() -> bool:
    release = importlib.metadata.version("hypercorn")
    try:
        faulty = writer_released_at_zero_window(hypercorn_h2.StreamBuffer)
    except Exception as exc:
        logger.warning(
            "hypercorn %s: cannot probe its HTTP/2 stream buffer (%r); HTTP/2 streams are "
            "served as hypercorn does, and a stalled one may be buffered without bound",
            release,
            exc,
        )
        return False
    if not faulty:
        return False
    if not release.startswith(CHECKED_RELEASES):
        logger.warning(
            "hypercorn %s buffers a stalled HTTP/2 stream without bound, and streamkit's "
            "repair was checked against %s only: not applied, so send_timeout does not "
            "bound HTTP/2 streams",
            release,
            ", ".join(f"{prefix}x" for prefix in CHECKED_RELEASES),
        )
        return False
    # The name hypercorn's connections look the class up by, when they start HTTP/2.
    vars(hypercorn.protocol)["H2Protocol"] = _h2_protocol
    return True


def bound_h2_streams(config: Any) -> bool:
    """Apply the repair to the connections of the server that runs with the hypercorn
    ``Config`` *config*; true if it applies, false where hypercorn needs none or it cannot be
    applied (logged once)."""
    global _decision
    if _decision is None:
        _decision = _decide()
    if _decision:
        _bounded_configs.add(config)
    return _decision


def h2_streams_bounded(config: Any) -> bool:
    """Whether the connections of servers running with *config* are repaired."""
    return config in _bounded_configs


def _bound_the_hypercorn_command() -> None:
    """Repair the connections of the server this process runs, if it is a worker of the
    hypercorn command: its HTTP/2 streams get the bounds they have under streamkit's own
    servers. Its worker imports the app, and streamkit with it, before it serves, so this
    comes before its first connection."""
    config = hypercorn_worker_config()
    if config is not None:
        bound_h2_streams(config)


_bound_the_hypercorn_command()
