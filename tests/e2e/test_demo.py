"""The demo service's endpoints through real hypercorn, on asyncio and trio, and
``python -m streamkit.demo`` as a newcomer runs it.

Bounds are generous (a loaded 2-core machine); the real figures are in the browser test's
output and the report.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import anyio
import httpx
import pytest
from support.resume import read_to_first_tick

from streamkit import EndReason
from streamkit.demo import DemoState, create_app
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: A disconnect must reach the producer, and its cleanup finish, within this.
DISCONNECT_BOUND = 1.0


async def test_page_and_its_assets_are_served(anyio_backend: str) -> None:
    async with open_server(create_app()) as server, httpx.AsyncClient(base_url=server.url) as http:
        page = await http.get("/")
        script = await http.get("/static/demo.js")
        style = await http.get("/static/demo.css")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="/static/demo.js"' in page.text
    assert script.status_code == style.status_code == 200
    assert "new EventSource" in script.text


async def test_clock_sends_heartbeats_between_ticks_and_resumes_from_last_event_id(
    anyio_backend: str,
) -> None:
    app = create_app(clock_interval=0.3, heartbeat_interval=0.1, clock_max_duration=None)
    demo: DemoState = app.state.demo
    async with open_server(app) as server:
        async with open_stream(server, "/clock") as client:
            with anyio.fail_after(5):
                first = await client.read_event()
                second = await client.read_event()
            assert client.status == 200
            assert (first.event, first.id, second.id) == ("tick", "1", "2")
            assert json.loads(first.data or "")["tick"] == 1
            # Ticks 0.3 s apart, heartbeats after 0.1 s of silence: at least one between.
            assert client.comments, "no heartbeat between two ticks"
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)

        async with open_stream(server, "/clock", headers={"Last-Event-ID": "41"}) as client:
            with anyio.fail_after(5):
                resumed = await client.read_event()
                tick = await client.read_event()
        assert (resumed.event, resumed.data) == ("resumed", "41")
        assert (tick.event, tick.id) == ("tick", "42")
        assert list(demo.resumed_from) == ["41"]
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)


async def test_clock_deadline_asks_the_browser_to_reconnect(anyio_backend: str) -> None:
    app = create_app(clock_interval=0.05, clock_max_duration=0.3, reconnect_after=0.25)
    async with open_server(app) as server, open_stream(server, "/clock") as client:
        with anyio.fail_after(5):
            events = [event async for event in client.events()]
        end = await server.wait_ended(EndReason.DEADLINE)
    farewell = events[-1]
    assert (farewell.event, farewell.retry, farewell.id) == ("deadline", 250, None)
    assert [event.id for event in events[:-1]] == [str(n) for n in range(1, end.items_sent + 1)]


async def test_leaving_the_token_stream_aborts_the_upstream_call(anyio_backend: str) -> None:
    app = create_app(token_delay=0.05)
    demo: DemoState = app.state.demo
    async with open_server(app) as server:
        async with open_stream(server, "/tokens") as client:
            with anyio.fail_after(5):
                first = await client.read_event()
            assert (first.event, first.id) == ("token", "1")
            assert demo.llm.statistics().open_calls == 1
            left = anyio.current_time()
            await client.reset()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
        assert anyio.current_time() - left < DISCONNECT_BOUND
    upstream = demo.llm.statistics()
    assert (upstream.open_calls, upstream.aborted, upstream.completed) == (0, 1, 0)
    # The upstream's close awaits (10 ms): it ran to the end, shielded, before the report.
    assert end.cleanup_duration >= 0.009


async def test_token_stream_completes_with_done(anyio_backend: str) -> None:
    app = create_app(token_delay=0.001)
    demo: DemoState = app.state.demo
    async with open_server(app) as server, open_stream(server, "/tokens") as client:
        with anyio.fail_after(10):
            events = [event async for event in client.events()]
        await server.wait_ended(EndReason.COMPLETED)
    tokens = [event.data or "" for event in events if event.event == "token"]
    assert events[-1].event == "done"
    assert json.loads(events[-1].data or "") == {"tokens": len(tokens)}
    assert "".join(tokens).startswith("A stream is only as good as its worst ending.")
    assert demo.llm.statistics().completed == 1


async def test_rows_stream_from_sqlite_and_stop_when_the_client_leaves(anyio_backend: str) -> None:
    app = create_app(row_delay=0.05)
    async with open_server(app) as server:
        async with open_stream(server, "/rows?limit=50") as client:
            with anyio.fail_after(5):
                rows = [await client.read_item() for _ in range(50)]
                assert await client.read_all() == b""
        assert client.headers["content-type"] == "application/x-ndjson"
        assert [row["id"] for row in rows] == list(range(1, 51))
        assert set(rows[0]) == {"id", "customer", "product", "quantity", "price_cents", "details"}
        await server.wait_ended(EndReason.COMPLETED)

        async with open_stream(server, "/rows?limit=1000") as client:
            with anyio.fail_after(5):
                await client.read_item()
            await client.close()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
        assert end.items_sent < 1000

        async with httpx.AsyncClient(base_url=server.url) as http:
            refused = await http.get("/rows?limit=many")
        assert refused.status_code == 400
        assert "'many'" in refused.json()["detail"]


async def test_rows_refuse_a_limit_that_is_not_ascii_digits_and_cap_any_other(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # str.isdigit() passed '²', which int() refuses, and int() refuses more than 4,300
    # digits: each was a 500 and the server's traceback.
    async with open_server(create_app(row_delay=0.001)) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for given in ("\u00b2", "\u0663", "-1", "1e3"):
                refused = await http.get("/rows", params={"limit": given})
                assert refused.status_code == 400, (given, refused.text)
                assert repr(given) in refused.json()["detail"]
        for limit in ("0" * 5000 + "3", "9" * 5000):
            async with open_stream(server, f"/rows?limit={limit}") as client:
                with anyio.fail_after(10):
                    body = await client.read_all()
            assert client.status == 200
            assert len(body.splitlines()) == (3 if limit.startswith("0") else 1000)
            await server.wait_ended(EndReason.COMPLETED)
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


async def test_clock_starts_afresh_from_a_last_event_id_that_is_not_a_tick(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # '²' passed str.isdigit(), then int() raised in the producer: the stream's first event
    # was its error event, and the ERROR log a traceback, for a header a client sent.
    app = create_app(clock_interval=0.05, clock_max_duration=None)
    async with open_server(app) as server:
        for resumed in ("\u00b2", "\u0663", "x"):
            received = await read_to_first_tick(server, "/clock", resumed)
            assert b"event: resumed\ndata: " + resumed.encode() + b"\n\n" in received
            assert b"event: tick\nid: 1\n" in received
            assert b"event: error" not in received
            await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


async def test_clock_starts_afresh_from_a_count_whose_next_tick_could_not_be_an_id(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # 1,024 nines, the longest Last-Event-ID, were taken for a tick: the next one's id had
    # 1,025 digits, which no event id may have, and the stream's first tick was its error
    # event, with an ERROR traceback, for a header a client sent.
    app = create_app(clock_interval=0.05, clock_max_duration=None)
    async with open_server(app) as server:
        received = await read_to_first_tick(server, "/clock", "9" * 1024)
        assert b"event: tick\nid: 1\n" in received
        assert b"event: error" not in received
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED, within=DISCONNECT_BOUND)
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


async def test_quote_falls_back_to_the_cached_price_in_time(anyio_backend: str) -> None:
    app = create_app(fallback_after=0.3)
    async with open_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        answers = []
        for _ in range(3):
            started = anyio.current_time()
            with anyio.fail_after(5):
                answer = await http.get("/quote?symbol=ACME")
            answers.append((answer, anyio.current_time() - started))
    flags = [(a.headers["x-cache"], a.json()["cached"]) for a, _ in answers]
    # Fast, fast, then too slow (2 s): the last good price, flagged, within the deadline.
    assert flags == [("miss", False), ("miss", False), ("stale", True)]
    stale, took = answers[2]
    assert stale.json()["price"] == answers[1][0].json()["price"]
    assert took < 0.3 + 1.0


async def test_streams_panel_lists_running_streams_and_recent_ends(anyio_backend: str) -> None:
    async with open_server(create_app()) as server:
        async with open_stream(server, "/clock"), open_stream(server, "/streams") as panel:
            with anyio.fail_after(5):
                while True:
                    snapshot = json.loads((await panel.read_event()).data or "")
                    if "/clock" in {stream["path"] for stream in snapshot["active"]}:
                        break
            assert snapshot["backend"] == anyio_backend
        await server.wait_end()
        await server.wait_end()
        async with httpx.AsyncClient(base_url=server.url) as http:
            polled = (await http.get("/streams.json")).json()
    # /streams.json is the App's own statistics route.
    recent = {(end["path"], end["reason"]) for end in polled["recent_ends"]}
    assert ("/clock", "client_disconnected") in recent
    assert ("/streams", "client_disconnected") in recent
    assert polled["ended"]["/clock"]["client_disconnected"] == 1


async def test_python_m_streamkit_demo_serves_and_stops_on_sigint(anyio_backend: str) -> None:
    # The demo runs on the backend the test runs on (the test itself only waits on it).
    command = [sys.executable, "-m", "streamkit.demo", "--port", "0", "--backend", anyio_backend]
    async with await anyio.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=Path(__file__).parent
    ) as process:
        assert process.stdout is not None
        output = b""
        with anyio.fail_after(20):
            async for chunk in process.stdout:
                output += chunk
                if b"\n" in output:
                    break
        line = output.decode().splitlines()[0]
        assert f"(backend: {anyio_backend})" in line
        url = httpx.URL(line.split()[3])
        async with httpx.AsyncClient(base_url=url) as http:
            page = await http.get("/")
        assert page.status_code == 200
        server = SimpleNamespace(host=url.host, port=url.port)
        async with open_stream(server, "/clock") as clock:
            with anyio.fail_after(5):
                tick = await clock.read_event()
        assert (tick.event, tick.id) == ("tick", "1")
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            assert await process.wait() == 0


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_python_m_streamkit_demo_on_a_port_in_use_says_so_in_one_line(backend: str) -> None:
    # A newcomer's most likely failure: another demo, or anything, already on port 8000.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "streamkit.demo",
            "--port",
            str(port),
            "--backend",
            backend,
        ]
        done = subprocess.run(command, capture_output=True, timeout=30, cwd=Path(__file__).parent)
    assert done.returncode == 1
    (line,) = done.stderr.decode().strip().splitlines()
    assert line.startswith(f"python -m streamkit.demo: cannot listen on '127.0.0.1:{port}': ")
    assert "Address already in use" in line


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--port", "70000"], "--port"),
        (["--port", "-1"], "--port"),
        (["--host", ""], "--host"),
    ],
)
def test_python_m_streamkit_demo_refuses_a_bad_address_as_a_usage_error(
    arguments: list[str], named: str
) -> None:
    # Checked by serve, inside the task groups: fifty lines of exception-group traceback
    # ending in "bind's port must be at most 65535", for a value typed on the command line.
    command = [sys.executable, "-m", "streamkit.demo", *arguments]
    done = subprocess.run(command, capture_output=True, timeout=30, cwd=Path(__file__).parent)
    assert done.returncode == 2
    said = done.stderr.decode()
    assert "Traceback" not in said
    last = said.strip().splitlines()[-1]
    assert last.startswith(f"python -m streamkit.demo: error: argument {named}: "), said
    assert repr(arguments[1]) in said


async def test_the_clock_keeps_only_the_latest_resumes_whatever_clients_send(
    anyio_backend: str,
) -> None:
    # Every client may send a Last-Event-ID (up to 1,024 characters): each was kept, and a
    # client reconnecting in a loop grew the demo's memory without bound.
    from streamkit.demo._app import RESUMES_KEPT

    app = create_app(clock_interval=60.0)
    demo: DemoState = app.state.demo
    async with open_server(app) as server:
        for n in range(RESUMES_KEPT + 5):
            headers = {"Last-Event-ID": f"{n}-" + "x" * 1000}
            async with open_stream(server, "/clock", headers=headers) as client:
                with anyio.fail_after(5):
                    assert (await client.read_event()).event == "resumed"
    assert len(demo.resumed_from) == RESUMES_KEPT
    assert demo.resumed_from[-1].startswith(f"{RESUMES_KEPT + 4}-")
