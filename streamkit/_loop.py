"""What a stream needs of the event loop it runs on, found once when the stream starts.

Everywhere else, library code asks anyio, and anyio finds the running loop anew on every call
(through sniffio). That costs little once, but a stream's write path asked it several times per
item. This is the one runtime module that names asyncio and trio (``_backends`` is the other
such module, for serving), because they differ in what the runtime must know:

- whether a producer may write to the client from its own task. On asyncio, every ASGI server's
  ``send`` can be cancelled while it waits for the client (hypercorn and uvicorn copy the bytes
  into the transport before they wait), so a producer stuck behind a client that stopped
  reading is released by the send timeout like any waiter. hypercorn's trio worker shields its
  socket writes: there a producer would be held until the kernel gave the connection up, so
  every write goes through the stream's writer task;
- how to tell that the loop has turned since a write: on asyncio, a callback queued after the
  write has run (one per turn of the loop for all its streams, :class:`Turns`). A producer
  that sends again before that never yielded in between, and its items are queued for the
  writer to join into one write rather than written one by one. A stream asks only after
  every few writes of its producer's own: a callback per write would cost each event a
  handle that the loop, written in Python, makes and runs;
- how a task waits to be woken by another: a stream's writer waits for frames once per event
  of a fan-out, and an event keeps a collection of its waiters for the one there is. A
  wakeup (:attr:`LoopFacts.wakeup`) is a bare future on asyncio, the waiting task itself on
  trio;
- how to run a callback at a given time, which is how a stream's heartbeats and its send
  timeout are timed: timers per stream, not deadlines on the waits of its writer and its
  disconnect listener (a cancel scope made and entered per write, or a listener woken by a
  cancellation after writes that had long completed, paid for on every event of a fan-out).
  asyncio has ``call_at``; trio has no callbacks, so one system task per run keeps the timers
  of all its streams;
- which exception a cancellation is (``asyncio.CancelledError``, ``trio.Cancelled``): every
  stream that a cancellation ends asks, a thousand at once when as many clients leave; and,
  for one the stream did not make, whether a cancel made it (on asyncio, a future cancelled
  elsewhere raises it in a task that nothing cancels);
- whether the calling thread runs a loop at all, for a plain function that must be called
  in it (``MemoryBroker.publish_nowait``): sniffio looks for a task, and an asyncio callback
  runs in none.
"""

from __future__ import annotations

# asyncio for its loop's own clock, timers, events and futures (see the module's docstring).
import asyncio
import contextvars
import heapq
import logging
import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import sniffio

from ._buffer import Waitable

__all__ = [
    "TIMERS_TASK",
    "LoopFacts",
    "Timer",
    "Turns",
    "cancellation_asked",
    "in_loop_thread",
    "loop_facts",
]

logger = logging.getLogger("streamkit")

#: The name of the system task that keeps a trio run's stream timers; it lasts as long as the
#: run, like trio's own system tasks, so a leak check passes it over.
TIMERS_TASK = "streamkit timers"


class Timer(Protocol):
    """A callback to be run at a time (asyncio's ``TimerHandle`` is one)."""

    def cancel(self) -> None:
        """Do not run the callback, if it has not run."""
        ...


class Turns:
    """Counts the turns of an asyncio loop after which a write was made from a producer's task.

    A write notes itself with :meth:`mark`; once :attr:`count` differs from what ``mark``
    returned, the loop has turned since. One callback per turn serves every stream that marked
    a write in it, where a callback per write would cost each event one more.
    """

    __slots__ = ("_call_soon", "_pending", "count", "loop")

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self._call_soon = loop.call_soon
        self._pending = False
        #: Turns counted so far (only those after a write).
        self.count = 0

    def mark(self) -> int:
        """Note a write made now; return the turn it belongs to."""
        if not self._pending:
            self._pending = True
            # Handles queued now run at the loop's next turn, after what is ready at this one.
            self._call_soon(self._tick)
        return self.count

    def _tick(self) -> None:
        self._pending = False
        self.count += 1


