"""Work after a stream, with a ``BackgroundTask``: an audit line and metrics for every end.

Run it, open a feed or two, and read the audit trail::

    python examples/background_audit.py
    curl -N 'http://127.0.0.1:8000/feed?viewer=ada'      # Ctrl-C it after a few ticks
    curl http://127.0.0.1:8000/audit

Two kinds of cleanup, kept apart on purpose:

- *Critical* cleanup, which must happen however the stream ends (here: taking the viewer out
  of the presence list, as one would in Redis), goes in the stream's own cleanup with
  ``send.push_async_callback``. It runs in the producer's task, shielded, before the end is
  reported: when ``/viewers`` is next asked, the viewer is gone (unless another feed of
  theirs is still open).
- *Post-stream* work that needs to know how the stream ended (the audit line, metrics) goes
  in ``background=``. ``on_end`` hands it the :class:`~streamkit.StreamEnd`. It runs after
  the response, for every end reason, but later than the stream's cleanup (after a stalled
  client, only once the connection is given up), and not at all if the server cancels the
  connection outright. Nothing that must not leak belongs there.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streamkit import EventSourceResponse, ServerSentEvent, StreamEnd, StreamSender, run

DEMO_AUDIT_LOG = Path(tempfile.gettempdir()) / "streamkit-audit.ndjson"
TICK_INTERVAL = 1.0
#: The records kept in memory for ``/audit``: every stream's end makes one, so they are not
#: all kept (the file has them all).
RECORDS_KEPT = 20


class AuditLog:
    """Appends one JSON line per finished stream to a file, counts ends by reason, and keeps
    the latest :data:`RECORDS_KEPT` records.

    :param path: the file lines are appended to.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECORDS_KEPT)
        self.written = 0
        self.ends_by_reason: collections.Counter[str] = collections.Counter()
        self._written: anyio.Event | None = None

    async def write(self, record: dict[str, Any]) -> None:
        """Append *record*."""
        async with await anyio.open_file(self.path, "a") as file:
            await file.write(json.dumps(record) + "\n")
        self.records.append(record)
        self.written += 1
        self.ends_by_reason[record["reason"]] += 1
        if self._written is not None:
            self._written.set()
            self._written = None

    async def wait_records(self, count: int) -> list[dict[str, Any]]:
        """Wait until *count* records have been written in all, and return those kept."""
        while self.written < count:
            if self._written is None:
                self._written = anyio.Event()
            await self._written.wait()
        return list(self.records)


def create_app(audit_log: str | os.PathLike[str] = DEMO_AUDIT_LOG, **stream: Any) -> Starlette:
    """The feed, the presence list and the audit trail.

    :param audit_log: the file audit lines are appended to.
    :param stream: options for every feed stream (``max_duration``, ``send_timeout``...).
    """
    audit = AuditLog(audit_log)
    # Feeds open per viewer, not a set: a viewer with two tabs open is still there when
    # they close one.
    viewers: collections.Counter[str] = collections.Counter()

    async def leave(viewer: str) -> None:
        await anyio.sleep(0.001)  # a network call in real life (a Redis HINCRBY, say)
        viewers[viewer] -= 1
        if viewers[viewer] <= 0:
            del viewers[viewer]

    async def feed(request: Request) -> Response:
        viewer = request.query_params.get("viewer", "anonymous")
        ends: list[StreamEnd] = []

        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            viewers[viewer] += 1
            # Critical: registered with the stream, so it runs on every end, before the report.
            send.push_async_callback(leave, viewer)
            tick = 0
            while True:
                tick += 1
                await send(ServerSentEvent(event="tick", id=str(tick), data=f"hello {viewer}"))
                await anyio.sleep(TICK_INTERVAL)

        async def write_audit() -> None:
            end = ends[0]  # on_end ran before the background task
            await audit.write(
                {
                    "viewer": viewer,
                    "path": end.path,
                    "reason": end.reason.value,
                    "duration": round(end.duration, 6),
                    "items_sent": end.items_sent,
                    "bytes_sent": end.bytes_sent,
                }
            )

        return EventSourceResponse(
            produce, on_end=ends.append, background=BackgroundTask(write_audit), **stream
        )

    async def show_viewers(request: Request) -> Response:
        return JSONResponse(sorted(viewers))

    async def show_audit(request: Request) -> Response:
        return JSONResponse({"ends": dict(audit.ends_by_reason), "recent": list(audit.records)})

    app = Starlette(
        routes=[
            Route("/feed", feed),
            Route("/viewers", show_viewers),
            Route("/audit", show_audit),
        ]
    )
    app.state.audit = audit
    app.state.viewers = viewers
    return app


app = create_app()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # argparse converts a str default as it does a given value: a bad $PORT is a usage error.
    parser.add_argument("--port", type=int, default=os.environ.get("PORT", "8000"))
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    arguments = parser.parse_args()
    # Serves until Ctrl-C, then drains the streams; logs every stream's end.
    run(app, backend=arguments.backend, bind=f"127.0.0.1:{arguments.port}")
