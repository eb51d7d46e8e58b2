"""What the broker tests share, in process and through a server: the broker types, and a
wait for a broker's counts to change (the ``make_broker`` and ``redis`` fixtures are in
conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from streamkit.broadcast import MemoryBroker, RedisBroker

AnyBroker = MemoryBroker | RedisBroker
#: Makes a broker of one kind with the given options (the ``make_broker`` fixture).
MakeBroker = Callable[..., AnyBroker]


async def until(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    """Wait until *condition* holds: a subscription starts a moment after the response head,
    and the Redis reader delivers a moment after the publish."""
    with anyio.fail_after(within):
        # Polled: the brokers signal no event for a change of their counts.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.002)
