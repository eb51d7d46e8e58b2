"""Streaming a file in chunks, optionally at a bounded rate, closed on every end of the stream.

The leak this prevents: a download is abandoned, and its file stays open until the garbage
collector happens upon the generator that held it (on a busy server, a steady climb towards
the descriptor limit). Here the file is opened inside the stream and entered through its
:class:`~streamkit.StreamSender`, so whatever ends the stream it is closed, in the producer's
own task and shielded, before the end is reported. Reads run in worker threads (anyio's file
API), so a slow disk never blocks the event loop; a stream cancelled during a read waits for
that one chunk.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

import anyio

from ._checks import check_count, check_path, check_rate
from ._sender import Producer, StreamSender

__all__ = ["file_chunks"]

#: The largest chunk_size: a read allocates its chunk whole.
MAX_CHUNK_SIZE = 16 * 1024 * 1024


def _open_regular(path: str | os.PathLike[str]) -> tuple[BinaryIO, int]:
    """Open *path* for reading if it is a regular file; return it and its size.

    Opened without blocking, then checked: opening a FIFO that has no writer would block this
    worker thread, where no cancellation reaches it, until something wrote to it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(
                f"file_chunks streams regular files: {os.fspath(path)!r} is not a regular file"
            )
        os.set_blocking(fd, True)
        return open(fd, "rb"), status.st_size
    except BaseException:
        os.close(fd)
        raise


def file_chunks(
    path: str | os.PathLike[str],
    *,
    chunk_size: int = 65536,
    bytes_per_second: float | None = None,
) -> Producer[bytes]:
    """A producer for a :class:`~streamkit.StreamResponse` that sends the file at *path*, chunk
    by chunk::

        return StreamResponse(file_chunks("export.csv", bytes_per_second=1_000_000),
                              media_type="text/csv")

    The file is opened when the stream starts, so a file that cannot be opened ends the
    stream with :attr:`~streamkit.EndReason.ERROR` after its ``200`` was sent: check for it
    in the endpoint first to answer ``404``.

    The file is sent as it was when opened, up to its size then: one appended to meanwhile is
    sent to that size, one replaced or deleted meanwhile whole; one truncated meanwhile ends
    the stream with an ``OSError`` once its reads come short.

    :param path: the file: a regular file (a FIFO or a device ends the stream with a
        ``ValueError``, as a file that cannot be opened does). A symbolic link is followed.
    :param chunk_size: the most bytes read, and sent, at a time: up to 16 MiB.
    :param bytes_per_second: the average rate to send at, for a client that should not get
        the file faster (the burst is one chunk); ``None`` sends as fast as the client reads.
    :raises TypeError: *path* is not a ``str`` or :class:`os.PathLike` (an ``int`` would be
        a file descriptor of the server's).
    :raises ValueError: *path* is empty, *chunk_size* is below 1 or above 16 MiB, or
        *bytes_per_second* is not a positive, finite number.
    """
    check_path("path", path)
    check_count("chunk_size", chunk_size)
    if chunk_size > MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be at most {MAX_CHUNK_SIZE}, got {chunk_size!r}")
    check_rate("bytes_per_second", bytes_per_second, optional=True)

    async def produce(send: StreamSender[bytes]) -> None:
        # No checkpoint between the open returning and the file being registered, so a
        # cancellation cannot slip in between and leave it open.
        opened, size = await anyio.to_thread.run_sync(_open_regular, path)
        file = await send.enter_async_context(anyio.wrap_file(opened))
        started = anyio.current_time()
        sent = 0
        # Up to the size it had when opened: a file written to meanwhile (a log) would
        # otherwise hold the stream for as long as it grows.
        while sent < size:
            chunk = await file.read(min(chunk_size, size - sent))
            if not chunk:
                # Cut short: the client has a body that is not the file, old or new; the
                # stream must not report it complete.
                raise OSError(
                    f"{os.fspath(path)!r} was truncated while it was sent: it ended after "
                    f"{sent} of the {size} bytes it had when opened"
                )
            await send(chunk)
            sent += len(chunk)
            if bytes_per_second is not None:
                # Paced against the start, not the last chunk: time lost to a slow client
                # or disk is made up, so the average holds.
                await anyio.sleep_until(started + sent / bytes_per_second)

    return produce
