"""The stream runtime: one task group per stream, tied to its connection.

The producer runs in the stream's own task; beside it, in one task group, run the writer and a
connection watcher that listens for the disconnect. Timers of the loop's own (see ``_loop``)
keep the heartbeats, the send timeout, the idle period and the producer's bound once the end
is decided, without waking a task until one acts. A bounded buffer
decouples the producer from the socket, so a client that stops reading holds the producer only
until the buffer is full, and never past ``send_timeout``. On asyncio, a producer that awaits
between items writes an item itself while no write is in progress, which spares waking the
writer for each; that write is bounded by ``send_timeout`` too.

The first of them to decide how the stream ends wins (:meth:`_Stream.decide`): the producer
is cancelled, its cleanup runs shielded under ``cleanup_timeout``, and the end is reported
once. Unlike Starlette's ``StreamingResponse``, the report does not wait for a write that
cannot finish: hypercorn's trio worker shields its socket writes, so a send to a stalled client
stays blocked until the kernel gives the connection up. Everything else is released first.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from ._buffer import FrameBuffer
from ._connections import abort_connection_soon
from ._ends import EndReason, StreamEnd
from ._faults import report_fault
from ._loop import Timer, cancellation_asked, loop_facts
from ._options import StreamOptions
from ._registry import ActiveStream, StreamRegistry, current_registry
from ._sender import FrameSink, Producer, ShieldedCleanup, StreamSender
from ._server_shutdown import arm_shutdown_watch
from ._sse import read_last_event_id

__all__ = ["StreamBody", "deliver"]

logger = logging.getLogger("streamkit")

ItemT = TypeVar("ItemT")


class StreamBody(Protocol[ItemT]):
    """What the runtime needs of a response: the content, the options, and the frames it
    writes. The response classes implement it; the runtime knows nothing else of them."""

    @property
    def content(self) -> Producer[ItemT] | AsyncIterable[ItemT]:
        """A producer taking a :class:`StreamSender`, or an async iterable of items."""
        ...

    @property
    def options(self) -> StreamOptions:
        """The stream's timers, bounds and buffer."""
        ...

    @property
    def on_end(self) -> Callable[[StreamEnd], None] | None:
        """Called with the stream's end once it is decided and cleaned up."""
        ...

    def start_message(self) -> Message:
        """The ``http.response.start`` message."""
        ...

    def encode(self, item: ItemT) -> bytes:
        """The bytes written for *item*; raises ``TypeError`` or ``ValueError`` naming it."""
        ...

    def heartbeat_frame(self) -> bytes | None:
        """The bytes a heartbeat writes, or ``None`` for no heartbeats; asked for each
        heartbeat written (once, when the stream starts, to know whether there are any)."""
        ...

    def idle_frame(self, last: ItemT | None) -> bytes | None:
        """The bytes sent after ``idle_timeout`` with nothing queued, given the last item."""
        ...

    def closing_frame(self, reason: EndReason) -> bytes | None:
        """The bytes written last when the stream ends early for *reason*, if any."""
        ...


#: Queued frames are joined into one write until it holds this many bytes.
_MAX_BATCH_BYTES = 65536
#: Items a producer writes itself (see _Stream.send()) before it is asked whether it yields.
WRITES_UNASKED = 16
_ABANDONING = frozenset({EndReason.CLIENT_DISCONNECTED, EndReason.SEND_TIMEOUT})
#: The HTTP versions whose connection carries other streams, which a given-up write must not
#: abort. Any other is one request at a time over its connection, whatever the request line
#: claims: h11 takes "HTTP/1.9" and "HTTP/2.0" alike, and the scope says what the client wrote.
_MULTIPLEXED = frozenset({"2", "3"})

#: A send timer that runs this many seconds past its time says the loop was held (a producer
#: blocked it), not that the write under way was: that write is timed again from then on.
LOOP_HELD = 0.25

#: With heartbeats off, a stream silent this long still writes its heartbeat frame: while a
#: pipelined request waits, hypercorn stops reading the socket, and a client that left is
#: then noticed only by a write that fails (the second after it left).
PROBE_INTERVAL = 30.0


