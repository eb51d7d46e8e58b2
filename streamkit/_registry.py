"""The registry of running streams: what is open now, how the finished ones ended, and the
drain that a graceful shutdown starts.

A process-wide registry, :data:`registry`, sees every stream. :func:`streamkit.serve` gives
each server a child registry too, so that draining one server leaves the others in the
process alone; a stream reports to the registry current where it started and to its parents.
"""

from __future__ import annotations

import collections
import contextvars
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import anyio

from ._ends import EndReason, StreamEnd

__all__ = ["ActiveStream", "RegistryStatistics", "StreamRegistry", "current_registry", "registry"]


class _Tracked(Protocol):
    def snapshot(self) -> ActiveStream: ...

    def shutdown(self) -> None: ...

    def overran(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveStream:
    """A running stream, as seen at one instant.

    :param path: the request path.
    :param client: the client's address and port, when the server reports it.
    :param age: seconds since the stream started.
    :param items_sent: items handed to the server to write so far, the write under way
        included.
    :param bytes_sent: body bytes handed to the server so far.
    """

    path: str
    client: tuple[str, int] | None
    age: float
    items_sent: int
    bytes_sent: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryStatistics:
    """A snapshot of a :class:`StreamRegistry`.

    :param active: streams running now.
    :param ended: how many streams ended, per reason.
    :param draining: whether a graceful shutdown has begun.
    """

    active: int
    ended: Mapping[EndReason, int]
    draining: bool


class StreamRegistry:
    """Tracks running streams and keeps the totals of finished ones.

    :param parent: a registry that sees this one's streams too.
    :param history: how many recent :class:`StreamEnd` reports to keep.
    """

    def __init__(self, *, parent: StreamRegistry | None = None, history: int = 100) -> None:
        self._parent = parent
        self._active: dict[int, _Tracked] = {}
        self._ended: collections.Counter[EndReason] = collections.Counter()
        self._recent: collections.deque[StreamEnd] = collections.deque(maxlen=history)
        self._waiters: list[anyio.Event] = []
        self._draining = False
        self._stop_handler: Callable[[BaseException], None] | None = None

    def _chain(self) -> Iterator[StreamRegistry]:
        registry: StreamRegistry | None = self
        while registry is not None:
            yield registry
            registry = registry._parent

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for event in waiters:
            event.set()

    @property
    def draining(self) -> bool:
        """Whether :meth:`drain` has been called: new streams end at once with SHUTDOWN."""
        return any(registry._draining for registry in self._chain())

    def add(self, stream: _Tracked) -> None:
        """Track *stream* here and in every parent."""
        for registry in self._chain():
            registry._active[id(stream)] = stream
            registry._notify()

    def finish(self, stream: _Tracked, end: StreamEnd) -> None:
        """Record that *stream* ended as *end*, here and in every parent."""
        for registry in self._chain():
            registry._active.pop(id(stream), None)
            registry._ended[end.reason] += 1
            registry._recent.append(end)
            registry._notify()

    def statistics(self) -> RegistryStatistics:
        """The counts as they are now."""
        ended = types.MappingProxyType({reason: self._ended[reason] for reason in EndReason})
        return RegistryStatistics(active=len(self._active), ended=ended, draining=self.draining)

    def active_streams(self) -> tuple[ActiveStream, ...]:
        """A snapshot of every running stream."""
        return tuple(stream.snapshot() for stream in self._active.values())

    def recent_ends(self) -> tuple[StreamEnd, ...]:
        """The most recent end reports, oldest first."""
        return tuple(self._recent)

    def drain(self) -> None:
        """Begin a graceful shutdown: end every running stream, and every later one, with
        :attr:`~streamkit.EndReason.SHUTDOWN`."""
        self._draining = True
        self._notify()
        for stream in list(self._active.values()):
            stream.shutdown()

    def overran(self) -> None:
        """The grace period of a drain has ended with streams still running: each says if its
        producer refuses its cancellation, before the server cuts it or waits for it."""
        for stream in list(self._active.values()):
            stream.overran()

    @contextmanager
    def stopping_with(self, handler: Callable[[BaseException], None]) -> Iterator[None]:
        """Inside the block, :meth:`request_stop` for this registry's streams calls *handler*:
        the server serving them stops, and raises what it is handed."""
        self._stop_handler = handler
        try:
            yield
        finally:
            self._stop_handler = None

    def request_stop(self, exc: BaseException) -> bool:
        """Ask the server serving these streams to stop the process with *exc* (a
        ``KeyboardInterrupt`` or ``SystemExit`` a producer raised, or what escaped a task of
        an App's task group); false if no server here takes such requests, and the caller
        must raise *exc* itself."""
        for registry in self._chain():
            if registry._stop_handler is not None:
                registry._stop_handler(exc)
                return True
        return False

    async def wait_changed(self) -> None:
        """Wait until a stream starts or ends here, or a drain begins."""
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        finally:
            if event in self._waiters:
                self._waiters.remove(event)

    async def wait_idle(self) -> None:
        """Wait until no stream is running here."""
        while self._active:
            await self.wait_changed()

    async def wait_ended(self, count: int = 1) -> tuple[StreamEnd, ...]:
        """Wait until *count* streams have ended here in all, and return the recent reports.

        Put a bound on it (``anyio.fail_after``): it waits for as long as it takes.
        """
        while sum(self._ended.values()) < count:
            await self.wait_changed()
        return self.recent_ends()


#: The process-wide registry: every stream reports here.
registry = StreamRegistry()

_current: contextvars.ContextVar[StreamRegistry] = contextvars.ContextVar(
    "streamkit_registry", default=registry
)


def current_registry() -> StreamRegistry:
    """The registry a stream started now reports to."""
    return _current.get()


@contextmanager
def using_registry(target: StreamRegistry) -> Iterator[StreamRegistry]:
    """Make *target* the registry of streams started inside the block."""
    token = _current.set(target)
    try:
        yield target
    finally:
        _current.reset(token)
