"""Headless Chromium for the tests: installing it, launching it and driving it.

No browser download and no driver: Debian's ``chromium`` package, launched with a DevTools
port, and a small client for the DevTools protocol over a websocket (wsproto on anyio's
sockets, so that it runs on whichever backend the test runs on, beside the server under test).

``python tests/browser.py`` installs Chromium where it is missing (CI does it through
``tests/support/services.py``); the browser tests skip, saying why, where it cannot be had (under
``CI`` they fail).
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from support.unavailable import service_unavailable

__all__ = ["Browser", "DevToolsError", "Page", "find_chromium", "open_browser"]

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome")

#: Headless, no sandbox (it refuses to start as root with one), and nothing that would reach
#: the network or make the run depend on earlier runs.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)

_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def find_chromium() -> str | None:
    """The path of a Chromium executable on ``PATH``, or ``None``."""
    for name in EXECUTABLES:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def why_missing() -> str:
    """Why there is no Chromium here."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "Chromium is not installed, and installing it needs root (apt-get install chromium)"
    if shutil.which("apt-get") is None:
        return "Chromium is not installed, and there is no apt-get here to install it with"
    return "Chromium is not installed: `python tests/support/services.py` installs it"


def require_chromium() -> str:
    """The path of Chromium; skips the test, or under CI fails it, where there is none."""
    path = find_chromium()
    if path is None:
        service_unavailable(
            f"{why_missing()}; run `python tests/support/services.py` as root to install it"
        )
    return path


class DevToolsError(Exception):
    """Chromium answered a DevTools command with an error, or could not be driven."""


class _Connection:
    """One websocket to the browser's DevTools endpoint, carrying every session's messages."""

    def __init__(self, stream: anyio.abc.SocketStream, ws: WSConnection) -> None:
        self._stream = stream
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, anyio.Event] = {}
        self._answers: dict[int, dict[str, Any]] = {}
        self._send_lock = anyio.Lock()
        self.events: list[dict[str, Any]] = []
        self.closed = anyio.Event()

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        answered = self._waiting[number] = anyio.Event()
        await self._send(self._ws.send(Message(data=json.dumps(message))))
        await answered.wait()
        answer = self._answers.pop(number)
        if "error" in answer:
            raise DevToolsError(f"{method} failed: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            await self._stream.send(data)

    async def read_forever(self) -> None:
        text: list[str] = []
        try:
            while True:
                try:
                    data = await self._stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return
                self._ws.receive_data(data)
                for event in self._ws.events():
                    if isinstance(event, TextMessage):
                        text.append(event.data)
                        if event.message_finished:
                            self._dispatch(json.loads("".join(text)))
                            text.clear()
                    elif isinstance(event, Ping):
                        await self._send(self._ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        return
        finally:
            self.closed.set()
            for number, answered in self._waiting.items():
                self._answers.setdefault(number, {"error": "the DevTools connection closed"})
                answered.set()

    def _dispatch(self, message: dict[str, Any]) -> None:
        number = message.get("id")
        if number is None:
            self.events.append(message)
            return
        answered = self._waiting.pop(number, None)
        if answered is not None:
            self._answers[number] = message
            answered.set()


class Page:
    """A tab, attached to with its own DevTools session."""

    def __init__(self, connection: _Connection, target: str, session: str) -> None:
        self._connection = connection
        self.target = target
        self.session = session

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a DevTools command to this page."""
        return await self._connection.call(method, params, session=self.session)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited).

        :raises DevToolsError: the expression threw.
        """
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, within: float) -> Any:
        """Wait, in the page, until *expression* is truthy, and return its value.

        The page checks it every 20 ms; an expression that throws counts as false.

        :raises TimeoutError: it was not truthy within *within* seconds.
        """
        waiter = (
            "new Promise((resolve) => { const check = () => { let value; "
            f"try {{ value = ({expression}); }} catch (error) {{ value = undefined; }} "
            "if (value) resolve(value); else setTimeout(check, 20); }; check(); })"
        )
        with anyio.fail_after(within):
            return await self.evaluate(waiter)

    async def screenshot(self, path: Path) -> None:
        """Save a PNG of the page as it is now."""
        result = await self.call("Page.captureScreenshot", {"format": "png"})
        await anyio.Path(path).write_bytes(base64.b64decode(result["data"]))

    async def close(self) -> None:
        """Close the tab, as a user closing it would."""
        await self._connection.call("Target.closeTarget", {"targetId": self.target})


class Browser:
    """A running headless Chromium, from :func:`open_browser`."""

    def __init__(self, connection: _Connection, version: str) -> None:
        self._connection = connection
        self.version = version

    async def open_page(self, url: str, *, width: int = 1280, height: int = 1400) -> Page:
        """Open *url* in a new tab of *width* by *height* pixels."""
        created = await self._connection.call("Target.createTarget", {"url": "about:blank"})
        target = created["targetId"]
        attached = await self._connection.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )
        page = Page(self._connection, target, attached["sessionId"])
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        await page.call("Page.navigate", {"url": url})
        return page


