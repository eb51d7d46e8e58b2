"""The demo application: one page, and the streams it reads.

It is a :class:`streamkit.App`, written the way an application would be: stream routes
declared with their options, plain routes beside them, and a lifespan that makes the SQLite
database. The page at ``/`` reads the streams with the browser's own ``EventSource`` and
``fetch()``.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import sniffio
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from .. import App, NDJSONResponse, ServerSentEvent, StreamRegistry, StreamSender
from ..fallback import Fallback, respond_with_fallback
from ..resources import SQLiteRows
from ._sources import FakeLLM, PriceService, create_database

__all__ = ["DemoState", "create_app"]

_STATIC = Path(__file__).parent / "static"
#: The resumes the demo keeps: every client may send a ``Last-Event-ID``.
RESUMES_KEPT = 100
#: The most digits of a ``Last-Event-ID`` the clock resumes from: more is no tick of the
#: demo's, and the ids after 1,024 nines would be longer than an event id may be.
MAX_TICK_DIGITS = 18


@dataclass(slots=True, kw_only=True)
class DemoState:
    """What the demo's endpoints share, kept on ``app.state.demo`` (tests look at it too).

    :param llm: the fake LLM upstream behind ``/tokens``.
    :param prices: the slow price service behind ``/quote``.
    :param resumed_from: the ``Last-Event-ID`` a reconnecting clock sent, in order: the
        latest :data:`RESUMES_KEPT`.
    :param database: the SQLite file behind ``/rows``, while the app runs.
    """

    llm: FakeLLM
    prices: PriceService
    resumed_from: deque[str] = field(default_factory=lambda: deque(maxlen=RESUMES_KEPT))
    database: Path | None = None


def _snapshot(state: DemoState, streams: StreamRegistry, backend: str) -> dict[str, Any]:
    statistics = streams.statistics()
    return {
        "backend": backend,
        "draining": statistics.draining,
        "active": [dataclasses.asdict(stream) for stream in streams.active_streams()],
        "ended": {reason.value: count for reason, count in statistics.ended.items()},
        "recent": [
            {
                "reason": end.reason.value,
                "path": end.path,
                "duration": end.duration,
                "items_sent": end.items_sent,
                "bytes_sent": end.bytes_sent,
                "cleanup_duration": end.cleanup_duration,
            }
            for end in reversed(streams.recent_ends()[-12:])
        ],
        "upstream": dataclasses.asdict(state.llm.statistics()),
    }


def _is_count(text: str) -> bool:
    """Whether *text* is a whole number in ASCII digits; ``str.isdigit()`` alone also takes
    ``'²'``, which ``int()`` refuses, and other scripts' digits, which no client of the demo
    sends."""
    return text.isascii() and text.isdigit()


def create_app(
    *,
    clock_interval: float = 1.0,
    heartbeat_interval: float = 0.4,
    clock_max_duration: float | None = 30.0,
    reconnect_after: float = 0.5,
    token_delay: float = 0.06,
    row_delay: float = 0.05,
    fallback_after: float = 0.3,
) -> App:
    """The demo as an ASGI application.

    :param clock_interval: seconds between two clock ticks; heartbeats fill the gaps.
    :param heartbeat_interval: seconds of silence after which the clock sends a heartbeat.
    :param clock_max_duration: seconds after which a clock stream ends with a ``retry:`` hint,
        so the browser reconnects with ``Last-Event-ID``; ``None`` never ends it.
    :param reconnect_after: the ``retry:`` hint, in seconds.
    :param token_delay: seconds between two tokens of the fake LLM.
    :param row_delay: seconds between two batches of database rows, so that they visibly stream.
    :param fallback_after: seconds ``/quote`` waits for a fresh price before serving the
        cached one.
    """
    state = DemoState(llm=FakeLLM(token_delay=token_delay), prices=PriceService())
    prices = Fallback(state.prices.fetch, fallback_after=fallback_after, max_staleness=600.0)
    # The deadline's farewell carries no id: the browser resumes from the last tick's.
    deadline_event = ServerSentEvent(event="deadline", data="", retry=round(reconnect_after * 1000))

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        with tempfile.TemporaryDirectory(prefix="streamkit-demo-") as directory:
            state.database = await anyio.to_thread.run_sync(
                create_database, Path(directory) / "orders.sqlite3"
            )
            try:
                yield
            finally:
                state.database = None

    app = App(
        heartbeat_interval=15.0,
        send_timeout=10.0,
        grace_period=5.0,
        streams_path="/streams.json",
        routes=[Mount("/static", StaticFiles(directory=_STATIC), name="static")],
        lifespan=lifespan,
    )
    app.state.demo = state

    @app.get("/")
    async def index(request: Request) -> Response:
        return FileResponse(_STATIC / "index.html", headers={"cache-control": "no-store"})

    @app.sse(
        "/clock",
        heartbeat_interval=heartbeat_interval,
        max_duration=clock_max_duration,
        deadline_event=deadline_event,
    )
    async def clock(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
        resumed = send.last_event_id
        is_tick = resumed is not None and _is_count(resumed) and len(resumed) <= MAX_TICK_DIGITS
        tick = int(resumed) if resumed is not None and is_tick else 0
        if resumed is not None:
            state.resumed_from.append(resumed)
            await send(ServerSentEvent(event="resumed", data=resumed))
        while True:
            tick += 1
            data = json.dumps({"tick": tick, "time": time.strftime("%H:%M:%S")})
            await send(ServerSentEvent(event="tick", id=str(tick), data=data))
            await anyio.sleep(clock_interval)

    @app.sse("/tokens")
    async def tokens(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
        prompt = request.query_params.get("prompt", "Why do streams leak?")
        # Entered through the sender: closed, shielded, however the stream ends.
        completion = await send.enter_async_context(state.llm.open_completion(prompt))
        count = 0
        async for token in completion:
            count += 1
            await send(ServerSentEvent(event="token", id=str(count), data=token))
        await send(ServerSentEvent(event="done", data=json.dumps({"tokens": count})))

    # A plain route that returns its stream: it refuses a bad request before streaming.
    @app.get("/rows")
    async def rows(request: Request) -> Response:
        database = state.database
        if database is None:
            return JSONResponse({"detail": "the database is not ready"}, status_code=503)
        given = request.query_params.get("limit", "200")
        if not _is_count(given):
            return JSONResponse(
                {"detail": f"limit must be a whole number of rows, got {given!r}"}, status_code=400
            )
        # More than four digits, leading zeros aside, is past the cap: int() is not asked,
        # which refuses more than 4,300.
        digits = given.lstrip("0")
        limit = 1000 if len(digits) > 4 else min(int(digits or "0"), 1000)

        async def produce(send: StreamSender[Any]) -> None:
            query = SQLiteRows(
                database, "SELECT * FROM orders ORDER BY id LIMIT ?", (limit,), batch_size=20
            )
            # Entered through the sender: the cursor, its transaction and the connection are
            # closed, shielded, however the stream ends.
            source = await send.enter_async_context(query)
            while batch := await source.fetch_batch():
                for row in batch:
                    await send(row | {"details": json.loads(row["details"])})
                await anyio.sleep(row_delay)  # so that the rows visibly stream in

        return NDJSONResponse(produce)

    @app.get("/quote")
    async def quote(request: Request) -> Response:
        symbol = request.query_params.get("symbol", "ACME")
        return await respond_with_fallback(prices, symbol, cache_flag="cached")

    @app.sse("/streams")
    async def streams(request: Request, send: StreamSender[ServerSentEvent | str]) -> None:
        backend = sniffio.current_async_library()  # the same for every snapshot
        while True:
            snapshot = _snapshot(state, app.streams, backend)
            await send(ServerSentEvent(event="streams", data=json.dumps(snapshot)))
            # On every change, and once a second for the ages and byte counts.
            with anyio.move_on_after(1.0):
                await app.streams.wait_changed()
            await anyio.sleep(0.05)  # one update for a burst of changes

    return app
