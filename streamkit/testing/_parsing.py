"""Incremental readers for what a stream's body carries: SSE frames and NDJSON lines.

The SSE reader is the client's parser (``_sse_decoder``), which follows the WHATWG parsing
rules (any of CR, LF, CRLF ends a line; one leading space after the colon is dropped; ``id``
holding NUL is ignored) and hands back every frame, including those a browser would not
dispatch (no ``data:`` line), so tests can see farewells and ``retry:`` hints. Comments are
collected apart: they are what heartbeats send.
"""

from __future__ import annotations

import json
from typing import Any

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


class NDJSONReader:
    """Feed it body bytes; take complete JSON values out. Empty lines (heartbeats) are
    counted in :attr:`blank_lines` and skipped."""

    def __init__(self) -> None:
        self._pending = b""
        self.blank_lines = 0

    def feed(self, chunk: bytes) -> list[Any]:
        """Parse *chunk*; return the values of the lines it completed."""
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        items = []
        for line in lines:
            if line.strip():
                items.append(json.loads(line))
            else:
                self.blank_lines += 1
        return items
