"""The pytest plugin works in a suite that uses anyio's plugin, pytest-trio, or both.

Each test runs a small suite through pytester. Streamkit's plugin is found through its
``pytest11`` entry point, as in a user's project; the other plugins are switched off with
``-p no:NAME``. The inner tests stream against real hypercorn, and include one that must
fail, so that a plugin that silently did nothing could not pass.
"""

from __future__ import annotations

import re

import pytest

pytest_plugins = ("pytester",)

APP = """
import socket

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from streamkit import EndReason, NDJSONResponse
from streamkit.testing import open_leak_check, open_server, open_stream


def make_app():
    async def endless(request):
        async def produce(send):
            number = 0
            while True:
                await send({"n": number})
                number += 1
                await anyio.sleep(0.005)

        return NDJSONResponse(produce)

    return Starlette(routes=[Route("/endless", endless)])


async def reset_and_check(server):
    async with open_stream(server, "/endless") as client:
        assert await client.read_item() == {"n": 0}
        await client.reset()
    await server.wait_ended(EndReason.CLIENT_DISCONNECTED)


@pytest.fixture
async def server():
    # An async fixture of the user's own: anyio's plugin runs it for anyio tests,
    # pytest-trio for trio tests.
    async with open_server(make_app()) as server:
        yield server


LEAKED = []
"""

#: Closes the sockets a test leaked on purpose once the whole teardown, streamkit's leak
#: check included, is done: the leak is found, then closed.
CONFTEST = """
import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    try:
        return (yield)
    finally:
        while item.module.LEAKED:
            item.module.LEAKED.pop().close()
"""

#: The inner tests, marked for and named after the plugin that runs them (``PLUGIN``).
INNER_TESTS = """
@pytest.mark.PLUGIN
async def test_PLUGIN_fixtures(open_live_server, no_leaks):
    async with open_leak_check(), open_live_server(make_app()) as server:
        await reset_and_check(server)


@pytest.mark.PLUGIN
async def test_PLUGIN_async_fixture(server):
    await reset_and_check(server)


@pytest.mark.PLUGIN
async def test_PLUGIN_leak(no_leaks):
    LEAKED.append(socket.socket())


@pytest.mark.PLUGIN
async def test_PLUGIN_async_fixture_then_no_leaks(server, no_leaks):
    # The order the docs show: the server's own sockets are not counted as the test's
    # leaks while its fixture has yet to close them.
    await reset_and_check(server)


@pytest.mark.PLUGIN
async def test_PLUGIN_leak_beside_a_server(server, no_leaks):
    await reset_and_check(server)
    LEAKED.append(socket.socket())


@pytest.mark.PLUGIN
async def test_PLUGIN_failure_report(open_live_server):
    async with open_live_server(make_app()) as server:
        await reset_and_check(server)
    assert False, "failing on purpose"
"""

ANYIO_TESTS = """
@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param

""" + INNER_TESTS.replace("PLUGIN", "anyio")

TRIO_TESTS = INNER_TESTS.replace("PLUGIN", "trio")


def run_suite(pytester: pytest.Pytester, tests: str, *disabled: str) -> pytest.RunResult:
    pytester.makepyfile(test_streams=APP + tests)
    pytester.makeconftest(CONFTEST)
    # Leaks are found at the end of this grace period; the default second would add up.
    pytester.makeini("[pytest]\nstreamkit_leak_check_within = 0.2\n")
    arguments = [f"-pno:{name}" for name in disabled]
    result = pytester.runpytest_inprocess(*arguments, "-p", "no:cacheprovider", "-rA")
    plugins = pytester.parseconfig(*arguments).pluginmanager.list_name_plugin()
    loaded = {name for name, plugin in plugins if plugin is not None}  # blocked ones are None
    assert "streamkit" in loaded
    assert loaded.isdisjoint(disabled)
    assert {"anyio", "trio"} - set(disabled) <= loaded
    return result


def assert_outcomes_and_failures(result: pytest.RunResult, *, prefix: str, runs: int) -> None:
    # Per backend run: five passes, of which two leaked and error at teardown, and one
    # deliberate failure.
    result.assert_outcomes(passed=5 * runs, failed=runs, errors=2 * runs)
    output = result.stdout.str()
    assert "LeakError: leaked 1 file descriptor:" in output
    assert "  file descriptor " in output
    assert ": socket:[" in output
    assert f"ERROR test_streams.py::test_{prefix}_leak" in output
    assert f"ERROR test_streams.py::test_{prefix}_leak_beside_a_server" in output
    assert "streamkit server 1" in output
    assert "/endless: CLIENT_DISCONNECTED after" in output


