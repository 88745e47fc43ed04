"""Optional compiled build: ``PGPROXY_COMPILE=1`` compiles the sans-IO hot modules with mypyc.

The package metadata lives in pyproject.toml; this file only adds the
extension modules, and only when asked, so ``pip install .`` needs no C
compiler. The compiled modules are built from the same typed source and take
precedence at import (an extension module is found before its ``.py``); the
pure-Python modules stay beside them, and tests/test_compiled.py holds the two
builds to the same records and lines. Build with mypy installed::

    PGPROXY_COMPILE=1 pip install --no-build-isolation .
"""

from __future__ import annotations

import os

from setuptools import setup

#: Modules compiled with mypyc: the sans-IO protocol package (standard library
#: only, so the build needs nothing but mypy): framing, message decoding, the
#: wire state machine, value and row decoding, hex dumps. protocol/messages.py
#: stays pure Python: mypyc does not keep the dataclass field order of its
#: message subclasses.
COMPILED = [
    "pgproxy/protocol/framing.py",
    "pgproxy/protocol/decoding.py",
    "pgproxy/protocol/wire.py",
    "pgproxy/protocol/values.py",
    "pgproxy/protocol/rows.py",
    "pgproxy/protocol/hexdump.py",
]


def _extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("PGPROXY_COMPILE", "").lower() not in ("1", "true", "yes"):
        return []
    from mypyc.build import mypycify

    return mypycify(COMPILED, opt_level="3")


if __name__ == "__main__":
    setup(ext_modules=_extensions())
