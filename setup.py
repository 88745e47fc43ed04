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

#: Modules compiled with mypyc: the hot path of every statement, from bytes to
#: log line. The sans-IO protocol package (framing, message decoding, the wire
#: state machine, value and row decoding, hex dumps), the tracker (statement
#: pairing, the session, SQL analysis, fingerprints, redaction, records) and the
#: sink's per-record work (the log sink and fan-out, JSON line rendering,
#: statistics, metrics, the log writer's queue and its thread), and the session's asyncio protocols
#: (proxy/session.py: every new connection's start-up and every relayed chunk pass through them; a
#: pgbench -C connection 322.6k -> 265.0k instructions, callgrind), and the server and its deadlines, which
#: every new connection calls into (a connection 218.3k -> 210.1k, query detail 261.1k -> 252.0k). mypy
#: type-checks them against the installed dependencies, so install those first.
COMPILED = [
    "pgproxy/protocol/framing.py",
    "pgproxy/protocol/messages.py",
    "pgproxy/protocol/decoding.py",
    "pgproxy/protocol/wire.py",
    "pgproxy/protocol/values.py",
    "pgproxy/protocol/rows.py",
    "pgproxy/protocol/hexdump.py",
    "pgproxy/tracker/statements.py",
    "pgproxy/tracker/session.py",
    "pgproxy/tracker/sql.py",
    "pgproxy/tracker/fingerprint.py",
    "pgproxy/tracker/redaction.py",
    "pgproxy/tracker/records.py",
    "pgproxy/tracker/options.py",
    "pgproxy/tracker/replication.py",
    "pgproxy/tracker/message_events.py",
    "pgproxy/sink/__init__.py",
    "pgproxy/sink/render.py",
    "pgproxy/sink/stats.py",
    "pgproxy/sink/metrics.py",
    "pgproxy/sink/writer.py",
    "pgproxy/proxy/session.py",
    "pgproxy/proxy/server.py",
    "pgproxy/proxy/deadlines.py",
    "pgproxy/proxy/observations.py",
]


def _extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("PGPROXY_COMPILE", "").lower() not in ("1", "true", "yes"):
        return []
    from mypyc.build import mypycify

    return mypycify(COMPILED, opt_level="3")


if __name__ == "__main__":
    setup(ext_modules=_extensions())
