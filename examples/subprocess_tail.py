"""``tail -F`` of a log file as server-sent events, with ``tail`` stopped when the client leaves.

Run it (it writes a demo log line every second, unless you give ``--log PATH``)::

    python examples/subprocess_tail.py
    curl -N http://127.0.0.1:8000/tail

Each new line of the log is one event. Every stream runs its own ``tail`` in a process group
of its own; when the stream ends, however it ends, the group gets ``SIGTERM``, then
``SIGKILL`` if it lingers, and ``tail`` is reaped: watch ``pgrep -a tail`` go back to
nothing when ``curl`` stops. Without that, each closed tab would leave a ``tail`` behind.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamkit import EventSourceResponse, run
from streamkit.resources import subprocess_lines

DEMO_LOG = Path(tempfile.gettempdir()) / "streamkit-demo.log"


def create_app(
    log: str | os.PathLike[str], *, backlog: int = 10, write_demo_lines: bool = False
) -> Starlette:
    """Stream new lines of *log*.

    :param log: the file to follow (it may not exist yet: ``tail -F`` waits for it).
    :param backlog: how many existing lines to send first.
    :param write_demo_lines: append a line to *log* every second while the app runs.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as task_group:
            if write_demo_lines:
                task_group.start_soon(write_demo_log, Path(log))
            yield
            task_group.cancel_scope.cancel()

    async def tail(request: Request) -> Response:
        command = ["tail", "-n", str(backlog), "-F", os.fspath(log)]
        return EventSourceResponse(subprocess_lines(command, stop_grace_period=1.0))

    return Starlette(routes=[Route("/tail", tail)], lifespan=lifespan)


async def write_demo_log(path: Path, interval: float = 1.0) -> None:
    """Append a timestamped line to *path* every *interval* seconds."""
    n = 0
    while True:
        n += 1
        async with await anyio.open_file(path, "a") as file:
            await file.write(f"{time.strftime('%H:%M:%S')} demo line {n}\n")
        await anyio.sleep(interval)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # argparse converts a str default as it does a given value: a bad $PORT is a usage error.
    parser.add_argument("--port", type=int, default=os.environ.get("PORT", "8000"))
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--log", type=Path, default=None)
    arguments = parser.parse_args()
    if arguments.log is None:
        app = create_app(DEMO_LOG, write_demo_lines=True)
    else:
        app = create_app(arguments.log)
    # Serves until Ctrl-C, then drains the streams; logs every stream's end.
    run(app, backend=arguments.backend, bind=f"127.0.0.1:{arguments.port}")
