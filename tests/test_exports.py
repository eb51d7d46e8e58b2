"""The public API is what the packages re-export: every name imports and is documented."""

from __future__ import annotations

import importlib
import inspect

import pytest

PACKAGES = ["streamkit", "streamkit.testing"]


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
