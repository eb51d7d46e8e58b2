"""The public API is what the packages re-export: every name imports and is documented."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

PACKAGES = [
    "streamkit",
    "streamkit.broadcast",
    "streamkit.client",
    "streamkit.fastapi",
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


def test_the_client_without_httpx_is_an_import_error_naming_its_extra() -> None:
    # httpx made unimportable, in a fresh interpreter: None in sys.modules blocks an import.
    blocked = "import sys; sys.modules['httpx'] = None; "
    result = subprocess.run(
        [sys.executable, "-c", blocked + "import streamkit.client"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "ImportError: streamkit.client needs httpx" in result.stderr
    assert "pip install 'streamkit[client]'" in result.stderr
    # The rest does not need it: the proxy imports the client's loop lazily.
    subprocess.run(
        [sys.executable, "-c", blocked + "import streamkit, streamkit.resources"],
        check=True,
        timeout=60,
    )


def test_the_fastapi_wing_without_fastapi_is_an_import_error_naming_its_extra() -> None:
    blocked = "import sys; sys.modules['fastapi'] = None; "
    result = subprocess.run(
        [sys.executable, "-c", blocked + "import streamkit.fastapi"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "ImportError: streamkit.fastapi needs FastAPI" in result.stderr
    assert "pip install 'streamkit[fastapi]'" in result.stderr
