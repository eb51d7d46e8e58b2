"""The README's first example and the tutorial's, run as they are printed, through real
hypercorn: what the prose around them promises happens when the client leaves."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Coroutine
from types import ModuleType
from typing import Any

import anyio
import pytest
from support.doc_snippets import snippet

from streamkit import EndReason
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: A disconnect must reach the producer, and its cleanup finish, within this.
DISCONNECT_BOUND = 1.0

#: The 10 ms an upstream's close sleeps (the tutorial's FakeUpstream), less a timer's slack.
CLOSE_TAKES = 0.009

#: The tutorial's blocks, in page order.
TOKENS, CONFTEST, TEST_TOKENS, FIX_SEND, FIX_GENERATOR, TEST_END = range(6)


def _module(name: str, *sources: str) -> ModuleType:
    module = ModuleType(name)
    for source in sources:
        exec(compile(source, f"{name}.py", "exec"), module.__dict__)
    return module


def test_the_tutorial_has_the_blocks_this_module_runs() -> None:
    # The indices above are the page's order: a block added before them would shift them.
    assert "StreamingResponse(body()" in snippet("docs/tutorial.md", TOKENS)
    assert "def anyio_backend" in snippet("docs/tutorial.md", CONFTEST)
    assert "def test_leaving_closes_the_upstream" in snippet("docs/tutorial.md", TEST_TOKENS)
    assert "send.push_async_callback" in snippet("docs/tutorial.md", FIX_SEND)
    assert "shielded_cleanup(2.0)" in snippet("docs/tutorial.md", FIX_GENERATOR)
    assert "print(end)" in snippet("docs/tutorial.md", TEST_END)


async def test_readme_example_closes_its_upstream_and_logs_the_end_when_curl_stops(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    readme = _module("app", snippet("README.md", 0))  # as `python app.py` imports it
    closed = anyio.Event()
    fake_llm = readme.fake_llm

    class WatchedLLM:
        """The README's upstream, with a close that awaits, as a real connection's does: it
        completes only if it is awaited, and shielded."""

        def __init__(self, prompt: str) -> None:
            self._words = fake_llm(prompt)

        def __aiter__(self) -> WatchedLLM:
            return self

        async def __anext__(self) -> str:
            word: str = await self._words.__anext__()
            return word

        async def aclose(self) -> None:
            await self._words.aclose()
            await anyio.sleep(0.01)
            closed.set()

    readme.fake_llm = WatchedLLM  # type: ignore[attr-defined]
    caplog.set_level(logging.INFO, logger="streamkit")
    async with open_server(readme.app) as server:
        async with open_stream(server, "/tokens?prompt=hi") as client:
            with anyio.fail_after(5):
                first = await client.read_event()
            await client.close()  # curl stopped halfway
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
        with anyio.fail_after(DISCONNECT_BOUND):
            await closed.wait()
    assert first.data == "You"
    assert end.path == "/tokens"
    assert end.cleanup_duration is not None
    # The upstream's close ran to its end: its 10 ms sleep, less a timer's slack, is counted.
    assert end.cleanup_duration >= CLOSE_TAKES
    assert "stream /tokens ended: client_disconnected" in caplog.text


def _tutorial(monkeypatch: pytest.MonkeyPatch, fix: int | None) -> ModuleType:
    """tokens.py as the tutorial has it: the naive endpoint, or with *fix*'s ``tokens``, and
    ``app`` made again from it, as editing the file does; importable as ``tokens``."""
    sources = [snippet("docs/tutorial.md", TOKENS)]
    if fix is not None:
        (app_line,) = [line for line in sources[0].splitlines() if line.startswith("app = ")]
        sources += [snippet("docs/tutorial.md", fix), app_line]
    tokens = _module("tokens", *sources)
    monkeypatch.setitem(sys.modules, "tokens", tokens)
    return tokens


def _tutorial_test(block: int) -> Callable[[], Coroutine[Any, Any, None]]:
    """The test function of the tutorial's *block*, with the imports of its first test."""
    test = _module("test_tokens", snippet("docs/tutorial.md", TEST_TOKENS))
    if block != TEST_TOKENS:
        exec(compile(snippet("docs/tutorial.md", block), "test_tokens.py", "exec"), test.__dict__)
    function: Callable[[], Coroutine[Any, Any, None]] = test.test_leaving_closes_the_upstream
    return function


async def test_tutorial_naive_endpoint_fails_its_test_as_the_tutorial_shows(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = _tutorial(monkeypatch, fix=None)
    # The tutorial's own test: its fail_after(1.0) expires, the upstream never closed.
    with pytest.raises(TimeoutError):
        await _tutorial_test(TEST_TOKENS)()
    assert not tokens.FakeUpstream.closed.is_set()


@pytest.mark.parametrize("fix", [FIX_SEND, FIX_GENERATOR], ids=["send", "generator"])
async def test_tutorial_fixes_pass_its_test(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch, fix: int
) -> None:
    tokens = _tutorial(monkeypatch, fix=fix)
    await _tutorial_test(TEST_TOKENS)()
    assert tokens.FakeUpstream.closed.is_set()


async def test_tutorial_stream_end_is_the_one_it_prints(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _tutorial(monkeypatch, fix=FIX_SEND)
    await _tutorial_test(TEST_END)()
    printed = capsys.readouterr().out
    assert printed.startswith("StreamEnd(reason=<EndReason.CLIENT_DISCONNECTED: ")
    assert "path='/tokens'" in printed
    assert "items_sent=1, bytes_sent=13" in printed
    # "cleanup_duration is the 10 ms the upstream's close took: it ran to the end."
    cleanup = float(printed.split("cleanup_duration=")[1].split(",")[0])
    assert cleanup >= CLOSE_TAKES


async def test_the_broadcast_pages_example_answers_a_bad_trade_with_a_400(
    anyio_backend: str,
) -> None:
    # A body that is no UTF-8, or one over the broker's bound on an event, was a 500 and a
    # traceback in the log: a client's mistake.
    import httpx

    page = _module("prices", snippet("docs/broadcast.md", 0))
    async with open_server(page.app) as server, httpx.AsyncClient(base_url=server.url) as http:
        published = await http.post("/trade", content=b"101.5")
        not_text = await http.post("/trade", content=b"\xff\xfe")
        too_large = await http.post("/trade", content=b"1" * (2 << 20))
    assert published.status_code == 200
    assert published.json()["id"]
    assert (not_text.status_code, too_large.status_code) == (400, 400)
    assert "utf-8" in not_text.json()["detail"]
    assert "bytes" in too_large.json()["detail"]