class LoopFacts:
    """The running loop's clock, its timers and, where a producer may write itself, its
    :class:`Turns`.

    :ivar clock: the loop's clock, the one ``anyio.current_time()`` reads.
    :ivar call_at: ``call_at(when, callback)`` runs *callback* once the clock reaches *when*,
        in the context it was called in, unless the :class:`Timer` it returns is cancelled
        first.
    :ivar turns: the loop's :class:`Turns`; ``None`` where a producer must not write from its
        own task.
    :ivar event: makes an event of the loop's own (``asyncio.Event``, ``trio.Event``), which
        anyio's cancel scopes cancel a wait on like any other.
    :ivar cancelled: the loop's cancellation exception class (what
        ``anyio.get_cancelled_exc_class()`` looks up on each call), which every stream that
        ends by a cancellation asks for.
    :ivar refused: what a server's ``send()`` raises when it refuses a write because the
        connection is going: ``OSError`` (ASGI 2.4), and on trio ``BusyResourceError`` as
        well, which hypercorn's trio worker lets out of a write begun while it shuts the
        connection's sending side (outside its send lock) once the client has left.
    :ivar wakeup: makes a wakeup of the loop's own: what an event does for one waiting task,
        for less. An event keeps a collection of its waiters (``asyncio.Event`` a deque of
        about 0.6 KiB, ``trio.Event`` a set), and a stream's writer makes one each time it
        waits for frames, in a fan-out once per event. A wakeup is made for one wait, right
        before it, and waited on by one task: cancelling that wait is safe (anyio's cancel
        scopes cancel it like any other), a second waiter is not (on asyncio, cancelling one
        would cancel both).
    """

    __slots__ = ("call_at", "cancelled", "clock", "event", "refused", "turns", "wakeup")

    def __init__(
        self,
        clock: Callable[[], float],
        call_at: Callable[[float, Callable[[], None]], Timer],
        turns: Turns | None,
        event: Callable[[], Any],
        wakeup: Callable[[], Waitable],
        cancelled: type[BaseException],
        refused: tuple[type[Exception], ...],
    ) -> None:
        self.clock = clock
        self.call_at = call_at
        self.turns = turns
        self.event = event
        self.wakeup = wakeup
        self.cancelled = cancelled
        self.refused = refused


def loop_facts() -> LoopFacts:
    """The facts of the loop running the calling task (one object per loop, which its
    streams share)."""
    # The loop's own clock, timers and events, named here once so that the write path does
    # not ask anyio (and sniffio) for them on every item: see the module's docstring.
    if sniffio.current_async_library() == "trio":
        return _trio_timers().facts
    global _asyncio_facts
    loop = asyncio.get_running_loop()
    facts = _asyncio_facts
    if facts is None or facts.turns is None or facts.turns.loop is not loop:
        # Kept for the loop that runs streams now (most processes run one); a stream keeps
        # what it was given, so another loop's streams in another thread only share less.
        wakeup = partial(_FutureWakeup, loop=loop)
        facts = LoopFacts(
            loop.time,
            loop.call_at,
            Turns(loop),
            asyncio.Event,
            wakeup,
            asyncio.CancelledError,
            (OSError,),
        )
        _asyncio_facts = facts
    return facts


_asyncio_facts: LoopFacts | None = None  # of the asyncio loop that started a stream last


def cancellation_asked() -> bool:
    """Whether a cancellation was asked of the calling task: whether the loop's cancellation
    exception it is handling came from a cancel. On asyncio, a ``CancelledError`` is also what
    awaiting a future that something else cancelled raises, or one raised by hand, in a task
    nothing cancels; on trio, ``Cancelled`` cannot be made but by a cancel."""
    if sniffio.current_async_library() == "trio":
        return True
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def in_loop_thread() -> bool:
    """Whether the calling thread is running an event loop: a trio task, an asyncio task, or
    an asyncio callback (which sniffio, asking for a task, does not recognise)."""
    if sniffio.thread_local.name == "trio":
        return True
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _FutureWakeup(asyncio.Future[None]):
    """A wakeup on asyncio: a bare future, awaited directly."""

    __slots__ = ()

    def set(self) -> None:
        if not self.done():  # else set already, or its wait was cancelled
            self.set_result(None)

    def wait(self) -> _FutureWakeup:
        return self


class _TrioWakeup:
    """A wakeup on trio: the waiting task itself, rescheduled when set.

    :param lowlevel: ``trio.lowlevel``, handed in by the run's facts: rescheduling a task is
        trio's own, which anyio does not offer, and an asyncio process never imports trio.
    """

    __slots__ = ("_is_set", "_lowlevel", "_task")

    def __init__(self, lowlevel: Any) -> None:
        self._lowlevel = lowlevel
        self._is_set = False
        self._task: Any = None  # the waiting trio task

    def set(self) -> None:
        self._is_set = True
        task, self._task = self._task, None
        if task is not None:
            self._lowlevel.reschedule(task)

    def wait(self) -> Awaitable[None]:
        # trio's own wait, returned rather than awaited here: a coroutine of the wakeup's
        # would stay on the waiting task's stack. Awaited at once, in the task that called.
        if self._is_set:
            return self._lowlevel.checkpoint()  # type: ignore[no-any-return]
        self._task = self._lowlevel.current_task()
        # The wakeup is its own abort function (see __call__): a bound method would be made
        # for every wait.
        return self._lowlevel.wait_task_rescheduled(self)  # type: ignore[no-any-return]

    def __call__(self, raise_cancel: object) -> Any:
        """Abort the wait (trio calls it to cancel the waiting task)."""
        self._task = None
        return self._lowlevel.Abort.SUCCEEDED


