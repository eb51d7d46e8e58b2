"""One rule for counts, durations and paths: wrong type TypeError, out of range ValueError, both
naming the argument and the value."""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from streamkit._checks import (
    check_count,
    check_duration,
    check_path,
    check_rate,
    check_statement,
    check_text,
    check_type,
)


@pytest.mark.parametrize("value", [0.001, 1, 2.5, 10**9])
def test_a_positive_finite_duration_passes(value: float) -> None:
    check_duration("d", value)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, TypeError),
        ("1", TypeError),
        (True, TypeError),
        (0, ValueError),
        (-1.0, ValueError),
        (float("inf"), ValueError),
        (float("nan"), ValueError),
        (-(10**400), ValueError),
        (10**400, ValueError),  # no float holds it
    ],
)
def test_a_bad_duration_is_refused_naming_it(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"^grace .* {re.escape(repr(value))}$"):
        check_duration("grace", value)


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (check_duration, 10**5000),
        (check_duration, -(10**5000)),
        (check_rate, 10**5000),
        (check_count, -(10**5000)),
    ],
    ids=["duration", "negative-duration", "rate", "negative-count"],
)
def test_an_int_too_long_to_print_is_refused_naming_it_and_its_size(
    check: Callable[[str, object], None], value: int
) -> None:
    # Python refuses to print an int of more than 4,300 digits: the error names its size.
    sized = r"got (an|a negative) int of 5,001 digits$"
    with pytest.raises(ValueError, match=rf"^limit must be .*, {sized}"):
        check("limit", value)


def test_an_optional_duration_may_be_none() -> None:
    check_duration("d", None, optional=True)
    check_rate("r", None, optional=True)


@pytest.mark.parametrize(
    ("value", "least", "error"),
    [
        (1.0, 1, TypeError),
        (False, 0, TypeError),
        ("3", 1, TypeError),
        (0, 1, ValueError),
        (-1, 0, ValueError),
    ],
)
def test_a_bad_count_is_refused_naming_it(
    value: object, least: int, error: type[Exception]
) -> None:
    with pytest.raises(error, match=rf"^size must be an int.* {value!r}$"):
        check_count("size", value, least=least)


def test_a_count_at_its_least_passes() -> None:
    check_count("size", 0, least=0)
    check_count("size", 1)


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), ("1", TypeError), (float("nan"), ValueError), (10**400, ValueError)],
)
def test_a_bad_rate_is_refused_naming_it(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"^rate .* {re.escape(repr(value))}$"):
        check_rate("rate", value)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, TypeError),
        (b"cert.pem", TypeError),
        (3, TypeError),
        ("", ValueError),
        # The system refuses it only as the file is opened: in a stream, after its 200.
        ("cert\0.pem", ValueError),
    ],
)
def test_a_bad_path_is_refused_naming_it(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"certfile must .*{re.escape(repr(value))}"):
        check_path("certfile", value)


def test_a_path_may_be_text_or_pathlike_and_optional() -> None:
    check_path("certfile", "cert.pem")
    check_path("certfile", Path("cert.pem"))
    check_path("client_ca", None, optional=True)


def test_a_value_of_the_wrong_type_is_refused_naming_it() -> None:
    check_type("comment", "ping", str)
    check_type("event", None, str, optional=True)
    with pytest.raises(TypeError, match=r"^comment must be a str, got int: 5$"):
        check_type("comment", 5, str)
    with pytest.raises(TypeError, match=r"^event must be a str or None, got bytes: b'x'$"):
        check_type("event", b"x", str, optional=True)
    with pytest.raises(TypeError, match=r"^event must be a str, got NoneType: None$"):
        check_type("event", None, str)


@pytest.mark.parametrize(
    ("kind", "expected"), [(int, "an int"), (OSError, "an OSError"), (float, "a float")]
)
def test_the_article_before_a_type_follows_its_sound_whatever_its_case(
    kind: type, expected: str
) -> None:
    with pytest.raises(TypeError, match=rf"^limit must be {expected}, got str: 'x'$"):
        check_type("limit", "x", kind)


@pytest.mark.parametrize("value", ["", " ", "\n\t ", b"", b"  \r\n"])
def test_a_query_without_a_statement_is_refused_naming_it(value: str | bytes) -> None:
    with pytest.raises(
        ValueError, match=rf"^sql must hold a statement, got {re.escape(repr(value))}$"
    ):
        check_statement("sql", value)


@pytest.mark.parametrize("value", ["SELECT 1", " VALUES (1) ", b"SELECT 1"])
def test_a_query_with_a_statement_passes(value: str | bytes) -> None:
    check_statement("sql", value)


def test_a_huge_text_with_a_lone_surrogate_costs_its_encoding_and_no_more() -> None:
    # Its repr was made whole (20 MB here: four characters a NUL) and cut to 80 characters,
    # on top of what encoding it took before it failed (15 MB).
    text = "\ud800" + "\x00" * 5_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"'\\ud800' at index 0 of '\\ud800\\x00\\x00"):
            check_text("item", text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3.2 * len(text)
