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

import anyio

from ._checks import check_count, check_rate
from ._sender import Producer, StreamSender

__all__ = ["file_chunks"]


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

    :param path: the file.
    :param chunk_size: the most bytes read, and sent, at a time.
    :param bytes_per_second: the average rate to send at, for a client that should not get
        the file faster (the burst is one chunk); ``None`` sends as fast as the client reads.
    :raises ValueError: *chunk_size* is below 1, or *bytes_per_second* is not a positive,
        finite number.
    """
    check_count("chunk_size", chunk_size)
    check_rate("bytes_per_second", bytes_per_second, optional=True)

    async def produce(send: StreamSender[bytes]) -> None:
        # No checkpoint between the open returning and the file being registered, so a
        # cancellation cannot slip in between and leave it open.
        file = await send.enter_async_context(await anyio.open_file(path, "rb"))
        started = anyio.current_time()
        sent = 0
        while chunk := await file.read(chunk_size):
            await send(chunk)
            sent += len(chunk)
            if bytes_per_second is not None:
                # Paced against the start, not the last chunk: time lost to a slow client
                # or disk is made up, so the average holds.
                await anyio.sleep_until(started + sent / bytes_per_second)

    return produce
