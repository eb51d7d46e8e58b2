"""What the Fallback tests share, in process and over HTTP: a data source whose speed the
test sets, and what the cache holds."""

from __future__ import annotations

from typing import Any

import anyio

from streamkit.fallback import Fallback


class Source:
    """A slow data source: the test sets its speed, and it records each call and how it
    ended. A value says which call made it (see :meth:`value`)."""

    def __init__(self) -> None:
        self.calls = 0
        #: How long a call takes, unless *gate* is set.
        self.delay = 0.0
        #: A call waits for this event instead, if it is set.
        self.gate: anyio.Event | None = None
        #: A call that completes raises this instead of returning, if it is set.
        self.error: Exception | None = None
        self.finished = 0
        #: When each call that did not complete (it was cancelled) ended.
        self.cancelled_at: list[float] = []
        self.started = anyio.Event()

    @property
    def cancelled(self) -> int:
        """How many calls were cancelled."""
        return len(self.cancelled_at)

    def value(self, key: str, call: int) -> dict[str, Any]:
        """The value the *call*-th call returns for *key*."""
        return {"key": key, "call": call}

    async def __call__(self, key: str) -> dict[str, Any]:
        self.calls += 1
        call = self.calls
        self.started.set()
        completed = False
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await anyio.sleep(self.delay)
            completed = True
        finally:
            if completed:
                self.finished += 1
            else:
                self.cancelled_at.append(anyio.current_time())
        if self.error is not None:
            raise self.error
        return self.value(key, call)


async def cached_value(fallback: Fallback[Any], key: str) -> Any:
    """The value *fallback*'s store holds for *key*; there must be one."""
    entry = await fallback.store.get(key)
    assert entry is not None
    return entry.value
