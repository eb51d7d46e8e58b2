"""JSON encoding of stream items and event data, and the strict reading of an NDJSON line:
pure, no I/O.

The default encoder is the standard library's ``json`` with two additions: a Pydantic model is
encoded as its ``model_dump(mode="json")`` and a dataclass instance as its fields. Pydantic is
optional: it is recognised only once something else imported it, never imported here. Any other
encoder (``orjson.dumps``, a user's function) can take its place; it may return ``str`` or
``bytes``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import reprlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "JSONEncoder",
    "check_json_encoder",
    "described",
    "encode_by_alias",
    "encode_json",
    "read_json_line",
    "shown",
    "to_jsonable",
]

#: A JSON encoder: a value in, its JSON text (``str`` or UTF-8 ``bytes``) out.
JSONEncoder = Callable[[Any], str | bytes]


def to_jsonable(value: object) -> Any:
    """What the default encoder writes for *value*, which ``json`` cannot encode itself.

    :raises TypeError: *value* is neither a Pydantic model nor a dataclass instance.
    """
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _default_encoder(value: Any) -> str:
    return _dumps(value, to_jsonable)


def encode_by_alias(value: Any) -> str:
    """The default encoder, but a Pydantic model is encoded by its fields' aliases, as FastAPI
    sends a response model and names its fields in the OpenAPI document."""
    return _dumps(value, _jsonable_by_alias)


def _jsonable_by_alias(value: object) -> Any:
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    return to_jsonable(value)


def _dumps(value: Any, default: Callable[[Any], Any]) -> str:
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=default
    )


#: How many characters of a value :func:`shown` gives.
SHOWN = 80


class _Shown(reprlib.Repr):
    """A value's repr made no further than its first :data:`SHOWN` characters: a refused item
    of megabytes costs a few hundred bytes to name, not a repr of its size.

    Lists, tuples, dicts and sets are shown element by element, in their own order (reprlib
    sorts dicts and sets, all their keys), a container met again inside itself as repr()
    shows it (``[...]``); a str or bytes from its first characters; so is a subclass of list,
    tuple, dict, str or bytes that keeps its base's repr (which does not name the subclass). A
    dataclass instance whose repr is the one ``@dataclass`` wrote, and a Pydantic model whose
    repr is ``BaseModel``'s, are shown field by field as those reprs show them. Anything else
    is shown by its own repr(), which may raise (an int past the digit limit does). Every
    value costs at least one character of the budget, so a tree of empty lists stops there
    too.
    """

    def __init__(self) -> None:
        super().__init__()
        # Enough of each that the budget, not a count, ends what is shown: an element takes
        # at least three characters ("0, "), a level one ("[").
        self.maxlevel = SHOWN
        self.maxtuple = self.maxlist = self.maxdict = SHOWN // 2
        self.maxset = self.maxfrozenset = SHOWN // 2
        self.maxstring = SHOWN
        self._left = SHOWN  # characters still to make, counted low (no commas, no ": ")
        self._open: set[int] = set()  # the containers being shown

    def repr1(self, x: Any, level: int) -> str:
        if self._left <= 0:
            return self.fillvalue
        self._left -= 1
        kind = type(x)
        shape = kind if kind in _SHAPES else _SHAPES_BY_REPR.get(kind.__repr__)
        if shape is None:
            fields = _fields(x, kind)
            if fields is None:
                text = repr(x)  # an int past the digit limit raises, as repr() does
                self._left -= len(text)
                return text
            name, pairs = fields
            return self._opened(x, "...", lambda: self._call(name, pairs, level))
        if shape is str or shape is bytes or shape is bytearray:
            text = repr(shape.__getitem__(x, slice(0, self.maxstring)))
            self._left -= len(text)
            return text
        # Its elements count themselves.
        show = getattr(self, f"repr_{shape.__name__}")
        return self._opened(x, _CONTAINERS[shape], lambda: show(x, level))

    def _opened(self, x: object, again: str, show: Callable[[], str]) -> str:
        """*show()* for the container *x*, or *again* if it is met inside itself."""
        if id(x) in self._open:
            return again
        self._open.add(id(x))
        try:
            return show()
        finally:
            self._open.discard(id(x))

    def _call(self, name: str, pairs: Iterable[tuple[str | None, Any]], level: int) -> str:
        """``name(key=value, ...)``, as a dataclass's or a Pydantic model's repr shows it."""
        if level <= 0:
            return f"{name}({self.fillvalue})"
        pieces = []
        for key, value in pairs:
            if self._left <= 0:
                pieces.append(self.fillvalue)
                break
            text = self.repr1(value, level - 1)
            pieces.append(text if key is None else f"{key}={text}")
        return f"{name}({', '.join(pieces)})"

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [
            f"{self.repr1(key, level - 1)}: {self.repr1(item, level - 1)}"
            for key, item in itertools.islice(x.items(), self.maxdict)
        ]
        if len(x) > self.maxdict:
            pieces.append(self.fillvalue)
        return "{" + ", ".join(pieces) + "}"

    def repr_set(self, x: set[Any], level: int) -> str:
        return "{" + self._elements(x, level, self.maxset) + "}" if x else "set()"

    def repr_frozenset(self, x: frozenset[Any], level: int) -> str:
        if not x:
            return "frozenset()"
        return "frozenset({" + self._elements(x, level, self.maxfrozenset) + "})"

    def _elements(self, x: set[Any] | frozenset[Any], level: int, most: int) -> str:
        if level <= 0:
            return self.fillvalue
        pieces = [self.repr1(element, level - 1) for element in itertools.islice(x, most)]
        if len(x) > most:
            pieces.append(self.fillvalue)
        return ", ".join(pieces)


# The containers shown element by element, and what repr() shows for one met again inside
# itself (a set or frozenset cannot be).
_CONTAINERS: dict[type, str] = {
    list: "[...]",
    tuple: "(...)",
    dict: "{...}",
    set: "{...}",
    frozenset: "frozenset({...})",
}


#: The types shown by shape, and the builtins whose repr a subclass may keep (set's,
#: frozenset's and bytearray's name the subclass: such a subclass is shown by its own repr).
_SHAPES = frozenset([*_CONTAINERS, str, bytes, bytearray])
_SHAPES_BY_REPR: dict[object, type] = {
    shape.__repr__: shape for shape in (list, tuple, dict, str, bytes)
}


def _fields(x: object, kind: type) -> tuple[str, Iterable[tuple[str | None, Any]]] | None:
    """The name and fields (key, value) that *x*'s repr shows, if that repr is a dataclass's
    written by ``@dataclass`` or Pydantic's ``BaseModel``'s; else ``None``."""
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and kind.__repr__ is pydantic.BaseModel.__repr__:
        return x.__repr_name__(), x.__repr_args__()  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(kind) and _written_by_dataclass(kind.__repr__):
        fields = dataclasses.fields(kind)
        return kind.__qualname__, ((f.name, getattr(x, f.name)) for f in fields if f.repr)
    return None


def _written_by_dataclass(method: object) -> bool:
    # @dataclass writes its __repr__ as source text it runs, and wraps it against recursion.
    code = getattr(getattr(method, "__wrapped__", None), "__code__", None)
    return code is not None and code.co_filename == "<string>" and code.co_name == "__repr__"


def shown(value: object) -> str:
    """*value*'s repr cut to 80 characters, made no further (see :class:`_Shown`), or its
    type's name when repr() itself fails (an int past sys.get_int_max_str_digits(), a broken
    __repr__)."""
    try:
        return _Shown().repr(value)[:SHOWN]
    except Exception:
        return f"<{type(value).__name__} whose repr() raised>"


def described(value: object) -> str:
    """*value* as :func:`shown` gives it, and its type's name: a log line about a value whose
    repr does not say what it is (``nan``, ``[[...]]``) names it."""
    text = shown(value)
    if text.startswith("<") and text.endswith(" whose repr() raised>"):
        return text  # which names the type already
    return f"{text} of type {type(value).__name__}"


def encode_json(value: object, encoder: JSONEncoder | None = None) -> str:
    """Encode *value* as compact JSON text with *encoder* (by default the standard library's,
    extended as the module says).

    :raises TypeError: the value cannot be encoded; the message names it.
    :raises ValueError: the value holds something JSON or UTF-8 cannot carry (NaN, an
        infinity, a cycle, a lone surrogate, nesting past the recursion limit); the message
        names it.
    """
    try:
        text = (encoder or _default_encoder)(value)
    except TypeError as exc:
        raise TypeError(f"is not JSON-serialisable: {described(value)} ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"cannot be encoded as JSON: {described(value)} ({exc})") from None
    except RecursionError:
        # Lists or dicts nested deeper than the interpreter's recursion limit: bad input like
        # any other, refused here as a ValueError rather than a RuntimeError from inside json.
        raise ValueError(
            f"cannot be encoded as JSON: {described(value)} (nested too deeply)"
        ) from None
    except Exception as exc:
        # A user's encoder failing otherwise: its own exception, raised on for whoever
        # catches it, but saying which value it failed on, in the log too.
        exc.add_note(f"raised by {encoder!r} encoding {described(value)}")
        raise
    if isinstance(text, bytes | bytearray):
        try:
            return bytes(text).decode()
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"cannot be encoded as JSON: {encoder!r} returned bytes that are not UTF-8 "
                f"for {described(value)} ({exc})"
            ) from None
    if not isinstance(text, str):
        raise TypeError(
            f"cannot be encoded as JSON: a JSON encoder must return str or bytes, {encoder!r} "
            f"returned {type(text).__name__} for {described(value)}"
        )
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            # Refused here, named, rather than when the frame is written.
            raise ValueError(
                f"holds a lone surrogate (UTF-8 cannot carry it): {text[exc.start]!r} "
                f"in {described(value)}"
            ) from None
    return text


def check_json_encoder(encoder: JSONEncoder | None) -> JSONEncoder | None:
    """Return *encoder* if it is ``None`` or callable.

    :raises TypeError: it is neither.
    """
    if encoder is not None and not callable(encoder):
        raise TypeError(f"json_encoder must be a function of one value, got {encoder!r}")
    return encoder


class _NotJSON(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    # What Python's json reads and writes, and JSON has not.
    raise _NotJSON(f"{name} is no JSON value")


_STRICT = json.JSONDecoder(parse_constant=_refuse_constant)
# A \u escape of a surrogate: the line's value may hold a lone one (rare; then looked for).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
#: How much of a line a message about it shows.
SHOWN_LINE = 200


def read_json_line(line: bytes) -> Any:
    """The JSON value of one line of an NDJSON body, read strictly, where a lenient reader
    would hide a server's bug: UTF-8 (not a guess of UTF-16 or 32), no BOM (one at the start
    of a body is the caller's to drop), no ``NaN`` or ``Infinity``, and no lone surrogate,
    escaped (``"\\ud800"``) or encoded, which UTF-8 cannot carry on.

    :raises ValueError: the line is not UTF-8, or not such JSON. The message says which and
        why, then shows the line's first :data:`SHOWN_LINE` bytes; the caller puts in front
        of it which line it was (``line 3 of the NDJSON body``).
    """
    try:
        text = line.decode()
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"is not UTF-8 ({exc.reason} at index {exc.start}): {_start(line)}"
        ) from None
    if text.startswith("\ufeff"):
        # json's own message would advise utf-8-sig, which would take it on any line.
        raise ValueError(
            "is not JSON (it starts with a BOM, which only the first line may hold): "
            f"{_start(line)}"
        )
    try:
        value = _STRICT.decode(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not JSON ({exc.msg} at index {exc.pos}): {_start(line)}") from None
    except _NotJSON as exc:
        raise ValueError(f"is not JSON ({exc}): {_start(line)}") from None
    except ValueError as exc:
        # JSON past what Python reads: a number of more digits than int() takes.
        raise ValueError(f"cannot be read as JSON ({exc}): {_start(line)}") from None
    except RecursionError:
        raise ValueError(f"cannot be read as JSON (nested too deeply): {_start(line)}") from None
    if _SURROGATE_ESCAPE.search(line):
        lone = _lone_surrogate(value)
        if lone is not None:
            raise ValueError(
                f"is not JSON UTF-8 can carry (it holds a lone surrogate, {lone!r}): {_start(line)}"
            )
    return value


def _start(line: bytes) -> str:
    return f"{line[:SHOWN_LINE]!r:.{SHOWN_LINE}}"


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in the strings of *value* (keys too), or ``None``."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError as exc:
                    return item[exc.start]
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None
