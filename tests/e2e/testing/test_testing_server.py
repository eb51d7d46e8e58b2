"""open_server: ready when it says so, and a failure in its block reaches pytest as itself."""

from __future__ import annotations

import gc
import logging
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from streamkit import App, EndReason, ServeError
from streamkit.testing import LeakError, open_leak_check, open_server, open_stream
from streamkit.testing import _server as live_server

#: The margin the docs promise (five seconds), made shorter in the tests that wait it out.
SHORT_MARGIN = 1.0


def test_the_margin_past_the_grace_period_is_five_seconds_as_documented() -> None:
    assert live_server._STOP_MARGIN == 5.0


pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def make_app() -> Starlette:
    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/hello", hello)])


async def test_a_leak_check_inside_the_server_sees_none_of_its_own_tasks() -> None:
    """Once open_server yields, hypercorn's own tasks run: a leak check entered then must not
    count them as the block's."""
    with anyio.fail_after(20):
        async with open_server(make_app()):
            async with open_leak_check():
                await anyio.sleep(0.1)


async def test_an_assertion_in_the_block_reaches_pytest_unwrapped() -> None:
    with pytest.raises(AssertionError, match="the body was wrong") as caught:
        async with open_server(make_app()):
            raise AssertionError("the body was wrong")
    assert type(caught.value) is AssertionError


async def test_a_leak_found_inside_the_block_reaches_pytest_as_a_leak_error() -> None:
    forgotten: list[socket.socket] = []
    try:
        with pytest.raises(LeakError, match="leaked 1 file descriptor") as caught:
            async with open_server(make_app()), open_leak_check(within=0.05):
                forgotten.append(socket.socket())
    finally:
        for sock in forgotten:
            sock.close()
    assert type(caught.value) is LeakError


async def serve_past_a_deadline(*, connection_open: bool) -> int:
    """Serve, with a connection open or not when a deadline around the server passes; the
    port served on."""
    with anyio.fail_after(10) as deadline:
        async with open_server(make_app()) as server:
            async with open_stream(server, "/hello") as client:
                assert await client.read_all() == b"hello"
                if connection_open:
                    deadline.deadline = anyio.current_time()
                    await anyio.sleep_forever()
            deadline.deadline = anyio.current_time()
            await anyio.sleep_forever()
    raise AssertionError("the deadline did not pass")


@pytest.mark.parametrize("connection_open", [True, False], ids=["open", "closed"])
async def test_a_deadline_that_passes_in_the_block_raises_its_timeout_error(
    connection_open: bool,
) -> None:
    # The deadline cancels the block; the server still stops cleanly (on asyncio, hypercorn
    # cancelled with a connection open raised its own InvalidStateError instead).
    with anyio.fail_after(20):
        async with open_leak_check():
            with pytest.raises(TimeoutError) as caught:
                await serve_past_a_deadline(connection_open=connection_open)
    assert type(caught.value) is TimeoutError


@pytest.mark.timeout(30)  # the failure this guards against is a hang no deadline can end
async def test_a_deadline_passed_before_the_server_listens_raises_its_timeout_error() -> None:
    # Cancelled while it starts, the server is stopped all the same (the start waited for a
    # server shielded from the cancellation, which nothing told to stop: a hang).
    with anyio.fail_after(20):
        async with open_leak_check():
            with pytest.raises(TimeoutError) as caught, anyio.fail_after(0):
                async with open_server(make_app()):
                    raise AssertionError("the block ran past its deadline")
    assert type(caught.value) is TimeoutError