def test_under_anyio_plugin_alone(pytester: pytest.Pytester) -> None:
    result = run_suite(pytester, ANYIO_TESTS, "trio")
    assert_outcomes_and_failures(result, prefix="anyio", runs=2)
    result.stdout.fnmatch_lines(["PASSED test_streams.py::test_anyio_fixtures?trio?"])


def test_under_pytest_trio_alone(pytester: pytest.Pytester) -> None:
    result = run_suite(pytester, TRIO_TESTS, "anyio")
    assert_outcomes_and_failures(result, prefix="trio", runs=1)


def test_under_both_plugins(pytester: pytest.Pytester) -> None:
    result = run_suite(pytester, ANYIO_TESTS + TRIO_TESTS)
    result.assert_outcomes(passed=15, failed=3, errors=6)
    result.stdout.fnmatch_lines_random(
        [
            "PASSED test_streams.py::test_anyio_async_fixture?asyncio?",
            "PASSED test_streams.py::test_anyio_async_fixture?trio?",
            "PASSED test_streams.py::test_trio_async_fixture",
        ]
    )


#: A server a fixture of the user's opens, held past the test's body, as a suite would have it.
FIXTURE_SERVER_FAILURE = """
@pytest.fixture
async def live(open_live_server):
    async with open_live_server(make_app()) as server:
        yield server


@pytest.mark.PLUGIN
async def test_PLUGIN_failure_report_of_a_fixture_server(live):
    await reset_and_check(live)
    assert False, "failing on purpose"
"""


def under_each_plugin(tests: str) -> pytest.MarkDecorator:
    """Parametrise a test with *tests* (their marks written ``PLUGIN``) as each plugin runs
    them: ``(tests, the plugin disabled, runs per test)``, anyio's running each on both
    backends."""
    return pytest.mark.parametrize(
        ("tests", "disabled", "runs"),
        [
            (
                ANYIO_TESTS.split("@pytest.mark.anyio")[0] + tests.replace("PLUGIN", "anyio"),
                "trio",
                2,
            ),
            (tests.replace("PLUGIN", "trio"), "anyio", 1),
        ],
        ids=["anyio", "pytest-trio"],
    )


@under_each_plugin(FIXTURE_SERVER_FAILURE)
def test_a_failure_report_lists_the_ends_on_a_server_a_fixture_holds(
    pytester: pytest.Pytester, tests: str, disabled: str, runs: int
) -> None:
    # The section was added as the server's block ended: a fixture's ends after the call's
    # report was made, so the report of the failure never had it.
    result = run_suite(pytester, tests, disabled)
    result.assert_outcomes(failed=runs)
    output = result.stdout.str()
    assert output.count("Captured streamkit server 1 (http://127.0.0.1:") == runs, output
    assert output.count("/endless: CLIENT_DISCONNECTED after") == runs, output


#: A test that fails holding what it would have closed: its traceback keeps it open.
FAILURE_HOLDING_A_SOCKET = """
@pytest.mark.PLUGIN
async def test_PLUGIN_fails_holding_a_socket(no_leaks):
    LEAKED.append(socket.socket())
    assert False, "failing on purpose"


@pytest.mark.xfail  # not raises=: pytest-trio hands pytest the test's error in a group
@pytest.mark.PLUGIN
async def test_PLUGIN_fails_as_expected_holding_a_socket(no_leaks):
    LEAKED.append(socket.socket())
    assert False, "failing on purpose"
"""


@under_each_plugin(FAILURE_HOLDING_A_SOCKET)
def test_no_leaks_is_not_checked_after_a_failure(
    pytester: pytest.Pytester, tests: str, disabled: str, runs: int
) -> None:
    # A failing test got a leak error besides, for what its own failure held open.
    result = run_suite(pytester, tests, disabled)
    result.assert_outcomes(failed=runs, xfailed=runs)
    assert "LeakError" not in result.stdout.str()


