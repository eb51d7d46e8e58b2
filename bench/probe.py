"""What the server records for the runner, and the control endpoints that hand it over.

Every implementation calls :meth:`Probe.stream_started` when its producer begins and
:meth:`Probe.cleanup_done` as the last step of the producer's own cleanup. The timestamps are
``time.monotonic()``: on Linux that is ``CLOCK_MONOTONIC``, shared by every process, so the
runner can subtract the moment it closed a socket from the moment the server finished cleaning
up. (``anyio.current_time()`` would not do: trio's clock has a per-run offset.)

The control endpoints live under ``/_bench/`` and are served beside the implementation's app,
by the same worker, for every implementation alike.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import anyio

__all__ = ["ASGIApp", "Collections", "Probe", "with_probe"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The longest a control request may wait for cleanups, in seconds.
MAX_WAIT = 60.0


class Collections:
    """What the garbage collector did in this process since it was made: full collections,
    and the CPU seconds of every collection. A full collection walks every object a server
    holds, a pause of hundreds of milliseconds with thousands of streams, which lands in a
    measurement or not by the phase of the collector's counts."""

    def __init__(self) -> None:
        self.full = 0
        self.seconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
            return
        self.seconds += time.process_time() - self._started
        if info["generation"] == 2:
            self.full += 1

    def stop(self) -> None:
        """Count no more."""
        gc.callbacks.remove(self._note)


class Probe:
    """Counts streams and timestamps their cleanups, in the server process.

    :param impl: the implementation's name, reported by ``/_bench/state``.
    :param backend: the anyio backend's name.
    """

    def __init__(self, *, impl: str, backend: str) -> None:
        self.impl = impl
        self.backend = backend
        self.started = 0
        self.cleanups: list[float] = []
        self.returns: list[float] = []
        self.stop = anyio.Event()
        self.collections = Collections()
        self._changed: anyio.Event | None = None

    def stream_started(self) -> None:
        """A producer began."""
        self.started += 1

    def cleanup_done(self) -> None:
        """A producer's cleanup finished: the moment the benchmark measures to."""
        self.cleanups.append(time.monotonic())
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def stream_returned(self) -> None:
        """The implementation's ASGI call for a stream returned."""
        self.returns.append(time.monotonic())

    async def wait_cleanups(self, count: int, *, within: float) -> None:
        """Wait until *count* cleanups have been recorded in all, or *within* seconds."""
        with anyio.move_on_after(min(within, MAX_WAIT)):
            while len(self.cleanups) < count:
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()

    def state(self, *, since: int = 0) -> dict[str, Any]:
        return {
            "impl": self.impl,
            "backend": self.backend,
            "pid": os.getpid(),
            "started": self.started,
            "cleaned": len(self.cleanups),
            "returned": len(self.returns),
            "cleanups": self.cleanups[since:],
            "returns": self.returns[since:],
            "full_collections": self.collections.full,
            "collection_seconds": self.collections.seconds,
        }

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one control request.

        ``/_bench/state?since=K`` reports the counters and the timestamps from the K-th on;
        ``/_bench/wait?cleaned=N&within=S&since=K`` does the same once N cleanups are
        recorded (or S seconds passed); ``/_bench/stop`` begins the server's shutdown;
        ``/_bench/collect`` runs a full garbage collection.
        """
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        since = int(query.get("since", "0"))
        path = scope["path"]
        if path == "/_bench/wait":
            await self.wait_cleanups(
                int(query.get("cleaned", "0")), within=float(query.get("within", "10"))
            )
            body = self.state(since=since)
        elif path == "/_bench/state":
            body = self.state(since=since)
        elif path == "/_bench/stop":
            self.stop.set()
            body = {"stopping": True}
        elif path == "/_bench/collect":
            body = {"collected": gc.collect()}
        else:
            await _respond(send, 404, {"error": f"no control endpoint {path!r}"})
            return
        await _respond(send, 200, body)


async def _respond(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def with_probe(app: ASGIApp, probe: Probe) -> ASGIApp:
    """Serve the control endpoints beside *app*, and note when each stream's call returns."""

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
        elif scope["path"].startswith("/_bench/"):
            await probe.handle(scope, receive, send)
        else:
            try:
                await app(scope, receive, send)
            finally:
                probe.stream_returned()

    return dispatch
