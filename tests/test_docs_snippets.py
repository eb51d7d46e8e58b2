"""Every ```python block of README.md and docs/*.md compiles, and what it takes from streamkit
exists: each imported name is public, each ``streamkit.x.y`` resolves to a module the page
imports, and each keyword given to a streamkit callable is one it takes.

A block may assume what an earlier block of its page imported, and names of the reader's own
(``upstream``, ``app``); it may await at its top level, as a REPL or a notebook does. What
runs, and what the prose around it promises, is held by tests/e2e/test_examples_docs.py.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import typing
from pathlib import Path
from types import ModuleType

import pytest
from support.doc_snippets import PAGES, ROOT, Snippet, python_snippets

import streamkit

#: Blocks that are the body of a function, not a module, each with why: the page, and a line
#: of the block. They are compiled inside an ``async def``.
FRAGMENTS = {
    ("docs/fallbacks.md", "return {"): "the endpoint's body that the page starts from",
}

SNIPPETS = [snippet for page in PAGES for snippet in python_snippets(page)]

#: A call with the error it raises shown under it: ``# ValueError: message``.
_RAISES = re.compile(r"^(?P<code>[^#\n].*)\n# (?P<error>\w+Error): (?P<message>.*)$", re.M)


def _is_fragment(snippet: Snippet) -> bool:
    page = str(snippet.page.relative_to(ROOT))
    return any(page == where and line in snippet.source for where, line in FRAGMENTS)


def _parse(snippet: Snippet) -> ast.Module:
    source = snippet.source
    if _is_fragment(snippet):
        source = "async def _fragment():\n" + "".join(
            f"    {line}\n" for line in source.splitlines()
        )
    # Compiled, not only parsed: the compiler refuses what the parser lets through (a
    # 'return' outside a function, a misplaced 'nonlocal').
    compile(source, snippet.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    return ast.parse(source)


def _public(module: ModuleType, name: str) -> bool:
    return name in getattr(module, "__all__", ())


def _dotted(node: ast.expr) -> list[str] | None:
    """``streamkit.broadcast.MemoryBroker`` as its parts, or None for another expression."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *parts]
    return None


class _Page:
    """What a page's blocks have bound so far: streamkit's modules and imported names."""

    def __init__(self) -> None:
        self.modules: set[str] = set()  # "streamkit", "streamkit.broadcast", ...
        self.names: dict[str, object] = {}
        #: Names bound to an instance of a streamkit class (``app = streamkit.App()``), to
        #: that class: what the instance alone sets (``app.state``) is not checked.
        self.instances: dict[str, type] = {}


def _keywords_taken(target: object) -> set[str] | None:
    """The keyword arguments *target* takes, including those of an ``Unpack[TypedDict]``;
    None where any is taken or the signature is unknown."""
    try:
        parameters = inspect.signature(target).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    taken = {name for name, p in parameters.items() if p.kind is not p.VAR_KEYWORD}
    for parameter in parameters.values():
        if parameter.kind is not parameter.VAR_KEYWORD:
            continue
        function = target.__init__ if inspect.isclass(target) else target
        hint = parameter.annotation
        if isinstance(hint, str):
            # Only this annotation: another of the signature may not resolve at run time.
            try:
                hint = eval(hint, getattr(function, "__globals__", {}))
            except (NameError, AttributeError):
                return None
        if typing.get_origin(hint) is not typing.Unpack:
            return None
        taken |= set(typing.get_type_hints(typing.get_args(hint)[0]))
    return taken


def _problems_of(snippet: Snippet, tree: ast.Module, page: _Page) -> list[str]:
    problems: list[str] = []
    # Statement by statement, in the block's order: a migration's block imports a name from
    # its old library, uses it, then imports streamkit's and uses that.
    for statement in tree.body:
        problems.extend(_imports_of(snippet.where, statement, page))
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
            and isinstance(statement.value, ast.Call)
        ):
            made = _callee(statement.value, page)
            if inspect.isclass(made) and made.__module__.split(".")[0] == "streamkit":
                page.instances[statement.targets[0].id] = made
        problems.extend(_uses_of(snippet, statement, page))
    return problems


