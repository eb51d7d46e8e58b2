"""Where streamkit's log lines go when the program has not said.

Each stream's end is logged at INFO on the ``streamkit`` logger. A library normally leaves
handlers to the program, but a server is a program's entry point: run as
``anyio.run(streamkit.serve, app)``, or under uvicorn, gunicorn or hypercorn (which configure
their own loggers and leave the root alone), nothing would show a stream's end. So when no
handler would receive the ``streamkit`` logger's records, streamkit adds one of its own to that
logger alone, writing to stderr. Other libraries' loggers keep their levels: setting up the root
at INFO would print every request line of httpx, say.
"""

from __future__ import annotations

import logging

__all__ = ["LOG_FORMAT", "configure_run_logging", "show_stream_ends"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

logger = logging.getLogger("streamkit")


def show_stream_ends() -> None:
    """Send the ``streamkit`` logger's INFO lines to stderr unless the program already
    handles them somewhere (on this logger or an ancestor, such as the root)."""
    if logger.hasHandlers():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def configure_run_logging(level: str | int) -> None:
    """The logging of ``streamkit run``: the program's handler on the root at its default
    level (WARNING), and streamkit's and hypercorn's own loggers at *level*.

    A program that configured logging before keeps its configuration.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    logging.basicConfig(format=LOG_FORMAT)
    for name in ("streamkit", "hypercorn.error"):
        logging.getLogger(name).setLevel(level)
