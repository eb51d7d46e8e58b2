"""The resource examples in examples/ import without side effects and stream through real
hypercorn, releasing what they hold when the client leaves."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.example_modules import EXAMPLES, load_example
from support.resource_checks import database_locked, open_descriptors

from streamkit import EndReason, EventSourceResponse, ServerSentEvent, StreamSender
from streamkit.testing import LiveServer, StreamClient, open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: Generous: the measured releases take a few milliseconds (docs/resources.md).
RELEASE_BOUND = 1.0


def children_named(command: str) -> list[int]:
    """This process's child processes running *command*, zombies included."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat.rpartition(")")[2].split()[1])
        if name == command and parent == os.getpid():
            found.append(int(entry))
    return found


@pytest.mark.parametrize(
    "name", ["background_audit", "file_proxy", "llm_proxy", "sqlite_export", "subprocess_tail"]
)
def test_a_port_from_the_environment_that_is_no_number_is_a_usage_error(name: str) -> None:
    # int() read $PORT before argparse was asked: a ValueError traceback that named neither
    # PORT nor --port.
    command = [sys.executable, str(EXAMPLES / f"{name}.py")]
    environment = {**os.environ, "PORT": "eighty"}
    done = subprocess.run(command, capture_output=True, timeout=30, env=environment)
    assert done.returncode == 2, done.stderr.decode()[-500:]
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last == f"{name}.py: error: argument --port: invalid int value: 'eighty'", last


# -- llm_proxy ----------------------------------------------------------------------------------


async def test_llm_proxy_streams_a_whole_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example("llm_proxy")
    monkeypatch.setattr(example, "FAKE_WORD_INTERVAL", 0.001)
    async with open_server(example.create_app()) as server:
        async with open_stream(server, "/chat?prompt=hi") as client:
            with anyio.fail_after(10.0):
                tokens = [event async for event in client.events()]
        assert {event.event for event in tokens} == {"token"}
        assert "".join(event.data or "" for event in tokens).strip() == example.FAKE_TEXT
        ends = {(await server.wait_end()).reason for _ in range(2)}
        assert ends == {EndReason.COMPLETED}


async def test_llm_proxy_aborts_the_completion_when_the_client_leaves() -> None:
    example = load_example("llm_proxy")
    # The model on a server of its own, as it would be: its streams are counted apart.
    async with open_server(example.create_app()) as model:
        url = f"{model.url}/fake/v1/chat/completions"
        async with open_server(example.create_app(url)) as proxy:
            async with open_stream(proxy, "/chat?prompt=hi") as client:
                with anyio.fail_after(10.0):
                    assert (await client.read_event()).data == "Once "
                left_at = anyio.current_time()
                await client.close()
                await proxy.wait_ended(EndReason.CLIENT_DISCONNECTED)
                await model.wait_ended(EndReason.CLIENT_DISCONNECTED, within=RELEASE_BOUND)
                assert anyio.current_time() - left_at < RELEASE_BOUND


async def test_llm_proxy_asks_its_own_fake_model_whatever_host_the_client_names(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The fake model's URL was made from the request's Host header, which the client writes:
    # the proxy sent the prompt, and the API key if one was set, to whatever server it named.
    example = load_example("llm_proxy")
    monkeypatch.setattr(example, "FAKE_WORD_INTERVAL", 0.001)
    asked: list[Request] = []

    async def model_elsewhere(request: Request) -> Response:
        asked.append(request)
        return Response(status_code=404)

    elsewhere = Starlette(routes=[Route("/{path:path}", model_elsewhere, methods=["POST"])])
    async with (
        open_server(elsewhere) as other,
        open_server(example.create_app(api_key="secret")) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        with anyio.fail_after(10.0):
            response = await http.get(
                "/chat?prompt=hi", headers={"host": f"{other.host}:{other.port}"}
            )
        assert response.status_code == 200
        assert "event: token\ndata: Once \n" in response.text
    assert asked == []
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        ('{"error": {"message": "the model is overloaded", "type": "server_error"}}', "overloaded"),
        ("<html>", "'<html>'"),
    ],
)
async def test_llm_proxy_ends_in_error_when_the_upstream_fails_mid_answer(
    failure: str, said: str
) -> None:
    # An OpenAI-style error chunk has no choices: it was dropped as an empty delta, and the
    # answer, cut short, ended as completed. A chunk that was no JSON ended the stream with
    # a JSONDecodeError that named nothing the upstream sent.
    example = load_example("llm_proxy")

    async def answer(send: StreamSender[ServerSentEvent | str]) -> None:
        await send(json.dumps({"choices": [{"delta": {"content": "Once "}}]}))
        await send(failure)

    async def failing_model(request: Request) -> Response:
        await request.body()
        return EventSourceResponse(answer, heartbeat_interval=None)

    model = Starlette(routes=[Route("/v1/chat/completions", failing_model, methods=["POST"])])
    async with open_server(model) as upstream:
        url = f"{upstream.url}/v1/chat/completions"
        async with open_server(example.create_app(url)) as proxy:
            async with open_stream(proxy, "/chat?prompt=hi") as client:
                with anyio.fail_after(10.0):
                    events = [event async for event in client.events()]
            end = await proxy.wait_ended(EndReason.ERROR, within=RELEASE_BOUND)
    assert [(event.event, event.data) for event in events] == [("token", "Once "), ("error", "")]
    assert said in str(end.exception)


