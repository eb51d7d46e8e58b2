"""Answering in time from a slow source: a fresh value if it comes before the deadline,
else the last good one, marked as such.

The asyncio recipe, ``asyncio.wait_for(fetch(), timeout)`` with the cache read in the
``except TimeoutError``, cancels the fetch whenever one caller gives up. Here the fetch for a
key is shared by every caller waiting for that key (single-flight), and each caller waits for
it in its own cancel scope, so one caller's deadline or departure is nobody else's business:

- With a :class:`~streamkit.fallback.Refresher`, the fetch runs in the application's task group and
  carries on past the callers' deadlines to refresh the cache; the lifespan's end cancels it.
- Without one (or while it is full or closed), the first caller hosts the fetch in a task
  group of its own, and the fetch's deadline is that caller's: later callers join it and never
  wait past it. If the first caller is cancelled while others still wait, it stays, shielded,
  until the fetch is done or its deadline passes; when nobody waits any more the fetch is
  cancelled. Either way no fetch outlives a task group.

Only a fetch that returned writes to the store, a whole entry at once, from the fetch's own
task: a caller that is cancelled cannot leave the cache half-written.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

import anyio
import anyio.lowlevel
from starlette.responses import JSONResponse, Response

from ._cache import CachedValue, CacheStore, MemoryStore, Refresher
from ._checks import check_callable, check_duration, check_header, check_type, given_headers
from ._exceptions import FallbackUnavailableError

__all__ = ["Fallback", "FallbackResult", "respond_with_fallback"]

logger = logging.getLogger("streamkit")

T = TypeVar("T")

# How far ahead of the clock a stored value's fetched_at may be and still be taken as just
# fetched: clocks shared between processes (time.time) drift apart by that much. Further
# ahead, it was stored on another clock (an earlier trio run's, whose offset is random; a
# process's monotonic one), and how old it is nobody can tell: never fresh, never within
# max_staleness.
_CLOCK_SKEW = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackResult(Generic[T]):
    """What :meth:`Fallback.get` returns.

    :param value: the value.
    :param from_cache: whether it came from the store rather than from a fetch made for this
        call (or one this call shared).
    :param stale: whether it was served because no fresh value came in time: a fetch missed
        the deadline or failed with one of ``fallback_on``. Implies *from_cache*.
    :param age: seconds since the value was fetched.
    """

    value: T
    from_cache: bool
    stale: bool
    age: float


def _is_async_callable(value: object) -> bool:
    """Whether calling *value* makes a coroutine: an async function, a method or partial of
    one, or an object whose ``__call__`` is one."""
    while isinstance(value, functools.partial):
        value = value.func
    return inspect.iscoroutinefunction(value) or (
        callable(value) and inspect.iscoroutinefunction(type(value).__call__)
    )


class _Flight(Generic[T]):
    """One fetch of one key, shared by the callers that wait for it."""

    __slots__ = ("done", "entry", "error", "scope", "waiters")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.entry: CachedValue[T] | None = None
        self.error: Exception | None = None
        self.waiters = 0
        # Set when a caller hosts the fetch: cancelled once nobody waits for it.
        self.scope: anyio.CancelScope | None = None


class Fallback(Generic[T]):
    """Fetch a value under a deadline, and serve the last good value when the deadline passes.

    ::

        async def fetch_quote(symbol: str) -> dict[str, object]:
            ...  # sometimes takes ten seconds

        quotes = streamkit.fallback.Fallback(fetch_quote, fallback_after=0.5, max_staleness=3600.0)
        result = await quotes.get("ACME")  # within 0.5 s, or FallbackUnavailableError

    Concurrent calls for one key share one fetch. A fetch that returns stores its value.

    :param fetch: an async function from a key to a fresh value.
    :param fallback_after: seconds a caller waits for a fresh value before it is served the
        cached one.
    :param ttl: seconds for which a stored value is served without fetching at all; ``None``
        fetches on every call.
    :param max_staleness: the oldest, in seconds, a value may be and still be served when no
        fresh one comes; ``None`` serves any age.
    :param store: where values are kept; a new :class:`~streamkit.fallback.MemoryStore` by default.
    :param refresher: where a fetch that misses the deadline carries on to refresh the store;
        without one it is cancelled at the deadline.
    :param fallback_on: exception types which, raised by *fetch*, are answered with the cached
        value as a missed deadline would be; any other exception propagates to the callers.
    :param clock: the time source for the ages in the store; :func:`anyio.current_time`
        suits a store in this process, a store shared between processes needs ``time.time``.
    :raises ValueError: a duration is not positive and finite, *max_staleness* is less
        than *ttl*, or the *refresher*'s ``refresh_timeout`` is less than *fallback_after*.
    :raises TypeError: *fetch* is not an async function, *clock* not callable, *store*
        not a :class:`~streamkit.fallback.CacheStore`, *refresher* not a
        :class:`~streamkit.fallback.Refresher`, or *fallback_on* not a tuple of exception
        types.
    """

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[T]],
        *,
        fallback_after: float,
        ttl: float | None = None,
        max_staleness: float | None = None,
        store: CacheStore[T] | None = None,
        refresher: Refresher | None = None,
        fallback_on: tuple[type[Exception], ...] = (),
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        if not _is_async_callable(fetch):
            # A plain function would fail only when awaited, on the first request. One that
            # returns a coroutine (a plain decorator's wrapper) is refused too: wrapped in an
            # async def, it is accepted.
            raise TypeError(
                f"fetch must be an async function of a key (async def, or an object whose "
                f"__call__ is one), got {type(fetch).__name__}: {fetch!r:.80}"
            )
        check_duration("fallback_after", fallback_after)
        check_duration("ttl", ttl, optional=True)
        check_duration("max_staleness", max_staleness, optional=True)
        if ttl is not None and max_staleness is not None and max_staleness < ttl:
            raise ValueError(
                f"max_staleness must be at least ttl, got max_staleness={max_staleness!r} "
                f"and ttl={ttl!r}"
            )
        if not isinstance(fallback_on, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, Exception) for kind in fallback_on
        ):
            raise TypeError(
                f"fallback_on must be a tuple of Exception subclasses, got {fallback_on!r}"
            )
        check_callable("clock", clock)
        if store is not None and not all(
            _is_async_callable(getattr(store, method, None)) for method in ("get", "set")
        ):
            raise TypeError(
                f"store must have async get and set methods (a CacheStore), got "
                f"{type(store).__name__}: {store!r:.80}"
            )
        check_type("refresher", refresher, Refresher, optional=True)
        if refresher is not None and refresher.refresh_timeout is not None:
            if refresher.refresh_timeout < fallback_after:
                # Its refreshes would be cancelled before the callers' deadline, and every
                # caller answered then, early, as if fallback_after had passed.
                raise ValueError(
                    f"refresh_timeout={refresher.refresh_timeout!r} of the refresher is less "
                    f"than fallback_after={fallback_after!r}: a refresh must be let run at "
                    "least as long as its callers wait for it"
                )
        self._fetch = fetch
        self._fallback_after = fallback_after
        self._ttl = ttl
        self._max_staleness = max_staleness
        self._store: CacheStore[T] = MemoryStore() if store is None else store
        self._refresher = refresher
        self._fallback_on = fallback_on
        self._clock = clock
        self._flights: dict[str, _Flight[T]] = {}

    @property
    def store(self) -> CacheStore[T]:
        """The store the values are kept in."""
        return self._store

    @property
    def fallback_after(self) -> float:
        """Seconds a caller waits for a fresh value."""
        return self._fallback_after

    async def get(self, key: str = "") -> FallbackResult[T]:
        """The value for *key*: fresh if a fetch returns within ``fallback_after`` seconds,
        otherwise the stored one, marked stale.

        :param key: what to fetch; handed to ``fetch``.
        :raises TypeError: *key* is not a ``str``.
        :raises FallbackUnavailableError: no fresh value came in time and the store has none
            (or only one older than ``max_staleness``).
        :raises Exception: what ``fetch`` raised, unless it is one of ``fallback_on`` and a
            stored value can be served: a copy of it for each caller (its type, ``args``,
            attributes and notes), raised ``from`` it.
        """
        check_type("key", key, str)
        deadline = anyio.current_time() + self._fallback_after
        cached = await self._read(key, deadline)
        if cached is not None and self._ttl is not None:
            age = self._clock() - cached.fetched_at
            if -_CLOCK_SKEW <= age < self._ttl:
                return FallbackResult(
                    value=cached.value, from_cache=True, stale=False, age=max(age, 0.0)
                )
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
            refresher = self._refresher
            if refresher is None or not refresher.try_start(lambda: self._run(key, flight)):
                await self._host(key, flight, deadline)
                return self._outcome(key, cached, flight)
        await self._wait(key, flight, deadline)
        return self._outcome(key, cached, flight)

    async def _read(self, key: str, deadline: float) -> CachedValue[T] | None:
        # The store is the fallback's, not the source: one that fails or does not answer in
        # time (a shared store's server down or cut off) holds nothing for this call, which
        # is answered by the fetch, within its deadline, as if nothing were cached.
        try:
            with anyio.move_on_at(deadline):
                return await self._store.get(key)
        except Exception:
            logger.warning("reading the cached value for key %r failed", key, exc_info=True)
            return None
        logger.warning(
            "reading the cached value for key %r took longer than fallback_after=%r s",
            key,
            self._fallback_after,
        )
        return None

    async def _host(self, key: str, flight: _Flight[T], deadline: float) -> None:
        # Shielded so that this caller's cancellation leaves the fetch to those still waiting;
        # bounded by this caller's deadline, which is the earliest of theirs.
        flight.scope = scope = anyio.CancelScope(deadline=deadline, shield=True)

        async def fetch_in_scope() -> None:
            with scope:
                await self._run(key, flight)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(fetch_in_scope)
            await self._wait(key, flight, deadline)

    async def _wait(self, key: str, flight: _Flight[T], deadline: float) -> None:
        flight.waiters += 1
        try:
            with anyio.move_on_at(deadline):
                await flight.done.wait()
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and flight.scope is not None and not flight.done.is_set():
                flight.scope.cancel()
                # Its fetch may take a while to end (its cleanup is its own): a caller that
                # comes meanwhile starts a fetch of its own rather than join a cancelled one.
                if self._flights.get(key) is flight:
                    del self._flights[key]

    async def _run(self, key: str, flight: _Flight[T]) -> None:
        try:
            try:
                value = await self._fetch(key)
            except Exception as exc:
                flight.error = exc
                if flight.waiters == 0 or isinstance(exc, self._fallback_on):
                    # Its error would go unseen: a refresh nobody waits for any more, or one
                    # answered from the cache. Logged here once, not by each caller.
                    logger.warning("fetch for key %r failed", key, exc_info=exc)
                return
            # A fetch whose catch-all swallowed its cancellation returns what it made up
            # then, past the deadline or after its callers left: no fresh value, neither to
            # serve nor to store. The cancellation is raised again here.
            await anyio.lowlevel.checkpoint_if_cancelled()
            entry = CachedValue(value=value, fetched_at=self._clock())
            flight.entry = entry
            # Waiters have their value now; the flight stays findable until the store has it,
            # so that a caller arriving meanwhile joins it rather than fetching again.
            flight.done.set()
            try:
                await self._store.set(key, entry)
            except Exception:
                # The callers have a good value: a store that is down (a shared one's server)
                # costs the next fallback, not this answer, nor an error group from the task
                # group the fetch ran in.
                logger.exception("storing the value fetched for key %r failed", key)
        finally:
            flight.done.set()
            if self._flights.get(key) is flight:
                del self._flights[key]

    def _outcome(
        self, key: str, cached: CachedValue[T] | None, flight: _Flight[T]
    ) -> FallbackResult[T]:
        now = self._clock()
        if flight.entry is not None:
            age = max(now - flight.entry.fetched_at, 0.0)
            return FallbackResult(value=flight.entry.value, from_cache=False, stale=False, age=age)
        error = flight.error
        if error is not None and not isinstance(error, self._fallback_on):
            _raise_for_a_caller(error)
        cached_age: float | None = None
        if cached is not None:
            cached_age = now - cached.fetched_at
            known = cached_age >= -_CLOCK_SKEW
            if self._max_staleness is None or (known and cached_age <= self._max_staleness):
                return FallbackResult(
                    value=cached.value, from_cache=True, stale=True, age=max(cached_age, 0.0)
                )
        if error is not None:
            _raise_for_a_caller(error)
        if cached_age is None:
            held = "nothing was cached"
        elif cached_age < -_CLOCK_SKEW:
            held = (
                f"the cached value was stored {-cached_age:.3f} s ahead of this clock (by "
                "another run's or process's clock), so its age is unknown"
            )
        else:
            held = (
                f"the cached value is {cached_age:.3f} s old, past max_staleness="
                f"{self._max_staleness!r}"
            )
        raise FallbackUnavailableError(
            f"no fresh value for key {key!r} within fallback_after={self._fallback_after!r} s "
            f"and {held}",
            key=key,
            cached_age=cached_age,
        )


def _raise_for_a_caller(error: Exception) -> NoReturn:
    """Raise *error*, the shared fetch's, for one of the callers that waited for it: a copy
    of it (its type, ``args``, attributes and notes) with a traceback of its own, ``from``
    *error*, which keeps the fetch's.

    Raising the one object from every caller made each raise overwrite the traceback (and
    ``__context__``) the others had caught: a caller's log showed whichever raised last.
    """
    copied: Exception | None
    try:
        copied = copy.copy(error)  # by its class and args, as pickle would remake it
    except Exception:
        copied = None
    if type(copied) is not type(error):
        # A constructor that takes more than its args (httpx.HTTPStatusError's keyword-only
        # request and response): made without it, its attributes set as they are.
        try:
            copied = type(error).__new__(type(error), *error.args)
            copied.__dict__.update(error.__dict__)
        except Exception:
            raise error from None  # the one object, as a last resort
    notes = getattr(error, "__notes__", None)
    if isinstance(notes, list):
        copied.__notes__ = list(notes)  # a note one caller adds is its own
    raise copied from error


async def respond_with_fallback(
    fallback: Fallback[Any],
    key: str = "",
    *,
    cache_flag: str | None = None,
    retry_after: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Answer a request with :meth:`Fallback.get` as JSON, saying where the value came from.

    For a Starlette or FastAPI endpoint (FastAPI sends a returned ``Response`` as it is)::

        async def quote(request):
            symbol = request.path_params["symbol"]
            return await streamkit.fallback.respond_with_fallback(quotes, symbol)

    Headers: ``X-Cache`` is ``miss`` for a value just fetched, ``hit`` for one served within
    ``ttl``, ``stale`` for one served because no fresh value came in time; a cached value also
    gets ``Age`` (whole seconds). When nothing can be served (no fresh value in time, or an
    error of the fallback's ``fallback_on``, and nothing cached) the answer is ``503`` with
    ``Retry-After``; another error of the fetch propagates.

    :param fallback: where the value comes from; its values must be JSON-serialisable.
    :param key: the key to ask for.
    :param cache_flag: if given, the value must be a JSON object, and this key is added to it:
        ``true`` when the value came from the cache, ``false`` otherwise.
    :param retry_after: seconds a client is told to wait before retrying after a ``503``.
    :param headers: extra headers for every answer.
    :raises TypeError: *fallback* is not a :class:`Fallback`, *key* or *cache_flag* is not a
        ``str``, *headers* is no mapping, or *cache_flag* is given and the value is not a
        mapping.
    :raises ValueError: *retry_after* is not a positive number of seconds, or a header
        cannot be sent (a line break in its value, a name that is not a token) or frames the
        body (``Content-Length``, ``Transfer-Encoding``).
    """
    check_type("fallback", fallback, Fallback)
    check_type("key", key, str)
    check_type("cache_flag", cache_flag, str, optional=True)
    check_duration("retry_after", retry_after)
    extra = given_headers(headers)
    for name, value in extra.items():
        # Before the fetch: a header the server would refuse fails here, not as the answer
        # is sent.
        check_header(name, value)
    # Nothing to serve: no fresh value in time, or a source that is down (an error of
    # fallback_on, which the fetch has logged) with nothing cached. Neither is the app's
    # fault, and a client may try again.
    unavailable: tuple[type[Exception], ...] = (FallbackUnavailableError, *fallback._fallback_on)
    try:
        result = await fallback.get(key)
    except unavailable as exc:
        extra["Retry-After"] = str(math.ceil(retry_after))
        why = (
            "no fresh value in time"
            if isinstance(exc, FallbackUnavailableError)
            else ("the source failed")
        )
        return JSONResponse(
            {"detail": f"{why} and no cached value to serve"},
            status_code=503,
            headers=extra,
        )
    content = result.value
    if cache_flag is not None:
        if not isinstance(content, Mapping):
            raise TypeError(
                f"cache_flag={cache_flag!r} needs a mapping value to add it to, "
                f"got {type(content).__name__}: {content!r}"
            )
        content = {**content, cache_flag: result.from_cache}
    if result.stale:
        extra["X-Cache"] = "stale"
    else:
        extra["X-Cache"] = "hit" if result.from_cache else "miss"
    if result.from_cache:
        extra["Age"] = str(math.floor(result.age))
    return JSONResponse(content, headers=extra)
