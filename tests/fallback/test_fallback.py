"""Fallback, MemoryStore and Refresher without sockets.

On trio the clock is trio's MockClock with autojump: time advances only when every task
waits, so durations are asserted exactly. On asyncio the same tests run in real time, and
durations are asserted within a generous bound.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from support.fallbacks import Source, cached_value
from trio.testing import MockClock

from streamkit import StreamkitError
from streamkit.fallback import (
    CachedValue,
    Fallback,
    FallbackResult,
    FallbackUnavailableError,
    MemoryStore,
    Refresher,
    respond_with_fallback,
)

pytestmark = pytest.mark.anyio

DEADLINE = 0.5
SLOW = 10.0
OLD: dict[str, Any] = {"key": "k", "call": 0}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param == "trio":
        return ("trio", {"clock": MockClock(autojump_threshold=0)})
    return "asyncio"


@pytest.fixture
def exact(anyio_backend_name: str) -> bool:
    """Whether time is virtual, so durations can be asserted exactly."""
    return anyio_backend_name == "trio"


def assert_took(elapsed: float, expected: float, *, exact: bool) -> None:
    if exact:
        assert elapsed == pytest.approx(expected, abs=1e-9)
    else:
        # Real time on a shared, busy machine: a generous upper bound.
        assert expected - 0.05 <= elapsed < expected + 1.0


async def call_at_once(
    source: Source, call: Callable[[], Coroutine[Any, Any, None]], *, callers: int
) -> None:
    """Start *callers* copies of *call* at once, and open the source's gate once it is called:
    they all call while its one fetch is under way."""
    assert source.gate is not None
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            for _ in range(callers):
                task_group.start_soon(call)
            await source.started.wait()
            source.gate.set()


async def timed(fallback: Fallback[Any], key: str = "k") -> tuple[FallbackResult[Any], float]:
    started = anyio.current_time()
    result = await fallback.get(key)
    return result, anyio.current_time() - started


async def test_a_fresh_value_is_returned_and_stored(exact: bool) -> None:
    source = Source()
    source.delay = 0.1
    fallback = Fallback(source, fallback_after=DEADLINE)
    with anyio.fail_after(5):
        result, took = await timed(fallback)
    assert result.value == {"key": "k", "call": 1}
    assert not result.from_cache
    assert not result.stale
    assert_took(result.age, 0.0, exact=exact)
    assert_took(took, 0.1, exact=exact)
    assert await cached_value(fallback, "k") == {"key": "k", "call": 1}


async def test_a_slow_source_is_answered_from_the_cache_at_the_deadline(exact: bool) -> None:
    source = Source()
    fallback = Fallback(source, fallback_after=DEADLINE)
    with anyio.fail_after(5):
        await fallback.get("k")
        await anyio.sleep(3.0)
        source.delay = SLOW
        result, took = await timed(fallback)
    assert result.value == {"key": "k", "call": 1}
    assert result.from_cache
    assert result.stale
    assert_took(took, DEADLINE, exact=exact)
    assert_took(result.age, 3.0 + DEADLINE, exact=exact)
    # No refresher: the fetch was cancelled at the deadline, and the cache is untouched.
    assert source.cancelled == 1
    assert await cached_value(fallback, "k") == {"key": "k", "call": 1}


async def test_nothing_cached_raises_a_timeout_at_the_deadline(exact: bool) -> None:
    source = Source()
    source.delay = SLOW
    fallback = Fallback(source, fallback_after=DEADLINE)
    started = anyio.current_time()
    with anyio.fail_after(5), pytest.raises(FallbackUnavailableError) as caught:
        await fallback.get("nothing")
    assert_took(anyio.current_time() - started, DEADLINE, exact=exact)
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, StreamkitError)
    assert caught.value.key == "nothing"
    assert caught.value.cached_age is None
    assert "'nothing'" in str(caught.value)
    assert "nothing was cached" in str(caught.value)
    assert source.cancelled == 1


async def test_concurrent_callers_share_one_fetch() -> None:
    source = Source()
    source.gate = anyio.Event()
    fallback = Fallback(source, fallback_after=DEADLINE)
    results: list[FallbackResult[Any]] = []

    async def call() -> None:
        results.append(await fallback.get("k"))

    await call_at_once(source, call, callers=50)
    assert source.calls == 1
    assert len(results) == 50
    assert all(result.value == {"key": "k", "call": 1} for result in results)
    assert not any(result.from_cache for result in results)


async def test_different_keys_fetch_separately() -> None:
    source = Source()
    fallback = Fallback(source, fallback_after=DEADLINE)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(fallback.get, "a")
            task_group.start_soon(fallback.get, "b")
    assert source.calls == 2
    assert (await fallback.store.get("a")) is not None
    assert (await fallback.store.get("b")) is not None


async def test_a_later_caller_never_waits_past_the_first_callers_deadline(exact: bool) -> None:
    source = Source()
    source.delay = SLOW
    fallback = Fallback(source, fallback_after=DEADLINE)
    await fallback.store.set("k", CachedValue(value=OLD, fetched_at=anyio.current_time()))
    ends: list[float] = []
    started = anyio.current_time()

    async def call(*, delay: float) -> None:
        await anyio.sleep(delay)
        result = await fallback.get("k")
        assert result.stale
        ends.append(anyio.current_time() - started)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(lambda: call(delay=0.0))
            task_group.start_soon(lambda: call(delay=0.3))
    assert source.calls == 1
    for end in ends:
        assert_took(end, DEADLINE, exact=exact)


async def test_within_ttl_the_cache_is_served_without_fetching(exact: bool) -> None:
    source = Source()
    fallback = Fallback(source, fallback_after=DEADLINE, ttl=60.0)
    with anyio.fail_after(5):
        await fallback.get("k")
        await anyio.sleep(1.0)
        result, took = await timed(fallback)
        assert_took(took, 0.0, exact=exact)
        assert result.value == {"key": "k", "call": 1}
        assert result.from_cache
        assert not result.stale
        assert_took(result.age, 1.0, exact=exact)
        assert source.calls == 1
    if exact:  # only virtual time can pass a minute here
        await anyio.sleep(60.0)
        result = await fallback.get("k")
        assert not result.from_cache
        assert source.calls == 2


async def test_a_value_past_max_staleness_is_not_served(exact: bool) -> None:
    source = Source()
    source.delay = SLOW
    fallback = Fallback(source, fallback_after=DEADLINE, max_staleness=1.0)
    await fallback.store.set("k", CachedValue(value=OLD, fetched_at=anyio.current_time() - 2.0))
    with anyio.fail_after(5), pytest.raises(FallbackUnavailableError) as caught:
        await fallback.get("k")
    assert caught.value.cached_age is not None
    assert_took(caught.value.cached_age, 2.0 + DEADLINE, exact=exact)
    assert "past max_staleness=1.0" in str(caught.value)


async def test_errors_in_fallback_on_are_answered_from_the_cache() -> None:
    source = Source()
    fallback = Fallback(source, fallback_after=DEADLINE, fallback_on=(ConnectionError,))
    with anyio.fail_after(5):
        await fallback.get("k")
        source.error = ConnectionError("upstream refused")
        result = await fallback.get("k")
        assert result.stale
        assert result.value == {"key": "k", "call": 1}
        # Nothing cached for this key: the source's own error, not a timeout.
        with pytest.raises(ConnectionError, match="upstream refused"):
            await fallback.get("other")
        source.error = KeyError("bug")
        with pytest.raises(KeyError):
            await fallback.get("k")
    assert await cached_value(fallback, "k") == {"key": "k", "call": 1}


async def test_concurrent_callers_all_get_the_one_fetchs_error() -> None:
    source = Source()
    source.gate = anyio.Event()
    source.error = KeyError("bug")
    fallback = Fallback(source, fallback_after=DEADLINE)
    depths: list[int] = []

    async def call() -> None:
        with pytest.raises(KeyError) as caught:
            await fallback.get("k")
        depths.append(len(caught.traceback))

    await call_at_once(source, call, callers=10)
    assert source.calls == 1
    assert len(depths) == 10
    # Each raises a copy of its own: no caller's frames pile up on another's.
    assert len(set(depths)) == 1


async def test_a_cancelled_sole_caller_cancels_the_fetch_and_leaves_the_cache(
    exact: bool,
) -> None:
    source = Source()
    fallback = Fallback(source, fallback_after=DEADLINE)
    await fallback.store.set("k", CachedValue(value=OLD, fetched_at=anyio.current_time()))
    source.delay = SLOW
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(fallback.get, "k")
            await source.started.wait()
            cancelled = anyio.current_time()
            task_group.cancel_scope.cancel()
    # At once, not at the deadline: nobody waits for the fetch any more.
    assert_took(anyio.current_time() - cancelled, 0.0, exact=exact)
    assert source.cancelled == 1
    assert source.finished == 0
    assert await cached_value(fallback, "k") == OLD
    # No flight is left behind: the next call fetches anew.
    source.delay = 0.0
    with anyio.fail_after(5):
        result = await fallback.get("k")
    assert result.value == {"key": "k", "call": 2}


async def test_a_caller_arriving_while_a_cancelled_fetch_cleans_up_fetches_anew() -> None:
    # The fetch's cleanup (closing its client, shielded) takes a while after its only caller
    # left: a caller that comes meanwhile must not join the fetch that is being cancelled.
    calls = 0
    started = anyio.Event()
    cleaning = anyio.Event()

    async def fetch(key: str) -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            return "fresh"
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                cleaning.set()
                await anyio.sleep(DEADLINE)
        raise AssertionError("unreachable")

    async def first(*, task_status: TaskStatus[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            await fallback.get("k")

    fallback = Fallback(fetch, fallback_after=SLOW)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            first_scope = await task_group.start(first)
            await started.wait()
            first_scope.cancel()
            await cleaning.wait()
            result = await fallback.get("k")
    assert result.value == "fresh"
    assert not result.from_cache
    assert calls == 2


async def test_a_cancelled_first_caller_leaves_the_fetch_to_the_others() -> None:
    source = Source()
    source.gate = anyio.Event()
    fallback = Fallback(source, fallback_after=DEADLINE)
    second: list[FallbackResult[Any]] = []

    async def first(*, task_status: TaskStatus[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            await fallback.get("k")

    async def later() -> None:
        second.append(await fallback.get("k"))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            first_scope = await task_group.start(first)
            await source.started.wait()
            task_group.start_soon(later)
            await anyio.sleep(0.1)  # let the later caller join
            first_scope.cancel()
            await anyio.sleep(0.1)
            source.gate.set()
    assert source.calls == 1
    assert source.finished == 1
    assert second[0].value == {"key": "k", "call": 1}
    assert not second[0].from_cache
    assert await cached_value(fallback, "k") == {"key": "k", "call": 1}


async def test_the_refresher_finishes_a_late_fetch_and_updates_the_cache(exact: bool) -> None:
    source = Source()
    refresher = Refresher()
    fallback = Fallback(source, fallback_after=DEADLINE, refresher=refresher)
    with anyio.fail_after(5):
        async with refresher:
            await fallback.get("k")
            source.gate = anyio.Event()
            result, took = await timed(fallback)
            assert result.stale
            assert_took(took, DEADLINE, exact=exact)
            assert refresher.statistics().running == 1
            # A caller during the refresh joins it rather than starting another fetch.
            result = await fallback.get("k")
            assert result.stale
            assert source.calls == 2
            source.gate.set()
            await refresher.wait_idle()
            assert await cached_value(fallback, "k") == {"key": "k", "call": 2}
            assert source.finished == 2
    # Every fetch ran in the refresher, the first (in time) too.
    assert refresher.statistics().started == 2


async def test_leaving_the_refresher_cancels_its_refreshes(exact: bool) -> None:
    source = Source()
    source.delay = SLOW
    refresher = Refresher()
    fallback = Fallback(source, fallback_after=DEADLINE, refresher=refresher)
    with anyio.fail_after(5):
        async with refresher:
            with pytest.raises(FallbackUnavailableError):
                await fallback.get("k")
            assert source.cancelled == 0
            left = anyio.current_time()
        assert_took(anyio.current_time() - left, 0.0, exact=exact)
    assert source.cancelled == 1
    statistics = refresher.statistics()
    assert not statistics.open
    assert statistics.running == 0
    assert (await fallback.store.get("k")) is None


async def test_a_full_refresher_leaves_the_fetch_to_the_caller() -> None:
    source = Source()
    source.delay = SLOW
    refresher = Refresher(max_refreshes=1)
    fallback = Fallback(source, fallback_after=DEADLINE, refresher=refresher)
    with anyio.fail_after(5):
        async with refresher:
            async with anyio.create_task_group() as task_group:
                for key in ("a", "b"):
                    task_group.start_soon(_expect_unavailable, fallback, key)
            statistics = refresher.statistics()
            assert (statistics.started, statistics.rejected, statistics.running) == (1, 1, 1)
            # The rejected one ran in its caller's time and was cancelled at the deadline.
            assert source.cancelled == 1
    assert source.cancelled == 2


async def _expect_unavailable(fallback: Fallback[Any], key: str) -> None:
    with pytest.raises(FallbackUnavailableError):
        await fallback.get(key)


async def test_a_refresh_is_cancelled_at_refresh_timeout(exact: bool) -> None:
    source = Source()
    source.delay = SLOW
    refresher = Refresher(refresh_timeout=1.0)
    fallback = Fallback(source, fallback_after=DEADLINE, refresher=refresher)
    with anyio.fail_after(5):
        async with refresher:
            with pytest.raises(FallbackUnavailableError):
                await fallback.get("k")
            await refresher.wait_idle()
            assert refresher.statistics().timed_out == 1
            assert source.cancelled == 1


async def test_a_refresher_is_entered_once() -> None:
    refresher = Refresher()
    async with refresher:
        with pytest.raises(RuntimeError, match="already entered"):
            await refresher.__aenter__()
    # And may be entered again once left, as a restarted app would.
    async with refresher:
        assert refresher.statistics().open


async def test_memory_store_evicts_the_least_recently_used() -> None:
    store: MemoryStore[int] = MemoryStore(max_entries=2)
    await store.set("a", CachedValue(value=1, fetched_at=0.0))
    await store.set("b", CachedValue(value=2, fetched_at=0.0))
    await store.get("a")
    await store.set("c", CachedValue(value=3, fetched_at=0.0))
    assert await store.get("b") is None
    assert len(store) == 2
    entry = await store.get("a")
    assert entry is not None
    assert entry.value == 1


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"fallback_after": 0}, ValueError, "fallback_after must be a positive"),
        ({"fallback_after": float("inf")}, ValueError, "got inf"),
        ({"fallback_after": "1"}, TypeError, "fallback_after must be a number"),
        ({"fallback_after": 1, "ttl": -1}, ValueError, "ttl must be a positive"),
        (
            {"fallback_after": 1, "ttl": 10, "max_staleness": 5},
            ValueError,
            "max_staleness=5 and ttl=10",
        ),
        ({"fallback_after": 1, "fallback_on": ConnectionError}, TypeError, "fallback_on must"),
        (
            {"fallback_after": 1, "fallback_on": (BaseException,)},
            TypeError,
            "Exception subclasses",
        ),
    ],
)
def test_bad_options_are_refused(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    async def fetch(key: str) -> int:
        return 0

    with pytest.raises(error, match=message):
        Fallback(fetch, **options)


def test_bad_refresher_and_store_options_are_refused() -> None:
    with pytest.raises(ValueError, match="max_refreshes must be an int of at least 1, got 0"):
        Refresher(max_refreshes=0)
    with pytest.raises(ValueError, match="refresh_timeout"):
        Refresher(refresh_timeout=-1.0)
    with pytest.raises(ValueError, match="max_entries must be an int of at least 1, got 0"):
        MemoryStore(max_entries=0)
    with pytest.raises(TypeError, match="fetch must be an async function"):
        Fallback(None, fallback_after=1.0)  # type: ignore[arg-type]


def _fetch_now(key: str) -> int:
    return 0


class _DictStore(dict[str, Any]):
    """A dict passed where a store was meant: its get and set are not async."""


def test_wrongly_typed_collaborators_are_refused_where_given() -> None:
    async def fetch(key: str) -> int:
        return 0

    with pytest.raises(TypeError, match=r"fetch must be an async function.*function _fetch_now"):
        Fallback(_fetch_now, fallback_after=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"clock must be callable, got float: 1\.5"):
        Fallback(fetch, fallback_after=1.0, clock=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"store must have async get and set.*_DictStore"):
        Fallback(fetch, fallback_after=1.0, store=_DictStore())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"refresher must be a Refresher or None, got type"):
        Fallback(fetch, fallback_after=1.0, refresher=Refresher)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"fallback_after must be a positive.*got nan"):
        Fallback(fetch, fallback_after=float("nan"))
    with pytest.raises(ValueError, match=r"fallback_after must be a positive.*got -1\.0"):
        Fallback(fetch, fallback_after=-1.0)


def test_async_callables_of_every_shape_are_accepted() -> None:
    async def fetch(key: str, *, scale: int) -> int:
        return scale

    Fallback(functools.partial(fetch, scale=2), fallback_after=1.0)
    Fallback(Source(), fallback_after=1.0)  # an instance with an async __call__


async def test_respond_with_fallback_refuses_bad_arguments_before_fetching() -> None:
    source = Source()
    fallback = Fallback(source, fallback_after=DEADLINE)
    with pytest.raises(ValueError, match=r"header 'X-Region' cannot be sent with the value"):
        await respond_with_fallback(fallback, "k", headers={"X-Region": "eu\nx"})
    with pytest.raises(ValueError, match=r"header 'Content-Length' cannot be given"):
        await respond_with_fallback(fallback, "k", headers={"Content-Length": "2"})
    with pytest.raises(TypeError, match="headers must be a mapping of names to values, got str"):
        await respond_with_fallback(fallback, "k", headers="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cache_flag must be a str or None, got int: 1"):
        await respond_with_fallback(fallback, "k", cache_flag=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fallback must be a Fallback, got Source"):
        await respond_with_fallback(source, "k")  # type: ignore[arg-type]
    assert source.calls == 0


def test_a_value_from_an_earlier_trio_run_is_not_taken_for_fresh() -> None:
    # Each trio.run has a clock of its own (a random offset, here a MockClock each): a
    # fallback made at import time outlives the run that stored its value, into one whose
    # clock reads earlier, and that value must not look fetched in the future, within ttl
    # for as long as the two clocks are apart.
    source = Source()
    fallback = Fallback(source, fallback_after=DEADLINE, ttl=60.0, max_staleness=600.0)
    first_run = MockClock(autojump_threshold=0)
    first_run.jump(3600.0)
    first = anyio.run(fallback.get, "k", backend="trio", backend_options={"clock": first_run})
    assert not first.from_cache
    second = anyio.run(fallback.get, "k", backend="trio", backend_options={"clock": MockClock()})
    assert source.calls == 2
    assert not second.from_cache
    assert second.value == {"key": "k", "call": 2}


async def test_a_value_stored_ahead_of_the_clock_is_not_served_as_of_a_known_age() -> None:
    # A store shared with processes whose clock reads later: how old the value is, nobody
    # can say, so it is neither fresh within ttl nor within max_staleness.
    source = Source()
    source.delay = SLOW
    fallback = Fallback(source, fallback_after=DEADLINE, ttl=60.0, max_staleness=600.0)
    ahead = CachedValue(value=OLD, fetched_at=anyio.current_time() + 3600.0)
    await fallback.store.set("k", ahead)
    with anyio.fail_after(5), pytest.raises(FallbackUnavailableError, match="ahead of") as caught:
        await fallback.get("k")
    assert source.calls == 1
    assert caught.value.cached_age is not None
    assert caught.value.cached_age < 0
    # With no max_staleness any age is served, this one too, when no fresh value comes.
    anyage = Fallback(source, fallback_after=DEADLINE, ttl=60.0, store=fallback.store)
    with anyio.fail_after(5):
        result = await anyage.get("k")
    assert result.stale
    assert result.value == OLD
    assert source.calls == 2


async def test_an_error_answered_from_the_cache_is_logged_once_for_all_its_callers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source()
    fallback = Fallback(source, fallback_after=DEADLINE, fallback_on=(ConnectionError,))
    with anyio.fail_after(5):
        await fallback.get("k")
    source.gate = anyio.Event()
    source.error = ConnectionError("upstream refused")
    results: list[FallbackResult[Any]] = []

    async def call() -> None:
        results.append(await fallback.get("k"))

    with caplog.at_level(logging.WARNING, logger="streamkit"):
        await call_at_once(source, call, callers=200)
    assert source.calls == 2
    assert len(results) == 200
    assert all(result.stale and result.value == {"key": "k", "call": 1} for result in results)
    # Served from the cache, the error would otherwise go unseen: one record, not 200.
    failures = [record for record in caplog.records if "fetch for key 'k' failed" in record.message]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[1] is source.error


class _FailingStore(MemoryStore[Any]):
    """A store whose set fails, as a shared one does while its server is down."""

    async def set(self, key: str, entry: CachedValue[Any]) -> None:
        raise ConnectionError("store unreachable")


async def test_a_store_that_fails_to_keep_a_value_still_lets_every_caller_have_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source()
    source.gate = anyio.Event()
    fallback = Fallback(source, fallback_after=DEADLINE, store=_FailingStore())
    results: list[FallbackResult[Any]] = []

    async def call() -> None:
        results.append(await fallback.get("k"))

    with caplog.at_level(logging.WARNING, logger="streamkit"):
        await call_at_once(source, call, callers=20)
    assert source.calls == 1
    # The first caller, which ran the fetch, too: not an ExceptionGroup from its task group.
    assert len(results) == 20
    assert all(result.value == {"key": "k", "call": 1} for result in results)
    failures = [record for record in caplog.records if "storing" in record.message]
    assert len(failures) == 1
    assert "key 'k'" in failures[0].message


async def test_a_value_returned_by_a_fetch_that_swallowed_its_cancellation_is_not_used(
    exact: bool,
) -> None:
    # A fetch with a catch-all (`except BaseException: return ...`) returns what it made up
    # when cancelled at the deadline: not a fresh value, neither to serve nor to store.
    calls = 0

    async def fetch(key: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        try:
            await anyio.sleep(SLOW)
        except anyio.get_cancelled_exc_class():
            return {"key": key, "call": "made up as it was cancelled"}
        return {"key": key, "call": calls}

    fallback = Fallback(fetch, fallback_after=DEADLINE)
    await fallback.store.set("k", CachedValue(value=OLD, fetched_at=anyio.current_time()))
    with anyio.fail_after(5):
        result, took = await timed(fallback)
    assert result.value == OLD
    assert result.stale
    assert_took(took, DEADLINE, exact=exact)
    assert await cached_value(fallback, "k") == OLD
    with anyio.fail_after(5), pytest.raises(FallbackUnavailableError):
        await fallback.get("nothing")
    assert await fallback.store.get("nothing") is None


async def test_a_key_that_is_no_str_is_refused_before_fetching() -> None:
    # A query parameter left out (request.query_params.get("symbol") is None) must not be
    # fetched, and cached, as a key of its own.
    source = Source()
    fallback = Fallback(source, fallback_after=DEADLINE)
    with pytest.raises(TypeError, match="key must be a str, got NoneType: None"):
        await fallback.get(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be a str, got int: 7"):
        await respond_with_fallback(fallback, 7)  # type: ignore[arg-type]
    assert source.calls == 0
    assert len(fallback.store) == 0  # type: ignore[arg-type]


class _UnreadableStore(MemoryStore[Any]):
    """A store whose get fails at once (its server refuses) or never answers (it is cut
    off), as a shared one's does."""

    def __init__(self, *, hang: bool) -> None:
        super().__init__()
        self.hang = hang

    async def get(self, key: str) -> CachedValue[Any] | None:
        if self.hang:
            await anyio.sleep_forever()
        raise ConnectionError("store unreachable")


