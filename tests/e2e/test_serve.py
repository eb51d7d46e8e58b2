"""streamkit.serve as a process: SIGTERM drains the streams and the process exits in time."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import sys
import textwrap
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import TaskStatus

from streamkit import ServerSentEvent
from streamkit._serve import ServerAddress
from streamkit.testing import open_leak_check, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

GRACE = 3.0
SERVICE = textwrap.dedent(
    f"""
    import sys
    from functools import partial

    import anyio
    from starlette.applications import Starlette
    from starlette.routing import Route

    import streamkit

    async def ticks(send):
        n = 0
        while True:
            await send(streamkit.ServerSentEvent(data=str(n)))
            n += 1
            await anyio.sleep(0.05)

    app = Starlette(routes=[Route("/ticks", lambda request: streamkit.EventSourceResponse(ticks))])

    async def main():
        async with anyio.create_task_group() as task_group:
            serve = partial(streamkit.serve, app, bind="127.0.0.1:0", grace_period={GRACE!r})
            address = await task_group.start(serve)
            print(address.port, flush=True)

    anyio.run(main, backend=sys.argv[1])
    """
)


async def test_sigterm_drains_streams_and_the_process_exits_within_the_grace_period(
    anyio_backend: str,
) -> None:
    async with await anyio.open_process([sys.executable, "-c", SERVICE, anyio_backend]) as process:
        assert process.stdout is not None
        with anyio.fail_after(10):
            port = int((await process.stdout.receive()).decode())
        address = ServerAddress(host="127.0.0.1", port=port)
        async with open_stream(address, "/ticks") as client:
            await client.read_event()
            signalled_at = anyio.current_time()
            process.send_signal(signal.SIGTERM)
            events = [event async for event in client.events()]
            with anyio.fail_after(GRACE + 2):
                code = await process.wait()
            exited_after = anyio.current_time() - signalled_at
    assert events[-1] == ServerSentEvent(event="shutdown", data="", retry=1000)
    assert client.complete
    assert code == 0
    assert exited_after < GRACE


async def test_the_caller_is_not_left_cancelled_after_serve_returns() -> None:
    """hypercorn's asyncio worker leaves a cancellation request on its caller on Python 3.11;
    serve() takes it back, so the caller's own cancel scopes behave afterwards."""
    from starlette.applications import Starlette

    from streamkit import serve

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(anyio.sleep_forever)
            # Stopped as soon as it serves: through hypercorn's own shutdown.
            serving = anyio.Event()
            await serve(
                Starlette(),
                bind="127.0.0.1:0",
                shutdown_trigger=serving.wait,
                on_serving=lambda where: serving.set(),
            )
            task_group.cancel_scope.cancel()
        await anyio.lowlevel.checkpoint()  # still running: the task was not left cancelled


#: Tries of a cancellation racing a client's connection as the server starts: before the fix,
#: some 35 in 40 raised hypercorn's InvalidStateError on asyncio.
RACES = 30


