"""Database rows as NDJSON through real hypercorn: the query stops, and its cursor,
transaction and connection end, however the stream does.

The release on each of the five endings is in test_resources_endings.py; here: a complete
export, the query stopping within one batch of what was sent, a batch (or the query's first
step) interrupted mid-way, a failing query, and another driver plugged into the protocol.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.resource_checks import database_locked, open_descriptors

from streamkit import EndReason, NDJSONResponse, StreamSender
from streamkit._faults import recorded_faults
from streamkit.resources import RowSource, SQLiteRows, query_rows
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROWS = 5_000
#: Generous: the measured cleanup of an interrupted batch is about a millisecond.
RELEASE_BOUND = 1.0


class Ticks:
    """Counts the rows SQLite has looked at, through a SQL function the query calls."""

    def __init__(self, *, delay: float = 0.0, busy_after: int = 5) -> None:
        self.count = 0
        self.delay = delay
        self.busy_after = busy_after
        #: Set once SQLite has looked at *busy_after* rows.
        self.busy = anyio.Event()
        self._lock = threading.Lock()

    def tick(self, row_id: int) -> bool:
        with self._lock:
            self.count += 1
            count = self.count
        if count == self.busy_after:
            anyio.from_thread.run_sync(self.busy.set)  # called in the query's worker thread
        if self.delay:
            time.sleep(self.delay)
        return True

    def install(self, connection: sqlite3.Connection) -> None:
        connection.create_function("tick", 1, self.tick)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "items.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, payload TEXT)")
        connection.executemany(
            "INSERT INTO items (payload) VALUES (?)", ((f"row {n}",) for n in range(ROWS))
        )
    connection.close()
    return path


def rows_app(source: RowSource[Any], **options: Any) -> Starlette:
    async def rows(request: Request) -> Response:
        return NDJSONResponse(query_rows(source), **options)

    return Starlette(routes=[Route("/rows", rows)])


async def test_every_row_is_exported_and_nothing_is_left_open(database: Path) -> None:
    source = SQLiteRows(database, "SELECT id, payload FROM items WHERE id <= ?", (1000,))
    async with open_server(rows_app(source)) as server:
        async with open_stream(server, "/rows") as client:
            items = [await client.read_item() for _ in range(1000)]
            assert await client.read_all() == b""
        end = await server.wait_ended(EndReason.COMPLETED)
    assert items[0] == {"id": 1, "payload": "row 0"}
    assert [item["id"] for item in items] == list(range(1, 1001))
    assert end.items_sent == 1000
    assert not database_locked(database)
    assert open_descriptors(database) == []


async def test_a_disconnect_stops_the_query_within_one_batch(database: Path) -> None:
    ticks = Ticks()
    batch_size, buffer_size = 100, 4
    source = SQLiteRows(
        database,
        "SELECT id, payload FROM items WHERE tick(id)",
        batch_size=batch_size,
        prepare=ticks.install,
    )
    async with open_server(rows_app(source, buffer_size=buffer_size)) as server:
        # A small receive buffer: the client stops reading, so the stream stops sending.
        async with open_stream(server, "/rows", receive_buffer=4096) as client:
            for _ in range(10):
                await client.read_item()
            await client.close()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    # Fetched beyond what was written: the items in the buffer, the one being written, and
    # at most one batch (+1: SQLite may step one row past a batch).
    assert ticks.count <= end.items_sent + buffer_size + 1 + batch_size + 1
    assert ticks.count < ROWS
    assert not database_locked(database)


@pytest.mark.parametrize(
    "sql",
    [
        # Stuck in a batch: each row takes 5 ms, a batch of them 50 s.
        "SELECT id FROM items WHERE tick(id)",
        # Stuck in the query's first step, before any row: sorting on a slow key.
        "SELECT id FROM items ORDER BY tick(id)",
    ],
    ids=["in-a-batch", "in-the-first-step"],
)
@pytest.mark.parametrize("lock_timeout", [5.0, 0.001])
async def test_a_slow_fetch_is_interrupted_when_the_client_leaves(
    database: Path, sql: str, lock_timeout: float, request: pytest.FixtureRequest
) -> None:
    # A lock_timeout shorter than the interrupt takes to be noticed (a row takes 5 ms here)
    # bounds only the waits for a lock, not the cleanup: the end is reported once the
    # connection is closed.
    ticks = Ticks(delay=0.005)
    source = SQLiteRows(
        database, sql, batch_size=10_000, prepare=ticks.install, lock_timeout=lock_timeout
    )
    async with open_server(rows_app(source)) as server:
        async with open_stream(server, "/rows") as client:
            with anyio.fail_after(5.0):
                await ticks.busy.wait()
            left_at = anyio.current_time()
            await client.close()
            end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
            ended_in = anyio.current_time() - left_at
    request.node.user_properties.append(("cleanup_duration", end.cleanup_duration))
    request.node.user_properties.append(("ended_after_leaving", ended_in))
    assert ended_in < RELEASE_BOUND
    assert end.cleanup_duration < RELEASE_BOUND
    assert end.items_sent == 0
    counted = ticks.count
    assert counted < 1000  # not the 10,000 of the batch, nor the 5,000 of the sort
    assert not database_locked(database)
    assert open_descriptors(database) == []
    assert ticks.count == counted  # and nothing runs on after the end


async def test_a_query_started_after_the_client_left_is_stopped_too(database: Path) -> None:
    # The client leaves while prepare runs: the interrupt lands on prepare's statement, which
    # swallows it (a best-effort pragma, say), and SQLite forgets an interrupt once no
    # statement runs. The query started next (a sort on a slow key: 5 s) must stop as well.
    preparing = anyio.Event()
    ticks = Ticks(delay=0.001)

    def prepare(connection: sqlite3.Connection) -> None:
        ticks.install(connection)
        anyio.from_thread.run_sync(preparing.set)
        try:  # runs until interrupted
            connection.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)"
                " SELECT count(*) FROM n"
            ).fetchone()
        except sqlite3.OperationalError:
            pass

    source = SQLiteRows(database, "SELECT id FROM items ORDER BY tick(id)", prepare=prepare)
    faults = set(recorded_faults())
    async with open_server(rows_app(source, cleanup_timeout=2.0)) as server:
        async with open_stream(server, "/rows") as client:
            with anyio.fail_after(5.0):
                await preparing.wait()
            left_at = anyio.current_time()
            await client.close()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=10.0)
        ended_in = anyio.current_time() - left_at
    assert set(recorded_faults()) == faults
    assert ended_in < RELEASE_BOUND
    assert end.cleanup_duration < RELEASE_BOUND
    assert ticks.count < 1000  # not the 5,000 of the sort
    assert not database_locked(database)
    assert open_descriptors(database) == []


#: Holds a writer's exclusive lock on the database named by its argument until its stdin
#: closes. Another process: SQLite keeps a closed connection's descriptor open while another
#: connection of the same process holds a lock on the file.
LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_query_waiting_for_a_lock_stops_when_the_client_leaves(
    database: Path, leave: str
) -> None:
    # Another connection holds the database: the query waits for the lock, up to
    # lock_timeout. A client that leaves ends that wait, as it interrupts a batch.
    connecting = anyio.Event()

    def prepare(connection: sqlite3.Connection) -> None:
        anyio.from_thread.run_sync(connecting.set)

    source = SQLiteRows(database, "SELECT id FROM items", lock_timeout=30.0, prepare=prepare)
    async with await anyio.open_process(
        [sys.executable, "-c", LOCKER, str(database)], stderr=None
    ) as locker:
        assert locker.stdin is not None
        assert locker.stdout is not None
        said = b""
        with anyio.fail_after(10.0):
            while not said.endswith(b"\n"):
                said += await locker.stdout.receive()
        assert said == b"locked\n"
        async with open_server(rows_app(source, cleanup_timeout=5.0)) as server:
            async with open_stream(server, "/rows") as client:
                with anyio.fail_after(5.0):
                    await connecting.wait()
                left_at = anyio.current_time()
                await (client.close() if leave == "close" else client.reset())
            end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=10.0)
            ended_in = anyio.current_time() - left_at
            # Reported ended once its connection was closed, the lock still held.
            assert open_descriptors(database) == []
        await locker.stdin.aclose()
    assert locker.returncode == 0
    assert ended_in < RELEASE_BOUND
    assert end.cleanup_duration < RELEASE_BOUND
    assert not database_locked(database)


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_source_a_producer_enters_itself_is_closed_when_the_client_leaves(
    database: Path, leave: str
) -> None:
    # Its exit runs in the cancelled producer, where no worker thread can be waited for: the
    # close must happen all the same, not when a garbage collection finds the connection.
    async def rows(request: Request) -> Response:
        async def produce(send: StreamSender[Any]) -> None:
            async with SQLiteRows(database, "SELECT * FROM items", batch_size=10) as source:
                while batch := await source.fetch_batch():
                    for row in batch:
                        await send(row)

        return NDJSONResponse(produce)

    async with open_server(Starlette(routes=[Route("/rows", rows)])) as server:
        async with open_stream(server, "/rows") as client:
            await client.read_item()
            assert database_locked(database)
            await (client.close() if leave == "close" else client.reset())
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        # Polled: the close runs in a thread that nothing waits for.
        with anyio.fail_after(RELEASE_BOUND):
            while database_locked(database) or open_descriptors(database):  # noqa: ASYNC110
                await anyio.sleep(0.005)


async def test_a_fetch_after_a_cancelled_one_raises_rather_than_end_the_rows(
    database: Path,
) -> None:
    # An empty batch says the rows are all there: after a cancelled fetch stopped the query,
    # the next must not say that.
    ticks = Ticks(delay=0.005)
    rows = SQLiteRows(database, "SELECT id FROM items WHERE tick(id)", prepare=ticks.install)
    with anyio.fail_after(10.0):
        async with rows:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(rows.fetch_batch)
                await ticks.busy.wait()
                task_group.cancel_scope.cancel()
            with pytest.raises(RuntimeError, match=r"^the query was stopped \(a fetch was"):
                await rows.fetch_batch()
    assert open_descriptors(database) == []


async def test_a_fetch_after_a_failed_query_raises_rather_than_end_the_rows(
    database: Path,
) -> None:
    # The query runs with the first fetch: once that failed, the next must not say, with an
    # empty batch, that the rows are all there.
    rows = SQLiteRows(database, "SELECT * FROM no_such_table")
    with anyio.fail_after(10.0):
        async with rows:
            with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
                await rows.fetch_batch()
            stopped = r"^the query was stopped \(a fetch was cancelled or failed"
            with pytest.raises(RuntimeError, match=stopped):
                await rows.fetch_batch()
    assert open_descriptors(database) == []


async def test_a_failing_query_ends_with_an_error_and_closes_the_connection(
    database: Path,
) -> None:
    source = SQLiteRows(database, "SELECT * FROM no_such_table")
    async with open_server(rows_app(source, error_item={"error": "query failed"})) as server:
        async with open_stream(server, "/rows") as client:
            assert await client.read_item() == {"error": "query failed"}
        end = await server.wait_ended(EndReason.ERROR)
    assert isinstance(end.exception, sqlite3.OperationalError)
    assert "no_such_table" in str(end.exception)
    assert open_descriptors(database) == []


class ListRows:
    """Another driver: rows from a list, exited like a real cursor would be."""

    def __init__(self, rows: Sequence[int], batch_size: int) -> None:
        self.rows = list(rows)
        self.batch_size = batch_size
        self.entered = anyio.Event()
        self.exited = anyio.Event()

    async def __aenter__(self) -> Self:
        self.entered.set()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await anyio.sleep(0.001)  # awaited cleanup: it runs shielded
        self.exited.set()

    async def fetch_batch(self) -> list[int]:
        batch, self.rows = self.rows[: self.batch_size], self.rows[self.batch_size :]
        await anyio.sleep(0.001)
        return batch


async def test_another_driver_plugs_in_through_the_protocol() -> None:
    source: RowSource[int] = ListRows(range(10**6), batch_size=10)
    assert isinstance(source, ListRows)
    async with open_server(rows_app(source)) as server:
        async with open_stream(server, "/rows") as client:
            assert [await client.read_item() for _ in range(25)] == list(range(25))
            await client.reset()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert source.exited.is_set()
    assert end.cleanup_duration < RELEASE_BOUND


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be an int of at least 1, got 0"),
        ({"lock_timeout": -1.0}, ValueError, "lock_timeout"),
        ({"database": 3}, TypeError, r"^database must be a path .* got 3$"),
        ({"database": ""}, ValueError, "^database must not be empty"),
        ({"sql": b"SELECT 1"}, TypeError, r"^sql must be a str, got bytes: b'SELECT 1'$"),
        # A str would be taken for a sequence of one-character parameters.
        ({"parameters": "ab"}, TypeError, r"^parameters must be a sequence .* got str: 'ab'$"),
        ({"parameters": 5}, TypeError, r"^parameters must be a sequence .* got int: 5$"),
        ({"prepare": "PRAGMA x"}, TypeError, r"^prepare must be callable, got str"),
        ({"batch_size": True}, TypeError, r"^batch_size must be an int, got bool: True$"),
        ({"lock_timeout": float("nan")}, ValueError, r"^lock_timeout must be .* got nan$"),
        ({"lock_timeout": "5"}, TypeError, r"^lock_timeout must be a number of seconds"),
        # No statement at all: no rows, and no error to say why.
        ({"sql": ""}, ValueError, r"^sql must hold a statement, got ''$"),
        ({"sql": " \n\t"}, ValueError, r"^sql must hold a statement, got ' \\n\\t'$"),
        # Which the stream would fail to encode, after its 200.
        ({"sql": "SELECT '\ud800'"}, ValueError, r"^sql must not hold a lone surrogate"),
        ({"sql": "SELECT 1\0 + 1"}, ValueError, r"^sql must not hold a NUL character, got "),
        ({"uri": "yes"}, TypeError, r"^uri must be a bool, got str: 'yes'$"),
        ({"database": "x\0.db"}, ValueError, r"^database must not hold a NUL character"),
    ],
)
def test_sqlite_rows_options_are_checked(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    # Where it is made, not once the stream has started, after its 200.
    with pytest.raises(error, match=message):
        SQLiteRows(**({"database": "x.db", "sql": "SELECT 1"} | arguments))


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"source": "SELECT 1"}, TypeError, r"^source must be a RowSource .* got str without"),
        ({"transform": 5}, TypeError, r"^transform must be callable, got int: 5$"),
    ],
)
def test_query_rows_options_are_checked(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        query_rows(**({"source": ListRows([], batch_size=1)} | arguments))


async def test_sqlite_rows_runs_its_query_once(database: Path) -> None:
    rows = SQLiteRows(database, "SELECT id FROM items WHERE id <= 3")
    async with rows:
        assert await rows.fetch_batch() == [{"id": 1}, {"id": 2}, {"id": 3}]
        assert await rows.fetch_batch() == []
    assert open_descriptors(database) == []
    with pytest.raises(RuntimeError, match="runs its query once"):
        async with rows:
            pass


@pytest.mark.parametrize("lock_timeout", [1.5, 30 * 24 * 3600.0])
async def test_prepare_waits_for_a_lock_as_long_as_lock_timeout(
    database: Path, lock_timeout: float
) -> None:
    # sqlite3 takes the timeout as an int of milliseconds: past 2**31 - 1 (about 24 days),
    # it overflowed, and a statement of prepare's failed at once on a lock.
    waits: list[int] = []

    def prepare(connection: sqlite3.Connection) -> None:
        waits.append(connection.execute("PRAGMA busy_timeout").fetchone()[0])

    rows = SQLiteRows(
        database, "SELECT id FROM items WHERE id <= 1", prepare=prepare, lock_timeout=lock_timeout
    )
    async with rows:
        assert await rows.fetch_batch() == [{"id": 1}]
    assert waits == [min(round(lock_timeout * 1000), 2**31 - 1)]
