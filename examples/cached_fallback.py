"""An endpoint that answers within half a second although its source sometimes takes ten.

Run it, on asyncio or trio::

    python examples/cached_fallback.py          # asyncio
    python examples/cached_fallback.py trio

and ask for a quote a few times::

    curl -i http://127.0.0.1:8000/quote/ACME

The simulated upstream is slow on every other call. A fast call answers fresh (``X-Cache:
miss``); a slow one answers at the deadline with the last good value (``X-Cache: stale``, an
``Age`` header and ``"cache": true`` in the body), while the slow fetch carries on in the
app's refresher and updates the cache when it returns. A symbol never fetched before, asked
for while the upstream is slow, gets ``503`` with ``Retry-After``.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import streamkit
import streamkit.fallback

_calls = itertools.count(1)


async def fetch_quote(symbol: str) -> dict[str, Any]:
    """The slow upstream: every other call takes ten seconds."""
    call = next(_calls)
    await anyio.sleep(10.0 if call % 2 == 0 else 0.1)
    return {"symbol": symbol, "price": 100 + call, "fetched": call}


# Refreshes that miss the deadline finish here; the lifespan owns it, so shutting the
# server down cancels whatever is still running.
refresher = streamkit.fallback.Refresher(max_refreshes=8, refresh_timeout=30.0)
quotes = streamkit.fallback.Fallback(
    fetch_quote,
    fallback_after=0.5,
    max_staleness=3600.0,
    refresher=refresher,
)


async def quote(request: Request) -> Response:
    return await streamkit.fallback.respond_with_fallback(
        quotes, request.path_params["symbol"], cache_flag="cache", retry_after=10.0
    )


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with refresher:
        yield


app = Starlette(routes=[Route("/quote/{symbol}", quote)], lifespan=lifespan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", nargs="?", choices=["asyncio", "trio"], default="asyncio")
    backend = parser.parse_args().backend
    print(f"serving on http://127.0.0.1:8000 with {backend}; Ctrl+C to stop")
    anyio.run(lambda: streamkit.serve(app, bind="127.0.0.1:8000"), backend=backend)
