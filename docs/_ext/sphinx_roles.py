"""A griffe extension: render streamkit's Sphinx-style docstrings as Markdown.

The docstrings follow the Sphinx field-list style (``:param:``, ``:class:`~streamkit.X```),
which mkdocstrings parses for parameters but leaves roles as they are. This rewrites a role
whose target is a public streamkit name into an mkdocstrings cross-reference, and any other
role (the standard library, anyio, private names) into inline code, so that a strict build
never links to a page it does not have. It also reads the ``#:`` comments that document
constants and enum members (as Sphinx's autodoc does), which griffe leaves out.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|exc|data|mod|obj|const):`(~?)([^`]+)`")
_LITERAL_BLOCK = re.compile(r"(\S)::$", re.MULTILINE)


#: Where a short target (``:class:`RedisBroker```) is looked for, in order.
_NAMESPACES = (
    "streamkit",
    "streamkit.broadcast",
    "streamkit.fallback",
    "streamkit.resources",
    "streamkit.testing",
    "streamkit.client",
    "streamkit.fastapi",
)


def _public(path: str) -> bool:
    """Whether *path* names a public streamkit object that the API pages render."""
    parts = path.split(".")
    if parts[0] != "streamkit" or any(part.startswith("_") for part in parts):
        return False
    for split in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            try:
                value = getattr(value, name)
            except (AttributeError, ImportError):  # a name that left the top level
                return False
        return True
    return False


def _rewrite(match: re.Match[str]) -> str:
    short, target = match[1] == "~", match[2].strip()
    title = target.rsplit(".", 1)[-1] if short else target
    for path in (target, *(f"{namespace}.{target}" for namespace in _NAMESPACES)):
        if _public(path):
            return f"[`{title}`][{path}]"
    return f"`{title}`"


def rewrite(text: str) -> str:
    """*text* with its Sphinx roles and ``::`` literal-block markers made Markdown."""
    return _LITERAL_BLOCK.sub(r"\1:", _ROLE.sub(_rewrite, text))


def _comment_docstring(obj: griffe.Object) -> griffe.Docstring | None:
    """The ``#:`` comment lines right above an attribute, as its docstring."""
    if obj.lineno is None or obj.filepath is None or isinstance(obj.filepath, list):
        return None
    lines = obj.lines_collection[obj.filepath] if obj.filepath in obj.lines_collection else []
    comment: list[str] = []
    index = obj.lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        comment.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    if not comment:
        return None
    return griffe.Docstring("\n".join(comment), lineno=index + 2, parent=obj)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles in every docstring of the loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        pending: list[griffe.Object] = [pkg]
        while pending:
            obj = pending.pop()
            if obj.docstring is None and obj.is_attribute:
                obj.docstring = _comment_docstring(obj)
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value)
            # An alias points at an object that is visited where it is defined.
            pending.extend(
                member for member in obj.members.values() if isinstance(member, griffe.Object)
            )
