"""A dependency with ``yield`` that holds a resource for a streaming path operation, and
``BackgroundTasks`` attached to one, through real hypercorn on asyncio and trio: the resource
is closed once, after the stream's own cleanup, however the stream ends.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, TypeAlias

import anyio
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Request

from streamkit import EndReason, EventSourceResponse, StreamSender, shielded_cleanup
from streamkit.fastapi import StreamingRoute
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: The dependency's exit must have finished this soon after the stream's end (measured: ms).
CLOSE_BOUND = 1.0
SEND_TIMEOUT = 0.5


class Session:
    """A resource a dependency opens, such as a database session."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def aclose(self) -> None:
        await anyio.sleep(0.01)  # an awaited close: a network round trip
        self.log.append("session closed")


class Probe:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.closed = anyio.Event()
        self.started = anyio.Event()
        #: What the dependency's exit was told: the exception it saw, or None.
        self.seen: list[BaseException | None] = []


async def open_session(request: Request) -> AsyncIterator[Session]:
    """The dependency: opens the session, and closes it once the response was sent."""
    probe: Probe = request.app.state.probe
    session = Session(probe.log)
    try:
        yield session
    except Exception as exc:  # a transaction's rollback, say
        probe.seen.append(exc)
        raise
    else:  # its commit
        probe.seen.append(None)
    finally:
        try:
            await session.aclose()
        finally:
            probe.closed.set()


Db = Annotated[Session, Depends(open_session)]


def streaming_app(probe: Probe) -> FastAPI:
    app = FastAPI()
    app.state.probe = probe
    app.router.route_class = StreamingRoute
    Events = EventSourceResponse.with_options(send_timeout=SEND_TIMEOUT, heartbeat_interval=None)

    async def items(how: str) -> AsyncGenerator[str, None]:
        try:
            probe.started.set()
            yield "first"
            if how == "raise":
                raise RuntimeError("the producer failed")
            if how == "flood":
                while True:
                    yield "x" * 65536
            await anyio.sleep_forever()
        finally:
            with shielded_cleanup(2.0):
                await anyio.sleep(0.01)
                probe.log.append("generator cleaned")

    @app.get("/generator/{how}", response_class=Events)
    async def generator(how: str, db: Db, tasks: BackgroundTasks) -> AsyncIterator[str]:
        tasks.add_task(probe.log.append, "background ran")
        async with aclosing(items(how)) as closing:
            async for item in closing:
                yield item

    @app.get("/returned/{how}")
    async def returned(how: str, db: Db, tasks: BackgroundTasks) -> EventSourceResponse:
        tasks.add_task(probe.log.append, "background ran")

        async def produce(send: StreamSender[Any]) -> None:
            async with aclosing(items(how)) as closing:
                async for item in closing:
                    await send(item)

        return Events(produce)

    # Annotated with a name the module does not hold (one imported under TYPE_CHECKING, or
    # here an alias made in the factory): FastAPI reads the other annotations all the same.
    Opened: TypeAlias = Session

    @app.get("/unresolved", response_class=Events)
    async def unresolved(
        tasks: BackgroundTasks,
        db: Opened = Depends(open_session),  # noqa: B008  (FastAPI reads it there)
    ) -> AsyncIterator[str]:
        tasks.add_task(probe.log.append, "background ran")
        yield type(db).__name__

    @app.get("/function-scope", response_class=Events)
    async def function_scope(
        db: Annotated[Session, Depends(open_session, scope="function")],
    ) -> AsyncIterator[str]:
        probe.log.append("generator ran")
        yield "first"

    return app


#: How each way of ending the stream is reported.
ENDS = {
    "close": EndReason.CLIENT_DISCONNECTED,
    "reset": EndReason.CLIENT_DISCONNECTED,
    "stall": EndReason.SEND_TIMEOUT,
    "shutdown": EndReason.SHUTDOWN,
    "raise": EndReason.ERROR,
}


@pytest.mark.parametrize("style", ["generator", "returned"])
@pytest.mark.parametrize("how", list(ENDS))
async def test_a_dependencys_resource_is_closed_once_after_the_stream(
    anyio_backend: str, style: str, how: str
) -> None:
    # The order FastAPI keeps for a response it sends: the response (here the stream, with
    # its own cleanup), then the background tasks, then the exits of the dependencies.
    probe = Probe()
    path = f"/{style}/{'flood' if how == 'stall' else how}"
    with anyio.fail_after(30):
        async with open_server(streaming_app(probe)) as server:
            async with open_stream(server, path, receive_buffer=4096) as client:
                assert (await client.read_event()).data == "first"
                await probe.started.wait()
                if how == "stall":
                    client.stall()
                elif how in ("close", "reset"):
                    await (client.close() if how == "close" else client.reset())
                elif how == "shutdown":
                    async with anyio.create_task_group() as task_group:
                        task_group.start_soon(server.shutdown)
                        farewell = await client.read_event()
                        assert farewell.event == "shutdown"
                end = await server.wait_ended(ENDS[how], within=SEND_TIMEOUT + 5)
                ended = anyio.current_time()
                with anyio.fail_after(CLOSE_BOUND):
                    await probe.closed.wait()
                closed = anyio.current_time() - ended
    print(f"{style}/{how}: closed {closed:.3f} s after the end ({end.reason.value})")
    assert probe.log == ["generator cleaned", "background ran", "session closed"]
    # As with FastAPI's own streams, the exit sees the exception the stream ended with (a
    # session's transaction is rolled back, not committed), and only that one.
    assert probe.seen == [end.exception]


async def test_an_annotation_that_cannot_be_resolved_leaves_the_others_read(
    anyio_backend: str,
) -> None:
    # As under FastAPI's route class: BackgroundTasks is still injected, not a query parameter.
    probe = Probe()
    with anyio.fail_after(30):
        async with open_server(streaming_app(probe)) as server:
            async with open_stream(server, "/unresolved") as client:
                assert (client.status, await client.read_all()) == (200, b"data: Session\n\n")
            await server.wait_ended(EndReason.COMPLETED)
            with anyio.fail_after(CLOSE_BOUND):
                await probe.closed.wait()
    assert probe.log == ["background ran", "session closed"]


async def test_a_function_scoped_dependency_exits_before_the_stream_starts(
    anyio_backend: str,
) -> None:
    # As for FastAPI's own generator path operations (what the docs tell users).
    probe = Probe()
    with anyio.fail_after(30):
        async with open_server(streaming_app(probe)) as server:
            async with open_stream(server, "/function-scope") as client:
                assert (await client.read_event()).data == "first"
            await server.wait_ended(EndReason.COMPLETED)
    assert probe.log == ["session closed", "generator ran"]
