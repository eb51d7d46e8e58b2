"""Reading an upstream body: its ``Content-Encoding`` decoded a bounded piece at a time, and
its iterator unwound when left mid-way.

httpx decodes each piece read from the network whole: 64 KiB of gzip holding one repeated
byte decode to 64 MiB in one call, before any parser can look at them, and a body compressed
twice multiplies that again. A client's ``max_event_size`` would then bound nothing: a
server can make it hold tens of megabytes per read, of an event it refuses only afterwards.
Here the raw body is decoded with zlib's own output bound, so no piece handed on is longer
than :data:`DECODED_PIECE`, however well the body compresses; and between two pieces of one
read it checkpoints, so that a read that decodes to gigabytes of what no bound refuses
(blank lines) costs CPU like a fast server, not the loop's attention.

Only the codings zlib reads are decoded (``gzip``, ``x-gzip``, ``deflate``, and a chain of
up to :data:`MAX_CODINGS` of them); another (``br``, ``zstd``) is refused by name, where
httpx would decode it unbounded, or pass it on undecoded when its package is missing.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._exceptions import UpstreamError, shown_url

if TYPE_CHECKING:
    import httpx

__all__ = ["DECODED_PIECE", "MAX_CODINGS", "ask_for_decodable", "decoded_body", "unwind"]

#: The most bytes of decoded body handed on at once: the size of one network read.
DECODED_PIECE = 64 * 1024
#: The most codings one body may be in: more is an attack (each is a pass over every byte,
#: and a head of 100 KiB can list 16,000), not a server's compression.
MAX_CODINGS = 4

_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


def ask_for_decodable(request: httpx.Request) -> None:
    """Have *request* ask only for codings this module decodes: of the codings its
    ``Accept-Encoding`` lists, those of zlib (``identity`` when none is). httpx's
    ``client.build_request()`` lists ``br`` and ``zstd`` where their packages are installed,
    and a server that took it at its word would send a body that is refused. A request that
    lists none asks for none."""
    header = request.headers.get("accept-encoding")
    if header is None:
        return
    kept = [
        item.strip()
        for item in header.split(",")
        if item.partition(";")[0].strip().lower() in (*_WBITS, "identity")
    ]
    request.headers["accept-encoding"] = ", ".join(kept) or "identity"


class _Inflater:
    """One coding of the chain: zlib, its output bounded per call."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._wbits = _WBITS[coding]
        self._zlib = zlib.decompressobj(self._wbits)
        self._started = False
        # A gzip body is a series of members (RFC 1952), as a server that compresses each
        # write apart sends it. zlib stops at the end of one, and takes what follows for data
        # past the end: the next is decoded, not dropped; anything else there is no gzip, and
        # breaks the body.
        self._members = coding != "deflate"

    def decode(self, data: bytes) -> Iterator[bytes]:
        if not self._started and data and self.coding == "deflate":
            self._started = True
            try:
                # "deflate" is zlib-wrapped by the RFC, raw by some servers: tell which by
                # its first bytes, as httpx and browsers do.
                zlib.decompressobj(self._wbits).decompress(data[:2])
            except zlib.error:
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        if self._members and self._zlib.eof:
            self._zlib = zlib.decompressobj(self._wbits)  # the last ended with the last read
        while True:
            piece = self._zlib.decompress(data, DECODED_PIECE)
            if piece:
                yield piece
            if self._members and self._zlib.eof:
                # What follows the member (unconsumed_tail may hold it too, or not).
                data = self._zlib.unused_data
                if not data:
                    return
                self._zlib = zlib.decompressobj(self._wbits)
                continue
            data = self._zlib.unconsumed_tail
            # A full piece with no input left may leave output in zlib: ask again, for b"".
            if not data and len(piece) < DECODED_PIECE:
                return

    def flush(self) -> Iterator[bytes]:
        rest = self._zlib.flush()
        for start in range(0, len(rest), DECODED_PIECE):
            yield rest[start : start + DECODED_PIECE]


async def unwind(iterator: AsyncIterator[Any]) -> None:
    """Finish an httpx body iterator left mid-way, so no inner generator is left suspended.

    httpx's body iterators are async generators nested several deep; closing the outermost
    leaves the inner ones to the garbage collector (trio warns about each: httpx issue 3686).
    Resumed in a cancelled scope instead, the chain runs to its first await, where the
    cancellation ends every generator in it, and httpcore closes the connection on the way out.
    """
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            while True:
                await iterator.__anext__()
        except Exception:
            pass  # StopAsyncIteration, or what an already closed connection raised


def _through(inflaters: list[_Inflater], data: bytes) -> Iterator[bytes]:
    """*data* through each coding in turn, every piece bounded on the way."""
    if not inflaters:
        yield data
        return
    first, rest = inflaters[0], inflaters[1:]
    for piece in first.decode(data):
        yield from _through(rest, piece)


def _flushed(inflaters: list[_Inflater]) -> Iterator[bytes]:
    for n, inflater in enumerate(inflaters):
        for piece in inflater.flush():
            yield from _through(inflaters[n + 1 :], piece)


async def decoded_body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body of *response* as it arrives, decoded from its ``Content-Encoding`` in pieces
    of at most :data:`DECODED_PIECE` bytes.

    :raises UpstreamError: the body is in a coding other than those of zlib, or in more
        than :data:`MAX_CODINGS`, or breaks one.
    """
    header = response.headers.get("content-encoding", "")
    codings = [c.strip().lower() for c in header.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if len(codings) > MAX_CODINGS:
        raise UpstreamError(
            f"{shown_url(response.request.url)} sent a body in Content-Encoding {header[:80]!r}: "
            f"{len(codings)} codings, more than {MAX_CODINGS}",
            status_code=response.status_code,
            url=str(response.request.url),
        )
    unknown = [c for c in codings if c not in _WBITS]
    if unknown:
        raise UpstreamError(
            f"{shown_url(response.request.url)} sent a body in Content-Encoding "
            f"{header[:80]!r}, which streamkit cannot decode with a bound "
            f"({', '.join(unknown)}); it decodes gzip and deflate",
            status_code=response.status_code,
            url=str(response.request.url),
        )
    # Applied in the order listed: undone from the last.
    inflaters = [_Inflater(coding) for coding in reversed(codings)]
    raw = response.aiter_raw()
    try:
        async for chunk in raw:
            for n, piece in enumerate(_through(inflaters, chunk)):
                if n:
                    # One read can hold gigabytes (compressed twice, 64 KiB hold 64 GiB):
                    # between its pieces, the loop's other tasks, and a cancellation, get in.
                    await anyio.lowlevel.checkpoint()
                yield piece
        for piece in _flushed(inflaters):
            await anyio.lowlevel.checkpoint()
            yield piece
    except zlib.error as exc:
        raise UpstreamError(
            f"{shown_url(response.request.url)} sent a body that is not valid {header}: {exc}",
            status_code=response.status_code,
            url=str(response.request.url),
        ) from None
    finally:
        # Left mid-way (a raise, a cancellation between pieces, unwound itself): finish the
        # raw iterator here, not in the collector. Once exhausted, this does nothing.
        await unwind(raw)
