"""Test streaming endpoints against a real server, on asyncio and trio, with clients that
leave the way real clients do."""

from ._client import StreamClient as StreamClient
from ._client import open_stream as open_stream
from ._parsing import NDJSONReader as NDJSONReader
from ._parsing import SSEReader as SSEReader
from ._server import LiveServer as LiveServer
from ._server import open_server as open_server

__all__ = (
    "LiveServer",
    "NDJSONReader",
    "SSEReader",
    "StreamClient",
    "open_server",
    "open_stream",
)
