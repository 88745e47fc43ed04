"""The server's own log as the oracle: pgproxy's ``query`` events must agree with it.

A dedicated PostgreSQL logs every statement it runs (``log_min_duration_statement
= 0``) and every failed one (``log_min_error_statement = error``) as JSON lines.
A mixed workload runs through pgproxy: psql scripts with errors and
multi-statement queries, asyncpg (fetchrow, fetchval, executemany, an error at
Bind), a psycopg pipeline with an error in the middle, the SQLAlchemy ORM
scenario, pgbench in extended and prepared mode. Then, per backend process:

* every Execute the server logged is one ``ok`` event of the same text, and
  every simple Query it logged is one event (or one batch of events whose
  statements it contains), with a duration no shorter than the server's;
* every error the server logged is one ``error`` event with the same SQLSTATE
  and text;
* every other event is ``skipped``: the server never ran it (or a statement of
  a failed Query, which the server logs only as the Query's error).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.demo.scenario import run_scenario
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from tests.conftest import INSTALLS
from tests.harness import ProxyHarness

_MARKER = "oracle: end of workload"
#: "duration: 0.123 ms  statement: ..." / "execute <unnamed>: ..." / "execute fetch from s/p: ..."
_DURATION = re.compile(
    r"duration: (?P<ms>[0-9.]+) ms  (?:(?P<simple>statement)|(?P<kind>parse|bind|execute fetch from|execute) (?P<name>[^:]*)): (?P<sql>.*)",
    re.DOTALL,
)


@pytest.fixture(scope="module")
def logged_pg() -> Iterator[EmbeddedPostgres]:
    inst = next((i for i in INSTALLS if i.major >= 15), None)
    if inst is None:
        pytest.fail("the oracle needs PostgreSQL 15 or later (jsonlog)")
    settings = {
        "logging_collector": "on",
        "log_destination": "'jsonlog'",
        "log_directory": "'log'",
        "log_filename": "'server.log'",
        "log_min_duration_statement": "0",
        "log_min_error_statement": "error",
        "log_parameter_max_length": "0",
    }
    with EmbeddedPostgres(inst, settings=settings) as server:
        yield server


@dataclass
class ServerUnit:
    """One thing the server logged for a backend: a simple Query, an Execute, or an error."""

    kind: str  # "simple", "execute" or "error"
    sql: str
    ms: float | None = None
    sqlstate: str | None = None
    fetches: list[float] = field(default_factory=list)


def _server_log(pg: EmbeddedPostgres, marker: str) -> list[dict[str, Any]]:
    """The server's log lines up to ``marker`` (a statement run last) and since the previous marker."""
    assert pg.datadir is not None
    logdir = pg.datadir / "log"

    def read() -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for path in sorted(Path(logdir).glob("*.json")):
            for line in path.read_text(errors="replace").splitlines():
                if line.strip():
                    lines.append(json.loads(line))
        return lines

    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(marker)
    deadline = time.monotonic() + 30
    while True:  # the logging collector writes asynchronously: wait for the marker
        lines = read()
        ends = [i for i, e in enumerate(lines) if _MARKER in (e.get("message") or "")]
        if ends and marker in (lines[ends[-1]].get("message") or ""):
            start = ends[-2] + 1 if len(ends) > 1 else 0
            return lines[start : ends[-1]]
        if time.monotonic() > deadline:
            raise AssertionError("the server's log never showed the end marker")
        time.sleep(0.05)


def _server_units(lines: list[dict[str, Any]], pids: set[int]) -> dict[int, list[ServerUnit]]:
    units: dict[int, list[ServerUnit]] = defaultdict(list)
    for entry in lines:
        pid = entry.get("pid")
        if pid not in pids:
            continue
        severity = entry.get("error_severity")
        message = entry.get("message") or ""
        if severity == "ERROR":
            units[pid].append(ServerUnit("error", entry.get("statement") or "", sqlstate=entry.get("state_code")))
            continue
        found = _DURATION.match(message)
        if found is None:
            continue
        ms = float(found["ms"])
        if found["simple"]:
            units[pid].append(ServerUnit("simple", found["sql"], ms))
        elif found["kind"] == "execute":
            units[pid].append(ServerUnit("execute", found["sql"], ms))
        elif found["kind"] == "execute fetch from":
            # A suspended portal fetched again: the same statement, one event.
            previous = next(u for u in reversed(units[pid]) if u.kind == "execute" and u.sql == found["sql"])
            previous.fetches.append(ms)
    return units


