"""The pytest plugin (registered through the ``pytest11`` entry point): fixtures that work the
same under anyio's pytest plugin, pytest-trio, or both.

Both fixtures are synchronous on purpose. anyio's plugin runs an async fixture only for tests
that use ``anyio_backend``; pytest-trio only for trio tests (every async test, in its
``trio_mode``), each in a task of its own. A synchronous fixture is set up by pytest
itself before either plugin starts the event loop, and torn down after it stopped, so it
behaves the same for every test. What needs the event loop is returned as an async context
manager factory, entered in the test body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from starlette.types import ASGIApp

from .._checks import check_duration
from ._leaks import ResourceSnapshot, wait_released
from ._server import LiveServer, forget_earlier_ends, open_server, serving_addresses

__all__ = ["no_leaks", "open_live_server"]

ServerOpener = Callable[..., AbstractAsyncContextManager[LiveServer]]

_RELEASE_WITHIN = "streamkit_leak_check_within"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the plugin's ini option."""
    parser.addini(
        _RELEASE_WITHIN,
        "seconds the no_leaks fixture allows for file descriptors and child processes to be "
        "released after the test (default 1.0)",
        default="1.0",
    )


#: The grace period of no_leaks, read from the ini option when the run starts.
_WITHIN = pytest.StashKey[float]()


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a bad ``streamkit_leak_check_within`` when the run starts, as pytest refuses its
    own bad options, rather than at the setup of each test that asks for :func:`no_leaks`."""
    setting = config.getini(_RELEASE_WITHIN)
    try:
        within = float(setting)
        check_duration(_RELEASE_WITHIN, within)
    except ValueError:
        raise pytest.UsageError(
            f"{_RELEASE_WITHIN} must be a positive, finite number of seconds, got {setting!r}"
        ) from None
    config.stash[_WITHIN] = within


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A server that outlives a test (a module's fixture) hands the next test's
    :meth:`~streamkit.testing.LiveServer.wait_end` only the ends that happen during it: an
    end an earlier test did not wait for would fail it, or not, by the order tests ran in."""
    forget_earlier_ends()


#: The servers open_live_server opened for a test, in order, for the report of its call.
_SERVERS = pytest.StashKey[list[LiveServer]]()


@pytest.fixture
def open_live_server(request: pytest.FixtureRequest) -> ServerOpener:
    """:func:`~streamkit.testing.open_server`, as a fixture that works under either plugin::

        async def test_feed(open_live_server):
            async with open_live_server(app) as server, open_stream(server, "/feed") as client:
                ...

    It takes the same arguments. When the test fails, its report gets a ``streamkit`` section
    listing how each stream on these servers ended.
    """
    servers = request.node.stash.setdefault(_SERVERS, [])

    @asynccontextmanager
    async def opener(app: ASGIApp, **options: Any) -> AsyncIterator[LiveServer]:
        async with open_server(app, **options) as server:
            servers.append(server)
            yield server

    return opener


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """The ``streamkit`` sections of :func:`open_live_server`, added as the call's report is
    made: a server a fixture holds is still serving then, and ends after it. A setup or call
    that raised calls off the check of :func:`no_leaks`."""
    if call.when == "call":
        servers: list[LiveServer] = item.stash.get(_SERVERS, [])
        for number, server in enumerate(servers, start=1):
            item.add_report_section(
                "call", f"streamkit server {number} ({server.url})", _ends_report(server)
            )
    if call.excinfo is not None and call.when != "teardown" and _LEAK_CHECK in item.stash:
        # The failure (expected or not) says more, and its traceback holds the test's frames,
        # with what they opened, open: the check would find them.
        del item.stash[_LEAK_CHECK]
    return (yield)


def _ends_report(server: LiveServer) -> str:
    lines = [
        f"{end.path}: {end.reason.name} after {end.duration:.3f} s, {end.items_sent} items, "
        f"cleanup {end.cleanup_duration * 1000:.3f} ms"
        + (f", {end.exception!r}" if end.exception is not None else "")
        for end in server.streams.recent_ends()
    ]
    lines += [
        f"{active.path}: still running after {active.age:.3f} s"
        for active in server.streams.active_streams()
    ]
    return "\n".join(lines) or "no stream"


#: What no_leaks found at its setup, and the grace period, for the check after the teardown.
_LEAK_CHECK = pytest.StashKey[tuple[ResourceSnapshot, float]]()


@pytest.fixture
def no_leaks(request: pytest.FixtureRequest) -> None:
    """Fail the test if it leaves file descriptors or child processes behind; not checked when
    the test raised (failed, or failed as expected), whose failure says more.

    Checked once the test's whole teardown is done (every fixture's, whatever the order they
    were asked for in, so a server fixture's sockets are closed by then), allowing a second
    (the ini option ``streamkit_leak_check_within``) for them to go; the failure names each
    one. Tasks can be checked only inside the event loop: for those, wrap the test's body in
    :func:`~streamkit.testing.open_leak_check`.

    :raises LeakError: at teardown, naming what leaked.
    """
    within = request.config.stash[_WITHIN]
    request.node.stash[_LEAK_CHECK] = (ResourceSnapshot.take(tasks=False), within)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """The check of :func:`no_leaks`, after every fixture of the test was torn down: one torn
    down after it (an async server fixture asked for before it, under anyio's plugin) would
    otherwise still hold its sockets, and the event loop that closes them is not running."""
    __tracebackhide__ = True  # pytest: show the leak, not this frame
    result = yield
    found = item.stash.get(_LEAK_CHECK, None)
    if found is not None:
        del item.stash[_LEAK_CHECK]
        before, within = found
        wait_released(before, within=within, serving=serving_addresses)
    return result
