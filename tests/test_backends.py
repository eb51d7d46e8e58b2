"""What a cancelled ``serve`` does with hypercorn's asyncio worker, which runs in a task of its
own (see ``streamkit._backends``): a stand-in worker that will not stop, no server."""

from __future__ import annotations

import gc
import logging

import anyio
import pytest

from streamkit._backends import CANCELLED_RETRY_INTERVAL, _stopped_when_cancelled

pytestmark = pytest.mark.anyio

#: How long serve waits for the worker to stop once cancelled, here.
STOP_WITHIN = 0.25


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the repair is of hypercorn's asyncio worker


class Stubborn:
    """A worker that outlives the stop bound: cancelled, it takes *overrun* seconds more,
    shielded, then raises *error*, if any."""

    def __init__(self, overrun: float, error: Exception | None = None) -> None:
        self.overrun = overrun
        self.error = error
        self.finished = anyio.Event()
        self.stops = 0  # the tries at stopping it

    async def serve(self) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(self.overrun)
            self.finished.set()
            if self.error is not None:
                raise self.error

    async def stop(self) -> None:
        self.stops += 1  # and stops nothing

    async def cancel_its_serve(self) -> float:
        """Cancel a serve of it; return the seconds from the cancellation to serve's end."""
        async with anyio.create_task_group() as task_group:

            async def serve() -> None:
                await _stopped_when_cancelled(
                    self.serve(),
                    cancelled=self.stop,
                    starting=lambda: False,
                    stop_within=STOP_WITHIN,
                )

            task_group.start_soon(serve)
            await anyio.sleep(0.05)
            task_group.cancel_scope.cancel()
            cancelled_at = anyio.current_time()
        return anyio.current_time() - cancelled_at


async def test_a_worker_that_does_not_stop_is_given_up_at_the_bound_and_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The tries at stopping it were looped without a pause, and for good, once the bound had
    # passed: its cancellation was taken for the end of one try's wait.
    worker = Stubborn(overrun=1.0)
    with anyio.fail_after(5):
        took = await worker.cancel_its_serve()
        await worker.finished.wait()
    assert STOP_WITHIN <= took < STOP_WITHIN + 0.5
    assert 1 <= worker.stops <= STOP_WITHIN / CANCELLED_RETRY_INTERVAL + 1
    assert "the server did not stop within 0.250 s of its cancellation" in caplog.text


async def test_a_worker_that_fails_after_it_was_given_up_is_said_not_left_to_asyncio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given up, it is no longer awaited: what it raises then would reach nobody, and asyncio
    # would log it as never retrieved at some later collection, saying nothing of its origin.
    worker = Stubborn(overrun=0.3, error=RuntimeError("the worker's own failure"))
    with anyio.fail_after(5):
        await worker.cancel_its_serve()
        await worker.finished.wait()
        await anyio.sleep(0.01)  # its done callbacks run
    gc.collect()
    said = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record.getMessage() for record in said] == [
        "the server's task, given up after its cancellation, failed"
    ]
    assert said[0].exc_info is not None
    assert str(said[0].exc_info[1]) == "the worker's own failure"
    assert "never retrieved" not in caplog.text
