"""A stateless counting stream, for the client's resume tests: event ``n`` has id and data
``n``, and a request with ``Last-Event-ID: k`` starts at ``k + 1``. Any server process
serving it resumes any client exactly, so a gap or a duplicate is the client's fault.

Run as ``python -m support.counting BACKEND PORT SENT_LOG``, it serves the endless version
on 127.0.0.1:PORT and appends each id it sends to SENT_LOG (unbuffered, so a process killed
with SIGKILL has recorded everything it sent).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from streamkit import EventSourceResponse, ServerSentEvent, StreamSender, last_event_id, serve


@dataclass
class Attempts:
    """What the server saw of each request: when, and the ``Last-Event-ID`` it carried."""

    times: list[float] = field(default_factory=list)
    last_ids: list[str | None] = field(default_factory=list)
    arrived: anyio.Event = field(default_factory=anyio.Event)

    def record(self, request: Request) -> None:
        self.times.append(anyio.current_time())
        self.last_ids.append(last_event_id(request.headers))
        self.arrived.set()
        self.arrived = anyio.Event()


def make_app(
    *,
    per_connection: int | None = None,
    end: int | None = None,
    interval: float = 0.0,
    stall_after: int | None = None,
    heartbeat_interval: float | None = None,
    sent_log: int | None = None,
    attempts: Attempts | None = None,
    unavailable_first: int = 0,
    unavailable_status: int = 503,
) -> Starlette:
    """``/count``: the counting stream.

    :param per_connection: end each response (cleanly) after this many events.
    :param end: the last event; a request resuming past it is answered 204.
    :param interval: seconds between events.
    :param stall_after: after this many events, send nothing more and keep the connection.
    :param heartbeat_interval: the response's heartbeats (none by default).
    :param sent_log: a file descriptor to append each sent id to.
    :param attempts: records each request.
    :param unavailable_first: answer this many requests first with *unavailable_status* and
        ``Retry-After: 1``.
    :param unavailable_status: 503, or 429.
    """
    requests = 0

    async def count(request: Request) -> Response:
        nonlocal requests
        requests += 1
        if attempts is not None:
            attempts.record(request)
        if requests <= unavailable_first:
            return PlainTextResponse(
                "busy", status_code=unavailable_status, headers={"retry-after": "1"}
            )
        start = int(last_event_id(request.headers) or 0) + 1
        if end is not None and start > end:
            return Response(status_code=204)

        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            n = start
            while end is None or n <= end:
                if per_connection is not None and n - start >= per_connection:
                    return
                if stall_after is not None and n - start >= stall_after:
                    await anyio.sleep_forever()
                if sent_log is not None:
                    # Before the send: a process killed in between has logged more than it
                    # sent, never less.
                    os.write(sent_log, f"{n}\n".encode())
                await send(ServerSentEvent(id=str(n), data=str(n)))
                n += 1
                if interval:
                    await anyio.sleep(interval)

        return EventSourceResponse(produce, heartbeat_interval=heartbeat_interval)

    return Starlette(routes=[Route("/count", count)])


def sent_ids(path: str) -> list[int]:
    """The ids a server process recorded in its SENT_LOG."""
    with open(path) as log:
        return [int(line) for line in log if line.strip()]


async def _main(port: int, log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        app = make_app(interval=0.01, sent_log=fd)
        await serve(app, bind=f"127.0.0.1:{port}", grace_period=2.0)
    finally:
        os.close(fd)


if __name__ == "__main__":
    anyio.run(_main, int(sys.argv[2]), sys.argv[3], backend=sys.argv[1])
