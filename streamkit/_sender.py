"""What a producer is handed, and the shielded block for awaited cleanup.

A producer awaits ``send(item)`` for each item; what it enters through ``send`` is exited
after it ends, in its own task, shielded from the cancellation that ended it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, AsyncExitStack
from types import TracebackType
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar

import anyio

from ._checks import check_duration
from ._ends import EndReason

__all__ = ["FrameSink", "Producer", "ShieldedCleanup", "StreamSender", "shielded_cleanup"]

logger = logging.getLogger("streamkit")

#: A sender that takes ``ServerSentEvent | str`` serves a producer that only sends ``str``.
ItemT_contra = TypeVar("ItemT_contra", contravariant=True)
T = TypeVar("T")


class FrameSink(NamedTuple, Generic[T]):
    """Where a fan-out within streamkit (the broadcast wing), which encodes an event once for
    all its subscribers, puts frames into one subscriber's stream: items already encoded.
    Neither call waits; both raise :exc:`anyio.ClosedResourceError` once the stream is ending.
    """

    #: ``offer(frame)`` queues *frame* if the stream's buffer has room, and is false if it is
    #: full (nothing is queued: the caller decides what then).
    offer: Callable[[bytes], bool]
    #: ``offer_many(frames, size)`` queues as many of *frames* as there is room for, in
    #: order, and returns how many: a burst in one call, the writer woken once. *size* is the
    #: bytes *frames* hold, summed once by the caller for all its subscribers.
    offer_many: Callable[[Sequence[bytes], int], int]
    #: ``note(item)``, unless ``None``, is to be called with the item of the last frame queued
    #: so: the stream's idle fallback is made of it.
    note: Callable[[T], None] | None


class _Queue(Protocol[ItemT_contra]):
    """What a sender needs of its stream (the runtime's stream implements it)."""

    last_event_id: str | None
    discarded_last_event_id: str | None

    def send(self, item: ItemT_contra) -> Coroutine[Any, Any, None]: ...

    def frame_sink(self) -> FrameSink[Any]: ...

    def listen_instead(
        self, stop: anyio.CancelScope, *, unscoped: bool = ...
    ) -> Coroutine[Any, Any, bool]: ...

    def end(self, reason: EndReason) -> None: ...


def shielded_cleanup(cleanup_timeout: float = 5.0) -> AbstractContextManager[anyio.CancelScope]:
    """Run awaited cleanup that a cancellation cannot interrupt, for at most
    *cleanup_timeout* seconds.

    Once a stream is cancelled, the first ``await`` in a plain ``finally`` raises the
    cancellation again, so ``finally: await client.aclose()`` never closes anything. Inside
    this block it does::

        try:
            async for chunk in upstream:
                yield chunk
        finally:
            with streamkit.shielded_cleanup(2.0):
                await upstream.aclose()

    :param cleanup_timeout: seconds after which the cleanup is cancelled after all.
    :raises TypeError: *cleanup_timeout* is not a number.
    :raises ValueError: *cleanup_timeout* is not positive and finite.
    """
    check_duration("shielded_cleanup's cleanup_timeout", cleanup_timeout)
    return ShieldedCleanup(cleanup_timeout, anyio.current_time)


class ShieldedCleanup:
    """The block :func:`shielded_cleanup` returns: entered, a shielded cancel scope whose
    deadline is *cleanup_timeout* seconds from then on *clock*; a warning is logged if the
    deadline cancelled the cleanup.

    A class, not a generator: the runtime enters one for every stream that ends with cleanup
    to run, a thousand at once when as many clients leave, and passes its loop's clock, which
    anyio would look up.
    """

    __slots__ = ("_clock", "_scope", "_timeout")

    def __init__(self, cleanup_timeout: float, clock: Callable[[], float]) -> None:
        self._timeout = cleanup_timeout
        self._clock = clock
        self._scope: anyio.CancelScope | None = None

    def __enter__(self) -> anyio.CancelScope:
        scope = anyio.CancelScope(deadline=self._clock() + self._timeout, shield=True)
        self._scope = scope
        return scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        scope = self._scope
        assert scope is not None, "exited before it was entered"
        self._scope = None
        suppressed = bool(scope.__exit__(exc_type, exc, traceback))
        if scope.cancelled_caught:
            logger.warning("cleanup did not finish within %.3f s and was cancelled", self._timeout)
        return suppressed


class StreamSender(Generic[ItemT_contra]):
    """What a producer is handed: ``await send(item)`` queues one item for the client.

    It waits while the buffer between the producer and the socket is full. Resources entered
    through it are closed after the producer ends, whatever the end, in the producer's own task
    and shielded from cancellation for up to ``cleanup_timeout``.
    """

    __slots__ = ("_ended", "_resources", "_stream")

    def __init__(self, stream: _Queue[ItemT_contra]) -> None:
        self._stream = stream
        # Set by the stream once its cleanup has run ("stream /feed has ended"): a resource
        # entered after that would never be exited.
        self._ended: str | None = None
        # Made by the first resource entered: most producers enter none, and every open
        # stream would hold an empty one.
        self._resources: AsyncExitStack | None = None

    def __call__(self, item: ItemT_contra) -> Coroutine[Any, Any, None]:
        """Queue *item*; it is encoded now, so an item that cannot be encoded raises here.

        ``await send(item)``: the stream's own coroutine, which queues the item or writes it
        (a coroutine of the sender's around it would cost every item one more).

        :raises TypeError: the response cannot encode an item of this type.
        :raises ValueError: the item's value cannot be encoded.
        :raises anyio.ClosedResourceError: the stream has ended (a task kept this sender past
            the producer's end), saying so.
        """
        return self._stream.send(item)

    @property
    def _frame_sink(self) -> FrameSink[Any]:
        """Where a fan-out within streamkit puts frames into this stream (see
        :class:`FrameSink`); not for producers."""
        return self._stream.frame_sink()

    def _listen_instead(
        self, stop: anyio.CancelScope, *, unscoped: bool = False
    ) -> Coroutine[Any, Any, bool]:
        """Listen for the client's disconnect in this task, in place of the stream's watcher,
        until *stop* is cancelled or the stream ends: for a producer whose buffer is filled
        from elsewhere (:attr:`_frame_sink`) and that has nothing to do but wait meanwhile,
        whose task then does the watcher's job. True once the disconnect was heard: the
        producer, cancelled, had best return at once. *unscoped*: the producer has no cancel
        scope of its own open here, and *stop* may stand in for the stream's (see the
        runtime's ``listen_instead``). For the broadcast wing; not for producers.
        (The stream's coroutine itself: one of its own around it would stay on every
        subscriber's stack.)"""
        return self._stream.listen_instead(stop, unscoped=unscoped)

    @property
    def last_event_id(self) -> str | None:
        """The ``Last-Event-ID`` the client sent, validated; ``None`` if absent or invalid."""
        return self._stream.last_event_id

    @property
    def discarded_last_event_id(self) -> str | None:
        """The ``Last-Event-ID`` header the client sent and :attr:`last_event_id` ignored as
        invalid (too long, a control character, not UTF-8), or ``None``. A client that sent
        one expected to resume: tell it that it cannot, rather than start it silently."""
        return self._stream.discarded_last_event_id

    async def enter_async_context(self, manager: AbstractAsyncContextManager[T]) -> T:
        """Enter *manager* now and exit it when the stream ends, shielded.

        :raises RuntimeError: the stream's cleanup has run (a task kept this sender past the
            producer's end); *manager* is not entered.
        """
        return await self._exit_stack("enter_async_context").enter_async_context(manager)

    def push_async_callback(self, callback: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Await ``callback(*args)`` when the stream ends, shielded (last pushed, first run).

        :raises RuntimeError: the stream's cleanup has run, and *callback* would never be.
        """
        self._exit_stack("push_async_callback").push_async_callback(callback, *args)

    def _exit_stack(self, method: str) -> AsyncExitStack:
        if self._ended is not None:
            raise RuntimeError(
                f"{self._ended} and its cleanup has run: send.{method}() after that would "
                "never be exited; enter resources from the producer while it runs"
            )
        if self._resources is None:
            self._resources = AsyncExitStack()
        return self._resources

    def end(self, reason: EndReason) -> None:
        """End the stream for *reason*, decided by the producer itself: what is queued is still
        written, then the body ends. The producer is cancelled at its next ``await``, so call
        this last.

        Has no effect if the stream's end was already decided, or once the producer has
        returned (its return decided a completion): a task it left running cannot change how
        the stream is reported, or have it counted twice.

        For example, a subscriber that cannot keep up is told so, and its end is counted as
        :attr:`~streamkit.EndReason.SEND_TIMEOUT` rather than a completion.
        """
        self._stream.end(reason)


#: A producer: an async function handed a :class:`~streamkit.StreamSender`.
Producer: TypeAlias = Callable[[StreamSender[ItemT_contra]], Awaitable[None]]
