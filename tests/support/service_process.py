"""A service run as a process of its own under a server's command (uvicorn, gunicorn, the
hypercorn command, streamkit run), for the tests of deployment: the lines it prints, each with
when, the port it announced, and a process group killed whatever happens."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.text import TextReceiveStream

from streamkit import ServerSentEvent
from streamkit.testing import StreamClient

#: How each server says where it listens, on stderr.
LISTENING = re.compile(r"(?:[Rr]unning on|Listening at:|serving on) http://127\.0\.0\.1:(\d+)")


async def lines(stream: ByteReceiveStream) -> AsyncGenerator[str, None]:
    """Whole lines: a read can end mid-line, and two workers' lines can share one read."""
    pending = ""
    async for chunk in TextReceiveStream(stream):
        *complete, pending = (pending + chunk).split("\n")
        for line in complete:
            yield line
    if pending:
        yield pending


class Running:
    """A server process, what it printed, and when."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.host = "127.0.0.1"
        self.port = 0
        self.listening = anyio.Event()
        self.stdout: list[tuple[float, str]] = []
        self.stderr: list[str] = []
        self._changed = anyio.Event()

    async def read_stdout(self) -> None:
        assert self.process.stdout is not None
        async for line in lines(self.process.stdout):
            self.stdout.append((anyio.current_time(), line))
            self._changed.set()
            self._changed = anyio.Event()

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in lines(self.process.stderr):
            self.stderr.append(line)
            found = LISTENING.search(line)
            if found and not self.listening.is_set():
                self.port = int(found[1])
                self.listening.set()

    async def wait_line(self, prefix: str, *, within: float = 5.0) -> float:
        """When the first line starting with *prefix* was printed."""
        with anyio.fail_after(within):
            while True:
                for at, line in self.stdout:
                    if line.startswith(prefix):
                        return at
                await self._changed.wait()

    def printed(self, prefix: str = "") -> list[str]:
        """The lines printed that start with *prefix*, in order."""
        return [line for _, line in self.stdout if line.startswith(prefix)]

    def signal_and_time(self) -> float:
        self.process.send_signal(signal.SIGTERM)
        return anyio.current_time()

    async def wait_exit(self, *, within: float) -> float:
        with anyio.fail_after(within):
            await self.process.wait()
        return anyio.current_time()


@asynccontextmanager
async def running(
    command: list[str], directory: Path, source: str, *, start_within: float, exit_within: float
) -> AsyncIterator[Running]:
    """Write *source* as ``service.py`` in *directory* and run *command* there until it has
    said where it listens (within *start_within* seconds); yield it, then wait up to
    *exit_within* seconds for it to exit. Its process group is killed on the way out."""
    (directory / "service.py").write_text(source)
    process = await anyio.open_process(
        command,
        cwd=directory,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # A group of its own: whatever happens, no worker outlives the test (below).
        start_new_session=True,
    )
    service = Running(process)
    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(service.read_stdout)
            task_group.start_soon(service.read_stderr)
            with anyio.fail_after(start_within):
                await service.listening.wait()
            yield service
            with anyio.fail_after(exit_within):
                await process.wait()
    finally:
        # After a failure, hypercorn's workers would serve on without their parent.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await process.wait()
        await process.aclose()


async def read_farewell(client: StreamClient) -> float:
    """Read *client*'s stream to the end of its body, which must be the shutdown farewell
    (``retry: 1000``) and nothing after; return when the farewell arrived."""
    while (event := await client.read_event()).event != "shutdown":
        pass
    arrived = anyio.current_time()
    assert event == ServerSentEvent(event="shutdown", data="", retry=1000)
    assert [event async for event in client.events()] == []
    assert client.complete
    return arrived
