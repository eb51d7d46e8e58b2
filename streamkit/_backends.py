"""Serving's backend-specific code: choosing hypercorn's worker, and its repairs.

Besides this module, only the runtime's ``_loop`` names asyncio or trio; everything else in
streamkit imports anyio alone. hypercorn has no anyio worker, so serving means picking its
asyncio or trio ``serve`` for the loop that is running.

The repairs: hypercorn's asyncio worker runs in a task of its own (see below). On Python
3.11 it ends its serve with an ``asyncio.TaskGroup`` whose child raised to trigger the
shutdown, which leaves one cancellation request counted on the task that ran it
(``Task.cancelling()``) after serve has returned normally: an anyio cancel scope exited later
in the caller's task took the leftover count for a native cancellation and raised
``CancelledError`` out of it. The worker's own task, discarded, takes the count instead.
And :func:`being_cancelled` tells the HTTP/2 repair (``_hypercorn_h2``) when a connection's
task is one that hypercorn's asyncio worker cancelled, as its task group is being shut down,
and :func:`hand_over_nowait` lets it hand a stream's app a message without waiting.

At the open-file limit, accept fails until a descriptor is freed, and both loops retry
(asyncio after 1 s, trio after 0.1 s) and log each failure with its traceback: asyncio's tries
its whole backlog at every retry, about 3,000 lines a second, trio 90. Either fills a disk
while telling one fact. The failures are said here instead, once every
``ACCEPT_FAILURE_LOG_INTERVAL``, as one warning line. A connection lost to its client as
hypercorn's asyncio worker closes it (reset, or given up by the kernel) is not logged at all.

Cancelled, hypercorn's asyncio worker cleans up in awaits (closing its servers, waiting for
its connections, its lifespan's shutdown), which a cancel scope, cancelling its task again
at every await, cut one after another: with a connection open, it raised its own
``InvalidStateError`` in place of the cancellation, left its listening socket to a callback
that failed on it, and errors for asyncio to log. It runs in a task of its own here, which
the cancellation does not reach: it is stopped the way its shutdown trigger stops it, at once,
and waited for, and the cancellation goes on. (A connection of that worker cancelled while
it closes takes the cancellation for its close's and serves on until its client leaves: the
server's connections are aborted as well.)

And hypercorn's trio worker does a connection's TLS handshake in the connection's task, bound
by ``ssl_handshake_timeout`` alone: at shutdown it waited for a client that never finished
one until the grace period ran out. The handshake ends with the server here. (It also shuts a
connection's sending side outside its send lock, and a stream's write begun meanwhile raises
``BusyResourceError``: the runtime takes that for the client gone, under every server that
worker runs; see ``_loop.LoopFacts.refused``.)
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import sniffio

from ._exceptions import ServeError

__all__ = ["being_cancelled", "hand_over_nowait", "hypercorn_serve"]

logger = logging.getLogger("streamkit")

#: accept's errors for want of a descriptor or memory: the loop retries, the server serves on.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Seconds between two warnings that accept fails for want of descriptors.
ACCEPT_FAILURE_LOG_INTERVAL = 10.0
#: Seconds between two tries at stopping hypercorn's asyncio worker once it is cancelled.
CANCELLED_RETRY_INTERVAL = 0.1


class _AcceptFailures:
    """Says that accept fails for want of descriptors, at most once an interval."""

    def __init__(self) -> None:
        self.said_at = -math.inf

    def note(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self.said_at < ACCEPT_FAILURE_LOG_INTERVAL:
            return
        self.said_at = now
        code = exc.errno or 0
        logger.warning(
            "cannot accept connections: %s (%s); the server serves those it has and accepts "
            "again once descriptors are freed; raise the open-file limit (ulimit -n) above the "
            "connections expected",
            errno.errorcode.get(code, code),
            os.strerror(code),
        )


_accept_failures = _AcceptFailures()


#: How a connection is lost to its client: reset, aborted, or given up by the kernel (the
#: ``TCP_USER_TIMEOUT`` that serve sets, for a client that stopped reading).
CONNECTION_LOST_ERRNOS = frozenset(
    {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT}
)


def _connection_lost(exc: object) -> bool:
    """Whether *exc* is a connection lost to its client, no error of the server's."""
    return isinstance(exc, OSError) and exc.errno in CONNECTION_LOST_ERRNOS


