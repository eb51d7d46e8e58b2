"""streamkit.App through real hypercorn, on asyncio and trio: declared routes, app-wide defaults
and per-route overrides as a client sees them, mounting in Starlette and FastAPI,
introspection and Prometheus metrics.

Bounds are generous (a loaded 2-core machine); the real figures are in the report.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from support.ndjson_items import remaining_items

from streamkit import App, EndReason, ServerSentEvent, StreamSender
from streamkit.testing import LiveServer, StreamClient, open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


class Probe:
    """What the service's producers and background task did."""

    def __init__(self) -> None:
        self.cleaned: list[str] = []
        self.task_started = anyio.Event()
        self.task_cancelled = anyio.Event()


def service(probe: Probe, **options: Any) -> App:
    """An App as its users write it: defaults, overrides, a plain endpoint, a background task."""

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        async def refresh_forever() -> None:
            probe.task_started.set()
            try:
                await anyio.sleep_forever()
            finally:
                probe.task_cancelled.set()

        app.task_group.start_soon(refresh_forever)
        yield

    options.setdefault("lifespan", lifespan)
    app = App(**options)

    @app.sse("/tokens")
    async def tokens(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
        send.push_async_callback(cleaned, "/tokens")
        n = 0
        while True:
            await send(ServerSentEvent(data=str(n), id=str(n)))
            n += 1
            await anyio.sleep(0.01)

    async def cleaned(path: str) -> None:
        await anyio.sleep(0.001)  # an awaited cleanup, like closing an upstream
        probe.cleaned.append(path)

    @app.ndjson("/rows/{count:int}")
    async def rows(request: Request) -> AsyncIterator[dict[str, int]]:
        for n in range(request.path_params["count"]):
            yield {"n": n}

    @app.sse("/idle")
    async def idle(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
        await anyio.sleep_forever()

    @app.sse("/short", max_duration=0.3, heartbeat_interval=None)
    async def short(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
        await anyio.sleep_forever()

    @app.stream("/flood", send_timeout=0.5, buffer_size=4)
    async def flood(request: Request) -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536

    @app.ndjson("/boom", error_item={"error": True})
    async def boom(request: Request) -> AsyncIterator[dict[str, int]]:
        yield {"n": 0}
        raise RuntimeError("the source broke")

    @app.get("/price")
    async def price(request: Request) -> Response:
        return JSONResponse({"price": 42})

    return app


async def read_items(server: Any, path: str) -> list[Any]:
    async with open_stream(server, path) as client:
        with anyio.fail_after(5):
            return await remaining_items(client)


# -- routes -----------------------------------------------------------------------------------


async def test_declared_routes_serve_each_kind_and_plain_endpoints() -> None:
    probe = Probe()
    async with open_server(service(probe)) as server:
        assert await read_items(server, "/rows/3") == [{"n": 0}, {"n": 1}, {"n": 2}]
        await server.wait_ended(EndReason.COMPLETED)
        async with open_stream(server, "/tokens") as client:
            assert client.headers["content-type"].startswith("text/event-stream")
            assert (await client.read_event()).data == "0"
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/price")).json() == {"price": 42}
            assert (await http.post("/tokens")).status_code == 405
        with anyio.fail_after(5):
            await probe.task_started.wait()
    assert probe.cleaned == ["/tokens"]


async def test_the_app_wide_heartbeat_applies_and_a_route_overrides_it() -> None:
    async with open_server(service(Probe(), heartbeat_interval=0.05)) as server:
        async with open_stream(server, "/idle") as client:
            body = b""
            with anyio.fail_after(5):  # expected after 0.1 s
                while body.count(b": ping\n\n") < 2:
                    body += await client.receive_chunk() or b""
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)

        # /short: no heartbeat, and a max_duration of its own (the App has none).
        async with open_stream(server, "/short") as client:
            end = await server.wait_ended(EndReason.DEADLINE, within=5)
            body = await client.read_all()
        assert 0.29 <= end.duration < 2.0
        assert body == b""  # no heartbeat, no deadline event
        assert client.complete
        assert end.path == "/short"


async def test_a_routes_send_timeout_ends_a_stalled_client_while_the_app_default_is_long() -> None:
    async with open_server(service(Probe(), send_timeout=30.0)) as server:
        async with open_stream(server, "/flood", receive_buffer=4096) as client:
            await client.receive_chunk()  # then stop reading
            started = anyio.current_time()
            end = await server.wait_ended(EndReason.SEND_TIMEOUT, within=10)
        assert anyio.current_time() - started < 5.0  # 0.5 s of route send_timeout, not 30
        assert end.path == "/flood"


# -- introspection and metrics ----------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


async def script(server: LiveServer) -> None:
    """Three completed streams, a client that leaves, a stalled client and a producer that
    raises, each waited for."""
    for _ in range(3):
        await read_items(server, "/rows/2")
        await server.wait_ended(EndReason.COMPLETED)
    async with open_stream(server, "/tokens") as client:
        await client.read_event()
        await client.close()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    async with open_stream(server, "/flood", receive_buffer=4096) as client:
        await client.receive_chunk()
        await server.wait_ended(EndReason.SEND_TIMEOUT, within=10)
    assert await read_items(server, "/boom") == [{"n": 0}, {"error": True}]
    await server.wait_ended(EndReason.ERROR)


async def test_a_head_request_to_a_stream_route_is_not_counted_as_a_stream() -> None:
    app = service(Probe(), metrics_path="/metrics")
    async with open_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        head = await http.head("/rows/3")
        assert (head.status_code, head.content) == (200, b"")
        assert await read_items(server, "/rows/2") == [{"n": 0}, {"n": 1}]
        assert (await server.wait_end()).path == "/rows/2"  # the HEAD's was never reported
        metrics = samples((await http.get("/metrics")).text)
    ends = "streamkit_stream_ends_total"
    assert value(metrics, ends, route="/rows/{count:int}", reason="completed") == 1
    assert value(metrics, "streamkit_active_streams", route="/rows/{count:int}") == 0
    assert app.statistics().ended["/rows/{count:int}"][EndReason.COMPLETED] == 1


async def test_metrics_and_introspection_count_a_scripted_set_of_streams() -> None:
    app = service(Probe(), metrics_path="/metrics", streams_path="/_streams")
    async with open_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        await script(server)
        response = await http.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain; version=")
        metrics = samples(response.text)
        ends = "streamkit_stream_ends_total"
        assert value(metrics, ends, route="/rows/{count:int}", reason="completed") == 3
        assert value(metrics, ends, route="/tokens", reason="client_disconnected") == 1
        assert value(metrics, ends, route="/flood", reason="send_timeout") == 1
        assert value(metrics, ends, route="/boom", reason="error") == 1
        assert value(metrics, ends, route="/tokens", reason="shutdown") == 0
        assert value(metrics, "streamkit_send_stalls_total", route="/flood") == 1
        assert value(metrics, "streamkit_send_stalls_total", route="/tokens") == 0
        cleanup = "streamkit_stream_cleanup_seconds_count"
        assert value(metrics, cleanup, route="/rows/{count:int}") == 3
        assert value(metrics, cleanup, route="/tokens") == 1
        for route in ("/tokens", "/rows/{count:int}", "/flood", "/boom", "/idle", "/short"):
            assert value(metrics, "streamkit_active_streams", route=route) == 0

        async with open_stream(server, "/tokens") as client:
            await client.read_event()
            metrics = samples((await http.get("/metrics")).text)
            assert value(metrics, "streamkit_active_streams", route="/tokens") == 1
            document = (await http.get("/_streams")).json()
            local_port = client.raw_socket.getsockname()[1]
        (active,) = document["active"]
        assert (active["route"], active["path"]) == ("/tokens", "/tokens")
        assert active["client"] == f"127.0.0.1:{local_port}"
        assert active["items_sent"] >= 1
        assert active["bytes_sent"] > 0
        assert active["age"] >= 0
        assert (document["running"], document["draining"]) == (True, False)
        assert document["ended"]["/rows/{count:int}"]["completed"] == 3
        assert document["ended"]["/flood"]["send_timeout"] == 1
        reasons = [end["reason"] for end in document["recent_ends"]]
        assert reasons == ["completed"] * 3 + ["client_disconnected", "send_timeout", "error"]
        assert document["recent_ends"][-1]["exception"] == "RuntimeError('the source broke')"
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)

    statistics = app.statistics()
    assert statistics.ended["/tokens"][EndReason.CLIENT_DISCONNECTED] == 2
    assert sum(len(streams) for streams in statistics.active.values()) == 0
    final = samples(app.metrics.exposition()[0].decode())
    assert value(final, "streamkit_active_streams", route="/tokens") == 0


async def test_two_apps_in_one_process_keep_their_metrics_apart() -> None:
    first, second = service(Probe()), service(Probe())
    async with open_server(first) as server:
        await read_items(server, "/rows/1")
        await server.wait_ended(EndReason.COMPLETED)
    route = {"route": "/rows/{count:int}", "reason": "completed"}
    assert (
        value(
            samples(first.metrics.exposition()[0].decode()), "streamkit_stream_ends_total", **route
        )
        == 1
    )
    assert (
        value(
            samples(second.metrics.exposition()[0].decode()), "streamkit_stream_ends_total", **route
        )
        == 0
    )


# -- mounted in another application -----------------------------------------------------------


def mounted_in(framework: str, app: App) -> Any:
    if framework == "starlette":

        async def health(request: Request) -> Response:
            return PlainTextResponse("ok")

        return Starlette(
            routes=[Route("/health", health), Mount("/streams", app)], lifespan=app.lifespan
        )
    api = FastAPI(lifespan=app.lifespan)

    @api.get("/health", response_class=PlainTextResponse)
    async def fastapi_health() -> str:
        return "ok"

    api.mount("/streams", app)
    return api


async def farewell(client: StreamClient) -> ServerSentEvent:
    events = [event async for event in client.events()]
    assert client.complete
    return events[-1]


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
async def test_mounted_the_app_runs_through_the_outer_lifespan_and_drains_on_shutdown(
    framework: str,
) -> None:
    probe = Probe()
    app = service(probe, streams_path="/_streams")
    async with open_server(mounted_in(framework, app), grace_period=5.0) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/health")).text == "ok"
            assert await read_items(server, "/streams/rows/2") == [{"n": 0}, {"n": 1}]
            await server.wait_ended(EndReason.COMPLETED)
            with anyio.fail_after(5):
                await probe.task_started.wait()
            async with open_stream(server, "/streams/tokens") as client:
                await client.read_event()
                document = (await http.get("/streams/_streams")).json()
                assert [stream["path"] for stream in document["active"]] == ["/streams/tokens"]
                took = await server.shutdown(within=10)
                last = await farewell(client)
    assert (last.event, last.retry) == ("shutdown", 1000)
    assert took < 5.0
    assert probe.task_cancelled.is_set()
    assert probe.cleaned == ["/tokens"]
    assert app.statistics().ended["/tokens"][EndReason.SHUTDOWN] == 1


async def test_mounted_without_its_lifespan_it_still_streams_and_the_server_drains_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = Probe()
    app = service(probe)
    outer = Starlette(routes=[Mount("/streams", app)])  # lifespan=app.lifespan forgotten
    with caplog.at_level(logging.WARNING, logger="streamkit"):
        async with open_server(outer) as server, open_stream(server, "/streams/tokens") as client:
            await client.read_event()
            await server.shutdown(within=10)
            last = await farewell(client)
    assert last.event == "shutdown"
    assert "served without its App's lifespan running" in caplog.text
    assert not probe.task_started.is_set()


async def test_the_apps_middleware_and_exception_handlers_are_starlettes() -> None:
    app = service(Probe())
    seen: list[str] = []

    class Seen:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.inner(scope, receive, send)

    async def teapot(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("teapot", status_code=418)

    @app.get("/fail")
    async def fail(request: Request) -> Response:
        raise KeyError("x")

    app.add_middleware(Seen)
    app.add_exception_handler(KeyError, teapot)
    async with open_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/fail")).status_code == 418
        assert await read_items(server, "/rows/1") == [{"n": 0}]
    assert seen == ["/fail", "/rows/1"]


async def test_a_producer_that_returns_a_value_ends_its_stream_as_an_error_naming_it() -> None:
    app = App()

    async def upstream() -> AsyncIterator[str]:
        yield "never sent"

    @app.sse("/returns")
    async def returns(request: Request, send: StreamSender[str]) -> object:
        await send("first")
        # A mistake a user makes: the items returned, not sent.
        return upstream()

    async with open_server(app) as server:
        async with open_stream(server, "/returns") as client:
            with anyio.fail_after(5):
                events = [event async for event in client.events()]
        assert [(event.event, event.data) for event in events] == [
            (None, "first"),
            ("error", ""),
        ]
        end = await server.wait_ended(EndReason.ERROR)
    assert isinstance(end.exception, TypeError)
    assert ".returns at " in str(end.exception)
    assert "returned" in str(end.exception)
    assert "async_generator" in str(end.exception)


# -- a client's bad request -------------------------------------------------------------------


async def test_a_path_parameter_its_convertor_cannot_convert_is_a_404_and_the_server_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Starlette's int convertor matches any run of digits, then int() refuses one of more than
    # Python's 4,300 digits: a ValueError, which was a 500 and the server's traceback.
    app = service(Probe())

    @app.get("/orders/{id:int}")
    async def order(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["id"]})

    too_long = "9" * 5000
    async with open_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        with anyio.fail_after(10):
            for path in (f"/rows/{too_long}", f"/orders/{too_long}", "/rows/abc", "/rows/-0"):
                response = await http.get(path)
                assert response.status_code == 404, (path[:20], response.text)
            assert (await http.get("/orders/7")).json() == {"id": 7}
        assert await read_items(server, "/rows/2") == [{"n": 0}, {"n": 1}]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], caplog.text


async def test_head_gets_each_stream_routes_headers_without_running_it_and_405_names_allow() -> (
    None
):
    probe = Probe()
    kinds = {
        "/tokens": "text/event-stream",
        "/rows/2": "application/x-ndjson",
        "/flood": "application/octet-stream",
    }
    async with (
        open_server(service(probe)) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        with anyio.fail_after(10):
            for path, media_type in kinds.items():
                response = await http.head(path)
                assert response.status_code == 200, path
                assert response.headers["content-type"].startswith(media_type)
                assert response.content == b""
            for method in ("POST", "PUT", "DELETE", "OPTIONS"):
                refused = await http.request(method, "/tokens")
                assert refused.status_code == 405, method
                assert set(refused.headers["allow"].split(", ")) == {"GET", "HEAD"}
        assert await read_items(server, "/rows/2") == [{"n": 0}, {"n": 1}]
        # The first end reported is this GET's: a HEAD is no stream, and has none.
        end = await server.wait_ended(EndReason.COMPLETED)
        assert (end.path, end.items_sent) == ("/rows/2", 2)
    assert probe.cleaned == []  # /tokens' producer, which registers its cleanup, never ran
