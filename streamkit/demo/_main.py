"""The demo's command line: serve the demo with hypercorn, on trio unless told otherwise."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from functools import partial

import anyio
import sniffio

from .. import ServeError, ServerAddress, serve
from ._app import create_app

__all__ = ["main"]


def _host(text: str) -> str:
    """*text* as the address to listen on: refused here if empty, a usage error, rather than
    by serve inside its task group."""
    if not text:
        raise argparse.ArgumentTypeError(f"the address must not be empty, got {text!r}")
    return text


def _port(text: str) -> int:
    """*text* as a TCP port, 0 to 65535: refused here, a usage error, rather than by serve
    inside its task group."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streamkit.demo",
        description="Serve the streamkit demo: a page of live streams, and the server's view "
        "of how each one ended.",
    )
    parser.add_argument("--host", type=_host, default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=_port, default=8000, help="port to listen on (0: any)")
    parser.add_argument(
        "--backend",
        choices=("trio", "asyncio"),
        default="trio",
        help="the event loop hypercorn runs on",
    )
    return parser


async def _serve(host: str, port: int) -> None:
    from hypercorn.config import Config

    config = Config()
    # Through logging, once, beside streamkit's own lines (not also straight to stderr).
    config.errorlog = logging.getLogger("hypercorn.error")
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    async with anyio.create_task_group() as task_group:
        address: ServerAddress = await task_group.start(
            partial(serve, create_app(), bind=bind, grace_period=5.0, config=config)
        )
        backend = sniffio.current_async_library()
        print(f"streamkit demo on {address.url}/ (backend: {backend}); Ctrl+C stops it", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the demo until interrupted (SIGINT or SIGTERM), then drain its streams and stop.

    :param argv: the command-line arguments, ``sys.argv[1:]`` by default.
    """
    arguments = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        anyio.run(partial(_serve, arguments.host, arguments.port), backend=arguments.backend)
    except* ServeError as failed:
        # The port taken, most likely: one line, not the task groups' traceback.
        error: BaseException = failed
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        sys.exit(f"python -m streamkit.demo: {error}")
