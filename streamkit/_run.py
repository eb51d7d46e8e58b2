"""Running an application from a program, ``streamkit.run(app)``, or from the command line,
``python -m streamkit run module:app``.

One worker serves in this process with :func:`streamkit.serve`. Several workers are processes
of their own, started with the spawn method, which share one listening socket bound here: the
kernel hands each new connection to one of them. This process then only supervises: on SIGINT
or SIGTERM it sends SIGTERM to every worker and waits while each drains its streams.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
from starlette.types import ASGIApp

if TYPE_CHECKING:
    from hypercorn.config import Config

from ._app import App
from ._checks import check_count, check_duration
from ._exceptions import ServeError
from ._logs import configure_run_logging
from ._serve import ServerAddress, bind_socket, check_stalled_connection_timeout, serve
from ._tls import HANDSHAKE_TIMEOUT, TLSConfig, apply_tls, check_tls

__all__ = ["import_app", "main", "run"]

logger = logging.getLogger("streamkit")

T = TypeVar("T")

BACKENDS = ("asyncio", "trio")
#: Past twice the grace period (the server's drain, then the App's lifespan shutdown) and
#: this many seconds, a worker that is still running is killed.
KILL_MARGIN = 5.0
#: A worker's exit codes that mean it stopped when told to: drained, or ended by the SIGTERM
#: it was sent (or a terminal's SIGINT) before it listened for signals, having served nothing.
STOPPED_EXIT_CODES = (0, -signal.SIGTERM, -signal.SIGINT)


def import_app(target: str) -> ASGIApp:
    """The application named by *target*, ``MODULE:ATTRIBUTE`` (``service:app``,
    ``package.module:holder.app``).

    :raises ValueError: *target* is not of that form.
    :raises ImportError: the module is not found, or raised as it was imported (said in one
        line: what it raised, and where).
    :raises AttributeError: the module has no such attribute.
    :raises TypeError: what was found is no ASGI application: not callable, a class, or a
        callable that cannot take ``(scope, receive, send)`` (an app factory, a WSGI app).
    """
    module_name, sep, attribute = target.partition(":")
    # A relative module (.service) has no package to be relative to.
    if not sep or not module_name or module_name.startswith(".") or not attribute:
        raise ValueError(
            f"the app must be named as MODULE:ATTRIBUTE, such as service:app, got {target!r}"
        )
    found: Any = _import_module(module_name, target)
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise AttributeError(
                f"module {module_name!r} has no attribute {attribute!r} (from {target!r})"
            ) from None
    _check_asgi(target, found)
    app: ASGIApp = found
    return app


def _import_module(module_name: str, target: str) -> ModuleType:
    """Import the app's module. Whatever it raises as it runs (a missing dependency, a setting
    not given, a syntax error) is said in one line, with where it was raised, as every other
    error of the command is: not as a traceback that ends without a word of the command, nor a
    dependency's name said as if the app's own module were missing."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not f"{module_name}.".startswith(f"{exc.name}."):
            raise ImportError(_raised_on_import(module_name, target, exc)) from exc
        raise ImportError(
            f"cannot import module {module_name!r} (from {target!r}): {exc}"
        ) from None
    except Exception as exc:
        raise ImportError(_raised_on_import(module_name, target, exc)) from exc


def _raised_on_import(module_name: str, target: str, exc: Exception) -> str:
    said = (
        f"module {module_name!r} raised {type(exc).__name__} as it was imported (from {target!r}): "
    )
    if isinstance(exc, SyntaxError):
        said += exc.msg
        if exc.filename is None:  # null bytes in the file, say: no line to point at
            return said
        return f"{said}, at {exc.filename!r}, line {exc.lineno}"
    # The module's own line, the first past the import machinery; and, if the exception came
    # from further in (a library the module called), where it was raised.
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename not in (__file__, importlib.__file__)
        and not frame.filename.startswith("<frozen ")
    ]
    said += str(exc)
    if not frames:  # raised by the import machinery itself
        return said
    own, innermost = frames[0], frames[-1]
    said += f", at {own.filename!r}, line {own.lineno}"
    if innermost is not own:
        said += f" (raised at {innermost.filename!r}, line {innermost.lineno})"
    return said


