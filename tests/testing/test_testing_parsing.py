"""The body readers the test clients use: SSE frames by the WHATWG rules, NDJSON lines."""

from __future__ import annotations

import time

import pytest

from streamkit import ServerSentEvent
from streamkit.testing import NDJSONReader, SSEReader


def feed_bytewise(reader: SSEReader, body: bytes) -> list[ServerSentEvent]:
    return [frame for index in range(len(body)) for frame in reader.feed(body[index : index + 1])]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_any_line_ending_and_any_split_give_the_same_frames(newline: bytes) -> None:
    body = newline.join(
        [b"event: tick", b"id: 7", b"data: caf\xc3\xa9", b"data:second", b"", b": ping", b"", b""]
    )
    expected = [ServerSentEvent(event="tick", id="7", data="café\nsecond")]
    assert SSEReader().feed(body) == expected
    reader = SSEReader()
    assert feed_bytewise(reader, body) == expected
    assert reader.comments == ["ping"]


def test_frames_a_browser_would_not_dispatch_are_kept() -> None:
    frames = SSEReader().feed(b"retry: 1000\nevent: shutdown\n\nretry: soon\n\n")
    assert frames == [ServerSentEvent(retry=1000, event="shutdown")]


def test_an_id_holding_nul_is_ignored_and_an_incomplete_frame_waits() -> None:
    reader = SSEReader()
    assert reader.feed(b"id: a\x00b\ndata: x\n\ndata: pending") == [ServerSentEvent(data="x")]
    assert reader.feed(b"\n\n") == [ServerSentEvent(data="pending")]


def test_ndjson_lines_split_anywhere_and_blank_lines_counted() -> None:
    reader = NDJSONReader()
    assert reader.feed(b'{"a": 1}\n\n{"b"') == [{"a": 1}]
    assert reader.feed(b": [2]}\n\n") == [{"b": [2]}]
    assert reader.blank_lines == 2


def test_an_event_of_many_data_lines_is_parsed_in_linear_time() -> None:
    """One event of 200,000 data lines: about 0.2 s when each line costs the same, minutes
    when each line copies those before it."""
    lines = 200_000
    body = b"data: x\n" * lines + b"\n"
    reader = SSEReader()
    started = time.perf_counter()
    frames = [
        frame
        for start in range(0, len(body), 65536)
        for frame in reader.feed(body[start : start + 65536])
    ]
    took = time.perf_counter() - started
    assert len(frames) == 1
    assert frames[0].data is not None
    assert frames[0].data.count("x") == lines
    assert took < 5.0, f"{lines} data lines took {took:.1f} s"


def test_ndjson_crlf_lines_and_a_leading_bom_split_anywhere() -> None:
    body = b'\xef\xbb\xbf{"a": "caf\xc3\xa9"}\r\n\r\n[1]\r\n'
    reader = NDJSONReader()
    items = [item for index in range(len(body)) for item in reader.feed(body[index : index + 1])]
    assert items == [{"a": "café"}, [1]]
    assert reader.blank_lines == 1


@pytest.mark.parametrize(
    ("line", "said"),
    [
        (b'"\xff"', "is not UTF-8 (invalid start byte at index 1)"),
        (b"{oops}", "is not JSON (Expecting property name enclosed in double quotes at index 1)"),
        (b"NaN", "is not JSON (NaN is no JSON value)"),
        (
            b'\xef\xbb\xbf{"b": 2}',
            "is not JSON (it starts with a BOM, which only the first line may hold)",
        ),
        ('{"b": 2}'.encode("utf-16"), "is not UTF-8 (invalid start byte at index 0)"),
        (
            b'{"b": ["\\ud800"]}',
            "is not JSON UTF-8 can carry (it holds a lone surrogate, '\\ud800')",
        ),
        (
            b'{"\\udfff": 1}',
            "is not JSON UTF-8 can carry (it holds a lone surrogate, '\\udfff')",
        ),
    ],
    ids=["invalid-utf8", "not-json", "nan", "bom-past-the-start", "utf16", "surrogate", "key"],
)
def test_ndjson_a_line_that_is_not_utf8_json_is_refused_naming_it(line: bytes, said: str) -> None:
    # json.loads on bytes guessed UTF-16 and took NaN and a BOM on any line, which hid a
    # server's bug; and its errors named no line of the body.
    reader = NDJSONReader()
    assert reader.feed(b'{"a": 1}\n') == [{"a": 1}]
    with pytest.raises(ValueError, match=r"^line 2 of the NDJSON body ") as caught:
        reader.feed(line + b"\n")
    assert str(caught.value) == f"line 2 of the NDJSON body {said}: {line!r}"


@pytest.mark.parametrize(
    ("body", "discarded"),
    [
        (b"data: x\n\n", False),
        (b": comment\n\n", False),
        (b"data: x\n", True),
        (b"retry: 10\n", True),
        (b"data: x", True),
        (b"\xc3", True),
    ],
)
def test_end_says_whether_an_unfinished_frame_was_discarded(body: bytes, discarded: bool) -> None:
    reader = SSEReader()
    reader.feed(body)
    assert reader.end() is discarded
    assert reader.end() is False  # nothing is left after it


@pytest.mark.parametrize(
    ("body", "discarded"),
    [(b'{"n": 0}\n', False), (b"\n", False), (b'{"n": 0}', True), (b'{"n": 0}\n{"n"', True)],
)
def test_ndjson_end_says_whether_an_unfinished_line_was_discarded(
    body: bytes, discarded: bool
) -> None:
    reader = NDJSONReader()
    reader.feed(body)
    assert reader.end() is discarded
    assert reader.end() is False  # nothing is left after it


def test_ndjson_surrogate_pairs_and_escaped_backslashes_are_read() -> None:
    # A pair escaped as two halves is one character; an escaped backslash before "ud800"
    # is no escape of a surrogate.
    reader = NDJSONReader()
    body = b'["\\ud83d\\ude00", "\\\\ud800", "\xf0\x9f\x98\x80"]\n'
    assert reader.feed(body) == [["\U0001f600", "\\ud800", "\U0001f600"]]


@pytest.mark.parametrize(
    ("line", "why"),
    [(b"1" * 5000, "Exceeds the limit (4300 digits)"), (b"[" * 100_000, "nested too deeply")],
    ids=["digits", "nesting"],
)
def test_ndjson_json_past_what_python_reads_is_refused_naming_its_line(
    line: bytes, why: str
) -> None:
    # More digits than int() takes, or deeper than the recursion limit: a bare ValueError or
    # RecursionError came out, naming no line.
    reader = NDJSONReader()
    with pytest.raises(
        ValueError, match=r"^line 2 of the NDJSON body cannot be read as JSON"
    ) as caught:
        reader.feed(b"[1]\n" + line + b"\n")
    message = str(caught.value)
    assert why in message
    assert message.endswith(f": {line[:200]!r:.200}")
