"""``query.filter`` thins the log, never the numbers: metrics and statistics count what ran.

A known workload runs through the proxy in front of a real server with sampling
at 0.1 (a deterministic draw: one in ten) or a minimum duration nothing reaches.
The metrics sink and the statistics table must count every statement; the log
must show only the selected ones, plus every error and every slow statement.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.sink.metrics import MetricsSink
from pgproxy.sink.stats import StatementStats
from pgproxy.tracker.fingerprint import StatementAnalyzer
from pgproxy.tracker.options import QueryFilter, TrackerOptions
from pgproxy.tracker.records import QUERY, Record
from tests.harness import ProxyHarness
from tests.test_metrics import samples

APP = "filtered-counts"
SELECTS = 20


class Seen:
    """Every record the consumers beside the log get."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def emit_all(self, records: Sequence[Record]) -> None:
        self.records += records


def _workload(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(SELECTS):
            conn.execute("SELECT %s::int + 1", (i,))
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        conn.execute("SELECT pg_sleep(0.3)")  # slow (slow_query_ms = 250)


@pytest.mark.parametrize(
    ("query_filter", "logged_selects"),
    [
        (QueryFilter(sample_rate=0.1), SELECTS // 10),
        (QueryFilter(min_duration_ms=3_600_000.0), 0),
    ],
    ids=["sample_rate", "min_duration"],
)
def test_metrics_and_statistics_count_what_ran_while_the_log_shows_what_was_selected(
    pg: EmbeddedPostgres, query_filter: QueryFilter, logged_selects: int
) -> None:
    draws = itertools.cycle([0.05] + [0.5] * 9)  # exactly one draw in ten is below 0.1
    options = TrackerOptions(
        analyzer=StatementAnalyzer(), query_filter=query_filter, slow_query_ms=250.0, draw=lambda: next(draws)
    )
    metrics, seen = MetricsSink("uvloop"), Seen()
    stats = StatementStats(output=lambda records: None, interval=0)
    with ProxyHarness(("127.0.0.1", pg.port), options, consumers=[metrics, stats, seen]) as proxy:
        _workload(proxy.dsn(sslmode="disable", application_name=APP))
        proxy.wait_idle()
        logged = proxy.events("query", application_name=APP)
        (ended,) = proxy.events("session.ended", application_name=APP)

    # The log: the selected statements, every error and every slow one.
    selects = [e for e in logged if e["db.query.text"] == "SELECT $1::int + 1"]
    assert len(selects) == logged_selects
    assert [e["outcome"] for e in logged if e["db.query.text"] == "SELECT 1/0"] == ["error"]
    (slow,) = [e for e in logged if e.get("slow")]
    assert slow["db.query.text"] == "SELECT pg_sleep(0.3)" and slow["level"] == "warning"
    assert len(logged) == logged_selects + 2

    # Metrics: every statement that ran.
    got = samples(metrics)
    assert got[("pgproxy_statements_total", (("db_operation_name", "SELECT"), ("outcome", "ok")))] == SELECTS + 1
    assert got[("pgproxy_statements_total", (("db_operation_name", "SELECT"), ("outcome", "error")))] == 1
    assert got[("pgproxy_errors_total", (("sqlstate_class", "22"),))] == 1
    select = (("db_operation_name", "SELECT"), ("db_system_name", "postgresql"))
    assert got[("db_client_operation_duration_seconds_count", select)] == SELECTS + 2
    assert got[("db_client_operation_duration_seconds_bucket", (*select, ("le", "0.1")))] <= SELECTS + 1
    assert got[("db_client_operation_duration_seconds_bucket", (*select, ("le", "+Inf")))] == SELECTS + 2

    # Statistics: every call, per fingerprint.
    rows: dict[Any, dict[str, Any]] = {
        r["db.query.text"]: r for r in stats.snapshot()["statements"] if r["application_name"] == APP
    }
    assert (rows["SELECT $1::int + 1"]["calls"], rows["SELECT $1::int + 1"]["rows"]) == (SELECTS, SELECTS)
    assert (rows["SELECT 1/0"]["calls"], rows["SELECT 1/0"]["errors"]) == (1, {"22": 1})
    assert rows["SELECT pg_sleep(0.3)"]["calls"] == 1

    # The records beside the log: all there, the filter's decision on each; session.ended stays truthful.
    queries = [r for r in seen.records if r.event == QUERY and r.get("application_name") == APP]
    assert len(queries) == SELECTS + 2
    assert sum(r.logged for r in queries) == len(logged)
    assert ended["statements"] == SELECTS + 2 and "unlogged_statements" not in ended


def test_out_of_scope_sessions_are_counted_not_logged(pg: EmbeddedPostgres) -> None:
    options = TrackerOptions(query_filter=QueryFilter(applications=frozenset({"someone-else"})))
    metrics = MetricsSink("uvloop")
    with ProxyHarness(("127.0.0.1", pg.port), options, consumers=[metrics]) as proxy:
        _workload(proxy.dsn(sslmode="disable", application_name=APP))
        proxy.wait_idle()
        assert proxy.events("query") == []  # errors and slow statements of other scopes are not logged either
        (ended,) = proxy.events("session.ended", application_name=APP)
    got = samples(metrics)
    assert got[("pgproxy_statements_total", (("db_operation_name", "SELECT"), ("outcome", "ok")))] == SELECTS + 1
    assert got[("pgproxy_statements_total", (("db_operation_name", "SELECT"), ("outcome", "error")))] == 1
    assert ended["statements"] == SELECTS + 2
