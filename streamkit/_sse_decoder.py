"""Reading an event stream: the WHATWG ``text/event-stream`` parsing algorithm, incremental.

Pure, like the framing in ``_sse``: bytes in, :class:`~streamkit.ServerSentEvent` frames out,
no I/O. The body is decoded as UTF-8 with a leading BOM dropped and invalid bytes replaced; a
line ends at CR, LF or CRLF (even split between two chunks); a line starting with a colon is a
comment; one space after the field's colon is dropped; an ``id`` holding NUL is ignored, and a
``retry`` that is not all ASCII digits too, or has more than 19 of them (``MAX_RETRY_DIGITS``
in ``_sse``: past 64 bits, where a browser ignores it too). Unknown fields are ignored.

Where it differs from a browser, on purpose: every frame is handed back, including those a
browser would not dispatch (no ``data:`` line), because a client needs their ``id`` and
``retry`` and a test wants to see them. Each frame holds only the fields it carried: the
last event id that persists from frame to frame is :attr:`SSEDecoder.last_event_id`.

Linear in its input however it is split: a line split over many chunks is joined once, and an
event of many ``data:`` lines is joined once when dispatched. Bounded when asked: with
*max_size*, a frame still arriving that grows past it raises, so a server that never ends its
line or its event cannot fill the client's memory. The bound counts characters, and a piece
kept as a ``str`` of its own costs some 50 bytes more: so the pieces of a line, or the lines
of an event, are joined :data:`PIECES` at a time as they come (each character is copied
twice at most), and a server sending a character or a short line a read holds about its
size, not 30 times it.
"""

from __future__ import annotations

import codecs
from typing import AnyStr

from ._checks import check_count
from ._sse import MAX_RETRY_DIGITS, ServerSentEvent, trusted_event

__all__ = ["PIECES", "FrameTooLarge", "SSEDecoder", "join_tail"]

#: Pieces of a line, or lines of an event, kept apart before they are joined into one.
PIECES = 256


