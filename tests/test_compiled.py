"""The mypyc-compiled build (``PGPROXY_COMPILE=1``, setup.py) gives the same records as pure Python.

Compiles setup.py's module list into a copy of the package, then runs every
recorded conversation through the tracker at wire, message and query detail
(redaction modes included) with the compiled build and with the pure-Python
one, in separate processes, and compares every record. Needs a C compiler and
mypy (a test dependency); a machine without a compiler runs pure Python, which
the rest of the suite covers.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_RECORDS = """
import itertools, json, sys
import pgproxy.protocol
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.redaction import ParameterMode, RedactionPolicy
from pgproxy.tracker.session import SessionTracker
from tests.golden import recordings

options = [
    TrackerOptions(detail=Detail.WIRE, slow_query_ms=2.0),
    TrackerOptions(detail=Detail.MESSAGE, redaction=RedactionPolicy(parameters=ParameterMode.HIDE)),
    TrackerOptions(
        detail=Detail.QUERY,
        redaction=RedactionPolicy(parameters=ParameterMode.HASH, hash_key=b"k", mask_sql_literals=True),
    ),
]
out = []
for option in options:
    for name, conns in sorted(recordings().items()):
        for conn in conns:
            tracker = SessionTracker(
                "s", option, client=("127.0.0.1", 1), server=("127.0.0.1", 2), clock=itertools.count(0, 0.0007).__next__
            )
            for frontend, data in conn:
                # one byte at a time too: the compiled framer's partial-frame paths
                chunks = [data[i : i + 1] for i in range(len(data))] if name == "psql" else [data]
                for chunk in chunks:
                    out += [[r.event, r.level, r.fields] for r in (tracker.frontend(chunk) if frontend else tracker.backend(chunk))]
            out += [[r.event, r.level, r.fields] for r in tracker.closed("client_terminated")]
print(json.dumps({"compiled": pgproxy.protocol.COMPILED, "records": out}, default=repr))
"""


def _records(pythonpath: str, cwd: Path) -> dict[str, object]:
    import json

    out = subprocess.run(
        [sys.executable, "-c", _RECORDS],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": pythonpath},
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.slow
def test_compiled_build_gives_the_same_records(tmp_path: Path) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the compiled build is optional")
    mypyc = Path(sys.executable).parent / "mypyc"
    compiled_list = runpy.run_path(str(ROOT / "setup.py"), run_name="setup")["COMPILED"]
    shutil.copytree(ROOT / "pgproxy", tmp_path / "pgproxy", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    build = subprocess.run(
        [str(mypyc), *compiled_list], cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert len(list((tmp_path / "pgproxy" / "protocol").glob("*.so"))) == len(compiled_list)

    compiled = _records(f"{tmp_path}{os.pathsep}{ROOT}", tmp_path)
    pure = _records(str(ROOT), ROOT)
    assert compiled["compiled"] is True and pure["compiled"] is False
    assert isinstance(compiled["records"], list) and len(compiled["records"]) > 1000
    assert compiled["records"] == pure["records"]
