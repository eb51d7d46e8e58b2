"""The registry of running streams, fed by the runtime on a
:class:`~streamkit.testing.FakeConnection`: what it counts, how parents see their children's
streams, the drain, and the waits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
import pytest
from starlette.types import Message
from support.bodies import Body

from streamkit import EndReason, StreamEnd, StreamOptions, StreamSender
from streamkit._registry import StreamRegistry, current_registry, registry, using_registry
from streamkit._runtime import deliver
from streamkit.testing import FakeConnection

pytestmark = pytest.mark.anyio


class Connection(FakeConnection):
    """A fake connection that tells when its client has received body bytes."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.received = anyio.Event()

    async def send(self, message: Message) -> None:
        await super().send(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.received.set()


class Held:
    """A stream that sends one item and then waits until its client leaves."""

    def __init__(self, path: str = "/held") -> None:
        self.body = Body(self.produce, StreamOptions(heartbeat_interval=None))
        self.connection = Connection(path)

    async def produce(self, send: StreamSender[str]) -> None:
        await send("first")
        await anyio.sleep_forever()


@asynccontextmanager
async def running(target: StreamRegistry, *streams: Held) -> AsyncIterator[None]:
    """Run *streams* reporting to *target*; their clients leave when the block exits."""
    async with anyio.create_task_group() as task_group:
        with using_registry(target):
            for stream in streams:
                task_group.start_soon(stream.connection.run, partial(deliver, stream.body))
        with anyio.fail_after(5):
            for stream in streams:
                await stream.connection.received.wait()
        try:
            yield
        finally:
            for stream in streams:
                stream.connection.disconnect()


def end_of(reason: EndReason) -> StreamEnd:
    return StreamEnd(
        reason=reason, path="/x", duration=0.0, items_sent=0, bytes_sent=0, cleanup_duration=0.0
    )


async def test_a_running_stream_is_seen_then_counted_by_how_it_ended() -> None:
    streams = StreamRegistry()
    held = Held("/prices")
    async with running(streams, held):
        statistics = streams.statistics()
        assert statistics.active == 1
        assert sum(statistics.ended.values()) == 0
        (active,) = streams.active_streams()
        assert (active.path, active.client, active.items_sent) == (
            "/prices",
            ("127.0.0.1", 50000),
            1,
        )
        assert active.bytes_sent == len(b"first|")
    with anyio.fail_after(5):
        await streams.wait_idle()
    after = streams.statistics()
    assert after.active == 0
    assert after.ended[EndReason.CLIENT_DISCONNECTED] == 1
    assert set(after.ended) == set(EndReason)  # every reason has a count, zero or not
    assert statistics.active == 1, "a snapshot does not change afterwards"
    (end,) = streams.recent_ends()
    assert (end.path, end.reason) == ("/prices", EndReason.CLIENT_DISCONNECTED)


async def test_a_parent_sees_its_childrens_streams_and_siblings_do_not() -> None:
    parent = StreamRegistry()
    child, sibling = StreamRegistry(parent=parent), StreamRegistry(parent=parent)
    async with running(child, Held()):
        assert (parent.statistics().active, child.statistics().active) == (1, 1)
        assert sibling.statistics().active == 0
    with anyio.fail_after(5):
        await parent.wait_idle()
    assert parent.statistics().ended[EndReason.CLIENT_DISCONNECTED] == 1
    assert child.statistics().ended[EndReason.CLIENT_DISCONNECTED] == 1
    assert sum(sibling.statistics().ended.values()) == 0
    assert sibling.recent_ends() == ()


async def test_streams_report_to_the_registry_current_where_they_started() -> None:
    assert current_registry() is registry
    mine = StreamRegistry()
    before = sum(registry.statistics().ended.values())
    with using_registry(mine):
        assert current_registry() is mine
        body = Body(lambda send: send("x"))
        await FakeConnection().run(partial(deliver, body))
    assert current_registry() is registry
    assert mine.statistics().ended[EndReason.COMPLETED] == 1
    # mine has no parent: the process-wide registry did not count it
    assert sum(registry.statistics().ended.values()) == before


async def test_a_drain_ends_running_streams_and_every_later_one_with_shutdown() -> None:
    parent = StreamRegistry()
    child = StreamRegistry(parent=parent)
    held = Held()
    async with running(child, held):
        parent.drain()
        with anyio.fail_after(5):
            await child.wait_idle()
        assert held.connection.body == b"first|<shutdown>"
        assert held.connection.complete
        assert child.draining, "a child of a draining registry drains too"
        assert child.statistics().draining

        ran = False

        async def never(send: StreamSender[str]) -> None:
            nonlocal ran
            ran = True

        later = Body(never)
        connection = FakeConnection()
        with using_registry(child):
            await connection.run(partial(deliver, later))
        assert not ran, "a stream started during the drain never runs its producer"
        assert later.end.reason is EndReason.SHUTDOWN
        assert connection.body == b"<shutdown>"
    assert parent.statistics().ended[EndReason.SHUTDOWN] == 2


async def test_draining_a_child_leaves_its_parent_and_siblings_serving() -> None:
    parent = StreamRegistry()
    child, sibling = StreamRegistry(parent=parent), StreamRegistry(parent=parent)
    left, right = Held(), Held()
    async with running(child, left), running(sibling, right):
        child.drain()
        with anyio.fail_after(5):
            await child.wait_idle()
        assert not parent.draining
        assert not sibling.draining
        assert sibling.statistics().active == 1
        assert right.connection.body == b"first|"
    assert left.body.end.reason is EndReason.SHUTDOWN
    assert right.body.end.reason is EndReason.CLIENT_DISCONNECTED


async def test_wait_idle_returns_when_the_last_stream_ends() -> None:
    streams = StreamRegistry()
    await streams.wait_idle()  # nothing running: at once
    first, second = Held(), Held()
    idle = anyio.Event()

    async def wait() -> None:
        await streams.wait_idle()
        idle.set()

    async with running(streams, first, second), anyio.create_task_group() as task_group:
        task_group.start_soon(wait)
        first.connection.disconnect()
        with anyio.fail_after(5):
            await streams.wait_ended(1)
        assert not idle.is_set(), "one stream still runs"
        second.connection.disconnect()
        with anyio.fail_after(5):
            await idle.wait()
    assert streams.statistics().active == 0


async def test_wait_ended_counts_every_end_and_returns_the_reports() -> None:
    streams = StreamRegistry()
    results: list[tuple[StreamEnd, ...]] = []

    async def wait() -> None:
        results.append(await streams.wait_ended(2))

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        streams.finish(object(), end_of(EndReason.COMPLETED))  # type: ignore[arg-type]
        await anyio.wait_all_tasks_blocked()
        assert results == []
        streams.finish(object(), end_of(EndReason.ERROR))  # type: ignore[arg-type]
    (ends,) = results
    assert [end.reason for end in ends] == [EndReason.COMPLETED, EndReason.ERROR]


def test_recent_ends_keep_the_newest_within_the_history() -> None:
    streams = StreamRegistry(history=3)
    reasons = list(EndReason)[:5]
    for reason in reasons:
        streams.finish(object(), end_of(reason))  # type: ignore[arg-type]
    assert [end.reason for end in streams.recent_ends()] == reasons[2:]
    assert sum(streams.statistics().ended.values()) == 5, "the totals keep every end"


def test_the_statistics_cannot_be_changed_by_their_reader() -> None:
    streams = StreamRegistry()
    ended = streams.statistics().ended
    with pytest.raises(TypeError):
        ended[EndReason.COMPLETED] = 5  # type: ignore[index]
