"""How long a client waits before it reconnects, and when it gives up. Pure: no I/O, no clock.

The base delay is the server's ``retry:`` when it sent one (a browser waits exactly that),
but never less than :attr:`Backoff.min_retry`, else :attr:`Backoff.initial_delay`. Each
attempt that fails in a row multiplies it, up to :attr:`Backoff.max_delay`, and every wait is
stretched by a random fraction up to :attr:`Backoff.jitter`, so the clients a restart dropped
together do not all come back in the same instant. Stretched, never shortened: a server that
asked for a second gets at least that. A ``Retry-After`` is a floor too, for one wait.

A server's word can make a wait longer than the bounds allow: :meth:`Backoff.gives_up` counts
the wait ahead, so a client told to come back in an hour gives up at once, not after the hour.
"""

from __future__ import annotations

import email.utils
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime

from ._checks import check_count, check_duration, check_rate
from ._sse import MAX_RETRY_DIGITS

__all__ = ["Backoff", "retry_after_seconds"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """When a client reconnects, and when it stops trying.

    :param initial_delay: seconds before the first attempt, when the server sent no ``retry:``.
    :param min_retry: the shortest server ``retry:`` obeyed, in seconds: a shorter one
        (``retry: 0``) counts as this, so a server cannot make its clients reconnect in a
        tight loop.
    :param max_delay: the longest wait before the jitter, in seconds.
    :param multiplier: how much longer each wait is than the previous one, while attempts
        fail in a row.
    :param jitter: the fraction by which a wait is stretched at random: ``0.5`` waits
        between 1 and 1.5 times the delay. ``0`` waits exactly.
    :param max_attempts: attempts in a row that may fail (no event received) before giving up;
        ``None`` for no limit.
    :param max_reconnect_time: seconds since the connection was lost after which no new
        attempt starts; ``None`` for no limit. A wait that would end past it (a server's
        ``retry:`` or ``Retry-After`` of an hour, say) is not started.
    :raises TypeError: a value has the wrong type.
    :raises ValueError: a value is out of range (a multiplier below 1, a jitter outside 0 to 1,
        an initial delay longer than the longest).
    """

    initial_delay: float = 1.0
    min_retry: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = None
    max_reconnect_time: float | None = None

    def __post_init__(self) -> None:
        check_duration("initial_delay", self.initial_delay)
        check_duration("min_retry", self.min_retry)
        check_duration("max_delay", self.max_delay)
        if self.initial_delay > self.max_delay:
            # Else the first wait would silently be max_delay, not what was asked for.
            raise ValueError(
                f"initial_delay {self.initial_delay!r} is longer than max_delay "
                f"{self.max_delay!r}, which bounds every wait: give a max_delay of at least it"
            )
        check_rate("multiplier", self.multiplier)
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float):
            raise TypeError(f"jitter must be a number, got {type(self.jitter).__name__}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if self.max_attempts is not None:
            check_count("max_attempts", self.max_attempts)
        check_duration("max_reconnect_time", self.max_reconnect_time, optional=True)

    def delay(
        self,
        failures: int,
        *,
        server_retry: float | None = None,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait before the next attempt.

        :param failures: attempts that failed in a row since the last one that received an
            event (``0`` for the first reconnection after a working connection).
        :param server_retry: the server's ``retry:``, in seconds, if it sent one.
        :param retry_after: the delay of a ``Retry-After`` the last answer carried: the wait
            is at least that (``Retry-After: 0`` does not skip the backoff).
        :param rng: the random source of the jitter (for tests); the module's by default.
        """
        if server_retry is None:
            base = self.initial_delay
        else:
            base = server_retry = max(server_retry, self.min_retry)
        # multiplier ** failures overflows a float after a long outage (or soon, for a large
        # multiplier), long after it passed max_delay: whether it did is asked in logarithms.
        growth = failures * math.log(self.multiplier)
        if base >= self.max_delay or growth >= math.log(self.max_delay / base):
            delay = self.max_delay
        else:
            delay = base * self.multiplier**failures
        if server_retry is not None:
            delay = max(delay, server_retry)  # the server's word is a floor, past max_delay too
        delay *= 1.0 + self.jitter * (rng or _random).random()
        return delay if retry_after is None else max(delay, retry_after)

    def gives_up(self, failures: int, reconnecting_for: float, wait: float = 0.0) -> bool:
        """Whether to stop, after *failures* failed attempts in a row and *reconnecting_for*
        seconds since the connection was lost, rather than wait *wait* seconds more and try
        again."""
        if self.max_attempts is not None and failures >= self.max_attempts:
            return True
        return (
            self.max_reconnect_time is not None
            and reconnecting_for + wait >= self.max_reconnect_time
        )


_random = random.Random()


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """The delay a ``Retry-After`` header asks for, in seconds, or ``None`` if it holds
    neither a number of seconds (up to 19 digits, as a ``retry:`` is read) nor an HTTP date
    (one whose fields a date can hold)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value) if len(value) <= MAX_RETRY_DIGITS else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        # OverflowError: a field of more digits than a C long (an hour of 21) is no date.
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