def _check_asgi(name: str, found: object) -> None:
    """Refuse what cannot be an ASGI application. hypercorn would serve it all the same, take
    its failed lifespan for one it does not support, and answer every request with a 500."""
    if not callable(found):
        raise TypeError(f"{name!r} is not an ASGI application: {found!r:.80}")
    if isinstance(found, type) and not hasattr(found, "__await__"):
        raise TypeError(f"{name!r} is a class, not an ASGI application: serve an instance of it")
    try:
        signature = inspect.signature(found)
    except (TypeError, ValueError):
        return  # a builtin, say: nothing to tell
    try:
        signature.bind(None, None, None)
    except TypeError:
        raise TypeError(
            f"{name!r} is not an ASGI application: it takes {signature}, not (scope, receive, "
            "send); name the ASGI app itself, not an app factory or a WSGI app"
        ) from None


def run(
    app: ASGIApp | str,
    *,
    backend: str = "asyncio",
    bind: str = "127.0.0.1:8000",
    workers: int = 1,
    grace_period: float | None = None,
    stalled_connection_timeout: float | None = 10.0,
    log_level: str | int | None = "INFO",
    tls: TLSConfig | None = None,
) -> None:
    """Serve *app* with hypercorn until SIGINT or SIGTERM, then drain it and return.

    Call it from the main thread, outside any event loop::

        if __name__ == "__main__":
            streamkit.run(app, backend="trio")

    :param app: the ASGI application, or its ``MODULE:ATTRIBUTE`` name; several workers
        need the name, since each imports it.
    :param backend: ``"asyncio"`` or ``"trio"``.
    :param bind: ``HOST:PORT`` to listen on; port 0 picks a free one (logged).
    :param workers: how many processes serve; each drains its own streams.
    :param grace_period: seconds from the signal to the server having stopped; by default
        an :class:`~streamkit.App`'s own, else 15. An App's lifespan shutdown (its tasks'
        cleanup) follows, bounded by the App's grace period.
    :param stalled_connection_timeout: see :func:`streamkit.serve`.
    :param log_level: if the program has set up no logging yet, the level of streamkit's and
        hypercorn's loggers, whose lines go to stderr; other loggers stay at the root's
        default, WARNING. ``None`` leaves logging alone.
    :param tls: serve HTTPS, HTTP/2 offered by ALPN: see :func:`streamkit.serve`.
    :raises ValueError: an argument is out of range, or several workers were asked for
        with an application object.
    :raises RuntimeError: it is called outside the main thread, or by a worker importing the
        script that called it (where no ``if __name__ == "__main__":`` guards the call).
    :raises TypeError: *app* is no ASGI application (not callable, a class, or a callable
        that cannot take ``(scope, receive, send)``), *bind* is not a ``str``, *log_level* is
        neither a level name nor an ``int``, or *tls* is not a :class:`~streamkit.TLSConfig`.
    :raises ServeError: the address cannot be bound, a TLS file is missing, unreadable or
        malformed (before anything is bound), a worker could not be started (those started
        are stopped) or exited on its own, or a worker's shutdown failed (its app's lifespan
        raised, or it still ran at twice the grace period and 5 s, and was killed).
    """
    if threading.current_thread() is not threading.main_thread():
        # Else it failed after binding: in each backend's words, inside an exception group, or
        # with signal's ValueError.
        raise RuntimeError("streamkit.run handles SIGINT and SIGTERM: call it from the main thread")
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A worker, started with the spawn method, imports the script that started it (as
        # multiprocessing itself tells, privately): run there unguarded, it would serve again
        # on the same address, and fail with "Address already in use".
        raise RuntimeError(
            "streamkit.run was called again as a worker imported the script that started it: "
            "call it under if __name__ == '__main__':"
        )
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    check_count("workers", workers)
    if workers > 1 and not isinstance(app, str):
        raise ValueError(
            f"{workers} workers each import the app: give it as MODULE:ATTRIBUTE, not {app!r}"
        )
    check_stalled_connection_timeout("stalled_connection_timeout", stalled_connection_timeout)
    check_tls(tls)
    _check_log_level(log_level)
    if log_level is not None:
        configure_run_logging(log_level)
    if isinstance(app, str):
        # Several workers import it too; importing it here first reports a bad name at once
        # (and what is no ASGI application: import_app checks it).
        application = import_app(app)
    elif not callable(app):  # else each request fails, past the start
        raise TypeError(
            f"app must be an ASGI application (callable), got {type(app).__name__}: {app!r:.80}"
        )
    else:
        _check_asgi("app", app)
        application = app
    if grace_period is None:
        grace_period = application.grace_period if isinstance(application, App) else 15.0
    check_duration("grace_period", grace_period)
    if tls is not None:
        # serve() loads the files again in each worker; a bad one is reported here, plainly
        # and before anything is bound.
        apply_tls(tls, _hypercorn_config())
    # Bound here, outside the event loop: a bad or taken address is raised as itself, not
    # inside the serving task group's exception group.
    with bind_socket(bind, stalled_connection_timeout=stalled_connection_timeout) as sock:
        if workers == 1:
            anyio.run(
                partial(_serve_here, application, sock=sock, grace_period=grace_period, tls=tls),
                backend=backend,
            )
        else:
            assert isinstance(app, str)
            _supervise(app, sock, backend, workers, grace_period, log_level, tls)


def _check_log_level(level: object) -> None:
    """Refuse a log level logging would refuse only once it configures (or never, when the
    program configured logging first), or take as a number (``True``)."""
    if level is None or (isinstance(level, int) and not isinstance(level, bool)):
        return
    if not isinstance(level, str):
        raise TypeError(
            f"log_level must be a level name or an int, got {type(level).__name__}: {level!r:.80}"
        )
    names = logging.getLevelNamesMapping()
    if level not in names:
        raise ValueError(f"log_level must be one of {', '.join(names)}, got {level!r:.80}")


def _hypercorn_config() -> Config:
    from hypercorn.config import Config

    config = Config()
    # hypercorn's default error log adds a handler of its own, which doubles every line once
    # logging is configured; its plain logger goes through the program's logging instead.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def _announce(address: ServerAddress) -> None:
    """Say where the server serves, once it answers (its app's lifespan has started): a
    supervisor's script may wait for the line to send traffic."""
    logger.info("serving on %s (pid %d)", address.url, os.getpid())


async def _serve_here(
    app: ASGIApp, *, sock: socket.socket, grace_period: float, tls: TLSConfig | None
) -> None:
    # Not in a task group, whose exception group would hide serve's errors from main().
    await serve(
        app,
        sock=sock,
        grace_period=grace_period,
        config=_hypercorn_config(),
        tls=tls,
        on_serving=_announce,
    )


def _supervise(
    target: str,
    sock: socket.socket,
    backend: str,
    workers: int,
    grace_period: float,
    log_level: str | int | None,
    tls: TLSConfig | None,
) -> None:
    host, port = sock.getsockname()[:2]
    context = multiprocessing.get_context("spawn")
    # Each worker says on it when it serves (its app's lifespan has started).
    serving_reader, serving_writer = context.Pipe(duplex=False)
    # Each made as it is started: a mistyped count (a hundred million) fails at the first
    # worker the system cannot start, not in the making of them all.
    processes: list[multiprocessing.process.BaseProcess] = []
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)

    def wake(signum: int, frame: FrameType | None) -> None:
        try:
            os.write(wake_write, b"\0")
        except BlockingIOError:
            pass  # a wake-up is pending already

    previous = {number: signal.signal(number, wake) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        for number in range(workers):
            process = context.Process(
                target=_worker,
                args=(target, sock, backend, grace_period, log_level, tls, serving_writer),
                name=f"streamkit-worker-{number}",
            )
            try:
                process.start()
            except OSError as exc:
                # Out of processes, memory or descriptors. The workers started are stopped:
                # left, they would serve on unsupervised, and multiprocessing would wait for
                # them as this process exits, for ever.
                _stop(processes, deadline=time.monotonic() + 2 * grace_period + KILL_MARGIN)
                raise ServeError(f"cannot start worker {number + 1} of {workers}: {exc}") from exc
            processes.append(process)
        serving_writer.close()  # the workers hold it now
        url = ServerAddress(host=host, port=port, scheme="https" if tls else "http").url
        pids = ", ".join(str(process.pid) for process in processes)
        logger.info("started %d workers for %s (pids %s)", workers, url, pids)
        ends = [process.sentinel for process in processes] + [wake_read]
        # Each worker says once that it serves (its app's lifespan has started), then closes
        # its end: the pipe ends once every worker has, or has exited (as its sentinel says).
        said: list[multiprocessing.connection.Connection] = [serving_reader]
        serving = 0
        while True:
            ready = multiprocessing.connection.wait([*ends, *said])
            if any(end in ready for end in ends):
                break
            try:
                serving_reader.recv_bytes()  # there to read: it does not block
            except EOFError:
                said.clear()
                continue
            serving += 1
            if serving == workers:
                logger.info("serving on %s with %d workers (pids %s)", url, workers, pids)
        signalled = wake_read in ready
        # Taken before the others are stopped, after which every worker has an exit code; by
        # its sentinel, since a worker's pipe may close a moment before its exit code is
        # there to read.
        exited = [process for process in processes if process.sentinel in ready]
        _stop(processes, deadline=time.monotonic() + 2 * grace_period + KILL_MARGIN)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        os.close(wake_read)
        os.close(wake_write)
        serving_reader.close()
        serving_writer.close()
    if not signalled:
        failed = exited[0]
        raise ServeError(f"worker {failed.name} (pid {failed.pid}) exited with {failed.exitcode}")
    # A worker whose shutdown failed (its app's lifespan raised, or it was killed for
    # overrunning) fails the command, as it fails the one process serving alone. One ended
    # by the signal itself had not begun to listen for it (it was still importing Python, or
    # the script that started it): it had served nothing, and is stopped, not failed.
    failures = [process for process in processes if process.exitcode not in STOPPED_EXIT_CODES]
    if failures:
        raise ServeError(
            "; ".join(
                f"worker {process.name} (pid {process.pid}) exited with {process.exitcode} "
                "during the shutdown"
                for process in failures
            )
        )


def _stop(processes: Sequence[multiprocessing.process.BaseProcess], *, deadline: float) -> None:
    for process in processes:
        if process.pid is not None and process.exitcode is None:
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0.0))
        if process.exitcode is None:
            logger.error(
                "worker %s (pid %s) did not stop in time: killed", process.name, process.pid
            )
            process.kill()
            process.join()


