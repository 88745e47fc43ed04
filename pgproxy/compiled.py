"""Which of pgproxy's modules run compiled: the optional mypyc build (``PGPROXY_COMPILE=1``, setup.py).

The compiled build installs an extension module beside each compiled ``.py``
source; Python's import system finds the extension first, so a module is
compiled exactly when such a file stands beside it. ``proxy.started`` reports
the list, so a partly compiled installation (a build that fell back, a stale
file) shows as what it is.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path


def compiled_modules() -> list[str]:
    """Dotted names of this package's modules that import as compiled extension modules, sorted."""
    root = Path(__file__).resolve().parent
    suffixes = sorted(
        importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True
    )  # ".cpython-311-...so" before ".so"
    found = []
    for path in root.rglob("*.*"):
        suffix = next((s for s in suffixes if path.name.endswith(s)), None)
        stem = path.name.removesuffix(suffix) if suffix else ""
        if stem.isidentifier():
            package = ("pgproxy", *path.relative_to(root).parent.parts)
            found.append(".".join(package if stem == "__init__" else (*package, stem)))
    return sorted(found)
