"""Producers for streams that own a resource: a file, a subprocess, a database query, an
upstream HTTP stream. Each is opened when the stream starts and closed, shielded, on every end
of it: a client that leaves stops the subprocess, rolls back the query, aborts the upstream.

Each factory is named for what it sends, ``<source>_<unit>``: :func:`file_chunks`,
:func:`subprocess_lines`, :func:`query_rows`, :func:`upstream_events`, :func:`upstream_bytes`.
Some need an extra: :class:`PostgresRows` needs ``streamkit[postgres]``, the upstream producers
``streamkit[proxy]``; each says so when used without it.
"""

from ._exceptions import ProcessExitError as ProcessExitError
from ._exceptions import UpstreamError as UpstreamError
from ._files import file_chunks as file_chunks
from ._postgres import PostgresRows as PostgresRows
from ._proxy import open_upstream as open_upstream
from ._proxy import upstream_bytes as upstream_bytes
from ._proxy import upstream_events as upstream_events
from ._sqlite import RowSource as RowSource
from ._sqlite import SQLiteRows as SQLiteRows
from ._sqlite import query_rows as query_rows
from ._subprocess import open_subprocess as open_subprocess
from ._subprocess import subprocess_lines as subprocess_lines

__all__ = (
    "PostgresRows",
    "ProcessExitError",
    "RowSource",
    "SQLiteRows",
    "UpstreamError",
    "file_chunks",
    "open_subprocess",
    "open_upstream",
    "query_rows",
    "subprocess_lines",
    "upstream_bytes",
    "upstream_events",
)
