"""A FastAPI app with a mounted :class:`streamkit.App` and a generator path operation whose
dependency holds a resource, run as a real process behind a root path (a proxy's prefix):
uvicorn, gunicorn with two uvicorn workers (no root path: it has no option for one), and
the hypercorn command on asyncio and trio. Its OpenAPI document names the root
path and the App's routes. The dependency's resource is closed once, after the generator's
cleanup, whether its client leaves, stops reading or the server shuts down; on SIGTERM both
streams send their farewell, and FastAPI runs the App's lifespan to its end.

The service prints what happens on stdout. Bounds: the farewell guarantee (100 ms), and
generous multiples of the measured figures for a loaded 2-core machine.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from support import service_process
from support.service_process import Running, read_farewell
from support.unavailable import require_modules

from streamkit.testing import open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: The guarantee: every open stream has its farewell this soon after SIGTERM.
FAREWELL_BOUND = 0.1
#: The dependency's exit must have finished this soon after the stream's end (measured: ms).
CLOSE_BOUND = 1.0
#: Starting means importing Python, FastAPI and the service: slow on a loaded machine.
START_BOUND = 30.0
#: The generator path operation's; a stalled client is let go after it.
SEND_TIMEOUT = 1.0
#: From SIGTERM to the process gone (measured: 0.1-0.4 s).
EXIT_BOUND = 5.0
#: Where a proxy serves the app, and the server is told (--root-path).
ROOT_PATH = "/api"

SERVICE = """
import os
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI
from starlette.requests import Request

import streamkit
from streamkit import EventSourceResponse, shielded_cleanup
from streamkit.fastapi import StreamingRoute, mount_app


def say(line):
    os.write(1, f"{line}\\n".encode())


def on_end(end):
    say(f"end {end.path.rsplit('/', 1)[1]} {end.reason.value}")


@asynccontextmanager
async def lifespan(app):
    say("lifespan started")
    yield
    say("lifespan ended")


streams = streamkit.App(heartbeat_interval=None, lifespan=lifespan)


async def ticking(name, size=0, period=0.05):
    try:
        n = 0
        while True:
            yield f"{n}{'x' * size}"
            n += 1
            await anyio.sleep(period)
    finally:
        with shielded_cleanup(1.0):
            await anyio.sleep(0.01)
            say(f"cleaned {name}")


@streams.sse("/ticks/{name}", on_end=on_end)
async def ticks(request: Request) -> AsyncIterator[str]:
    async with aclosing(ticking(request.path_params["name"])) as items:
        async for item in items:
            yield item


async def open_session(name: str):
    try:
        yield name
    finally:
        await anyio.sleep(0.01)  # an awaited close: a network round trip
        say(f"session closed {name}")


Events = EventSourceResponse.with_options(
    on_end=on_end, send_timeout=SEND_TIMEOUT, heartbeat_interval=None
)


api = FastAPI(lifespan=streams.lifespan)
api.router.route_class = StreamingRoute
mount_app(api, "/streams", streams)


@api.get("/generated/{name}", response_class=Events)
async def generated(
    name: Annotated[str, Depends(open_session)], size: int = 0, period: float = 0.05
) -> AsyncIterator[str]:
    async with aclosing(ticking(name, size, period)) as items:
        async for item in items:
            yield item


async def open_transaction(name: str):
    try:
        yield name
    except Exception as exc:
        say(f"rolled back {name} {type(exc).__name__}")
        raise
    else:
        say(f"committed {name}")


@api.get("/failing/{name}", response_class=Events)
async def failing(name: Annotated[str, Depends(open_transaction)]) -> AsyncIterator[str]:
    yield "half"
    raise RuntimeError("the producer failed")
