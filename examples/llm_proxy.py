"""An LLM token proxy that stops the completion, and its bill, when the browser tab closes.

Run it (on asyncio, or ``--backend trio``), then stream a completion::

    python examples/llm_proxy.py
    curl -N 'http://127.0.0.1:8000/chat?prompt=tell+me+a+story'

The browser (or ``curl``) gets one ``token`` event per piece of text. The proxy sends the
prompt upstream as an OpenAI-style streaming chat completion (``"stream": true``) and forwards
each delta as it arrives. By default the upstream is a fake model served by this same
process at ``/fake/v1/chat/completions``, slow enough to watch; set ``LLM_URL`` (and
``LLM_API_KEY``) to use a real one.

Press Ctrl-C in ``curl`` halfway: the server logs the proxy stream's end as
``client_disconnected``, and at once the fake model logs its own stream ending the same way,
because the upstream request was aborted, not left to run to the end. The same happens on a
deadline (``max_duration``), a stalled client and a shutdown.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import anyio
import httpx
import httpx_sse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from streamkit import EventSourceResponse, ServerSentEvent, StreamSender, run
from streamkit.resources import upstream_events

#: How long the upstream may stay silent before the stream ends with an error.
UPSTREAM_READ_TIMEOUT = 30.0
#: The longest a completion may stream.
MAX_DURATION = 300.0
#: The fake model's pace, in seconds per word.
FAKE_WORD_INTERVAL = 0.05
#: The largest request the fake model takes, in bytes, as a real API bounds its own: it is
#: served to any client, and a body read whole, unbounded, would be held in memory whole.
FAKE_MAX_REQUEST = 1024 * 1024

FAKE_TEXT = (
    "Once upon a time a stream was cut short, and everything it held was let go at once: "
    "the upstream request, its connection and the bill that came with them. The end."
)


def token(event: httpx_sse.ServerSentEvent) -> ServerSentEvent | None:
    """One upstream chunk as a ``token`` event; nothing for ``[DONE]`` and empty deltas.

    :raises ValueError: the chunk is the upstream's error (OpenAI-compatible servers send
        ``{"error": ...}`` when they fail mid-answer), or not a JSON object: the stream ends
        as an error, where skipping it would end the answer, cut short, as complete.
    """
    if event.data == "[DONE]":
        return None  # the upstream closes its stream next, and so do we
    try:
        chunk = json.loads(event.data)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        raise ValueError(f"the upstream sent a chunk that is no JSON object: {event.data!r:.200}")
    if "error" in chunk:
        raise ValueError(f"the upstream failed mid-answer: {chunk['error']!r:.200}")
    choices = chunk.get("choices") or [{}]
    content = choices[0].get("delta", {}).get("content")
    return ServerSentEvent(event="token", data=content) if content else None


def own_url(request: Request, path: str) -> str:
    """*path* on this server, at the address that accepted *request*: not at the request's
    ``Host`` header (as ``request.url_for`` makes it), which the client writes, and which
    would send the prompt, and the API key, to whatever server it names."""
    host, port = request.scope["server"]
    if ":" in host:
        host = f"[{host}]"  # IPv6
    return f"http://{host}:{port}{path}"


def create_app(upstream_url: str | None = None, *, api_key: str | None = None) -> Starlette:
    """The proxy, and the fake model it uses when *upstream_url* is ``None``.

    :param upstream_url: an OpenAI-compatible ``/v1/chat/completions`` URL.
    :param api_key: sent as a bearer token.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # One client for every stream: its connection pool and TLS context are made once.
        # A stream's upstream response is still closed when the stream ends, however it ends.
        async with httpx.AsyncClient() as client:
            app.state.http = client
            yield

    async def chat(request: Request) -> Response:
        url = upstream_url or own_url(request, request.app.url_path_for("fake_model"))
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": request.query_params.get("prompt", "")}],
        }
        upstream = httpx.Request("POST", url, json=body, headers=headers)
        return EventSourceResponse(
            upstream_events(
                upstream,
                client=request.app.state.http,
                read_timeout=UPSTREAM_READ_TIMEOUT,
                transform=token,
            ),
            max_duration=MAX_DURATION,
        )

    async def fake_model(request: Request) -> Response:
        too_large = PlainTextResponse(
            f"the request is larger than {FAKE_MAX_REQUEST} bytes", status_code=413
        )
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > FAKE_MAX_REQUEST:
            return too_large  # before a byte of it is read
        received = 0
        async with aclosing(request.stream()) as body:  # closed when left early, not collected
            async for chunk in body:
                received += len(chunk)
                if received > FAKE_MAX_REQUEST:
                    return too_large

        async def generate(send: StreamSender[ServerSentEvent | str]) -> None:
            for word in FAKE_TEXT.split(" "):
                delta = {"choices": [{"delta": {"content": word + " "}}]}
                await send(json.dumps(delta))
                await anyio.sleep(FAKE_WORD_INTERVAL)
            await send("[DONE]")

        return EventSourceResponse(generate, heartbeat_interval=None)

    return Starlette(
        routes=[
            Route("/chat", chat),
            Route("/fake/v1/chat/completions", fake_model, methods=["POST"], name="fake_model"),
        ],
        lifespan=lifespan,
    )


app = create_app(os.environ.get("LLM_URL"), api_key=os.environ.get("LLM_API_KEY"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # argparse converts a str default as it does a given value: a bad $PORT is a usage error.
    parser.add_argument("--port", type=int, default=os.environ.get("PORT", "8000"))
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    arguments = parser.parse_args()
    # Serves until Ctrl-C, then drains the streams; logs every stream's end.
    run(app, backend=arguments.backend, bind=f"127.0.0.1:{arguments.port}")
