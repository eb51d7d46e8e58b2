"""The exceptions streamkit raises.

Every one derives from :class:`StreamkitError`, and mixes in the standard base that describes
it, so callers can catch whichever they think in::

    StreamkitError
    └── ServeError             (RuntimeError) the server could not be started as asked

Bad input (an SSE event name with a newline, a negative timeout) is a plain :class:`ValueError`
or :class:`TypeError` naming the offending value: it is a programming error, not a stream event.
"""

from __future__ import annotations


class StreamkitError(Exception):
    """The root of every exception streamkit defines."""


class ServeError(StreamkitError, RuntimeError):
    """:func:`streamkit.serve` could not start serving as asked."""
