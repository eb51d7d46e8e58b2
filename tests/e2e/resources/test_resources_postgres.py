"""PostgreSQL rows as NDJSON through real hypercorn, against a real, throwaway PostgreSQL
server (tests/postgres_server.py; one per test session): the statement stops on the server,
and the cursor, the transaction and the connection end, however the stream does.

Everything is checked from a second connection: while the stream runs, its session is in a
transaction and holds locks (``pg_stat_activity``, ``pg_locks``); once it has ended, its locks
are gone at once (it rolled back before the end was reported), and the session soon after.
How far the query got is counted by a sequence the query calls on every row it looks at
(``nextval`` is not rolled back, and is seen from other sessions at once).

PostgreSQL does not notice a client that has gone while a statement runs, so a session still
there after a slow statement's stream ended would mean the statement ran on: the release
checks fail unless the statement was cancelled on the server.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.abc
import psycopg
import psycopg.errors
import psycopg.sql
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support import postgres_server
from support.ports import free_port
from support.stream_endings import (
    ENDINGS,
    end_stream,
    open_stream_to_end,
    record_release,
    stream_options,
)

from streamkit import EndReason, NDJSONResponse, StreamEnd, StreamSender
from streamkit._faults import recorded_faults
from streamkit.resources import PostgresRows, query_rows
from streamkit.testing import LiveServer, StreamClient, open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROWS = 40_000
PAYLOAD = 400
#: Generous: the measured release is a few milliseconds (see docs/resources.md).
RELEASE_BOUND = 1.0

# Counts a row in the sequence *counter*, and sleeps *delay* seconds every *every* rows: the
# query's progress, seen from outside, and its pace.
TICK_FUNCTION = """
CREATE FUNCTION tick(counter text, delay float8, every int) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF nextval(counter::regclass) % every = 0 AND delay > 0 THEN
        PERFORM pg_sleep(delay);
    END IF;
    RETURN true;
