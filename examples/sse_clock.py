"""An SSE clock with heartbeats: the smallest streamkit service.

Run it, then open http://127.0.0.1:8000/clock in a browser, or ``curl -N`` it::

    python examples/sse_clock.py

A tick every two seconds, and a heartbeat comment (``: ping``) after half a second of silence,
so that proxies and load balancers never see an idle connection. Stop ``curl`` and the server
logs the stream's end as ``client_disconnected`` at once; a browser that reconnects sends
``Last-Event-ID`` and the count goes on from there.
"""

from __future__ import annotations

import argparse
import time

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamkit import EventSourceResponse, ServerSentEvent, StreamSender, run

TICK_INTERVAL = 2.0
HEARTBEAT_INTERVAL = 0.5
#: The most digits of a Last-Event-ID the count resumes from: more is no tick of this clock,
#: and the ids after 1,024 nines would be longer than an event id may be.
MAX_TICK_DIGITS = 18


async def clock(request: Request) -> Response:
    async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
        resumed = send.last_event_id or ""
        # isascii() too: isdigit() also takes '²', which int() refuses.
        is_tick = resumed.isascii() and resumed.isdigit() and len(resumed) <= MAX_TICK_DIGITS
        tick = int(resumed) if is_tick else 0
        while True:
            tick += 1
            await send(ServerSentEvent(event="tick", id=str(tick), data=time.strftime("%H:%M:%S")))
            await anyio.sleep(TICK_INTERVAL)

    return EventSourceResponse(produce, heartbeat_interval=HEARTBEAT_INTERVAL)


app = Starlette(routes=[Route("/clock", clock)])


if __name__ == "__main__":
    # It takes no options: --help says so, and any other is refused, not ignored.
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    run(app)  # on 127.0.0.1:8000 until Ctrl-C; logs every stream's end
