"""The knobs every stream has, declared once and validated where they are made.

:class:`StreamOptions` is the one declaration. :class:`OptionArguments` is the same list as
keyword arguments, for the signatures that take them (the response classes, :class:`App`,
its routes); a TypedDict cannot be computed from a dataclass, so ``tests/test_options.py``
holds the two to the same names, types and defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypedDict

from ._checks import check_count, check_duration

__all__ = ["OptionArguments", "StreamOptions"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOptions:
    """How one stream is run: its timers, bounds and buffer.

    :param heartbeat_interval: after this many seconds with nothing written, send a heartbeat
        frame; ``None`` turns the regular heartbeats off, though a stream that has a heartbeat
        frame still writes one after 30 seconds of silence, which notices a client that left
        while a pipelined request kept the server from reading.
    :param send_timeout: a write that has not completed after this many seconds ends the
        stream with :attr:`~streamkit.EndReason.SEND_TIMEOUT`; ``None`` waits forever.
    :param max_duration: the stream ends with :attr:`~streamkit.EndReason.DEADLINE` after
        this many seconds; ``None`` for no limit.
    :param idle_timeout: when the producer queues nothing for this many seconds, the
        response's idle fallback (by default the last item again, marked stale where the format
        can say so) is sent; ``None`` waits as long as the producer takes.
    :param end_when_idle: end the stream with :attr:`~streamkit.EndReason.DEADLINE` after the
        idle fallback was sent, instead of waiting on.
    :param cleanup_timeout: how long the producer's shielded cleanup (closing an async
        iterable, registered resources) may take once the stream ends.
    :param buffer_size: how many encoded items may wait between the producer and the socket;
        a producer that gets this far ahead waits. ``0`` hands each item over directly.
    :raises ValueError: a duration is zero, negative or not finite, or the buffer size is
        negative.
    :raises TypeError: a value has the wrong type.
    """

    heartbeat_interval: float | None = None
    send_timeout: float | None = 10.0
    max_duration: float | None = None
    idle_timeout: float | None = None
    end_when_idle: bool = False
    cleanup_timeout: float = 5.0
    buffer_size: int = 16

    def __post_init__(self) -> None:
        check_duration("heartbeat_interval", self.heartbeat_interval, optional=True)
        check_duration("send_timeout", self.send_timeout, optional=True)
        check_duration("max_duration", self.max_duration, optional=True)
        check_duration("idle_timeout", self.idle_timeout, optional=True)
        if not isinstance(self.end_when_idle, bool):
            raise TypeError(f"end_when_idle must be a bool, got {self.end_when_idle!r}")
        check_duration("cleanup_timeout", self.cleanup_timeout)
        check_count("buffer_size", self.buffer_size, least=0)

    @classmethod
    def names(cls) -> frozenset[str]:
        """The option names, for callers that accept them as keyword arguments."""
        return _NAMES

    @classmethod
    def split(cls, arguments: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split keyword *arguments* into ``(options, the rest)``."""
        options = {name: value for name, value in arguments.items() if name in _NAMES}
        rest = {name: value for name, value in arguments.items() if name not in _NAMES}
        return options, rest


class OptionArguments(TypedDict, total=False):
    """:class:`StreamOptions` as keyword arguments (see there for each)."""

    heartbeat_interval: float | None
    send_timeout: float | None
    max_duration: float | None
    idle_timeout: float | None
    end_when_idle: bool
    cleanup_timeout: float
    buffer_size: int


# Computed once: response construction filters its keyword arguments with it.
_NAMES = frozenset(field.name for field in fields(StreamOptions))