async def test_a_store_that_fails_to_read_is_taken_as_holding_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source()
    fallback = Fallback(source, fallback_after=DEADLINE, store=_UnreadableStore(hang=False))
    with anyio.fail_after(5), caplog.at_level(logging.WARNING, logger="streamkit"):
        result = await fallback.get("k")
    assert result.value == {"key": "k", "call": 1}
    assert not result.from_cache
    assert "reading the cached value for key 'k' failed" in caplog.text


async def test_a_store_that_never_answers_holds_no_caller_past_its_deadline(
    exact: bool, caplog: pytest.LogCaptureFixture
) -> None:
    source = Source()
    fallback = Fallback(source, fallback_after=DEADLINE, store=_UnreadableStore(hang=True))
    started = anyio.current_time()
    with (
        anyio.fail_after(5),
        caplog.at_level(logging.WARNING, logger="streamkit"),
        pytest.raises(FallbackUnavailableError, match="nothing was cached"),
    ):
        await fallback.get("k")
    assert_took(anyio.current_time() - started, DEADLINE, exact=exact)
    assert "for key 'k' took longer than fallback_after=0.5 s" in caplog.text


async def test_many_distinct_keys_keep_the_cache_and_its_fetches_bounded() -> None:
    # Keys from hostile query strings, each asked for once: the store keeps max_entries of
    # them, and no fetch, nor the record of one, stays once its callers are answered.
    source = Source()
    refresher = Refresher(max_refreshes=4, refresh_timeout=1.0)
    store: MemoryStore[Any] = MemoryStore(max_entries=100)
    fallback = Fallback(source, fallback_after=DEADLINE, store=store, refresher=refresher)
    with anyio.fail_after(20):
        async with refresher:
            for delay in (0.0, SLOW):
                source.delay = delay
                async with anyio.create_task_group() as task_group:
                    for number in range(1000):
                        task_group.start_soon(_get_or_unavailable, fallback, f"{delay}-{number}")
            await refresher.wait_idle()
    assert source.calls == 2000
    assert len(store) == 100
    assert fallback._flights == {}
    statistics = refresher.statistics()
    assert statistics.running == 0
    assert statistics.timed_out == 4


