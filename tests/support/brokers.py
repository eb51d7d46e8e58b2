"""What the broker tests share, in process and through a server: the broker types, a wait
for a broker's counts to change, and the next events of a subscription (the ``make_broker``
and ``redis`` fixtures are in conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio

from streamkit.broadcast import RESET_EVENT, MemoryBroker, RedisBroker, Subscription

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


async def take(subscription: Subscription, count: int, *, within: float = 5.0) -> list[Any]:
    """The next *count* events, as their data, or ``("reset", reason, id)`` for a reset."""
    taken: list[Any] = []
    with anyio.fail_after(within):
        while len(taken) < count:
            event = await anext(subscription)
            if event.event == RESET_EVENT:
                assert event.data is not None
                taken.append((RESET_EVENT, json.loads(event.data)["reason"], event.id))
            else:
                taken.append(event.data)
    return taken