async def _connect(url: str) -> _Connection:
    match = re.fullmatch(r"ws://([^/:]+):(\d+)(/.*)", url)
    if match is None:
        raise DevToolsError(f"unexpected DevTools address: {url!r}")
    host, port, target = match[1], int(match[2]), match[3]
    stream = await anyio.connect_tcp(host, port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send(ws.send(Request(host=f"{host}:{port}", target=target)))
    while True:
        ws.receive_data(await stream.receive())
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return _Connection(stream, ws)
            if isinstance(event, RejectConnection):
                await stream.aclose()
                raise DevToolsError(f"Chromium refused the DevTools websocket: {event}")


@asynccontextmanager
async def open_browser(
    executable: str | None = None, *, flags: Sequence[str] = ()
) -> AsyncIterator[Browser]:
    """Launch headless Chromium with a fresh profile, connected over DevTools; close it on exit.

    :param executable: the Chromium to run; by default the one :func:`find_chromium` finds.
    :param flags: command-line flags added to :data:`FLAGS`.
    :raises DevToolsError: there is no Chromium, or it did not start within 30 seconds.
    """
    executable = executable or find_chromium()
    if executable is None:
        raise DevToolsError(why_missing())
    with tempfile.TemporaryDirectory(prefix="streamkit-chromium-") as profile:
        command = [executable, *FLAGS, *flags, f"--user-data-dir={profile}", "about:blank"]
        process = await anyio.open_process(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        output: collections.deque[str] = collections.deque(maxlen=50)
        listening = anyio.Event()
        address: list[str] = []

        async def read_output() -> None:
            # Read to the end: Chromium blocks once the pipe is full.
            assert process.stderr is not None
            pending = ""
            async for chunk in process.stderr:
                pending += chunk.decode(errors="replace")
                *lines, pending = pending.split("\n")
                for line in lines:
                    output.append(line)
                    match = _LISTENING.search(line)
                    if match and not listening.is_set():
                        address.append(match[1])
                        listening.set()
            listening.set()

        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(read_output)
                with anyio.move_on_after(30.0):
                    await listening.wait()
                if not address:
                    raise DevToolsError(
                        "Chromium did not start: " + " | ".join(list(output)[-8:] or ["no output"])
                    )
                connection = await _connect(address[0])
                task_group.start_soon(connection.read_forever)
                version = await connection.call("Browser.getVersion")
                try:
                    yield Browser(connection, version.get("product", "?"))
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                        try:
                            await connection.call("Browser.close")
                        except DevToolsError:
                            pass  # it closed as it answered
                        await process.wait()
                    task_group.cancel_scope.cancel()
                    with anyio.CancelScope(shield=True):
                        await connection.aclose()
        except BaseExceptionGroup as group:
            # Raise what the test raised (a failed assert, a skip), not the task group's
            # wrapping of it.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                await process.aclose()
