"""FastAPI with streamkit's responses: a token stream over SSE, and rows as NDJSON.

Run it (FastAPI is not a streamkit dependency: ``pip install fastapi`` first), then
``curl -N 'http://127.0.0.1:8000/completions?prompt=hi'`` or ``curl -N .../orders``::

    python examples/fastapi_app.py

FastAPI sends a returned ``Response`` as it is, so an endpoint returns streamkit's responses
directly. The upstream behind ``/completions`` is entered through the stream's sender: when
the client leaves, it is closed at once, shielded, and counted in ``UPSTREAM``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI

from streamkit import EventSourceResponse, NDJSONResponse, ServerSentEvent, StreamSender, run

#: What the fake upstream was asked for: calls still open, and calls closed early.
UPSTREAM = {"open": 0, "aborted": 0}


@asynccontextmanager
async def open_completion(prompt: str) -> AsyncIterator[AsyncIterator[str]]:
    """A stand-in for an LLM client's streamed completion."""

    finished = False

    async def tokens() -> AsyncGenerator[str, None]:
        nonlocal finished
        for word in f"You asked: {prompt}. Here is a slow answer, one word at a time.".split():
            await anyio.sleep(0.1)
            yield word + " "
        finished = True

    UPSTREAM["open"] += 1
    try:
        async with aclosing(tokens()) as completion:
            yield completion
    finally:
        UPSTREAM["open"] -= 1
        if not finished:
            UPSTREAM["aborted"] += 1


app = FastAPI(title="streamkit with FastAPI")


@app.get("/completions")
async def completions(prompt: str = "why streams leak") -> EventSourceResponse:
    async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
        completion = await send.enter_async_context(open_completion(prompt))
        async for token in completion:
            await send(ServerSentEvent(event="token", data=token))
        await send(ServerSentEvent(event="done", data=""))

    return EventSourceResponse(produce, heartbeat_interval=5.0)


@app.get("/orders")
async def orders(count: int = 20) -> NDJSONResponse:
    async def rows() -> AsyncIterator[dict[str, Any]]:
        for number in range(1, count + 1):
            await anyio.sleep(0.05)
            yield {"id": number, "total_cents": 1000 + 7 * number}

    return NDJSONResponse(rows(), send_timeout=5.0)


if __name__ == "__main__":
    run(app)  # on 127.0.0.1:8000 until Ctrl-C; logs every stream's end
