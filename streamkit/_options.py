"""The knobs every stream has, validated once where they are declared."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["StreamOptions"]


def _check_duration(name: str, value: float | None, *, optional: bool) -> None:
    if value is None:
        if not optional:
            raise ValueError(f"{name} must be a number of seconds, got None")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{name} must be a number of seconds, got {type(value).__name__}: {value!r}"
        )
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOptions:
    """How one stream is run: its timers, bounds and buffer.

    :param heartbeat_interval: after this many seconds with nothing written, send a heartbeat
        frame; ``None`` disables heartbeats.
    :param send_timeout: a write that has not completed after this many seconds ends the
        stream with :attr:`~streamkit.EndReason.SEND_TIMEOUT`; ``None`` waits forever.
    :param max_duration: the stream ends with :attr:`~streamkit.EndReason.DEADLINE` after
        this many seconds; ``None`` for no limit.
    :param idle_timeout: when the producer queues nothing for this many seconds, the
        response's idle fallback (by default the last item again, marked stale where the format
        can say so) is sent; ``None`` waits as long as the producer takes.
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
    cleanup_timeout: float = 5.0
    buffer_size: int = 16

    def __post_init__(self) -> None:
        _check_duration("heartbeat_interval", self.heartbeat_interval, optional=True)
        _check_duration("send_timeout", self.send_timeout, optional=True)
        _check_duration("max_duration", self.max_duration, optional=True)
        _check_duration("idle_timeout", self.idle_timeout, optional=True)
        _check_duration("cleanup_timeout", self.cleanup_timeout, optional=False)
        if isinstance(self.buffer_size, bool) or not isinstance(self.buffer_size, int):
            raise TypeError(f"buffer_size must be an int, got {self.buffer_size!r}")
        if self.buffer_size < 0:
            raise ValueError(f"buffer_size must not be negative, got {self.buffer_size!r}")

    @classmethod
    def names(cls) -> frozenset[str]:
        """The option names, for callers that accept them as keyword arguments."""
        return _NAMES


# Computed once: response construction filters its keyword arguments with it.
_NAMES = frozenset(field.name for field in fields(StreamOptions))
