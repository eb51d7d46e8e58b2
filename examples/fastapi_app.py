"""FastAPI with streamkit's responses: a token stream over SSE, rows as NDJSON, and prices
yielded by an async generator path operation, with ping events a page can see.

Run it (FastAPI is not a streamkit dependency: ``pip install fastapi`` first), then
``curl -N 'http://127.0.0.1:8000/completions?prompt=hi'``, ``curl -N .../orders`` or
``curl -N .../prices``; ``/docs`` shows each stream's media type, and the price items' schema::

    python examples/fastapi_app.py

FastAPI sends a returned ``Response`` as it is, so an endpoint returns streamkit's responses
directly. The upstream behind ``/completions`` is entered through the stream's sender: when
the client leaves, it is closed at once, shielded, and counted in ``UPSTREAM``. ``/prices``
is FastAPI's generator style: ``StreamingRoute`` makes the generator the stream's content.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Query
from pydantic import BaseModel

from streamkit import EventSourceResponse, NDJSONResponse, ServerSentEvent, StreamSender, run
from streamkit.fastapi import StreamingRoute

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
app.router.route_class = StreamingRoute  # for /prices; the other routes are FastAPI's as usual


class Price(BaseModel):
    symbol: str
    cents: int


#: Price events, with a ping event every 2 s of quiet that a page's EventSource can listen to.
PriceEvents = EventSourceResponse.with_options(
    heartbeat_interval=2.0,
    heartbeat_event=lambda: ServerSentEvent(event="ping", data={"at": round(time.time(), 3)}),
    send_timeout=10.0,
)


@app.get("/completions")
async def completions(prompt: str = "why streams leak") -> EventSourceResponse:
    async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
        completion = await send.enter_async_context(open_completion(prompt))
        async for token in completion:
            await send(ServerSentEvent(event="token", data=token))
        await send(ServerSentEvent(event="done", data=""))

    return EventSourceResponse(produce, heartbeat_interval=5.0)


#: How many items a request may ask for: a count is checked before the stream starts, where
#: a client's mistake can still be a 422 (a negative one would be an empty 200, and one of a
#: hundred digits a stream without end).
Count = Annotated[int, Query(ge=0, le=10_000)]


@app.get("/orders")
async def orders(count: Count = 20) -> NDJSONResponse:
    async def rows() -> AsyncIterator[dict[str, Any]]:
        for number in range(1, count + 1):
            await anyio.sleep(0.05)
            yield {"id": number, "total_cents": 1000 + 7 * number}

    return NDJSONResponse(rows(), send_timeout=5.0)


@app.get("/prices", response_class=PriceEvents)
async def prices(symbol: str = "ACME", count: Count = 5) -> AsyncIterator[Price]:
    for n in range(count):
        yield Price(symbol=symbol, cents=1000 + n)  # sent as data: {"symbol":...,"cents":...}
        await anyio.sleep(0.5 if n < count - 1 else 3.0)  # the last pause shows a ping


if __name__ == "__main__":
    # It takes no options: --help says so, and any other is refused, not ignored.
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    run(app)  # on 127.0.0.1:8000 until Ctrl-C; logs every stream's end
