"""Serving with hypercorn on the running anyio backend, with a graceful drain.

hypercorn, on shutdown, stops accepting, waits ``graceful_timeout`` and then cancels open
connections, telling the application nothing first: every open stream is cut mid-body. So
the drain here comes first: streams end with :attr:`~streamkit.EndReason.SHUTDOWN` (an SSE
stream sends its farewell and ``retry:`` hint), their cleanup completes, and only then is
hypercorn told to stop, with what is left of the grace period.

A client that stopped reading would keep hypercorn from ever returning: its trio worker
shields socket writes. The listening socket is therefore bound here, with ``TCP_USER_TIMEOUT``
set, which accepted connections inherit: the kernel aborts a connection whose peer has not
taken data for that long, and the blocked write fails.

Given a :class:`~streamkit.TLSConfig`, the server speaks HTTPS and offers HTTP/2 by ALPN;
without one it speaks HTTP/1.1, and HTTP/2 to a client that opens with HTTP/2's preface
("prior knowledge", as service-to-service clients do). On HTTP/2, hypercorn's per-stream
buffer is repaired first (see ``_hypercorn_h2``), so that ``send_timeout`` bounds a stalled
stream as it does a stalled connection.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import anyio
from anyio.abc import TaskStatus
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._backends import hypercorn_serve
from ._checks import (
    LONGEST_C_INT_MILLISECONDS,
    check_callable,
    check_duration,
    check_type,
    show_number,
)
from ._connections import abort_accepted
from ._exceptions import ServeError
from ._hypercorn_h2 import bound_h2_streams
from ._logs import show_stream_ends
from ._registry import StreamRegistry, registry, using_registry
from ._server_shutdown import served_by_streamkit
from ._tls import TLSConfig, apply_tls, check_tls

logger = logging.getLogger("streamkit")

__all__ = ["ServerAddress", "graceful_shutdown_trigger", "serve"]

ShutdownTrigger = Callable[[], Awaitable[None]]

#: Connections the kernel completes and holds for the server while it is busy: past them, a
#: client's SYN is dropped and it retries a second later, then three, then seven.
BACKLOG = 1024

#: The longest ``stalled_connection_timeout``, in whole seconds: ``TCP_USER_TIMEOUT`` holds
#: its milliseconds in a C int (about 24.8 days).
MAX_STALLED_CONNECTION_TIMEOUT = int(LONGEST_C_INT_MILLISECONDS)


def check_stalled_connection_timeout(name: str, value: object) -> None:
    """Refuse *value* unless it is ``None`` or a positive number of seconds that
    ``TCP_USER_TIMEOUT`` can hold: a longer one fails only as the socket is bound, with
    Python's word of the socket option's argument.

    :raises TypeError: *value* is not a number.
    :raises ValueError: *value* is zero, negative, not finite, or above
        :data:`MAX_STALLED_CONNECTION_TIMEOUT`.
    """
    check_duration(name, value, optional=True)
    if isinstance(value, int | float) and value > MAX_STALLED_CONNECTION_TIMEOUT:
        raise ValueError(
            f"{name} must be at most {MAX_STALLED_CONNECTION_TIMEOUT} seconds, about 24 days "
            f"(TCP_USER_TIMEOUT holds no more; None turns it off), got {show_number(value)}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerAddress:
    """Where :func:`serve` listens.

    :param host: the address bound.
    :param port: the port bound (the one picked, when 0 was asked for).
    :param scheme: ``"https"`` when serving TLS, else ``"http"``.
    """

    host: str
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        """The base URL, such as ``http://127.0.0.1:8000``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def graceful_shutdown_trigger(
    trigger: ShutdownTrigger,
    *,
    grace_period: float = 10.0,
    streams: StreamRegistry = registry,
) -> ShutdownTrigger:
    """Wrap a hypercorn ``shutdown_trigger`` so that streams drain before hypercorn stops.

    For those who call hypercorn's ``serve()`` themselves::

        await hypercorn.trio.serve(app, config, shutdown_trigger=graceful_shutdown_trigger(
            stop_event.wait, grace_period=5.0))

    Once *trigger* returns, every stream of *streams* ends with
    :attr:`~streamkit.EndReason.SHUTDOWN`; the wrapper returns when none is left, or when
    *grace_period* has passed, and hypercorn then begins its own shutdown.

    :param trigger: what hypercorn would have waited on.
    :param grace_period: the longest the drain may take, in seconds.
    :param streams: whose streams to drain; by default every stream in the process.
    """
    check_duration("grace_period", grace_period)

    async def drain_then_stop() -> None:
        await trigger()
        await _drain(streams, anyio.current_time() + grace_period)

    return drain_then_stop


