"""Streaming the rows of a PostgreSQL query, with the query stopped on every end of the stream.

:class:`PostgresRows` is a :class:`~streamkit.resources.RowSource` on psycopg 3. Its
asynchronous API runs on asyncio only, so, as :class:`~streamkit.resources.SQLiteRows` does, it
uses the synchronous connection from worker threads (``anyio.to_thread``), one call at a time,
and runs on trio too. The rows stay on the server, in a server-side cursor, and come a batch
per ``FETCH``.

The leak this prevents is worse than SQLite's: PostgreSQL does not notice that its client has
gone while a statement runs, so an abandoned ``FETCH`` of a slow query (or the sort before its
first row) runs on to its end, holding its snapshot and locks. Here, once the stream is
cancelled, the source's exit cancels the statement on the server (psycopg's cancel request,
which is safe from another thread), and ends the cursor, the transaction and the connection
before the stream's end is reported, all within the exit's deadline (the stream's
``cleanup_timeout``): the query runs with the first batch, not on entering, so that no wait
falls outside it. psycopg is imported when a query starts (``pip install
streamkit[postgres]``).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio

from ._checks import (
    check_callable,
    check_count,
    check_duration,
    check_statement,
    check_text,
    check_type,
)
from ._sqlite import check_parameters, close_unwaited, query_stopped, time_left

if TYPE_CHECKING:
    import psycopg
    from psycopg.abc import Query

__all__ = ["PostgresRows"]

#: How often a cancel request is sent again while the worker has not let the connection go:
#: one that arrives between two statements is ignored by the server.
_CANCEL_INTERVAL = 0.1
#: How often, in milliseconds, the server looks whether its client is still there while a
#: statement runs (``client_connection_check_interval``).
_CLIENT_CHECK_INTERVAL_MS = 1000
#: The server-side cursor's name; unique enough, with one connection per stream.
_CURSOR_NAME = "streamkit_rows"

Row = dict[str, Any]


def _import_psycopg() -> None:
    # Imported when first used, so that ``import streamkit`` works without the extra.
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"PostgresRows needs psycopg 3 ({exc}); "
            "install it with: pip install 'streamkit[postgres]'"
        ) from exc


def _watch_client(connection: psycopg.Connection[Row]) -> None:
    """Have the server look, while a statement runs, whether its client is still there
    (PostgreSQL 14 and later, on the systems that tell it): a connection cut under a frozen
    server ends the statement, and the session, soon after the server runs again. The cancel
    request sent before the cut may never have been answered, and PostgreSQL does not
    otherwise notice that its client has gone until the statement ends."""
    import psycopg

    if connection.info.server_version < 140000:
        return
    try:
        # Outside the transaction (autocommit): a refusal leaves nothing to roll back.
        connection.execute(f"SET client_connection_check_interval = {_CLIENT_CHECK_INTERVAL_MS}")
    except (psycopg.errors.InvalidParameterValue, psycopg.errors.UndefinedObject):
        pass  # a system where the server cannot tell, or a server that does not know it


def _composed(sql: Any) -> str | None:
    """The text of a ``psycopg.sql.Composable``, composed as psycopg's default adapters do,
    so that it can be checked where it is made; ``None`` for one that only a connection can
    compose (or that fails to), of which psycopg says what is wrong as it runs it."""
    try:
        text: str = sql.as_string(None)
    except Exception:
        return None
    return text


class PostgresRows:
    """A :class:`~streamkit.resources.RowSource` for PostgreSQL: one psycopg connection per stream,
    a server-side cursor, rows as ``dict`` of column name to value. Make one per stream: it
    runs its query once.

    The query runs with the first :meth:`fetch_batch`, in a transaction (one snapshot from the
    first batch to the last), which is rolled back at the end: a streamed query is a read. A
    stream cancelled while the server works on a batch (or on the query's first step, a sort,
    say) has that statement cancelled on the server by the exit, which then waits for the
    worker thread to let go of the connection. A server that answers neither (frozen, or cut
    off) has the connection cut under the worker, so the cleanup ends within the stream's
    ``cleanup_timeout``.

    :param conninfo: the connection string or URL, as psycopg takes it
        (``"host=db dbname=shop"``, ``"postgresql://db/shop"``).
    :param sql: the query, with psycopg's placeholders (``%s``, ``%(name)s``).
    :param parameters: its parameters, positional or named.
    :param batch_size: rows per ``FETCH``.
    :param connect_timeout: seconds to wait for the connection; rounded up to whole seconds,
        and at least 2, as libpq and psycopg count them.
    :param cancel_timeout: seconds, once the stream is cancelled, to keep cancelling the
        statement the worker waits for (again every 0.1 s) before cutting the connection; at
        most half of what is left of the exit's deadline (the stream's ``cleanup_timeout``).
    :param prepare: called with the new connection, in the worker thread, before the query
        (``SET statement_timeout``, type adapters); it runs inside the transaction.
    :raises TypeError: an argument is of the wrong type (*parameters* that are neither a
        sequence nor a mapping, a *prepare* that is not callable, ...).
    :raises ValueError: *sql* holds no statement (or a lone surrogate, or a NUL character,
        which libpq would take for its end; so would it in *conninfo*), *batch_size* is
        below 1, or a timeout is not a positive, finite number of seconds.
    """

    def __init__(
        self,
        conninfo: str,
        sql: Query,
        parameters: Sequence[Any] | Mapping[str, Any] = (),
        *,
        batch_size: int = 500,
        connect_timeout: float = 10.0,
        cancel_timeout: float = 2.0,
        prepare: Callable[[psycopg.Connection[Row]], object] | None = None,
    ) -> None:
        check_type("conninfo", conninfo, str)
        if "\0" in conninfo:
            # libpq reads the string up to it. Not shown: it may hold a password.
            raise ValueError(
                f"conninfo must not hold a NUL character (at index {conninfo.index(chr(0))})"
            )
        if not (isinstance(sql, str | bytes) or hasattr(sql, "as_string")):
            raise TypeError(
                f"sql must be a str, bytes or psycopg.sql.Composable, "
                f"got {type(sql).__name__}: {sql!r:.80}"
            )
        if isinstance(sql, str | bytes):
            check_statement("sql", sql)
        elif (composed := _composed(sql)) is not None:
            check_statement("sql", composed)
        if isinstance(sql, str):
            check_text("sql", sql)
        check_parameters(parameters)
        check_count("batch_size", batch_size)
        check_duration("connect_timeout", connect_timeout)
        check_duration("cancel_timeout", cancel_timeout)
        check_callable("prepare", prepare, optional=True)
        self.conninfo = conninfo
        self.sql = sql
        self.parameters = parameters
        self.batch_size = batch_size
        self._connect_timeout = connect_timeout
        self._cancel_timeout = cancel_timeout
        self._prepare = prepare
        # Held by whichever worker thread uses the connection: a call abandoned on
        # cancellation keeps it until the server has stopped the statement.
        self._lock = threading.Lock()
        self._cancel_lock = threading.Lock()
        self._connection: psycopg.Connection[Row] | None = None
        self._cursor: psycopg.ServerCursor[Row] | None = None
        self._opened = False
        self._connecting = False
        self._stopping = False
        self._entered = False

    # -- in the worker thread -------------------------------------------------------------------

    def _open(self) -> None:
        # With the lock held.
        import psycopg
        from psycopg.rows import dict_row

        self._opened = True
        self._connecting = True
        try:
            connection = psycopg.connect(
                self.conninfo,
                autocommit=True,  # until the query's transaction: see _watch_client
                row_factory=dict_row,
                connect_timeout=max(2, math.ceil(self._connect_timeout)),
            )
        finally:
            self._connecting = False
        self._connection = connection
        if self._stopping:
            # Stopped while connecting: nobody waited for the connection, close it here.
            self._release()
        self._check_running()
        _watch_client(connection)
        connection.autocommit = False  # the cursor's DECLARE begins the transaction
        if self._prepare is not None:
            self._prepare(connection)
        self._cursor = connection.cursor(name=_CURSOR_NAME)
        self._cursor.execute(self.sql, self.parameters)

    def _check_running(self) -> None:
        if self._stopping:
            raise query_stopped(self.sql)

    def _fetch(self) -> list[Row]:
        with self._lock:
            self._check_running()
            try:
                if not self._opened:
                    self._open()
                assert self._cursor is not None  # made by the open, or it raised
                return self._cursor.fetchmany(self.batch_size)
            except BaseException:
                # A fetch after this one must not read as the end of the rows.
                self._stopping = True
                raise

    def _acquire(self, cancel_for: float) -> bool:
        """Take the lock, cancelling on the server, again and again, what the worker that
        holds it waits for; ``False``, without the lock, if that worker is connecting.

        After *cancel_for* seconds of that, a server that answers neither the statement nor
        its cancellation (frozen, or cut off) has the connection's socket shut under the
        worker, which fails at once.
        """
        cancel_until = time.monotonic() + cancel_for
        aborted = False
        while not self._lock.acquire(blocking=False):
            if self._connecting:
                # Nothing to cancel or wait for: the worker closes the connection it makes,
                # as it sees _stopping (set before this runs).
                return False
            left = cancel_until - time.monotonic()
            if left > 0:
                self._cancel_statement(left)
            elif not aborted:
                aborted = True
                self._abort()
            # A cancel request that reached the server between two statements was ignored:
            # hence the loop.
            if self._lock.acquire(timeout=_CANCEL_INTERVAL):
                break
        return True

    def _cancel_statement(self, timeout: float) -> None:
        import psycopg

        # Never while the connection is being closed: libpq's objects are not thread-safe.
        with self._cancel_lock:
            if self._connection is not None:
                try:
                    self._connection.cancel_safe(timeout=timeout)
                except psycopg.Error:
                    pass  # closed or unreachable: the worker fails on its own

    def _abort(self) -> None:
        """Shut the connection's socket, under the worker blocked on it: its call fails, and
        it lets go of the connection. Shut, not closed: the descriptor stays the worker's."""
        import psycopg

        with self._cancel_lock:
            connection = self._connection
            if connection is None:
                return
            try:
                descriptor = connection.pgconn.socket
            except psycopg.OperationalError:
                return  # closed already
            with socket.socket(fileno=os.dup(descriptor)) as connected:
                try:
                    connected.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # not connected any more

    def _close(self, cancel_for: float) -> None:
        if not self._acquire(cancel_for):
            return
        try:
            self._release()
        finally:
            self._lock.release()

    def _release(self) -> None:
        # With the lock held.
        cursor, self._cursor = self._cursor, None
        with self._cancel_lock:
            connection, self._connection = self._connection, None
        try:
            if cursor is not None:
                cursor.close()  # does nothing in a failed transaction: the rollback ends it
        finally:
            if connection is not None:
                try:
                    if not connection.broken:
                        connection.rollback()
                finally:
                    connection.close()

    # -- in the event loop ----------------------------------------------------------------------

    async def _call(self, function: Callable[[], Any]) -> Any:
        try:
            return await anyio.to_thread.run_sync(function, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            # Only the flag, which a worker that has not started its statement yet will see:
            # the statement is cancelled by the exit, within the exit's deadline. Waiting here
            # would be bounded by no deadline this source can see.
            self._stopping = True
            raise

    async def __aenter__(self) -> Self:
        # Nothing to wait for: the query runs with the first batch, so that what a stopped
        # query leaves is released by the exit, which a stream bounds by cleanup_timeout.
        if self._entered:
            raise RuntimeError(
                f"a PostgresRows runs its query once; make one per stream: {self.sql!r:.80}"
            )
        self._entered = True
        _import_psycopg()
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
        first connects and runs the query.

        :raises RuntimeError: an earlier fetch was cancelled or failed, which stopped the
            query (the statement is cancelled on the server when the source is exited).
        :raises psycopg.Error: the connection or the query failed.
        """
        # Here too: a worker abandoned by the cancelled fetch may still hold the connection.
        self._check_running()
        rows: list[Row] = await self._call(self._fetch)
        return rows

    async def aclose(self) -> None:
        """Close the cursor, roll the transaction back and close the connection; first,
        cancel on the server what a worker thread still waits for. Idempotent.

        Within the deadline it runs under (a stream's ``cleanup_timeout``): half of the time
        left, at most ``cancel_timeout``, goes to cancelling; then the connection is cut, and
        the rest goes to the worker letting go of it. In a task that can wait no more
        (cancelled), the close is started, with ``cancel_timeout`` to cancel, and not waited
        for.
        """
        self._stopping = True
        left = time_left()
        if left <= 0:
            close_unwaited(partial(self._close, self._cancel_timeout), self)
            return
        close = partial(self._close, min(self._cancel_timeout, left / 2))
        await anyio.to_thread.run_sync(close, abandon_on_cancel=True)
