"""The demo page in a real browser: headless Chromium reads the demo's streams with its own
``EventSource`` and ``fetch()``, from the demo app served by hypercorn on asyncio and trio.

Bounds are generous (a loaded 2-core machine); the figures each test measured are printed
(``pytest -rP`` shows them).
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
import pytest
from support import browser

from streamkit import EndReason, StreamRegistry
from streamkit.demo import DemoState, create_app
from streamkit.testing import open_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: Closing the tab must end its streams on the server within this (measured: a few ms).
DISCONNECT_BOUND = 1.0
#: Anything the page waits for: a page load, a first event, a reconnection.
PAGE_BOUND = 15.0


@pytest.fixture
def chromium() -> str:
    return browser.require_chromium()


async def page_state(page: browser.Page) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(await page.evaluate("JSON.stringify(window.demo)"))
    return state


def ended_since(streams: StreamRegistry, before: int) -> dict[str, EndReason]:
    """The path and reason of every stream that ended after *before* ends in all."""
    total = sum(streams.statistics().ended.values())
    recent = streams.recent_ends()
    return {end.path: end.reason for end in recent[len(recent) - (total - before) :]}


async def test_the_page_shows_every_stream(chromium: str, anyio_backend: str) -> None:
    # Every quote is waited for (even the price service's slow one, 2 s): with the default
    # 0.3 s, a loaded machine made the first one late (a 503), and a page read after its
    # third poll showed that one stale.
    app = create_app(clock_interval=0.25, token_delay=0.01, row_delay=0.01, fallback_after=5.0)
    demo: DemoState = app.state.demo
    async with open_server(app) as server, browser.open_browser(chromium) as chrome:
        page = await chrome.open_page(f"{server.url}/")
        await page.wait_for("demo.clock.ticks >= 2", within=PAGE_BOUND)
        await page.wait_for("demo.tokens.done && demo.rows.done", within=PAGE_BOUND)
        await page.wait_for("demo.quote.polls >= 1", within=PAGE_BOUND)
        await page.wait_for(
            "demo.streams.last && demo.streams.last.active.some((s) => s.path === '/clock')",
            within=PAGE_BOUND,
        )
        state = await page_state(page)
        clock_text = await page.evaluate("document.getElementById('clock-time').textContent")
        backend = await page.evaluate("document.getElementById('backend').textContent")
        recent = await page.evaluate(
            "Array.from(document.querySelectorAll('#streams-recent td'), (td) => td.textContent)"
        )

    assert re.fullmatch(r"\d\d:\d\d:\d\d", clock_text)
    assert backend == anyio_backend
    # Every token the upstream generated reached the page, in order, and the answer finished.
    upstream = demo.llm.statistics()
    assert (upstream.completed, upstream.aborted) == (1, 0)
    assert state["tokens"]["count"] == upstream.tokens_generated
    assert state["tokens"]["text"].startswith("A stream is only as good as its worst ending.")
    assert (state["rows"]["count"], state["rows"]["error"]) == (300, None)
    # Every quote is fetched in time: a fresh value, flagged as not cached.
    assert state["quote"]["xCache"] == "miss"
    assert state["quote"]["last"]["cached"] is False
    # The panel listed the rows stream's end, which happened while it was watching.
    assert "/rows" in recent
    assert "completed" in recent
    clock = state["clock"]
    print(
        f"[{anyio_backend}] first clock event {clock['firstAt']:.0f} ms after navigation, "
        f"{clock['firstAt'] - clock['openedAt'][0]:.1f} ms after the EventSource opened"
    )


async def test_closing_the_page_ends_its_streams(chromium: str, anyio_backend: str) -> None:
    # Tokens slow enough that the answer is still streaming when the tab closes.
    app = create_app(token_delay=0.2, row_delay=0.01)
    demo: DemoState = app.state.demo
    async with open_server(app) as server, browser.open_browser(chromium) as chrome:
        page = await chrome.open_page(f"{server.url}/")
        await page.wait_for(
            "demo.clock.ticks >= 1 && demo.streams.updates >= 1 && demo.tokens.count >= 1"
            " && demo.rows.done",
            within=PAGE_BOUND,
        )
        streams = server.streams
        with anyio.fail_after(PAGE_BOUND):  # the rows stream's end reported, not just read
            while any(stream.path == "/rows" for stream in streams.active_streams()):
                await streams.wait_changed()
        assert {s.path for s in streams.active_streams()} == {"/clock", "/streams", "/tokens"}
        before = sum(streams.statistics().ended.values())

        started = anyio.current_time()
        await page.close()
        with anyio.fail_after(DISCONNECT_BOUND):
            await streams.wait_idle()
        latency = anyio.current_time() - started

        assert ended_since(streams, before) == {
            "/clock": EndReason.CLIENT_DISCONNECTED,
            "/streams": EndReason.CLIENT_DISCONNECTED,
            "/tokens": EndReason.CLIENT_DISCONNECTED,
        }
        # The upstream call behind the token stream was aborted, not left to run.
        upstream = demo.llm.statistics()
        assert (upstream.open_calls, upstream.aborted, upstream.completed) == (0, 1, 0)
    print(f"[{anyio_backend}] tab closed -> all 3 streams ended in {latency * 1000:.1f} ms")


async def test_a_retry_hint_brings_the_browser_back_with_last_event_id(
    chromium: str, anyio_backend: str
) -> None:
    app = create_app(clock_interval=0.1, clock_max_duration=1.0, reconnect_after=0.2)
    demo: DemoState = app.state.demo
    async with open_server(app) as server, browser.open_browser(chromium) as chrome:
        page = await chrome.open_page(f"{server.url}/")
        resumed = await page.wait_for(
            "demo.clock.resumedFrom.length >= 1 && demo.clock.resumedFrom[0]", within=PAGE_BOUND
        )
        # The resumed stream goes on from the id the browser sent.
        await page.wait_for(f"Number(demo.clock.lastId) > {int(resumed)}", within=PAGE_BOUND)
        state = await page_state(page)

    first = next(end for end in server.streams.recent_ends() if end.path == "/clock")
    assert first.reason is EndReason.DEADLINE
    # The browser sent the id of the last tick the first stream carried, and the server saw it.
    assert demo.resumed_from[0] == resumed == str(first.items_sent)
    clock = state["clock"]
    assert clock["deadlines"] >= 1
    gap = clock["openedAt"][1] - clock["deadlineAt"][0]
    print(
        f"[{anyio_backend}] deadline after {first.items_sent} ticks; the browser reconnected "
        f"{gap:.0f} ms after the farewell (retry: 200) with Last-Event-ID {resumed}"
    )
