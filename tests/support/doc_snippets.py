"""The ```python blocks of README.md and docs/*.md, as a reader copies them."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The pages a user copies code from: the README and every page of the docs.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# A fence may be indented, inside a list item; its closing fence has the same indent.
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Snippet:
    """One ```python block: where it is, and its code without the fence's indent."""

    page: Path
    line: int
    source: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def python_snippets(page: Path, text: str | None = None) -> list[Snippet]:
    """The ```python blocks of *page* (or of *text*, read as that page), in page order."""
    if text is None:
        text = page.read_text(encoding="utf-8")
    return [
        Snippet(
            page=page,
            line=text.count("\n", 0, match.start()) + 1,
            source=textwrap.dedent(match["body"]),
        )
        for match in _FENCE.finditer(text)
    ]


def snippet(page: str, index: int) -> str:
    """The code of the *index*-th ```python block of *page* (``"README.md"``,
    ``"docs/tutorial.md"``)."""
    return python_snippets(ROOT / page)[index].source
