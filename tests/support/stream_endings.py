"""The five ways a stream ends, for the tests that prove a resource is released on each:
the client closes, the client resets, the client stalls, ``max_duration`` passes, the server
shuts down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from starlette.types import ASGIApp

from streamkit import EndReason, StreamEnd
from streamkit.testing import LiveServer, StreamClient, open_server, open_stream

#: Each ending, and the reason the stream's end report gives for it.
ENDINGS = {
    "close": EndReason.CLIENT_DISCONNECTED,
    "reset": EndReason.CLIENT_DISCONNECTED,
    "stall": EndReason.SEND_TIMEOUT,
    "deadline": EndReason.DEADLINE,
    "shutdown": EndReason.SHUTDOWN,
}


def stream_options(ending: str) -> dict[str, Any]:
    """The stream's options that let *ending* happen soon: a send timeout and a small buffer
    for a stall, a short ``max_duration`` for a deadline."""
    if ending == "stall":
        return {"send_timeout": 0.3, "buffer_size": 4}
    if ending == "deadline":
        return {"max_duration": 0.5}
    return {}


@asynccontextmanager
async def open_stream_to_end(
    app: ASGIApp, path: str, ending: str
) -> AsyncIterator[tuple[LiveServer, StreamClient]]:
    """Serve *app* and open a stream of *path* that *ending* can end: for a stall, with a
    small receive buffer, and a server that waits for the kernel to give up on the client."""
    receive_buffer = 4096 if ending == "stall" else None
    # The kernel may take a while to fill the buffers of a stalled client on a loaded
    # machine: its giving the connection up must not come first.
    kernel_timeout = 10.0 if ending == "stall" else 2.0
    async with open_server(app, stalled_connection_timeout=kernel_timeout) as server:
        async with open_stream(server, path, receive_buffer=receive_buffer) as client:
            yield server, client


async def end_stream(server: LiveServer, client: StreamClient, ending: str) -> StreamEnd:
    """End the stream as *ending* says, and return its end report."""
    if ending == "close":
        await client.close()
    elif ending == "reset":
        await client.reset()
    elif ending == "shutdown":
        await server.shutdown(within=10.0)
    elif ending == "deadline":
        # The client keeps reading: a deadline, not a stall, is what ends this stream.
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(client.read_all)
            end = await server.wait_ended(ENDINGS[ending], within=10.0)
        return end
    # Acted on above ("close", "reset", "shutdown"), or "stall": the client reads no more,
    # and its receive buffer is small.
    return await server.wait_ended(ENDINGS[ending], within=10.0)


def record_release(
    request: pytest.FixtureRequest,
    ending: str,
    end: StreamEnd,
    acted_at: float,
    reported_at: float,
    released_at: float,
) -> None:
    """Record the figures for docs/resources.md as the test's user properties: how long the
    stream's own cleanup took, and how long after the end was reported (at *reported_at*), or
    the client or the server acted (at *acted_at*), the release was seen from outside (at
    *released_at*)."""
    record = request.node.user_properties.append
    record(("cleanup_duration", end.cleanup_duration))
    record(("release_after_report", released_at - reported_at))
    if ending in ("close", "reset", "shutdown"):
        record(("release_after_action", released_at - acted_at))