END $$
"""


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """The connection string of a started server with the ``items`` table."""
    with postgres_server.running() as server:
        with psycopg.connect(server.dsn, autocommit=True) as connection:
            connection.execute("CREATE TABLE items (id int PRIMARY KEY, payload text)")
            connection.execute(
                "INSERT INTO items SELECT n, repeat('p', %s) FROM generate_series(1, %s) n",
                (PAYLOAD, ROWS),
            )
            connection.execute("ANALYZE items")
            connection.execute(TICK_FUNCTION)
        yield server.dsn


_names = itertools.count()


class Observer:
    """A second connection, watching the stream's session (found by its application name)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.name = f"streamkit-test-{next(_names)}"
        #: The sequence the query's ``tick`` counts the rows it looked at in.
        self.counter = f"ticks_{self.name.rpartition('-')[2]}"
        self.connection = psycopg.connect(
            dsn, autocommit=True, options="-c lock_timeout=5s -c statement_timeout=5s"
        )
        self.connection.execute(f"CREATE SEQUENCE {self.counter}")

    @property
    def stream_dsn(self) -> str:
        """The connection string for the stream's own connection."""
        # A lock another (leaked) session holds fails the test instead of hanging it.
        return f"{self.dsn} application_name={self.name} options='-c lock_timeout=5s'"

    def source(self, sql: str, **options: Any) -> PostgresRows:
        """A source for *sql*, whose ``%s`` is the name of this observer's counter."""
        return PostgresRows(self.stream_dsn, sql, (self.counter,), **options)

    def close(self) -> None:
        self.connection.close()

    def _sessions(self) -> list[tuple[str, bool]]:
        return self.connection.execute(
            "SELECT state, xact_start IS NOT NULL FROM pg_stat_activity"
            " WHERE application_name = %s",
            (self.name,),
        ).fetchall()

    def _backends(self) -> list[int]:
        rows = self.connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.name,)
        ).fetchall()
        return [int(pid) for (pid,) in rows]

    def _relation_locks(self) -> int:
        row = self.connection.execute(
            "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid)"
            " WHERE application_name = %s AND locktype = 'relation'",
            (self.name,),
        ).fetchone()
        return int(row[0]) if row else 0

    def _ticks(self) -> int:
        row = self.connection.execute(f"SELECT last_value, is_called FROM {self.counter}")
        last_value, is_called = row.fetchone() or (0, False)
        return int(last_value) if is_called else 0

    # The connection's calls block: they run in worker threads, away from the server's loop.

    async def sessions(self) -> list[tuple[str, bool]]:
        """The state of each session of the stream, and whether it is in a transaction."""
        return await anyio.to_thread.run_sync(self._sessions)

    async def backends(self) -> list[int]:
        """The server processes of the stream's sessions."""
        return await anyio.to_thread.run_sync(self._backends)

    async def relation_locks(self) -> int:
        """The locks the stream's session holds on tables and indexes."""
        return await anyio.to_thread.run_sync(self._relation_locks)

    async def ticks(self) -> int:
        """The rows the query has looked at so far."""
        return await anyio.to_thread.run_sync(self._ticks)

    async def wait_ticks(self, count: int) -> None:
        """Return once the query has looked at *count* rows."""
        # Polled: the server's progress is only seen by asking it.
        while True:
            if await self.ticks() >= count:
                return
            await anyio.sleep(0.005)

    async def wait_gone(self) -> None:
        """Return once the stream's session is gone, whatever it held until then."""
        # Polled: nothing signals this connection when another session ends.
        while await self.sessions():  # noqa: ASYNC110
            await anyio.sleep(0.005)

    async def assert_held(self) -> None:
        [(state, in_transaction)] = await self.sessions()
        assert in_transaction, f"the stream's session is not in a transaction: {state}"
        assert await self.relation_locks()

    async def wait_released(self) -> None:
        """Return once the stream's session is gone; its locks must be gone already."""
        # Rolled back before the end was reported: no wait.
        assert await self.relation_locks() == 0, "a transaction (and its locks) was left open"
        # The server process ends just after the client closed the connection: polled, as
        # nothing signals this connection when another session ends.
        while sessions := await self.sessions():
            assert all(state == "idle" for state, _ in sessions), sessions
            await anyio.sleep(0.002)


@pytest.fixture
def observer(postgres: str) -> Iterator[Observer]:
    observer = Observer(postgres)
    yield observer
    observer.close()


def parent_process(pid: int) -> int:
    """The process that started *pid*: for a session's server process, the server's main one."""
    with open(f"/proc/{pid}/status") as status:
        [parent] = [line.split()[1] for line in status if line.startswith("PPid:")]
    return int(parent)


def rows_app(make_source: Callable[[], PostgresRows], **options: Any) -> Starlette:
    async def rows(request: Request) -> Response:
        return NDJSONResponse(query_rows(make_source()), **options)

    return Starlette(routes=[Route("/rows", rows)])


async def test_every_row_is_exported_and_nothing_is_left_open(observer: Observer) -> None:
    def source() -> PostgresRows:
        sql = "SELECT id, length(payload) AS size FROM items WHERE tick(%s, 0, 1) AND id <= 1000"
        return observer.source(sql, batch_size=300)

    async with open_server(rows_app(source)) as server:
        async with open_stream(server, "/rows") as client:
            items = [await client.read_item() for _ in range(1000)]
            assert await client.read_all() == b""
        end = await server.wait_ended(EndReason.COMPLETED)
        with anyio.fail_after(RELEASE_BOUND):
            await observer.wait_released()
    assert items[0] == {"id": 1, "size": PAYLOAD}
    assert [item["id"] for item in items] == list(range(1, 1001))
    assert end.items_sent == 1000


