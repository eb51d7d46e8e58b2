"""The checks every count, duration, path and typed argument passes, with one rule for the errors.

A value of the wrong type raises :exc:`TypeError`, one out of range :exc:`ValueError`; both
messages name the argument and the value. ``bool`` is refused where a number is expected:
``True`` is an ``int`` to Python but never a count or a number of seconds to a caller.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "LONGEST_C_INT_MILLISECONDS",
    "check_callable",
    "check_count",
    "check_duration",
    "check_header",
    "check_path",
    "check_rate",
    "check_statement",
    "check_status_code",
    "check_text",
    "check_type",
    "show_number",
]

#: The longest wait, in seconds, that a C int of milliseconds holds (about 24.8 days): what
#: ``TCP_USER_TIMEOUT`` and SQLite's busy timeout take.
LONGEST_C_INT_MILLISECONDS = (2**31 - 1) / 1000


def check_duration(name: str, value: object, *, optional: bool = False) -> None:
    """Refuse *value* unless it is a positive, finite number of seconds (or ``None`` when
    *optional*).

    :raises TypeError: *value* is not a number (or is ``None`` where it may not be).
    :raises ValueError: *value* is zero, negative, NaN or infinite.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{name} must be a number of seconds, got {type(value).__name__}: {value!r}"
        )
    if not _positive_finite(value):
        raise ValueError(
            f"{name} must be a positive, finite number of seconds, got {show_number(value)}"
        )


def _positive_finite(value: float) -> bool:
    # An int too large for a float (10**400) is no finite number of seconds either.
    try:
        return value > 0 and math.isfinite(value)
    except OverflowError:
        return False


def show_number(number: float) -> str:
    """*number* as the error shows it: its repr, or the size of an int too long for Python
    to print (past ``sys.get_int_max_str_digits()``)."""
    try:
        return repr(number)
    except ValueError:
        assert isinstance(number, int)
        size = abs(number)
        digits = int(math.log10(size)) + 1  # an estimate near a power of ten: adjusted
        if size >= 10**digits:
            digits += 1
        elif size < 10 ** (digits - 1):
            digits -= 1
        sign = "a negative" if number < 0 else "an"
        return f"{sign} int of {digits:,} digits"


def check_count(name: str, value: object, *, least: int = 1) -> None:
    """Refuse *value* unless it is an ``int`` of at least *least*.

    :raises TypeError: *value* is not an ``int``.
    :raises ValueError: *value* is below *least*.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < least:
        raise ValueError(f"{name} must be an int of at least {least}, got {show_number(value)}")


def check_rate(name: str, value: object, *, optional: bool = False) -> None:
    """Refuse *value* unless it is a positive, finite number (or ``None`` when *optional*).

    :raises TypeError: *value* is not a number.
    :raises ValueError: *value* is zero, negative, NaN or infinite.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    if not _positive_finite(value):
        raise ValueError(f"{name} must be a positive, finite number, got {show_number(value)}")


def check_path(name: str, value: object, *, optional: bool = False) -> None:
    """Refuse *value* unless it is a non-empty path, ``str`` or :class:`os.PathLike` (or
    ``None`` when *optional*).

    :raises TypeError: *value* is not a path (``bytes`` included: paths here are text).
    :raises ValueError: *value* is empty, or holds a NUL character, which the system refuses
        only as the path is opened (a stream's file or database: after its ``200``).
    """
    if value is None and optional:
        return
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {value!r}")
    path = os.fspath(value)
    if not path:
        raise ValueError(f"{name} must not be empty, got {value!r}")
    if "\0" in path if isinstance(path, str) else b"\0" in path:
        raise ValueError(f"{name} must not hold a NUL character, got {value!r}")


def check_type(name: str, value: object, kind: type, *, optional: bool = False) -> None:
    """Refuse *value* unless it is a *kind* (or ``None`` when *optional*): for an argument
    that is kept and used later, so that a wrong one fails where it is given.

    :raises TypeError: *value* is not a *kind*.
    """
    if value is None and optional:
        return
    if not isinstance(value, kind):
        article = "an" if kind.__name__[0] in "AEIOUaeiou" else "a"  # an App, an int, a str
        expected = kind.__name__ + (" or None" if optional else "")
        raise TypeError(
            f"{name} must be {article} {expected}, got {type(value).__name__}: {value!r:.80}"
        )


def check_callable(name: str, value: object, *, optional: bool = False) -> None:
    """Refuse *value* unless it is callable (or ``None`` when *optional*): for a function that
    is kept and called later, so that a wrong one fails where it is given.

    :raises TypeError: *value* is not callable.
    """
    if value is None and optional:
        return
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}: {value!r:.80}")


