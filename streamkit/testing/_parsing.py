"""Incremental readers for what a stream's body carries: SSE frames and NDJSON lines.

The SSE reader is the client's parser (``_sse_decoder``), which follows the WHATWG parsing
rules (any of CR, LF, CRLF ends a line; one leading space after the colon is dropped; ``id``
holding NUL is ignored) and hands back every frame, including those a browser would not
dispatch (no ``data:`` line), so tests can see farewells and ``retry:`` hints. Comments are
collected apart: they are what heartbeats send.
"""

from __future__ import annotations

import codecs
from typing import Any

from .._json import read_json_line
from .._sse import ServerSentEvent
from .._sse_decoder import SSEDecoder

__all__ = ["NDJSONReader", "SSEReader"]


class SSEReader:
    """Feed it body bytes; take complete frames out. The parsing is
    :class:`streamkit.client.SSEDecoder`'s, which is linear in the body however it is split."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder(keep_comments=True)
        assert self._decoder.comments is not None
        self.comments: list[str] = self._decoder.comments

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse *chunk*; return the frames it completed."""
        return self._decoder.feed(chunk)

    def end(self) -> bool:
        """The body ended: discard an unfinished frame, and return whether there was one."""
        return self._decoder.end()


class NDJSONReader:
    """Feed it body bytes; take complete JSON values out. Empty lines (heartbeats) are
    counted in :attr:`blank_lines` and skipped.

    Strict where a lenient reader would hide a server's bug: each line is UTF-8 (a BOM is
    dropped at the start of the body only) and JSON, without ``NaN``, ``Infinity`` or a lone
    surrogate; the client's :func:`~streamkit.client.open_ndjson_stream` reads lines the same
    way. A line ends at LF; a CR before it is whitespace, as JSON's.

    :raises ValueError: (from :meth:`feed`) a line is not UTF-8 or not JSON; the message
        names its number in the body and the line.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._lines = 0  # lines of the body read so far
        self.blank_lines = 0

    def feed(self, chunk: bytes) -> list[Any]:
        """Parse *chunk*; return the values of the lines it completed."""
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        items = []
        for line in lines:
            self._lines += 1
            if self._lines == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]
            if line.strip():
                items.append(self._parse(line))
            else:
                self.blank_lines += 1
        return items

    def end(self) -> bool:
        """The body ended: discard an unfinished line (one without its LF), and return whether
        there was one."""
        unfinished = bool(self._pending.strip())
        self._pending = b""
        return unfinished

    def _parse(self, line: bytes) -> Any:
        try:
            return read_json_line(line)
        except ValueError as exc:
            raise ValueError(f"line {self._lines} of the NDJSON body {exc}") from None
