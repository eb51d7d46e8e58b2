"""The event-stream parser, by the WHATWG rules: what each line means, however the body is
split, and in time linear in it."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamkit import ServerSentEvent
from streamkit._sse import encode_event, resumable_id
from streamkit.client import FrameTooLarge, SSEDecoder


def parse(body: bytes) -> list[ServerSentEvent]:
    return SSEDecoder().feed(body)


def parse_split(body: bytes, cuts: list[int]) -> list[ServerSentEvent]:
    return parse_split_with(SSEDecoder(), body, cuts)


def parse_split_with(decoder: SSEDecoder, body: bytes, cuts: list[int]) -> list[ServerSentEvent]:
    frames = []
    start = 0
    for cut in sorted({min(cut, len(body)) for cut in cuts}):
        frames += decoder.feed(body[start:cut])
        start = cut
    return frames + decoder.feed(body[start:])


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_is_one(newline: bytes) -> None:
    body = newline.join([b"event: a", b"data: 1", b"data: 2", b"", b"data: 3", b"", b""])
    assert parse(body) == [
        ServerSentEvent(event="a", data="1\n2"),
        ServerSentEvent(data="3"),
    ]


def test_a_crlf_split_between_chunks_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\n\r") == [ServerSentEvent(data="x")]
    assert decoder.feed(b"\ndata: y\n\n") == [ServerSentEvent(data="y")]


def test_a_leading_bom_is_dropped_even_split() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef\xbb") == []
    assert decoder.feed(b"\xbfdata: a\n\n") == [ServerSentEvent(data="a")]


def test_only_the_first_bom_is_dropped() -> None:
    # A BOM later in the body is part of the field name: an unknown field, ignored.
    assert parse(b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n") == [ServerSentEvent(data="a")]


def test_one_space_after_the_colon_is_dropped_and_no_more() -> None:
    assert parse(b"data:x\n\ndata:  y\n\ndata\n\n") == [
        ServerSentEvent(data="x"),
        ServerSentEvent(data=" y"),
        ServerSentEvent(data=""),
    ]


def test_comments_are_kept_apart_when_asked_and_unknown_fields_ignored() -> None:
    decoder = SSEDecoder(keep_comments=True)
    assert decoder.feed(b": ping\n:\nfoo: bar\nevent\n\n") == [ServerSentEvent(event="")]
    assert decoder.comments == ["ping", ""]
    assert SSEDecoder().comments is None


def test_an_id_holding_nul_is_ignored_and_the_last_id_persists() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\ndata: c\n\n") == [
        ServerSentEvent(id="1", data="a"),
        ServerSentEvent(data="b"),
        ServerSentEvent(data="c"),
    ]
    assert decoder.last_event_id == "1"
    decoder.feed(b"id\n\n")  # an empty id clears it
    assert decoder.last_event_id == ""


def test_the_last_id_changes_only_when_its_frame_is_complete() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n")
    assert decoder.last_event_id == "1"
    decoder.end()  # the connection broke: frame 2 never arrived, and is not resumed from
    assert decoder.last_event_id == "1"
    assert decoder.feed(b"\n") == []


@pytest.mark.parametrize(
    ("line", "retry"),
    [(b"retry: 1500", 1500), (b"retry: 0", 0), (b"retry: -1", None), (b"retry: 1.5", None),
     (b"retry: \xd9\xa3", None), (b"retry:", None), (b"retry: 12 ", None),
     # Up to 19 digits, below 2 ** 64, as a browser reads it; longer is ignored, not fatal.
     (b"retry: " + b"9" * 19, 10**19 - 1), (b"retry: " + b"9" * 20, None),
     (b"retry: " + b"9" * 5000, None)],
)  # fmt: skip
def test_retry_is_ascii_digits_only(line: bytes, retry: int | None) -> None:
    decoder = SSEDecoder()
    frames = decoder.feed(line + b"\ndata: x\n\n")
    assert frames == [ServerSentEvent(data="x", retry=retry)]
    assert decoder.retry == retry


@pytest.mark.parametrize(
    "body",
    [
        b"data: " + b"x" * 100,
        b"data: x\n" * 20,
        b"data: x\n\n" + b":" * 100,
        b"id: 1\n" + b"x" * 99,
    ],
    ids=["a line", "many lines", "after a frame", "a line after a field"],
)
def test_a_frame_past_max_size_is_refused_the_frames_before_it_kept(body: bytes) -> None:
    pieces = list(range(0, len(body), 7))  # the frame grows across chunks
    with pytest.raises(FrameTooLarge, match="grew past 64 characters"):
        parse_split_with(SSEDecoder(max_size=64), body, pieces)
    # All at once: a frame the chunk completed before the one too large is handed back.
    with pytest.raises(FrameTooLarge) as caught:
        SSEDecoder(max_size=64).feed(b"data: a\n\n" + body)
    assert caught.value.frames[0] == ServerSentEvent(data="a")


def test_a_long_stream_of_small_frames_and_comments_stays_within_max_size() -> None:
    decoder = SSEDecoder(max_size=16)
    body = b"".join(b": beat\n\ndata: %d\n\n" % (n % 10) for n in range(1000))
    frames = parse_split_with(decoder, body, list(range(0, len(body), 5)))
    assert [frame.data for frame in frames] == [str(n % 10) for n in range(1000)]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert parse(b"data: a\xffb\n\n") == [ServerSentEvent(data="a\ufffdb")]


def test_many_data_lines_in_one_event_take_linear_time() -> None:
    # The kit's old reader copied the event's lines on each new one: 200,000 lines fed one
    # at a time took minutes. Linear, it is well under a second; 10 s is the bound under load.
    lines = 200_000
    decoder = SSEDecoder()
    started = time.perf_counter()
    for _ in range(lines):
        decoder.feed(b"data: x\n")
    (frame,) = decoder.feed(b"\n")
    assert time.perf_counter() - started < 10.0
    assert frame.data is not None
    assert len(frame.data) == 2 * lines - 1


def test_a_long_line_split_in_many_chunks_takes_linear_time() -> None:
    decoder = SSEDecoder()
    started = time.perf_counter()
    decoder.feed(b"data: ")
    for _ in range(200_000):
        decoder.feed(b"xxxxx")
    (frame,) = decoder.feed(b"\n\n")
    assert time.perf_counter() - started < 10.0
    assert frame.data == "x" * 1_000_000


names = st.text(st.characters(blacklist_characters="\r\n\x00", codec="utf-8"), max_size=8)
# An id holds no control character (C0 or DEL) and no space at either end: none a resume
# could send back.
ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=8).filter(
    resumable_id
)
events = st.builds(
    ServerSentEvent,
    data=st.text(st.characters(codec="utf-8"), max_size=30).map(lambda s: s.replace("\r", "")),
    event=st.none() | names.filter(bool),
    id=st.none() | ids,
    retry=st.none() | st.integers(0, 10**6),
)


@given(st.lists(events, max_size=5), st.lists(st.integers(0, 400), max_size=6))
def test_what_streamkit_encodes_is_parsed_back_however_it_is_split(
    sent: list[ServerSentEvent], cuts: list[int]
) -> None:
    body = b"".join(encode_event(event) for event in sent)
    assert parse_split(body, cuts) == sent


def kept_per_character(decoder: SSEDecoder, start: bytes, piece: bytes, count: int) -> float:
    """Bytes of memory the decoder keeps for each character of an unfinished frame, fed
    *start*, then *piece* *count* times, each a new object as a socket's reads are."""
    decoder.feed(start)
    tracemalloc.start()
    try:
        for _ in range(count):
            decoder.feed(bytes(bytearray(piece)))
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return kept / (len(piece) * count)


@pytest.mark.parametrize(
    ("start", "piece"),
    [(b"data: ", b"xy"), (b"", b"data: xy\n")],
    ids=["a line two bytes a read", "an event of many short lines"],
)
def test_a_frame_arriving_in_tiny_pieces_costs_about_its_size(start: bytes, piece: bytes) -> None:
    # max_size counts characters: a server that sent them two a read, or a short line at a
    # time, was kept as a str each: 50 bytes a piece, up to 30 times the bound.
    assert kept_per_character(SSEDecoder(max_size=10_000_000), start, piece, 100_000) < 3
