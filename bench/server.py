"""One benchmark server: ``python -m bench.server --impl NAME --backend asyncio|trio``.

It serves one implementation with hypercorn (one worker: this process; HTTP/1.1) on a port
of its own choosing, prints one JSON line ``{"port": ..., "pid": ...}`` once it listens, and
runs until ``GET /_bench/stop``, SIGTERM or SIGINT.

streamkit is served with :func:`streamkit.serve`, as its users would; the others with
hypercorn's ``serve`` on an identical socket (same backlog) and an identical ``Config``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import socket
import sys
from typing import Any

import anyio

from .apps import IMPLEMENTATIONS, AppSettings, make_app
from .probe import Probe

#: The listen backlog: what ``streamkit.serve`` uses, so every server gets the same.
BACKLOG = 1024
#: How long hypercorn may take to close what is still open once told to stop.
GRACE_PERIOD = 1.0


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _config() -> Any:
    from hypercorn.config import Config

    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = GRACE_PERIOD
    config.backlog = BACKLOG
    return config


def _announce(port: int) -> None:
    sys.stdout.write(json.dumps({"port": port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()


async def _stopped(probe: Probe) -> None:
    async with anyio.create_task_group() as task_group:

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    probe.stop.set()
                    return

        task_group.start_soon(on_signal)
        await probe.stop.wait()
        task_group.cancel_scope.cancel()


async def serve(impl: str, backend: str, settings: AppSettings) -> None:
    """Serve *impl* on the running backend until told to stop."""
    probe = Probe(impl=impl, backend=backend)
    app = make_app(impl, probe, settings)
    config = _config()

    async def trigger() -> None:
        await _stopped(probe)

    if impl == "streamkit":
        import streamkit

        async with anyio.create_task_group() as task_group:
            address = await task_group.start(
                lambda task_status: streamkit.serve(
                    app,
                    bind="127.0.0.1:0",
                    grace_period=GRACE_PERIOD,
                    shutdown_trigger=trigger,
                    config=config,
                    task_status=task_status,
                )
            )
            _announce(address.port)
        return

    sock = socket.create_server(("127.0.0.1", 0), backlog=BACKLOG)
    port = sock.getsockname()[1]
    config.bind = [f"fd://{sock.fileno()}"]
    sock.detach()  # hypercorn adopts the descriptor
    if backend == "trio":
        from hypercorn.trio import serve as hypercorn_serve
    else:
        from hypercorn.asyncio import serve as hypercorn_serve  # type: ignore[assignment]
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(
            lambda: hypercorn_serve(app, config, shutdown_trigger=trigger)  # type: ignore[arg-type]
        )
        # hypercorn listens on the adopted socket from its first step; connections made
        # before it accepts wait in the backlog.
        _announce(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__)
    parser.add_argument("--impl", required=True, choices=sorted(IMPLEMENTATIONS))
    parser.add_argument("--backend", required=True, choices=["asyncio", "trio"])
    parser.add_argument("--heartbeat-interval", type=float, default=5.0)
    parser.add_argument("--send-timeout", type=float, default=10.0)
    arguments = parser.parse_args(argv)
    raise_open_file_limit()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = AppSettings(
        heartbeat_interval=arguments.heartbeat_interval, send_timeout=arguments.send_timeout
    )
    anyio.run(serve, arguments.impl, arguments.backend, settings, backend=arguments.backend)


if __name__ == "__main__":
    main()