# -- every end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_released_on_every_end(
    observer: Observer, ending: str, request: pytest.FixtureRequest
) -> None:
    def source() -> PostgresRows:
        # Paced (1 ms every 50 rows), so that reading all of it takes longer than a deadline.
        sql = "SELECT id, payload FROM items WHERE tick(%s, 0.001, 50) ORDER BY id"
        return observer.source(sql, batch_size=200)

    app = rows_app(source, **stream_options(ending))
    async with open_stream_to_end(app, "/rows", ending) as (server, client):
        with anyio.fail_after(10.0):
            assert (await client.read_item())["id"] == 1
        await observer.assert_held()
        acted_at = anyio.current_time()
        end = await end_stream(server, client, ending)
        reported_at = anyio.current_time()
        with anyio.fail_after(RELEASE_BOUND):
            await observer.wait_released()
        released_at = anyio.current_time()
    record_release(request, ending, end, acted_at, reported_at, released_at)
    assert end.cleanup_duration < RELEASE_BOUND
    assert end.items_sent < ROWS


# -- stopping the query -------------------------------------------------------------------------


async def test_a_disconnect_stops_the_query_within_one_batch(observer: Observer) -> None:
    batch_size, buffer_size = 100, 4
    source = observer.source(
        "SELECT id, payload FROM items WHERE tick(%s, 0, 1)", batch_size=batch_size
    )
    async with open_server(rows_app(lambda: source, buffer_size=buffer_size)) as server:
        # A small receive buffer: the client stops reading, so the stream stops sending.
        async with open_stream(server, "/rows", receive_buffer=4096) as client:
            for _ in range(10):
                await client.read_item()
            await client.close()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        with anyio.fail_after(RELEASE_BOUND):
            await observer.wait_released()
    # Looked at beyond what was written: the items in the buffer, the one being written,
    # and at most one batch.
    ticks = await observer.ticks()
    assert ticks <= end.items_sent + buffer_size + 1 + batch_size
    assert ticks < ROWS


@pytest.mark.parametrize(
    "sql",
    [
        # Stuck in a batch: each row takes 5 ms, a batch of them 50 s.
        "SELECT id FROM items WHERE tick(%s, 0.005, 1)",
        # Stuck in the query's first step, before any row: sorting on a slow key.
        "SELECT id FROM items ORDER BY tick(%s, 0.005, 1)",
    ],
    ids=["in-a-batch", "in-the-first-step"],
)
async def test_a_slow_statement_is_cancelled_on_the_server_when_the_client_leaves(
    observer: Observer, sql: str, request: pytest.FixtureRequest
) -> None:
    source = observer.source(sql, batch_size=10_000)
    async with open_server(rows_app(lambda: source)) as server:
        async with open_stream(server, "/rows") as client:
            with anyio.fail_after(10.0):
                await observer.wait_ticks(5)
            await observer.assert_held()
            left_at = anyio.current_time()
            await client.close()
            end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
            ended_in = anyio.current_time() - left_at
            with anyio.fail_after(RELEASE_BOUND):
                await observer.wait_released()
            released_in = anyio.current_time() - left_at
    request.node.user_properties.append(("cleanup_duration", end.cleanup_duration))
    request.node.user_properties.append(("ended_after_leaving", ended_in))
    request.node.user_properties.append(("released_after_leaving", released_in))
    assert ended_in < RELEASE_BOUND
    assert end.cleanup_duration < RELEASE_BOUND
    assert end.items_sent == 0
    counted = await observer.ticks()
    assert counted < 1000  # not the 10,000 of the batch, nor the 40,000 of the sort
    await anyio.sleep(0.05)
    assert await observer.ticks() == counted  # and nothing runs on after the end


async def leave_while_frozen(
    server: LiveServer, client: StreamClient, processes: list[int]
) -> tuple[StreamEnd, float]:
    """Freeze *processes* (SIGSTOP), close the client, and wait for the stream's end; return
    it and the seconds from the close to it. The processes run again however this ends."""
    for process in processes:
        os.kill(process, signal.SIGSTOP)
    try:
        left_at = anyio.current_time()
        await client.close()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=10.0)
        return end, anyio.current_time() - left_at
    finally:
        for process in processes:
            os.kill(process, signal.SIGCONT)


