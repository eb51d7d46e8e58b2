"""streamkit: streaming responses for Starlette, tied to their connection, on asyncio and trio."""

from ._ends import EndReason as EndReason
from ._ends import StreamEnd as StreamEnd
from ._exceptions import ServeError as ServeError
from ._exceptions import StreamkitError as StreamkitError
from ._options import StreamOptions as StreamOptions
from ._registry import ActiveStream as ActiveStream
from ._registry import RegistryStatistics as RegistryStatistics
from ._registry import StreamRegistry as StreamRegistry
from ._registry import registry as registry
from ._responses import EventSourceResponse as EventSourceResponse
from ._responses import NDJSONResponse as NDJSONResponse
from ._responses import StreamResponse as StreamResponse
from ._runtime import StreamSender as StreamSender
from ._runtime import shielded_cleanup as shielded_cleanup
from ._serve import ServerAddress as ServerAddress
from ._serve import graceful_shutdown_trigger as graceful_shutdown_trigger
from ._serve import serve as serve
from ._sse import ServerSentEvent as ServerSentEvent
from ._sse import last_event_id as last_event_id

__all__ = (
    "ActiveStream",
    "EndReason",
    "EventSourceResponse",
    "NDJSONResponse",
    "RegistryStatistics",
    "ServeError",
    "ServerAddress",
    "ServerSentEvent",
    "StreamEnd",
    "StreamOptions",
    "StreamRegistry",
    "StreamResponse",
    "StreamSender",
    "StreamkitError",
    "graceful_shutdown_trigger",
    "last_event_id",
    "registry",
    "serve",
    "shielded_cleanup",
)