def _imports_of(where: str, statement: ast.stmt, page: _Page) -> list[str]:
    """Bind what *statement* imports from streamkit; unbind a name it imports from elsewhere."""
    problems: list[str] = []
    for node in ast.walk(statement):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "streamkit":
                    continue
                try:
                    importlib.import_module(alias.name)
                except ImportError as error:
                    problems.append(f"{where}: import {alias.name}: {error}")
                    continue
                parts = alias.name.split(".")
                page.modules.update(".".join(parts[: i + 1]) for i in range(len(parts)))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "streamkit":
            assert node.module is not None
            try:
                module = importlib.import_module(node.module)
            except ImportError as error:
                problems.append(f"{where}: from {node.module}: {error}")
                continue
            for alias in node.names:
                if not _public(module, alias.name):
                    problems.append(f"{where}: {node.module} does not export {alias.name!r}")
                else:
                    page.names[alias.asname or alias.name] = getattr(module, alias.name)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                page.names.pop(alias.asname or alias.name, None)
    return problems


def _uses_of(snippet: Snippet, statement: ast.stmt, page: _Page) -> list[str]:
    """What *statement* takes from streamkit that does not exist."""
    problems: list[str] = []
    # Only whole chains: streamkit.broadcast.MemoryBroker, not its streamkit.broadcast too.
    inner = {id(node.value) for node in ast.walk(statement) if isinstance(node, ast.Attribute)}
    for node in ast.walk(statement):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _dotted(node)
            if chain is not None and chain[0] == "streamkit":
                problems.extend(_resolve(snippet.where, chain, page))
        # A block that shows the errors of bad keywords is checked by what they raise.
        if isinstance(node, ast.Call) and not _RAISES.search(snippet.source):
            problems.extend(_check_keywords(snippet.where, node, page))
    return problems


def _resolve(where: str, parts: list[str], page: _Page) -> list[str]:
    if "streamkit" not in page.modules:
        return [f"{where}: {'.'.join(parts)} is used, but no block up to here imports streamkit"]
    value: object = importlib.import_module("streamkit")
    for depth, part in enumerate(parts[1:], start=1):
        dotted = ".".join(parts[: depth + 1])
        if isinstance(value, ModuleType):
            submodule = f"{value.__name__}.{part}"
            if submodule in page.modules:
                value = importlib.import_module(submodule)
                continue
            if not _public(value, part):
                try:
                    importlib.import_module(submodule)
                except ImportError:
                    return [f"{where}: {dotted}: {value.__name__} does not export {part!r}"]
                return [f"{where}: {dotted} needs 'import {submodule}' first"]
        if not hasattr(value, part):
            return [f"{where}: {dotted} does not exist"]
        value = getattr(value, part)
    return []


def _callee(call: ast.Call, page: _Page) -> object:
    """The streamkit callable *call* calls, or None for another or one not found."""
    parts = _dotted(call.func)
    if parts is None:
        return None
    if parts[0] == "streamkit" and "streamkit" in page.modules:
        target: object = importlib.import_module("streamkit")
    elif parts[0] in page.names:
        target = page.names[parts[0]]
    elif parts[0] in page.instances:
        target = page.instances[parts[0]]
    else:
        return None
    for part in parts[1:]:
        if not hasattr(target, part):
            return None  # a module's missing name is reported by _resolve
        target = getattr(target, part)
    return target


def _check_keywords(where: str, call: ast.Call, page: _Page) -> list[str]:
    target = _callee(call, page)
    taken = None if target is None else _keywords_taken(target)
    if taken is None:
        return []
    return [
        f"{where}: {ast.unparse(call.func)}() takes no keyword argument {keyword.arg!r}"
        for keyword in call.keywords
        if keyword.arg is not None and keyword.arg not in taken
    ]


def problems(pages: dict[Path, str | None]) -> list[str]:
    """What is wrong with the blocks of *pages* (each page's text, or None to read it)."""
    found: list[str] = []
    for path, text in pages.items():
        page = _Page()
        for snippet in python_snippets(path, text):
            try:
                tree = _parse(snippet)
            except SyntaxError as error:
                found.append(f"{snippet.where}: {error}")
                continue
            found.extend(_problems_of(snippet, tree, page))
    return found


