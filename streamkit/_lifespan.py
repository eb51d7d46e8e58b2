"""One run of an :class:`~streamkit.App`'s lifespan: the registries its streams report to, the
task group for the App's own work, and the order of its shutdown.

The shutdown runs within the App's grace period, in this order: the App's streams drain (an
SSE stream sends its farewell, and each stream's cleanup completes), then the task group's
work is cancelled and awaited, then the user's lifespan exits, so that what it opened outlives
what uses it. An exit still running at the end of the grace period (and of half a second at
least) is cancelled, so that a resource that does not answer cannot hold the server's shutdown.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._registry import StreamRegistry

__all__ = ["LifespanScope"]

logger = logging.getLogger("streamkit")

#: Seconds the App's cancelled tasks get to clean up when the drain used all the grace period,
#: and the user's lifespan to exit when the tasks did.
_CLEANUP_FLOOR = 0.5


class LifespanScope:
    """What one run of an App's lifespan holds, and the run itself (:meth:`open`).

    :param streams: the registry of the App's streams in this run.
    :param grace_period: seconds the shutdown may take: the drain, then the cancelled tasks'
        cleanup.
    """

    def __init__(self, streams: StreamRegistry, *, grace_period: float) -> None:
        self.streams = streams
        #: Each stream route's registry, by its declared path: a child of :attr:`streams`.
        self.route_streams: dict[str, StreamRegistry] = {}
        self.grace_period = grace_period
        self._stop = anyio.Event()
        self._tasks_done = anyio.Event()
        self._task_group: TaskGroup | None = None
        self._failed = False  # a task failed, and the server was asked to stop
        self._deadline = math.inf  # when the shutdown must end, once it has begun

    def route_registry(self, path: str) -> StreamRegistry:
        """The registry of the stream route declared at *path*, made at its first stream."""
        registry = self.route_streams.get(path)
        if registry is None:
            registry = self.route_streams[path] = StreamRegistry(parent=self.streams)
        return registry

    @property
    def task_group(self) -> TaskGroup | None:
        """The task group for the App's work; ``None`` before it started, once the shutdown
        has cancelled it, and once a task's failure has ended it."""
        return None if self._stop.is_set() or self._failed else self._task_group

    @asynccontextmanager
    async def open(
        self, user_lifespan: Callable[[], AbstractAsyncContextManager[Mapping[str, Any] | None]]
    ) -> AsyncIterator[Mapping[str, Any] | None]:
        """Start the task group, then enter *user_lifespan()* inside it and yield what it
        yields; on exit, shut down in the order the module docstring gives."""
        try:
            async with anyio.create_task_group() as host:
                self._task_group = await host.start(self._host_tasks)
                # The user's lifespan exits, shielded, within what is left of the grace
                # period; a scope across its yield, given its deadline only once it exits.
                with anyio.CancelScope() as exiting:
                    try:
                        async with user_lifespan() as state:
                            try:
                                yield state
                            finally:
                                await self._shut_down()
                                exiting.shield = True
                                exiting.deadline = max(
                                    self._deadline, anyio.current_time() + _CLEANUP_FLOOR
                                )
                    finally:
                        self._stop.set()
                if exiting.cancelled_caught:
                    logger.warning(
                        "the lifespan given to the App did not exit within the App's grace "
                        "period of %.3f s, and was cancelled",
                        self.grace_period,
                    )
        except BaseExceptionGroup as group:
            # One error (the user's lifespan's, say) comes out as itself, not in the group
            # of this task group that only streamkit made: a caller catches what it raised.
            error = group.exceptions[0]
            if len(group.exceptions) > 1 or not isinstance(error, Exception):
                raise
            raise error from None

    async def _host_tasks(self, *, task_status: TaskStatus[TaskGroup]) -> None:
        # The tasks run in a group of their own, in a task of their own, so that shutdown can
        # cancel and await them while the user's lifespan (whose resources they use) is still
        # open.
        try:
            async with anyio.create_task_group() as tasks:
                task_status.started(tasks)
                await self._stop.wait()
                tasks.cancel_scope.cancel()
        except Exception as exc:
            # A task failed while the App serves. Ending the lifespan here would leave a
            # server serving on with the user's lifespan closed (hypercorn's asyncio worker)
            # or crash it, its streams cut (its trio worker). A streamkit server is asked to
            # stop instead: it drains, the lifespan shuts down in order, and it raises exc.
            if self._stop.is_set() or not self.streams.request_stop(exc):
                raise
            self._failed = True
            logger.error("a task in the App's task group failed: the server stops", exc_info=exc)
        finally:
            self._tasks_done.set()

    async def _shut_down(self) -> None:
        started = anyio.current_time()
        deadline = self._deadline = started + self.grace_period
        # Shielded: this also runs when the lifespan is being cancelled, and it must finish.
        with anyio.move_on_after(self.grace_period, shield=True) as drain:
            self.streams.drain()
            await self.streams.wait_idle()
        # The tasks are cancelled even when the drain overran: they use what the user's
        # lifespan opened, and it exits next. Their cleanup gets what is left of the grace
        # period, and at least a moment of its own.
        self._stop.set()
        remaining = max(deadline - anyio.current_time(), _CLEANUP_FLOOR)
        with anyio.move_on_after(remaining, shield=True) as tasks:
            await self._tasks_done.wait()
        if drain.cancelled_caught:
            self.streams.overran()
        if drain.cancelled_caught or tasks.cancelled_caught:
            logger.warning(
                "App shutdown exceeded its grace period of %.3f s: %d streams running, tasks %s",
                self.grace_period,
                self.streams.statistics().active,
                "finished" if self._tasks_done.is_set() else "still running",
            )
        else:
            logger.info("App shut down in %.3f s", anyio.current_time() - started)