@pytest.mark.parametrize(
    ("cleanup_timeout", "cancel_timeout"),
    [
        (2.0, 0.5),
        # A cancel_timeout as long as the cleanup's: cut short by what is left of it.
        (1.0, 2.0),
    ],
    ids=["cancel-timeout-within", "cancel-timeout-beyond"],
)
# The stream's server process alone, or with the server's main process, which answers cancel
# requests: then the request itself is never answered either.
@pytest.mark.parametrize("frozen", ["backend", "server"])
async def test_a_frozen_server_is_given_up_on_within_the_cleanup_timeout(
    observer: Observer,
    cleanup_timeout: float,
    cancel_timeout: float,
    frozen: str,
    request: pytest.FixtureRequest,
) -> None:
    # The stream's server process stops answering (SIGSTOP): neither the statement nor its
    # cancellation returns. Once cancelling has had its share of the cleanup's deadline, the
    # connection is cut: the cleanup ends within cleanup_timeout, with no fault; the session
    # ends once the process runs again.
    source = observer.source(
        "SELECT id FROM items WHERE tick(%s, 0.005, 1)",
        batch_size=10_000,
        cancel_timeout=cancel_timeout,
    )
    faults = set(recorded_faults())
    app = rows_app(lambda: source, cleanup_timeout=cleanup_timeout)
    async with open_server(app) as server:
        async with open_stream(server, "/rows") as client:
            with anyio.fail_after(10.0):
                await observer.wait_ticks(5)
            [backend] = await observer.backends()
            processes = [backend] if frozen == "backend" else [parent_process(backend), backend]
            end, ended_in = await leave_while_frozen(server, client, processes)
        with anyio.fail_after(5.0):
            await observer.wait_gone()
    request.node.user_properties.append(("ended_after_leaving", ended_in))
    assert ended_in < cleanup_timeout
    assert end.cleanup_duration < cleanup_timeout
    assert set(recorded_faults()) == faults


async def test_a_server_frozen_as_the_query_starts_is_given_up_on_too(
    observer: Observer,
) -> None:
    # Frozen while prepare runs, before the first row: the cleanup, a cancel_timeout longer
    # than it notwithstanding, is the exit's, bounded by cleanup_timeout like a fetch's.
    cleanup_timeout = 1.0
    preparing = anyio.Event()

    def prepare(connection: psycopg.Connection[Any]) -> None:
        anyio.from_thread.run_sync(preparing.set)
        connection.execute("SELECT pg_sleep(30)")

    source = PostgresRows(observer.stream_dsn, "SELECT 1", cancel_timeout=2.0, prepare=prepare)
    faults = set(recorded_faults())
    app = rows_app(lambda: source, cleanup_timeout=cleanup_timeout)
    async with open_server(app) as server:
        async with open_stream(server, "/rows") as client:
            with anyio.fail_after(10.0):
                await preparing.wait()
            [backend] = await observer.backends()  # connected: prepare runs after that
            end, ended_in = await leave_while_frozen(server, client, [backend])
        with anyio.fail_after(5.0):
            await observer.wait_gone()
    assert ended_in < cleanup_timeout
    assert end.cleanup_duration < cleanup_timeout
    assert set(recorded_faults()) == faults


async def test_a_failing_query_ends_with_an_error_and_closes_the_connection(
    observer: Observer,
) -> None:
    def source() -> PostgresRows:
        return PostgresRows(observer.stream_dsn, "SELECT * FROM no_such_table")

    async with open_server(rows_app(source, error_item={"error": "query failed"})) as server:
        async with open_stream(server, "/rows") as client:
            assert await client.read_item() == {"error": "query failed"}
        end = await server.wait_ended(EndReason.ERROR)
        with anyio.fail_after(RELEASE_BOUND):
            await observer.wait_released()
    assert isinstance(end.exception, psycopg.errors.UndefinedTable)
    assert "no_such_table" in str(end.exception)