def test_the_docs_have_python_blocks_to_check() -> None:
    # A fence the pattern stopped matching would make the next test pass on nothing.
    assert len(SNIPPETS) > 50
    assert any("EventSourceResponse" in snippet.source for snippet in SNIPPETS)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_block_compiles_and_what_it_takes_from_streamkit_exists(page: Path) -> None:
    assert problems({page: None}) == []


def test_every_listed_fragment_is_still_in_the_docs() -> None:
    for where, line in FRAGMENTS:
        assert any(
            str(snippet.page.relative_to(ROOT)) == where and line in snippet.source
            for snippet in SNIPPETS
        ), (where, line)


PAGE = ROOT / "docs" / "example.md"


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        (
            "from streamkit import EventSourceResponse, NoSuchResponse",
            "docs/example.md:2: streamkit does not export 'NoSuchResponse'",
        ),
        (
            "from streamkit import MemoryBroker",
            "docs/example.md:2: streamkit does not export 'MemoryBroker'",
        ),
        (
            "from streamkit.resources import _proxy",
            "docs/example.md:2: streamkit.resources does not export '_proxy'",
        ),
        (
            "import streamkit\nbroker = streamkit.broadcast.MemoryBroker()",
            "docs/example.md:2: streamkit.broadcast needs 'import streamkit.broadcast' first",
        ),
        (
            "import streamkit.broadcast\nstreamkit.broadcast.NoSuchBroker()",
            "docs/example.md:2: streamkit.broadcast.NoSuchBroker: "
            "streamkit.broadcast does not export 'NoSuchBroker'",
        ),
        (
            "app = streamkit.App()",
            "docs/example.md:2: streamkit.App is used, but no block up to here imports streamkit",
        ),
        (
            "from streamkit import EventSourceResponse\nEventSourceResponse(p, heartbeat=1.0)",
            "docs/example.md:2: EventSourceResponse() takes no keyword argument 'heartbeat'",
        ),
        (
            "import streamkit\nstreamkit.App(heartbeat=1.0)",
            "docs/example.md:2: streamkit.App() takes no keyword argument 'heartbeat'",
        ),
        (
            "import streamkit\napp = streamkit.App()\n@app.sse('/x', heartbeat=1.0)\n"
            "async def x(request, send): ...",
            "docs/example.md:2: app.sse() takes no keyword argument 'heartbeat'",
        ),
        ("return 1", "docs/example.md:2: 'return' outside function (example.md:2, line 1)"),
    ],
)
def test_a_block_that_would_fail_a_reader_is_reported(block: str, problem: str) -> None:
    assert problems({PAGE: f"Text.\n```python\n{block}\n```\n"}) == [problem]


def test_a_block_may_use_what_an_earlier_block_of_its_page_imported() -> None:
    first = "```python\nimport streamkit.fallback\n```\n"
    text = f"{first}\nThen:\n\n```python\nstreamkit.fallback.Fallback\n```\n"
    assert problems({PAGE: text}) == []


#: The blocks that show an error under a call, as ``# ValueError: message``; ``app`` in them
#: is a fresh App, as on their page.
RAISING = [snippet for snippet in SNIPPETS if _RAISES.search(snippet.source)]


def test_the_docs_show_errors_to_check() -> None:
    assert RAISING


@pytest.mark.parametrize("snippet", RAISING, ids=lambda snippet: snippet.where)
def test_every_error_a_block_shows_is_the_one_raised(snippet: Snippet) -> None:
    for shown in _RAISES.finditer(snippet.source):
        namespace = {"app": streamkit.App(), "streamkit": streamkit}
        with pytest.raises(Exception) as raised:  # noqa: PT011 (the type is checked by name)
            exec(shown["code"], namespace)
        assert type(raised.value).__name__ == shown["error"], shown["code"]
        message = shown["message"].removesuffix("...").rstrip()
        assert str(raised.value).startswith(message), shown["code"]
