"""The demo service: ``python -m streamkit.demo`` serves a page of live streams on
http://127.0.0.1:8000.

The page shows a clock with heartbeats that reconnects with ``Last-Event-ID``, a token stream
from a bundled fake LLM, rows streamed from a bundled SQLite database, a cached fallback, and
the server's running streams with the reasons the finished ones ended. Close the tab, or press
a Stop button, and watch the streams end as ``client_disconnected`` with nothing left running.
"""

from ._app import DemoState as DemoState
from ._app import create_app as create_app
from ._main import main as main

__all__ = ("DemoState", "create_app", "main")
