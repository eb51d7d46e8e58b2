"""Cached fallbacks through a real hypercorn server and real clients, on asyncio and trio."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.brokers import until
from support.fallbacks import Source, cached_value

from streamkit import EndReason, EventSourceResponse, ServerSentEvent, StreamSender
from streamkit.fallback import Fallback, Refresher, respond_with_fallback
from streamkit.testing import LiveServer, open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

DEADLINE = 0.5
SLOW = 10.0
# The real figure is about DEADLINE; the bound is generous for a shared two-core machine.
ANSWERED_WITHIN = 2.0


class Quotes(Source):
    """The slow quote service: the test sets its speed; each call's price is one up."""

    def value(self, key: str, call: int) -> dict[str, Any]:
        return {"symbol": key, "price": 100 + call}


def make_app(
    quotes: Fallback[dict[str, Any]],
    *,
    refresher: Refresher | None = None,
    arrivals: list[int] | None = None,
    all_arrived: anyio.Event | None = None,
    expected: int = 0,
) -> Starlette:
    async def quote(request: Request) -> Response:
        if arrivals is not None and all_arrived is not None:
            # Counted just before the call joins the fetch, with no await in between.
            arrivals.append(1)
            if len(arrivals) == expected:
                all_arrived.set()
        return await respond_with_fallback(
            quotes, request.path_params["symbol"], cache_flag="cache"
        )

    async def ticker(request: Request) -> Response:
        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            result = await quotes.get(request.path_params["symbol"])
            await send(ServerSentEvent(data=json.dumps(result.value), event="quote"))

        return EventSourceResponse(produce)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if refresher is None:
            yield
        else:
            async with refresher:
                yield

    return Starlette(
        routes=[Route("/quote/{symbol}", quote), Route("/ticker/{symbol}", ticker)],
        lifespan=lifespan,
    )


async def get(server: LiveServer, path: str) -> tuple[httpx.Response, float]:
    async with httpx.AsyncClient(base_url=server.url) as client:
        started = anyio.current_time()
        with anyio.fail_after(10):
            response = await client.get(path)
        return response, anyio.current_time() - started


async def test_a_slow_source_is_answered_in_time_from_the_cache() -> None:
    source = Quotes()
    quotes = Fallback(source, fallback_after=DEADLINE)
    async with open_server(make_app(quotes)) as server:
        fresh, _ = await get(server, "/quote/ACME")
        assert fresh.status_code == 200
        assert fresh.headers["x-cache"] == "miss"
        assert "age" not in fresh.headers
        assert fresh.json() == {"symbol": "ACME", "price": 101, "cache": False}
        # The fresh path stored the value.
        assert await cached_value(quotes, "ACME") == {"symbol": "ACME", "price": 101}

        source.delay = SLOW
        stale, took = await get(server, "/quote/ACME")
        assert stale.status_code == 200
        assert stale.headers["x-cache"] == "stale"
        assert int(stale.headers["age"]) >= 0
        assert stale.json() == {"symbol": "ACME", "price": 101, "cache": True}
        assert DEADLINE <= took < ANSWERED_WITHIN
        # Without a refresher the late fetch was cancelled before the answer was sent.
        assert len(source.cancelled_at) == 1
        print(f"stale answer after {took:.3f} s (deadline {DEADLINE} s)")


async def test_nothing_cached_is_a_503_with_retry_after() -> None:
    source = Quotes()
    source.delay = SLOW
    quotes = Fallback(source, fallback_after=DEADLINE)
    async with open_server(make_app(quotes)) as server:
        response, took = await get(server, "/quote/NEW")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"detail": "no fresh value in time and no cached value to serve"}
    assert DEADLINE <= took < ANSWERED_WITHIN
    assert len(source.cancelled_at) == 1
    assert await quotes.store.get("NEW") is None
    print(f"503 after {took:.3f} s")


async def test_a_source_down_with_nothing_cached_is_a_503_with_retry_after() -> None:
    # Nothing can be served: the error is one the fallback was told to answer from the
    # cache, a source that is down, not a fault of the app's.
    source = Quotes()
    source.error = ConnectionError("the quote service refused the connection")
    quotes = Fallback(source, fallback_after=DEADLINE, fallback_on=(ConnectionError,))
    async with open_server(make_app(quotes)) as server:
        response, _ = await get(server, "/quote/NEW")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert response.json() == {"detail": "the source failed and no cached value to serve"}
        # Once a value is cached, the same failure serves it, stale.
        source.error = None
        assert (await get(server, "/quote/NEW"))[0].headers["x-cache"] == "miss"
        source.error = ConnectionError("the quote service refused the connection")
        stale, _ = await get(server, "/quote/NEW")
        assert stale.status_code == 200
        assert stale.headers["x-cache"] == "stale"
    assert source.calls == 3


