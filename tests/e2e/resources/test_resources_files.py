"""A file through real hypercorn: sent whole, at a bounded rate if asked, and closed however
the stream ends.

The release on each of the five endings is in test_resources_endings.py; here: a complete
download, the rate limit, a file that cannot be opened.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.resource_checks import open_descriptors

from streamkit import EndReason, StreamResponse, StreamSender
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
        ({"path": "x\0y"}, ValueError, r"path must not hold a NUL character, got 'x\\x00y'$"),
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


class _AfterFirstChunk:
    """A sender that does *change* to the file once its first chunk is sent: the stream's
    own sender otherwise (its resources, its end)."""

    def __init__(self, send: StreamSender[bytes], change: Callable[[], None]) -> None:
        self._send = send
        self._change: Callable[[], None] | None = change

    async def __call__(self, chunk: bytes) -> None:
        await self._send(chunk)
        if self._change is not None:
            change, self._change = self._change, None
            change()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._send, name)


def changing_file_app(path: Path, change: Callable[[], None]) -> Starlette:
    async def download(request: Request) -> Response:
        chunks = file_chunks(path, chunk_size=1000)

        async def produce(send: StreamSender[bytes]) -> None:
            await chunks(cast(StreamSender[bytes], _AfterFirstChunk(send, change)))

        return StreamResponse(produce)

    return Starlette(routes=[Route("/", download)])


def held(path: Path) -> list[str]:
    """This process's descriptors on *path*, deleted or replaced since it was opened too."""
    return open_descriptors(path) + open_descriptors(Path(f"{path} (deleted)"))


async def test_a_file_grown_while_it_is_sent_is_sent_as_it_was_when_opened(
    tmp_path: Path,
) -> None:
    # Appended to for as long as it is read (a log being written), the download never ended.
    path = tmp_path / "growing.log"
    content = os.urandom(10_000)
    path.write_bytes(content)

    def grow() -> None:
        with path.open("ab") as file:
            file.write(b"x" * 5000)

    async with open_server(changing_file_app(path, grow)) as server:
        async with open_stream(server, "/") as client:
            assert await client.read_all() == content
        end = await server.wait_ended(EndReason.COMPLETED)
    assert end.bytes_sent == len(content)
    assert held(path) == []


async def test_a_file_truncated_while_it_is_sent_ends_the_stream_with_an_error(
    tmp_path: Path,
) -> None:
    # Its reads came short, and the stream reported a shorter body as completed.
    path = tmp_path / "shrinking.bin"
    content = os.urandom(10_000)
    path.write_bytes(content)

    def truncate() -> None:
        os.truncate(path, 3500)

    async with open_server(changing_file_app(path, truncate)) as server:
        async with open_stream(server, "/") as client:
            body = await client.read_all()
        end = await server.wait_ended(EndReason.ERROR)
    # What was read before it shrank (the reader's buffer too), then nothing more.
    assert body == content[: len(body)]
    assert 3500 <= len(body) < len(content)
    assert end.bytes_sent == len(body)
    assert isinstance(end.exception, OSError)
    assert f"{str(path)!r} was truncated while it was sent" in str(end.exception)
    assert f"of the {len(content)} bytes" in str(end.exception)
    assert held(path) == []


@pytest.mark.parametrize("change", ["replaced", "deleted"])
async def test_a_file_replaced_or_deleted_while_it_is_sent_is_sent_whole_as_opened(
    tmp_path: Path, change: str
) -> None:
    path = tmp_path / "data.bin"
    content = os.urandom(10_000)
    path.write_bytes(content)
    other = tmp_path / "other.bin"
    other.write_bytes(b"new")

    def replace_or_delete() -> None:
        if change == "replaced":
            os.replace(other, path)
        else:
            path.unlink()

    async with open_server(changing_file_app(path, replace_or_delete)) as server:
        async with open_stream(server, "/") as client:
            assert await client.read_all() == content
        await server.wait_ended(EndReason.COMPLETED)
    assert held(path) == []


@pytest.mark.parametrize("target", ["directory", "/dev/zero", "link-to-/dev/zero"])
async def test_what_is_not_a_regular_file_is_refused_and_left_closed(
    tmp_path: Path, target: str
) -> None:
    # /dev/zero would be sent for ever; a directory cannot be read.
    path = {"directory": tmp_path, "/dev/zero": Path("/dev/zero")}.get(target)
    if path is None:
        path = tmp_path / "zero"
        path.symlink_to("/dev/zero")
    with anyio.fail_after(10):
        async with open_server(file_app(path)) as server:
            async with open_stream(server, "/") as client:
                assert await client.read_all() == b""
            end = await server.wait_ended(EndReason.ERROR)
    assert isinstance(end.exception, ValueError)
    assert f"{str(path)!r} is not a regular file" in str(end.exception)
    assert open_descriptors(path.resolve()) == []


async def test_a_symbolic_link_is_followed_to_its_file(tmp_path: Path) -> None:
    # As open() follows one: documented, for an endpoint that takes the path from a client.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "secret.txt"
    target.write_bytes(b"outside the served directory")
    served = tmp_path / "served"
    served.mkdir()
    (served / "link.txt").symlink_to(target)
    async with open_server(file_app(served / "link.txt")) as server:
        async with open_stream(server, "/") as client:
            assert await client.read_all() == b"outside the served directory"
        await server.wait_ended(EndReason.COMPLETED)
    assert open_descriptors(target) == []
