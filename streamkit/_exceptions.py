"""The exceptions streamkit raises.

Every one derives from :class:`StreamkitError`, and mixes in the standard base that describes
it, so callers can catch whichever they think in::

    StreamkitError
    ├── ServeError             (RuntimeError) the server could not be started as asked
    ├── LifespanError          (RuntimeError) an App's lifespan is not running, or already is
    ├── MetricsUnavailableError (ImportError) metrics were asked for without prometheus-client
    ├── UpstreamError          (RuntimeError) an upstream answered what cannot be forwarded
    ├── ReconnectError         (ConnectionError) a client gave up reconnecting to a stream
    ├── ProcessExitError       (RuntimeError) a streamed command exited with a failure status
    ├── LeakError              (AssertionError) a test left descriptors, processes or tasks
    ├── FallbackUnavailableError (TimeoutError) no fresh value in time and nothing to fall back on
    └── SlowSubscriberError    (RuntimeError) a topic subscriber fell behind and was disconnected

:class:`~streamkit.broadcast.TopicNameError` (a :class:`ValueError` and Starlette's
``HTTPException``, so a 400) is defined beside ``topic_response``, which raises it.

Bad input (an SSE event name with a newline, a negative timeout) is a plain :class:`ValueError`
or :class:`TypeError` naming the offending value: it is a programming error, not a stream event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx


def shown_url(url: httpx.URL, given: str | None = None) -> str:
    """*url* as an error message shows it (as *given*, the text it was made of, if any): a
    password in it replaced by ``[secure]``, as httpx's ``repr()`` does. Messages are
    logged; the password would be written in clear."""
    text = str(url) if given is None else given
    user, _, password = url.userinfo.decode("ascii").partition(":")
    if not password:
        return text
    shown = text.replace(f"//{user}:{password}@", f"//{user}:[secure]@", 1)
    if shown == text:  # given in a form other than httpx's (not percent-encoded)
        return shown_url(url)
    return shown


class StreamkitError(Exception):
    """The root of every exception streamkit defines."""


class ServeError(StreamkitError, RuntimeError):
    """:func:`streamkit.serve` could not start serving as asked."""


class LifespanError(StreamkitError, RuntimeError):
    """An :class:`~streamkit.App` was asked for what only its running lifespan has (its task
    group), or its lifespan was entered while already running."""


class MetricsUnavailableError(StreamkitError, ImportError):
    """Prometheus metrics were asked of an :class:`~streamkit.App` but ``prometheus-client``
    is not installed: install ``streamkit[metrics]``."""


class UpstreamError(StreamkitError, RuntimeError):
    """An upstream HTTP response cannot be forwarded or followed: its status is not 2xx, it
    is not the kind of body asked for, or its body breaks its format (an NDJSON line that is
    not JSON, an event past the size bound, an event id that cannot be sent back).

    :param message: what was wrong, naming the request and what was received (a password in
        the URL shown as ``[secure]``).
    :param status_code: the upstream's status.
    :param url: the upstream URL, whole.
    """

    def __init__(self, message: str, *, status_code: int, url: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.url = url


class ReconnectError(StreamkitError, ConnectionError):
    """A ``streamkit.client`` stream gave up reconnecting: its
    :class:`~streamkit.client.Backoff` allowed no more attempts. The last failure is the
    exception's ``__cause__``.

    :param message: the URL (a password in it shown as ``[secure]``), how many attempts
        failed and for how long.
    :param url: the stream's URL, whole.
    :param attempts: the attempts that failed in a row.
    :param last_event_id: the id it would have resumed after (``""`` for none).
    """

    def __init__(self, message: str, *, url: str, attempts: int, last_event_id: str) -> None:
        super().__init__(message)
        self.url = url
        self.attempts = attempts
        self.last_event_id = last_event_id


class ProcessExitError(StreamkitError, RuntimeError):
    """A command whose output was streamed exited with a non-zero status.

    :param message: the command and its status.
    :param command: the command as given.
    :param returncode: its exit status (negative: killed by that signal).
    """

    def __init__(self, message: str, *, command: object, returncode: int) -> None:
        super().__init__(message)
        self.command = command
        self.returncode = returncode


class FallbackUnavailableError(StreamkitError, TimeoutError):
    """A :class:`~streamkit.fallback.Fallback` got no fresh value before its deadline and had no
    cached value to serve instead (none, or one older than ``max_staleness``).

    :param message: the key, the deadline and what the cache held.
    :param key: the key asked for.
    :param cached_age: the age in seconds of the cached value that was too old to serve,
        negative for one stored ahead of the clock (whose age is unknown), or ``None`` if
        nothing was cached.
    """

    def __init__(self, message: str, *, key: str, cached_age: float | None) -> None:
        super().__init__(message)
        self.key = key
        self.cached_age = cached_age


class LeakError(StreamkitError, AssertionError):
    """A test left resources behind: :func:`streamkit.testing.open_leak_check` or the
    ``no_leaks`` fixture found them still open after the grace period.

    :param message: what leaked, one line per resource.
    :param file_descriptors: a description of each leaked file descriptor.
    :param child_processes: a description of each child process left running (or unreaped).
    :param tasks: a description of each task left running.
    :param faults: each fault a producer was seen to commit meanwhile (a cleanup cut short
        by the cancellation, a cancellation refused), as logged.
    """

    def __init__(
        self,
        message: str,
        *,
        file_descriptors: tuple[str, ...] = (),
        child_processes: tuple[str, ...] = (),
        tasks: tuple[str, ...] = (),
        faults: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.file_descriptors = file_descriptors
        self.child_processes = child_processes
        self.tasks = tasks
        self.faults = faults


class SlowSubscriberError(StreamkitError, RuntimeError):
    """A topic subscriber's buffer was full and the broker's slow-subscriber policy
    disconnected it; raised when its subscription is iterated."""
