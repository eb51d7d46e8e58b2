"""The producer-to-writer buffer: bounded, in order, batched, and safe to cancel on both ends."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from streamkit._buffer import FrameBuffer
from streamkit._loop import loop_facts

pytestmark = pytest.mark.anyio


def buffer_of(capacity: int) -> FrameBuffer:
    """A buffer as the runtime makes it: waits on the loop's own event and wakeups."""
    facts = loop_facts()
    return FrameBuffer(capacity, facts.event, facts.wakeup)


async def take(buffer: FrameBuffer, max_bytes: int) -> list[bytes | None]:
    """Take frames as the stream's writer does: those queued, else wait and take again; ``[]``
    once nothing more will come."""
    while not (frames := buffer.take_nowait(max_bytes)):
        if (readable := buffer.readable()) is None:
            return []
        try:
            await readable
        except BaseException:
            buffer.wait_cancelled()
            raise
    return list(frames)


async def test_frames_come_out_in_order_in_one_batch() -> None:
    buffer = buffer_of(4)
    for frame in (b"a", None, b"b"):
        assert buffer.offer(frame)
    assert await take(buffer, 1024) == [b"a", None, b"b"]
    assert len(buffer) == 0


async def test_a_batch_stops_once_it_holds_max_bytes() -> None:
    buffer = buffer_of(8)
    for frame in (b"12", None, b"34", b"56", b"78"):
        assert buffer.offer(frame)
    assert await take(buffer, 4) == [b"12", None, b"34"]
    assert await take(buffer, 1) == [b"56"]
    assert await take(buffer, 1024) == [b"78"]
    # Without a heartbeat among them (a burst of a fan-out), the same batches.
    for frame in (b"12", b"34", b"56", b"78"):
        assert buffer.offer(frame)
    assert await take(buffer, 4) == [b"12", b"34"]
    assert await take(buffer, 4) == [b"56", b"78"]
    for frame in (b"12", b"34", b"5"):
        assert buffer.offer(frame)
    assert await take(buffer, 4) == [b"12", b"34"]
    assert await take(buffer, 4) == [b"5"]


async def test_the_bytes_queued_are_kept_right_through_bursts_partial_takes_and_a_full_buffer() -> (
    None
):
    # The writer bounds a batch by the bytes the buffer counted as frames came, not by
    # summing them: any drift would make batches too large, or cut them short.
    buffer = buffer_of(6)
    assert buffer.offer(b"1")
    assert buffer.offer_many([b"22", b"33"], 4) == 2
    assert buffer.offer_many([b"44", b"55", b"66", b"77"]) == 3  # 3 fit: their size, not 8
    assert await take(buffer, 5) == [b"1", b"22", b"33"]
    assert await take(buffer, 4) == [b"44", b"55"]
    assert buffer.offer(None)
    assert buffer.offer_many([b"88"], 2) == 1
    assert await take(buffer, 4) == [b"66", None, b"88"]
    assert buffer.offer_many([b"abc", b"def"], 6) == 2
    assert await take(buffer, 3) == [b"abc"]
    assert await take(buffer, 3) == [b"def"]


async def test_a_full_buffer_refuses_then_holds_the_producer_until_the_writer_takes() -> None:
    buffer = buffer_of(2)
    assert buffer.offer(b"1")
    assert buffer.offer(b"2")
    assert not buffer.offer(b"3")
    queued = anyio.Event()

    async def produce() -> None:
        await buffer.put(b"3")
        queued.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(produce)
            await anyio.wait_all_tasks_blocked()
            assert not queued.is_set()
            assert await take(buffer, 1024) == [b"1", b"2"]
            await queued.wait()
    assert await take(buffer, 1024) == [b"3"]


async def to_a_waiting_writer(
    buffer: FrameBuffer, offer: Callable[[], object]
) -> list[bytes | None]:
    """Call *offer* once a writer waits on *buffer*, empty; return what the writer took."""
    taken: list[bytes | None] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:

            async def write() -> None:
                taken.extend(await take(buffer, 1024))

            task_group.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            offer()
    return taken


async def test_with_no_room_a_frame_goes_only_to_a_waiting_writer() -> None:
    buffer = buffer_of(0)
    assert not buffer.offer(b"early")
    offered: list[bool] = []
    taken = await to_a_waiting_writer(
        buffer, lambda: offered.extend([buffer.offer(b"1"), buffer.offer(b"2")])
    )
    assert (offered, taken) == ([True, False], [b"1"])


async def test_offer_many_queues_what_fits_in_order_and_wakes_the_writer_once() -> None:
    buffer = buffer_of(4)
    assert buffer.offer(b"0")
    assert buffer.offer_many([b"1", b"2", b"3", b"4", b"5"]) == 3  # room for 3 of them
    assert buffer.offer_many([b"4"]) == 0  # full: nothing queued, none skipped
    assert buffer.offer_many([]) == 0
    assert await take(buffer, 1024) == [b"0", b"1", b"2", b"3"]
    offered: list[int] = []
    taken = await to_a_waiting_writer(
        buffer, lambda: offered.append(buffer.offer_many([b"4", b"5"]))
    )
    assert (offered, taken) == ([2], [b"4", b"5"])  # one wake, one take, for the whole burst


