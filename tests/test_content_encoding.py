"""Decoding a body's Content-Encoding in bounded pieces: every coding zlib reads, and chains
of them, decode to the body, in pieces of at most DECODED_PIECE however well it compresses;
any other coding, or a body that breaks its own, is an UpstreamError naming it."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from streamkit._content_encoding import DECODED_PIECE, decoded_body
from streamkit._exceptions import UpstreamError

pytestmark = pytest.mark.anyio


def encode(body: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return compressor.compress(body) + compressor.flush()


def response(content: bytes, encoding: str) -> httpx.Response:
    return httpx.Response(
        200,
        headers={"content-encoding": encoding},
        stream=httpx.ByteStream(content),
        request=httpx.Request("GET", "http://upstream.test/events"),
    )


async def pieces(content: bytes, encoding: str) -> list[bytes]:
    return [piece async for piece in decoded_body(response(content, encoding))]


#: 8 MiB of one byte: 8 KiB of gzip, and 80 bytes compressed twice.
BOMB = b"x" * (8 * 1024 * 1024)


@pytest.mark.parametrize(
    ("encoding", "wbits"),
    [
        ("gzip", [31]),
        ("x-gzip", [31]),
        ("deflate", [15]),
        ("deflate", [-15]),
        ("gzip, deflate", [31, 15]),
        ("identity", []),
    ],
    ids=["gzip", "x-gzip", "deflate", "raw deflate", "a chain", "identity"],
)
async def test_a_body_is_decoded_in_bounded_pieces(encoding: str, wbits: list[int]) -> None:
    content = BOMB
    for bits in wbits:
        content = encode(content, bits)
    decoded = await pieces(content, encoding)
    assert b"".join(decoded) == BOMB
    if wbits:
        assert max(map(len, decoded)) <= DECODED_PIECE
        assert len(decoded) >= len(BOMB) // DECODED_PIECE


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, br"])
async def test_a_coding_zlib_does_not_read_is_refused_naming_it(encoding: str) -> None:
    with pytest.raises(UpstreamError, match=f"Content-Encoding {encoding!r}") as caught:
        await pieces(b"data: a\n\n", encoding)
    assert caught.value.url == "http://upstream.test/events"


async def test_a_body_that_breaks_its_coding_is_refused_naming_it() -> None:
    with pytest.raises(UpstreamError, match="not valid gzip: Error -3"):
        await pieces(b"data: not gzip\n\n", "gzip")


async def test_a_chain_of_more_than_four_codings_is_refused_naming_it() -> None:
    # A head of 100 KiB holds 16,000 codings: decoded one inside the other, 2,000 of them
    # exceeded Python's recursion limit, and each costs a pass over every byte.
    content = b"data: a\n\n"
    for _ in range(5):
        content = encode(content, 31)
    assert b"".join(await pieces(encode(encode(b"ok", 31), 31), "gzip, gzip")) == b"ok"
    with pytest.raises(UpstreamError, match="5 codings, more than 4"):
        await pieces(content, ", ".join(["gzip"] * 5))


class Chunked(httpx.AsyncByteStream):
    """A body that arrives in pieces of *size* bytes."""

    def __init__(self, content: bytes, size: int) -> None:
        self.content, self.size = content, size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.content), self.size):
            yield self.content[start : start + self.size]


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
async def test_a_gzip_body_of_several_members_is_decoded_whole_however_it_arrives(
    size: int,
) -> None:
    # Members end and begin anywhere in the network's pieces: the next one's header split
    # across two of them, or several members in one.
    members = [b"first member\n" * 50, BOMB, b"", b"last\n"]
    content = b"".join(encode(member, 31) for member in members)
    chunked = httpx.Response(
        200,
        headers={"content-encoding": "gzip"},
        stream=Chunked(content, size),
        request=httpx.Request("GET", "http://upstream.test/events"),
    )
    decoded = [piece async for piece in decoded_body(chunked)]
    assert b"".join(decoded) == b"".join(members)
    assert max(map(len, decoded)) <= DECODED_PIECE


async def test_what_follows_a_gzip_member_that_is_none_breaks_the_body() -> None:
    # Not dropped without a word, as zlib alone (and httpx) drop it.
    with pytest.raises(UpstreamError, match="is not valid gzip"):
        await pieces(encode(b"data: 1\n\n", 31) + b"trailing garbage", "gzip")
