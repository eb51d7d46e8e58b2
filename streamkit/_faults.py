"""What the runtime noticed a producer doing wrong, logged and kept for the leak check.

Some mistakes in a producer break nothing visible: an ``await`` in a plain ``finally`` that
a cancellation cut short leaves its cleanup undone without an error. Each such fault is
logged as a warning when it is noticed, and recorded here, so that
:func:`streamkit.testing.open_leak_check` fails a test whose block produced one.
"""

from __future__ import annotations

import collections
import itertools
import logging

__all__ = ["recorded_faults", "report_fault"]

logger = logging.getLogger("streamkit")

# Bounded: a process that is never tested must not grow with its faults.
_recent: collections.deque[tuple[int, str]] = collections.deque(maxlen=1000)
_serial = itertools.count(1)


def report_fault(description: str) -> None:
    """Log *description* as a warning and record it."""
    logger.warning("%s", description)
    _recent.append((next(_serial), description))


def recorded_faults() -> dict[int, str]:
    """The recent faults, by serial number (a fault noticed later has a larger one)."""
    return dict(_recent)