async def test_fifty_concurrent_requests_run_the_source_once() -> None:
    source = Quotes()
    source.gate = anyio.Event()
    # A deadline far off: this test is about sharing, not about falling back.
    quotes = Fallback(source, fallback_after=30.0)
    arrivals: list[int] = []
    all_arrived = anyio.Event()
    app = make_app(quotes, arrivals=arrivals, all_arrived=all_arrived, expected=50)
    responses: list[httpx.Response] = []
    async with open_server(app) as server:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=server.url, limits=limits) as client:

            async def call() -> None:
                responses.append(await client.get("/quote/ACME", timeout=30.0))

            with anyio.fail_after(20):
                async with anyio.create_task_group() as task_group:
                    for _ in range(50):
                        task_group.start_soon(call)
                    await all_arrived.wait()
                    source.gate.set()
    assert source.calls == 1
    assert len(responses) == 50
    assert {response.status_code for response in responses} == {200}
    assert {response.headers["x-cache"] for response in responses} == {"miss"}
    assert all(r.json() == {"symbol": "ACME", "price": 101, "cache": False} for r in responses)


async def test_a_background_refresh_updates_the_cache_and_is_cancelled_on_shutdown() -> None:
    source = Quotes()
    refresher = Refresher(max_refreshes=4)
    quotes = Fallback(source, fallback_after=DEADLINE, refresher=refresher)
    async with open_server(make_app(quotes, refresher=refresher)) as server:
        fresh, _ = await get(server, "/quote/ACME")
        assert fresh.headers["x-cache"] == "miss"

        # The refresh outlives the request that started it, and lands in the cache.
        source.gate = anyio.Event()
        stale, took = await get(server, "/quote/ACME")
        assert stale.headers["x-cache"] == "stale"
        assert stale.json()["price"] == 101
        assert took < ANSWERED_WITHIN
        assert refresher.statistics().running == 1
        source.gate.set()
        with anyio.fail_after(5):
            await refresher.wait_idle()
        assert await cached_value(quotes, "ACME") == {"symbol": "ACME", "price": 102}
        assert source.finished == 2

        # A refresh still running when the server shuts down is cancelled by the lifespan.
        source.gate = anyio.Event()
        stale, _ = await get(server, "/quote/ACME")
        assert stale.json()["price"] == 102
        assert refresher.statistics().running == 1
        shutdown_began = anyio.current_time()
        took = await server.shutdown(within=10)
    assert len(source.cancelled_at) == 1
    cancelled_after = source.cancelled_at[0] - shutdown_began
    assert cancelled_after < 2.0
    assert took < 5.0
    assert refresher.statistics().running == 0
    assert not refresher.statistics().open
    print(f"refresh cancelled {cancelled_after:.3f} s into the shutdown, which took {took:.3f} s")


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_client_leaving_cancels_its_fetch_and_leaves_the_cache(leave: str) -> None:
    source = Quotes()
    quotes = Fallback(source, fallback_after=5.0)
    async with open_server(make_app(quotes)) as server:
        fresh, _ = await get(server, "/quote/ACME")
        assert fresh.status_code == 200
        source.gate = anyio.Event()
        source.started = anyio.Event()
        async with open_stream(server, "/ticker/ACME") as client:
            with anyio.fail_after(5):
                await source.started.wait()
            left = anyio.current_time()
            await getattr(client, leave)()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    # The only caller left: its fetch was cancelled, within a bound, and wrote nothing.
    assert len(source.cancelled_at) == 1
    cancelled_after = source.cancelled_at[0] - left
    assert cancelled_after < 1.0
    assert end.cleanup_duration < 1.0
    assert await cached_value(quotes, "ACME") == {"symbol": "ACME", "price": 101}
    print(f"fetch cancelled {cancelled_after * 1000:.1f} ms after the client's {leave}")


async def test_with_a_refresher_a_client_leaving_does_not_stop_the_refresh() -> None:
    source = Quotes()
    refresher = Refresher()
    quotes = Fallback(source, fallback_after=5.0, refresher=refresher)
    async with open_server(make_app(quotes, refresher=refresher)) as server:
        source.gate = anyio.Event()
        async with open_stream(server, "/ticker/ACME") as client:
            with anyio.fail_after(5):
                await source.started.wait()
            await client.reset()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        assert refresher.statistics().running == 1
        source.gate.set()
        with anyio.fail_after(5):
            await refresher.wait_idle()
        assert await cached_value(quotes, "ACME") == {"symbol": "ACME", "price": 101}
    assert source.cancelled_at == []