def _worker(
    target: str,
    sock: socket.socket,
    backend: str,
    grace_period: float,
    log_level: str | int | None,
    tls: TLSConfig | None,
    serving: multiprocessing.connection.Connection,
) -> None:
    # A terminal's Ctrl-C reaches the whole process group: the supervisor alone acts on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A SIGTERM before the worker listens for it (while it imports the app, say) would kill
    # it undrained: it is noted, and _watch_for_termination() acts on it once it listens.
    # (Not blocked: threads started meanwhile, and the processes they start, would keep it
    # blocked.)
    signal.signal(signal.SIGTERM, _note_early_sigterm)
    if log_level is not None:
        configure_run_logging(log_level)
    try:
        # Imported by the supervisor first, but the module runs again here: what it does as it
        # runs may fail in a worker alone (a port it binds, which the supervisor holds).
        app = import_app(target)
    except ImportError as exc:
        _worker_failed(exc)
    try:
        anyio.run(
            partial(_serve_socket, app, sock, grace_period=grace_period, tls=tls, serving=serving),
            backend=backend,
        )
    except ServeError as exc:
        _worker_failed(exc)


def _worker_failed(exc: Exception) -> NoReturn:
    """Say *exc* as the command says its own errors, not as a traceback of the worker's, and
    exit with 1: the status tells the supervisor."""
    print(f"streamkit: error: {multiprocessing.current_process().name}: {exc}", file=sys.stderr)
    sys.exit(1)


