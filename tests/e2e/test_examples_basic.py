"""The examples in examples/ import without side effects and stream through real hypercorn."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial

import anyio
import httpx
import pytest
from support.example_modules import EXAMPLES, load_example
from support.resume import read_to_first_tick

from streamkit import EndReason, ServerAddress
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: A disconnect must reach the producer, and its cleanup finish, within this.
DISCONNECT_BOUND = 1.0


async def test_sse_clock_ticks_with_heartbeats_between(anyio_backend: str) -> None:
    example = load_example("sse_clock")
    async with open_server(example.app) as server:
        async with open_stream(server, "/clock") as client:
            with anyio.fail_after(5):
                first = await client.read_event()
                # The next tick is TICK_INTERVAL away: a heartbeat comes first.
                heartbeat = await client.receive_chunk()
        assert (first.event, first.id) == ("tick", "1")
        assert heartbeat == b": ping\n\n"
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)

        async with open_stream(server, "/clock", headers={"Last-Event-ID": "7"}) as client:
            with anyio.fail_after(5):
                resumed = await client.read_event()
        assert resumed.id == "8"
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)


async def test_sse_clock_starts_afresh_from_a_last_event_id_that_is_not_a_tick(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # '²' passed str.isdigit(), then int() raised in the producer: the stream's first event
    # was its error event, and the ERROR log a traceback, for a header a client sent.
    example = load_example("sse_clock")
    async with open_server(example.app) as server:
        received = await read_to_first_tick(server, "/clock", "\u00b2")
        assert b"event: tick\nid: 1\n" in received
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


async def test_sse_clock_starts_afresh_from_a_count_whose_next_tick_could_not_be_an_id(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # 1,024 nines, the longest Last-Event-ID, were taken for a tick: the next one's id had
    # 1,025 digits, which no event id may have, and the stream's first event was its error
    # event, with an ERROR traceback, for a header a client sent.
    example = load_example("sse_clock")
    async with open_server(example.app) as server:
        received = await read_to_first_tick(server, "/clock", "9" * 1024)
        assert b"event: tick\nid: 1\n" in received
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


async def test_fastapi_app_refuses_a_count_out_of_range_with_a_422(anyio_backend: str) -> None:
    # A negative count was an empty 200, and 10**100 streamed rows without end.
    example = load_example("fastapi_app")
    async with open_server(example.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for path in ("/orders?count=-1", f"/orders?count={10**100}", "/prices?count=-1"):
                with anyio.fail_after(5):
                    response = await http.get(path)
                assert response.status_code == 422, (path, response.text)
                assert "count" in response.text


async def test_fastapi_app_streams_tokens_and_rows(anyio_backend: str) -> None:
    example = load_example("fastapi_app")
    async with open_server(example.app) as server:
        async with open_stream(server, "/orders?count=3") as client:
            with anyio.fail_after(5):
                body = await client.read_all()
        assert client.headers["content-type"] == "application/x-ndjson"
        assert [json.loads(line)["id"] for line in body.splitlines()] == [1, 2, 3]
        await server.wait_ended(EndReason.COMPLETED)

        async with open_stream(server, "/completions?prompt=hello") as client:
            with anyio.fail_after(5):
                first = await client.read_event()
            assert example.UPSTREAM == {"open": 1, "aborted": 0}
            await client.reset()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert (first.event, first.data) == ("token", "You ")
    # The client left mid-answer: the upstream completion was closed, and counted as aborted.
    assert example.UPSTREAM == {"open": 0, "aborted": 1}


async def test_fastapi_app_yields_prices_documents_them_and_pings(anyio_backend: str) -> None:
    example = load_example("fastapi_app")
    async with open_server(example.app) as server:
        async with open_stream(server, "/prices?symbol=XY&count=2") as client:
            with anyio.fail_after(10):
                events = [await client.read_event() for _ in range(3)]
            await client.close()
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
        async with open_stream(server, "/openapi.json") as client:
            document = json.loads(await client.read_all())
    assert [json.loads(event.data) for event in events[:2]] == [
        {"symbol": "XY", "cents": 1000},
        {"symbol": "XY", "cents": 1001},
    ]
    assert events[2].event == "ping"
    content = document["paths"]["/prices"]["get"]["responses"]["200"]["content"]
    data = content["text/event-stream"]["itemSchema"]["properties"]["data"]
    assert data["contentSchema"] == {"$ref": "#/components/schemas/Price"}


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_service_streams_readings_and_drains_on_shutdown(anyio_backend: str) -> None:
    # The example is trio-native (trio's nursery, channels and sleep): it runs on trio only.
    example = load_example("trio_service")
    stop = anyio.Event()
    async with anyio.create_task_group() as task_group:
        address: ServerAddress = await task_group.start(
            partial(example.main, bind="127.0.0.1:0", interval=0.05, shutdown_trigger=stop.wait)
        )
        async with open_stream(address, "/readings") as client:
            with anyio.fail_after(5):
                readings = [await client.read_event() for _ in range(3)]
            stop.set()
            with anyio.fail_after(5):
                rest = [event async for event in client.events()]
    # The service returned (the sampler stopped with it) after the drain's farewell.
    assert [event.event for event in readings] == ["reading"] * 3
    assert 18.0 <= float(readings[0].data or "") <= 22.0
    assert rest[-1].event == "shutdown"
    assert rest[-1].retry is not None
    assert client.complete


@pytest.mark.parametrize("name", ["sse_clock", "fastapi_app", "trio_service"])
def test_an_example_without_options_refuses_one_as_a_usage_error(name: str) -> None:
    # Its arguments were never read: --port 9000, which the resource examples take, was
    # ignored, and the example served on port 8000 (or failed there, if it was taken).
    command = [sys.executable, str(EXAMPLES / f"{name}.py"), "--port", "9000"]
    done = subprocess.run(command, capture_output=True, timeout=30)
    assert done.returncode == 2, done.stderr.decode()[-500:]
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last == f"{name}.py: error: unrecognized arguments: --port 9000", last


@pytest.mark.parametrize("arguments", [["curio"], ["--backend", "trio"]])
def test_cached_fallback_refuses_an_argument_it_does_not_take_as_a_usage_error(
    arguments: list[str],
) -> None:
    # The first argument went to anyio.run as the backend's name, whatever it was: a
    # LookupError traceback ("No such backend: --backend") for a flag the other examples take.
    command = [sys.executable, str(EXAMPLES / "cached_fallback.py"), *arguments]
    done = subprocess.run(command, capture_output=True, timeout=30)
    assert done.returncode == 2, done.stderr.decode()[-500:]
    said = done.stderr.decode()
    assert "Traceback" not in said
    assert said.strip().splitlines()[-1].startswith("cached_fallback.py: error: "), said


async def test_cached_fallback_answers_fresh_then_stale_at_the_deadline_then_503(
    anyio_backend: str,
) -> None:
    # The example's upstream is slow (10 s) on every other call, its deadline 0.5 s.
    example = load_example("cached_fallback")
    async with open_server(example.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            with anyio.fail_after(5):
                fresh = await http.get("/quote/ACME")  # call 1: fast
                started = anyio.current_time()
                stale = await http.get("/quote/ACME")  # call 2: slow, answered from the cache
                waited = anyio.current_time() - started
                other = await http.get("/quote/XYZ")  # call 3: fast
                unknown = await http.get("/quote/NEW")  # call 4: slow, nothing cached
    assert (fresh.status_code, fresh.headers["x-cache"]) == (200, "miss")
    assert fresh.json() == {"symbol": "ACME", "price": 101, "fetched": 1, "cache": False}
    assert (stale.status_code, stale.headers["x-cache"]) == (200, "stale")
    assert stale.json() == {**fresh.json(), "cache": True}
    assert "age" in stale.headers
    assert 0.4 <= waited < 3.0  # at the deadline, not after the slow call's 10 s
    assert other.json()["symbol"] == "XYZ"
    assert (unknown.status_code, unknown.headers["retry-after"]) == (503, "10")
