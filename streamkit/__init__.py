"""streamkit: streaming responses for Starlette, tied to their connection, on asyncio and trio.

The top level is the everyday core: the responses, the App, serving, and what a stream's end
reports. The wings are submodules: ``streamkit.broadcast`` (topics and brokers),
``streamkit.fallback`` (cached fallbacks), ``streamkit.resources`` (producers that own a
file, subprocess, query or upstream) and ``streamkit.testing``.
"""

from ._app import App as App
from ._ends import EndReason as EndReason
from ._ends import StreamEnd as StreamEnd
from ._exceptions import LifespanError as LifespanError
from ._exceptions import MetricsUnavailableError as MetricsUnavailableError
from ._exceptions import ServeError as ServeError
from ._exceptions import StreamkitError as StreamkitError
from ._metrics import AppStatistics as AppStatistics
from ._metrics import StreamMetrics as StreamMetrics
from ._options import StreamOptions as StreamOptions
from ._registry import ActiveStream as ActiveStream
from ._registry import RegistryStatistics as RegistryStatistics
from ._registry import StreamRegistry as StreamRegistry
from ._registry import registry as registry
from ._responses import EventSourceResponse as EventSourceResponse
from ._responses import NDJSONResponse as NDJSONResponse
from ._responses import StreamResponse as StreamResponse
from ._routes import StreamRouteInfo as StreamRouteInfo
from ._run import run as run
from ._sender import StreamSender as StreamSender
from ._sender import shielded_cleanup as shielded_cleanup
from ._serve import ServerAddress as ServerAddress
from ._serve import graceful_shutdown_trigger as graceful_shutdown_trigger
from ._serve import serve as serve
from ._sse import ServerSentEvent as ServerSentEvent
from ._sse import last_event_id as last_event_id
from ._tls import TLSConfig as TLSConfig

__all__ = (
    "ActiveStream",
    "App",
    "AppStatistics",
    "EndReason",
    "EventSourceResponse",
    "LifespanError",
    "MetricsUnavailableError",
    "NDJSONResponse",
    "RegistryStatistics",
    "ServeError",
    "ServerAddress",
    "ServerSentEvent",
    "StreamEnd",
    "StreamMetrics",
    "StreamOptions",
    "StreamRegistry",
    "StreamResponse",
    "StreamRouteInfo",
    "StreamSender",
    "StreamkitError",
    "TLSConfig",
    "graceful_shutdown_trigger",
    "last_event_id",
    "registry",
    "run",
    "serve",
    "shielded_cleanup",
)

#: Where the names that left the top level in 0.1.0 live now, for a clear error.
_MOVED = {
    **dict.fromkeys(
        "Broker BrokerStatistics MemoryBroker RedisBroker ResetReason SlowSubscriberError "
        "SlowSubscriberPolicy Subscription topic_response".split(),
        "streamkit.broadcast",
    ),
    **dict.fromkeys(
        "CacheStore CachedValue Fallback FallbackResult FallbackUnavailableError MemoryStore "
        "Refresher RefresherStatistics".split(),
        "streamkit.fallback",
    ),
    **dict.fromkeys(
        "PostgresRows ProcessExitError RowSource SQLiteRows UpstreamError file_chunks "
        "open_subprocess open_upstream subprocess_lines".split(),
        "streamkit.resources",
    ),
}
_RENAMED = {
    "StreamRoute": "streamkit.StreamRouteInfo",
    "fallback_response": "streamkit.fallback.respond_with_fallback",
    "proxy_bytes": "streamkit.resources.upstream_bytes",
    "proxy_events": "streamkit.resources.upstream_events",
    "stream_rows": "streamkit.resources.query_rows",
}


def __getattr__(name: str) -> object:
    # ImportError, not AttributeError: ``from streamkit import X`` replaces an AttributeError
    # with its own message, which would not say where X went.
    if name in _MOVED:
        raise ImportError(f"streamkit.{name} moved: import it from {_MOVED[name]}")
    if name in _RENAMED:
        raise ImportError(f"streamkit.{name} was renamed: use {_RENAMED[name]}")
    raise AttributeError(f"module 'streamkit' has no attribute {name!r}")
