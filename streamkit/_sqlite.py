"""Streaming the rows of a query, with the query ended on every end of the stream.

The leak this prevents: the client leaves, and the cursor stays open with its transaction,
holding a snapshot and locks (SQLite's shared lock keeps every writer out), until the garbage
collector happens upon it. Here a query is a :class:`RowSource`: an async context manager
that is entered through the stream's :class:`~streamkit.StreamSender` and hands out rows in
batches. Whatever ends the stream, the source is exited in the producer's own task, shielded:
the cursor is closed, the transaction rolled back and the connection closed, before the end
is reported. :func:`query_rows` works with any driver that implements the protocol;
:class:`SQLiteRows` implements it for the standard library's :mod:`sqlite3`.

A stream fetches one batch ahead of what it has sent, so a client that leaves stops the query
within one batch; :class:`SQLiteRows` interrupts a batch that is being fetched, too. It runs
its query with the first batch, not on entering: whatever a stopped query leaves is released
by the exit, within the cleanup's own deadline.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import anyio

from ._checks import (
    LONGEST_C_INT_MILLISECONDS,
    check_callable,
    check_count,
    check_duration,
    check_path,
    check_statement,
    check_text,
    check_type,
)
from ._sender import Producer, StreamSender

__all__ = ["RowSource", "SQLiteRows", "query_rows"]

logger = logging.getLogger("streamkit")

RowT_co = TypeVar("RowT_co", covariant=True)

#: The longest a query waits for a lock before it looks whether it was stopped.
_LOCK_WAIT_SLICE = 0.05
#: How many virtual-machine steps SQLite takes between two looks at whether the query was
#: stopped: under 1 % of a plain scan's time.
_STOP_CHECK_STEPS = 1000


class RowSource(Protocol[RowT_co]):
    """A query read in batches: what a database driver implements to plug into
    :func:`query_rows`.

    Entering it, or its first :meth:`fetch_batch` (as streamkit's sources do), runs the query
    (in a transaction, on a connection of its own); exiting it, however the block is left,
    closes the cursor, ends the transaction and releases the connection, and must do so even
    when entered in a cancelled scope (streamkit runs it shielded, bounded by
    ``cleanup_timeout``).
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None: ...

    async def fetch_batch(self) -> Sequence[RowT_co]:
        """The next rows; an empty sequence once there are no more."""
        ...


def query_rows(
    source: RowSource[Any], *, transform: Callable[[Any], Any] | None = None
) -> Producer[Any]:
    """A producer that sends every row of *source*, for an
    :class:`~streamkit.NDJSONResponse`::

        return NDJSONResponse(query_rows(SQLiteRows("app.db", "SELECT * FROM orders")))

    :param source: the query, not yet entered; it is entered when the stream starts and
        exited on every end.
    :param transform: maps each row to the item sent (to make ``bytes`` columns
        JSON-serialisable, say); by default the row itself.
    :raises TypeError: *source* is not a :class:`RowSource`, or *transform* is not callable.
    """
    missing = [
        name for name in ("__aenter__", "__aexit__", "fetch_batch") if not hasattr(source, name)
    ]
    if missing:
        raise TypeError(
            f"source must be a RowSource (an async context manager with fetch_batch()), "
            f"got {type(source).__name__} without {', '.join(missing)}: {source!r:.80}"
        )
    check_callable("transform", transform, optional=True)
    convert: Callable[[Any], Any] = (lambda row: row) if transform is None else transform

    async def produce(send: StreamSender[Any]) -> None:
        rows = await send.enter_async_context(source)
        while batch := await rows.fetch_batch():
            for row in batch:
                await send(convert(row))

    return produce


def check_parameters(parameters: object) -> None:
    """Refuse a query's *parameters* unless they are a sequence (positional) or a mapping
    (named): a ``str`` would be taken for a sequence of one-character parameters.

    :raises TypeError: they are neither, or are a ``str`` or ``bytes``.
    """
    if isinstance(parameters, str | bytes | bytearray) or not isinstance(
        parameters, Sequence | Mapping
    ):
        raise TypeError(
            f"parameters must be a sequence (positional) or a mapping (named), "
            f"got {type(parameters).__name__}: {parameters!r:.80}"
        )


def time_left() -> float:
    """Seconds the current task may still wait: none once it is cancelled."""
    return anyio.current_effective_deadline() - anyio.current_time()


def close_unwaited(close: Callable[[], object], source: object) -> None:
    """Run a source's *close* in a thread of its own, which nothing waits for.

    For an exit in a task that can wait no more: a cancelled one (a producer that entered
    the source itself, whose client left), or one past its deadline. anyio starts no worker
    thread there, so the close would not run at all, and the transaction and its locks
    would be held until a garbage collection found the connection.
    """

    def run() -> None:
        try:
            close()
        except Exception:
            logger.exception("closing %s failed", type(source).__name__)

    threading.Thread(target=run, name=f"closing {type(source).__name__}", daemon=True).start()


def query_stopped(sql: object) -> RuntimeError:
    """The error of a fetch after the query was stopped: an empty batch would say that the
    rows were all there."""
    return RuntimeError(
        f"the query was stopped (a fetch was cancelled or failed, or the source closed): "
        f"{sql!r:.80}"
    )


class SQLiteRows:
    """A :class:`RowSource` for SQLite: one :mod:`sqlite3` connection per stream, used from
    worker threads one call at a time, rows as ``dict`` of column name to value. Make one per
    stream: it runs its query once.

    The query runs with the first :meth:`fetch_batch`, in a deferred read transaction (one
    snapshot from the first batch to the last), which is rolled back at the end: a streamed
    query is a read. A stream cancelled while a batch is being fetched interrupts it
    (``sqlite3.Connection.interrupt``), and one cancelled while the query waits for a lock
    ends the wait within 50 ms.

    :param database: the database file (or a ``file:`` URI, with *uri*).
    :param sql: the query.
    :param parameters: its parameters, positional or named.
    :param batch_size: rows fetched per worker-thread call.
    :param lock_timeout: seconds the query waits for a lock another connection holds (and
        *prepare*'s statements, whose waits a cancellation does not end).
    :param prepare: called with the new connection, in the worker thread, before the query
        (pragmas, user functions).
    :param uri: whether *database* is a URI.
    :raises TypeError: an argument is of the wrong type (*parameters* that are neither a
        sequence nor a mapping, a *prepare* that is not callable, ...).
    :raises ValueError: *database* is empty or holds a NUL character, *sql* holds no
        statement (or a lone surrogate, or a NUL character), *batch_size* is below 1, or
        *lock_timeout* is not a positive, finite number of seconds.
    """

    def __init__(
        self,
        database: str | os.PathLike[str],
        sql: str,
        parameters: Sequence[Any] | Mapping[str, Any] = (),
        *,
        batch_size: int = 500,
        lock_timeout: float = 5.0,
        prepare: Callable[[sqlite3.Connection], object] | None = None,
        uri: bool = False,
    ) -> None:
        check_path("database", database)
        check_type("sql", sql, str)
        check_statement("sql", sql)
        check_text("sql", sql)
        check_parameters(parameters)
        check_count("batch_size", batch_size)
        check_duration("lock_timeout", lock_timeout)
        check_callable("prepare", prepare, optional=True)
        check_type("uri", uri, bool)
        self.database = database
        self.sql = sql
        self.parameters = parameters
        self.batch_size = batch_size
        self._lock_timeout = lock_timeout
        self._prepare = prepare
        self._uri = uri
        # Held by whichever worker thread uses the connection: a call abandoned on
        # cancellation keeps it until SQLite notices the interrupt, and the close waits.
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        self._columns: tuple[str, ...] = ()
        self._opened = False
        self._stopping = False
        self._entered = False

    # -- in the worker thread -------------------------------------------------------------------

    def _open(self) -> None:
        # With the lock held.
        self._opened = True
        connection = sqlite3.connect(
            self.database,
            # SQLite takes an int of milliseconds: sqlite3 made a longer wait none at all.
            timeout=min(self._lock_timeout, LONGEST_C_INT_MILLISECONDS),
            isolation_level=None,  # transactions begin and end here, not implicitly
            check_same_thread=False,  # used from worker threads, one at a time
            uri=self._uri,
        )
        self._connection = connection
        # An interrupt() that finds no statement running is forgotten: one that landed
        # between two statements (in prepare's, say) would let the query run on to its end.
        # The flag is looked at as the statements run, too.
        connection.set_progress_handler(self._stopped, _STOP_CHECK_STEPS)
        self._check_running()
        if self._prepare is not None:
            self._prepare(connection)
        self._check_running()
        connection.execute("BEGIN DEFERRED")
        self._cursor = cursor = self._execute(connection)
        self._columns = tuple(column[0] for column in cursor.description or ())

    def _stopped(self) -> bool:
        return self._stopping

    def _check_running(self) -> None:
        if self._stopping:
            raise query_stopped(self.sql)

    def _execute(self, connection: sqlite3.Connection) -> sqlite3.Cursor:
        # The query's first step takes the lock. SQLite's own wait for a lock is deaf to
        # interrupt(): it is made of short waits, between which a stop is looked for.
        deadline = time.monotonic() + self._lock_timeout
        wait = min(_LOCK_WAIT_SLICE, self._lock_timeout)
        connection.execute(f"PRAGMA busy_timeout = {max(1, round(wait * 1000))}")
        while True:
            try:
                return connection.execute(self.sql, self.parameters)
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or self._stopping or time.monotonic() >= deadline:
                    raise

    def _fetch(self) -> list[dict[str, Any]]:
        with self._lock:
            self._check_running()
            try:
                if not self._opened:
                    self._open()
                assert self._cursor is not None  # made by the open, or it raised
                batch = self._cursor.fetchmany(self.batch_size)
            except BaseException:
                # A fetch after this one must not read as the end of the rows.
                self._stopping = True
                raise
            columns = self._columns
            return [dict(zip(columns, row, strict=True)) for row in batch]

    def _close(self) -> None:
        with self._lock:
            cursor, self._cursor = self._cursor, None
            connection, self._connection = self._connection, None
            try:
                if cursor is not None:
                    cursor.close()
            finally:
                if connection is not None:
                    # The rollback must run, stopped or not.
                    connection.set_progress_handler(None, 0)
                    try:
                        if connection.in_transaction:
                            connection.rollback()
                    finally:
                        connection.close()

    # -- in the event loop ----------------------------------------------------------------------

    async def _call(self, function: Callable[[], Any]) -> Any:
        try:
            return await anyio.to_thread.run_sync(function, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            self._stop_soon()
            raise

    def _stop_soon(self) -> None:
        # The flag first: a thread that has not published its connection yet will see it.
        self._stopping = True
        connection = self._connection
        if connection is not None:
            try:
                connection.interrupt()
            except sqlite3.ProgrammingError:
                pass  # closed already: nothing left to interrupt

    async def __aenter__(self) -> Self:
        # Nothing to wait for: the query runs with the first batch, so that what a stopped
        # query leaves is released by the exit, which a stream bounds by cleanup_timeout.
        if self._entered:
            raise RuntimeError(
                f"a SQLiteRows runs its query once; make one per stream: {self.sql!r:.80}"
            )
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def fetch_batch(self) -> list[dict[str, Any]]:
        """The next rows, at most ``batch_size``; an empty list once there are no more. The
        first runs the query.

        :raises RuntimeError: an earlier fetch was cancelled or failed, which stopped the query.
        :raises sqlite3.Error: the query failed.
        """
        # Here too: a worker abandoned by the cancelled fetch may still hold the connection.
        self._check_running()
        rows: list[dict[str, Any]] = await self._call(self._fetch)
        return rows

    async def aclose(self) -> None:
        """Close the cursor, roll the transaction back and close the connection; once a
        batch being fetched has been interrupted. Idempotent.

        In a task that can wait no more (cancelled), the close is started and not waited
        for.
        """
        self._stopping = True
        if time_left() <= 0:
            close_unwaited(self._close, self)
            return
        await anyio.to_thread.run_sync(self._close, abandon_on_cancel=True)