#: A server shared by a module's tests, under anyio's plugin: it outlives each test, and the
#: event loop it serves on is stopped while no_leaks checks.
MODULE_SERVER_TESTS = """
@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.fixture(scope="module")
async def module_server(anyio_backend):
    # Asking for anyio_backend, as a fixture of a wider scope may: on trio, the server then
    # closes its end of a connection the test left only after no_leaks checked.
    async with open_server(make_app()) as server:
        yield server


@pytest.mark.anyio
async def test_left_mid_stream(module_server, no_leaks):
    async with open_stream(module_server, "/endless") as client:
        assert await client.read_item() == {"n": 0}


@pytest.mark.anyio
async def test_left_a_response_unread(module_server, no_leaks):
    # Closed with the body unread, the connection is reset (RST), not closed.
    async with open_stream(module_server, "/missing") as client:
        assert client.status == 404


@pytest.mark.anyio
async def test_left_a_connection_of_its_own(module_server, no_leaks):
    LEAKED.append(socket.create_connection((module_server.host, module_server.port)))
"""


def test_no_leaks_does_not_count_what_a_server_of_a_wider_scope_holds(
    pytester: pytest.Pytester,
) -> None:
    # The server's end of a connection the test had left was counted as the test's leak:
    # the server closes it once its event loop runs again, after the check.
    result = run_suite(pytester, MODULE_SERVER_TESTS, "trio")
    result.assert_outcomes(passed=6, errors=2)
    output = result.stdout.str()
    assert "ERROR test_streams.py::test_left_mid_stream" not in output
    # Nor the server's end of a connection that was reset, which has left the kernel's table
    # of TCP connections: on trio it was counted.
    assert "ERROR test_streams.py::test_left_a_response_unread" not in output
    assert output.count("ERROR test_streams.py::test_left_a_connection_of_its_own") == 2
    # What the test left is found: its own end of a connection to the server.
    assert re.search(r"socket:\[\d+\] \(TCP 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+", output)


#: A server shared by a module's tests, the first of which leaves a stream that ends with an
#: error and does not wait for its end.
SHARED_SERVER_WAITS = """
from streamkit import EventSourceResponse, ServerSentEvent


async def feed(request):
    async def produce(send):
        await send(ServerSentEvent(data="0"))
        if request.query_params.get("fail"):
            raise RuntimeError("upstream broke")
        await anyio.sleep_forever()

    return EventSourceResponse(produce)


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.fixture(scope="module")
async def module_server(anyio_backend):
    async with open_server(Starlette(routes=[Route("/feed", feed)])) as server:
        yield server


@pytest.mark.anyio
async def test_a_failing_stream_shows_its_first_event(module_server):
    async with open_stream(module_server, "/feed?fail=1") as client:
        assert (await client.read_event()).data == "0"
    with anyio.fail_after(5):
        while not module_server.streams.statistics().ended[EndReason.ERROR]:
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_leaving_ends_the_stream(module_server):
    async with open_stream(module_server, "/feed") as client:
        await client.read_event()
        await client.reset()
    await module_server.wait_ended(EndReason.CLIENT_DISCONNECTED)
"""


def test_a_wait_for_an_end_on_a_shared_server_sees_no_end_from_an_earlier_test(
    pytester: pytest.Pytester,
) -> None:
    # The second test's wait_ended got the first test's end, which it had not waited for:
    # "stream /feed ended with ERROR, expected CLIENT_DISCONNECTED", a failure that came
    # and went with the order the tests ran in.
    result = run_suite(pytester, SHARED_SERVER_WAITS, "trio")
    result.assert_outcomes(passed=4)


@pytest.mark.parametrize("setting", ["nan", "-1", "0", "inf", "soon"])
def test_a_bad_grace_period_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, setting: str
) -> None:
    # A NaN grace period made a leak's check poll for ever. Refused when the run starts, as
    # pytest refuses its own bad options: it was refused only at the setup of each test that
    # asked for no_leaks, an error per test, the others run.
    pytester.makepyfile(
        test_leaking="""
import socket

opened = []


def test_leak(no_leaks):
    opened.append(socket.socket())
"""
    )
    pytester.makeini(f"[pytest]\nstreamkit_leak_check_within = {setting}\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    refusal = "streamkit_leak_check_within must be a positive, finite number of seconds"
    result.stderr.fnmatch_lines([f"ERROR: {refusal}, got '{setting}'"])
    assert "test_leak" not in result.stdout.str()  # no test ran
