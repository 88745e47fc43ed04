"""The mypyc-compiled build (``PGPROXY_COMPILE=1``, setup.py) gives the same records and lines as pure Python.

Compiles setup.py's module list into a copy of the package once per session,
then runs every recorded conversation through the tracker at wire, message and
query detail (redaction modes included) with the compiled build and with the
pure-Python one, in separate processes, and feeds the records to the sinks as
the proxy does: JSON lines and console lines (at a fixed clock), statement
statistics and their report, Prometheus metrics. Every record, line and number
must be equal. Needs a C compiler and mypy (a test dependency); a machine
without a compiler runs pure Python, which the rest of the suite covers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres, free_port
from tests import compiled_build
from tests.harness import PGPROXY, wait_listening

ROOT = Path(__file__).resolve().parent.parent
COMPILED = compiled_build.COMPILED

# The first test to run waits for what is left of the mypyc build (started when
# the suite was collected; it takes minutes on a loaded 2-core machine): the
# build has its own 1800 s limit, so the tests that wait for it get the same.
pytestmark = pytest.mark.timeout(1800)

_RUN = """
import io, itertools, json, time
time.time, time.time_ns = lambda: 1764244800.25, lambda: 1764244800_250000000  # every timestamp the same
from pgproxy.compiled import compiled_modules
from pgproxy.sink import LogSink
from pgproxy.sink.metrics import MetricsSink
from pgproxy.sink.stats import StatementStats
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.redaction import ParameterMode, RedactionPolicy
from pgproxy.tracker.session import SessionTracker
from tests.golden import recordings

options = [
    TrackerOptions(detail=Detail.CONNECTION),  # the counting way (Framer.count_tags)
    TrackerOptions(detail=Detail.WIRE, slow_query_ms=2.0),
    TrackerOptions(detail=Detail.MESSAGE, redaction=RedactionPolicy(parameters=ParameterMode.HIDE)),
    TrackerOptions(
        detail=Detail.QUERY,
        redaction=RedactionPolicy(parameters=ParameterMode.HASH, hash_key=b"k", mask_sql_literals=True),
    ),
]
json_out, console_out = io.StringIO(), io.StringIO()
sinks = [LogSink(stream=json_out, fmt="json"), LogSink(stream=console_out, fmt="console")]
stats = StatementStats(interval=0, clock=itertools.count(0, 0.5).__next__)
metrics = MetricsSink(loop="test")
batches = []
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
                    batches.append(tracker.frontend(chunk) if frontend else tracker.backend(chunk))
                    for consumer in (*sinks, stats, metrics):
                        consumer.emit_all(batches[-1])
            batches.append(tracker.closed("client_terminated"))
            for consumer in (*sinks, stats, metrics):
                consumer.emit_all(batches[-1])
report = stats.report("test")
for sink in sinks:
    sink.emit_all(report)
    sink.close()
print(json.dumps({
    "compiled": compiled_modules(),
    "records": [[r.event, r.level, r.fields] for batch in batches for r in batch],
    "json": json_out.getvalue().splitlines(),
    "console": console_out.getvalue().splitlines(),
    "stats": [[r.event, r.fields] for r in report] + [stats.snapshot()],
    "metrics": metrics.render().decode().splitlines(),
}, default=repr))
"""


def _run(tree: Path) -> dict[str, Any]:
    """The script's output with ``tree``'s package first on the path (the tests package from the checkout)."""
    out = subprocess.run(
        [sys.executable, "-c", _RUN],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT}"},
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.fixture(scope="session")
def trees() -> tuple[Path, Path]:
    """(compiled, pure) copies of the package: setup.py's modules compiled into the first.

    The build started when the suite was collected (tests/compiled_build.py);
    this waits for what is left of it. The pure one is a copy too, without
    extension modules: a checkout may hold a compiled build in place.
    """
    if not compiled_build.compiler_available():
        pytest.skip("no C compiler: the compiled build is optional")
    build = compiled_build.started
    if build is None:  # collected some other way than conftest.py's hook saw
        build = compiled_build.started = compiled_build.BackgroundBuild()
    return build.wait(timeout=1800)


@pytest.fixture(scope="session")
def builds(trees: tuple[Path, Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(compiled, pure) outputs of the script above."""
    compiled, pure = trees
    return _run(compiled), _run(pure)