class SSEDecoder:
    """Feed it the body's bytes; take complete frames out.

    :param keep_comments: collect the comments (what heartbeats send) in :attr:`comments`.
    :param max_size: the most characters the frame being read may hold, its lines and the
        unfinished one counted; ``None`` for no bound. It is checked once per chunk, so a
        chunk may take the decoder past it before :meth:`feed` raises.
    :raises FrameTooLarge: (from :meth:`feed`) a frame grew past *max_size*.
    :ivar last_event_id: the id of the last complete frame that carried one (``""`` if none
        did, or the last one was empty): what a client sends back as ``Last-Event-ID``.
    :ivar retry: the last valid ``retry`` seen, in milliseconds, or ``None``. Like a browser,
        it applies as soon as its line is read, before the frame is complete.
    :ivar comments: the comments read, when *keep_comments*.
    """

    __slots__ = (
        "_after_cr",
        "_data",
        "_data_joined",
        "_decoder",
        "_event",
        "_id",
        "_max_size",
        "_pending",
        "_pending_joined",
        "_retry",
        "_size",
        "comments",
        "last_event_id",
        "retry",
    )

    def __init__(self, *, keep_comments: bool = False, max_size: int | None = None) -> None:
        if max_size is not None:
            check_count("max_size", max_size)
        self._max_size = max_size
        self._size = 0  # characters of the frame being read, when bounded
        # utf-8-sig drops one leading BOM however the first bytes are split, and no other.
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._pending: list[str] = []
        self._after_cr = False
        self._data: list[str] | None = None
        # Of _pending and _data, the entries before these are pieces already joined.
        self._pending_joined = self._data_joined = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self.last_event_id = ""
        self.retry: int | None = None
        self.comments: list[str] | None = [] if keep_comments else None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse *chunk*; return the frames it completed, in order."""
        return self.feed_text(self._decoder.decode(chunk))

    def feed_text(self, text: str) -> list[ServerSentEvent]:
        """Parse already decoded *text*; return the frames it completed."""
        if not text:
            return []
        if self._after_cr and text[0] == "\n":
            text = text[1:]  # the LF of a CRLF split between two chunks
        if "\r" in text:
            self._after_cr = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        else:
            self._after_cr = False
        lines = text.split("\n")
        if len(lines) == 1:
            self._pending.append(text)  # joined once, when the line ends
            if len(self._pending) - self._pending_joined >= PIECES:
                self._pending_joined = join_tail(self._pending, self._pending_joined, "")
            if self._max_size is not None:
                self._measure(len(text), [])
            return []
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = "".join(self._pending)
            self._pending = []
            self._pending_joined = 0
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
        frames = self._lines(lines)
        data = self._data
        if data is not None and len(data) - self._data_joined >= PIECES:
            self._data_joined = join_tail(data, self._data_joined, "\n")
        if self._max_size is None:
            return frames
        # The frame being read starts after the last empty line: usually the chunk's last
        # line, so this looks at one line per chunk.
        size = len(tail)
        for line in reversed(lines):
            if not line:
                self._size = 0
                break
            size += len(line) + 1
        else:
            size = len(text)  # no frame ended: this chunk goes on the one counted so far
        self._measure(size, frames)
        return frames

    def end(self) -> bool:
        """The body ended: an incomplete frame is discarded, as a browser does.

        :returns: whether there was one (a field read, or a line begun), for a caller to say.
        """
        discarded = (
            bool(self._pending)
            or bool(self._decoder.getstate()[0])
            or any(field is not None for field in (self._data, self._event, self._id, self._retry))
        )
        self._decoder.reset()
        self._pending = []
        self._pending_joined = self._data_joined = 0
        self._size = 0
        self._after_cr = False
        self._data = self._event = self._id = self._retry = None
        return discarded

    def _measure(self, added: int, frames: list[ServerSentEvent]) -> None:
        self._size += added
        if self._max_size is not None and self._size > self._max_size:
            raise FrameTooLarge(
                f"an event of the stream grew past {self._max_size} characters without ending "
                f"({self._size} read)",
                frames,
            )

    def _lines(self, lines: list[str]) -> list[ServerSentEvent]:
        # The frame being read is kept in locals: this loop is the parser's whole cost.
        frames: list[ServerSentEvent] = []
        data, event, id_, retry = self._data, self._event, self._id, self._retry
        for line in lines:
            if not line:
                if data is None and event is None and id_ is None and retry is None:
                    continue
                if id_ is not None:
                    # Only now: an id whose frame never completed is not resumed from.
                    self.last_event_id = id_
                frames.append(
                    trusted_event(None if data is None else "\n".join(data), event, id_, retry)
                )
                data = event = id_ = retry = None
                self._data_joined = 0
                continue
            # A line without a colon is a field name with an empty value: partition's too.
            name, _, value = line.partition(":")
            if value and value[0] == " ":
                value = value[1:]
            if name == "data":
                if data is None:
                    data = [value]
                else:
                    data.append(value)
            elif name == "id":
                if "\0" not in value:
                    id_ = value
            elif name == "event":
                event = value
            elif not name:
                if self.comments is not None:
                    self.comments.append(value)
            elif name == "retry":
                if value.isascii() and value.isdigit() and len(value) <= MAX_RETRY_DIGITS:
                    retry = self.retry = int(value)
        self._data, self._event, self._id, self._retry = data, event, id_, retry
        return frames


def join_tail(pieces: list[AnyStr], joined: int, separator: AnyStr) -> int:
    """Join the pieces from index *joined* on into one, in place; return the new count of
    joined pieces. Only new pieces are joined, so no character is copied more than once
    here."""
    pieces[joined:] = [separator.join(pieces[joined:])]
    return len(pieces)


class FrameTooLarge(ValueError):
    """A frame grew past the decoder's ``max_size``.

    :ivar frames: the frames the same chunk completed before it, in order: not lost.
    """

    def __init__(self, message: str, frames: list[ServerSentEvent]) -> None:
        super().__init__(message)
        self.frames = frames
