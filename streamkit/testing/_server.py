"""A real hypercorn server for a test, on the test's own anyio backend."""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
from starlette.types import ASGIApp

from .._checks import check_callable, check_duration, check_type
from .._ends import EndReason, StreamEnd
from .._registry import StreamRegistry, registry
from .._serve import ServerAddress, serve
from .._tls import TLSConfig
from ._client import connect

__all__ = ["LiveServer", "open_server"]

# Beyond the grace period, hypercorn's own shutdown of its workers needs a moment.
_STOP_MARGIN = 5.0
# hypercorn keeps a connection whose client closed it after a complete response until its
# keep-alive timeout (on asyncio over HTTP/1.1, on trio over HTTP/2): five seconds by
# default, which a leak check's grace period would count as a leaked socket and tasks.
_KEEP_ALIVE_TIMEOUT = 0.25

#: The addresses (``host:port``) open_server serves on now. A server that outlives a test (a
#: module's fixture) holds its end of the connections the test left until its event loop runs
#: again, after no_leaks checked: those are the server's to close, not the test's leaks.
serving_addresses: set[str] = set()

#: The servers open_server serves with now, for :func:`forget_earlier_ends`.
_serving: set[LiveServer] = set()


def forget_earlier_ends() -> None:
    """Have every server serving now count the stream ends so far as seen by
    :meth:`LiveServer.wait_end`: called as each test begins, so that a server that outlives a
    test (a module's fixture) hands the next test only ends that happen from then on, not an
    end an earlier test did not wait for."""
    for server in _serving:
        server._seen = sum(server.streams.statistics().ended.values())


class LiveServer:
    """A server started by :func:`open_server`.

    :ivar host: the address it listens on (``127.0.0.1``).
    :ivar port: the port it picked.
    :ivar streams: the registry of this server's streams.
    """

    def __init__(
        self,
        address: ServerAddress,
        streams: StreamRegistry,
        stop: anyio.Event,
        stopped: anyio.Event,
    ) -> None:
        self.host = address.host
        self.port = address.port
        self.url = address.url
        self.streams = streams
        self._stop = stop
        self._seen = 0
        self.stopped = stopped

    async def wait_end(self, *, within: float = 5.0) -> StreamEnd:
        """The next stream end on this server, in the order they happened. Under pytest, a
        test waits only for ends that happen during it: those before it count as seen.

        :raises TimeoutError: no stream ended within *within* seconds; the message names the
            streams still running.
        :raises RuntimeError: so many ended since the last call that the next one is no
            longer remembered.
        :raises TypeError: *within* is not a number.
        :raises ValueError: *within* is not a positive, finite number of seconds.
        """
        return await self._wait_end(within, "any end")

    async def _wait_end(self, within: float, awaited: str) -> StreamEnd:
        check_duration("within", within)
        with anyio.move_on_after(within) as scope:
            await self.streams.wait_ended(self._seen + 1)
        if scope.cancelled_caught:
            running = self._running()
            raise TimeoutError(
                f"no stream ended on {self.url} within {within} s (waiting for {awaited}); "
                + (f"running: {running}" if running else "none was running")
            )
        statistics = self.streams.statistics()
        unseen = sum(statistics.ended.values()) - self._seen
        recent = self.streams.recent_ends()
        if unseen > len(recent):
            raise RuntimeError(
                f"{unseen} streams ended since the last wait_end, more than the {len(recent)} "
                "the registry remembers; read them from server.streams.recent_ends(), or use "
                "on_end, when streams end in such numbers"
            )
        end = recent[len(recent) - unseen]
        self._seen += 1
        return end

    async def wait_ended(self, reason: EndReason, *, within: float = 5.0) -> StreamEnd:
        """The next stream end, which must be for *reason*.

        :raises AssertionError: it ended for another reason.
        :raises TimeoutError: no stream ended within *within* seconds.
        :raises TypeError: *reason* is not an :class:`~streamkit.EndReason`, or *within* not a
            number.
        :raises ValueError: *within* is not a positive, finite number of seconds.
        """
        check_type("reason", reason, EndReason)
        end = await self._wait_end(within, f"one ended with {reason.name}")
        if end.reason is not reason:
            raise AssertionError(
                f"stream {end.path} ended with {end.reason.name}, expected {reason.name}"
                + (f" ({end.exception!r})" if end.exception else "")
            )
        return end

    async def shutdown(self, *, within: float = 30.0) -> float:
        """Begin a graceful shutdown and wait until the server stopped; return the seconds it took.

        :raises TimeoutError: the server did not stop within *within* seconds; the message
            names the streams still running.
        :raises TypeError: *within* is not a number (the shutdown did not begin).
        :raises ValueError: *within* is not a positive, finite number of seconds (the shutdown
            did not begin).
        """
        check_duration("within", within)
        started = anyio.current_time()
        self._stop.set()
        with anyio.move_on_after(within):
            await self.stopped.wait()
        if not self.stopped.is_set():
            raise TimeoutError(
                f"the server at {self.url} did not stop within {within} s of shutdown(); "
                f"streams still running: {self._running() or 'none'}"
            )
        return anyio.current_time() - started

    def _running(self) -> str:
        return ", ".join(
            f"{active.path} for {active.age:.3f} s" for active in self.streams.active_streams()
        )


