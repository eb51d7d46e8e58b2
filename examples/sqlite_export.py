"""A large table exported as NDJSON, in batches, with the query ended when the client leaves.

Run it (it makes a demo database of 200,000 orders the first time), then export::

    python examples/sqlite_export.py
    curl -N 'http://127.0.0.1:8000/orders.ndjson?since=1000' | head

One JSON object a line, read from SQLite 500 rows at a time in a worker thread, on a
connection of the stream's own. ``head`` closes the pipe after ten lines: the stream ends as
``client_disconnected``, the query stops within one batch, and its cursor, read transaction
(with the shared lock that keeps writers out) and connection are closed before the end is
logged. ``--database PATH`` exports your own file's ``orders`` table instead.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from streamkit import NDJSONResponse, run
from streamkit.resources import SQLiteRows, query_rows

DEMO_DATABASE = Path(tempfile.gettempdir()) / "streamkit-orders.db"
DEMO_ORDERS = 200_000
#: What an export reads: the columns of the ``orders`` table, after a given id.
QUERY = "SELECT id, customer, total_cents, created FROM orders WHERE id > ? ORDER BY id"


#: SQLite's largest INTEGER: no order id is larger, and SQLite refuses a larger number.
MAX_ORDER_ID = 2**63 - 1


def order_id(text: str) -> int | None:
    """*text* as an order id, or ``None`` if it is not one.

    ASCII digits: ``str.isdigit()`` alone takes ``'²'``, which ``int()`` refuses. At most
    SQLite's largest integer: past it ``int()`` refuses 4,300 digits, and SQLite a smaller
    number inside the stream, after its ``200``.
    """
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(MAX_ORDER_ID)):
        return None
    value = int(digits)
    return value if value <= MAX_ORDER_ID else None


def create_app(database: str | os.PathLike[str]) -> Starlette:
    """Export the ``orders`` table of *database*.

    :param database: the SQLite file.
    """

    async def orders(request: Request) -> Response:
        given = request.query_params.get("since", "0")
        since = order_id(given)
        if since is None:
            return PlainTextResponse(f"since must be an order id, got {given!r}", 400)
        rows = SQLiteRows(database, QUERY, (since,), batch_size=500)
        return NDJSONResponse(
            query_rows(rows),
            error_item={"error": "the export failed"},
            shutdown_item={"error": "the server is shutting down", "resume_since": "last id"},
            send_timeout=30.0,
        )

    return Starlette(routes=[Route("/orders.ndjson", orders)])


def database_problem(path: Path) -> str | None:
    """Why *path* cannot be exported, or ``None`` if it can.

    Asked at startup, where a mistyped ``--database`` can be said: at a request, sqlite3
    would make an empty file there, and every export would fail after its ``200``.
    """
    if not path.is_file():
        return f"no such file: {str(path)!r}"
    try:
        # Read-only: a check must not make the file, nor write to it.
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            db.execute(QUERY + " LIMIT 0", (0,))
    except sqlite3.Error as exc:
        return f"{str(path)!r} cannot be exported: {exc}"
    return None


def make_demo_database(path: Path, orders: int = DEMO_ORDERS) -> None:
    """Create *path* with an ``orders`` table of *orders* rows, unless it exists."""
    if path.exists():
        return
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total_cents INTEGER, "
            "created TEXT)"
        )
        connection.executemany(
            "INSERT INTO orders (customer, total_cents, created) VALUES (?, ?, ?)",
            (
                (f"customer-{n % 997}", (n * 7919) % 100_000, f"2026-01-{n % 28 + 1:02d}")
                for n in range(orders)
            ),
        )
    connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # argparse converts a str default as it does a given value: a bad $PORT is a usage error.
    parser.add_argument("--port", type=int, default=os.environ.get("PORT", "8000"))
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--database", type=Path, default=None)
    arguments = parser.parse_args()
    database = arguments.database
    if database is None:
        database = DEMO_DATABASE
        make_demo_database(database)
    elif (problem := database_problem(database)) is not None:
        parser.error(f"argument --database: {problem}")
    app = create_app(database)
    # Serves until Ctrl-C, then drains the streams; logs every stream's end.
    run(app, backend=arguments.backend, bind=f"127.0.0.1:{arguments.port}")