async def test_llm_proxy_fake_model_refuses_a_request_past_its_bound_with_a_413() -> None:
    # The fake model read any body whole into memory: 300 MB posted to it were held at once.
    example = load_example("llm_proxy")
    too_large = example.FAKE_MAX_REQUEST + 1
    async with open_server(example.create_app()) as server:
        async with await anyio.connect_tcp(server.host, server.port) as connection:
            head = (
                "POST /fake/v1/chat/completions HTTP/1.1\r\nhost: model\r\n"
                f"content-length: {too_large}\r\n\r\n"
            )
            await connection.send(head.encode())
            with anyio.fail_after(5):
                answer = await connection.receive()
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(too_large // 65536 + 1):
                yield b"x" * 65536

        async with httpx.AsyncClient(base_url=server.url) as http:
            with anyio.fail_after(10):
                response = await http.post("/fake/v1/chat/completions", content=chunks())
        assert response.status_code == 413
        assert str(example.FAKE_MAX_REQUEST) in response.text


# -- sqlite_export -----------------------------------------------------------------------------


async def test_sqlite_export_streams_orders_and_ends_the_query(tmp_path: Path) -> None:
    example = load_example("sqlite_export")
    database = tmp_path / "orders.db"
    example.make_demo_database(database, orders=20_000)
    async with open_server(example.create_app(database)) as server:
        async with open_stream(server, "/orders.ndjson?since=100", receive_buffer=4096) as client:
            first = await client.read_item()
            assert first["id"] == 101
            assert set(first) == {"id", "customer", "total_cents", "created"}
            assert database_locked(database)
            await client.close()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        assert end.cleanup_duration < RELEASE_BOUND
        assert not database_locked(database)
        assert open_descriptors(database) == []

        async with open_stream(server, "/orders.ndjson?since=x") as client:
            assert client.status == 400


async def test_sqlite_export_refuses_a_since_that_is_no_order_id_with_a_400(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # str.isdigit() passed '²', which int() refuses, and int() refuses more than 4,300
    # digits: a 500 and the server's traceback. Past 2**63 - 1, SQLite refused the number
    # inside the stream: an error item after a 200, and an ERROR traceback.
    example = load_example("sqlite_export")
    database = tmp_path / "orders.db"
    example.make_demo_database(database, orders=10)
    refused = ("%C2%B2", "9" * 5000, str(2**63), "-1", "")
    async with open_server(example.create_app(database)) as server:
        for since in refused:
            async with open_stream(server, f"/orders.ndjson?since={since}") as client:
                assert client.status == 400, (since[:20], await client.read_all())
        for since, ids in ((str(2**63 - 1), []), ("0" * 5000 + "9", [10])):
            async with open_stream(server, f"/orders.ndjson?since={since}") as client:
                with anyio.fail_after(5):
                    body = await client.read_all()
            assert client.status == 200
            assert [json.loads(line)["id"] for line in body.splitlines()] == ids
            await server.wait_ended(EndReason.COMPLETED)
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


@pytest.mark.parametrize("made", ["missing", "without orders"])
def test_sqlite_export_refuses_a_database_it_cannot_export_at_startup(
    tmp_path: Path, made: str
) -> None:
    # A mistyped --database was taken: sqlite3 made an empty file there, and the server
    # served every export as a 200 whose only line was the error item, with an ERROR
    # traceback ("no such table: orders") for each.
    database = tmp_path / "orders.db"
    if made == "without orders":
        with contextlib.closing(sqlite3.connect(database)) as connection:
            connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    command = [sys.executable, str(EXAMPLES / "sqlite_export.py"), "--port", "0"]
    done = subprocess.run(
        [*command, "--database", str(database)], capture_output=True, timeout=30, cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr.decode()[-500:]
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("sqlite_export.py: error: argument --database: "), last
    assert str(database) in last
    assert database.exists() == (made == "without orders")


# -- subprocess_tail ---------------------------------------------------------------------------


async def test_subprocess_tail_follows_the_log_and_stops_tail(tmp_path: Path) -> None:
    example = load_example("subprocess_tail")
    log = tmp_path / "app.log"
    log.write_text("one\ntwo\n")
    async with open_server(example.create_app(log)) as server:
        async with open_stream(server, "/tail") as client:
            with anyio.fail_after(10.0):
                assert [(await client.read_event()).data for _ in range(2)] == ["one", "two"]
                assert len(children_named("tail")) == 1
                with log.open("a") as file:
                    file.write("three\n")
                assert (await client.read_event()).data == "three"
            await client.reset()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
    assert end.cleanup_duration < RELEASE_BOUND
    assert children_named("tail") == []


# -- file_proxy --------------------------------------------------------------------------------


async def test_file_proxy_sends_files_and_closes_them(tmp_path: Path) -> None:
    example = load_example("file_proxy")
    content = os.urandom(1_000_000)
    (tmp_path / "data.bin").write_bytes(content)
    (tmp_path / "sub").mkdir()
    async with open_server(example.create_app(tmp_path, bytes_per_second=None)) as server:
        async with open_stream(server, "/files/data.bin") as client:
            assert client.headers["content-type"] == "application/octet-stream"
            assert await client.read_all() == content
        await server.wait_ended(EndReason.COMPLETED)
        for missing in ("/files/nothing.bin", "/files/sub", "/files/../test_examples_x.py"):
            async with open_stream(server, missing) as client:
                assert client.status == 404, missing
    assert open_descriptors(tmp_path / "data.bin") == []


async def test_file_proxy_answers_a_name_no_file_can_have_with_a_404(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Path.resolve() raised for a NUL byte (ValueError) and for a name longer than the file
    # system takes (OSError): a 500 and the server's traceback.
    example = load_example("file_proxy")
    (tmp_path / "data.bin").write_bytes(b"x" * 10)
    async with open_server(example.create_app(tmp_path, bytes_per_second=None)) as server:
        for name in ("data%00.bin", "a" * 5000, "sub/" + "a" * 300):
            async with open_stream(server, f"/files/{name}") as client:
                assert client.status == 404, name[:20]
        async with open_stream(server, "/files/data.bin") as client:
            assert await client.read_all() == b"x" * 10
        await server.wait_ended(EndReason.COMPLETED)
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


@pytest.mark.parametrize("name", ["\u62a5\u544a \u20ac.txt", 'say "hi".txt'])
async def test_file_proxy_sends_a_file_whatever_its_name_naming_it_as_starlette_does(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The name went into a quoted filename="..." as it was: one beyond Latin-1 could not be
    # sent as a header (a 500), and a quote ended the name early.
    example = load_example("file_proxy")
    (tmp_path / name).write_bytes(b"x" * 10)
    async with open_server(example.create_app(tmp_path, bytes_per_second=None)) as server:
        async with open_stream(server, f"/files/{quote(name)}") as client:
            assert client.status == 200
            assert client.headers["content-disposition"] == (
                f"attachment; filename*=utf-8''{quote(name)}"
            )
            assert await client.read_all() == b"x" * 10
        await server.wait_ended(EndReason.COMPLETED)
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


@pytest.mark.parametrize("rate", [0.0, -5.0, float("nan"), float("inf")])
def test_file_proxy_refuses_a_rate_that_is_no_rate_where_the_app_is_made(
    tmp_path: Path, rate: float
) -> None:
    # Taken as it was: every download was then a 500, file_chunks refusing it at each request.
    example = load_example("file_proxy")
    with pytest.raises(ValueError, match=f"bytes_per_second .*, got {rate!r}"):
        example.create_app(tmp_path, bytes_per_second=rate)


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--directory", "missing"], "argument --directory: no such directory: "),
        (["--rate", "0"], "argument --rate: bytes_per_second must be a positive"),
    ],
)
def test_file_proxy_refuses_a_bad_directory_or_rate_at_startup(
    tmp_path: Path, arguments: list[str], said: str
) -> None:
    # A mistyped --directory was served as an empty one, every name a 404; a --rate of 0 was
    # taken, and every download a 500 with an ERROR traceback.
    (tmp_path / "files").mkdir()
    command = [sys.executable, str(EXAMPLES / "file_proxy.py"), "--port", "0"]
    done = subprocess.run(
        [*command, "--directory", "files", *arguments],
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr.decode()[-500:]
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith(f"file_proxy.py: error: {said}"), last
    assert arguments[1] in last


async def test_file_proxy_closes_a_file_whose_download_is_abandoned(tmp_path: Path) -> None:
    example = load_example("file_proxy")
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(1_000_000))
    async with open_server(example.create_app(tmp_path, bytes_per_second=200_000)) as server:
        async with open_stream(server, "/files/data.bin") as client:
            assert await client.receive_chunk()
            assert len(open_descriptors(path)) == 1
            await client.close()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        assert end.cleanup_duration < RELEASE_BOUND
        assert open_descriptors(path) == []


# -- background_audit --------------------------------------------------------------------------

AUDIT_ENDINGS = {
    "close": EndReason.CLIENT_DISCONNECTED,
    "reset": EndReason.CLIENT_DISCONNECTED,
    "deadline": EndReason.DEADLINE,
    "shutdown": EndReason.SHUTDOWN,
}


async def leave(server: LiveServer, client: StreamClient, ending: str) -> None:
    if ending == "close":
        await client.close()
    elif ending == "reset":
        await client.reset()
    elif ending == "shutdown":
        await server.shutdown(within=10.0)
    # "deadline": max_duration ends it


@pytest.mark.parametrize("ending", list(AUDIT_ENDINGS))
async def test_background_audit_runs_after_every_end_and_presence_is_released_first(
    tmp_path: Path, ending: str, request: pytest.FixtureRequest
) -> None:
    example = load_example("background_audit")
    options = {"max_duration": 0.3} if ending == "deadline" else {}
    app = example.create_app(tmp_path / "audit.ndjson", **options)
    async with open_server(app) as server:
        async with open_stream(server, "/feed?viewer=ada") as client:
            assert (await client.read_event()).data == "hello ada"
            assert set(app.state.viewers) == {"ada"}
            await leave(server, client, ending)
            end = await server.wait_ended(AUDIT_ENDINGS[ending])
            reported_at = anyio.current_time()
            # The critical cleanup ran in the stream, before the end was reported.
            assert set(app.state.viewers) == set()
            with anyio.fail_after(10.0):
                (record,) = await app.state.audit.wait_records(1)
            request.node.user_properties.append(
                ("audit_after_report", anyio.current_time() - reported_at)
            )
    assert record["reason"] == end.reason.value
    assert record["viewer"] == "ada"
    assert record["items_sent"] == end.items_sent
    lines = (tmp_path / "audit.ndjson").read_text().splitlines()
    assert len(lines) == 1


async def test_background_audit_keeps_a_viewer_present_while_another_of_their_feeds_runs(
    tmp_path: Path,
) -> None:
    # Presence was a set: the first of two tabs a viewer closed took them out of it, while
    # the other tab still streamed to them.
    example = load_example("background_audit")
    app = example.create_app(tmp_path / "audit.ndjson")
    async with open_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        async with open_stream(server, "/feed?viewer=ada") as staying:
            with anyio.fail_after(5):
                assert (await staying.read_event()).data == "hello ada"
            async with open_stream(server, "/feed?viewer=ada") as leaving:
                with anyio.fail_after(5):
                    assert (await leaving.read_event()).data == "hello ada"
                await leaving.close()
            await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
            with anyio.fail_after(5):
                assert (await http.get("/viewers")).json() == ["ada"]
        await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        with anyio.fail_after(5):
            assert (await http.get("/viewers")).json() == []


async def test_background_audit_keeps_only_the_latest_records_in_memory(tmp_path: Path) -> None:
    # Every end's record was kept in memory, though /audit shows the latest 20: a client
    # reconnecting in a loop grew the service's memory without bound.
    example = load_example("background_audit")
    app = example.create_app(tmp_path / "audit.ndjson")
    audit = app.state.audit
    feeds = example.RECORDS_KEPT + 5
    async with open_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        for n in range(feeds):
            async with open_stream(server, f"/feed?viewer=v{n}") as client:
                with anyio.fail_after(5):
                    await client.read_event()
        with anyio.fail_after(10):
            await audit.wait_records(feeds)
            shown = (await http.get("/audit")).json()
    assert len(audit.records) == example.RECORDS_KEPT
    assert audit.records[-1]["viewer"] == f"v{feeds - 1}"
    assert shown["ends"] == {"client_disconnected": feeds}
    assert len((tmp_path / "audit.ndjson").read_text().splitlines()) == feeds
