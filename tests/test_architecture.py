"""The README's dependency rules, read from every module's own import statements.

``test_conversation`` imports the sans-IO packages in a fresh interpreter and
checks what they pulled in at run time; this test reads the source instead, so
it also covers modules that cannot be imported alone without their package
(``pgproxy/sink/stats.py`` comes with ``pgproxy/sink/__init__.py``, which is
structlog's user) and imports placed inside functions.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pgproxy"
#: The I/O libraries: asyncio's world and the logger.
ASYNC = frozenset({"asyncio", "uvloop"})
LOGGER = frozenset({"structlog"})
#: Programs (not libraries) that may run an event loop of their own.
ENTRY_POINTS = frozenset({"cli.py", "__main__.py", "demo/scenario.py"})


#: What a module may import for its type annotations alone, under ``if TYPE_CHECKING:`` (never
#: at run time): mypy_extensions' native integer types (i64), which the compiled build reads
#: from the annotations and the interpreter never sees.
TYPE_ONLY = frozenset({"mypy_extensions"})


def _type_only_lines(path: Path) -> set[int]:
    """Lines of the imports that stand in an ``if TYPE_CHECKING:`` block of ``path``."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for inner in node.body:
                for sub in ast.walk(inner):
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        lines.add(sub.lineno)
    return lines


def _imports(path: Path, root: Path = PACKAGE) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in ``path``, wherever it stands."""
    package = ["pgproxy", *path.relative_to(root).parent.parts]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                yield node.lineno, ".".join([*base, node.module] if node.module else base)
            elif node.module:
                yield node.lineno, node.module


def _top(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def _layer(module: str) -> str | None:
    """``protocol`` for ``pgproxy.protocol.values``; None for modules outside pgproxy."""
    parts = module.split(".")
    if parts[0] != "pgproxy":
        return None
    return parts[1] if len(parts) > 1 else ""


def _violations(rule: str, root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        layer = name.split("/")[0] if "/" in name else name.removesuffix(".py")
        type_only = _type_only_lines(path)
        for line, module in _imports(path, root):
            top = _top(module)
            if rule == "protocol is stdlib only" and layer == "protocol":
                bad = top not in sys.stdlib_module_names and _layer(module) != "protocol"
                bad = bad and not (top in TYPE_ONLY and line in type_only)
            elif rule == "tracker is sans-IO" and layer == "tracker":
                bad = top in ASYNC | LOGGER or _layer(module) not in (None, "protocol", "tracker")
            elif rule == "only sink logs":
                bad = top in LOGGER and layer != "sink"
            elif rule == "only proxy runs asyncio":
                bad = top in ASYNC and layer != "proxy" and name not in ENTRY_POINTS
            elif rule == "sinks consume records" and layer == "sink":
                bad = _layer(module) not in (None, "", "protocol", "tracker", "sink")
            elif rule == "offline is sans-asyncio" and layer == "offline":
                bad = top in ASYNC or _layer(module) == "proxy"
            elif rule == "nothing imports the CLI":
                bad = module == "pgproxy.cli" and name != "__main__.py"
            else:
                bad = False
            if bad:
                found.append(f"pgproxy/{name}:{line} imports {module}")
    return found


RULES = [
    "protocol is stdlib only",
    "tracker is sans-IO",
    "only sink logs",
    "only proxy runs asyncio",
    "sinks consume records",
    "offline is sans-asyncio",
    "nothing imports the CLI",
]


@pytest.mark.parametrize("rule", RULES)
def test_dependency_rule(rule: str) -> None:
    assert _violations(rule) == []


def test_the_rules_cover_the_new_modules() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    assert {"tracker/fingerprint.py", "sink/stats.py", "offline/capture.py", "offline/decode.py"} <= names


def test_each_rule_catches_a_stray_import(tmp_path: Path) -> None:
    """A tree that breaks every rule once, relative imports included: each rule names its own offender."""
    strays = {
        "protocol/values.py": "import structlog\nfrom ..tracker import records\nimport mypy_extensions\n",
        # an annotation's type only: not a run-time dependency
        "protocol/framing.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mypy_extensions import i64\n",
        "tracker/fingerprint.py": "def f():\n    import asyncio\n",
        "offline/decode.py": "from pgproxy.proxy import server\n",
        "sink/stats.py": "from ..proxy.session import ClientSession\n",
        "top.py": "import pgproxy.cli\n",
        "proxy/server.py": "import asyncio, structlog\n",
    }
    for name, source in strays.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    found = {rule: _violations(rule, tmp_path) for rule in RULES}
    assert found == {
        "protocol is stdlib only": [
            "pgproxy/protocol/values.py:1 imports structlog",
            "pgproxy/protocol/values.py:2 imports pgproxy.tracker",
            "pgproxy/protocol/values.py:3 imports mypy_extensions",
        ],
        "tracker is sans-IO": ["pgproxy/tracker/fingerprint.py:2 imports asyncio"],
        "only sink logs": [
            "pgproxy/protocol/values.py:1 imports structlog",
            "pgproxy/proxy/server.py:1 imports structlog",
        ],
        "only proxy runs asyncio": ["pgproxy/tracker/fingerprint.py:2 imports asyncio"],
        "sinks consume records": ["pgproxy/sink/stats.py:1 imports pgproxy.proxy.session"],
        "offline is sans-asyncio": ["pgproxy/offline/decode.py:1 imports pgproxy.proxy"],
        "nothing imports the CLI": ["pgproxy/top.py:1 imports pgproxy.cli"],
    }
