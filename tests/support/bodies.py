"""The smallest body the runtime takes, for the unit tests that run the runtime on a
:class:`~streamkit.testing.FakeConnection` without a response class."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Message

from streamkit import EndReason, StreamEnd, StreamOptions, StreamSender


@dataclass
class Body:
    """A body whose items are ``str`` and whose frames are their bytes, each followed by
    ``|``; a closing frame is ``<reason>``, a heartbeat ``.``."""

    content: Callable[[StreamSender[str]], Any] | AsyncIterable[str]
    options: StreamOptions = field(default_factory=StreamOptions)
    ends: list[StreamEnd] = field(default_factory=list)

    @property
    def on_end(self) -> Callable[[StreamEnd], None]:
        return self.ends.append

    def start_message(self) -> Message:
        return {"type": "http.response.start", "status": 200, "headers": []}

    def encode(self, item: str) -> bytes:
        if not isinstance(item, str):
            raise TypeError(f"this body takes str items, got {item!r}")
        return item.encode() + b"|"

    def heartbeat_frame(self) -> bytes | None:
        return b"."

    def idle_frame(self, last: str | None) -> bytes | None:
        return None if last is None else b"stale:" + self.encode(last)

    def closing_frame(self, reason: EndReason) -> bytes | None:
        return f"<{reason.value}>".encode()

    @property
    def end(self) -> StreamEnd:
        """The one end report (fails if there is none, or more than one)."""
        (end,) = self.ends
        return end
