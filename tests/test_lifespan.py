"""One run of an App's lifespan, without an App: the order of its shutdown (streams drain,
then the tasks are cancelled, then the user's lifespan exits), within its grace period, also
when the lifespan itself is cancelled. Streams run on a
:class:`~streamkit.testing.FakeConnection`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
import anyio.lowlevel
import pytest
from support.bodies import Body

from streamkit import EndReason, StreamOptions, StreamSender
from streamkit._lifespan import LifespanScope
from streamkit._registry import StreamRegistry, using_registry
from streamkit._runtime import deliver
from streamkit.testing import FakeConnection

pytestmark = pytest.mark.anyio


class Run:
    """A lifespan run whose stream, task and user lifespan log what they do."""

    def __init__(self, *, grace_period: float = 5.0, cleanup: anyio.Event | None = None) -> None:
        self.scope = LifespanScope(StreamRegistry(), grace_period=grace_period)
        self.log: list[str] = []
        self.stream_sent = anyio.Event()
        self.task_started = anyio.Event()
        self._cleanup = cleanup
        self.body = Body(self.produce, StreamOptions(heartbeat_interval=None, cleanup_timeout=5.0))
        self.connection = FakeConnection("/prices")

    async def produce(self, send: StreamSender[str]) -> None:
        send.push_async_callback(self.close_stream)
        await send("x")
        self.stream_sent.set()
        await anyio.sleep_forever()

    async def close_stream(self) -> None:
        if self._cleanup is not None:
            await self._cleanup.wait()
        await anyio.lowlevel.checkpoint()
        self.log.append("stream cleaned up")

    async def task(self) -> None:
        self.task_started.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.log.append("task cancelled")

    @asynccontextmanager
    async def user_lifespan(self) -> AsyncIterator[dict[str, str]]:
        self.log.append("user lifespan entered")
        try:
            yield {"client": "open"}
        finally:
            self.log.append("user lifespan exits")

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start the stream and the App's task; return once both run."""
        assert self.scope.task_group is not None
        self.scope.task_group.start_soon(self.task)
        with using_registry(self.scope.route_registry("/prices")):
            task_group.start_soon(self.connection.run, partial(deliver, self.body))
        with anyio.fail_after(5):
            await self.stream_sent.wait()
            await self.task_started.wait()


async def test_shutdown_drains_streams_then_cancels_tasks_then_exits_the_users_lifespan() -> None:
    run = Run()
    assert run.scope.task_group is None, "no task group before the run"
    async with anyio.create_task_group() as task_group:
        async with run.scope.open(run.user_lifespan) as state:
            assert state == {"client": "open"}
            await run.start(task_group)
            assert run.scope.streams.statistics().active == 1
            stopping_at = anyio.current_time()
        stopped_at = anyio.current_time()
    assert run.log == [
        "user lifespan entered",
        "stream cleaned up",
        "task cancelled",
        "user lifespan exits",
    ]
    assert run.connection.body == b"x|<shutdown>"
    assert run.body.end.reason is EndReason.SHUTDOWN
    assert stopped_at - stopping_at < 2.0  # measured: about 1 ms
    assert run.scope.task_group is None, "no task group once the shutdown began"


async def test_a_stream_whose_cleanup_outlasts_the_grace_period_does_not_hold_the_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = anyio.Event()
    run = Run(grace_period=0.1, cleanup=release)
    async with anyio.create_task_group() as task_group:
        with caplog.at_level(logging.WARNING, logger="streamkit"):
            async with run.scope.open(run.user_lifespan):
                await run.start(task_group)
                stopping_at = anyio.current_time()
        waited = anyio.current_time() - stopping_at
        assert "user lifespan exits" in run.log
        assert run.scope.streams.statistics().active == 1, "its cleanup still runs"
        release.set()
    assert 0.1 <= waited < 2.0
    assert "exceeded its grace period of 0.100 s: 1 streams running, tasks finished" in (
        caplog.text
    )
    assert run.log[-1] == "stream cleaned up"
    assert run.body.end.reason is EndReason.SHUTDOWN


async def test_the_apps_tasks_are_cancelled_before_the_users_lifespan_exits_after_an_overrun() -> (
    None
):
    release = anyio.Event()
    run = Run(grace_period=0.1, cleanup=release)
    async with anyio.create_task_group() as task_group:
        try:
            async with run.scope.open(run.user_lifespan):
                await run.start(task_group)
        finally:
            release.set()
    assert run.log.index("task cancelled") < run.log.index("user lifespan exits")


async def test_a_cancelled_lifespan_still_drains_its_streams_before_the_users_lifespan_exits() -> (
    None
):
    run = Run()
    async with anyio.create_task_group() as task_group:
        with anyio.CancelScope() as outer:
            async with run.scope.open(run.user_lifespan):
                await run.start(task_group)
                outer.cancel()
                await anyio.sleep_forever()
    assert outer.cancelled_caught
    # The cancellation reaches the App's task group at once, so its tasks may go first.
    assert sorted(run.log[1:3]) == ["stream cleaned up", "task cancelled"]
    assert run.log[-1] == "user lifespan exits"
    assert run.body.end.reason is EndReason.SHUTDOWN
    assert run.connection.body == b"x|<shutdown>"


def test_each_route_has_one_registry_whose_streams_the_app_sees() -> None:
    scope = LifespanScope(StreamRegistry(), grace_period=1.0)
    prices = scope.route_registry("/prices")
    assert scope.route_registry("/prices") is prices
    assert scope.route_registry("/news") is not prices
    assert set(scope.route_streams) == {"/prices", "/news"}
    scope.streams.drain()
    assert prices.draining, "draining the App's registry drains its routes'"


@pytest.mark.parametrize("at", ["startup", "shutdown"])
async def test_the_user_lifespans_error_comes_out_as_itself(at: str) -> None:
    # Not inside the exception group of the lifespan's own task group: a caller (a test's
    # lifespan manager, a server's report) sees the error the user's lifespan raised.
    @asynccontextmanager
    async def failing() -> AsyncIterator[None]:
        if at == "startup":
            raise RuntimeError("database unreachable")
        yield
        raise RuntimeError("the pool closed twice")

    scope = LifespanScope(StreamRegistry(), grace_period=1.0)
    with anyio.fail_after(5), pytest.raises(RuntimeError) as caught:
        async with scope.open(failing):
            pass
    assert type(caught.value) is RuntimeError


async def test_a_users_lifespan_whose_exit_hangs_is_cancelled_at_the_end_of_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its exit was not bounded: a pool that did not answer held serve for as long as it hung.
    log: list[str] = []

    @asynccontextmanager
    async def hanging() -> AsyncIterator[None]:
        yield
        try:
            await anyio.sleep_forever()  # closing a pool that does not answer
        finally:
            log.append("user lifespan cancelled")

    scope = LifespanScope(StreamRegistry(), grace_period=0.2)
    with caplog.at_level(logging.WARNING, logger="streamkit"):
        with anyio.fail_after(5):
            async with scope.open(hanging):
                stopping_at = anyio.current_time()
        waited = anyio.current_time() - stopping_at
    assert log == ["user lifespan cancelled"]
    assert 0.2 <= waited < 4.0
    assert (
        "the lifespan given to the App did not exit within the App's grace period of 0.200 s"
        in (caplog.text)
    )