async def test_serve_cancelled_as_a_client_connects_raises_only_the_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # On asyncio, hypercorn's worker awaits in its own cleanup, which a cancel scope cancelled
    # again at every await: with a connection open, it raised InvalidStateError ("Exception is
    # not set.") in place of the cancellation, and left errors for asyncio to log.
    from streamkit import App, serve

    app = App()

    @app.sse("/forever")
    async def forever(request: object, send: Any) -> None:
        await send("open")
        await anyio.sleep_forever()

    async def connect_and_read(address: ServerAddress) -> None:
        # Closed by the server however far it got: refused, reset, or ended.
        with contextlib.suppress(OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            stream = await anyio.connect_tcp(address.host, address.port)
            async with stream:
                await stream.send(b"GET /forever HTTP/1.1\r\nhost: test\r\n\r\n")
                while await stream.receive():
                    pass

    outcomes: list[str] = []
    for attempt in range(RACES):
        serving = anyio.CancelScope()

        async def run_serve(
            serving: anyio.CancelScope, *, task_status: TaskStatus[ServerAddress]
        ) -> None:
            with serving:
                try:
                    await serve(
                        app,
                        bind="127.0.0.1:0",
                        grace_period=GRACE,
                        shutdown_trigger=anyio.sleep_forever,
                        task_status=task_status,
                    )
                except anyio.get_cancelled_exc_class():
                    outcomes.append("cancelled")
                    raise
                outcomes.append("returned")

        with anyio.fail_after(GRACE + 5):
            async with open_leak_check(within=2.0), anyio.create_task_group() as task_group:
                address = await task_group.start(run_serve, serving)
                task_group.start_soon(connect_and_read, address)
                for _ in range(attempt % 10):
                    await anyio.lowlevel.checkpoint()
                await anyio.sleep(0.002 * (attempt // 10))
                serving.cancel()
        with pytest.raises(OSError, match="connection attempts failed"):  # no longer listening
            await anyio.connect_tcp(address.host, address.port)
    assert outcomes == ["cancelled"] * RACES
    gc.collect()  # an exception nobody retrieved is logged as its future is collected
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_on_serving_is_called_once_the_lifespan_has_started() -> None:
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette

    from streamkit import serve

    started = anyio.Event()
    said: list[tuple[bool, ServerAddress]] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        await anyio.sleep(0.2)  # a slow startup: the socket listens meanwhile
        started.set()
        yield

    serving = anyio.Event()

    def on_serving(where: ServerAddress) -> None:
        said.append((started.is_set(), where))
        serving.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            address = await task_group.start(
                partial(
                    serve,
                    Starlette(lifespan=lifespan),
                    bind="127.0.0.1:0",
                    grace_period=GRACE,
                    shutdown_trigger=serving.wait,
                    on_serving=on_serving,
                )
            )
    assert said == [(True, address)]


async def test_hypercorns_lines_go_once_through_logging_a_program_configured(
    anyio_backend: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # hypercorn's default error log put a handler of its own on its logger, and the line went
    # to stderr there and again through the root's: a program that called
    # logging.basicConfig() before serve (as examples/trio_service.py does) saw each twice.
    from starlette.applications import Starlette

    from streamkit import serve

    caplog.set_level(logging.INFO)  # the root has a handler: the program configured logging
    serving = anyio.Event()
    with anyio.fail_after(10):
        await serve(
            Starlette(),
            bind="127.0.0.1:0",
            grace_period=GRACE,
            shutdown_trigger=serving.wait,
            on_serving=lambda address: serving.set(),
        )
    said = [r.getMessage() for r in caplog.records if r.name == "hypercorn.error"]
    assert [line for line in said if line.startswith("Running on")], said
    assert "Running on" not in capfd.readouterr().err


async def test_an_on_serving_that_is_not_callable_is_refused_before_anything_listens() -> None:
    from starlette.applications import Starlette

    from streamkit import serve

    with pytest.raises(TypeError, match="on_serving must be callable, got str: 'ready'"):
        await serve(Starlette(), bind="127.0.0.1:0", on_serving="ready")  # type: ignore[arg-type]


async def _returns_at_once(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # no lifespan: a plain ASGI app's first line
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served"})


async def _returns_after_the_startup_message(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup, left unanswered
        return
    await _returns_at_once(scope, receive, send)


async def _returns_once_started(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        return  # not waiting for the shutdown
    await _returns_at_once(scope, receive, send)


@pytest.mark.parametrize(
    "app", [_returns_at_once, _returns_after_the_startup_message, _returns_once_started]
)
async def test_an_app_that_returns_from_its_lifespan_is_served_and_stopped_without_it(
    app: Any,
) -> None:
    # An app with no lifespan may return at once from its scope (the ASGI spec allows it).
    # hypercorn's trio worker then sent the startup on the channel it had closed, and serve
    # failed with trio's ClosedResourceError before it served anything; one that returned
    # once started had the same come of its shutdown.
    import httpx

    from streamkit import serve

    serving = anyio.Event()
    stop = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            address = await task_group.start(
                partial(
                    serve,
                    app,
                    bind="127.0.0.1:0",
                    grace_period=GRACE,
                    shutdown_trigger=stop.wait,
                    on_serving=lambda where: serving.set(),
                )
            )
            await serving.wait()
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://{address.host}:{address.port}/")
            stop.set()
    assert (response.status_code, response.text) == (200, "served")


@pytest.mark.parametrize("stopped_by", ["trigger", "cancellation"])
async def test_a_stop_during_the_lifespans_startup_cancels_it_and_serves_nothing(
    stopped_by: str, caplog: pytest.LogCaptureFixture
) -> None:
    # hypercorn waits on its shutdown trigger only once the app's lifespan has started: a
    # Ctrl-C during a slow startup was held until its startup_timeout (60 s), and then failed.
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from streamkit import serve

    starting = anyio.Event()
    said: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        starting.set()
        try:
            await anyio.sleep(60)  # a database that does not answer
        except anyio.get_cancelled_exc_class():
            said.append("startup cancelled")
            raise
        said.append("started")
        yield
        said.append("shut down")

    app = Starlette(
        lifespan=lifespan, routes=[Route("/", lambda request: PlainTextResponse("served"))]
    )
    stop = anyio.Event()
    received = b""

    async def request_during_the_startup(address: ServerAddress) -> None:
        # Its connection waits in the socket's backlog: it must never reach the app.
        nonlocal received
        with contextlib.suppress(OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            async with await anyio.connect_tcp(address.host, address.port) as stream:
                await stream.send(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
                while chunk := await stream.receive():
                    received += chunk

    with anyio.fail_after(GRACE + 5):
        async with anyio.create_task_group() as task_group:
            serving = anyio.CancelScope()

            async def run_serve(*, task_status: TaskStatus[ServerAddress]) -> None:
                with serving:
                    await serve(
                        app,
                        bind="127.0.0.1:0",
                        grace_period=GRACE,
                        shutdown_trigger=stop.wait,
                        task_status=task_status,
                        on_serving=lambda where: said.append("serving"),
                    )
                said.append("returned")

            address = await task_group.start(run_serve)
            task_group.start_soon(request_during_the_startup, address)
            await starting.wait()
            stopped_at = anyio.current_time()
            if stopped_by == "trigger":
                stop.set()
            else:
                serving.cancel()
        stopped_after = anyio.current_time() - stopped_at
    assert said == ["startup cancelled", "returned"]
    assert received == b""
    assert stopped_after < 1.0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def _serve_in_a_thread(backend: str, trigger: Any = None) -> None:
    from starlette.applications import Starlette

    from streamkit import serve

    await anyio.to_thread.run_sync(
        partial(
            anyio.run,
            partial(serve, Starlette(), bind="127.0.0.1:0", shutdown_trigger=trigger),
            backend=backend,
        )
    )


async def test_serve_outside_the_main_thread_without_a_shutdown_trigger_is_refused(
    anyio_backend: str,
) -> None:
    # It failed once serving, with an exception group holding each backend's own words:
    # "set_wakeup_fd only works in main thread", "open_signal_receiver is only possible...".
    with anyio.fail_after(10), pytest.raises(RuntimeError) as raised:
        await _serve_in_a_thread(anyio_backend)
    assert str(raised.value) == (
        "serve listens for SIGINT and SIGTERM, which only the main thread can: outside it, "
        "give shutdown_trigger="
    )


async def test_serve_outside_the_main_thread_with_a_shutdown_trigger_serves(
    anyio_backend: str,
) -> None:
    async def at_once() -> None:
        pass

    with anyio.fail_after(10):
        await _serve_in_a_thread(anyio_backend, at_once)
