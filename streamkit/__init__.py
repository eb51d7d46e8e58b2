"""streamkit: streaming responses for Starlette, tied to their connection, on asyncio and trio."""

from ._app import App as App
from ._broker import Broker as Broker
from ._broker import MemoryBroker as MemoryBroker
from ._broker import topic_response as topic_response
from ._cache import CachedValue as CachedValue
from ._cache import CacheStore as CacheStore
from ._cache import MemoryStore as MemoryStore
from ._cache import Refresher as Refresher
from ._cache import RefresherStatistics as RefresherStatistics
from ._ends import EndReason as EndReason
from ._ends import StreamEnd as StreamEnd
from ._exceptions import FallbackUnavailableError as FallbackUnavailableError
from ._exceptions import LifespanError as LifespanError
from ._exceptions import MetricsUnavailableError as MetricsUnavailableError
from ._exceptions import ProcessExitError as ProcessExitError
from ._exceptions import ServeError as ServeError
from ._exceptions import SlowSubscriberError as SlowSubscriberError
from ._exceptions import StreamkitError as StreamkitError
from ._exceptions import UpstreamError as UpstreamError
from ._fallback import Fallback as Fallback
from ._fallback import FallbackResult as FallbackResult
from ._fallback import fallback_response as fallback_response
from ._files import file_chunks as file_chunks
from ._metrics import AppStatistics as AppStatistics
from ._metrics import StreamMetrics as StreamMetrics
from ._options import StreamOptions as StreamOptions
from ._postgres import PostgresRows as PostgresRows
from ._proxy import open_upstream as open_upstream
from ._proxy import proxy_bytes as proxy_bytes
from ._proxy import proxy_events as proxy_events
from ._redis_broker import RedisBroker as RedisBroker
from ._registry import ActiveStream as ActiveStream
from ._registry import RegistryStatistics as RegistryStatistics
from ._registry import StreamRegistry as StreamRegistry
from ._registry import registry as registry
from ._responses import EventSourceResponse as EventSourceResponse
from ._responses import NDJSONResponse as NDJSONResponse
from ._responses import StreamResponse as StreamResponse
from ._routes import StreamRoute as StreamRoute
from ._run import run as run
from ._sender import StreamSender as StreamSender
from ._sender import shielded_cleanup as shielded_cleanup
from ._serve import ServerAddress as ServerAddress
from ._serve import graceful_shutdown_trigger as graceful_shutdown_trigger
from ._serve import serve as serve
from ._sqlite import RowSource as RowSource
from ._sqlite import SQLiteRows as SQLiteRows
from ._sqlite import stream_rows as stream_rows
from ._sse import ServerSentEvent as ServerSentEvent
from ._sse import last_event_id as last_event_id
from ._subprocess import open_subprocess as open_subprocess
from ._subprocess import subprocess_lines as subprocess_lines
from ._subscription import Subscription as Subscription
from ._topics import BrokerStatistics as BrokerStatistics
from ._topics import ResetReason as ResetReason
from ._topics import SlowSubscriberPolicy as SlowSubscriberPolicy

__all__ = (
    "ActiveStream",
    "App",
    "AppStatistics",
    "Broker",
    "BrokerStatistics",
    "CacheStore",
    "CachedValue",
    "EndReason",
    "EventSourceResponse",
    "Fallback",
    "FallbackResult",
    "FallbackUnavailableError",
    "LifespanError",
    "MemoryBroker",
    "MemoryStore",
    "MetricsUnavailableError",
    "NDJSONResponse",
    "PostgresRows",
    "ProcessExitError",
    "RedisBroker",
    "Refresher",
    "RefresherStatistics",
    "RegistryStatistics",
    "ResetReason",
    "RowSource",
    "SQLiteRows",
    "ServeError",
    "ServerAddress",
    "ServerSentEvent",
    "SlowSubscriberError",
    "SlowSubscriberPolicy",
    "StreamEnd",
    "StreamMetrics",
    "StreamOptions",
    "StreamRegistry",
    "StreamResponse",
    "StreamRoute",
    "StreamSender",
    "StreamkitError",
    "Subscription",
    "UpstreamError",
    "fallback_response",
    "file_chunks",
    "graceful_shutdown_trigger",
    "last_event_id",
    "open_subprocess",
    "open_upstream",
    "proxy_bytes",
    "proxy_events",
    "registry",
    "run",
    "serve",
    "shielded_cleanup",
    "stream_rows",
    "subprocess_lines",
    "topic_response",
)
