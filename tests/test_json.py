from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from pydantic import BaseModel

from streamkit._json import described, encode_json, shown


class Point(BaseModel):
    x: int
    label: str = "é"


@dataclass(frozen=True)
class Reading:
    sensor: str
    point: Point
    values: list[float]


def test_plain_values_are_compact_utf8_json() -> None:
    assert encode_json({"é": [1, None, True, 2.5]}) == '{"é":[1,null,true,2.5]}'
    assert encode_json("text") == '"text"'
    assert encode_json(7) == "7"


def test_models_and_dataclasses_nest_in_each_other() -> None:
    reading = Reading(sensor="s1", point=Point(x=3), values=[0.5])
    assert json.loads(encode_json(reading)) == {
        "sensor": "s1",
        "point": {"x": 3, "label": "é"},
        "values": [0.5],
    }
    assert json.loads(encode_json([Point(x=1)])) == [{"x": 1, "label": "é"}]


def test_a_user_encoder_may_return_bytes_or_str() -> None:
    assert encode_json({"a": 1}, lambda value: b'{"b":2}') == '{"b":2}'
    assert encode_json({"a": 1}, lambda value: "[]") == "[]"


def test_an_encoder_that_returns_something_else_is_named() -> None:
    def bad(value: object) -> int:
        return 5

    with pytest.raises(TypeError, match=r"must return str or bytes.*returned int"):
        encode_json({"a": 1}, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error", "named"),
    [
        ({"at": object()}, TypeError, "{'at': <object object"),
        ([float("nan")], ValueError, "[nan]"),
        ({1j}, TypeError, "{1j}"),
        (Point, TypeError, "test_json.Point'>"),
    ],
)
def test_what_json_cannot_carry_is_refused_by_name(
    value: object, error: type[Exception], named: str
) -> None:
    with pytest.raises(error) as caught:
        encode_json(value)
    assert named in str(caught.value)


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize(
    ("value", "error", "named"),
    [
        # repr() of an int past Python's digit limit raises, as does a broken __repr__: the
        # error is still the encoding's, naming the value's type.
        ({"n": 10**5000}, ValueError, "<dict whose repr() raised> (Exceeds the limit"),
        ({"x": BrokenRepr()}, TypeError, "<dict whose repr() raised> (BrokenRepr is not"),
        (BrokenRepr(), TypeError, "<BrokenRepr whose repr() raised>"),
    ],
)
def test_a_value_whose_repr_fails_is_still_refused_by_its_type(
    value: object, error: type[Exception], named: str
) -> None:
    with pytest.raises(error) as caught:
        encode_json(value)
    assert named in str(caught.value)


def test_a_value_nested_past_the_recursion_limit_is_a_value_error() -> None:
    nested: list[object] = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(ValueError, match=r"cannot be encoded as JSON: .* \(nested too deeply\)"):
        encode_json(nested)


def _cycle() -> list[object]:
    cycle: list[object] = []
    cycle.append(cycle)
    return cycle


@pytest.mark.parametrize(
    ("value", "error", "named"),
    [
        (float("inf"), ValueError, "inf of type float (Out of range"),
        (_cycle(), ValueError, "[[...]] of type list (Circular reference"),
        ("a\ud800", ValueError, "'\\ud800' in 'a\\ud800' of type str"),
        ({(1, 2): 1}, TypeError, "{(1, 2): 1} of type dict (keys must be"),
    ],
    ids=["infinity", "cycle", "lone-surrogate", "tuple-key"],
)
def test_a_refused_value_is_named_with_its_type(
    value: object, error: type[Exception], named: str
) -> None:
    # Where its repr does not say what it is, the log line of the stream it ended does.
    with pytest.raises(error) as caught:
        encode_json(value)
    assert named in str(caught.value)


def test_an_encoders_own_exception_is_raised_as_it_is_naming_the_value() -> None:
    class EncoderError(Exception):
        pass

    def broken(value: object) -> str:
        raise EncoderError("the encoder broke")

    with pytest.raises(EncoderError, match="the encoder broke") as caught:
        encode_json({"a": 1}, broken)
    assert caught.value.__notes__ == [f"raised by {broken!r} encoding {{'a': 1}} of type dict"]


def test_an_encoder_that_returns_bytes_not_utf8_is_named() -> None:
    with pytest.raises(ValueError, match=r"returned bytes that are not UTF-8 for \{'a': 1\}"):
        encode_json({"a": 1}, lambda value: b"\xff")


