"""A clock stream opened with a ``Last-Event-ID`` that an HTTP library would refuse to send."""

from __future__ import annotations

import anyio

from streamkit.testing import LiveServer
from streamkit.testing._client import connect


async def read_to_first_tick(server: LiveServer, path: str, last_event_id: str) -> bytes:
    """Request *path* with *last_event_id* sent as its UTF-8 bytes, read until its first
    ``tick`` event or an ``error`` event, and close: what arrived."""
    connection = await connect(server.host, server.port)
    head = f"GET {path} HTTP/1.1\r\nhost: test\r\nlast-event-id: {last_event_id}\r\n\r\n"
    received = b""
    async with connection:
        await connection.send(head.encode())
        with anyio.fail_after(5):
            while b"event: tick\n" not in received and b"event: error" not in received:
                received += await connection.receive()
    return received