def _run_workload(pg: EmbeddedPostgres, proxy: ProxyHarness) -> None:
    dsn = proxy.dsn(sslmode="disable")
    psql = [pg.tool("psql"), "-X", "-q", "-d", dsn]
    for script in (
        "select 1 as a; select 2 as b",
        "create temp table rb (i int); insert into rb values (1); select 1/0; select 3",
        "select 1 as s1; selec 2; select 3 as s3",
        "begin; select 1; commit; select 1/0",
        "select pg_sleep(0.05); select 2",
    ):
        subprocess.run([*psql, "-c", script], capture_output=True, timeout=60, check=False)
    script = "create temp table t (i int primary key);\ninsert into t values (1);\ninsert into t values (1);\nselect * from t;\nselect nope;\n"
    subprocess.run(
        [*psql, "-v", "ON_ERROR_STOP=0"], input=script.encode(), capture_output=True, timeout=60, check=False
    )

    async def with_asyncpg() -> None:
        conn = await asyncpg.connect(proxy.dsn())
        await conn.execute("create temp table items (id int, name text)")
        await conn.executemany("insert into items values ($1, $2)", [(i, f"n{i}") for i in range(20)])
        assert await conn.fetchrow("select id, name from items where id = $1", 3) is not None
        assert await conn.fetchval("select count(*) from items") == 20
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.fetchval("select 1/$1::int", 0)
        async with conn.transaction():
            await conn.fetchrow("select id from items order by id")
            await conn.fetchval("select 2")
        await conn.execute("select 1; select 2")
        await conn.close()

    asyncio.run(with_asyncpg())

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create temp table p (i int)")
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            for i in range(5):
                conn.execute("insert into p values (%s)", (i,))
            conn.execute("select 1 / %s::int", (0,))
            for i in range(3):
                conn.execute("select %s::int + 100", (i,))
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute("select %s::int", ("abc",))

    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        admin.execute("drop database if exists oracle_orm")
        admin.execute("create database oracle_orm")
    run_scenario(f"postgresql+psycopg://postgres@{proxy.host}:{proxy.port}/oracle_orm")

    subprocess.run([pg.tool("pgbench"), "-i", "-q", "-s", "1", "-d", pg.dsn()], capture_output=True, check=True)
    for mode in ("extended", "prepared"):
        subprocess.run(
            [pg.tool("pgbench"), "-n", "-M", mode, "-c", "2", "-j", "1", "-t", "10", "-d", dsn],
            capture_output=True,
            check=True,
            timeout=120,
        )
    proxy.wait_idle()


