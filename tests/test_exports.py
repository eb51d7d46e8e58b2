"""The public API is what the packages re-export: every name imports and is documented."""

from __future__ import annotations

import importlib
import inspect

import pytest

PACKAGES = [
    "streamkit",
    "streamkit.broadcast",
    "streamkit.fallback",
    "streamkit.resources",
    "streamkit.testing",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_a_sorted_tuple(package: str) -> None:
    names = importlib.import_module(package).__all__
    assert isinstance(names, tuple)
    assert list(names) == sorted(names)


@pytest.mark.parametrize(
    ("package", "name"),
    [(package, name) for package in PACKAGES for name in importlib.import_module(package).__all__],
)
def test_every_public_name_imports_and_has_a_docstring(package: str, name: str) -> None:
    value = getattr(importlib.import_module(package), name)
    documented = value if inspect.isclass(value) or callable(value) else type(value)
    assert inspect.getdoc(documented), f"{package}.{name} has no docstring"
    if inspect.isclass(value):
        for member_name, member in vars(value).items():
            if not member_name.startswith("_") and inspect.isfunction(member):
                assert inspect.getdoc(member), f"{package}.{name}.{member_name} has no docstring"


def test_the_wings_do_not_repeat_the_top_level() -> None:
    top = set(importlib.import_module("streamkit").__all__)
    for package in PACKAGES[1:]:
        assert not top & set(importlib.import_module(package).__all__), package


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("MemoryBroker", "streamkit.broadcast"),
        ("Fallback", "streamkit.fallback"),
        ("subprocess_lines", "streamkit.resources"),
        ("fallback_response", "streamkit.fallback.respond_with_fallback"),
        ("StreamRoute", "streamkit.StreamRouteInfo"),
    ],
)
def test_a_name_that_left_the_top_level_says_where_it_went(name: str, where: str) -> None:
    with pytest.raises(ImportError, match=rf"streamkit\.{name} .*{where}"):
        exec(f"from streamkit import {name}")


def test_an_unknown_top_level_name_is_an_attribute_error() -> None:
    import streamkit

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        streamkit.nothing  # noqa: B018