@pytest.mark.slow
def test_compiled_build_compiles_the_listed_modules(builds: tuple[dict[str, Any], dict[str, Any]]) -> None:
    compiled, pure = builds
    assert compiled["compiled"] == sorted(
        m.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for m in COMPILED
    )
    assert pure["compiled"] == []


@pytest.mark.slow
def test_compiled_build_gives_the_same_records(builds: tuple[dict[str, Any], dict[str, Any]]) -> None:
    compiled, pure = builds
    assert len(compiled["records"]) > 1000
    # message and wire detail's per-message events are among them (the compiled messages.py and message_events.py)
    shown = {(event, fields.get("type"), "hex" in fields) for event, _level, fields in compiled["records"]}
    for kind in ("StartupMessage", "AuthenticationSASL", "Bind", "RowDescription", "DataRow", "ErrorResponse"):
        assert {("message", kind, False), ("message", kind, True)} <= shown, kind
    assert compiled["records"] == pure["records"]


@pytest.mark.slow
@pytest.mark.parametrize("output", ["json", "console", "stats", "metrics"])
def test_compiled_build_gives_the_same_lines(builds: tuple[dict[str, Any], dict[str, Any]], output: str) -> None:
    """The sinks' output: rendered log lines, statistics, metrics."""
    compiled, pure = builds
    assert len(compiled[output]) > 10
    assert compiled[output] == pure[output]


#: Fields that differ between two runs of the same sessions: clocks, ports, process ids.
_VARYING = frozenset(("timestamp", "client.port", "backend_pid", "session"))


def _proxied_sessions(tree: Path, pg: EmbeddedPostgres, detail: str) -> list[list[dict[str, Any]]]:
    """The events of a few sessions through a ``pgproxy`` process run from ``tree``, per session, varying fields left out.

    Sessions one after the other: logins that repeat (the known login answer
    from the third on), simple and extended queries, a transaction, an error.
    """
    port = free_port()
    proc = subprocess.Popen(
        [*PGPROXY, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{pg.port}", "--log-detail", detail],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT}"},
    )
    try:
        wait_listening(port, proc)
        for i in range(4):
            dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres?application_name=compiled-check"
            with psycopg.connect(dsn, autocommit=True) as conn:
                assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
                with conn.transaction():
                    conn.execute("SELECT 1")
                with pytest.raises(psycopg.errors.DivisionByZero):
                    conn.execute("SELECT 1/0")
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    sessions: dict[str, list[dict[str, Any]]] = {}
    for line in stdout.splitlines():
        event = json.loads(line)
        if "session" in event:
            fields = {
                k: v
                for k, v in event.items()
                if k not in _VARYING and not k.endswith(("_ms", "_s")) and "duration" not in k
            }
            sessions.setdefault(event["session"], []).append(fields)
    return list(sessions.values())


@pytest.mark.slow
@pytest.mark.parametrize("detail", ["connection", "query"])
def test_compiled_proxy_session_logs_what_pure_python_logs(
    trees: tuple[Path, Path], pg: EmbeddedPostgres, detail: str
) -> None:
    """The compiled build's proxy layer (proxy/session.py: the asyncio protocols) relays and logs as pure Python does.

    A real server and client through a ``pgproxy`` process of each build: the
    same events, fields and values, but for clocks, ports and process ids.
    """
    compiled, pure = trees
    logged = _proxied_sessions(compiled, pg, detail)
    assert len(logged) == 5  # wait_listening's probe, then the four clients
    assert [e["event"] for e in logged[-1]][:2] == ["session.started", "session.ready"]
    assert logged == _proxied_sessions(pure, pg, detail)
