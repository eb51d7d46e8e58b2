"""The line splitting under subprocess_lines: pure, so tested without a process."""

from __future__ import annotations

import pytest

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


def test_bytes_that_do_not_decode_are_replaced() -> None:
    assert LineSplitter().feed(b"caf\xe9\n") == ["caf\ufffd"]


@pytest.mark.parametrize("length", [0, -1])
def test_max_line_length_is_checked(length: int) -> None:
    with pytest.raises(ValueError, match=f"at least 1, got {length}"):
        LineSplitter(max_line_length=length)
    with pytest.raises(ValueError, match=f"at least 1, got {length}"):
        subprocess_lines(["true"], max_line_length=length)