async def test_a_fastapi_endpoint_serves_the_fallback() -> None:
    source = Quotes()
    quotes = Fallback(source, fallback_after=DEADLINE)
    app = FastAPI()

    @app.get("/quote/{symbol}")
    async def quote(symbol: str) -> Response:
        return await respond_with_fallback(quotes, symbol)

    async with open_server(app) as server:
        fresh, _ = await get(server, "/quote/ACME")
        source.delay = SLOW
        stale, took = await get(server, "/quote/ACME")
    assert fresh.headers["x-cache"] == "miss"
    assert stale.status_code == 200
    assert stale.headers["x-cache"] == "stale"
    assert stale.json() == {"symbol": "ACME", "price": 101}
    assert took < ANSWERED_WITHIN


async def wait_for_waiters(quotes: Fallback[Any], key: str, count: int) -> None:
    """Until *count* callers wait for *key*'s one fetch: what the test holds the source for.
    Read from the fallback's own record, the one thing that says a caller left its wait."""

    def waiting() -> bool:
        flight = quotes._flights.get(key)
        return flight is not None and flight.waiters == count

    await until(waiting, within=20.0)


async def test_two_hundred_callers_share_one_fetch_that_those_leaving_do_not_cancel() -> None:
    # The first caller hosts the fetch (no refresher) and its client leaves, and twenty
    # more stream clients that joined it leave too: the others still get the fresh value,
    # from the one fetch, which none of the leavers cancelled.
    source = Quotes()
    quotes = Fallback(source, fallback_after=15.0)
    streams, requests = 21, 179
    responses: list[httpx.Response] = []
    async with open_server(make_app(quotes)) as server:
        fresh, _ = await get(server, "/quote/ACME")
        assert fresh.json()["price"] == 101
        source.gate = anyio.Event()
        source.started = anyio.Event()
        limits = httpx.Limits(max_connections=requests)
        async with (
            httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30.0) as client,
            AsyncExitStack() as leavers,
            anyio.create_task_group() as task_group,
        ):
            host = await leavers.enter_async_context(open_stream(server, "/ticker/ACME"))
            with anyio.fail_after(5):
                await source.started.wait()
            joiners = [
                await leavers.enter_async_context(open_stream(server, "/ticker/ACME"))
                for _ in range(streams - 1)
            ]

            async def call() -> None:
                responses.append(await client.get("/quote/ACME"))

            for _ in range(requests):
                task_group.start_soon(call)
            await wait_for_waiters(quotes, "ACME", streams + requests)
            for leaver in [host, *joiners]:
                await leaver.reset()
            await wait_for_waiters(quotes, "ACME", requests)
            assert source.cancelled == 0
            source.gate.set()
        for _ in range(streams):
            end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
            assert end.cleanup_duration < 1.0
    assert source.calls == 2
    assert source.cancelled == 0
    assert len(responses) == requests
    assert {response.headers["x-cache"] for response in responses} == {"miss"}
    assert all(r.json() == {"symbol": "ACME", "price": 102, "cache": False} for r in responses)
    assert await cached_value(quotes, "ACME") == {"symbol": "ACME", "price": 102}


async def test_what_a_fetch_makes_up_as_its_client_leaves_is_not_cached() -> None:
    # A fetch with a catch-all returns a made-up value when its only caller's client leaves
    # and it is cancelled: the cache keeps the last good value.
    started = anyio.Event()
    returned = anyio.Event()
    calls = 0

    async def fetch(symbol: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls != 2:
            return {"symbol": symbol, "price": 100 + calls}
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            return {"symbol": symbol, "price": None}
        finally:
            returned.set()
        raise AssertionError("unreachable")

    quotes = Fallback(fetch, fallback_after=5.0)
    async with open_server(make_app(quotes)) as server:
        fresh, _ = await get(server, "/quote/ACME")
        assert fresh.json()["price"] == 101
        async with open_stream(server, "/ticker/ACME") as client:
            with anyio.fail_after(5):
                await started.wait()
            await client.reset()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        with anyio.fail_after(5):
            await returned.wait()
        assert end.cleanup_duration < 1.0
        assert await cached_value(quotes, "ACME") == {"symbol": "ACME", "price": 101}
        again, _ = await get(server, "/quote/ACME")
    assert calls == 3
    assert again.json() == {"symbol": "ACME", "price": 103, "cache": False}