def check_text(name: str, value: str) -> None:
    """Refuse a ``str`` that UTF-8 cannot carry: one holding a lone surrogate (``"\\ud800"``),
    which would otherwise fail only when written, far from where it was made.

    :raises ValueError: *value* holds a lone surrogate; the message names it and where.
    """
    if value.isascii():
        return
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name} must not hold a lone surrogate (UTF-8 cannot carry it): "
            f"{value[exc.start]!r} at index {exc.start} of {value[:80]!r:.80}"
        ) from None


def check_statement(name: str, value: str | bytes) -> None:
    """Refuse a query that is empty or only whitespace: a driver runs it as no statement at
    all (SQLite's gives no rows, with no error to say why) or refuses it only once the
    stream has started. Refuse one holding a NUL character too: SQLite refuses it only
    once the stream has started, and libpq runs what comes before it as the whole query.

    :raises ValueError: *value* holds nothing but whitespace, or holds a NUL character.
    """
    if not value.strip():
        raise ValueError(f"{name} must hold a statement, got {value!r:.80}")
    if "\0" in value if isinstance(value, str) else b"\0" in value:
        raise ValueError(f"{name} must not hold a NUL character, got {value!r:.80}")


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSENDABLE = re.compile(r"[\r\n\0]|^[ \t]|[ \t]$|[^\x00-\xff]")


#: The statuses whose response has no body (RFC 9110), besides the informational ones.
_BODILESS_STATUSES = frozenset({204, 304})


def check_status_code(status_code: object) -> None:
    """Refuse a status a stream cannot be sent with, where it is given: the server would
    refuse one that is no final status only once the stream had begun, and send a 204 or
    a 304 without the body its stream then reported sent.

    :raises TypeError: *status_code* is not an ``int``.
    :raises ValueError: it is not 200 to 599, or its response has no body.
    """
    if isinstance(status_code, bool) or not isinstance(status_code, int):
        raise TypeError(
            f"status_code must be an int, got {type(status_code).__name__}: {status_code!r:.80}"
        )
    if not 200 <= status_code <= 599:
        raise ValueError(f"status_code must be a final status, 200 to 599, got {status_code}")
    if status_code in _BODILESS_STATUSES:
        raise ValueError(
            f"status_code {status_code} sends no body, so no stream: answer with "
            f"Response(status_code={status_code}) instead"
        )


def is_token(text: str) -> bool:
    """Whether *text* is an HTTP token (a header name, a method)."""
    return _TOKEN.fullmatch(text) is not None


#: What frames a body, which the server does: given, a body ran past the length it declared
#: (the server cut it off), or was framed twice.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


def given_headers(headers: object) -> dict[Any, Any]:
    """A copy of the response *headers* a caller gave, refusing what is no mapping and a
    header that frames the body (``Content-Length``, ``Transfer-Encoding``), which the server
    sets. Each header's name and value are for :func:`check_header`.

    :raises TypeError: *headers* is no mapping.
    :raises ValueError: a header frames the body.
    """
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise TypeError(
            "headers must be a mapping of names to values, got "
            f"{type(headers).__name__}: {headers!r:.80}"
        )
    for name in headers:
        if isinstance(name, str) and name.lower() in _FRAMING_HEADERS:
            raise ValueError(
                f"header {name!r} cannot be given: the server sets it, as it frames the body "
                "(a stream's length is known only once it ends)"
            )
    return dict(headers)


def check_header(name: object, value: object) -> None:
    """Refuse a response header that HTTP cannot carry as given, which a server would
    otherwise refuse only when the response starts: a name that is not a token, or a value
    that holds a line break or NUL, begins or ends with a space or tab, or holds a character
    beyond Latin-1 (what headers are encoded in).

    :raises TypeError: the name or the value is not a ``str``.
    :raises ValueError: the name or the value cannot be sent; the message names both.
    """
    if not isinstance(name, str):
        raise TypeError(f"a header name must be a str, got {type(name).__name__}: {name!r:.80}")
    if not is_token(name):
        raise ValueError(
            f"header name {name!r:.80} must be an HTTP token: letters, digits and !#$%&'*+-.^_`|~"
        )
    if not isinstance(value, str):
        raise TypeError(f"header {name!r} must be a str, got {type(value).__name__}: {value!r:.80}")
    if bad := _UNSENDABLE.search(value):
        raise ValueError(
            f"header {name!r} cannot be sent with the value {value!r:.80}: it holds "
            f"{bad.group()!r} at index {bad.start()} (no line break or NUL, no space or tab "
            "at either end, nothing beyond Latin-1)"
        )
