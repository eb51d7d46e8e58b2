"""Every resource helper releases its resource on every way a stream can end.

Four resources (an upstream HTTP stream, a subprocess, an SQLite query, a file), five endings
(the client closes, the client resets, the client stalls, ``max_duration`` passes, the server
shuts down), both backends, through real hypercorn. Each test first proves the resource is
held while the stream runs (so the release check can fail), then ends the stream and proves
the release from outside the stream: the upstream server sees its client leave, no process
with the command's pid is left (not even a zombie), a second connection can lock the database,
no descriptor of this process points at the file.

Bounds are generous (a loaded 2-core machine); the measured figures are recorded as the
test's user properties (see them with ``-o junit_family=legacy --junitxml=FILE``) and are
reported in docs/resources.md.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.resource_checks import database_locked, open_descriptors, process_state
from support.stream_endings import (
    ENDINGS,
    end_stream,
    open_stream_to_end,
    record_release,
    stream_options,
)

from streamkit import (
    EndReason,
    EventSourceResponse,
    NDJSONResponse,
    ServerSentEvent,
    StreamEnd,
    StreamResponse,
    StreamSender,
)
from streamkit.resources import (
    SQLiteRows,
    file_chunks,
    query_rows,
    subprocess_lines,
    upstream_events,
)
from streamkit.testing import LiveServer, StreamClient, open_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: The release must be observable within this after the stream's end was reported or the
#: client acted (measured: a few milliseconds, see docs/resources.md).
RELEASE_BOUND = 1.0
ROWS = 40_000
PAYLOAD = 400
FILE_SIZE = 16 * 1024 * 1024

Options = dict[str, Any]


# -- the resources ------------------------------------------------------------------------------


class Resource:
    """One kind of resource: the app that streams it, and checks from outside the stream."""

    path = "/"

    def app(self, options: Options) -> Starlette:
        raise NotImplementedError

    async def first(self, client: StreamClient) -> None:
        """Read the stream's first item (which may say what to check)."""
        raise NotImplementedError

    def assert_held(self) -> None:
        raise NotImplementedError

    async def wait_released(self) -> None:
        """Return once the release is observable; the caller bounds the wait."""
        raise NotImplementedError


class Upstream(Resource):
    """An LLM-like token stream from a second server, proxied as SSE."""

    def __init__(self, upstream: LiveServer) -> None:
        self.upstream = upstream
        self.upstream_end: StreamEnd | None = None

    def app(self, options: Options) -> Starlette:
        url = f"{self.upstream.url}/tokens"

        async def proxy(request: Request) -> Response:
            return EventSourceResponse(upstream_events(url, read_timeout=5.0), **options)

        return Starlette(routes=[Route("/", proxy)])

    async def first(self, client: StreamClient) -> None:
        assert (await client.read_event()).data.startswith("token 0 ")

    def assert_held(self) -> None:
        assert self.upstream.streams.statistics().active == 1

    async def wait_released(self) -> None:
        self.upstream_end = await self.upstream.wait_ended(
            EndReason.CLIENT_DISCONNECTED, within=10.0
        )


def upstream_app() -> Starlette:
    async def tokens(request: Request) -> Response:
        async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
            n = 0
            while True:
                # Big and fast enough to fill the socket buffers of a stalled client quickly.
                await send(ServerSentEvent(data=f"token {n} " + "x" * 4000, id=str(n)))
                n += 1
                await anyio.sleep(0.001)

        return EventSourceResponse(produce)

    return Starlette(routes=[Route("/tokens", tokens)])


# The command starts a child of its own, so the group kill is checked too, then writes lines
# as fast as they are read.
COMMAND_SCRIPT = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("pids", os.getpid(), child.pid, flush=True)
line = "x" * 4000 + "\\n"
while True:
    sys.stdout.write(line)
    sys.stdout.flush()