#: Set by a SIGTERM that reached a worker before it listened for one.
_early_sigterm: list[int] = []


def _note_early_sigterm(signum: int, frame: FrameType | None) -> None:
    _early_sigterm.append(signum)


async def _watch_for_termination(terminated: anyio.Event) -> None:
    """Set *terminated* on SIGTERM, or once the supervising process is gone (killed with
    SIGKILL, say), so that no worker is left serving on its own.

    It listens until cancelled, once the worker has stopped serving: a supervisor (systemd,
    say) may signal the worker as well as this process, and a second SIGTERM must not kill the
    worker in the middle of its drain. Leaving the receiver earlier would not do: on asyncio it
    puts the default disposition back, and a SIGTERM that came then killed the worker.
    """
    parent = multiprocessing.parent_process()
    async with anyio.create_task_group() as task_group:

        async def on_orphaned(sentinel: int) -> None:
            await anyio.wait_readable(sentinel)
            logger.warning("worker %d: the supervising process is gone; stopping", os.getpid())
            terminated.set()

        if parent is not None:
            task_group.start_soon(on_orphaned, parent.sentinel)
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            if _early_sigterm:
                terminated.set()
            async for _ in signals:
                terminated.set()


async def _serve_socket(
    app: ASGIApp,
    sock: socket.socket,
    *,
    grace_period: float,
    tls: TLSConfig | None,
    serving: multiprocessing.connection.Connection,
) -> None:
    def tell_supervisor(address: ServerAddress) -> None:
        logger.info("worker %d serving", os.getpid())
        serving.send_bytes(b"serving")  # a few bytes into an empty pipe: it does not block
        serving.close()

    terminated = anyio.Event()
    # What serve raises is raised as it is, not in the watching task group's exception group:
    # a ServeError is said as the command's own error, a SystemExit or KeyboardInterrupt stops
    # the worker as it would alone. (Nothing cancels this task: anyio.run runs it.)
    failure: BaseException | None = None
    async with anyio.create_task_group() as watching:
        watching.start_soon(_watch_for_termination, terminated)
        try:
            await serve(
                app,
                sock=sock,
                grace_period=grace_period,
                shutdown_trigger=terminated.wait,
                config=_hypercorn_config(),
                tls=tls,
                on_serving=tell_supervisor,
            )
        except BaseException as exc:
            failure = exc
        watching.cancel_scope.cancel()
    if failure is not None:
        try:
            raise failure
        finally:
            failure = None  # its traceback holds this frame


