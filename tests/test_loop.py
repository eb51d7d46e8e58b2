"""What the runtime asks of the event loop, on both backends: its clock; timers that run in
time order, earlier ones added later included, not at all once cancelled, and in the context
they were set in; and wakeups that wake their one waiter (at once if set before it waits) and
can still be set once a wait on them was cancelled."""

from __future__ import annotations

import gc
import weakref
from contextvars import ContextVar

import anyio
import anyio.lowlevel
import pytest

from streamkit._loop import loop_facts

pytestmark = pytest.mark.anyio


async def test_timers_run_in_time_order_and_a_cancelled_one_never_runs() -> None:
    facts = loop_facts()
    ran: list[str] = []
    done = anyio.Event()
    now = facts.clock()
    facts.call_at(now + 0.04, lambda: ran.append("late"))
    cancelled = facts.call_at(now + 0.02, lambda: ran.append("cancelled"))
    facts.call_at(now + 0.06, done.set)
    facts.call_at(now + 0.01, lambda: ran.append("early"))  # earlier than all, added last
    cancelled.cancel()
    with anyio.fail_after(2):
        await done.wait()
    assert ran == ["early", "late"]
    assert facts.clock() >= now + 0.06


REQUEST_ID: ContextVar[str] = ContextVar("REQUEST_ID", default="none")


async def test_a_timer_runs_in_the_context_it_was_set_in() -> None:
    # As asyncio's call_at does: a stream's timers act for the request that set them (an idle
    # fallback, say, that logs with the request's id), on trio too, where one system task of
    # the run's own keeps them.
    facts = loop_facts()
    seen: list[str] = []
    done = anyio.Event()
    REQUEST_ID.set("set before the timer")
    facts.call_at(facts.clock() + 0.01, lambda: seen.append(REQUEST_ID.get()))
    facts.call_at(facts.clock() + 0.02, done.set)
    REQUEST_ID.set("set after it")
    with anyio.fail_after(2):
        await done.wait()
    assert seen == ["set before the timer"]


async def test_a_wakeup_wakes_its_waiter_whenever_it_is_set() -> None:
    woken: list[str] = []
    wakeup = loop_facts().wakeup()

    async def wait(name: str) -> None:
        await wakeup.wait()
        woken.append(name)

    with anyio.fail_after(2):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(wait, "waiter")
            await anyio.wait_all_tasks_blocked()
            assert woken == []  # waits until set
            wakeup.set()
        set_first = loop_facts().wakeup()
        set_first.set()
        set_first.set()  # a second set changes nothing
        await set_first.wait()  # set before the wait: returns at once
    assert woken == ["waiter"]


async def test_a_wakeup_whose_wait_was_cancelled_can_still_be_set() -> None:
    wakeup = loop_facts().wakeup()
    with anyio.fail_after(2):
        with anyio.move_on_after(0.01) as scope:
            await wakeup.wait()
    assert scope.cancelled_caught
    wakeup.set()  # nothing waits any more: no error (on asyncio, not a cancelled future's)


class Held:
    """What a timer's callback holds: a stream, in the runtime."""

    def act(self) -> None:
        raise AssertionError("a cancelled timer ran")


async def test_a_cancelled_timer_lets_go_of_its_callback_at_once() -> None:
    # A stream cancels its timers as it ends; the one for a max_duration an hour off held
    # the stream (and its request's context) on trio until then, as it held its place in
    # the heap, where asyncio's cancel lets go of both.
    facts = loop_facts()
    held = Held()
    gone = weakref.ref(held)
    later = facts.clock() + 3600
    timers = [facts.call_at(later, held.act) for _ in range(1000)]
    del held
    for timer in timers:
        timer.cancel()
    timer_type = type(timers[0])
    del timers, timer
    for _ in range(3):
        await anyio.lowlevel.checkpoint()  # asyncio drops cancelled handles as its loop turns
    gc.collect()
    assert gone() is None
    assert sum(type(item) is timer_type for item in gc.get_objects()) < 200


async def test_the_clock_is_anyios() -> None:
    before = anyio.current_time()
    assert before <= loop_facts().clock() <= anyio.current_time()


@pytest.mark.parametrize("anyio_backend", ["trio"])  # asyncio's loop runs its own timers
async def test_a_timer_that_raises_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    facts = loop_facts()
    done = anyio.Event()
    now = facts.clock()

    def fail() -> None:
        raise RuntimeError("boom")

    facts.call_at(now + 0.01, fail)
    facts.call_at(now + 0.02, done.set)
    with anyio.fail_after(2):
        await done.wait()
    assert "a stream timer's callback raised" in caplog.text


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio's producers never write
async def test_turns_count_a_turn_after_writes_once_for_all_of_them() -> None:
    turns = loop_facts().turns
    assert turns is not None
    assert loop_facts().turns is turns  # one for the loop, shared by its streams
    first = turns.mark()
    assert turns.mark() == first  # no turn between: the same one
    await anyio.lowlevel.checkpoint()
    assert turns.count == first + 1  # counted once, for both writes
    await anyio.lowlevel.checkpoint()
    assert turns.count == first + 1  # no write since: no callback, no count
    assert turns.mark() == first + 1


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_no_producer_writes_itself() -> None:
    assert loop_facts().turns is None
