"""Test streaming endpoints against a real server, on asyncio and trio, with clients that
leave the way real clients do.

The pytest plugin (registered through the ``pytest11`` entry point) adds the fixtures
``open_live_server`` and ``no_leaks``; see :mod:`streamkit.testing._plugin`.
"""

from .._exceptions import LeakError as LeakError
from ._asgi import FakeConnection as FakeConnection
from ._client import StreamClient as StreamClient
from ._client import open_stream as open_stream
from ._h2 import H2Connection as H2Connection
from ._h2 import H2StreamClient as H2StreamClient
from ._h2 import open_h2_connection as open_h2_connection
from ._h2 import open_h2_stream as open_h2_stream
from ._leaks import ResourceSnapshot as ResourceSnapshot
from ._leaks import open_leak_check as open_leak_check
from ._parsing import NDJSONReader as NDJSONReader
from ._parsing import SSEReader as SSEReader
from ._server import LiveServer as LiveServer
from ._server import open_server as open_server

__all__ = (
    "FakeConnection",
    "H2Connection",
    "H2StreamClient",
    "LeakError",
    "LiveServer",
    "NDJSONReader",
    "ResourceSnapshot",
    "SSEReader",
    "StreamClient",
    "open_h2_connection",
    "open_h2_stream",
    "open_leak_check",
    "open_server",
    "open_stream",
)
