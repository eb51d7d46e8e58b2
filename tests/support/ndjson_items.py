"""Reading an NDJSON stream to its end: what ``StreamClient.events()`` is for SSE."""

from __future__ import annotations

from typing import Any

from streamkit.testing import StreamClient


async def remaining_items(client: StreamClient) -> list[Any]:
    """The stream's items from here until its body ends."""
    items = []
    while True:
        try:
            items.append(await client.read_item())
        except EOFError:
            return items
