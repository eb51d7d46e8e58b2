"""Requests an HTTP/2 client would not send: a header block of the test's own, on a new
stream of a :class:`~streamkit.testing.H2Connection`, whose client reads the answer."""

from __future__ import annotations

from collections.abc import Sequence

from streamkit.testing import H2Connection, H2StreamClient

#: A tunnel's CONNECT, the one request without a path.
CONNECT = [(":method", "CONNECT"), (":authority", "a:1")]


async def send_head(
    connection: H2Connection,
    head: Sequence[tuple[str, str] | tuple[bytes, bytes]],
    *,
    body: bytes | None = None,
    end_stream: bool = False,
    checked: bool = True,
) -> H2StreamClient:
    """Send *head* (and *body*, if given) on a new stream; the stream's client reads the
    response. *checked*: h2 checks the head as it sends it (against the extended CONNECT it
    also knows, say); not, from then on, on this connection, if false."""
    stream_id = connection._h2.get_next_available_stream_id()
    client = H2StreamClient(connection, stream_id)
    connection._streams[stream_id] = client
    if not checked:
        connection._h2.config.validate_outbound_headers = False
    connection._h2.send_headers(stream_id, list(head), end_stream=end_stream and body is None)
    if body is not None:
        connection._h2.send_data(stream_id, body, end_stream=end_stream)
    await connection._flush()
    return client
