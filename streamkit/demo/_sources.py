"""The demo's bundled upstreams: a fake LLM, a slow price service and a SQLite database.

They stand in for the services a real application streams from, with no network: each one
counts what it was asked for, so the page can show that a client who leaves leaves nothing
running behind it.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

__all__ = ["FakeLLM", "LLMStatistics", "PriceService", "create_database"]

_ANSWER = (
    "A stream is only as good as its worst ending. When the reader leaves, the work done "
    "for them should stop at once: the upstream request is closed, the cursor released, "
    "the timers cancelled. streamkit runs every stream in a task group tied to its "
    "connection, so the disconnect path is exercised as often as the happy one, on asyncio "
    "and on trio alike."
)


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMStatistics:
    """What the fake LLM has been asked for so far.

    :param open_calls: completions being generated now.
    :param completed: completions generated to the end.
    :param aborted: completions closed before their end (the client left).
    :param tokens_generated: tokens generated in all, the figure an LLM provider bills.
    """

    open_calls: int
    completed: int
    aborted: int
    tokens_generated: int


class FakeLLM:
    """An upstream that generates a canned answer token by token, like an LLM's streaming API.

    :param token_delay: seconds between two tokens.
    :param close_delay: seconds that closing a completion early takes (an upstream connection
        being torn down); awaited, so it only completes when the caller's cleanup is shielded.
    """

    def __init__(self, *, token_delay: float = 0.06, close_delay: float = 0.01) -> None:
        self._token_delay = token_delay
        self._close_delay = close_delay
        self._open = 0
        self._completed = 0
        self._aborted = 0
        self._tokens = 0

    def statistics(self) -> LLMStatistics:
        """A snapshot of the counts."""
        return LLMStatistics(
            open_calls=self._open,
            completed=self._completed,
            aborted=self._aborted,
            tokens_generated=self._tokens,
        )

    @asynccontextmanager
    async def open_completion(self, prompt: str) -> AsyncIterator[AsyncIterator[str]]:
        """Start a completion of *prompt*; the block's iterator yields its tokens.

        Leaving the block before the last token aborts the completion, which is counted.
        """
        words = _ANSWER.split(" ")
        finished = False

        async def tokens() -> AsyncGenerator[str, None]:
            nonlocal finished
            for index, word in enumerate(words):
                await anyio.sleep(self._token_delay)
                self._tokens += 1
                yield word if index == 0 else " " + word
            finished = True

        self._open += 1
        generator = tokens()
        try:
            yield generator
        finally:
            self._open -= 1
            if finished:
                self._completed += 1
            else:
                self._aborted += 1
            # Counted first: if an await here is cancelled (a cleanup that is not shielded),
            # the counts are still right, and the cancellation goes on.
            await generator.aclose()
            if not finished:
                await anyio.sleep(self._close_delay)


class PriceService:
    """A price feed that answers quickly twice, then too slowly once, in turn.

    :param slow_every: every this-many-th call is slow.
    :param fast_delay: seconds a fast call takes.
    :param slow_delay: seconds a slow call takes.
    :param clock: the wall clock for the ``fetched_at`` field.
    """

    def __init__(
        self,
        *,
        slow_every: int = 3,
        fast_delay: float = 0.05,
        slow_delay: float = 2.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._slow_every = slow_every
        self._fast_delay = fast_delay
        self._slow_delay = slow_delay
        self._clock = clock or time.time
        self._random = random.Random(6)
        self._price = 100.0
        self.calls = 0

    async def fetch(self, symbol: str) -> dict[str, Any]:
        """The current price of *symbol*: a random walk, so each fresh value differs."""
        self.calls += 1
        slow = self.calls % self._slow_every == 0
        await anyio.sleep(self._slow_delay if slow else self._fast_delay)
        self._price = round(self._price * (1 + self._random.uniform(-0.01, 0.01)), 2)
        return {"symbol": symbol, "price": self._price, "fetched_at": self._clock()}


_PRODUCTS = ["kettle", "lamp", "notebook", "headphones", "mug", "backpack", "plant", "clock"]
_CUSTOMERS = ["ada", "grace", "alan", "edsger", "barbara", "ken", "margaret", "linus"]


def create_database(path: Path, *, rows: int = 1000) -> Path:
    """Write an ``orders`` table of *rows* made-up orders to a new SQLite file at *path*."""
    generator = random.Random(8)
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, product TEXT,"
                " quantity INTEGER, price_cents INTEGER, details TEXT)"
            )
            connection.executemany(
                "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        number,
                        generator.choice(_CUSTOMERS),
                        generator.choice(_PRODUCTS),
                        generator.randint(1, 5),
                        generator.randint(199, 9999),
                        json.dumps({"gift": generator.random() < 0.2}),
                    )
                    for number in range(1, rows + 1)
                ],
            )
    finally:
        connection.close()
    return path