async def test_offer_many_with_no_room_hands_one_frame_to_a_waiting_writer_as_offer_does() -> None:
    buffer = buffer_of(0)
    assert buffer.offer_many([b"early"]) == 0
    offered: list[int] = []
    taken = await to_a_waiting_writer(
        buffer, lambda: offered.append(buffer.offer_many([b"1", b"2"]))
    )
    assert (offered, taken) == ([1], [b"1"])
    buffer.close()
    with pytest.raises(anyio.ClosedResourceError):
        buffer.offer_many([b"late"])


async def test_a_cancelled_wait_for_frames_loses_none() -> None:
    buffer = buffer_of(0)
    with anyio.move_on_after(0.01):
        await take(buffer, 1024)
    # The cancelled writer no longer counts as waiting: nothing may be handed to it.
    assert not buffer.offer(b"lost?")
    # Woken and cancelled before it runs: the writer ends with the frames (both backends let
    # a completed wait finish) or leaves them queued; either way none is dropped.
    buffer = buffer_of(4)

    def put_then_cancel(writer: anyio.CancelScope) -> None:
        assert buffer.offer(b"1")
        writer.cancel()

    taken = await while_a_writer_waits(buffer, put_then_cancel)
    if not taken:
        with anyio.fail_after(5):
            taken.append(await take(buffer, 1024))
    assert taken == [[b"1"]]
    assert len(buffer) == 0


async def while_a_writer_waits(
    buffer: FrameBuffer, act: Callable[[anyio.CancelScope], None]
) -> list[list[bytes | None]]:
    """Start a writer waiting for frames, then *act* (handed the writer's cancel scope);
    return what the writer took, once it has ended."""
    taken: list[list[bytes | None]] = []

    async def write() -> None:
        taken.append(await take(buffer, 1024))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            act(task_group.cancel_scope)
    return taken


async def test_close_lets_the_writer_drain_and_then_ends_it() -> None:
    buffer = buffer_of(4)
    assert buffer.offer(b"last")
    buffer.close()
    with pytest.raises(anyio.ClosedResourceError):
        buffer.offer(b"late")
    assert await take(buffer, 1024) == [b"last"]
    assert await take(buffer, 1024) == []


async def test_close_wakes_a_waiting_writer_and_a_waiting_producer() -> None:
    buffer = buffer_of(1)
    assert buffer.offer(b"1")
    outcomes: list[object] = []

    async def produce() -> None:
        try:
            await buffer.put(b"2")
        except anyio.ClosedResourceError as exc:
            outcomes.append(type(exc))

    waiting = buffer_of(1)

    async def write() -> None:
        outcomes.append(await take(waiting, 1024))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(produce)
            task_group.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            buffer.close()
            waiting.close()
    assert sorted(outcomes, key=repr) == sorted([anyio.ClosedResourceError, []], key=repr)


async def test_with_no_room_a_waiting_producer_hands_over_once_the_writer_waits() -> None:
    """buffer_size=0: the producer is first to wait (the writer is still busy with the
    response head); the writer's wait must let it hand its frame over."""
    buffer = buffer_of(0)
    taken: list[list[bytes | None]] = []
    with anyio.fail_after(2):
        async with anyio.create_task_group() as task_group:

            async def produce() -> None:
                for frame in (b"1", b"2", b"3"):
                    await buffer.put(frame)
                buffer.close()

            task_group.start_soon(produce)
            await anyio.wait_all_tasks_blocked()  # the producer waits for room first
            while frames := await take(buffer, 1024):
                taken.append(frames)
    assert [frame for frames in taken for frame in frames] == [b"1", b"2", b"3"]


async def test_a_stopped_reader_takes_nothing_more_even_a_frame_queued_as_it_wakes() -> None:
    # What the runtime does when the client left while the writer waited: nothing queued,
    # now or later, is taken to be written.
    buffer = buffer_of(4)

    def stop_then_put(writer: anyio.CancelScope) -> None:
        assert buffer.reader_waiting
        buffer.stop_reader()
        assert buffer.offer(b"queued before the reader woke")

    assert await while_a_writer_waits(buffer, stop_then_put) == [[]]
    assert await take(buffer, 1024) == []
    # The producer is not refused (it is being cancelled); its frames stay where they are.
    assert buffer.offer(b"late")
    assert len(buffer) == 2


async def test_a_stopped_reader_waits_on_until_the_close_and_then_takes_nothing() -> None:
    # What the runtime does when the client left while the writer waited: the writer is not
    # woken for it, so the producer's cleanup goes first; the close after the producer's end
    # wakes it, to take nothing of what was queued meanwhile.
    buffer = buffer_of(4)

    def stop_then_close(writer: anyio.CancelScope) -> None:
        buffer.stop_reader()
        assert buffer.reader_waiting  # not woken by the stop
        assert buffer.offer(b"queued by the producer's cleanup")
        buffer.close()

    assert await while_a_writer_waits(buffer, stop_then_close) == [[]]