async def test_an_unreachable_server_ends_the_stream_with_an_error() -> None:
    port = free_port()  # nothing listens on it
    source = PostgresRows(f"host=127.0.0.1 port={port} dbname=postgres", "SELECT 1")
    async with open_server(rows_app(lambda: source)) as server:
        async with open_stream(server, "/rows") as client:
            assert await client.read_all() == b""
        end = await server.wait_ended(EndReason.ERROR)
    assert isinstance(end.exception, psycopg.OperationalError)


async def test_a_disconnect_while_connecting_ends_the_stream_at_once() -> None:
    accepted: list[anyio.abc.SocketStream] = []
    connecting = anyio.Event()

    async def accept_and_say_nothing(stream: anyio.abc.SocketStream) -> None:
        accepted.append(stream)
        connecting.set()
        await anyio.sleep_forever()

    # A server that accepts connections and never answers: the connection is still being
    # made (for connect_timeout, 10 s) when the client leaves.
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        source = PostgresRows(f"host=127.0.0.1 port={port} dbname=postgres", "SELECT 1")
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(listener.serve, accept_and_say_nothing)
            async with open_server(rows_app(lambda: source)) as server:
                async with open_stream(server, "/rows") as client:
                    with anyio.fail_after(10.0):
                        await connecting.wait()
                    left_at = anyio.current_time()
                    await client.close()
                    end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
                    ended_in = anyio.current_time() - left_at
            # The worker gets its connection refused now, and has nothing left to close.
            for stream in accepted:
                await stream.aclose()
            task_group.cancel_scope.cancel()
    assert ended_in < RELEASE_BOUND
    assert end.cleanup_duration < RELEASE_BOUND


# -- the source on its own ----------------------------------------------------------------------