class _Listening(anyio.abc.TaskStatus[ServerAddress]):
    """What serve() reports once its socket listens; *ready* is set then, or when it ended
    without."""

    def __init__(self) -> None:
        self.address: ServerAddress | None = None
        self.ready = anyio.Event()

    def started(self, value: ServerAddress | None = None) -> None:
        self.address = value
        self.ready.set()


class _Unanswered(Exception):
    """The server listened and did not answer within :data:`_STOP_MARGIN`."""


async def _wait_serving(server: LiveServer, *, tls: bool) -> None:
    """Return once hypercorn answers, and its tasks have settled: the socket listens before
    hypercorn runs, so a leak check entered earlier would count hypercorn's tasks as leaks.

    The probe is a request line hypercorn refuses itself (400), so the app never sees it;
    over TLS, a completed handshake.

    :raises _Unanswered: no answer within :data:`_STOP_MARGIN`.
    """
    with anyio.move_on_after(_STOP_MARGIN) as scope:
        await _probe(server, tls=tls)
    if scope.cancelled_caught:
        raise _Unanswered


async def _probe(server: LiveServer, *, tls: bool) -> None:
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the test's own certificate: only the answer counts
        tls_stream = await anyio.connect_tcp(
            server.host, server.port, ssl_context=context, tls_standard_compatible=False
        )
        await tls_stream.aclose()
        await anyio.wait_all_tasks_blocked()
        return
    stream = await connect(server.host, server.port)
    async with stream:
        await stream.send(b"NOT HTTP\r\n\r\n")
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            while await stream.receive():
                pass
    await anyio.wait_all_tasks_blocked()