class _TrioTimer:
    __slots__ = ("callback", "context", "timers", "when")

    def __init__(self, when: float, callback: Callable[[], None], timers: _TrioTimers) -> None:
        self.when = when
        # Both None once the timer has run or been cancelled.
        self.callback: Callable[[], None] | None = callback
        # Run in, as asyncio's call_at does: what a timer does for a stream (an idle fallback,
        # say) sees the request's context variables, not the system task's.
        self.context: contextvars.Context | None = contextvars.copy_context()
        self.timers = timers

    def cancel(self) -> None:
        if self.callback is None:
            return  # run, or cancelled already
        # Let go of what the callback holds (a stream, its request's context) now, as
        # asyncio's cancel does: a stream's deadline an hour off would hold it that long.
        self.callback = self.context = None
        self.timers.note_cancelled()

    def __lt__(self, other: _TrioTimer) -> bool:
        return self.when < other.when


#: Cancelled timers the heap may hold before it is rebuilt without them (once they are half
#: of it, as asyncio's loop does with its own).
_CANCELLED_KEPT = 100


class _TrioTimers:
    """The timers of one trio run, kept by one system task that sleeps until the earliest,
    and the run's :class:`LoopFacts`, which its streams share.

    :param trio: the ``trio`` module, imported by :func:`_trio_timers` (the one place here
        that imports it, so that an asyncio process never loads it).
    """

    def __init__(self, trio: Any) -> None:
        self._trio = trio
        self._heap: list[_TrioTimer] = []
        self._cancelled = 0  # cancelled timers still in the heap
        self._sleep: Any = None  # the system task's cancel scope, whose deadline is the earliest
        wakeup = partial(_TrioWakeup, trio.lowlevel)
        self.facts = LoopFacts(
            trio.current_time,
            self.call_at,
            None,
            trio.Event,
            wakeup,
            trio.Cancelled,
            (OSError, trio.BusyResourceError),
        )

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = _TrioTimer(when, callback, self)
        heapq.heappush(self._heap, timer)
        if self._sleep is not None and when < self._sleep.deadline:
            self._sleep.deadline = when
        return timer

    def note_cancelled(self) -> None:
        """A timer in the heap was cancelled: rebuild the heap without the cancelled ones once
        they are many and half of it, so that timers set far off and cancelled (a deadline
        per stream) do not pile up until their time."""
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > _CANCELLED_KEPT and 2 * self._cancelled > len(heap):
            heap[:] = [timer for timer in heap if timer.callback is not None]  # the same list
            heapq.heapify(heap)
            self._cancelled = 0

    async def run(self) -> None:
        trio, heap = self._trio, self._heap
        while True:
            with trio.CancelScope(deadline=heap[0].when if heap else math.inf) as self._sleep:
                await trio.sleep_forever()
            now = trio.current_time()
            while heap and heap[0].when <= now:
                timer = heapq.heappop(heap)
                callback, context = timer.callback, timer.context
                if callback is None or context is None:
                    self._cancelled -= 1
                    continue
                timer.callback = timer.context = None  # run: a cancel() from now on is nothing
                try:
                    context.run(callback)
                except Exception:  # a system task must not raise
                    logger.exception("a stream timer's callback raised")


def _trio_timers() -> _TrioTimers:
    # Imported here, on trio only: a RunVar and a system task are trio's own, which anyio
    # does not offer, and the run's facts are trio's clock, events and task rescheduling.
    import trio

    global _trio_timers_var
    if _trio_timers_var is None:
        _trio_timers_var = trio.lowlevel.RunVar("streamkit_timers")
    timers: _TrioTimers | None = _trio_timers_var.get(None)
    if timers is None:
        timers = _TrioTimers(trio)
        _trio_timers_var.set(timers)
        trio.lowlevel.spawn_system_task(timers.run, name=TIMERS_TASK)
    return timers


_trio_timers_var: Any = None  # a trio RunVar, made at the first timer
