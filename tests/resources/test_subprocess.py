"""The line splitting under subprocess_lines: pure, so tested without a process."""

from __future__ import annotations

import itertools
import subprocess
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamkit._subprocess import LineSplitter
from streamkit.resources import subprocess_lines


def test_lines_are_split_across_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntw") == ["one"]
    assert splitter.feed(b"o\n\nthree") == ["two", ""]
    assert splitter.flush() == ["three"]
    assert splitter.flush() == []


def test_crlf_endings_are_removed() -> None:
    assert LineSplitter().feed(b"dos\r\nunix\n") == ["dos", "unix"]


def test_a_long_line_is_cut_into_pieces() -> None:
    splitter = LineSplitter(max_line_length=4)
    assert splitter.feed(b"abcdefghij") == ["abcd", "efgh"]
    assert splitter.feed(b"k\nxy\n") == ["ijk", "xy"]
    assert splitter.feed(b"0123456789\n") == ["0123", "4567", "89"]


def test_a_line_of_exactly_the_length_is_one_line_when_its_end_comes_later() -> None:
    splitter = LineSplitter(max_line_length=4)
    assert splitter.feed(b"abcd") == []
    assert splitter.feed(b"\n") == ["abcd"]
    assert splitter.feed(b"wxyz\r") == []
    assert splitter.feed(b"\n") == ["wxyz"]
    assert splitter.feed(b"abcd\r\n") == ["abcd"]


def test_a_long_line_is_cut_between_characters() -> None:
    splitter = LineSplitter(max_line_length=4)
    # "é" is two bytes, "€" three: a cut at 4 bytes would split one of them.
    assert splitter.feed("aé€b\n".encode()) == ["aé", "€b"]
    assert splitter.feed("€€".encode()) == ["€"]
    assert splitter.flush() == ["€"]


def test_a_carriage_return_is_kept_where_it_is_not_a_line_ending() -> None:
    splitter = LineSplitter(max_line_length=4)
    assert splitter.feed(b"abc\rdefgh\n") == ["abc\r", "defg", "h"]
    assert splitter.feed(b"50%\r60%\r\n") == ["50%\r", "60%"]


def test_a_carriage_return_that_ends_the_output_is_kept() -> None:
    # No \n follows it, so it is no line ending: kept, as it is when more text follows.
    splitter = LineSplitter(max_line_length=4)
    assert splitter.feed(b"50%\r") == []
    assert splitter.flush() == ["50%\r"]
    # One byte past the length once it is kept: the last line is cut like any other.
    assert splitter.feed(b"100%\r") == []
    assert splitter.flush() == ["100%", "\r"]


# Text of one line: anything but a newline.
_LINE = st.text(st.characters(blacklist_characters="\n", codec="utf-8"), max_size=30)


@given(
    # A line that ends with \r before its \n gives that \r up to the ending.
    lines=st.lists(
        st.tuples(
            _LINE.filter(lambda line: not line.endswith("\r")),
            st.sampled_from([b"\n", b"\r\n"]),
        ),
        max_size=8,
    ),
    # The output may end without a newline, often with a \r.
    last=st.tuples(_LINE, st.sampled_from(["", "\r"])).map("".join),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
    max_line_length=st.integers(min_value=4, max_value=12),
)
def test_any_text_in_any_chunks_comes_back_whole_in_pieces_of_at_most_the_length(
    lines: list[tuple[str, bytes]], last: str, cuts: list[int], max_line_length: int
) -> None:
    output = b"".join(line.encode() + ending for line, ending in lines) + last.encode()
    at = sorted({0, len(output), *(cut for cut in cuts if cut < len(output))})
    splitter = LineSplitter(max_line_length=max_line_length)
    chunks = [output[start:end] for start, end in itertools.pairwise(at)]
    pieces = [piece for chunk in chunks for piece in splitter.feed(chunk)]
    pieces += splitter.flush()
    texts = [line for line, _ in lines] + ([last] if last else [])
    # Each piece is whole characters, none of them lost or replaced, none added.
    assert "".join(pieces) == "".join(texts)
    assert all(len(piece.encode()) <= max_line_length for piece in pieces)
    # Lines that fit come out as they went in, empty ones too: nothing cut, nothing added.
    if all(len(text.encode()) <= max_line_length for text in texts):
        assert pieces == texts


def test_bytes_that_do_not_decode_are_replaced() -> None:
    assert LineSplitter().feed(b"caf\xe9\n") == ["caf\ufffd"]


@pytest.mark.parametrize("length", [0, -1])
def test_max_line_length_is_checked(length: int) -> None:
    with pytest.raises(ValueError, match=f"at least 1, got {length}"):
        LineSplitter(max_line_length=length)
    with pytest.raises(ValueError, match=f"at least 1, got {length}"):
        subprocess_lines(["true"], max_line_length=length)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"command": []}, ValueError, r"^command must name a program, got \[\]$"),
        ({"command": ""}, ValueError, r"^command must name a program, got ''$"),
        ({"command": ["ls", 3]}, TypeError, r"^command's arguments must be str or os.PathLike"),
        ({"command": b"ls"}, TypeError, r"^command must be a str .* got bytes: b'ls'$"),
        ({"command": None}, TypeError, r"^command must be a str .* got NoneType: None$"),
        ({"stderr": subprocess.PIPE}, ValueError, r"got subprocess\.PIPE"),
        ({"stderr": "devnull"}, TypeError, r"^stderr must be .* got 'devnull'$"),
        ({"stop_grace_period": float("nan")}, ValueError, r"^stop_grace_period must be"),
        ({"stop_grace_period": -1.0}, ValueError, r"^stop_grace_period must be .* got -1.0$"),
        ({"stop_grace_period": "2"}, TypeError, r"^stop_grace_period must be .* got str: '2'$"),
        ({"stderr": True}, TypeError, r"^stderr must be .* got True$"),
        ({"transform": "upper"}, TypeError, r"^transform must be callable, got str: 'upper'$"),
        ({"cwd": 3}, TypeError, r"^cwd must be a path"),
        ({"cwd": "/tmp\0"}, ValueError, r"^cwd must not hold a NUL character, got '/tmp\\x00'$"),
        ({"env": [("A", "1")]}, TypeError, r"^env must be a Mapping or None"),
        # What the system would refuse as the command starts, after the stream's 200.
        ({"command": [""]}, ValueError, r"^command must name a program, got \[''\]$"),
        ({"command": ["echo", "a\0b"]}, ValueError, r"^command's arguments must not hold a NUL"),
        ({"command": "echo a\0b"}, ValueError, r"^command must not hold a NUL"),
        (
            {"env": {"A": 1}},
            TypeError,
            r"^env's value for 'A' must be a str or os.PathLike, got int: 1$",
        ),
        ({"env": {1: "a"}}, TypeError, r"^env's names must be str, got int: 1$"),
        (
            {"env": {"A=B": "1"}},
            ValueError,
            r"^env's names must not be empty nor hold '=' or a NUL",
        ),
        ({"env": {"": "1"}}, ValueError, r"^env's names must not be empty nor hold '=' or a NUL"),
        ({"env": {"A": "a\0b"}}, ValueError, r"^env's value for 'A' must not hold a NUL"),
        ({"check": "no"}, TypeError, r"^check must be a bool, got str: 'no'$"),
    ],
)
def test_bad_options_are_refused_where_the_producer_is_made(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    # Not once the stream has started, after its 200.
    with pytest.raises(error, match=message):
        subprocess_lines(**({"command": ["true"]} | options))
