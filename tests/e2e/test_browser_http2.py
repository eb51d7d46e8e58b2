"""Twenty EventSources in one page of a real browser, over HTTPS and HTTP/2: headless
Chromium against hypercorn on asyncio and trio, with a throwaway certificate.

Over HTTP/1.1 a browser opens at most six connections to an origin, so a seventh
EventSource waits for ever; over HTTP/2 they are streams of one connection. Each is still its
own stream on the server: closing one EventSource (the browser resets its stream) ends that
stream alone, and closing the tab ends all twenty within a second.

The certificate is signed by a CA the browser does not know, so Chromium runs with
``--ignore-certificate-errors``: the connection is still TLS, and HTTP/2 is still agreed by
ALPN. The figures measured are printed (``pytest -rP`` shows them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from support import browser
from support.certificates import Certificates

from streamkit import EndReason, EventSourceResponse, ServerSentEvent, StreamEnd, StreamSender
from streamkit.testing import open_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

STREAMS = 20
#: Closing an EventSource or the tab must end its streams on the server within this.
DISCONNECT_BOUND = 1.0
#: Anything the page waits for: a page load, the first events.
PAGE_BOUND = 15.0
#: The certificate's CA is the test's own: the connection is TLS all the same.
FLAGS = ("--ignore-certificate-errors",)

PAGE = f"""<!doctype html>
<title>{STREAMS} streams</title>
<script>
  window.counts = [];
  window.sources = [];
  for (let i = 0; i < {STREAMS}; i++) {{
    const source = new EventSource(`/events?name=${{i}}`);
    window.counts.push(0);
    source.onmessage = () => {{ window.counts[i] += 1; }};
    window.sources.push(source);
  }}
</script>
"""


@dataclass
class Seen:
    """Per stream (the page's index): the HTTP version, the client's address, the end."""

    versions: dict[int, str] = field(default_factory=dict)
    clients: dict[int, tuple[str, int]] = field(default_factory=dict)
    ends: dict[int, StreamEnd] = field(default_factory=dict)
    ended: dict[int, anyio.Event] = field(default_factory=dict)

    def event(self, index: int) -> anyio.Event:
        return self.ended.setdefault(index, anyio.Event())


def make_app(seen: Seen) -> Starlette:
    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def events(request: Request) -> Response:
        index = int(request.query_params["name"])
        seen.versions[index] = request.scope["http_version"]
        client = request.scope["client"]
        seen.clients[index] = (client[0], client[1])

        async def produce(send: StreamSender[ServerSentEvent]) -> None:
            number = 0
            while True:
                await send(ServerSentEvent(data=str(number), id=str(number)))
                number += 1
                await anyio.sleep(0.05)

        def on_end(end: StreamEnd) -> None:
            seen.ends[index] = end
            seen.event(index).set()

        return EventSourceResponse(produce, on_end=on_end)

    return Starlette(routes=[Route("/", page), Route("/events", events)])


@pytest.fixture
def chromium() -> str:
    return browser.require_chromium()  # under CI, a missing browser fails the test


async def counts(page: browser.Page) -> list[int]:
    value: list[int] = await page.evaluate("window.counts")
    return value


async def open_page(chrome: browser.Browser, url: str) -> tuple[browser.Page, float]:
    """Open the page of twenty EventSources; return it once each has had two events, and
    how long that took."""
    opened = anyio.current_time()
    page = await chrome.open_page(f"{url}/")
    await page.wait_for(
        f"window.counts && window.counts.length === {STREAMS}"
        " && window.counts.every((count) => count >= 2)",
        within=PAGE_BOUND,
    )
    return page, anyio.current_time() - opened


def assert_one_http2_connection(seen: Seen) -> None:
    assert set(seen.versions) == set(range(STREAMS))
    assert set(seen.versions.values()) == {"2"}
    assert len(set(seen.clients.values())) == 1, f"more than one connection: {seen.clients}"


async def test_twenty_event_sources_share_one_http2_connection_and_end_one_by_one(
    chromium: str, certificates: Certificates, anyio_backend: str
) -> None:
    seen = Seen()
    async with (
        open_server(make_app(seen), tls=certificates.server()) as server,
        browser.open_browser(chromium, flags=FLAGS) as chrome,
    ):
        assert server.url.startswith("https://")
        page, all_flowing = await open_page(chrome, server.url)
        assert len(server.streams.active_streams()) == STREAMS
        assert_one_http2_connection(seen)

        # Closing one EventSource resets its stream: that stream alone ends.
        closed = 7
        before = await counts(page)
        started = anyio.current_time()
        await page.evaluate(f"window.sources[{closed}].close()")
        with anyio.fail_after(DISCONNECT_BOUND):
            await seen.event(closed).wait()
        one_ended_after = anyio.current_time() - started
        assert seen.ends[closed].reason is EndReason.CLIENT_DISCONNECTED
        assert set(seen.ends) == {closed}
        others = [index for index in range(STREAMS) if index != closed]
        await page.wait_for(
            " && ".join(f"window.counts[{index}] > {before[index] + 1}" for index in others),
            within=PAGE_BOUND,
        )
        assert set(seen.ends) == {closed}
        assert len(server.streams.active_streams()) == STREAMS - 1
        await page.close()
    print(
        f"[{anyio_backend}] {chrome.version}: {STREAMS} EventSources on one HTTP/2 connection, "
        f"all receiving {all_flowing * 1000:.0f} ms after navigation; one closed -> its stream "
        f"ended in {one_ended_after * 1000:.1f} ms, the other {STREAMS - 1} went on"
    )


async def test_closing_the_tab_ends_all_twenty_streams(
    chromium: str, certificates: Certificates, anyio_backend: str
) -> None:
    seen = Seen()
    async with (
        open_server(make_app(seen), tls=certificates.server()) as server,
        browser.open_browser(chromium, flags=FLAGS) as chrome,
    ):
        page, _ = await open_page(chrome, server.url)
        assert_one_http2_connection(seen)
        assert not seen.ends
        started = anyio.current_time()
        await page.close()
        with anyio.fail_after(DISCONNECT_BOUND):
            await server.streams.wait_idle()
        ended_after = anyio.current_time() - started
        # The last end reported, not just the registry emptied: every stream's on_end ran.
        assert {index: end.reason for index, end in seen.ends.items()} == {
            index: EndReason.CLIENT_DISCONNECTED for index in range(STREAMS)
        }
    print(f"[{anyio_backend}] tab closed -> all {STREAMS} ended in {ended_after * 1000:.1f} ms")