def _flag(
    parse: Callable[[str], T], kind: str, check: Callable[[str, object], None]
) -> Callable[[str], T]:
    """A flag's type for the parser: *parse* (the flag must be *kind*), then *check*; a value
    refused by either is a usage error naming the flag."""

    def convert(text: str) -> T:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        try:
            check("value", value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value ")) from None
        return value

    return convert


#: ``--workers``.
_count = _flag(int, "an int", check_count)
#: A duration flag.
_seconds = _flag(float, "a number of seconds", check_duration)


#: ``--stalled-connection-timeout``, but for ``off``.
_connection_seconds = _flag(float, "a number of seconds", check_stalled_connection_timeout)


def _connection_seconds_or_off(text: str) -> float | None:
    """``--stalled-connection-timeout``: seconds, or ``off``."""
    return None if text == "off" else _connection_seconds(text)


def _directory(text: str) -> str:
    """``--app-dir``: one that does not exist would be searched for nothing."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"not a directory: {text!r}")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m streamkit run MODULE:APP [options]``.

    :param argv: the arguments; by default ``sys.argv[1:]``.
    :return: the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m streamkit", description="streamkit: streams tied to their connection."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser(
        "run",
        help="serve an ASGI app with hypercorn; SIGTERM or SIGINT drains its streams",
        description="Serve an ASGI app with hypercorn; SIGTERM or SIGINT drains its streams.",
    )
    command.add_argument("app", metavar="MODULE:APP", help="the application, such as service:app")
    command.add_argument("--backend", choices=BACKENDS, default="asyncio")
    command.add_argument("--bind", default="127.0.0.1:8000", metavar="HOST:PORT")
    command.add_argument("--workers", type=_count, default=1, metavar="N")
    command.add_argument(
        "--grace-period",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="from the signal to the server stopped; default: an App's own, else 15",
    )
    command.add_argument(
        "--stalled-connection-timeout",
        type=_connection_seconds_or_off,
        default=10.0,
        metavar="SECONDS",
        help="abort a connection whose client stopped reading for this long (off: never)",
    )
    command.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    command.add_argument(
        "--certfile",
        metavar="PEM",
        help="serve HTTPS (HTTP/2 by ALPN) with this certificate chain; needs --keyfile",
    )
    command.add_argument("--keyfile", metavar="PEM", help="the certificate's private key")
    command.add_argument(
        "--client-ca",
        metavar="PEM",
        help="require client certificates signed by these CAs (with --certfile)",
    )
    command.add_argument(
        "--tls-handshake-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="close a TLS connection whose handshake is not done this long after its accept "
        f"(with --certfile); default: {HANDSHAKE_TIMEOUT:g}",
    )
    command.add_argument(
        "--app-dir",
        type=_directory,
        default=".",
        metavar="DIR",
        help="where to import the app from",
    )
    arguments = parser.parse_args(argv)
    if (arguments.certfile is None) != (arguments.keyfile is None):
        command.error("--certfile and --keyfile go together")
    if arguments.client_ca is not None and arguments.certfile is None:
        command.error("--client-ca needs --certfile and --keyfile")
    if arguments.tls_handshake_timeout is None:
        arguments.tls_handshake_timeout = HANDSHAKE_TIMEOUT
    elif arguments.certfile is None:
        command.error("--tls-handshake-timeout needs --certfile and --keyfile")
    sys.path.insert(0, os.path.abspath(arguments.app_dir))
    try:
        tls = (
            None
            if arguments.certfile is None
            else TLSConfig(
                certfile=arguments.certfile,
                keyfile=arguments.keyfile,
                client_ca=arguments.client_ca,
                handshake_timeout=arguments.tls_handshake_timeout,
            )
        )
        run(
            arguments.app,
            backend=arguments.backend,
            bind=arguments.bind,
            workers=arguments.workers,
            grace_period=arguments.grace_period,
            stalled_connection_timeout=arguments.stalled_connection_timeout,
            log_level=arguments.log_level.upper(),
            tls=tls,
        )
    except (ValueError, TypeError, ImportError, AttributeError, ServeError) as exc:
        print(f"streamkit: error: {exc}", file=sys.stderr)
        return 1
    return 0