async def _drain(streams: StreamRegistry, deadline: float) -> None:
    streams.drain()
    with anyio.move_on_at(deadline) as late:
        await streams.wait_idle()
    if late.cancelled_caught and (left := streams.active_streams()):
        # The server cuts them next, their cleanup with them (on trio, a cleanup shielded
        # past this runs on until its own cleanup_timeout): say which, and why.
        logger.warning(
            "%d stream(s) still ending when the grace period ended (%s): the server closes "
            "them now; give a grace period longer than their cleanup_timeout",
            len(left),
            ", ".join(sorted({repr(stream.path) for stream in left}))[:200],
        )
        streams.overran()


async def _abort_left_connections(address: tuple[str, int]) -> None:
    """Abort the connections still open on *address* once its server has stopped: on asyncio,
    those whose TLS handshake never finished, which hypercorn never saw (see
    ``_connections``)."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        if left := await anyio.to_thread.run_sync(abort_accepted, address):
            logger.info("%d connection(s) left open as the server stopped: aborted", left)


async def _listen_for_signals(signalled: anyio.Event) -> None:
    """Set *signalled* at the first SIGINT or SIGTERM, and keep receiving them until
    cancelled: a second one during the drain must not fall to the default disposition
    (SIGTERM kills the process, SIGINT raises KeyboardInterrupt into the loop)."""
    import signal

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for number in signals:
            if signalled.is_set():
                logger.warning("signal %d during the drain: shutdown already under way", number)
            signalled.set()


def _close_unadopted(descriptor: int, inode: int) -> None:
    """Close the listening socket if hypercorn never adopted it: it does so only once the
    app's lifespan has started, so a server cancelled before would leave it listening.
    Adopted, it was closed when hypercorn stopped, and the number may be another file's by
    now: it is closed only if it is still the same socket."""
    try:
        if os.fstat(descriptor).st_ino == inode:
            os.close(descriptor)
    except OSError:
        pass  # closed already, as it should be


class _RegisteringApp:
    """Makes the server's registry the one its streams report to, and notes a lifespan's
    failure."""

    def __init__(
        self, app: ASGIApp, streams: StreamRegistry, on_serving: Callable[[], None] | None = None
    ) -> None:
        self.app = app
        self.streams = streams
        self._on_serving = on_serving
        #: What serve raises for the app's lifespan, if it failed: the phase, and what the
        #: app said of it (its traceback).
        self.lifespan_error: ServeError | None = None
        # hypercorn's asyncio worker runs the lifespan in a task of its own, which it cancels
        # only after the lifespan's shutdown: cancelled before then (serve's caller gave up
        # on it), it left that task running, the app's lifespan with it.
        self._lifespan_scope = anyio.CancelScope()
        # The lifespan messages the app took and those it sent: what is left to answer for
        # it if it returns before the shutdown (see _answer_for_the_app()).
        self._taken: set[str] = set()
        self._said: set[str] = set()
        #: Whether hypercorn serves: the app's startup is answered, or it has no lifespan.
        #: Until then hypercorn waits for the startup alone, and watches no shutdown trigger.
        self.started = False
        #: Whether serve stops the app's lifespan: what it says from then on (a framework
        #: reports its cancelled startup as failed) is no failure of the app's.
        self.stopping = False
        self._lifespan_began = False
        self._lifespan_over = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = served_by_streamkit.set(True)
        try:
            with using_registry(self.streams):
                if scope["type"] == "lifespan":
                    await self._run_lifespan(scope, receive, send)
                else:
                    await self.app(scope, receive, send)
        finally:
            served_by_streamkit.reset(token)

    async def _run_lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._lifespan_began = True
        send = partial(self._send_lifespan, send)
        receive = partial(self._receive_lifespan, receive)
        try:
            with self._lifespan_scope:
                try:
                    await self.app(scope, receive, send)
                except Exception:
                    # An app that has no lifespan (it raised before its startup) is served
                    # without one; a cancellation is no such end.
                    self._serving()
                    raise
                # Its startup answered, by it or for it, has said it serves.
                await self._answer_for_the_app(receive, send)
        finally:
            self._lifespan_over.set()

    async def _answer_for_the_app(self, receive: Receive, send: Send) -> None:
        """Answer what is left of the lifespan for an app that returned before its shutdown:
        one without a lifespan, which the ASGI spec lets return at once, or one that returned
        once started. hypercorn's trio worker would send the next message on the channel
        that return closed, and fail with ``trio.ClosedResourceError``: before it served
        anything, or as it stopped. Its asyncio worker goes on without a word; answered here,
        both do."""
        if "lifespan.startup.failed" in self._said or self.stopping:
            # The server stops: nothing more is asked. (Cancelled, hypercorn's asyncio worker
            # takes the lifespan's end for its shutdown's.)
            return
        if "lifespan.startup.complete" not in self._said:
            if "lifespan.startup" not in self._taken:
                await receive()
            await send({"type": "lifespan.startup.complete"})
        if "lifespan.shutdown" not in self._taken:
            await receive()  # once the server stops
            await send({"type": "lifespan.shutdown.complete"})

    def _serving(self) -> None:
        """Tell on_serving that hypercorn serves, once: the lifespan has started (its startup
        answered by the app, or for it), or raised before it (an app without one). The socket
        listens from before, so a client that connects now is answered."""
        self.started = True
        on_serving, self._on_serving = self._on_serving, None
        if on_serving is not None and self.lifespan_error is None and not self.stopping:
            on_serving()

    def cancel_lifespan(self) -> None:
        """Cancel the app's lifespan if it still runs, as serve stops (see __init__)."""
        self.stopping = True
        self._lifespan_scope.cancel()

    async def wait_lifespan_over(self) -> None:
        """Wait for the app's lifespan to have ended, if it began. hypercorn waits for it,
        except its asyncio worker cancelled before the startup was done: its task is then
        still ending (its cleanup, say) when the worker has stopped."""
        if self._lifespan_began:
            await self._lifespan_over.wait()

    async def _receive_lifespan(self, receive: Receive) -> Message:
        message = await receive()
        self._taken.add(message["type"])
        return message

    async def _send_lifespan(self, send: Send, message: Message) -> None:
        self._said.add(message["type"])
        if self.stopping:
            # Cancelled as serve stops (see cancel_lifespan): nobody waits for its word, and
            # hypercorn's asyncio worker would raise a failure in a task nobody awaits.
            return
        # Noted here, raised by serve as a ServeError once the server stopped. hypercorn
        # raises its own error, wrapped in exception groups, with the traceback in its repr;
        # and its trio worker cancels its lifespan task as soon as the shutdown is over, which
        # cancels its own report of a failure there: serve returned as after a clean
        # shutdown, with nothing logged.
        if message["type"] in ("lifespan.startup.failed", "lifespan.shutdown.failed"):
            phase = message["type"].split(".")[1]
            said = message.get("message", "")
            self.lifespan_error = ServeError(f"the app's lifespan failed at {phase}:\n{said}")
        await send(message)
        if message["type"] == "lifespan.startup.complete":
            self._serving()


