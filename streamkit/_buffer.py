"""The bounded buffer between a stream's producer and its writer.

It does what an anyio memory object stream of the same size does for one reader, except that
the reader takes everything queued in one call, to join it into one write. That is why it is
not a memory object stream: taking a batch from one costs a ``receive_nowait`` (and, at the
end of the batch, an exception) per frame, and a reader waiting on one holds about 3 KiB,
against one wakeup here. Both add up over 10,000 idle streams.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import anyio

__all__ = ["FrameBuffer", "Waitable"]


class Waitable(Protocol):
    """An event as the buffer uses it: the loop's own event, or its wakeup (which is set, and
    waited on once, like an event; set before its wait, the wait returns at once)."""

    def set(self) -> object: ...

    def wait(self) -> Awaitable[object]: ...


class FrameBuffer:
    """Frames queued by the producer (``None`` stands for a heartbeat), taken by the writer.

    :param capacity: how many frames may wait; with 0, a frame is only handed to a waiting
        reader.
    :param event: makes the events a producer waits on for room: the loop's own (see
        ``_loop``), which spare anyio finding the loop for each one made.
    :param wakeup: makes what the one reader waits on for frames, made for each wait: the
        loop's own wakeup, lighter than an event (see ``_loop.LoopFacts.wakeup``).
    """

    __slots__ = (
        "_bytes",
        "_capacity",
        "_closed",
        "_event",
        "_frames",
        "_readable",
        "_reader_stopped",
        "_wakeup",
        "_writable",
    )

    def __init__(
        self, capacity: int, event: Callable[[], Waitable], wakeup: Callable[[], Waitable]
    ) -> None:
        self._capacity = capacity
        self._event = event
        self._wakeup = wakeup
        self._frames: list[bytes | None] = []
        # What the frames queued hold, heartbeats counted as nothing: kept as they come, so
        # a burst of hundreds is not summed again by the writer that takes it.
        self._bytes = 0
        self._closed = False
        self._reader_stopped = False
        # Each exists only while someone waits on it: an idle stream holds one, not two.
        self._readable: Waitable | None = None
        self._writable: Waitable | None = None

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def reader_waiting(self) -> bool:
        """Whether the reader waits for a frame (the buffer is then empty)."""
        return self._readable is not None

    def offer(self, frame: bytes | None) -> bool:
        """Queue *frame* if there is room; false if the buffer is full (nothing is queued).
        Not an exception for a full buffer: a fan-out offers a frame to every subscriber,
        and one that is behind is no error.

        :raises anyio.ClosedResourceError: the buffer was closed.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        frames = self._frames
        # Full, unless a writer waits on an empty buffer: the frame is then handed to it.
        if len(frames) >= self._capacity and (frames or self._readable is None):
            return False
        frames.append(frame)
        if frame is not None:
            self._bytes += len(frame)
        if self._readable is not None:
            self._readable.set()
            self._readable = None
        return True

    def offer_many(self, batch: Sequence[bytes], size: int | None = None) -> int:
        """Queue as many of *batch*'s frames as there is room for, in order; return how many
        (the first that many of *batch*). The reader is woken once for them all: a fan-out
        hands a burst of events to each subscriber in one call, not one per event.

        :param size: the bytes *batch* holds, if known: a fan-out sums them once for all its
            subscribers.
        :raises anyio.ClosedResourceError: the buffer was closed.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        frames = self._frames
        room = self._capacity - len(frames)
        if room <= 0:
            if frames or self._readable is None:
                return 0
            room = 1  # no room, but a reader waits on an empty buffer: as offer() does
        if room < len(batch):
            batch, size = batch[:room], None
        frames.extend(batch)
        self._bytes += sum(map(len, batch)) if size is None else size
        if self._readable is not None and batch:
            self._readable.set()
            self._readable = None
        return len(batch)

    async def put(self, frame: bytes | None) -> None:
        """Queue *frame*, waiting while the buffer is full.

        :raises anyio.ClosedResourceError: the buffer was closed.
        """
        while not self.offer(frame):
            if self._writable is None:
                self._writable = self._event()
            await self._writable.wait()

    def take_nowait(self, max_bytes: int) -> tuple[bytes | None, ...]:
        """Take the frames queued, in order, until they hold *max_bytes* (at least one frame);
        ``()`` if none is, or the reader was stopped.

        A tuple, and the buffer keeps its list: a tuple of bytes is no container the garbage
        collector follows once it has seen it, where a list taken per write, and one left
        in its place, would each stay tracked until the next write. Those outlive a quiet
        stream's collections of the young objects, and a fan-out makes two per subscriber per
        event, each bringing the next full collection nearer.
        """
        frames = self._frames
        if not frames or self._reader_stopped:
            return ()
        count = len(frames)
        if count > 1 and self._bytes > max_bytes:
            size = count = 0
            for frame in frames:
                count += 1
                if frame is not None:
                    size += len(frame)
                    if size >= max_bytes:
                        break
            self._bytes -= size
        else:
            self._bytes = 0  # all of them
        taken = tuple(frames[:count]) if count < len(frames) else tuple(frames)
        del frames[:count]
        if self._writable is not None:
            self._writable.set()
            self._writable = None
        return taken

    def readable(self) -> Awaitable[object] | None:
        """What the reader awaits, having found nothing to take, until a frame is queued, the
        buffer closed, or the reader stopped; ``None`` once nothing more will be taken (closed
        and empty, or stopped). The reader awaits it at once, in its own task, then takes
        (:meth:`take_nowait`) again. Cancelling that wait loses nothing, if the reader then
        says so (:meth:`wait_cancelled`).

        Not a coroutine that waits and takes: its frame would stay on the stack of every
        stream's idle writer.
        """
        if self._reader_stopped or (self._closed and not self._frames):
            return None
        self._readable = readable = self._wakeup()
        if self._writable is not None:
            # With no room at all, a waiting producer can hand over only now.
            self._writable.set()
            self._writable = None
        return readable.wait()

    def wait_cancelled(self) -> None:
        """The reader's wait for frames was cancelled: it no longer waits, and no frame is
        handed to it."""
        self._readable = None

    def stop_reader(self) -> None:
        """Have the reader take nothing from now on, frames queued or not: the frames are not
        to be written any more. A reader waiting now is left to wait until the buffer is
        closed or a frame is queued, and then finds nothing to take."""
        self._reader_stopped = True

    def close(self) -> None:
        """Refuse further frames; the reader still takes what is queued, then is done.
        A producer waiting for room is woken and gets :exc:`anyio.ClosedResourceError`."""
        self._closed = True
        for event in (self._readable, self._writable):
            if event is not None:
                event.set()
        self._readable = self._writable = None
