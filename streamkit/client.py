"""Following streams from Python: an ``EventSource`` for services and tests.

:func:`open_event_stream` (SSE) and :func:`open_ndjson_stream` follow a stream over an
``httpx.AsyncClient`` and, when the connection ends without the server's word to stop,
reconnect with ``Last-Event-ID`` after the server's ``retry:`` or a :class:`Backoff`. The
parser they use, :class:`SSEDecoder`, is a pure WHATWG ``text/event-stream`` parser of its own.

Needs the ``client`` extra (``httpx``): ``pip install 'streamkit[client]'``.
"""

try:
    import httpx as _httpx  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without httpx
    raise ImportError(
        f"streamkit.client needs httpx ({exc}); install it with: pip install 'streamkit[client]'"
    ) from exc

from ._backoff import Backoff as Backoff
from ._eventsource import ClientStatistics as ClientStatistics
from ._eventsource import EventStream as EventStream
from ._eventsource import NDJSONStream as NDJSONStream
from ._eventsource import open_event_stream as open_event_stream
from ._eventsource import open_ndjson_stream as open_ndjson_stream
from ._exceptions import ReconnectError as ReconnectError
from ._exceptions import UpstreamError as UpstreamError
from ._sse_decoder import FrameTooLarge as FrameTooLarge
from ._sse_decoder import SSEDecoder as SSEDecoder

__all__ = (
    "Backoff",
    "ClientStatistics",
    "EventStream",
    "FrameTooLarge",
    "NDJSONStream",
    "ReconnectError",
    "SSEDecoder",
    "UpstreamError",
    "open_event_stream",
    "open_ndjson_stream",
)
