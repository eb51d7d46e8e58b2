"""What a stream needs of the event loop it runs on, found once when the stream starts.

Everywhere else, library code asks anyio, and anyio finds the running loop anew on every call
(through sniffio). That costs little once, but a stream's write path asked it several times per
item. This is the one runtime module that names asyncio and trio, because they differ in one
thing the runtime must know (``_backends`` is the other such module, for serving):

- whether a producer may write to the client from its own task. On asyncio, every ASGI server's
  ``send`` can be cancelled while it waits for the client (hypercorn and uvicorn copy the bytes
  into the transport before they wait), so a producer stuck behind a client that stopped
  reading is released by the send timeout like any waiter. hypercorn's trio worker shields its
  socket writes: there a producer would be held until the kernel gave the connection up, so
  every write goes through the stream's writer task;
- how to tell that the loop has turned since a write: on asyncio, a callback queued after the
  write has run. A producer that sends again before that never yielded in between, and its items
  are queued for the writer to join into one write rather than written one by one.
"""

from __future__ import annotations

from collections.abc import Callable

import sniffio

__all__ = ["LoopFacts", "loop_facts"]


class LoopFacts:
    """The running loop's clock and, where a producer may write itself, its ``call_soon``.

    :ivar clock: the loop's clock, the one ``anyio.current_time()`` reads.
    :ivar call_soon: ``call_soon(callback)`` runs *callback* at the loop's next turn; ``None``
        where a producer must not write from its own task.
    """

    __slots__ = ("call_soon", "clock")

    def __init__(
        self, clock: Callable[[], float], call_soon: Callable[[Callable[[], None]], object] | None
    ) -> None:
        self.clock = clock
        self.call_soon = call_soon


def loop_facts() -> LoopFacts:
    """The facts of the loop running the calling task."""
    if sniffio.current_async_library() == "trio":
        import trio

        return LoopFacts(trio.current_time, None)
    import asyncio

    loop = asyncio.get_running_loop()
    return LoopFacts(loop.time, loop.call_soon)
