"""The server process killed (SIGKILL) in the middle of a stream and started again on the same
port: the client resumes from its last id, with no event missing and none twice.

The server is ``support.counting``: stateless, it starts each response after the
``Last-Event-ID`` it is sent, and logs every id it sends, so the test can count what each
process sent against what the client received.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
from support.counting import sent_ids
from support.ports import free_port

from streamkit.client import Backoff, open_event_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

TESTS = Path(__file__).resolve().parents[2]
#: Events the client reads in all; the first server is killed after KILL_AT of them.
TOTAL = 300
KILL_AT = 100


async def _wait_listening(port: int, process: anyio.abc.Process, *, within: float) -> None:
    with anyio.fail_after(within):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.02)
            else:
                await stream.aclose()
                return


@asynccontextmanager
async def counting_server(backend: str, port: int, log: Path) -> AsyncIterator[anyio.abc.Process]:
    """``support.counting`` served by a process of its own on *port*; killed on the way out."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), *filter(None, [environment.get("PYTHONPATH")])]
    )
    command = [sys.executable, "-m", "support.counting", backend, str(port), str(log)]
    async with await anyio.open_process(command, env=environment, stdout=None) as process:
        try:
            await _wait_listening(port, process, within=30)
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()


async def test_a_server_killed_and_restarted_mid_stream_is_resumed_without_gap_or_duplicate(
    anyio_backend: str, tmp_path: Path
) -> None:
    port = free_port()
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    received: list[int] = []
    backoff = Backoff(initial_delay=0.05, max_delay=0.5, max_reconnect_time=30.0)
    async with anyio.create_task_group() as task_group:
        async with counting_server(anyio_backend, port, first_log) as first:
            second_started = anyio.Event()

            async def restart_later() -> None:
                await anyio.sleep(0.5)  # the client meanwhile finds the port closed
                async with counting_server(anyio_backend, port, second_log):
                    second_started.set()
                    await anyio.sleep_forever()

            async with open_event_stream(
                f"http://127.0.0.1:{port}/count", backoff=backoff, heartbeat_interval=5.0
            ) as stream:
                with anyio.fail_after(60):
                    async for event in stream:
                        assert event.id == event.data
                        received.append(int(event.data or ""))
                        if len(received) == KILL_AT:
                            # Unread events pile up meanwhile: in flight when it dies.
                            await anyio.sleep(0.1)
                            first.send_signal(signal.SIGKILL)
                            await first.wait()
                            task_group.start_soon(restart_later)
                        if len(received) == TOTAL:
                            break
                statistics = stream.statistics()
            assert second_started.is_set()
        task_group.cancel_scope.cancel()

    sent_first, sent_second = sent_ids(str(first_log)), sent_ids(str(second_log))
    assert received == list(range(1, TOTAL + 1))
    # The first process's ids are consecutive from 1; the second resumed after the last id
    # the client had, which is at least the KILL_AT-th (what it had not read yet, sent by
    # the first but lost with it, is sent again).
    assert sent_first == list(range(1, len(sent_first) + 1))
    resumed_after = sent_second[0] - 1
    assert KILL_AT <= resumed_after <= len(sent_first)
    assert sent_second[: TOTAL - resumed_after] == list(range(resumed_after + 1, TOTAL + 1))
    assert statistics.reconnects == 1
    assert statistics.failed_attempts >= 1  # refused while no server listened
    assert statistics.last_event_id == str(TOTAL)
    print(
        f"\nkill-and-restart ({anyio_backend}): first server sent {len(sent_first)}, "
        f"second sent {len(sent_second)} (from id {resumed_after + 1}), "
        f"client received {len(received)} ({len(set(received))} distinct, "
        f"ids 1..{max(received)}); lost in flight and sent again: "
        f"{len(sent_first) - resumed_after}; failed attempts while down: "
        f"{statistics.failed_attempts}"
    )