class _Stream(Generic[ItemT]):
    """One stream, from its first byte to its end report."""

    # Slots: one per open stream, so its size counts (a dict would add about 1.3 KiB).
    __slots__ = (
        "_asked_turn",
        "_beat_timer",
        "_bound_timer",
        "_call_at",
        "_cancelled",
        "_cleanup_duration",
        "_clock",
        "_completing",
        "_deadline_timer",
        "_excused_since",
        "_fatal",
        "_head_only",
        "_heartbeat_at",
        "_heartbeat_interval",
        "_idle_timeout",
        "_idle_timer",
        "_last_data_at",
        "_listener",
        "_listening",
        "_pending_since",
        "_producer_scope",
        "_receive",
        "_refusal_said",
        "_refused",
        "_registry",
        "_reported",
        "_returned",
        "_send",
        "_send_timeout",
        "_send_timer",
        "_sender_done",
        "_sender_finished",
        "_server",
        "_task_group",
        "_turns",
        "_write_done",
        "_writer",
        "_writes_unasked",
        "_writing",
        "body",
        "buffer",
        "bytes_sent",
        "cancelled",
        "client",
        "discarded_last_event_id",
        "exception",
        "items_sent",
        "last_event_id",
        "last_item",
        "last_item_at",
        "options",
        "path",
        "reason",
        "started_at",
    )

    def __init__(self, body: StreamBody[ItemT], scope: Scope, receive: Receive, send: Send) -> None:
        options = body.options
        facts = loop_facts()
        self._clock = facts.clock
        self._call_at = facts.call_at
        self._turns = facts.turns
        self._cancelled = facts.cancelled
        self._refused = facts.refused
        # The producer's writes of its own since it was last asked whether the loop has
        # turned, and the loop's turn when it was (see send()).
        self._writes_unasked = 0
        self._asked_turn = -1
        self._writing = False  # the producer is writing
        self._write_done: anyio.Event | None = None  # made while the writer waits for it
        self.body = body
        self.options = options
        self.path: str = scope.get("path", "")
        self._head_only = scope.get("method") == "HEAD"
        client = scope.get("client")
        if client and type(client) is not tuple:
            client = (client[0], client[1])
        self.client: tuple[str, int] | None = client or None  # the scope's own, not a copy
        # An HTTP/1 connection whose write is given up is aborted (see _connections); an
        # HTTP/2 or HTTP/3 one carries other streams, which may be reading. The server's address
        # as the scope has it, made into the aborter's key only if that comes to pass.
        self._server: Sequence[Any] | None = None
        if self.client and scope.get("http_version", "1.1") not in _MULTIPLEXED:
            self._server = scope.get("server")
        self.last_event_id, self.discarded_last_event_id = read_last_event_id(Headers(scope=scope))
        self._receive = receive
        self._send = send
        self.buffer = FrameBuffer(options.buffer_size, facts.event, facts.wakeup)
        self.reason: EndReason | None = None
        self.exception: BaseException | None = None
        self.items_sent = 0
        self.bytes_sent = 0
        self.started_at = self._clock()
        self._cleanup_duration = 0.0
        self._returned = False  # the producer's body has returned or raised
        self._refusal_said = False  # that the producer refuses its cancellation
        # Set while the end is decided and the producer's body still runs (see decide()).
        self._bound_timer: Timer | None = None
        self._registry: StreamRegistry | None = None
        self._reported = False
        self._fatal: BaseException | None = None
        self._producer_scope = anyio.CancelScope()
        #: Whether the producer has been cancelled (the end was decided), as its sender asks
        #: per item: an attribute, where the scope's own answer is two calls.
        self.cancelled = False
        # What cancels the writer, until it is abandoned or the stream has ended: its task's
        # handle, whose scope anyio makes for every task anyway (0.6 KiB per stream on
        # asyncio, 0.7 on trio, less than a scope of its own), set once the task is started;
        # let go of then, as the handle keeps the cancellation, whose traceback holds the
        # stream (see _send_all()).
        self._writer: anyio.TaskHandle[None] | None = None
        self._sender_done = False
        # Made only when the producer ends first: an idle stream then holds no event.
        self._sender_finished: anyio.Event | None = None
        self._last_data_at = self.started_at  # when items were last written
        self.last_item: ItemT | None = None
        self.last_item_at = self.started_at
        self._pending_since: float | None = None
        self._completing = False
        self._send_timeout = options.send_timeout
        self._send_timer: Timer | None = None  # set while a write may be under way
        # The write (by when it began) whose send timeout a held loop excused once.
        self._excused_since: float | None = None
        interval = options.heartbeat_interval
        if interval is None:
            interval = PROBE_INTERVAL
        self._heartbeat_interval = interval if body.heartbeat_frame() else None
        self._heartbeat_at = self.started_at
        self._beat_timer: Timer | None = None
        self._idle_timeout = options.idle_timeout
        self._idle_timer: Timer | None = None
        self._deadline_timer: Timer | None = None  # set for a max_duration
        # The watcher waits for the disconnect, or will once it begins: false once it heard
        # it, or was told to return (see listen_instead()).
        self._listening = True
        # What stops the watcher once it began, rather than the task group's scope: on
        # asyncio, anyio keeps the cancellation of a child task that ends cancelled in a
        # reference cycle with its traceback, which holds the stream until a collection.
        self._listener: anyio.CancelScope | None = None
        self._task_group: TaskGroup | None = None  # the stream's, while it runs

    # -- deciding the end ---------------------------------------------------------------------

    def decide(
        self,
        reason: EndReason,
        exception: BaseException | None = None,
        *,
        abandon_sender: bool = True,
    ) -> bool:
        """End the stream for *reason*, unless it was decided already. True if this decided.

        A client that left or stopped reading is not written to any more, unless
        *abandon_sender* is false (the producer decided, and its last items should go out).
        """
        if self.reason is not None:
            if reason in _ABANDONING and abandon_sender and not self._sender_done:
                # Decided before, its last frames still being written (the producer ended
                # the stream itself, with a farewell, say); the client has left or stopped
                # reading since: nothing more is written, and the stream ends now.
                self._abandon_sender()
            return False
        self.reason = reason
        self.exception = exception
        if not self._returned:
            # The producer's body is still running: from now on it has cleanup_timeout to
            # return. A timer, not a task waiting for it: a thousand clients leaving at once
            # would each leave such a task, its event and its scope to tear down.
            bound = self._clock() + self.options.cleanup_timeout
            self._bound_timer = self._call_at(bound, self._time_producer)
        if reason is not EndReason.COMPLETED:
            self._producer_scope.cancel()
            self.cancelled = True
        if reason in _ABANDONING and abandon_sender:
            self._abandon_sender()
        return True

    def end(self, reason: EndReason) -> None:
        """The producer's own end (``send.end()``), unless its body has returned: the return
        decided a completion, its last items still being written, and a call from a task it
        left running must not turn that into another reason."""
        if not self._returned:
            self.decide(reason, abandon_sender=False)

    def _abandon_sender(self) -> None:
        writer, self._writer = self._writer, None
        if self.buffer.reader_waiting:
            # The writer waits for frames, no write of its own under way: it is told to stop
            # there, which spares a cancellation (tens of microseconds) per client that left.
            # It is not woken for it: the buffer's close, once the producer has ended, wakes
            # it to return. The producer's cleanup comes first, whose resources (an upstream
            # call, a transaction) are what the client's leaving should free: with a thousand
            # clients gone at once, their writers' exits would otherwise come before it.
            self.buffer.stop_reader()
        elif writer is not None:
            writer.cancel()
        self._finish_sender()

    def _finish_sender(self) -> None:
        self._sender_done = True
        if self._sender_finished is not None:
            self._sender_finished.set()

    async def send(self, item: ItemT) -> None:
        """Encode *item* and queue it, waiting while the buffer is full, or write it: what a
        producer's ``send`` does (:class:`StreamSender` hands out this very coroutine: one of
        its own around it would cost each item a coroutine and a frame more).

        :raises TypeError: the body cannot encode an item of this type.
        :raises ValueError: the item's value cannot be encoded.
        """
        if self.cancelled:
            # A cancelled producer stops here (unless it sends from a shielded block).
            await anyio.lowlevel.checkpoint()
        frame = self.body.encode(item)
        if self._idle_timeout is not None:
            self._note_item(item)
        turns = self._turns
        if (
            turns is not None
            and self.buffer.reader_waiting
            and not self._writing
            and self.reason is None
            and (self._writes_unasked < WRITES_UNASKED or turns.count != self._asked_turn)
        ):
            # The writer waits on an empty buffer and no write is under way: the producer
            # writes this item itself (see streamkit._loop for where it may), which spares
            # waking the writer for it, a task step per item, if it awaits something between
            # items. One that does not (it never yields) queues them instead, to be joined
            # into one write: after a few items of its own, a producer writes more only once
            # the loop has turned since. Asked only then, not per item: with one stream, a
            # callback per turn of the loop is a callback per item.
            if self._writes_unasked == WRITES_UNASKED:
                self._writes_unasked = 0  # the loop has turned since it was asked
            self._writing = True
            size = len(frame)
            try:
                self._last_data_at = self._begin_write()
                # Counted as the write is handed over (see _send_message()).
                self.bytes_sent += size
                self.items_sent += 1
                await self._send({"type": "http.response.body", "body": frame, "more_body": True})
            except self._refused:
                # ASGI 2.4 servers raise OSError from send() once the client is gone (see
                # LoopFacts.refused for the other): the write was refused, and is not counted.
                self.bytes_sent -= size
                self.items_sent -= 1
                self.decide(EndReason.CLIENT_DISCONNECTED)
                await anyio.lowlevel.checkpoint()  # the producer is cancelled now
            except BaseException:
                # Given up (move_on_after around the send, say): what the server took of it
                # may still wait for the client. The writer writes from now on, whose writes
                # no producer's timeout cuts short and the send timer times, so a client that
                # stopped reading is given up after send_timeout: each given-up write timed
                # afresh by the next, it never was.
                self._turns = None
                raise
            finally:
                # No write is under way now, one given up included: a producer that drops an
                # item its client is slow to take goes on, and the send timer must not time
                # that write out later.
                self._pending_since = None
                self._writing = False
                if self._write_done is not None:
                    self._write_done.set()
                    self._write_done = None
                self._writes_unasked += 1
                if self._writes_unasked == WRITES_UNASKED:
                    self._asked_turn = turns.mark()
            return
        # Offering first spares a coroutine per item (about half the cost of queueing one).
        # It never yields, so the writer takes all that is queued in one write; a producer
        # that never awaits otherwise still yields (and is cancelled) once the buffer is full.
        try:
            if not self.buffer.offer(frame):
                await self.buffer.put(frame)
        except anyio.ClosedResourceError:
            # A send kept past the end (by a task the producer left behind): said in words.
            raise anyio.ClosedResourceError(
                f"stream {printable(self.path)} has ended; its send takes no more items"
            ) from None

    def frame_sink(self) -> FrameSink[ItemT]:
        """Where a fan-out that hands one encoding of an event to every subscriber's stream
        puts frames into this one (see :class:`~streamkit._sender.FrameSink`): the buffer's
        own methods, not the stream's around them, since a fan-out calls one per delivery;
        and ``note`` only where the idle fallback needs the last item."""
        buffer = self.buffer
        note = self._note_item if self._idle_timeout is not None else None
        return FrameSink(buffer.offer, buffer.offer_many, note)

    def _note_item(self, item: ItemT) -> None:
        """*item* was the last queued or written: the idle fallback is made of it."""
        self.last_item, self.last_item_at = item, self._clock()

    def shutdown(self) -> None:
        """End the stream for a graceful shutdown (called by the registry's drain)."""
        self.decide(EndReason.SHUTDOWN)

    def overran(self) -> None:
        """The grace period of a shutdown ended with this stream running (called by the
        registry): a producer whose body still runs after its cancellation refuses it, and
        is named now, before the server cuts it (on asyncio, through its shield, with no
        word of its own) or waits for it (on trio)."""
        if self.cancelled and not self._returned:
            self._say_refusal(
                "it still runs at the end of the server's grace period, after the stream ended "
                f"({self.reason.value if self.reason else '?'}); the server cuts it now, or on "
                "trio waits for it"
            )

    def snapshot(self) -> ActiveStream:
        return ActiveStream(
            path=self.path,
            client=self.client,
            age=self._clock() - self.started_at,
            items_sent=self.items_sent,
            bytes_sent=self.bytes_sent,
        )

    # -- the whole stream ---------------------------------------------------------------------

    async def deliver(self) -> BaseException | None:
        arm_shutdown_watch()
        self._registry = registry = current_registry()
        if not self._head_only:  # a HEAD is answered with headers, and is no stream (_report())
            registry.add(self)
            if registry.draining:
                self.shutdown()
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                self._start_helpers(task_group)
                # Entered and exited by hand: what is exited is the producer's scope at the
                # end, which listen_instead() may have put in the place of this one.
                self._producer_scope.__enter__()
                try:
                    await self._produce()
                except BaseException as exc:
                    if not self._producer_scope.__exit__(type(exc), exc, exc.__traceback__):
                        raise
                else:
                    self._producer_scope.__exit__(None, None, None)
                self.buffer.close()
                if not self._sender_done:
                    self._sender_finished = anyio.Event()
                    await self._sender_finished.wait()
                # Report before leaving the task group: on trio, a write to a client that
                # stopped reading holds the sender until the kernel drops the connection.
                self._report(registry)
                # The writer has finished, or been abandoned.
                self._stop_watcher()
        finally:
            self._task_group = self._writer = None
            self.buffer.close()
            timers = (
                self._beat_timer,
                self._send_timer,
                self._idle_timer,
                self._bound_timer,
                self._deadline_timer,
            )
            for timer in timers:
                if timer is not None:
                    timer.cancel()
            if not self._reported:
                # Cancelled from outside: the server is tearing the connection down.
                self.decide(EndReason.SHUTDOWN)
                self._report(registry)
        fatal = self._fatal
        if fatal is not None and not registry.request_stop(fatal):
            # No streamkit server to stop gracefully: the server running the app does what
            # it does with it (both of hypercorn's workers stop).
            raise fatal
        return self.exception if self.reason is EndReason.ERROR else None

    def _start_helpers(self, task_group: TaskGroup) -> None:
        task_group.start_soon(self._watch_connection)
        self._writer = task_group.start_soon(self._send_all)
        self._time_heartbeat()
        if self._idle_timeout is not None:
            self._idle_timer = self._call_at(self.started_at + self._idle_timeout, self._time_idle)
        max_duration = self.options.max_duration
        if max_duration is not None:
            # A timer that decides the end, not a deadline on the producer's scope: that would
            # cancel the producer without deciding anything, and one that refused the
            # cancellation would never be bounded by cleanup_timeout.
            due = self.started_at + max_duration
            self._deadline_timer = self._call_at(due, self._time_deadline)

    async def _produce(self) -> None:
        content = self.body.content
        sender: StreamSender[ItemT] = StreamSender(self)
        closable: object = content  # what to aclose(): the iterator once there is one
        failure: BaseException | None = None  # what the resources' exits are told
        try:
            if self.reason is not None or self._head_only:
                pass  # drained before it began, or a HEAD request: the producer never runs
            elif callable(content) and not hasattr(content, "__aiter__"):
                result: object = content(sender)
                if not inspect.isawaitable(result):
                    raise TypeError(
                        "a stream producer must be an async function taking send, "
                        f"got {content!r} returning {type(result).__name__}"
                    )
                returned = await result
                if returned is not None:
                    # Items returned rather than sent (an async generator, say): sent
                    # nothing, the stream would look complete.
                    raise TypeError(
                        f"stream producer {content!r} returned {returned!r}; a producer "
                        "taking send sends its items with it and returns None"
                    )
            else:
                assert isinstance(content, AsyncIterable)
                closable = iterator = aiter(content)
                async for item in iterator:
                    await sender(item)
        except Exception as exc:
            failure = exc
            self._fail(exc)
        except BaseException as exc:
            failure = exc  # a transaction entered through send rolls back
            if not _only(exc, self._cancelled) or not (self.cancelled or cancellation_asked()):
                # Not a cancellation of the stream or of its task: KeyboardInterrupt, a
                # GeneratorExit raised by hand, another loop's cancellation, one that nothing
                # asked for (a future cancelled elsewhere), a group holding one of them or
                # an error beside a cancellation. What failed is reported as any error is.
                cancelled = self.cancelled
                self._fail(exc)
                if cancelled or not _holds(exc, self._cancelled) or not cancellation_asked():
                    return  # the cancellation held, if any, is the stream's own, or no one's
                # A cancellation from outside the stream (the server's) rides with it:
                # raised on, not swallowed.
            elif self.cancelled and _cancelled_during_cancellation(exc, self._cancelled):
                report_fault(
                    f"stream {printable(self.path)}: producer {self.producer_name()} awaited "
                    "in its cleanup after the stream was cancelled, and that await was cancelled "
                    "too, so the cleanup did not finish. Register awaited cleanup with "
                    "send.push_async_callback() or send.enter_async_context(), or wrap it "
                    "in `with streamkit.shielded_cleanup():`"
                )
            raise
        finally:
            self._returned = True
            if self._bound_timer is not None:
                self._bound_timer.cancel()  # the body returned: its cleanup has its own bound
                self._bound_timer = None
            aclose = getattr(closable, "aclose", None)
            stack = sender._resources
            if aclose is not None or stack is not None:  # else no scope, and no timer, for none
                started = self._clock()
                # shielded_cleanup() on the stream's clock: one lookup of the loop fewer for
                # each stream that ends, a thousand at once when as many clients leave.
                with ShieldedCleanup(self.options.cleanup_timeout, self._clock):
                    await self._close(aclose)
                    if stack is not None:
                        # The exits see how the producer ended; one that would suppress it is
                        # ignored.
                        await self._close(partial(stack.__aexit__, *_exc_info(failure)))
                self._cleanup_duration = self._clock() - started
            # What is entered through send from now on would never be exited: refused.
            sender._ended = f"stream {printable(self.path)} has ended"
            # The failure's traceback holds this frame, which holds the failure: a cycle that
            # only the garbage collector would free, and with it every frame of the stream.
            failure = None

    def _fail(self, exc: BaseException) -> None:
        """The producer raised *exc*, no cancellation of the stream's: end the stream as an
        error, or log it if the end was decided already."""
        if _holds(exc, (KeyboardInterrupt, SystemExit)):
            # Python's word that the process must stop, even inside a group. The stream ends
            # as an error, and the process is stopped once that is reported (see deliver()).
            self._fatal = exc
        if not self.decide(EndReason.ERROR, exc):
            logger.error(
                "stream %s: producer raised after the stream had ended (%s)",
                printable(self.path),
                self.reason.value if self.reason else "?",
                exc_info=exc,
            )

    def producer_name(self) -> str:
        """The producer's qualified name, for a log line: an App's route hands the function
        its request through a ``functools.partial``, whose repr would name the request too."""
        content = self.body.content
        while isinstance(content, partial):
            content = content.func
        return str(getattr(content, "__qualname__", None) or repr(content))

    async def _close(self, aclose: Callable[[], Awaitable[object]] | None) -> None:
        if aclose is None:
            return
        try:
            await aclose()
        except Exception as exc:
            logger.error("stream %s: cleanup raised", printable(self.path), exc_info=exc)
        except BaseException as exc:
            if _only(exc, self._cancelled):
                raise  # the cleanup's own deadline, for its shield to take
            # A KeyboardInterrupt from a generator's finally, say: logged as any cleanup
            # error, and the process stopped as when the producer raises it (see deliver()).
            logger.error("stream %s: cleanup raised", printable(self.path), exc_info=exc)
            if self._fatal is None and _holds(exc, (KeyboardInterrupt, SystemExit)):
                self._fatal = exc

    # -- the tasks beside the producer --------------------------------------------------------

    async def _watch_connection(self) -> None:
        # Only listens: the send and idle timeouts, the heartbeats and the producer's bound
        # are timers of the loop's own, which act without waking a task. A stream that ends
        # with its client still there stops it through its scope (see __init__).
        # Cancelling receive() is safe: servers hold the message until it is taken.
        if not self._listening:
            return  # told to before it began: no scope, no wait
        # Made as it begins, kept where _stop_watcher() finds it.
        with anyio.CancelScope() as self._listener:
            while (await self._receive())["type"] != "http.disconnect":
                pass
            self._listening = False
            self.decide(self._disconnect_reason())

    def _stop_watcher(self) -> None:
        """Stop the watcher: one that has not begun returns when it does, and one waiting for
        the disconnect is cancelled. One that heard it has returned, and is spared a
        cancellation (tens of microseconds per stream)."""
        if self._listening:
            self._listening = False
            if self._listener is not None:
                self._listener.cancel()
                # Let go of it: kept, a cancelled scope holds its cancellation's message.
                self._listener = None

    def _disconnect_reason(self) -> EndReason:
        return EndReason.COMPLETED if self._completing else EndReason.CLIENT_DISCONNECTED

    async def listen_instead(self, stop: anyio.CancelScope, *, unscoped: bool = False) -> bool:
        """Listen for the disconnect in the calling task, the producer's, in place of the
        watcher's, until *stop* is cancelled or the stream ends; then the watcher listens again
        if the stream goes on. True if the disconnect was heard: the stream has ended, and the
        producer, cancelled as for any end, had best return at once, which spares it the
        cancellation's exception through its frames and a turn of the loop.

        For a producer with nothing to do but wait while its stream's buffer is filled from
        elsewhere (a subscriber the broadcast hub feeds): its task would only wait, and the
        watcher's task, with its scope and its wait, is spared for as long as it listens (about
        4 KiB per subscriber). A watcher that has not begun yet, as when the producer gets
        here before its first wait, just returns; one that has is cancelled.

        *unscoped*: the caller vouches that the producer has entered no cancel scope that is
        still open here (``topic_response``'s producer). *stop* then takes the place of the
        producer's own scope while it listens, rather than being entered inside it: the end,
        once decided, cancels *stop*, and the producer with it; *stop* cancelled before that
        gives the producer a new scope of its own, and it goes on. An idle subscriber holds
        one cancel scope fewer (0.6 KiB on asyncio, 0.7 on trio). Were a scope of the
        producer's still open, exiting its own out of turn would be an error (on trio, one
        that leaves the task's cancellation state broken), hence the caller's word for it.
        """
        self._stop_watcher()
        # (Cancelled already, the end decided while the producer ran on to here without
        # waiting: its scope is kept, and the first wait in it raises.)
        swapped = unscoped and not self.cancelled
        if swapped:
            # The producer's scope (deliver()'s, or one made here after a stop): not cancelled.
            self._producer_scope.__exit__(None, None, None)
            self._producer_scope = stop
        stop.__enter__()
        try:
            # The loop written out here as in the watcher: a coroutine of its own would stay
            # on every subscriber's stack.
            while (await self._receive())["type"] != "http.disconnect":
                pass
            # Swapped, *stop* stays the producer's scope, cancelled if the end is (not on
            # COMPLETED).
            heard = self.decide(self._disconnect_reason())
        except BaseException as exc:
            if swapped and (self.cancelled or not stop.cancel_called):
                # The end was decided (the producer is cancelled: *stop* stays its scope,
                # and deliver() exits it), or this is not *stop*'s doing at all.
                raise
            try:
                if not stop.__exit__(type(exc), exc, exc.__traceback__):
                    raise  # not *stop*'s doing, or a cancellation from outside as well
            finally:
                if swapped:
                    # Stopped, the stream going on: the producer goes on in a scope of its own.
                    self._producer_scope = anyio.CancelScope()
                    self._producer_scope.__enter__()
            return False
        else:
            if not swapped:
                stop.__exit__(None, None, None)
            return heard
        finally:
            self._listen_again(stop)

    def _listen_again(self, stop: anyio.CancelScope) -> None:
        if stop.cancel_called and self.reason is None and self._task_group is not None:
            # Stopped, the stream going on: the watcher listens again.
            self._listening = True
            self._task_group.start_soon(self._watch_connection)

    def _time_producer(self) -> None:
        """The producer's body still runs ``cleanup_timeout`` after the end was decided:
        report the stream ended, and leave the producer to itself."""
        self._bound_timer = None
        if not self._returned and not self._reported:
            self._abandon_producer()

    def _abandon_producer(self) -> None:
        assert self.reason is not None
        assert self._registry is not None
        self._say_refusal(
            f"it still runs {self.options.cleanup_timeout} s (cleanup_timeout) after the "
            f"stream ended ({self.reason.value}); the stream is reported ended and the producer "
            "abandoned"
        )
        self.buffer.close()  # the sender ends the body, unless the client is gone
        self._report(self._registry)

    def _say_refusal(self, what: str) -> None:
        """Report the producer's refusal of its cancellation (*what* it did), once."""
        if self._refusal_said:
            return
        self._refusal_said = True
        report_fault(
            f"stream {printable(self.path)}: producer {self.producer_name()} refuses "
            f"cancellation: {what}. It must not catch the cancellation "
            "(anyio.get_cancelled_exc_class()) without raising it again, nor shield an await "
            "that does not end"
        )

    def _time_deadline(self) -> None:
        """``max_duration`` has passed: end the stream, unless its producer has returned (its
        last items are being written, and the stream completes when they are)."""
        self._deadline_timer = None
        if not self._returned:
            self.decide(EndReason.DEADLINE)

    def _time_idle(self) -> None:
        """Send the idle fallback if no item was sent for ``idle_timeout``, and set the timer
        for the next check, unless the idle timer has nothing more to do."""
        self._idle_timer = None
        assert self._idle_timeout is not None
        if self._returned or self.reason is not None:
            # The producer is done, not idle: its cleanup may still run (a resource's slow
            # exit), and a stale item then would follow its last one, or its farewell's
            # reason be turned into DEADLINE by end_when_idle.
            return
        if self._clock() >= self.last_item_at + self._idle_timeout and not self._on_idle():
            return
        self._idle_timer = self._call_at(self.last_item_at + self._idle_timeout, self._time_idle)

    def _on_idle(self) -> bool:
        """Send the idle fallback; false once the idle timer has nothing more to do."""
        try:
            frame = self.body.idle_frame(self.last_item)
        except Exception as exc:
            self.decide(EndReason.ERROR, exc)
            return False
        if frame is not None and not self._enqueue(frame):
            return False  # the body is ending
        if self.options.end_when_idle:
            self.decide(EndReason.DEADLINE)
            return False
        self.last_item_at = self._clock()
        return True

    def _enqueue(self, frame: bytes | None) -> bool:
        """Queue *frame* unless the buffer is full (the client is behind: nothing is needed);
        false once the producer has finished and the buffer is closed."""
        try:
            self.buffer.offer(frame)  # full: the client is behind, and needs no heartbeat
        except anyio.ClosedResourceError:
            return False
        return True

    async def _send_message(self, message: Message, *, items: int = 0, size: int = 0) -> None:
        """Send *message* to the client, timed by the send timeout, and count the *items* and
        the *size* bytes it carries. Items put the next heartbeat off (a heartbeat's own write
        does not: heartbeats keep the schedule their timer sets). The clock is read once for
        both."""
        if self._sender_done:
            # Set before the end is written only when the writer is abandoned (cancelled, or
            # stopped at the buffer, where it returns before it gets here): the client left
            # or stopped reading, and nothing more is written, least of all the end of the
            # body, which would make a cut stream look whole. The cancellation alone could
            # come too late: on asyncio, a write that does not block never yields. (A flag of
            # the stream's own, asked per write: on trio, cancel_called reads the clock.)
            await anyio.lowlevel.checkpoint()
        now = self._begin_write()
        if items:
            self._last_data_at = now
        # Counted as the write is handed to the server, not once it returns: a write to a
        # client that stopped reading is given up unfinished (on trio, never returns), though
        # the kernel may have sent much of it, and items the client read would go uncounted.
        # One the server refuses (the client gone) is not counted.
        self.items_sent += items
        self.bytes_sent += size
        try:
            await self._send(message)
        except self._refused:
            self.items_sent -= items
            self.bytes_sent -= size
            raise
        self._pending_since = None

    def _begin_write(self) -> float:
        """Note that a write begins now, for the send timeout; return the time."""
        self._pending_since = now = self._clock()
        timeout = self._send_timeout
        if timeout is not None and self._send_timer is None:
            # One timer for the writes that follow, not one per write: when it goes off, it
            # looks at the write under way then, if any.
            self._send_timer = self._call_at(now + timeout, self._time_send)
        return now

    def _time_send(self) -> None:
        """Give the write under way up if it has been blocked for ``send_timeout``, which ends
        the stream; else time the one under way, or, with none, stop until the next write. A
        timer, not a deadline on a task's wait: that would wake the task (a cancellation) once
        per send timeout after the writes, even when every one of them has long completed."""
        self._send_timer = None
        since, timeout = self._pending_since, self._send_timeout
        if since is None or timeout is None:
            return
        due = since + timeout
        now = self._clock()
        if now < due:
            self._send_timer = self._call_at(due, self._time_send)
            return
        if now - due > LOOP_HELD and since != self._excused_since:
            # The timer runs this late only if the loop ran nothing meanwhile (a producer
            # that called time.sleep(), say): the write could not finish, whatever its client
            # did, and its completion waits behind this callback. Timed from now instead, so
            # one held loop does not give up every client that was being written to; once
            # per write, so that a loop late at every timer (a server past its capacity)
            # still gives a stalled client up, at twice the timeout.
            self._pending_since = self._excused_since = now
            self._send_timer = self._call_at(now + timeout, self._time_send)
            return
        self.decide(EndReason.SEND_TIMEOUT)
        self._abandon_sender()
        server, client = self._server, self.client
        if server and client:
            abort_connection_soon((server[0], server[1]), client)

    async def _write(self, body: bytes) -> None:
        message = {"type": "http.response.body", "body": body, "more_body": True}
        await self._send_message(message, size=len(body))

    async def _send_all(self) -> None:
        body = self.body
        try:
            await self._send_message(body.start_message())
            # Write what the producer has queued meanwhile in one message: fewer, larger
            # writes when the producer is ahead, and no added latency when it is not.
            buffer = self.buffer
            while True:
                if not (frames := buffer.take_nowait(_MAX_BATCH_BYTES)):
                    # The wait for frames written out here, not a coroutine that waits
                    # and takes: that would stay on every idle stream's stack.
                    if (readable := buffer.readable()) is None:
                        break
                    try:
                        await readable
                    except BaseException:
                        buffer.wait_cancelled()
                        raise
                    continue
                if self._writing:  # the producer writes an item itself: after it
                    self._write_done = done = anyio.Event()
                    await done.wait()
                # One item, as every delivery of a fan-out is, is sent as it is: the
                # general case's calls would be paid per event there.
                first = frames[0]
                if first is not None and len(frames) == 1:
                    data, items = first, 1
                else:
                    data, items = self._join(frames)
                message = {"type": "http.response.body", "body": data, "more_body": True}
                await self._send_message(message, items=items, size=len(data))
            if self._sender_done:
                return  # abandoned while it waited for frames: nothing more is written
            if self.reason is not None and (closing := self._closing_frame(self.reason)):
                await self._write(closing)
            # The body is all handed over: a disconnect the server reports from here on is
            # the normal end of the exchange (trio's worker reports it before this returns).
            self._completing = True
            end: Message = {"type": "http.response.body", "body": b"", "more_body": False}
            await self._send_message(end)
            self.decide(EndReason.COMPLETED)
            self._finish_sender()
        except self._refused:
            # ASGI 2.4 servers raise OSError from send() once the client is gone (see
            # LoopFacts.refused for the other).
            self.decide(EndReason.CLIENT_DISCONNECTED)
        except self._cancelled as exc:
            # Cancelled through its handle (see _abandon_sender()), which keeps the
            # cancellation. On trio the cancellation is made in the stack of the code that
            # cancelled, and its traceback holds those frames, one of them the handle's own
            # cancel(), which holds the handle: a cycle that only the collector frees, and with
            # it the stream. Raised on without that traceback: the same cancellation.
            raise exc.with_traceback(None)  # noqa: B904  (the same exception, raised on)

    def _closing_frame(self, reason: EndReason) -> bytes | None:
        """The body's closing frame for *reason*, or ``None`` if it cannot be encoded now."""
        try:
            return self.body.closing_frame(reason)
        except Exception:
            # Checked when the response was made, but encoded again now: an encoder with
            # state, or a closing item changed since, may fail. The body still ends, whole.
            logger.exception(
                "stream %s: its %s farewell could not be encoded; the body ends without it",
                printable(self.path),
                reason.value,
            )
            return None

    def _join(self, frames: tuple[bytes | None, ...]) -> tuple[bytes, int]:
        """The bytes of *frames* (``None``: a heartbeat, made now), and how many are items."""
        if frames[0] is not None:  # else a heartbeat, most often alone: a quiet stream's
            try:
                # No heartbeat among them, as in a burst of a fan-out. Found by the join
                # failing, not by counting first: counting compares every frame with None.
                return b"".join(frames), len(frames)  # type: ignore[arg-type]
            except TypeError:
                pass
        beats = frames.count(None)
        # Asked per write, not once: a heartbeat may carry the time it was sent.
        beat = self.body.heartbeat_frame() or b""
        return b"".join([beat if f is None else f for f in frames]), len(frames) - beats

    def _time_heartbeat(self) -> None:
        """Queue a heartbeat if the stream has been silent for the interval, and set the timer
        for the next check. A timer, not a deadline on the writer's wait: the writer waits
        once per write, and a fan-out writes every event."""
        interval = self._heartbeat_interval
        if interval is None:
            return
        now = self._clock()
        due = max(self._heartbeat_at, self._last_data_at + interval)
        if now >= due:
            # Timed from the beat, not from its write: only items put the next one off.
            self._heartbeat_at = due = now + interval
            if not self._enqueue(None):
                return  # the body is ending: no more heartbeats
        self._beat_timer = self._call_at(due, self._time_heartbeat)

    # -- the report -----------------------------------------------------------------------------

    def _report(self, registry: StreamRegistry) -> None:
        assert self.reason is not None
        if self._reported:
            return  # abandoned earlier, its producer refusing cancellation
        self._reported = True
        if self._head_only:
            # The producer never ran: counted as a completed stream, a HEAD (a load balancer's
            # probe, say) would swell the completions and their statistics with streams that
            # sent nothing. Not tracked, logged or handed to on_end.
            return
        end = StreamEnd(
            reason=self.reason,
            path=self.path,
            duration=self._clock() - self.started_at,
            items_sent=self.items_sent,
            bytes_sent=self.bytes_sent,
            cleanup_duration=self._cleanup_duration,
            exception=self.exception if self.reason is EndReason.ERROR else None,
        )
        if end.reason is EndReason.ERROR:
            logger.error(
                "stream %s ended: error after %.3f s, %d items, %d bytes",
                printable(end.path),
                end.duration,
                end.items_sent,
                end.bytes_sent,
                exc_info=end.exception,
            )
        else:
            logger.info(
                "stream %s ended: %s after %.3f s, %d items, %d bytes",
                printable(end.path),
                end.reason.value,
                end.duration,
                end.items_sent,
                end.bytes_sent,
            )
        registry.finish(self, end)
        on_end = self.body.on_end
        if on_end is not None:
            try:
                on_end(end)
            except Exception:
                logger.exception("stream %s: on_end callback raised", printable(self.path))