def _proxy_units(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A session's events grouped as the server logs them: one group per simple Query, else one per event."""
    groups: list[list[dict[str, Any]]] = []
    batch: list[dict[str, Any]] = []
    for event in events:
        size = event.get("db.operation.batch.size")
        if size is None:
            groups.append([event])
            continue
        batch.append(event)
        if len(batch) == size:
            groups.append(batch)
            batch = []
    assert not batch, batch
    return groups


def _check_session(pid: int, events: list[dict[str, Any]], server: list[ServerUnit]) -> list[str]:
    """Walk one backend's events and the server's units side by side; returns what disagrees."""
    problems: list[str] = []
    queue = list(server)

    def take(kind: str, sql: str | None, sqlstate: str | None = None) -> ServerUnit | None:
        for i, unit in enumerate(queue):
            if unit.kind != kind:
                continue
            if (
                kind == "simple"
                and sql is not None
                and sql.strip().rstrip(";").strip() != unit.sql.strip().rstrip(";").strip()
            ):
                continue
            if kind == "execute" and unit.sql != sql:
                continue
            if kind == "error" and (unit.sqlstate != sqlstate or (sql is not None and sql not in unit.sql)):
                continue
            return queue.pop(i)
        return None

    for group in _proxy_units(events):
        first = group[0]
        errors = [e for e in group if e["outcome"] == "error"]
        if first["protocol"] == "simple" and len(group) > 1:
            # A multi-statement Query: the server logs it once, as a whole.
            if errors:
                (error,) = errors
                unit = take("error", error["db.query.text"], error["db.response.status_code"])
                if unit is None:
                    problems.append(f"{pid}: batch error {error['db.query.text']!r} not in the server's log")
                    continue
                after = group[group.index(error) + 1 :]
                if any(e["outcome"] != "skipped" for e in after):
                    problems.append(f"{pid}: statements after {error['db.query.text']!r} not skipped")
                continue
            unit = next(
                (u for u in queue if u.kind == "simple" and all(e["db.query.text"] in u.sql for e in group)), None
            )
            if unit is None:
                problems.append(f"{pid}: batch {[e['db.query.text'] for e in group]} not in the server's log")
                continue
            queue.remove(unit)
            assert unit.ms is not None
            if group[-1]["batch_duration_ms"] < unit.ms:
                problems.append(
                    f"{pid}: batch {unit.sql!r} {group[-1]['batch_duration_ms']} ms < server's {unit.ms} ms"
                )
            continue
        (event,) = group
        outcome, sql = event["outcome"], event["db.query.text"]
        if outcome == "skipped":
            if take("execute" if event["protocol"] == "extended" else "simple", sql) is not None:
                problems.append(f"{pid}: {sql!r} logged skipped but the server ran it")
            continue
        if outcome == "error":
            if take("error", sql, event["db.response.status_code"]) is None:
                problems.append(f"{pid}: error {sql!r} {event['db.response.status_code']} not in the server's log")
            continue
        if outcome not in ("ok", "empty"):
            problems.append(f"{pid}: {sql!r} outcome {outcome}")
            continue
        unit = take("execute" if event["protocol"] == "extended" else "simple", sql)
        if unit is None:
            problems.append(f"{pid}: {event['protocol']} {sql!r} not in the server's log")
            continue
        assert unit.ms is not None
        longest = max([unit.ms, *unit.fetches])
        if event["duration_ms"] < longest:
            problems.append(f"{pid}: {sql!r} {event['duration_ms']} ms < server's {longest} ms")
        if len(unit.fetches) + 1 != event.get("executes", 1):
            problems.append(f"{pid}: {sql!r} executes {event.get('executes', 1)} != server's {len(unit.fetches) + 1}")
    problems += [f"{pid}: the server logged {u.kind} {u.sql!r} ({u.sqlstate}) that pgproxy did not" for u in queue]
    return problems


@pytest.mark.parametrize("detail", [Detail.QUERY, Detail.MESSAGE], ids=["query", "message"])
def test_every_statement_the_server_ran_is_logged_once_with_its_outcome_and_duration(
    logged_pg: EmbeddedPostgres, detail: Detail
) -> None:
    options = TrackerOptions(detail=detail, slow_query_ms=1e9)
    with ProxyHarness(("127.0.0.1", logged_pg.port), options) as proxy:
        _run_workload(logged_pg, proxy)
        events = proxy.events("query")
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_pid[event["backend_pid"]].append(event)
    marker = f"select '{_MARKER} {detail.name}'"
    units = _server_units(_server_log(logged_pg, marker), set(by_pid))
    problems: list[str] = []
    for pid, session_events in by_pid.items():
        problems += _check_session(pid, session_events, units.get(pid, []))
    assert problems == []
    # The workload did produce what the checks are about.
    outcomes = {e["outcome"] for e in events}
    assert {"ok", "error", "skipped"} <= outcomes
    assert any(e.get("rolled_back") for e in events)
    assert any(e.get("portal_suspended") for e in events)
    assert sum(len(u) for u in units.values()) > 100
