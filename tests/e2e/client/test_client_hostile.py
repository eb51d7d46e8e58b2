"""The client against a server that sends what no framework would, on asyncio and trio: it
cannot make the client reconnect in a tight loop (``retry: 0``, ``Retry-After: 0``, a
heartbeat and a hang-up), park it past its bounds (a wait of an hour), crash it (a ``retry:``
of 400 digits, a non-ASCII or padded id), or fill its memory (a line that never ends).
Every refusal is an ``UpstreamError`` or ``ReconnectError`` that names what was wrong.

The server is hand-written (support/raw_upstream.py): each connection is answered with the
bytes a test gives, as they are, and closed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import TypeVar

import anyio
import httpx
import pytest
from support.raw_upstream import (
    NO_CONTENT,
    compressed,
    event_stream,
    ndjson,
    nested_bomb,
    open_raw_upstream,
    status,
)

from streamkit.client import (
    Backoff,
    ReconnectError,
    UpstreamError,
    open_event_stream,
    open_ndjson_stream,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

T = TypeVar("T")

#: Waits exactly, so the gaps between attempts can be checked.
EXACT = Backoff(initial_delay=0.05, jitter=0.0, max_attempts=4)


async def read_all(stream: AsyncIterator[T]) -> list[T]:
    return [item async for item in stream]


async def read_into(stream: AsyncIterator[T], received: list[T]) -> None:
    async for item in stream:
        received.append(item)


#: What a gap measured on a loaded machine may lose to rounding of the clock.
EARLY = 0.01


async def test_retry_zero_is_obeyed_as_min_retry_not_as_a_tight_loop() -> None:
    # Each connection: one event and a retry: 0, then the server hangs up.
    def answer(n: int) -> bytes:
        return event_stream(f"retry: 0\ndata: {n}\n\n".encode()) if n < 4 else NO_CONTENT

    async with (
        open_raw_upstream(answer) as upstream,
        open_event_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with anyio.fail_after(10):
            received = [event.data async for event in stream]
    assert received == ["0", "1", "2", "3"]
    # Each connection worked (it handed over an event): the wait stays at the floor.
    assert all(gap >= EXACT.min_retry - EARLY for gap in upstream.gaps()), upstream.gaps()


@pytest.mark.parametrize(
    "body",
    [b"retry: 0\n\n", b": heartbeat\n\n", b"id: 7\n\n"],
    ids=["retry 0", "heartbeat", "id only"],
)
async def test_a_server_that_hangs_up_before_an_event_is_backed_off_and_given_up_on(
    body: bytes,
) -> None:
    async with (
        open_raw_upstream(lambda n: event_stream(body)) as upstream,
        open_event_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with pytest.raises(ReconnectError, match="after 4 failed attempts"):
            with anyio.fail_after(10):
                await anext(stream)
        assert stream.statistics().failed_attempts == 4
    # Bytes came, but no event: each attempt failed, and the wait doubled.
    floor = EXACT.min_retry if body.startswith(b"retry") else EXACT.initial_delay
    assert len(upstream.requests) == 4
    for n, gap in enumerate(upstream.gaps(), start=1):
        assert gap >= floor * 2**n - EARLY, upstream.gaps()


@pytest.mark.parametrize("body", [b"", b": heartbeat\n\n"], ids=["nothing", "a heartbeat"])
async def test_a_server_that_falls_silent_before_an_event_is_given_up_on(body: bytes) -> None:
    # Each connection is left after the read timeout, having sent no event: a failure, not
    # a connection that held out.
    async with (
        open_raw_upstream(lambda n: event_stream(body), hold=True) as upstream,
        open_event_stream(
            upstream.url, heartbeat_interval=0.1, missed_heartbeats=1, backoff=EXACT
        ) as stream,
    ):
        with pytest.raises(ReconnectError, match="after 4 failed attempts"):
            with anyio.fail_after(10):
                await anext(stream)
    assert len(upstream.requests) == 4


async def test_a_quiet_stream_whose_heartbeats_held_out_is_not_a_failure() -> None:
    # Heartbeats alone for longer than the read timeout, then the connection ends (a proxy's
    # idle limit, say): it worked, however often it happens.
    def answer(n: int) -> bytes | list[bytes | float]:
        if n == 4:
            return NO_CONTENT
        beats: list[bytes | float] = [0.05, b": beat\n\n"] * 6
        return [event_stream(b": beat\n\n"), *beats]

    async with (
        open_raw_upstream(answer) as upstream,
        open_event_stream(
            upstream.url,
            heartbeat_interval=0.1,
            missed_heartbeats=2,
            backoff=Backoff(initial_delay=0.01, max_attempts=1),
        ) as stream,
    ):
        with anyio.fail_after(10):
            assert await read_all(stream) == []
        assert stream.statistics().failed_attempts == 0
    assert len(upstream.requests) == 5


@pytest.mark.parametrize(
    "retry_after", ["0", "Thu, 01 Jan 1970 00:00:00 GMT"], ids=["zero", "a past date"]
)
async def test_retry_after_now_does_not_skip_the_backoff(retry_after: str) -> None:
    unavailable = status(503, "Service Unavailable", f"retry-after: {retry_after}")
    async with (
        open_raw_upstream(lambda n: unavailable) as upstream,
        open_event_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with pytest.raises(ReconnectError, match="after 4 failed attempts") as caught:
            with anyio.fail_after(10):
                await anext(stream)
    assert isinstance(caught.value.__cause__, UpstreamError)
    assert len(upstream.requests) == 4
    # After the first 503, 2 x 0.05 s; then 0.2 s, 0.4 s.
    for n, gap in enumerate(upstream.gaps(), start=1):
        assert gap >= EXACT.initial_delay * 2**n - EARLY, upstream.gaps()


@pytest.mark.parametrize(
    "first",
    [
        status(503, "Service Unavailable", "retry-after: 3600"),
        event_stream(b"retry: 3600000\ndata: a\n\n"),
    ],
    ids=["Retry-After", "retry"],
)
async def test_a_wait_past_max_reconnect_time_gives_up_at_once(first: bytes) -> None:
    backoff = Backoff(initial_delay=0.05, jitter=0.0, max_reconnect_time=30.0)
    async with (
        open_raw_upstream(lambda n: first) as upstream,
        open_event_stream(upstream.url, backoff=backoff) as stream,
    ):
        with pytest.raises(ReconnectError, match=r"the next would wait 3\.6e\+03 s"):
            with anyio.fail_after(5):  # not an hour
                await read_all(stream)
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    "retry_after",
    # An hour of 21 digits: the date's reading raised OverflowError out of the iteration.
    ["9" * 400, "Tue, 1 Dec 1970 999999999999999999999:00:00 GMT"],
    ids=["400 digits", "a date too large for a date"],
)
async def test_a_retry_after_that_cannot_be_read_is_no_retry_after(retry_after: str) -> None:
    unavailable = status(503, "Service Unavailable", f"retry-after: {retry_after}")
    async with (
        open_raw_upstream(lambda n: unavailable) as upstream,
        open_event_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with pytest.raises(UpstreamError, match="answered 503 Service Unavailable, expected"):
            with anyio.fail_after(5):
                await anext(stream)
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("digits", [20, 400, 5000])
async def test_a_retry_too_long_to_be_a_number_is_ignored(digits: int) -> None:
    def answer(n: int) -> bytes:
        body = f"retry: {'9' * digits}\ndata: a\n\n".encode()
        return event_stream(body) if n == 0 else NO_CONTENT

    async with (
        open_raw_upstream(answer) as upstream,
        open_event_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with anyio.fail_after(5):
            received = [event.data async for event in stream]
    assert received == ["a"]
    # The initial delay, not the retry:
    assert upstream.gaps()[0] < 1.0


async def test_ids_are_sent_back_as_a_browser_sends_them() -> None:
    bodies = [
        "id: café ☕\ndata: a\n\n".encode(),
        b"id:  padded \t\ndata: b\n\n",
        b"id: in\tside\ndata: c\n\n",
    ]

    received, sent = await ids_sent_back(bodies)
    # Handed over as the server sent them...
    assert received == [("café ☕", "a"), (" padded \t", "b"), ("in\tside", "c")]
    # ... and sent back as a server reads them: UTF-8, without the padding HTTP drops.
    assert sent == [None, "café ☕".encode(), b"padded", b"in\tside"]


async def ids_sent_back(
    bodies: list[bytes],
) -> tuple[list[tuple[str | None, str]], list[bytes | None]]:
    """Serve each of *bodies* on a connection of its own, then 204: the events the client
    handed over, as ``(id, data)``, and the ``Last-Event-ID`` of each of its requests."""

    def answer(n: int) -> bytes:
        return event_stream(bodies[n]) if n < len(bodies) else NO_CONTENT

    async with (
        open_raw_upstream(answer) as upstream,
        open_event_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with anyio.fail_after(5):
            received = [(event.id, event.data) async for event in stream]
    return received, [request.headers.get(b"last-event-id") for request in upstream.requests]


async def test_an_id_no_header_can_carry_ends_the_stream_when_a_resume_needs_it() -> None:
    async with (
        open_raw_upstream(lambda n: event_stream(b"id: a\x01b\ndata: a\n\n")) as upstream,
        open_event_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with anyio.fail_after(5):
            event = await anext(stream)  # handed over, as a browser would
            with pytest.raises(UpstreamError, match=r"sent the event id 'a\\x01b', which holds"):
                await anext(stream)
    assert event.id == "a\x01b"
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    "body",
    [b"data: " + b"x" * 5000, b"data: x\n" * 1000, b":" + b" " * 5000],
    ids=["a line", "an event of many lines", "a comment"],
)
async def test_an_event_that_never_ends_is_refused_at_max_event_size(body: bytes) -> None:
    async with (
        open_raw_upstream(lambda n: event_stream(body)) as upstream,
        open_event_stream(upstream.url, backoff=EXACT, max_event_size=4096) as stream,
    ):
        with pytest.raises(UpstreamError, match="grew past 4096 characters"):
            with anyio.fail_after(5):
                await anext(stream)
    assert len(upstream.requests) == 1


async def test_many_small_events_and_heartbeats_pass_a_small_max_event_size() -> None:
    body = b"".join(b": beat\n\ndata: %d\n\n" % n for n in range(2000))

    def answer(n: int) -> bytes:
        return event_stream(body) if n == 0 else NO_CONTENT

    async with (
        open_raw_upstream(answer) as upstream,
        open_event_stream(upstream.url, backoff=EXACT, max_event_size=64) as stream,
    ):
        with anyio.fail_after(10):
            received = [event.data async for event in stream]
    assert received == [str(n) for n in range(2000)]


@pytest.mark.parametrize(
    ("body", "named", "before"),
    [
        (
            b'{"n": 1}\n{"n": 2,\n',
            r"""line 2 of the NDJSON body is not JSON \(.*\): b'\{"n": 2,'""",
            [{"n": 1}],
        ),
        (
            b'{"n": 1}\n"\xff"\n',
            r"""line 2 of the NDJSON body is not UTF-8 \(.*\): b'"\\xff"'""",
            [{"n": 1}],
        ),
        (
            b'{"n": 1}\n' + b"1" * 5000,
            "line 2 of the NDJSON body grew past 4096 bytes without ending",
            [{"n": 1}],
        ),
        (
            b'{"n": 1}\n{"n": 2}\n' + b"1" * 5000 + b"\n",
            "line 3 of the NDJSON body is longer than 4096 bytes",
            [{"n": 1}, {"n": 2}],
        ),
        # What Python's json cannot read: a RecursionError came out of the iteration.
        (
            b'{"n": 1}\n' + b"[" * 4000 + b"\n",
            r"line 2 of the NDJSON body cannot be read as JSON \(nested too deeply\)",
            [{"n": 1}],
        ),
    ],
    ids=["not JSON", "not UTF-8", "too long", "too long, ended", "too deep"],
)
async def test_an_ndjson_line_that_cannot_be_read_is_an_upstream_error_naming_it(
    body: bytes, named: str, before: list[object]
) -> None:
    received: list[object] = []
    async with (
        open_raw_upstream(lambda n: ndjson(body)) as upstream,
        open_ndjson_stream(upstream.url, backoff=EXACT, max_event_size=4096) as stream,
    ):
        with pytest.raises(UpstreamError, match=named):
            with anyio.fail_after(5):
                await read_into(stream, received)
    # The items before the line were handed over.
    assert received == before


@pytest.mark.parametrize(
    ("line", "named"),
    [
        (b'{"n": NaN}', r"is not JSON \(NaN is no JSON value\): b'\{\"n\": NaN\}'"),
        (b"[-Infinity]", r"is not JSON \(-Infinity is no JSON value\)"),
        (b'{"n": "\\ud800"}', r"is not JSON UTF-8 can carry \(it holds a lone surrogate"),
        (b'{"n": "\xed\xa0\x80"}', r"is not UTF-8 \(invalid continuation byte at index 7\)"),
        (
            '{"n": 2}'.encode("utf-16-le"),
            r"is not JSON \(Expecting property name enclosed in double quotes at index 1\)",
        ),
        (b'\xef\xbb\xbf{"n": 2}', r"is not JSON \(it starts with a BOM"),
    ],
    ids=["NaN", "Infinity", "lone surrogate escape", "encoded surrogate", "UTF-16", "BOM"],
)
async def test_an_ndjson_line_a_lenient_reader_takes_is_refused_naming_it(
    line: bytes, named: str
) -> None:
    # json.loads took them all: NaN and infinities, a lone surrogate (escaped or encoded),
    # a line it guessed was UTF-16, a BOM on any line. A server's bug went unseen.
    received: list[object] = []
    body = b'{"n": 1}\n' + line + b'\n{"n": 3}\n'
    async with (
        open_raw_upstream(lambda n: NO_CONTENT if n else ndjson(body)) as upstream,
        open_ndjson_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with pytest.raises(UpstreamError, match="line 2 of the NDJSON body " + named):
            with anyio.fail_after(5):
                await read_into(stream, received)
    assert received == [{"n": 1}]


async def test_a_bom_may_start_each_connections_body() -> None:
    bodies = [b'\xef\xbb\xbf{"n": 1}\n', b'\xef\xbb\xbf{"n": 2}\n']
    async with (
        open_raw_upstream(lambda n: ndjson(bodies[n]) if n < 2 else NO_CONTENT) as upstream,
        open_ndjson_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with anyio.fail_after(5):
            assert await read_all(stream) == [{"n": 1}, {"n": 2}]


async def test_a_long_line_that_is_not_json_is_named_by_its_start() -> None:
    line = b"[" + b"1," * 200_000 + b"oops]"
    async with (
        open_raw_upstream(lambda n: ndjson(line + b"\n")) as upstream,
        open_ndjson_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with pytest.raises(UpstreamError, match=r"line 1 of the NDJSON body is not JSON") as caught:
            with anyio.fail_after(5):
                await read_all(stream)
    assert len(str(caught.value)) < 400
    assert "b'[1,1,1," in str(caught.value)


@pytest.mark.parametrize(
    ("item_id", "error", "named"),
    [
        (lambda item: "a\nb", ValueError, r"item_id returned 'a\\nb' for the item \{'n': 1\}"),
        (lambda item: 1, TypeError, r"item_id must return a str or None, got int: 1"),
    ],
    ids=["a line break", "not a str"],
)
async def test_an_item_id_that_cannot_be_sent_back_is_refused_naming_it(
    item_id: object, error: type[Exception], named: str
) -> None:
    async with (
        open_raw_upstream(lambda n: ndjson(b'{"n": 1}\n')) as upstream,
        open_ndjson_stream(upstream.url, item_id=item_id, backoff=EXACT) as stream,  # type: ignore[arg-type]
    ):
        with pytest.raises(error, match=named):
            with anyio.fail_after(5):
                await anext(stream)


#: The most a body's decoding hands the parser at once: a bound on what is read past
#: max_event_size before it is refused, however well the body compresses.
DECODED_PIECE = 64 * 1024


def bytes_read(error: BaseException) -> int:
    """How much the parser held when it refused the body, as the error says."""
    found = re.search(r"\((\d+) read\)", str(error))
    assert found is not None, error
    return int(found[1])


@pytest.mark.parametrize("wbits", [31, 15, -15], ids=["gzip", "deflate", "raw deflate"])
async def test_a_compressed_stream_is_decoded(wbits: int) -> None:
    body = compressed(b"".join(b"id: %d\ndata: %d\n\n" % (n, n) for n in range(500)), wbits=wbits)
    encoding = "gzip" if wbits == 31 else "deflate"

    def answer(n: int) -> bytes:
        return event_stream(body, encoding=encoding) if n == 0 else NO_CONTENT

    async with (
        open_raw_upstream(answer) as upstream,
        open_event_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with anyio.fail_after(10):
            received = [(event.id, event.data) async for event in stream]
    assert received == [(str(n), str(n)) for n in range(500)]
    assert upstream.requests[1].headers[b"last-event-id"] == b"499"


async def test_a_gzip_body_of_several_members_is_decoded_whole() -> None:
    # RFC 1952: a gzip file is a series of members, as a server that compresses each write
    # apart sends it. zlib stops at the end of the first: the rest was dropped without a word.
    events = [b"id: %d\ndata: %d\n\n" % (n, n) for n in range(500)]
    body = compressed(b"".join(events[:250])) + compressed(b"".join(events[250:]))

    def answer(n: int) -> bytes:
        return event_stream(body, encoding="gzip") if n == 0 else NO_CONTENT

    async with (
        open_raw_upstream(answer) as upstream,
        open_event_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with anyio.fail_after(10):
            received = [event.data async for event in stream]
    assert received == [str(n) for n in range(500)]


async def test_a_request_asks_only_for_the_codings_the_client_decodes() -> None:
    # httpx's client.build_request() lists br and zstd where their packages are installed: a
    # server that honoured it sent a body the client then refused.
    import httpx

    def answer(n: int) -> bytes:
        return NO_CONTENT

    async with open_raw_upstream(answer) as upstream:
        asked = "br;q=1.0, gzip;q=0.8, zstd, deflate"
        request = httpx.Request("GET", upstream.url, headers={"accept-encoding": asked})
        async with open_event_stream(request, backoff=EXACT) as stream:
            with anyio.fail_after(5):
                assert [event async for event in stream] == []
        only_br = httpx.Request("GET", upstream.url, headers={"accept-encoding": "br"})
        async with open_event_stream(only_br, backoff=EXACT) as stream:
            with anyio.fail_after(5):
                assert [event async for event in stream] == []
    sent = [request.headers.get(b"accept-encoding") for request in upstream.requests]
    assert sent == [b"gzip;q=0.8, deflate", b"identity"]


@pytest.mark.parametrize("encoding", ["gzip", "gzip, gzip"], ids=["once", "twice"])
async def test_a_compression_bomb_is_refused_having_decoded_little_past_max_event_size(
    encoding: str,
) -> None:
    # 64 MiB of a line that never ends, in 64 KiB on the wire (in 300 bytes, twice over).
    body = compressed(b"data: ", b"x", 64)
    if encoding == "gzip, gzip":
        body = compressed(body)
    async with (
        open_raw_upstream(lambda n: event_stream(body, encoding=encoding)) as upstream,
        open_event_stream(upstream.url, backoff=EXACT, max_event_size=4096) as stream,
    ):
        with pytest.raises(UpstreamError, match="grew past 4096 characters") as caught:
            with anyio.fail_after(10):
                await anext(stream)
    assert bytes_read(caught.value) <= 4096 + DECODED_PIECE


async def test_an_ndjson_compression_bomb_is_refused_having_decoded_little_past_the_bound() -> None:
    body = compressed(b"", b"1", 64)
    async with (
        open_raw_upstream(lambda n: ndjson(body, encoding="gzip")) as upstream,
        open_ndjson_stream(upstream.url, backoff=EXACT, max_event_size=4096) as stream,
    ):
        with pytest.raises(
            UpstreamError, match="line 1 of the NDJSON body grew past 4096 bytes"
        ) as caught:
            with anyio.fail_after(10):
                await anext(stream)
    assert bytes_read(caught.value) <= 4096 + DECODED_PIECE


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
async def test_a_content_encoding_it_cannot_decode_is_refused_naming_it(encoding: str) -> None:
    async with (
        open_raw_upstream(lambda n: event_stream(b"data: a\n\n", encoding=encoding)) as upstream,
        open_event_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with pytest.raises(UpstreamError, match=f"Content-Encoding {encoding!r}"):
            with anyio.fail_after(5):
                await anext(stream)
    assert len(upstream.requests) == 1


async def test_a_redirect_to_a_scheme_it_cannot_follow_is_not_retried() -> None:
    redirect = status(302, "Found", "location: ftp://127.0.0.1/events")
    async with (
        open_raw_upstream(lambda n: redirect) as upstream,
        httpx.AsyncClient(follow_redirects=True) as client,
        open_event_stream(upstream.url, client=client, backoff=EXACT) as stream,
    ):
        with pytest.raises(httpx.UnsupportedProtocol, match="'ftp://'"):
            with anyio.fail_after(5):
                await anext(stream)
    assert len(upstream.requests) == 1


async def test_a_nested_compression_bomb_of_blank_lines_can_be_left() -> None:
    # 64 GiB of blank lines, which the parser takes as nothing, in 100 KiB: its decoding must
    # let a cancellation in (and the loop's other tasks run), or the block is left minutes
    # later (here: the test's timeout).
    body = nested_bomb(b"\n", 64)
    async with (
        open_raw_upstream(lambda n: event_stream(body, encoding="gzip, gzip")) as upstream,
        open_event_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with anyio.move_on_after(0.5) as scope:
            await anext(stream)
    assert scope.cancelled_caught
    assert len(upstream.requests) == 1


async def test_a_response_head_that_never_ends_is_refused_within_h11s_bound() -> None:
    # An endless header field: h11 refuses a head past 100 KiB, read no further.
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-pad: " + b"a" * 1_000_000
    async with (
        open_raw_upstream(lambda n: head, hold=True) as upstream,
        open_event_stream(upstream.url, backoff=EXACT) as stream,
    ):
        with pytest.raises(ReconnectError, match="after 4 failed attempts") as caught:
            with anyio.fail_after(10):
                await anext(stream)
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
    assert len(upstream.requests) == 4


async def test_an_id_holding_nul_is_ignored_and_cr_ends_its_line() -> None:
    bodies = [b"id: 1\ndata: a\n\nid: x\x00y\ndata: b\n\n", b"id: 2\rdata: c\r\n\r\n"]
    received, sent = await ids_sent_back(bodies)
    # As a browser: the id with NUL is dropped (the last one stays in effect), CR is a line end.
    assert received == [("1", "a"), ("1", "b"), ("2", "c")]
    assert sent == [None, b"1", b"2"]


@pytest.mark.parametrize("waiting", ["for the headers", "for the body"])
async def test_leaving_the_block_closes_the_connection_at_once(waiting: str) -> None:
    answer: list[bytes | float] = (
        [] if waiting == "for the headers" else [event_stream(b"data: a\n\n")]
    )
    received = anyio.Event()

    async def follow(url: str) -> None:
        async with open_event_stream(url, backoff=EXACT) as stream:
            async for _ in stream:
                received.set()

    async with open_raw_upstream(lambda n: answer, hold=True) as upstream:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(follow, upstream.url)
                request = await upstream.wait_request(0)
                if waiting == "for the body":
                    await received.wait()
                task_group.cancel_scope.cancel()  # the block is left, cancelled
            await request.ended.wait()
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("kind", ["sse", "ndjson"])
async def test_a_url_is_sent_as_the_given_client_would_send_it(kind: str) -> None:
    # A client made with headers (a bearer token), cookies and a base_url: a URL given with
    # it is the client's, as client.stream("GET", url) would send it, on every attempt.
    def answer(n: int) -> bytes:
        if n > 1:
            return NO_CONTENT
        return event_stream(b"data: 1\n\n") if kind == "sse" else ndjson(b"1\n")

    opened = open_event_stream if kind == "sse" else open_ndjson_stream
    accept = b"text/event-stream" if kind == "sse" else b"application/x-ndjson"  # not */*
    async with open_raw_upstream(answer) as upstream:
        async with (
            httpx.AsyncClient(
                base_url=upstream.url, headers={"authorization": "Bearer t"}, cookies={"a": "b"}
            ) as client,
            opened("/events", client=client, backoff=EXACT) as stream,
        ):
            with anyio.fail_after(5):
                assert len(await read_all(stream)) == 2
    for request in upstream.requests:
        assert request.headers[b"authorization"] == b"Bearer t"
        assert request.headers[b"cookie"] == b"a=b"
        assert request.headers[b"accept-encoding"] == b"gzip, deflate"
        assert request.headers[b"accept"] == accept
    assert len(upstream.requests) == 3


@pytest.mark.parametrize("given", ["client", "own"])
async def test_a_cookie_the_server_set_is_sent_on_the_next_connection(given: str) -> None:
    # A load balancer's sticky-session cookie: a browser's EventSource sends it back when it
    # reconnects, as client.stream() would on each call.
    first = event_stream(b"data: a\n\n").replace(
        b"\r\n\r\n", b"\r\nset-cookie: node=7; Path=/\r\n\r\n", 1
    )

    def answer(n: int) -> bytes:
        return first if n == 0 else NO_CONTENT

    async with open_raw_upstream(answer) as upstream, httpx.AsyncClient() as client:
        async with open_event_stream(
            upstream.url, client=client if given == "client" else None, backoff=EXACT
        ) as stream:
            with anyio.fail_after(5):
                assert [event.data async for event in stream] == ["a"]
    assert [request.headers.get(b"cookie") for request in upstream.requests] == [None, b"node=7"]


async def test_a_cookie_header_of_the_request_given_is_sent_as_it_is() -> None:
    first = event_stream(b"data: a\n\n").replace(
        b"\r\n\r\n", b"\r\nset-cookie: node=7; Path=/\r\n\r\n", 1
    )

    def answer(n: int) -> bytes:
        return first if n == 0 else NO_CONTENT

    async with open_raw_upstream(answer) as upstream:
        request = httpx.Request("GET", upstream.url, headers={"cookie": "mine=1"})
        async with open_event_stream(request, backoff=EXACT) as stream:
            with anyio.fail_after(5):
                assert [event.data async for event in stream] == ["a"]
    assert [request.headers.get(b"cookie") for request in upstream.requests] == [b"mine=1"] * 2


async def test_an_empty_last_event_id_given_overrides_the_requests_header() -> None:
    # last_event_id="" says: from the start. The request's own header must not be sent
    # while statistics() says no id is in effect.
    async with open_raw_upstream(lambda n: NO_CONTENT) as upstream:
        request = httpx.Request("GET", upstream.url, headers={"last-event-id": "5"})
        async with open_event_stream(request, last_event_id="", backoff=EXACT) as stream:
            assert stream.statistics().last_event_id == ""
            with anyio.fail_after(5):
                assert [event async for event in stream] == []
    assert b"last-event-id" not in upstream.requests[0].headers


@pytest.mark.parametrize(
    "answer",
    [
        status(404, "Not Found"),
        status(503, "Service Unavailable", "retry-after: 3600"),
        b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 0\r\n\r\n",
        event_stream(b"data: \xff\n\n", encoding="br"),
    ],
    ids=["status", "retry-after", "content type", "content encoding"],
)
async def test_a_password_in_the_url_is_not_said_in_an_error(answer: bytes) -> None:
    # The messages are logged: a password in them would be written to the logs, in clear.
    backoff = Backoff(initial_delay=0.05, jitter=0.0, max_reconnect_time=30.0)
    async with open_raw_upstream(lambda n: answer) as upstream:
        url = upstream.url.replace("http://", "http://reader:s3cret@")
        async with open_event_stream(url, backoff=backoff) as stream:
            with pytest.raises((UpstreamError, ReconnectError)) as caught:
                with anyio.fail_after(5):
                    await read_all(stream)
    said = "".join(str(e) for e in (caught.value, caught.value.__cause__) if e is not None)
    assert "reader:[secure]@127.0.0.1" in said
    assert "s3cret" not in said