def test_postgres_rows_options_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_size must be an int of at least 1, got 0"):
        PostgresRows("", "SELECT 1", batch_size=0)
    with pytest.raises(ValueError, match="connect_timeout"):
        PostgresRows("", "SELECT 1", connect_timeout=0.0)
    with pytest.raises(ValueError, match="cancel_timeout"):
        PostgresRows("", "SELECT 1", cancel_timeout=float("inf"))
    # Where it is made, not once the stream has started, after its 200.
    with pytest.raises(TypeError, match=r"^conninfo must be a str, got NoneType: None$"):
        PostgresRows(None, "SELECT 1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^sql must be a str, bytes or psycopg.sql.Composable"):
        PostgresRows("", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^parameters must be a sequence .* got str: 'ab'$"):
        PostgresRows("", "SELECT %s", "ab")
    with pytest.raises(TypeError, match=r"^prepare must be callable, got str"):
        PostgresRows("", "SELECT 1", prepare="SET x = 1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^cancel_timeout must be .* got nan$"):
        PostgresRows("", "SELECT 1", cancel_timeout=float("nan"))
    with pytest.raises(TypeError, match=r"^batch_size must be an int, got float: 10.0$"):
        PostgresRows("", "SELECT 1", batch_size=10.0)  # type: ignore[arg-type]
    # No statement at all: the server would refuse it only once the stream has started.
    with pytest.raises(ValueError, match=r"^sql must hold a statement, got ''$"):
        PostgresRows("", "")
    with pytest.raises(ValueError, match=r"^sql must hold a statement, got b' \\n'$"):
        PostgresRows("", b" \n")
    with pytest.raises(ValueError, match=r"^sql must not hold a lone surrogate"):
        PostgresRows("", "SELECT '\ud800'")
    # libpq would run the statement up to the NUL, SELECT 1, as if it were the whole.
    for truncated in ("SELECT 1\0 + 1", b"SELECT 1\0 + 1"):
        with pytest.raises(ValueError, match=r"^sql must not hold a NUL character, got "):
            PostgresRows("", truncated)
    # So would a composed query, and libpq reads a connection string up to its NUL: the
    # database named after it would be left out without a word.
    with pytest.raises(ValueError, match=r"^sql must not hold a NUL character, got "):
        PostgresRows("", psycopg.sql.SQL("SELECT 1\0 + {}").format(1))
    with pytest.raises(
        ValueError, match=r"^conninfo must not hold a NUL character \(at index 7\)$"
    ):
        PostgresRows("host=db\0 dbname=shop password=secret", "SELECT 1")


async def test_postgres_rows_runs_its_query_once_and_rolls_back(observer: Observer) -> None:
    table = f"scratch_{observer.counter}"

    def write(connection: psycopg.Connection[Any]) -> None:
        # In the query's transaction, which is rolled back.
        connection.execute(f"CREATE TABLE {table} (n int)")

    rows = PostgresRows(
        observer.stream_dsn, "SELECT id FROM items WHERE id <= 3 ORDER BY id", prepare=write
    )
    with anyio.fail_after(10.0):
        async with rows:
            assert await rows.fetch_batch() == [{"id": 1}, {"id": 2}, {"id": 3}]
            assert await rows.fetch_batch() == []
            await observer.assert_held()
    with anyio.fail_after(RELEASE_BOUND):
        await observer.wait_released()
    with pytest.raises(psycopg.errors.UndefinedTable):
        observer.connection.execute(f"SELECT * FROM {table}")
    with pytest.raises(RuntimeError, match="runs its query once"):
        async with rows:
            pass


async def test_a_fetch_after_a_failed_query_raises_rather_than_end_the_rows(
    observer: Observer,
) -> None:
    # The query runs with the first fetch: once that failed, the next must not say, with an
    # empty batch, that the rows are all there.
    rows = PostgresRows(observer.stream_dsn, "SELECT * FROM no_such_table")
    with anyio.fail_after(10.0):
        async with rows:
            with pytest.raises(psycopg.errors.UndefinedTable):
                await rows.fetch_batch()
            stopped = r"^the query was stopped \(a fetch was cancelled or failed"
            with pytest.raises(RuntimeError, match=stopped):
                await rows.fetch_batch()
    with anyio.fail_after(RELEASE_BOUND):
        await observer.wait_released()


async def test_a_cancelled_fetch_stops_the_query(observer: Observer) -> None:
    # The cancelled fetch waits for nothing (no deadline bounds it): the next one raises at
    # once, though the abandoned worker still holds the connection, and the exit cancels the
    # statement on the server, well within cancel_timeout (so not by cutting the connection).
    rows = observer.source(
        "SELECT id FROM items WHERE tick(%s, 0.005, 1)", batch_size=10_000, cancel_timeout=5.0
    )
    with anyio.fail_after(10.0):
        async with rows:
            with anyio.move_on_after(0.2):
                await rows.fetch_batch()
            with anyio.fail_after(RELEASE_BOUND):
                with pytest.raises(RuntimeError, match=r"^the query was stopped \(a fetch was"):
                    await rows.fetch_batch()
            exiting_at = anyio.current_time()
        exited_in = anyio.current_time() - exiting_at
    assert exited_in < RELEASE_BOUND
    with anyio.fail_after(RELEASE_BOUND):
        await observer.wait_released()
    assert await observer.ticks() < 1000  # not the 10,000 of the batch


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_source_a_producer_enters_itself_is_closed_when_the_client_leaves(
    observer: Observer, leave: str
) -> None:
    # Its exit runs in the cancelled producer, where no worker thread can be waited for: the
    # close must happen all the same, not when a garbage collection finds the connection.
    async def rows(request: Request) -> Response:
        async def produce(send: StreamSender[Any]) -> None:
            sql = "SELECT id FROM items WHERE tick(%s, 0, 1)"
            async with observer.source(sql, batch_size=10) as source:
                while batch := await source.fetch_batch():
                    for row in batch:
                        await send(row)

        return NDJSONResponse(produce)

    async with open_server(Starlette(routes=[Route("/rows", rows)])) as server:
        async with open_stream(server, "/rows") as client:
            await client.read_item()
            await observer.assert_held()
            await (client.close() if leave == "close" else client.reset())
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        # The close runs in a thread that nothing waits for.
        with anyio.fail_after(RELEASE_BOUND):
            await observer.wait_gone()
