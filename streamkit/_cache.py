"""Where :class:`~streamkit.fallback.Fallback` keeps its last good values, and the app-owned
task group that refreshes them in the background.

A store is anything with an async ``get`` and ``set`` (:class:`CacheStore`); the in-memory
:class:`MemoryStore` is the default. A store only keeps entries: when an entry is fresh
enough to serve is the fallback's policy, so a store shared by several fallbacks, or by
several processes, needs no knowledge of it.

A :class:`Refresher` is a task group the application enters in its lifespan. A fetch that
misses its caller's deadline carries on in it, so that its value still reaches the cache;
there is never a detached task, and leaving the lifespan cancels whatever is still running.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

import anyio
from anyio.abc import TaskGroup

from ._checks import check_count, check_duration

__all__ = ["CacheStore", "CachedValue", "MemoryStore", "Refresher", "RefresherStatistics"]

logger = logging.getLogger("streamkit")

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedValue(Generic[T]):
    """One value in a store, with when it was fetched.

    :param value: the value the fetch returned.
    :param fetched_at: when the fetch returned it, on the clock of the fallback that stored it
        (:func:`anyio.current_time` by default).
    """

    value: T
    fetched_at: float


class CacheStore(Protocol[T]):
    """What :class:`~streamkit.fallback.Fallback` needs from a store: whole entries, by string key.

    ``set`` is handed a complete entry and must replace the previous one as a whole, so a
    reader sees the old entry or the new one, never a mixture.
    """

    async def get(self, key: str) -> CachedValue[T] | None:
        """The entry for *key*, or ``None`` if there is none.

        :param key: the key the fallback was called with.
        """
        ...

    async def set(self, key: str, entry: CachedValue[T]) -> None:
        """Keep *entry* as the entry for *key*, replacing any earlier one.

        :param key: the key the fallback was called with.
        :param entry: the value just fetched.
        """
        ...


class MemoryStore(Generic[T]):
    """A :class:`CacheStore` in a dict of this process, least recently used entries evicted.

    :param max_entries: how many keys to keep; storing one more evicts the key read or
        written least recently.
    :raises ValueError: *max_entries* is less than 1.
    :raises TypeError: *max_entries* is not an int.
    """

    def __init__(self, *, max_entries: int = 1024) -> None:
        check_count("max_entries", max_entries)
        self._max_entries = max_entries
        self._entries: dict[str, CachedValue[T]] = {}

    async def get(self, key: str) -> CachedValue[T] | None:
        """The entry for *key*, or ``None``; it becomes the most recently used.

        :param key: the key.
        """
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._entries[key] = entry
        return entry

    async def set(self, key: str, entry: CachedValue[T]) -> None:
        """Keep *entry* for *key*, evicting the least recently used key if full.

        :param key: the key.
        :param entry: the entry.
        """
        self._entries.pop(key, None)
        self._entries[key] = entry
        if len(self._entries) > self._max_entries:
            del self._entries[next(iter(self._entries))]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefresherStatistics:
    """A snapshot of a :class:`Refresher`.

    :param open: whether it is entered and accepting refreshes.
    :param running: refreshes running now.
    :param started: refreshes started since it was created.
    :param rejected: refreshes refused because it was full or not open; their fetch ran in
        the callers' own time instead.
    :param timed_out: refreshes cancelled at ``refresh_timeout``.
    """

    open: bool
    running: int
    started: int
    rejected: int
    timed_out: int


class Refresher:
    """A task group, owned by the application, where fetches that missed their caller's
    deadline finish and refresh the cache (stale-while-revalidate).

    Create it with the app, hand it to each :class:`~streamkit.fallback.Fallback`, and enter it
    in the app's lifespan, so that leaving the lifespan cancels the refreshes still running::

        refresher = streamkit.fallback.Refresher(max_refreshes=8)
        quotes = streamkit.fallback.Fallback(fetch_quote, fallback_after=0.5, refresher=refresher)

        @contextlib.asynccontextmanager
        async def lifespan(app):
            async with refresher:
                yield

    While it is not entered, or is full, a fallback's fetch runs in its callers' own time
    and is cancelled at their deadline, so nothing ever outlives a task group.

    :param max_refreshes: how many refreshes may run at once.
    :param refresh_timeout: seconds after which a refresh is cancelled, so that a source that
        never answers cannot hold its place; ``None`` lets it run until the lifespan ends.
    :raises ValueError: *max_refreshes* is less than 1, or *refresh_timeout* is not a
        positive, finite number of seconds.
    :raises TypeError: an option has the wrong type.
    """

    def __init__(self, *, max_refreshes: int = 16, refresh_timeout: float | None = 30.0) -> None:
        check_count("max_refreshes", max_refreshes)
        check_duration("refresh_timeout", refresh_timeout, optional=True)
        self._max_refreshes = max_refreshes
        self._refresh_timeout = refresh_timeout
        self._task_group: TaskGroup | None = None
        self._open = False
        self._running = 0
        self._started = 0
        self._rejected = 0
        self._timed_out = 0
        self._idle: anyio.Event | None = None

    async def __aenter__(self) -> Self:
        if self._task_group is not None:
            raise RuntimeError("this Refresher is already entered; enter it in one lifespan")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        task_group = self._task_group
        assert task_group is not None, "__aexit__ without __aenter__"
        # Refuse new refreshes first: a request still running during shutdown fetches in its
        # own time instead.
        self._open = False
        task_group.cancel_scope.cancel()
        try:
            return await task_group.__aexit__(exc_type, exc, traceback)
        finally:
            self._task_group = None

    @property
    def refresh_timeout(self) -> float | None:
        """Seconds after which a refresh is cancelled; ``None``: none."""
        return self._refresh_timeout

    def statistics(self) -> RefresherStatistics:
        """A snapshot of what it is running and has run."""
        return RefresherStatistics(
            open=self._open,
            running=self._running,
            started=self._started,
            rejected=self._rejected,
            timed_out=self._timed_out,
        )

    async def wait_idle(self) -> None:
        """Wait until no refresh is running."""
        while self._running:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    def try_start(self, refresh: Callable[[], Awaitable[None]]) -> bool:
        """Start ``await refresh()`` in the task group, if it is open and has room.

        :param refresh: what to run; an exception it raises is logged, never raised into
            the lifespan.
        :returns: whether it was started.
        """
        if not self._open or self._running >= self._max_refreshes:
            self._rejected += 1
            return False
        assert self._task_group is not None
        # Counted before the task runs, so that the bound holds for calls in the same tick.
        self._running += 1
        self._started += 1
        self._task_group.start_soon(self._run, refresh)
        return True

    async def _run(self, refresh: Callable[[], Awaitable[None]]) -> None:
        try:
            with anyio.move_on_after(self._refresh_timeout) as scope:
                await refresh()
            if scope.cancelled_caught:
                self._timed_out += 1
                logger.warning("a refresh ran for %s s and was cancelled", self._refresh_timeout)
        except Exception:
            logger.exception("a refresh raised")
        finally:
            self._running -= 1
            if not self._running and self._idle is not None:
                self._idle.set()
                self._idle = None
