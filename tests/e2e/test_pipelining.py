"""A client that pipelines a second request behind a stream, then leaves.

While a pipelined request waits, hypercorn stops reading the socket, so the client's leaving
is never reported: only a write can fail. A silent stream is therefore probed: with
heartbeats off it still writes its heartbeat frame after a probe interval of silence (30 s;
shortened here), and the client that left is noticed within two probes.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import anyio
import anyio.abc
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import streamkit._runtime
from streamkit import EndReason, EventSourceResponse, NDJSONResponse, StreamSender
from streamkit.testing import open_server
from streamkit.testing._client import connect

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

PROBE_INTERVAL = 0.2


@pytest.fixture
def short_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streamkit._runtime, "PROBE_INTERVAL", PROBE_INTERVAL, raising=False)


@pytest.mark.usefixtures("short_probe")
@pytest.mark.parametrize("kind", ["sse", "ndjson"])
@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_silent_stream_notices_a_pipelining_client_that_left(kind: str, leave: str) -> None:
    cleaned = anyio.Event()

    async def silent(send: StreamSender[Any]) -> None:
        try:
            await send("first" if kind == "sse" else {"n": 0})
            await anyio.sleep_forever()  # upstream work the client could pin
        finally:
            cleaned.set()

    async def stream(request: Request) -> Response:
        if kind == "sse":
            return EventSourceResponse(silent, heartbeat_interval=None)
        return NDJSONResponse(silent)  # no heartbeat by default

    async def other(request: Request) -> Response:
        return PlainTextResponse("other")

    app = Starlette(routes=[Route("/stream", stream), Route("/other", other)])
    # hypercorn keeps the connection until its grace period ends: keep that short.
    async with open_server(app, grace_period=1.0) as server:
        connection = await connect(server.host, server.port)
        await connection.send(
            b"GET /stream HTTP/1.1\r\nhost: test\r\n\r\nGET /other HTTP/1.1\r\nhost: test\r\n\r\n"
        )
        received = b""
        with anyio.fail_after(5):
            while b"first" not in received and b'"n":0' not in received:
                received += await connection.receive()
        if leave == "reset":
            raw = connection.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await connection.aclose()
        left_at = anyio.current_time()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=2 * PROBE_INTERVAL + 2)
        noticed_after = anyio.current_time() - left_at
        with anyio.fail_after(1):
            await cleaned.wait()
    assert noticed_after < 2 * PROBE_INTERVAL + 1.0
    assert end.items_sent == 1
