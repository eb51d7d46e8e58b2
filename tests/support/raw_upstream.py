"""A hand-written HTTP/1.1 server, for the client's and the proxy's tests against servers that
send what no framework would: ``retry: 0``, ``Retry-After: 0``, ids with spaces or control
characters, lines that never end, compression bombs. Each connection's request head is read
and recorded, the connection is answered with the bytes the test gives for it, as they are,
and closed (or held open, silent).
"""

from __future__ import annotations

import functools
import itertools
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from anyio.abc import SocketStream

#: The most bytes of a request head read; the clients under test send a few hundred.
MAX_HEAD = 16 * 1024


@dataclass
class RawRequest:
    """One request as it arrived: when, and its header fields as bytes, names lowercased.
    :attr:`ended` is set when its connection ends: the server's answer was sent, or (held)
    the client left."""

    time: float
    headers: dict[bytes, bytes]
    ended: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class RawUpstream:
    """The running server: its URL, and the requests it was sent, in order."""

    url: str
    requests: list[RawRequest] = field(default_factory=list)
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    async def wait_request(self, index: int) -> RawRequest:
        """The *index*-th request (from 0), once it has arrived."""
        while len(self.requests) <= index:
            await self._arrived.wait()
        return self.requests[index]

    def gaps(self) -> list[float]:
        """Seconds between one request and the next."""
        times = [request.time for request in self.requests]
        return [later - earlier for earlier, later in itertools.pairwise(times)]


def event_stream(body: bytes, *, encoding: str | None = None) -> bytes:
    """A 200 ``text/event-stream`` answer whose body is *body*, ended by closing; *body* is
    sent as it is, with *encoding* as its ``Content-Encoding``."""
    return answer_200("text/event-stream", body, encoding)


def ndjson(body: bytes, *, encoding: str | None = None) -> bytes:
    """A 200 ``application/x-ndjson`` answer whose body is *body*, ended by closing."""
    return answer_200("application/x-ndjson", body, encoding)


def answer_200(content_type: str, body: bytes, encoding: str | None) -> bytes:
    coding = "" if encoding is None else f"content-encoding: {encoding}\r\n"
    head = f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{coding}connection: close\r\n\r\n"
    return head.encode() + body


@functools.cache
def compressed(start: bytes, filler: bytes = b"", mebibytes: int = 0, *, wbits: int = 31) -> bytes:
    """*start*, then *mebibytes* MiB of *filler*, compressed: gzip (*wbits* 31) by default,
    ``deflate`` with 15. 64 MiB of one byte make 64 KiB: a compression bomb."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = filler * (1024 * 1024 // max(1, len(filler)))
    parts = [compressor.compress(start)]
    parts += [compressor.compress(block) for _ in range(mebibytes)]
    return b"".join([*parts, compressor.flush()])


def status(code: int, reason: str, *headers: str) -> bytes:
    """An answer with *code*, the header lines *headers* and no body."""
    head = "".join(f"{line}\r\n" for line in (*headers, "content-length: 0", "connection: close"))
    return f"HTTP/1.1 {code} {reason}\r\n{head}\r\n".encode()


#: The answer that ends a stream: the server's word to stop.
NO_CONTENT = status(204, "No Content")


@asynccontextmanager
async def open_raw_upstream(
    answer: Callable[[int], bytes | list[bytes | float]], *, hold: bool = False
) -> AsyncIterator[RawUpstream]:
    """Serve on a free port of 127.0.0.1, answering the *n*-th connection (from 0) with
    ``answer(n)``: bytes, or a list of bytes to send and seconds to sleep in between (``[]``:
    no answer at all). With *hold*, the connection is then kept open, silent, until the
    client closes it."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    upstream = RawUpstream(f"http://127.0.0.1:{port}")

    async def serve(connection: SocketStream) -> None:
        async with connection:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
                try:
                    head += await connection.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
            lines = head.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
            fields = dict(line.split(b":", 1) for line in lines if b":" in line)
            index = len(upstream.requests)
            request = RawRequest(
                anyio.current_time(),
                {name.strip().lower(): value.strip() for name, value in fields.items()},
            )
            upstream.requests.append(request)
            upstream._arrived.set()
            upstream._arrived = anyio.Event()
            try:
                given = answer(index)
                for part in [given] if isinstance(given, bytes) else given:
                    if isinstance(part, bytes):
                        await connection.send(part)
                    else:
                        await anyio.sleep(part)
                while hold:
                    await connection.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            finally:
                request.ended.set()

    async with listener, anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, serve)
        try:
            yield upstream
        finally:
            task_group.cancel_scope.cancel()


@functools.cache
def nested_bomb(filler: bytes, gibibytes: int) -> bytes:
    """*gibibytes* GiB of *filler* compressed twice (``Content-Encoding: gzip, gzip``): 64 GiB
    make some 100 KiB. The inner stream is never finished (a bomb is not read to its end):
    it repeats one compressed MiB, made alike by a full flush before each."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = filler * (1024 * 1024 // len(filler))
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    return compressed(first + again * (gibibytes * 1024 - 1))
