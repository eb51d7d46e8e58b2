"""Incremental readers for what a stream's body carries: SSE frames and NDJSON lines.

The SSE reader follows the WHATWG parsing rules (any of CR, LF, CRLF ends a line; one leading
space after the colon is dropped; ``id`` holding NUL is ignored), but hands back every frame,
including those a browser would not dispatch (no ``data:`` line), so tests can see farewells
and ``retry:`` hints. Comments are collected apart: they are what heartbeats send.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

from .._sse import ServerSentEvent

__all__ = ["NDJSONReader", "SSEReader"]


class SSEReader:
    """Feed it body bytes; take complete frames out."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._pending = ""
        self._after_cr = False
        self._fields: dict[str, str] = {}
        self._data: list[str] | None = None
        self.comments: list[str] = []

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse *chunk*; return the frames it completed."""
        text = self._decoder.decode(chunk)
        frames = []
        for line in self._lines(text):
            frame = self._line(line)
            if frame is not None:
                frames.append(frame)
        return frames

    def _lines(self, text: str) -> list[str]:
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = text.endswith("\r")
        buffer = self._pending + text
        lines = buffer.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._pending = lines.pop()
        return lines

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if not name:
            self.comments.append(value)
        elif name == "data":
            self._data = [*(self._data or []), value]
        elif name == "event" or (name == "id" and "\0" not in value):
            self._fields[name] = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._fields[name] = value  # any other value is ignored, field and all
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._fields and self._data is None:
            return None
        retry = self._fields.get("retry")
        frame = ServerSentEvent(
            data=None if self._data is None else "\n".join(self._data),
            event=self._fields.get("event"),
            id=self._fields.get("id"),
            retry=None if retry is None else int(retry),
        )
        self._fields = {}
        self._data = None
        return frame


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