""".replace("SEND_TIMEOUT", repr(SEND_TIMEOUT))


def command(server: str) -> list[str]:
    python = [sys.executable, "-m"]
    bind = "127.0.0.1"
    if server == "uvicorn":
        return [
            *python,
            "uvicorn",
            "service:api",
            "--host",
            bind,
            "--port",
            "0",
            "--root-path",
            ROOT_PATH,
        ]
    if server == "gunicorn":  # two of uvicorn's workers; gunicorn has no root path option
        worker = ["-k", "uvicorn_worker.UvicornWorker", "-w", "2", "--no-control-socket"]
        return [*python, "gunicorn", *worker, "-b", f"{bind}:0", "service:api"]
    backend = server.split("-")[1]
    return [
        *python,
        "hypercorn",
        "-k",
        backend,
        "-b",
        f"{bind}:0",
        "--graceful-timeout",
        "5",
        "--root-path",
        ROOT_PATH,
        "service:api",
    ]


SERVERS = ["uvicorn", "gunicorn", "hypercorn-asyncio", "hypercorn-trio"]
#: The modules each server needs.
MODULES = {"gunicorn": ("gunicorn", "uvicorn_worker")}


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    chosen: str = request.param
    require_modules(*MODULES.get(chosen, (chosen.split("-")[0],)))
    return chosen


@pytest.fixture
def anyio_backend(server: str) -> str:
    return "trio" if server.endswith("trio") else "asyncio"


@asynccontextmanager
async def running(server: str, tmp_path: Path) -> AsyncIterator[Running]:
    async with service_process.running(
        command(server), tmp_path, SERVICE, start_within=START_BOUND, exit_within=EXIT_BOUND + 10
    ) as service:
        yield service


async def test_shutdown_drains_a_mounted_app_and_a_generator_path_operation_behind_a_root_path(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What the proxy forwards: uvicorn adds the root path to the path the proxy stripped it
    # from; hypercorn takes the path whole, as ASGI has it (stripped, Starlette's Mount would
    # not find the App's routes).
    forwarded = "" if server in ("uvicorn", "gunicorn") else ROOT_PATH
    async with running(server, tmp_path) as service:
        async with open_stream(service, f"{forwarded}/openapi.json") as client:
            document = json.loads(await client.read_all())
        # A client that leaves, and one that stops reading: the dependency's session is
        # closed after the generator's cleanup, within a bound of the stream's end.
        async with open_stream(service, f"{forwarded}/generated/left") as client:
            await client.read_event()
            await client.reset()
            await service.wait_line("session closed left", within=CLOSE_BOUND)
        stalled = f"{forwarded}/generated/stalled?size=65536&period=0"
        async with open_stream(service, stalled, receive_buffer=4096) as client:
            await client.read_event()
            client.stall()
            await service.wait_line("end stalled send_timeout", within=SEND_TIMEOUT + 5)
            await service.wait_line("session closed stalled", within=CLOSE_BOUND)
        async with (
            open_stream(service, f"{forwarded}/streams/ticks/mounted") as mounted,
            open_stream(service, f"{forwarded}/generated/last") as generated,
        ):
            assert (await mounted.read_event()).data == "0"
            assert (await generated.read_event()).data == "0"
            service.process.send_signal(signal.SIGTERM)
            signalled = anyio.current_time()
            with anyio.fail_after(5):
                farewells = [await read_farewell(mounted), await read_farewell(generated)]
        exited = await service.wait_line("lifespan ended", within=EXIT_BOUND)
    assert document.get("servers") == (None if server == "gunicorn" else [{"url": ROOT_PATH}])
    assert set(document["paths"]) == {
        "/streams/ticks/{name}",
        "/generated/{name}",
        "/failing/{name}",
    }
    printed = service.printed()
    for name, reason in [
        ("left", "client_disconnected"),
        ("stalled", "send_timeout"),
        ("last", "shutdown"),
    ]:
        assert printed.count(f"session closed {name}") == 1, printed
        cleaned = printed.index(f"cleaned {name}")
        assert cleaned < printed.index(f"session closed {name}"), printed
        assert f"end {name} {reason}" in printed
    assert {"end mounted shutdown", "cleaned mounted"} <= set(printed)
    # The App's lifespan ran (once in each worker), and ended after its streams.
    assert printed[0] == "lifespan started"
    assert printed[-1] == "lifespan ended"
    assert printed.count("lifespan started") == printed.count("lifespan ended")
    latest = max(farewells) - signalled
    with capsys.disabled():
        ended = exited - signalled
        print(f"\n{server}: farewells {latest * 1000:.0f} ms, lifespan ended {ended:.2f} s")
    assert latest < FAREWELL_BOUND


async def test_a_generator_path_operation_that_raises_rolls_its_dependencys_transaction_back(
    server: str, tmp_path: Path
) -> None:
    # The dependency's exit ran as after a success: a session that commits on success
    # committed what the generator had half done.
    forwarded = "" if server in ("uvicorn", "gunicorn") else ROOT_PATH
    async with running(server, tmp_path) as service:
        async with open_stream(service, f"{forwarded}/failing/half") as client:
            with anyio.fail_after(5):
                events = [event async for event in client.events()]
        await service.wait_line("rolled back half RuntimeError", within=CLOSE_BOUND)
        service.process.send_signal(signal.SIGTERM)
    assert (events[0].data, events[-1].event) == ("half", "error")
    assert "committed half" not in service.printed()