"""


async def wait_dead(pid: int) -> None:
    """Return once *pid* has exited (gone, or a zombie that is not ours to reap)."""
    # Polled: nothing signals this process when another's child dies.
    while True:
        if process_state(pid) in (None, "Z"):
            return
        await anyio.sleep(0.005)


class Command(Resource):
    """A command whose output lines are streamed as SSE."""

    def __init__(self) -> None:
        self.pids: tuple[int, int] | None = None

    def app(self, options: Options) -> Starlette:
        async def lines(request: Request) -> Response:
            command = [sys.executable, "-u", "-c", COMMAND_SCRIPT]
            return EventSourceResponse(subprocess_lines(command, stop_grace_period=1.0), **options)

        return Starlette(routes=[Route("/", lines)])

    async def first(self, client: StreamClient) -> None:
        event = await client.read_event()
        assert event.data is not None
        word, leader, child = event.data.split()
        assert word == "pids"
        self.pids = (int(leader), int(child))

    def assert_held(self) -> None:
        assert self.pids is not None
        assert process_state(self.pids[0]) not in (None, "Z")
        assert process_state(self.pids[1]) not in (None, "Z")

    async def wait_released(self) -> None:
        assert self.pids is not None
        leader, child = self.pids
        # Our own child is reaped before the end is reported: no wait, no zombie.
        assert process_state(leader) is None, f"pid {leader} is left: {process_state(leader)}"
        # The grandchild is reaped by init, in its own time: it must be dead, at least.
        await wait_dead(child)


def make_database(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, payload TEXT)")
        connection.executemany(
            "INSERT INTO items (payload) VALUES (?)", (("p" * PAYLOAD,) for _ in range(ROWS))
        )
    connection.close()


def add_pace(connection: sqlite3.Connection) -> None:
    """Give the query a pace, so that reading all of it takes longer than a deadline."""

    def pace(row_id: int) -> bool:
        if row_id % 50 == 0:
            time.sleep(0.001)
        return True

    connection.create_function("pace", 1, pace)


class Query(Resource):
    """A large SQLite query streamed as NDJSON."""

    def __init__(self, database: Path) -> None:
        self.database = database

    def app(self, options: Options) -> Starlette:
        async def rows(request: Request) -> Response:
            source = SQLiteRows(
                self.database,
                "SELECT id, payload FROM items WHERE pace(id) ORDER BY id",
                batch_size=200,
                prepare=add_pace,
            )
            return NDJSONResponse(query_rows(source), **options)

        return Starlette(routes=[Route("/", rows)])

    async def first(self, client: StreamClient) -> None:
        assert (await client.read_item())["id"] == 1

    def assert_held(self) -> None:
        assert database_locked(self.database)
        assert open_descriptors(self.database)

    async def wait_released(self) -> None:
        # The source was exited before the end was reported: nothing to wait for.
        assert not database_locked(self.database), "a lock or transaction was left open"
        assert open_descriptors(self.database) == [], "the connection was left open"


class File(Resource):
    """A large file streamed as bytes."""

    def __init__(self, path: Path) -> None:
        self.file = path

    def app(self, options: Options) -> Starlette:
        async def download(request: Request) -> Response:
            # Paced, so that reading all of it takes longer than a deadline.
            chunks = file_chunks(self.file, chunk_size=16384, bytes_per_second=4_000_000)
            return StreamResponse(chunks, **options)

        return Starlette(routes=[Route("/", download)])

    async def first(self, client: StreamClient) -> None:
        assert await client.receive_chunk()

    def assert_held(self) -> None:
        assert len(open_descriptors(self.file)) == 1

    async def wait_released(self) -> None:
        assert open_descriptors(self.file) == [], "the file was left open"


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resources") / "items.db"
    make_database(path)
    return path


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resources") / "big.bin"
    path.write_bytes(os.urandom(FILE_SIZE))
    return path


ResourceFactory = Callable[[], AbstractAsyncContextManager[Resource]]


@pytest.fixture(params=["upstream", "command", "query", "file"])
def resource(request: pytest.FixtureRequest, database: Path, big_file: Path) -> ResourceFactory:
    kind = request.param

    @asynccontextmanager
    async def make() -> AsyncIterator[Resource]:
        if kind == "upstream":
            async with open_server(upstream_app()) as upstream:
                yield Upstream(upstream)
        elif kind == "command":
            yield Command()
        elif kind == "query":
            yield Query(database)
        else:
            yield File(big_file)

    return make


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_released_on_every_end(
    resource: ResourceFactory,
    ending: str,
    request: pytest.FixtureRequest,
) -> None:
    async with resource() as held:
        app = held.app(stream_options(ending))
        async with open_stream_to_end(app, held.path, ending) as (server, client):
            with anyio.fail_after(10.0):
                await held.first(client)
            held.assert_held()
            acted_at = anyio.current_time()
            end = await end_stream(server, client, ending)
            reported_at = anyio.current_time()
            with anyio.fail_after(RELEASE_BOUND):
                await held.wait_released()
            released_at = anyio.current_time()
        # Counted once, for its reason, the server and its connection gone too.
        ended = server.streams.statistics().ended
        assert {reason: count for reason, count in ended.items() if count} == {end.reason: 1}
        record_release(request, ending, end, acted_at, reported_at, released_at)
        assert end.cleanup_duration < RELEASE_BOUND
        if isinstance(held, Upstream) and ending in ("close", "reset"):
            assert released_at - acted_at < RELEASE_BOUND