async def _get_or_unavailable(fallback: Fallback[Any], key: str) -> None:
    with contextlib.suppress(FallbackUnavailableError):
        await fallback.get(key)


def test_a_refresher_that_cancels_before_the_deadline_is_refused_with_the_fallback() -> None:
    # Its refreshes were cancelled at refresh_timeout, before fallback_after: every caller
    # was answered then, early, told no fresh value came within fallback_after.
    with pytest.raises(
        ValueError,
        match=r"refresh_timeout=0\.2 of the refresher .* less than fallback_after=0\.5",
    ):
        Fallback(Source(), fallback_after=0.5, refresher=Refresher(refresh_timeout=0.2))
    # As long, or without a timeout, it may.
    Fallback(Source(), fallback_after=0.5, refresher=Refresher(refresh_timeout=0.5))
    Fallback(Source(), fallback_after=0.5, refresher=Refresher(refresh_timeout=None))


async def test_each_waiter_raises_an_exception_of_its_own_chained_from_the_fetchs() -> None:
    # All of them raised the one exception object: whichever raised last had its frames on
    # it, so every other caller's log showed that caller's traceback, and a caller waiting
    # inside an except block set the __context__ that all the others then showed.
    source = Source()
    source.gate = anyio.Event()
    source.error = error = KeyError("bug")
    error.add_note("from the source")
    fallback = Fallback(source, fallback_after=DEADLINE)
    caught: dict[int, KeyError] = {}

    async def call(number: int) -> None:
        try:
            if number == 0:
                try:
                    raise LookupError("handled by this caller")
                except LookupError:
                    await fallback.get("k")
            else:
                await fallback.get("k")
        except KeyError as exc:
            caught[number] = exc

    assert source.gate is not None
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            for number in range(50):
                task_group.start_soon(call, number)
            await source.started.wait()
            source.gate.set()
    assert source.calls == 1
    assert len({id(exc) for exc in caught.values()}) == 50
    for number, exc in caught.items():
        # Of the documented type, as the fetch raised it, and chained from it.
        assert type(exc) is KeyError
        assert exc.args == ("bug",)
        assert exc.__notes__ == ["from the source"]
        assert exc.__cause__ is error
        # Its traceback is this caller's, down to where it was raised, and no other's.
        frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
        assert frames[0].f_locals.get("number") == number
        assert len(frames) < 10
        assert all(frame.f_code.co_name != "call" for frame in frames[1:])
        if number:
            assert not isinstance(exc.__context__, LookupError)
    # The fetch's own traceback is kept on the exception it raised.
    assert "__call__" in [
        frame.f_code.co_name for frame, _ in traceback.walk_tb(error.__traceback__)
    ]


class Refused(Exception):
    """An error whose constructor takes more than its args, as httpx.HTTPStatusError's."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


async def test_an_error_whose_constructor_takes_more_than_its_args_is_copied_too() -> None:
    source = Source()
    source.gate = anyio.Event()
    source.error = error = Refused("refused", status=503)
    fallback = Fallback(source, fallback_after=DEADLINE)
    caught: list[Refused] = []

    async def call() -> None:
        with pytest.raises(Refused) as raised:
            await fallback.get("k")
        caught.append(raised.value)

    await call_at_once(source, call, callers=2)
    assert caught[0] is not caught[1]
    for exc in caught:
        assert (type(exc), exc.args, exc.status, exc.__cause__) == (
            Refused,
            ("refused",),
            503,
            error,
        )
