"""Joining the graceful shutdown of a server that streamkit does not run: uvicorn (on its own,
or as gunicorn's worker) and the hypercorn command.

Those servers tell the application nothing when their shutdown begins: they stop accepting,
then wait for open responses to finish (uvicorn, without limit) or cut them after a grace
period (hypercorn). uvicorn runs the lifespan shutdown only after its connections closed, so an
App's own drain comes too late. A stream would never send its farewell. So streamkit watches for
the moment the server's shutdown begins, and drains every stream in the process then:

- uvicorn installs its SIGTERM and SIGINT handlers when it starts serving, before the lifespan
  and the first request. When an App's lifespan starts, or a stream starts, streamkit wraps the
  handler it finds: the wrapper wakes the drain, then calls the server's handler, which goes on
  as before. Only a handler a server installed is wrapped: the default disposition, Python's
  KeyboardInterrupt and the event loop's own Ctrl-C handling are left alone, since no graceful
  shutdown would follow them.
- hypercorn's worker processes receive no signal: the parent process sets a multiprocessing
  event, which each worker polls every 100 ms. A thread in the worker polls it too, every
  20 ms, and never waits on it: a multiprocessing event's ``wait()`` counts the waiter as a
  sleeper that ``set()`` must hear wake, so a worker killed while waiting (the OOM killer, a
  SIGTERM to the whole process group) would leave the parent's ``set()`` waiting for ever,
  and the server never exiting. This reads hypercorn's private hand-over (the worker's
  ``shutdown_event`` argument); where it is not found, nothing is watched, and the tests of
  each server say so.
  A worker's SIGTERM (sent to the process group, it reaches the workers too) is left at its
  default by hypercorn, which kills the worker mid-stream: streamkit wakes the drain on it,
  then, unless the parent's event follows, exits once the streams have ended.

The drain itself runs on the event loop that served the stream, called from a daemon thread
that the wrapped handlers wake through a pipe (writing to a pipe is safe in a signal handler;
touching the event loop there is not). Under :func:`streamkit.serve`, which drains its own
streams, nothing is armed.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import multiprocessing
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from ._logs import show_stream_ends
from ._registry import registry

__all__ = ["arm_shutdown_watch", "hypercorn_worker_config", "served_by_streamkit"]

#: Set while a request runs under :func:`streamkit.serve`, which drains on its own.
served_by_streamkit: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "streamkit_served", default=False
)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: How often a hypercorn worker's watch looks at its parent's shutdown event: well within the
#: farewell's 100 ms.
_HYPERCORN_POLL_INTERVAL = 0.02
#: How long a hypercorn worker that got SIGTERM itself, its streams ended, waits for the parent's
#: shutdown event before exiting on its own.
_PARENT_SHUTDOWN_WAIT = 0.5


class _Chained:
    """A signal handler that wakes the drain, then runs the handler it replaced."""

    def __init__(self, watch: _ShutdownWatch, previous: Any) -> None:
        self.watch = watch
        self.previous = previous

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        self.watch.wake()
        return self.previous(signum, frame)


class _ShutdownWatch:
    """The process's watch: the pipe, the thread that drains, the loop to drain on."""

    def __init__(self) -> None:
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._pid = os.getpid()
        self._hypercorn_watched = False
        self._hypercorn_event: Any = None
        self._signalled = False
        self._exiting = False
        threading.Thread(target=self._drain_on_wake, name="streamkit-shutdown", daemon=True).start()

    def wake(self) -> None:
        try:
            os.write(self._wake_write, b"\0")
        except BlockingIOError:
            pass  # a wake-up is pending already

    def arm(self) -> None:
        token = anyio.lowlevel.current_token()
        if self._token is None or self._token.native_token is not token.native_token:
            self._token = token
        for number in _SIGNALS:
            handler = signal.getsignal(number)
            if isinstance(handler, _Chained):
                if handler.watch is self:
                    continue
                # A forked parent's: its drain thread is not in this process.
                handler = handler.previous
            if _installed_by_a_server(number, handler):
                signal.signal(number, _Chained(self, handler))
        if not self._hypercorn_watched:
            self._hypercorn_watched = True
            event = _hypercorn_shutdown_event()
            if event is not None:
                self._hypercorn_event = event
                if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                    # A SIGTERM to the process group (systemd, a shell's kill -- -PGID)
                    # reaches the worker too, whose default is to die mid-stream.
                    signal.signal(signal.SIGTERM, _Chained(self, self._terminated))
                waiter = threading.Thread(
                    target=self._wake_when_set, args=(event,), name="streamkit-hypercorn"
                )
                waiter.daemon = True
                waiter.start()

    def _wake_when_set(self, event: Any) -> None:
        # Polled, never waited on: see the module's docstring.
        while not event.is_set():
            time.sleep(_HYPERCORN_POLL_INTERVAL)
        self.wake()

    def _terminated(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True
        self.wake()

    def _drain_on_wake(self) -> None:
        while os.read(self._wake_read, 1):
            token = self._token
            if token is None:
                continue
            try:
                anyio.from_thread.run_sync(registry.drain, token=token)
            except (RuntimeError, anyio.RunFinishedError):
                pass  # that event loop has finished: nothing of it is left to drain
            if self._signalled and not self._exiting:
                self._exiting = True
                self._exit_once_drained(token)

    def _exit_once_drained(self, token: anyio.lowlevel.EventLoopToken) -> None:
        """A hypercorn worker's own SIGTERM: once its streams have ended, it exits as the
        signal's default would have, unless the parent is shutting the server down (it got
        the signal too), which hypercorn then does gracefully."""
        with contextlib.suppress(RuntimeError, anyio.RunFinishedError):
            anyio.from_thread.run(registry.wait_idle, token=token)
        deadline = time.monotonic() + _PARENT_SHUTDOWN_WAIT
        while time.monotonic() < deadline:
            if self._hypercorn_event.is_set():
                return
            time.sleep(_HYPERCORN_POLL_INTERVAL)
        os._exit(128 + signal.SIGTERM)


def _installed_by_a_server(number: int, handler: Any) -> bool:
    if isinstance(handler, _Chained):
        handler = handler.previous
    if not callable(handler):
        return False  # the default disposition, or ignored
    if number == signal.SIGINT:
        # Python's KeyboardInterrupt, or the event loop's own Ctrl-C handling (asyncio's
        # runner, trio's): no server shutdown follows, and those restore the previous handler
        # only while theirs is still installed.
        function = handler
        while isinstance(function, functools.partial):
            function = function.func
        module = getattr(function, "__module__", None) or ""
        return handler is not signal.default_int_handler and not module.startswith(
            ("asyncio", "trio")
        )
    return True


def _hypercorn_worker_arguments() -> dict[str, Any]:
    """What hypercorn's parent process handed this process, if it is one of its workers (the
    hypercorn command's; its private hand-over), else nothing."""
    process = multiprocessing.current_process()
    target = getattr(process, "_target", None)
    if not getattr(target, "__module__", "").startswith("hypercorn."):
        return {}
    kwargs = getattr(process, "_kwargs", None)
    return kwargs if isinstance(kwargs, dict) else {}


def _hypercorn_shutdown_event() -> Any:
    """The event by which hypercorn's parent process tells this worker to shut down, if this
    process is one of its workers."""
    event = _hypercorn_worker_arguments().get("shutdown_event")
    return event if callable(getattr(event, "wait", None)) else None


def hypercorn_worker_config() -> Any:
    """The hypercorn ``Config`` this process serves with, if it is a worker of the hypercorn
    command: the very object its connections are made with."""
    config = _hypercorn_worker_arguments().get("config")
    return config if hasattr(config, "h2_max_concurrent_streams") else None


_watch: _ShutdownWatch | None = None
_watch_lock = threading.Lock()


def arm_shutdown_watch() -> None:
    """Join the shutdown of the server running this code, unless it is :func:`streamkit.serve`.

    Called as an App's lifespan starts and as each stream starts, on the event loop; cheap once
    armed. Outside the main thread (a server run in a thread) signals cannot be watched.
    """
    global _watch
    if served_by_streamkit.get() or threading.current_thread() is not threading.main_thread():
        return
    watch = _watch
    if watch is None or watch._pid != os.getpid():
        # Nothing to join (a test's event loop, a script): no pipe, no thread, no handler.
        handlers = (signal.getsignal(number) for number in _SIGNALS)
        if not any(map(_installed_by_a_server, _SIGNALS, handlers)) and (
            _hypercorn_shutdown_event() is None
        ):
            return
        with _watch_lock:
            if _watch is None or _watch._pid != os.getpid():
                _watch = _ShutdownWatch()
                show_stream_ends()
            watch = _watch
    watch.arm()
