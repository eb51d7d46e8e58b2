"""A file through real hypercorn: sent whole, at a bounded rate if asked, and closed however
the stream ends.

The release on each of the five endings is in test_resources_endings.py; here: a complete
download, the rate limit, a file that cannot be opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.resource_checks import open_descriptors

from streamkit import EndReason, StreamResponse
from streamkit.resources import file_chunks
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def file_app(path: Path, **options: Any) -> Starlette:
    async def download(request: Request) -> Response:
        return StreamResponse(file_chunks(path, **options))

    return Starlette(routes=[Route("/", download)])


async def test_the_whole_file_is_sent_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    content = os.urandom(300_000)
    path.write_bytes(content)
    async with open_server(file_app(path, chunk_size=7000)) as server:
        async with open_stream(server, "/") as client:
            assert await client.read_all() == content
        end = await server.wait_ended(EndReason.COMPLETED)
    assert end.items_sent == -(-len(content) // 7000)
    assert open_descriptors(path) == []


async def test_the_rate_limit_holds_the_average(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 100_000)
    rate = 400_000.0
    async with open_server(file_app(path, chunk_size=10_000, bytes_per_second=rate)) as server:
        async with open_stream(server, "/") as client:
            assert len(await client.read_all()) == 100_000
        end = await server.wait_ended(EndReason.COMPLETED)
    # The last chunk may go out at once: the burst is one chunk.
    assert end.duration >= (100_000 - 10_000) / rate
    assert open_descriptors(path) == []


async def test_a_file_that_cannot_be_opened_ends_the_stream_with_an_error(
    tmp_path: Path,
) -> None:
    async with open_server(file_app(tmp_path / "missing.bin")) as server:
        async with open_stream(server, "/") as client:
            assert await client.read_all() == b""
        end = await server.wait_ended(EndReason.ERROR)
    assert isinstance(end.exception, FileNotFoundError)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"chunk_size": 0}, ValueError, "chunk_size must be an int of at least 1, got 0"),
        ({"chunk_size": -1}, ValueError, "chunk_size must be an int of at least 1, got -1"),
        ({"chunk_size": 1.5}, TypeError, "chunk_size must be an int, got float: 1.5"),
        ({"chunk_size": True}, TypeError, "chunk_size must be an int, got bool: True"),
        ({"bytes_per_second": -1.0}, ValueError, "bytes_per_second must be .* got -1.0"),
        ({"bytes_per_second": float("inf")}, ValueError, "got inf"),
        ({"bytes_per_second": True}, TypeError, "got bool: True"),
        (
            {"chunk_size": 2**40},
            ValueError,
            r"chunk_size must be at most 16777216, got 1099511627776",
        ),
        # An int is a file descriptor to open(): the server's own (True is stdout).
        ({"path": 3}, TypeError, r"path must be a path \(str or os.PathLike\), got 3$"),
        ({"path": True}, TypeError, "got True$"),
        ({"path": None}, TypeError, "got None$"),
        ({"path": b"x"}, TypeError, "got b'x'$"),
        ({"path": ""}, ValueError, "path must not be empty, got ''$"),
    ],
)
def test_options_are_checked(options: dict[str, Any], error: type[Exception], message: str) -> None:
    options = {"path": "x"} | options
    with pytest.raises(error, match=message):
        file_chunks(**options)


async def test_a_fifo_is_refused_at_once_and_holds_up_nothing(tmp_path: Path) -> None:
    # Opening a FIFO with no writer blocks, in a worker thread no cancellation reaches: the
    # stream could not end, nor the server shut down, until something wrote to it.
    path = tmp_path / "fifo"
    os.mkfifo(path)
    with anyio.fail_after(10):
        async with open_server(file_app(path)) as server:
            async with open_stream(server, "/") as client:
                assert await client.read_all() == b""
            end = await server.wait_ended(EndReason.ERROR, within=2.0)
    assert isinstance(end.exception, ValueError)
    assert f"{str(path)!r} is not a regular file" in str(end.exception)
    assert open_descriptors(path) == []
