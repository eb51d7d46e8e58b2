"""A fake ASGI connection, for testing a stream's logic without a server.

The server-backed clients prove the disconnect path end to end; this is for the unit test of
the generator or producer behind it: the client "leaves" at a chosen point, counted in
messages, so the test needs no timing. It records everything the app sent.

Like a server implementing ASGI 2.4, it raises :exc:`OSError` (a :exc:`BrokenPipeError`)
from ``send`` once the client has gone; Starlette's ``StreamingResponse`` turns that into
``ClientDisconnect``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote

import anyio
from starlette.types import Message, Receive, Scope, Send

from .._checks import check_count, check_duration, check_type
from .._sse import ServerSentEvent
from ._client import check_header_types
from ._parsing import NDJSONReader, SSEReader

__all__ = ["FakeConnection"]


class FakeConnection:
    """One HTTP request to an ASGI app, whose client disconnects on cue.

    ``receive`` first delivers the request (``http.request``), then waits as a server's
    does until the client leaves, and from then on returns ``http.disconnect`` without
    waiting. The client leaves when the first of these happens:

    - the app has sent *disconnect_after_body* body messages that carry bytes (the streamkit
      runtime may write several items that were ready together in one message, so count on
      at least that many items, not exactly);
    - ``receive`` is called for the ``disconnect_after_receives + 1``-th time, so Starlette's
      ``await request.is_disconnected()`` is false that many times, then true::

          connection = FakeConnection(disconnect_after_receives=2)
          request = Request(connection.scope, connection.receive)
          assert [await request.is_disconnected() for _ in range(3)] == [False, False, True]

    - the test calls :meth:`disconnect`.

    :param path: the request path as a client sends it, percent-encoded, with an optional
        query string; the scope's ``path`` is decoded, as a server decodes it.
    :param method: the request method.
    :param headers: the request headers; values are sent in UTF-8.
    :param body: the request body, delivered by the first ``receive``.
    :param disconnect_after_body: leave once this many non-empty body messages were sent.
    :param disconnect_after_receives: leave at this many ``receive`` calls plus one.
    :raises TypeError: a ``disconnect_after_*`` count is not an ``int``, *path* or *method*
        not a ``str``, *body* not ``bytes``, or a header's name or value not a ``str``.
    :raises ValueError: a ``disconnect_after_*`` count is negative.
    :ivar scope: the ASGI HTTP scope (``spec_version`` 2.4).
    :ivar messages: every message the client received, in order.
    :ivar refused: the messages the app tried to send after the client had left.
    :ivar receive_calls: how many times ``receive`` was called.
    """

    def __init__(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        disconnect_after_body: int | None = None,
        disconnect_after_receives: int | None = None,
    ) -> None:
        for name, value in (
            ("disconnect_after_body", disconnect_after_body),
            ("disconnect_after_receives", disconnect_after_receives),
        ):
            if value is not None:
                check_count(name, value, least=0)
        # Checked here: the app would fail on a wrong one far from the test that gave it.
        check_type("path", path, str)
        check_type("method", method, str)
        check_type("body", body, bytes)
        check_header_types(headers or {})
        route, _, query = path.partition("?")
        raw_headers = [(b"host", b"testserver")]
        # Values in UTF-8, as a browser sends a Last-Event-ID and the testing kit's clients
        # send them over a connection.
        raw_headers += [
            (name.lower().encode("latin-1"), value.encode())
            for name, value in (headers or {}).items()
        ]
        self.scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method.upper(),
            "scheme": "http",
            # Decoded, as a server hands it over (and a route's parameters are matched on);
            # raw_path keeps the escapes as they came.
            "path": unquote(route),
            "raw_path": route.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": raw_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "state": {},
        }
        self._request = f"{method.upper()} {path}"
        self.messages: list[Message] = []
        self.refused: list[Message] = []
        self.receive_calls = 0
        self._body = body
        self._body_sent = 0
        self._after_body = disconnect_after_body
        self._after_receives = disconnect_after_receives
        self._request_delivered = False
        self._ran = False
        self._left = anyio.Event()
        if disconnect_after_body == 0:
            self._left.set()

    @property
    def disconnected(self) -> bool:
        """Whether the client has left."""
        return self._left.is_set()

    def disconnect(self) -> None:
        """Make the client leave now: a waiting ``receive`` returns ``http.disconnect``."""
        self._left.set()

    async def receive(self) -> Message:
        """The ASGI ``receive`` callable to hand the app."""
        self.receive_calls += 1
        if self._after_receives is not None and self.receive_calls > self._after_receives:
            self._left.set()
        # Return what is ready without a checkpoint: is_disconnected() calls this in a
        # cancelled scope and sees only what comes back without waiting.
        if self._left.is_set():
            return {"type": "http.disconnect"}
        if not self._request_delivered:
            self._request_delivered = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        """The ASGI ``send`` callable to hand the app.

        :raises BrokenPipeError: the client has left.
        """
        if self._left.is_set():
            self.refused.append(message)
            raise BrokenPipeError(f"the client disconnected; cannot send {message['type']}")
        self.messages.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self._body_sent += 1
            if self._after_body is not None and self._body_sent >= self._after_body:
                self._left.set()

    async def run(
        self, app: Callable[[Scope, Receive, Send], Awaitable[object]], *, within: float = 5.0
    ) -> None:
        """Call *app* with this connection and wait for it to return; what it returns, if
        anything, is not looked at.

        :raises TimeoutError: it did not return within *within* seconds; the message says what
            it had sent and whether the client had left.
        :raises TypeError: *within* is not a number (before the app is called).
        :raises ValueError: *within* is not a positive, finite number of seconds (before the
            app is called).
        :raises RuntimeError: this connection already ran an app: it carries one request.
        """
        check_duration("within", within)
        if self._ran:
            # Its request went to the first app: a second would wait for it until its deadline.
            raise RuntimeError(
                f"this FakeConnection already ran an app for {self._request}: it carries one "
                "request; make a new one for the next"
            )
        self._ran = True
        with anyio.move_on_after(within) as scope:
            await app(self.scope, self.receive, self.send)
        if scope.cancelled_caught:
            # Whether the client had left says which cue the app missed: none came, or the
            # app did not heed it.
            raise TimeoutError(
                f"the app did not return within {within} s of its call for {self._request}; "
                f"it had sent {len(self.messages)} messages, {self._body_sent} of them with "
                f"body bytes, and the client {'had left' if self.disconnected else 'had not left'}"
            )

    @property
    def status(self) -> int | None:
        """The response status, once the app started the response."""
        for message in self.messages:
            if message["type"] == "http.response.start":
                return int(message["status"])
        return None

    @property
    def headers(self) -> dict[str, str]:
        """The response headers, lower-cased names."""
        for message in self.messages:
            if message["type"] == "http.response.start":
                return {
                    bytes(name).decode("latin-1").lower(): bytes(value).decode("latin-1")
                    for name, value in message.get("headers", [])
                }
        return {}

    @property
    def body(self) -> bytes:
        """The body bytes the client received."""
        return b"".join(self.body_chunks)

    @property
    def body_chunks(self) -> list[bytes]:
        """Each non-empty body message the client received, in order."""
        return [
            bytes(message["body"])
            for message in self.messages
            if message["type"] == "http.response.body" and message.get("body")
        ]

    @property
    def complete(self) -> bool:
        """Whether the app ended the body (``more_body`` false) before the client left."""
        return any(
            message["type"] == "http.response.body" and not message.get("more_body", False)
            for message in self.messages
        )

    def events(self) -> list[ServerSentEvent]:
        """The complete SSE frames in the body the client received."""
        return SSEReader().feed(self.body)

    def items(self) -> list[Any]:
        """The complete NDJSON values in the body the client received."""
        return NDJSONReader().feed(self.body)