@asynccontextmanager
async def open_server(
    app: ASGIApp,
    *,
    grace_period: float = 5.0,
    stalled_connection_timeout: float | None = 2.0,
    tls: TLSConfig | None = None,
) -> AsyncIterator[LiveServer]:
    """Serve *app* with hypercorn on 127.0.0.1 and a free port, on the running backend.

    The server is shut down gracefully when the block exits (if the test did not already),
    bounded by *grace_period*.

    The socket is bound before the server starts (port 0: the kernel picks a free port) and
    handed to hypercorn as ``fd://``, so no other test can take the port in between.

    :param grace_period: see :func:`streamkit.serve`.
    :param stalled_connection_timeout: see :func:`streamkit.serve`; short, so a test's stalled
        client cannot hold the shutdown.
    :param tls: serve HTTPS with this certificate (HTTP/2 offered by ALPN); the server's
        ``url`` then starts with ``https://``.
    :raises TypeError: an option is of the wrong kind (on entering, nothing served).
    :raises ValueError: an option is out of range (on entering, nothing served).
    :raises ServeError: the server could not start, or the app's lifespan failed (see
        :func:`streamkit.serve`); raised as itself, not in an exception group.
    :raises TimeoutError: the server had not stopped five seconds after *grace_period*, or did
        not answer within five seconds of listening (the app's lifespan had not started); it
        was cancelled.

    Cancelled (a deadline around it passed), in its block or while the server starts, it
    still stops the server the graceful way, within *grace_period*, before the cancellation
    goes on.
    """
    from hypercorn.config import Config

    check_callable("app", app)
    # Checked here: the cleanup below is bounded by it, whether or not the server started.
    check_duration("grace_period", grace_period)
    config = Config()
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = _KEEP_ALIVE_TIMEOUT
    stop = anyio.Event()
    stopped = anyio.Event()
    streams = StreamRegistry(parent=registry)
    listening = _Listening()
    # What serve() raised: a bad option, a failed lifespan, an App's task group's error.
    serve_error: BaseException | None = None
    failure: BaseException | None = None
    fatal: BaseException | None = None  # a KeyboardInterrupt or SystemExit serve() raised,
    # or a group holding one
    # The server stops the graceful way even when the block is cancelled (a deadline around
    # it passed): its streams end as a shutdown ends them, and are reported, which the test
    # may be about. Cancelled only if it does not stop in time.
    serving = anyio.CancelScope(shield=True)
    server: LiveServer | None = None
    async with anyio.create_task_group() as task_group:

        async def run() -> None:
            nonlocal fatal, serve_error
            try:
                with serving:
                    await serve(
                        app,
                        bind="127.0.0.1:0",
                        grace_period=grace_period,
                        stalled_connection_timeout=stalled_connection_timeout,
                        shutdown_trigger=stop.wait,
                        streams=streams,
                        config=config,
                        tls=tls,
                        task_status=listening,
                    )
            except (KeyboardInterrupt, SystemExit) as exc:
                # Raised again past the task group: on asyncio, raised out of a task, it
                # would break out of the event loop itself.
                fatal = exc
                task_group.cancel_scope.cancel()
            except BaseExceptionGroup as exc:
                if exc.split((KeyboardInterrupt, SystemExit))[0] is None:
                    # An App's task group's error, which serve() raises as it came: raised
                    # again past the task group, as serve() raised it, not in a group more.
                    serve_error = exc
                else:
                    # A producer's group holding one of them, which serve() raises as it came.
                    fatal = exc
                task_group.cancel_scope.cancel()
            except Exception as exc:
                # Raised again past the task group too, as itself, not in its exception group.
                serve_error = exc
                task_group.cancel_scope.cancel()
            finally:
                stopped.set()
                listening.ready.set()

        # Not TaskGroup.start: cancelled there, it waits for the starting task to end, which
        # is shielded and would serve on; here the cancellation reaches the finally below,
        # which tells the server to stop.
        task_group.start_soon(run)
        try:
            await listening.ready.wait()
            if listening.address is not None:
                server = LiveServer(listening.address, streams, stop, stopped)
                serving_addresses.add(f"{server.host}:{server.port}")
                _serving.add(server)
                await _wait_serving(server, tls=tls is not None)
                yield server
        except anyio.get_cancelled_exc_class():
            raise
        except _Unanswered:
            # hypercorn heeds its shutdown trigger only once it serves: it would wait out the
            # stop below. Nothing was served, so nothing is cut short.
            serving.cancel()
            assert listening.address is not None
            failure = TimeoutError(
                f"the server at {listening.address.url} did not answer within {_STOP_MARGIN} s "
                "of listening: hypercorn answers once the app's lifespan has started, which it "
                "had not; the server was cancelled"
            )
        except BaseException as exc:
            # Raised again past the task group, which would wrap it in an exception group
            # that pytest.raises(AssertionError) and xfail(raises=...) do not match.
            failure = exc
        finally:
            stop.set()
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(grace_period + _STOP_MARGIN) as scope:
                    await stopped.wait()
            if scope.cancelled_caught:
                serving.cancel()
            if listening.address is not None:
                serving_addresses.discard(f"{listening.address.host}:{listening.address.port}")
            if server is not None:
                _serving.discard(server)
    if fatal is not None:
        raise fatal
    if serve_error is not None:
        raise serve_error
    if failure is not None:
        raise failure
    if scope.cancelled_caught:
        # Reached only when the block itself did not raise: its error would say more.
        assert listening.address is not None  # one that never listened stopped at once
        raise TimeoutError(
            f"the server at {listening.address.url} did not stop within "
            f"{grace_period + _STOP_MARGIN} s of the end of the block "
            f"(grace_period={grace_period!r}); it was cancelled"
        )
