"""Files from a directory, sent at a bounded rate, each closed the moment its download ends.

Run it (it serves a demo directory with a 20 MB file, unless you give ``--directory``)::

    python examples/file_proxy.py
    curl -o /dev/null http://127.0.0.1:8000/files/demo.bin

At the default 2 MB/s the download takes ten seconds; stop ``curl`` halfway and the file is
closed before the stream's end is logged (``ls -l /proc/<server pid>/fd`` shows it gone).
A name outside the directory, or one that is not a file, gets ``404``.
"""

from __future__ import annotations

import argparse
import math
import mimetypes
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from streamkit import StreamResponse, run
from streamkit.resources import file_chunks

DEMO_DIRECTORY = Path(tempfile.gettempdir()) / "streamkit-files"
DEMO_SIZE = 20 * 1024 * 1024
DEFAULT_RATE = 2_000_000.0


def create_app(
    directory: str | os.PathLike[str], *, bytes_per_second: float | None = DEFAULT_RATE
) -> Starlette:
    """Serve the files of *directory*.

    :param directory: where the files are.
    :param bytes_per_second: the rate each download is held to; ``None`` for no limit.
    :raises ValueError: *bytes_per_second* is not a positive, finite number: refused here,
        not at each download (a 500).
    """
    if bytes_per_second is not None and not 0 < bytes_per_second < math.inf:
        raise ValueError(
            f"bytes_per_second must be a positive, finite number or None, got {bytes_per_second!r}"
        )
    root = Path(directory).resolve()

    async def download(request: Request) -> Response:
        # Checked here, where a 404 can still be answered: the stream opens the file itself.
        try:
            path = (root / request.path_params["name"]).resolve()
            found = path.is_relative_to(root) and path.is_file()
        except (OSError, ValueError):  # a name too long for the file system, a NUL byte
            found = False
        if not found:
            return PlainTextResponse("no such file", status_code=404)
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return StreamResponse(
            file_chunks(path, bytes_per_second=bytes_per_second),
            media_type=media_type,
            headers={"content-disposition": content_disposition(path.name)},
        )

    return Starlette(routes=[Route("/files/{name:path}", download)])


def content_disposition(name: str) -> str:
    """The header that names the download *name*, as Starlette's ``FileResponse`` writes it:
    a name that a URL would escape (one beyond Latin-1, which no header can carry, or holding
    a quote, which would end it early) is sent percent-encoded as UTF-8 (RFC 6266)."""
    quoted = quote(name)
    if quoted != name:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{name}"'


def make_demo_directory(directory: Path) -> None:
    """Create *directory* with a ``demo.bin`` of random bytes, unless it exists."""
    directory.mkdir(exist_ok=True)
    demo = directory / "demo.bin"
    if not demo.exists():
        demo.write_bytes(os.urandom(DEMO_SIZE))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # argparse converts a str default as it does a given value: a bad $PORT is a usage error.
    parser.add_argument("--port", type=int, default=os.environ.get("PORT", "8000"))
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--directory", type=Path, default=None)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="bytes per second")
    arguments = parser.parse_args()
    directory = arguments.directory
    if directory is None:
        directory = DEMO_DIRECTORY
        make_demo_directory(directory)
    elif not directory.is_dir():
        parser.error(f"argument --directory: no such directory: {str(directory)!r}")
    try:
        app = create_app(directory, bytes_per_second=arguments.rate)
    except ValueError as exc:
        parser.error(f"argument --rate: {exc}")
    # Serves until Ctrl-C, then drains the streams; logs every stream's end.
    run(app, backend=arguments.backend, bind=f"127.0.0.1:{arguments.port}")
