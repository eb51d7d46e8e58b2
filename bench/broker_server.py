"""One server of the broker benchmark, in a process of its own:
``python -m bench.broker_server --impl raw|memory|redis --backend asyncio|trio``.

It prints one JSON line ``{"port": ..., "pid": ...}`` once it listens and runs until SIGTERM
or SIGINT. streamkit's apps are served with :func:`streamkit.serve`, as their users would;
the hand-written one with hypercorn's own ``serve``, on a socket bound alike (same backlog,
and the ``TCP_USER_TIMEOUT`` that ``streamkit.serve`` sets by default) and the same
``Config``. One worker, HTTP/1.1.

Either app answers ``/collector`` too, from :func:`with_collector`: what the garbage collector
did in the process (:class:`~bench.probe.Collections`), and, asked to, a full collection and
the C allocator's free memory handed back to the kernel before memory is measured.

``bench.broker_worker:app`` is the streamkit app for ``python -m streamkit run --workers N``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import signal
import socket
import sys
from urllib.parse import parse_qs

import anyio

from .broker_apps import SEND_TIMEOUT, raw_app, send_json, streamkit_app
from .probe import ASGIApp, Collections, Receive, Scope, Send
from .server import BACKLOG, GRACE_PERIOD, _config, raise_open_file_limit

#: ``streamkit.serve``'s default ``stalled_connection_timeout``, in seconds.
STALLED_CONNECTION_TIMEOUT = 10.0


class _KernelAborts(logging.Filter):
    """Leaves out what hypercorn's asyncio worker logs when the kernel aborts a connection
    while it closes it (``TCP_USER_TIMEOUT``, after a stalled subscriber was dropped): the
    stall measurement makes that happen on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, TimeoutError)


def trim_heap() -> bool:
    """Hand the kernel back the pages the C allocator holds free (glibc's ``malloc_trim``),
    wherever they are in its heap; whether it could (not on another C library).

    Free pages it keeps stay resident, and the next allocations take them at no cost in RSS:
    a server whose startup freed a megabyte there (modules compiled from source, which build
    and drop their syntax trees) held its first hundred subscribers for some 4 KiB less each
    than one whose later imports had filled those holes, for the same allocations.
    """
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return False
    malloc_trim(0)
    return True


def with_collector(app: ASGIApp) -> ASGIApp:
    """*app*, and ``/collector``: ``GET`` answers ``{"full": ..., "seconds": ...}`` (see
    :class:`~bench.probe.Collections`); ``POST`` runs a full collection first, and with
    ``?trim=1`` then hands the C allocator's free pages back (:func:`trim_heap`)."""
    collections = Collections()

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/collector":
            if scope["method"] == "POST":
                gc.collect()
                if parse_qs(scope["query_string"].decode()).get("trim") == ["1"]:
                    trim_heap()
            await send_json(send, 200, {"full": collections.full, "seconds": collections.seconds})
            return
        await app(scope, receive, send)

    return wrapped


def _announce(port: int) -> None:
    sys.stdout.write(json.dumps({"port": port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()


async def _signalled() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def serve(
    impl: str, backend: str, *, redis_url: str | None, key_prefix: str, send_timeout: float
) -> None:
    """Serve *impl* on the running backend until SIGTERM or SIGINT."""
    config = _config()
    if impl != "raw":
        import streamkit

        app = with_collector(
            streamkit_app(
                impl, redis_url=redis_url, key_prefix=key_prefix, send_timeout=send_timeout
            )
        )
        async with anyio.create_task_group() as task_group:
            address = await task_group.start(
                lambda task_status: streamkit.serve(
                    app,
                    bind="127.0.0.1:0",
                    grace_period=GRACE_PERIOD,
                    stalled_connection_timeout=STALLED_CONNECTION_TIMEOUT,
                    shutdown_trigger=_signalled,
                    config=config,
                    task_status=task_status,
                )
            )
            _announce(address.port)
        return

    sock = socket.create_server(("127.0.0.1", 0), backlog=BACKLOG)
    sock.setsockopt(
        socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(STALLED_CONNECTION_TIMEOUT * 1000)
    )
    port = sock.getsockname()[1]
    config.bind = [f"fd://{sock.fileno()}"]
    sock.detach()  # hypercorn adopts the descriptor
    if backend == "trio":
        from hypercorn.trio import serve as hypercorn_serve
    else:
        from hypercorn.asyncio import serve as hypercorn_serve  # type: ignore[assignment]
    async with anyio.create_task_group() as task_group:
        app = with_collector(raw_app(send_timeout))
        task_group.start_soon(
            lambda: hypercorn_serve(app, config, shutdown_trigger=_signalled)  # type: ignore[arg-type]
        )
        _announce(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.broker_server", description=__doc__)
    parser.add_argument("--impl", required=True, choices=["raw", "memory", "redis"])
    parser.add_argument("--backend", required=True, choices=["asyncio", "trio"])
    parser.add_argument("--redis-url")
    parser.add_argument("--key-prefix", default="")
    parser.add_argument("--send-timeout", type=float, default=SEND_TIMEOUT)
    arguments = parser.parse_args(argv)
    raise_open_file_limit()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("asyncio").addFilter(_KernelAborts())
    anyio.run(
        lambda: serve(
            arguments.impl,
            arguments.backend,
            redis_url=arguments.redis_url,
            key_prefix=arguments.key_prefix,
            send_timeout=arguments.send_timeout,
        ),
        backend=arguments.backend,
    )


if __name__ == "__main__":
    main()
