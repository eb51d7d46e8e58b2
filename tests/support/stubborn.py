"""A producer that refuses cancellation the careless way: a task of a task group of its own
swallows every cancellation until it is told to stop."""

from __future__ import annotations

from typing import Any

import anyio

from streamkit import StreamSender
from streamkit._sender import Producer


def fan_out_refusing(release: anyio.Event) -> Producer[Any]:
    """A producer that sends ``first``, then waits in its task group's exit for a child that
    swallows every cancellation until *release* is set."""

    async def stubborn_child() -> None:
        while not release.is_set():
            try:
                await anyio.sleep(0.01)
            except anyio.get_cancelled_exc_class():
                pass

    async def fan_out(send: StreamSender[Any]) -> None:
        await send("first")
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(stubborn_child)

    return fan_out
