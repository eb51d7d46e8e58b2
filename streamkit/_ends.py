"""How a stream ended: one :class:`EndReason` per stream, reported as a :class:`StreamEnd`."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["EndReason", "StreamEnd"]


class EndReason(enum.Enum):
    """Why a stream ended. Every stream ends with exactly one. (A ``HEAD`` request, answered
    with the headers alone, runs no producer and is no stream: it has no end.)"""

    #: The producer finished and everything it sent was written.
    COMPLETED = "completed"
    #: The client closed or reset the connection (or its HTTP/2 stream).
    CLIENT_DISCONNECTED = "client_disconnected"
    #: A write to the client did not complete within ``send_timeout``.
    SEND_TIMEOUT = "send_timeout"
    #: The stream ran for ``max_duration``.
    DEADLINE = "deadline"
    #: The server began a graceful shutdown.
    SHUTDOWN = "shutdown"
    #: The producer raised an exception.
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnd:
    """The report of one finished stream, handed to ``on_end`` and logged.

    :param reason: why the stream ended.
    :param path: the request path.
    :param duration: seconds from the stream's start to its end being decided and its
        producer's cleanup finished.
    :param items_sent: items handed to the server to write to the client (heartbeats and
        closing events excluded), counted as each write begins: the write a stalled client
        held up when it was given up counts, though the client may have had only part of it,
        or none. One the server refused (the client gone) does not.
    :param bytes_sent: body bytes handed to the server so, heartbeats and closing events
        included.
    :param cleanup_duration: seconds the producer's cleanup took after the end was decided.
    :param exception: what the producer raised, for :attr:`EndReason.ERROR`.
    """

    reason: EndReason
    path: str
    duration: float
    items_sent: int
    bytes_sent: int
    cleanup_duration: float
    exception: BaseException | None = None