def _accept_failure(exc: object) -> bool:
    """Whether *exc* is accept's failure for want of descriptors; if so, noted."""
    if isinstance(exc, OSError) and exc.errno in ACCEPT_CAPACITY_ERRNOS:
        _accept_failures.note(exc)
        return True
    return False


class _TrioAcceptFailures(logging.Filter):
    """Takes trio's report of each failed accept (every 0.1 s, with its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _accept_failure(record.exc_info[1]))


_trio_accept_failures = _TrioAcceptFailures()

_handshakes_end_at_shutdown = False
# The configs of the trio servers streamkit runs: the handshake ends at shutdown for theirs
# alone, not for another hypercorn server of the process.
_trio_configs: weakref.WeakSet[Any] = weakref.WeakSet()


def _end_handshakes_at_shutdown() -> None:
    """Have hypercorn's trio worker end a connection's TLS handshake when the server shuts
    down (see the module's docstring), once per process."""
    global _handshakes_end_at_shutdown
    if _handshakes_end_at_shutdown:
        return
    _handshakes_end_at_shutdown = True
    # hypercorn's trio handler is a trio class, its stream a trio SSLStream.
    import hypercorn.trio.run
    import trio
    from hypercorn.trio.tcp_server import TCPServer

    if vars(hypercorn.trio.run).get("TCPServer") is not TCPServer:
        return  # not the hypercorn this was made for: left as it is

    class HandshakeEndsAtShutdown(TCPServer):
        async def run(self) -> None:
            if isinstance(self.stream, trio.SSLStream) and self.config in _trio_configs:
                shaken = False
                async with trio.open_nursery() as nursery:

                    async def handshake() -> None:
                        nonlocal shaken
                        with trio.move_on_after(self.config.ssl_handshake_timeout):
                            try:
                                await self.stream.do_handshake()
                                shaken = True
                            except trio.BrokenResourceError:
                                pass
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(handshake)
                    await self.context.terminated.wait()
                    nursery.cancel_scope.cancel()
                if not shaken:
                    await trio.aclose_forcefully(self.stream)
                    return
            # Its handshake, done, returns at once there.
            await super().run()

    # The name hypercorn's trio worker makes each connection's handler by, as it serves.
    vars(hypercorn.trio.run)["TCPServer"] = HandshakeEndsAtShutdown


def _worker() -> tuple[str, Callable[..., Awaitable[None]]]:
    library = sniffio.current_async_library()
    if library == "trio":
        from hypercorn.trio import serve as trio_serve

        return library, trio_serve
    if library == "asyncio":
        from hypercorn.asyncio import serve as asyncio_serve

        return library, asyncio_serve
    raise ServeError(f"hypercorn cannot run on the {library!r} event loop")


async def hypercorn_serve(
    app: object,
    config: object,
    *,
    cancelled: Callable[[], Awaitable[None]],
    starting: Callable[[], bool],
    stop_within: float,
    **options: object,
) -> None:
    """Run hypercorn's ``serve(app, config, **options)`` for the running event loop.

    Cancelled on asyncio, it awaits *cancelled*, which must make hypercorn stop (its shutdown
    trigger return, its connections go), every ``CANCELLED_RETRY_INTERVAL`` until hypercorn
    has stopped, for at most *stop_within* seconds, shielded; then the cancellation goes on.
    While *starting* says hypercorn waits for the app's lifespan to start, it waits on
    nothing else, not on its trigger: its task is cancelled outright, before *cancelled* ends
    the lifespan (in a task of its own), whose end would let it go on to serve. hypercorn's
    trio worker, made for trio's scoped cancellation, is cancelled as it is.

    :raises ServeError: the running event loop is neither asyncio nor trio.
    """
    library, serve = _worker()
    if library != "asyncio":
        # The logger of trio.serve_listeners, which hypercorn's trio worker accepts with.
        trio_logger = logging.getLogger("trio.serve_listeners")
        if _trio_accept_failures not in trio_logger.filters:
            trio_logger.addFilter(_trio_accept_failures)
        _trio_configs.add(config)
        _end_handshakes_at_shutdown()
        await serve(app, config, **options)
        return
    import asyncio  # the repairs are of asyncio tasks' cancellations (see above)

    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        # Python before 3.13: asyncio.start_server's done-callback (in connection_made) calls
        # exception() on a connection task that hypercorn cancelled at the end of its
        # graceful timeout, which raises CancelledError into the loop's handler, logged with
        # a traceback. A connection cancelled at shutdown is no error.
        if isinstance(context.get("exception"), asyncio.CancelledError) and (
            "connection_made" in str(context.get("message", ""))
        ):
            return
        # hypercorn's asyncio worker waits for its connection's close, which raises the
        # connection's loss: a client that stopped reading, given up by the kernel, was
        # logged as the server's error, with a traceback. The stream has ended, and said so.
        if "client_connected_cb" in str(context.get("message", "")) and _connection_lost(
            context.get("exception")
        ):
            return
        # The accept loop's failure for want of descriptors (see the module's docstring).
        if str(context.get("message", "")).startswith("socket.accept()") and _accept_failure(
            context.get("exception")
        ):
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    loop.set_exception_handler(handle)
    try:
        await _stopped_when_cancelled(
            serve(app, config, **options),
            cancelled=cancelled,
            starting=starting,
            stop_within=stop_within,
        )
    finally:
        loop.set_exception_handler(previous)


async def _stopped_when_cancelled(
    serving: Awaitable[None],
    *,
    cancelled: Callable[[], Awaitable[None]],
    starting: Callable[[], bool],
    stop_within: float,
) -> None:
    """Await hypercorn's asyncio *serving* in a task of its own, which a cancellation of this
    one does not reach: *cancelled* stops it, and it is waited for (see the module's
    docstring)."""
    import asyncio  # the worker is kept from the cancellation of an asyncio task

    worker = asyncio.ensure_future(serving)
    try:
        await asyncio.shield(worker)
    except asyncio.CancelledError:
        if worker.done():
            raise
        with anyio.CancelScope(shield=True):
            # Again until it has stopped: a connection the worker accepted meanwhile is
            # stopped too. The bound is read off the clock, not a scope's deadline around the
            # loop: a wait cut by this scope and one cut by that deadline both raise
            # CancelledError, and taking the one for the other looped for good.
            given_up = anyio.current_time() + stop_within
            while not worker.done() and (left := given_up - anyio.current_time()) > 0:
                if starting():
                    worker.cancel()  # it waits for the app's startup, and for nothing else
                await cancelled()
                # Through shield(): the wait ending must not cancel the worker.
                with anyio.move_on_after(min(CANCELLED_RETRY_INTERVAL, left)):
                    await asyncio.shield(worker)
        if not worker.done():
            logger.warning(
                "the server did not stop within %.3f s of its cancellation: its task is cancelled",
                stop_within,
            )
            worker.cancel()
            worker.add_done_callback(_say_late_failure)
        raise


def _say_late_failure(worker: Any) -> None:
    """Say what hypercorn's asyncio worker raised after a cancelled serve gave it up: nobody
    awaits it, and asyncio would log it as never retrieved, at some later collection."""
    if not worker.cancelled() and (exc := worker.exception()) is not None:
        logger.error(
            "the server's task, given up after its cancellation, failed",
            exc_info=(type(exc), exc, exc.__traceback__),
        )


def being_cancelled() -> bool:
    """Whether the running task is an asyncio task with a cancellation requested of it that it
    has not taken back (``Task.cancelling()``), as hypercorn's asyncio worker leaves the tasks
    of a connection it cancels. On trio, whose cancellations are scoped, always false."""
    if sniffio.current_async_library() != "asyncio":
        return False
    import asyncio  # the question is of an asyncio task's cancellation count

    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def hand_over_nowait(put: Callable[[Any], Awaitable[None]], message: object) -> bool:
    """Put *message* where hypercorn's *put* would, without waiting; false if there is no room.

    *put* is what hypercorn's worker hands an app's messages to it through: the bound ``put``
    of an ``asyncio.Queue``, or ``send`` of a trio memory channel. Anything else is not known
    to take a message without waiting: false.
    """
    owner = getattr(put, "__self__", None)
    if sniffio.current_async_library() == "asyncio":
        import asyncio  # the queue is hypercorn's asyncio worker's own

        if not isinstance(owner, asyncio.Queue):
            return False
        try:
            owner.put_nowait(message)
        except asyncio.QueueFull:
            return False
        return True
    import trio  # the channel is hypercorn's trio worker's own

    if not isinstance(owner, trio.MemorySendChannel):
        return False
    try:
        owner.send_nowait(message)
    except trio.WouldBlock:
        return False
    return True
