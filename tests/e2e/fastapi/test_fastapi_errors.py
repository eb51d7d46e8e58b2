"""Errors of streaming path operations, through real hypercorn on asyncio and trio: an
``HTTPException`` raised by a dependency is its status, before any stream; a parameter that
fails validation is a 422; an exception the generator raises (an ``HTTPException`` too: its
body runs once the stream's 200 is sent) ends the stream with its error end, logged once,
with no second response begun."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from streamkit import EndReason, EventSourceResponse, NDJSONResponse
from streamkit.fastapi import StreamingRoute
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def owned(owner: str = "me") -> str:
    if owner != "me":
        raise HTTPException(status_code=403, detail=f"not yours: {owner}")
    return owner


class OwnerError(Exception):
    pass


async def translating() -> AsyncIterator[str]:
    """FastAPI's pattern: a dependency that answers an error it sees with an HTTPException."""
    try:
        yield "me"
    except OwnerError as exc:
        raise HTTPException(status_code=400, detail=f"owner error: {exc}") from exc


def errors_app() -> FastAPI:
    app = FastAPI()
    app.router.route_class = StreamingRoute
    app.state.handled = []

    @app.exception_handler(RuntimeError)
    async def handle(request: Request, exc: RuntimeError) -> JSONResponse:
        # Never called for a stream's error: its response could not follow the stream's head.
        app.state.handled.append(exc)
        return JSONResponse({"detail": "handled"}, status_code=502)

    @app.get("/items", response_class=NDJSONResponse)
    async def items(count: int, owner: str = Depends(owned)) -> AsyncIterator[int]:
        for n in range(count):
            yield n

    @app.get("/failing", response_class=EventSourceResponse)
    async def failing() -> AsyncIterator[str]:
        yield "first"
        raise RuntimeError("the upstream failed")

    @app.get("/refusing", response_class=EventSourceResponse)
    async def refusing() -> AsyncIterator[str]:
        # The generator's body runs once the stream has started, its 200 sent.
        raise HTTPException(status_code=404, detail="no such topic")
        yield "never"

    @app.get("/translated", response_class=EventSourceResponse)
    async def translated(owner: str = Depends(translating)) -> AsyncIterator[str]:
        yield "first"
        raise OwnerError("not the owner")

    return app


async def test_a_dependencys_http_exception_and_a_bad_parameter_answer_before_any_stream(
    anyio_backend: str,
) -> None:
    with anyio.fail_after(30):
        async with open_server(errors_app()) as server:
            async with open_stream(server, "/items?count=2&owner=you") as client:
                forbidden = client.status, await client.read_all()
            async with open_stream(server, "/items?count=two") as client:
                invalid = client.status, await client.read_all()
            async with open_stream(server, "/items?count=2") as client:
                served = client.status, [await client.read_item() for _ in range(2)]
            await server.wait_ended(EndReason.COMPLETED)
            # Only the one stream was started.
            assert sum(server.streams.statistics().ended.values()) == 1
    assert forbidden == (403, b'{"detail":"not yours: you"}')
    assert invalid[0] == 422
    assert b'"loc":["query","count"]' in invalid[1]
    assert served == (200, [0, 1])


@pytest.mark.parametrize(
    ("path", "sent", "raised"),
    [
        ("/failing", b"data: first\n\n", "RuntimeError('the upstream failed')"),
        # Not a 404, nor (as FastAPI's own generators do) a connection broken off with
        # "response already started": raise it in a dependency to answer 404.
        ("/refusing", b"", "HTTPException(status_code=404, detail='no such topic')"),
    ],
)
async def test_an_exception_in_the_generator_is_the_streams_error_end_logged_once(
    anyio_backend: str, caplog: pytest.LogCaptureFixture, path: str, sent: bytes, raised: str
) -> None:
    app = errors_app()
    with anyio.fail_after(30), caplog.at_level(logging.INFO):
        async with open_server(app) as server:
            async with open_stream(server, path) as client:
                status, body = client.status, await client.read_all()
                assert client.complete
            end = await server.wait_ended(EndReason.ERROR)
    assert status == 200
    assert body == sent + b"event: error\ndata: \n\n"
    assert repr(end.exception) == raised
    assert app.state.handled == []
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert errors[0].getMessage().startswith(f"stream {path} ended: error after ")


async def test_a_dependency_that_answers_the_streams_error_with_another_has_it_logged_once(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Its HTTPException cannot be sent after the stream's head: logged as the dependency's,
    # where raised past the response it reached FastAPI's handlers as "response already
    # started" and the server's log, and the connection was dropped.
    app = errors_app()
    with anyio.fail_after(30), caplog.at_level(logging.INFO):
        async with open_server(app) as server:
            for _ in range(2):  # the connection is still good
                async with open_stream(server, "/translated") as client:
                    body = await client.read_all()
                    assert client.complete
                await server.wait_ended(EndReason.ERROR)
    assert body == b"data: first\n\nevent: error\ndata: \n\n"
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record.name for record in errors] == ["streamkit"] * 4, caplog.text
    raised = errors[1].exc_info[1] if errors[1].exc_info else None
    assert repr(raised) == "HTTPException(status_code=400, detail='owner error: not the owner')"
    assert errors[1].getMessage() == "stream /translated: a dependency's exit raised on its error"