def printable(text: str) -> str:
    """*text* with every character that is not printable escaped (``\\n``, ``\\x85``,
    ``\\u2028``): a request path written to a log cannot start a forged line there."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _exc_info(
    exc: BaseException | None,
) -> tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]:
    return (type(exc), exc, exc.__traceback__) if exc is not None else (None, None, None)


def _holds(
    exc: BaseException, kinds: type[BaseException] | tuple[type[BaseException], ...]
) -> bool:
    """Whether *exc* is one of *kinds*, or a group holding one at any depth."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(kinds)[0] is not None
    return isinstance(exc, kinds)


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether *exc* is a *kind*, or a group holding nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(kind)[1] is None
    return isinstance(exc, kind)


def _cancelled_during_cancellation(exc: BaseException, cancelled: type[BaseException]) -> bool:
    """Whether *exc*, a cancellation (of the class *cancelled*), was raised while an earlier
    one was being handled: an ``await`` in a plain ``finally`` or ``except`` of a cancelled
    producer."""
    if not isinstance(exc, cancelled):
        return False
    context = exc.__context__
    while context is not None:
        if isinstance(context, cancelled):
            return True
        context = context.__context__
    return False


def deliver(
    body: StreamBody[ItemT], scope: Scope, receive: Receive, send: Send
) -> Coroutine[None, None, BaseException | None]:
    """Deliver *body*'s stream on one connection: await it, and it returns once the stream
    has ended, with the exception it ended with if it ended with an error (logged and
    reported already), else ``None``. (A plain function returning the stream's coroutine: a
    coroutine of its own around it would stay on every open stream's stack.)"""
    return _Stream(body, scope, receive, send).deliver()