def test_importing_streamkit_does_not_import_pydantic() -> None:
    code = "import sys, streamkit, streamkit._json; print('pydantic' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def _tree(*, width: int, depth: int) -> list[object]:
    tree: list[object] = []
    for _ in range(depth):
        tree = [tree] * width
    return tree


class Text(str):
    pass


class Items(list[object]):
    pass


@dataclass
class Note:
    title: str
    body: object
    secret: str = field(default="hidden", repr=False)


class Page(BaseModel):
    number: int
    lines: list[str]


#: Huge values, each with a small piece of it that shows the same first 80 characters.
HUGE: dict[str, tuple[Callable[[], object], object]] = {
    "str": (lambda: "x" * 10_000_000, "x" * 100),
    "bytes": (lambda: b"\xff" * 10_000_000, b"\xff" * 100),
    "list": (lambda: list(range(1_000_000)), list(range(100))),
    "dict": (
        lambda: {number: dict.fromkeys(range(1000), "v") for number in range(1000)},
        {number: dict.fromkeys(range(100), "v") for number in range(10)},
    ),
    "set": (lambda: {frozenset(range(1_000_000))}, {frozenset(range(100))}),
    # 2.5 million empty lists: no text to cut it short but the brackets and commas.
    "tree": (lambda: _tree(width=40, depth=4), _tree(width=30, depth=4)),
    # Their repr was made whole: a subclass keeping its base's, a dataclass's, a model's.
    "str subclass": (lambda: Text("x" * 10_000_000), Text("x" * 100)),
    "list subclass": (lambda: Items(range(1_000_000)), Items(range(100))),
    "dataclass": (lambda: Note("t", "x" * 10_000_000), Note("t", "x" * 100)),
    "pydantic model": (
        lambda: Page(number=1, lines=["x" * 1000] * 10_000),
        Page(number=1, lines=["x" * 100]),
    ),
}


def _peak_bytes(function: Callable[[object], str], value: object) -> tuple[str, int]:
    tracemalloc.start()
    try:
        result = function(value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize("kind", HUGE)
def test_a_huge_value_is_shown_from_a_bounded_repr(kind: str) -> None:
    # Its whole repr, megabytes, was made and then cut to 80 characters, once per refused
    # item: the error path cost what the item did.
    make, piece = HUGE[kind]
    text, peak = _peak_bytes(shown, make())
    assert peak < 100_000
    assert text == repr(piece)[:80]
    assert len(text) == 80


def test_nesting_and_cycles_are_shown_as_repr_shows_them() -> None:
    cycle: dict[str, object] = {"a": 1}
    cycle["self"] = cycle
    assert shown(cycle) == "{'a': 1, 'self': {...}}"
    listed: list[object] = [1]
    listed.append((listed,))
    assert shown(listed) == repr(listed) == "[1, ([...],)]"
    nested: list[object] = [1]
    for _ in range(100_000):
        nested = [nested]
    assert shown(nested) == "[" * 80
    # In their order, not sorted as reprlib shows them.
    value = {"b": 1, "a": {3, 2}, "t": (1,), "f": frozenset(), "s": set(), "e": b""}
    assert shown(value) == repr(value)
    assert shown("it's") == repr("it's")


def test_dataclasses_models_and_subclasses_are_shown_as_their_repr_shows_them() -> None:
    note = Note("t", [1, Text("é")], secret="s")  # a field with repr=False is not shown
    looped = Note("loop", None)
    looped.body = looped
    model = Page(number=2, lines=["a"])
    nested = Reading("s", Point(x=1), [0.5])
    kept: list[object] = [note, looped, model, nested, Items([1, Items()]), Text("it's")]
    for value in kept:
        assert shown(value) == repr(value)

    # A repr of their own, which is theirs to keep short, is called.
    @dataclass
    class Own:
        value: str

        def __repr__(self) -> str:
            return "Own(...)"

    class Marked(str):
        def __repr__(self) -> str:
            return f"Marked({str.__repr__(self)})"

    class Tagged(set[int]):  # set's repr names the subclass
        pass

    their_own: list[object] = [Own("x"), Marked("m"), Tagged({1})]
    for value in their_own:
        assert shown(value) == repr(value)


def test_a_refused_huge_item_is_named_in_bounded_memory() -> None:
    item = {"at": object(), "rest": "x" * 10_000_000}
    tracemalloc.start()
    try:
        with pytest.raises(TypeError) as caught:
            encode_json(item)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000
    message = str(caught.value)
    assert "is not JSON-serialisable: {'at': <object object at 0x" in message
    assert "'rest': 'xxxx" in message
    assert message.endswith(" of type dict (object is not JSON serialisable)")
    assert described(item) == f"{shown(item)} of type dict"