async def test_a_server_not_stopped_five_seconds_past_its_grace_period_is_cancelled(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lifespan whose shutdown waits for ever holds the server past its grace period: five
    seconds later (one here) the server is cancelled, its lifespan with it (hypercorn's
    asyncio worker left that task running), and the block raises a TimeoutError saying so."""
    monkeypatch.setattr(live_server, "_STOP_MARGIN", SHORT_MARGIN)
    grace_period = 0.2
    exited = anyio.Event()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        try:
            await anyio.sleep_forever()
        finally:
            exited.set()

    with anyio.fail_after(grace_period + 15):
        async with open_leak_check():
            with pytest.raises(TimeoutError, match=r"did not stop within 1\.2 s") as caught:
                async with open_server(Starlette(lifespan=lifespan), grace_period=grace_period):
                    left_at = anyio.current_time()
            raised_after = anyio.current_time() - left_at
    assert type(caught.value) is TimeoutError
    assert exited.is_set()
    gc.collect()  # a task's exception nobody retrieved is logged as the task is collected
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert grace_period + SHORT_MARGIN <= raised_after < grace_period + SHORT_MARGIN + 2.0


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("grace_period", float("nan"), ValueError),
        ("grace_period", "5", TypeError),
        ("stalled_connection_timeout", -1.0, ValueError),
        ("stalled_connection_timeout", float("inf"), ValueError),
        ("stalled_connection_timeout", 1e7, ValueError),
    ],
)
async def test_a_bad_option_is_refused_naming_it_on_entering(
    option: str, value: object, error: type[Exception]
) -> None:
    # Raised as itself, not in an exception group, and before the block runs.
    with anyio.fail_after(20):
        with pytest.raises(error, match=rf"^{option} must be .*{re.escape(repr(value))}$"):
            async with open_server(make_app(), **{option: value}):  # type: ignore[arg-type]
                raise AssertionError("the block ran")


@pytest.mark.parametrize("method", ["wait_end", "wait_ended", "shutdown"])
@pytest.mark.parametrize(
    ("within", "error"),
    [(float("nan"), ValueError), (float("inf"), ValueError), (-1.0, ValueError), ("5", TypeError)],
)
async def test_a_bad_within_for_a_wait_is_refused_naming_it_and_the_server_serves_on(
    method: str, within: object, error: type[Exception]
) -> None:
    with anyio.fail_after(20):
        async with open_server(make_app()) as server:
            args = (EndReason.COMPLETED,) if method == "wait_ended" else ()
            with pytest.raises(error, match=rf"^within must be .*{re.escape(repr(within))}$"):
                await getattr(server, method)(*args, within=within)
            # Refused before anything began: shutdown did not start one.
            assert not server.stopped.is_set()
            async with open_stream(server, "/hello") as client:
                assert await client.read_all() == b"hello"


async def test_a_reason_that_is_no_end_reason_is_refused_naming_it() -> None:
    # A reason's name given for the reason was an AttributeError: 'str' object has no
    # attribute 'name'.
    with anyio.fail_after(20):
        async with open_server(make_app()) as server:
            with pytest.raises(
                TypeError, match=r"^reason must be an EndReason, got str: 'CLIENT_DISCONNECTED'$"
            ):
                await server.wait_ended("CLIENT_DISCONNECTED")  # type: ignore[arg-type]


async def test_an_app_whose_lifespan_fails_at_startup_raises_the_serve_error_as_itself() -> None:
    # Not inside the task group's exception group: a test catches what serve raised.
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("database unreachable")
        yield

    app = Starlette(lifespan=lifespan)
    with anyio.fail_after(20), pytest.raises(ServeError) as caught:
        async with open_server(app):
            raise AssertionError("the block ran")
    assert "RuntimeError: database unreachable" in str(caught.value)


async def test_an_app_task_that_fails_is_raised_as_serve_raises_it() -> None:
    # serve() stops and raises the App's task group's error; it came out of open_server
    # inside a group of open_server's own, two groups deep.
    failed = RuntimeError("the refresher's upstream is gone")

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        async def refresh_forever() -> None:
            raise failed

        app.task_group.start_soon(refresh_forever)
        yield

    with anyio.fail_after(20), pytest.raises(ExceptionGroup) as caught:
        async with open_server(App(lifespan=lifespan)) as server:
            await server.stopped.wait()
    assert caught.value.exceptions == (failed,)


@pytest.mark.parametrize("app", ["not an app", None])
async def test_an_app_that_is_not_callable_is_refused_naming_it_on_entering(app: object) -> None:
    # It was served: hypercorn logged the TypeError and answered every request 500.
    with pytest.raises(TypeError, match=rf"^app must be callable, got .*{re.escape(repr(app))}$"):
        async with open_server(app):  # type: ignore[arg-type]
            raise AssertionError("the block ran")


async def test_an_app_whose_lifespan_never_starts_is_a_timeout_naming_it_leaving_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # hypercorn answers only once the lifespan started: open_server waited five seconds (one
    # here) for it, then grace_period and five more to stop a server it had never told to
    # stop, raised a TimeoutError without a message, and left the listening socket open.
    monkeypatch.setattr(live_server, "_STOP_MARGIN", SHORT_MARGIN)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await anyio.sleep_forever()
        yield

    # The leak check outside: it is skipped when its block raises.
    with anyio.fail_after(20):
        async with open_leak_check():
            # The deadline: past the wait for an answer, short of grace_period added to it.
            with pytest.raises(TimeoutError) as caught, anyio.fail_after(SHORT_MARGIN + 3):
                async with open_server(Starlette(lifespan=lifespan), grace_period=5.0):
                    raise AssertionError("the block ran")
    assert type(caught.value) is TimeoutError
    assert re.fullmatch(
        r"the server at http://127\.0\.0\.1:\d+ did not answer within 1\.0 s of listening: "
        r"hypercorn answers once the app's lifespan has started, which it had not; "
        r"the server was cancelled",
        str(caught.value),
    ), caught.value


async def serve_one_request(app: Starlette) -> None:
    async with open_server(app) as server, open_stream(server, "/") as client:
        assert client.status == 404


async def test_an_app_whose_lifespan_fails_at_shutdown_raises_the_serve_error_leaving_nothing() -> (
    None
):
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        raise RuntimeError("flush failed")

    with anyio.fail_after(20):
        async with open_leak_check():
            with pytest.raises(ServeError) as caught:
                await serve_one_request(Starlette(lifespan=lifespan))
    assert str(caught.value).startswith("the app's lifespan failed at shutdown:\n")
    assert "RuntimeError: flush failed" in str(caught.value)