def _parse_bind(bind: str) -> tuple[str, int]:
    check_type("bind", bind, str)
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"bind must be HOST:PORT, such as 127.0.0.1:8000, got {bind!r}")
    if int(port) > 65535:  # else the socket's OverflowError, which names no argument
        raise ValueError(f"bind's port must be at most 65535, got {bind!r}")
    return host.strip("[]"), int(port)


def bind_socket(bind: str, *, stalled_connection_timeout: float | None) -> socket.socket:
    """A listening TCP socket for *bind*, with ``TCP_USER_TIMEOUT`` set where the OS has it."""
    host, port = _parse_bind(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise ServeError(f"cannot listen on {bind!r}: {exc}") from exc
    if stalled_connection_timeout is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
        milliseconds = max(1, math.ceil(stalled_connection_timeout * 1000))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
    return sock


async def serve(
    app: ASGIApp,
    *,
    bind: str = "127.0.0.1:8000",
    grace_period: float = 15.0,
    stalled_connection_timeout: float | None = 10.0,
    shutdown_trigger: ShutdownTrigger | None = None,
    streams: StreamRegistry | None = None,
    config: object | None = None,
    sock: socket.socket | None = None,
    tls: TLSConfig | None = None,
    task_status: TaskStatus[ServerAddress] = anyio.TASK_STATUS_IGNORED,
    on_serving: Callable[[ServerAddress], None] | None = None,
) -> None:
    """Serve *app* with hypercorn on the running backend (asyncio or trio) until shut down.

    Shutdown begins on SIGINT or SIGTERM, or when *shutdown_trigger* returns. Streams then
    drain (see :func:`graceful_shutdown_trigger`) and hypercorn stops, all within
    *grace_period*. One that begins while the app's lifespan is still starting cancels the
    startup, and serve returns having served nothing. Cancelled instead, it stops at once,
    on asyncio as on trio: its
    connections are closed without a drain, the app's lifespan is cancelled, the socket is
    closed, and the cancellation goes on.

    :param app: the ASGI application.
    :param bind: ``HOST:PORT`` to listen on; port 0 picks a free one.
    :param grace_period: seconds from the shutdown trigger to the server having stopped.
    :param stalled_connection_timeout: seconds after which the kernel aborts a connection
        whose client has stopped reading (``TCP_USER_TIMEOUT``), at most 2,147,483 (about 24
        days, all the option holds); ``None`` leaves it to the OS.
        Keep it below *grace_period*, or a stalled client can hold the shutdown past it.
    :param shutdown_trigger: an async function whose return begins shutdown; by default the
        signals (which need the main thread).
    :param streams: the registry for this server's streams; by default a new one, child of
        the process-wide :data:`streamkit.registry`.
    :param config: a ``hypercorn.config.Config`` for everything else; ``bind`` and
        ``graceful_timeout`` in it are overridden, and its ``backlog``, left at hypercorn's
        100, is raised to 1024. Without one, hypercorn's lines go through the program's
        logging if it has configured any (the root logger has a handler), else to stderr.
    :param sock: a socket already listening, to serve on instead of binding *bind* (worker
        processes sharing one socket); serve takes it over and closes it when it stops.
        *bind* and *stalled_connection_timeout* then go unused: the socket keeps its options.
    :param tls: serve HTTPS with this certificate and key, HTTP/2 offered by ALPN; its files
        are loaded before the socket is bound. Without it, HTTP/1.1, and HTTP/2 to clients
        that open with its preface (prior knowledge).
    :param task_status: for ``TaskGroup.start``: started with the :class:`ServerAddress`
        once the socket listens. A client may connect from then on; hypercorn answers it once
        the app's lifespan has started.
    :param on_serving: called with the :class:`ServerAddress` once the server answers: once
        the app's lifespan has started (or the app has none); never if it fails.
        ``streamkit run`` says "serving on" then.
    :raises ServeError: the address could not be bound, or a TLS file is missing,
        unreadable or malformed (raised before anything is bound), or the app's lifespan
        failed at startup or at shutdown (the message holds what the app said: its traceback).
    :raises TypeError: *tls* is not a :class:`~streamkit.TLSConfig`, or *on_serving* is not
        callable.
    :raises RuntimeError: called outside the main thread without *shutdown_trigger*.
    :raises KeyboardInterrupt: a producer raised it; the server stopped gracefully first.
    :raises SystemExit: a producer raised it; the server stopped gracefully first.
    :raises BaseExceptionGroup: a producer raised one holding a ``KeyboardInterrupt`` or
        ``SystemExit``, raised as it came; the server stopped gracefully first.
    :raises Exception: what escaped a task of an :class:`~streamkit.App`'s task group (as
        an exception group); the server stopped gracefully first.
    """
    from hypercorn.config import Config

    check_duration("grace_period", grace_period)
    check_stalled_connection_timeout("stalled_connection_timeout", stalled_connection_timeout)
    check_callable("on_serving", on_serving, optional=True)
    if shutdown_trigger is None and threading.current_thread() is not threading.main_thread():
        # Else each backend fails in its own words, once serving, inside an exception group.
        raise RuntimeError(
            "serve listens for SIGINT and SIGTERM, which only the main thread can: outside it, "
            "give shutdown_trigger="
        )
    if config is None:
        config = Config()
        if logging.getLogger().handlers:
            # The program configured logging: hypercorn's default error log would add a
            # handler of its own beside the root's, and each of its lines be written twice.
            config.errorlog = logging.getLogger("hypercorn.error")
    if not isinstance(config, Config):
        raise TypeError(f"config must be a hypercorn.config.Config, got {config!r}")
    check_tls(tls)
    if config.backlog == Config.backlog:
        # hypercorn listens again on the socket it is handed, with this backlog: left at its
        # default, it would cut the one bound here (or by streamkit run) to 100.
        config.backlog = BACKLOG
    if tls is not None:
        apply_tls(tls, config)
    bound_h2_streams(config)
    streams = StreamRegistry(parent=registry) if streams is None else streams
    show_stream_ends()
    signalled: anyio.Event | None = None
    if shutdown_trigger is None:
        signalled = anyio.Event()
        trigger: ShutdownTrigger = signalled.wait
    else:
        trigger = shutdown_trigger

    # A producer's KeyboardInterrupt or SystemExit, or an App's failed task: the server stops
    # gracefully, then raises it.
    stop_requests: list[BaseException] = []
    waiting_for_trigger = anyio.CancelScope()

    def request_stop(exc: BaseException) -> None:
        stop_requests.append(exc)
        waiting_for_trigger.cancel()

    if sock is None:
        sock = bind_socket(bind, stalled_connection_timeout=stalled_connection_timeout)
    with sock, streams.stopping_with(request_stop):
        config.bind = [f"fd://{sock.fileno()}"]
        config.graceful_timeout = grace_period

        cut_short = False  # serve was cancelled

        async def stop_at_once() -> None:
            # hypercorn stops as after its trigger, with no drain and no graceful wait: it
            # cancels its connections at once. The app's lifespan is cancelled, which ends
            # hypercorn's wait for it to start, or to shut down. Its asyncio worker's
            # connection can take the cancellation for its close's and serve on until its
            # client leaves: the connections are aborted.
            nonlocal cut_short
            cut_short = True
            config.graceful_timeout = 0
            registering.cancel_lifespan()
            waiting_for_trigger.cancel()
            await _abort_left_connections((host, port))

        # hypercorn waits on its shutdown trigger only once the app's lifespan has started,
        # and a startup may take long (a database that does not answer): the trigger is
        # watched from the start, and before the startup is done it stops the server at once,
        # the startup cancelled. No request has reached the app: there is nothing to drain.
        triggered = anyio.Event()
        before_serving = anyio.CancelScope()

        async def watch_trigger() -> None:
            await trigger()
            triggered.set()
            if not registering.started:
                logger.info("shutdown asked before the app's lifespan had started: stopping")
                # Cancelled with the server, on trio; on asyncio, by stop_at_once() once
                # hypercorn's worker is cancelled (see hypercorn_serve).
                registering.stopping = True
                before_serving.cancel()

        async def drain_then_stop() -> None:
            with waiting_for_trigger:
                await triggered.wait()
            if cut_short:
                return
            deadline = anyio.current_time() + grace_period
            await _drain(streams, deadline)
            # What is left of the grace period is hypercorn's, for its own connections.
            config.graceful_timeout = max(deadline - anyio.current_time(), 0.01)

        host, port = sock.getsockname()[:2]
        listening_inode = os.fstat(sock.fileno()).st_ino
        # hypercorn adopts the descriptor and closes it itself when it stops.
        descriptor = sock.detach()
        scheme = "https" if config.ssl_enabled else "http"
        address = ServerAddress(host=host, port=port, scheme=scheme)
        registering = _RegisteringApp(
            app, streams, None if on_serving is None else partial(on_serving, address)
        )
        task_status.started(address)
        try:
            async with anyio.create_task_group() as listening:
                if signalled is not None:
                    listening.start_soon(_listen_for_signals, signalled)
                listening.start_soon(watch_trigger)
                try:
                    with before_serving:
                        await hypercorn_serve(
                            registering,
                            config,
                            shutdown_trigger=drain_then_stop,
                            cancelled=stop_at_once,
                            starting=lambda: not registering.started,
                            stop_within=grace_period,
                        )
                finally:
                    registering.cancel_lifespan()
                    _close_unadopted(descriptor, listening_inode)
                    with anyio.CancelScope(shield=True), anyio.move_on_after(grace_period):
                        await registering.wait_lifespan_over()
                listening.cancel_scope.cancel()
                if config.ssl_enabled:
                    # Only a TLS connection can be accepted and yet unseen by hypercorn: listing
                    # the process's descriptors at every stop is spared the others.
                    await _abort_left_connections((host, port))
        except Exception as exc:
            # hypercorn's report of the app's failed lifespan: said once, as the app said it.
            if registering.lifespan_error is None:
                raise
            raise registering.lifespan_error from exc
    if stop_requests:
        raise stop_requests[0]
    if registering.lifespan_error is not None:
        raise registering.lifespan_error
