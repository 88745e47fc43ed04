"""Fingerprints, summaries and statistics from real clients through the proxy, on real servers."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres, free_port
from pgproxy.sink.stats import STATEMENT_STATS, StatementStats
from pgproxy.tracker.fingerprint import StatementAnalyzer
from pgproxy.tracker.options import TextMode, TrackerOptions
from pgproxy.tracker.records import Record
from tests.harness import ProxyHarness
from tests.test_lifecycle import PGPROXY, ProxyProcess, http

#: Fingerprints per statement label, filled by the first server's run and compared on the next.
_SEEN: dict[str, str] = {}


def _records(proxy: ProxyHarness) -> list[Record]:
    """The proxy's log lines as records again (what a sink beside the log receives)."""
    return [
        Record(e.pop("event"), e.pop("level"), {k: v for k, v in e.items() if k != "timestamp"}) for e in proxy.events()
    ]


def _workload(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS insight_items")
        conn.execute("CREATE TABLE insight_items (id int PRIMARY KEY, name text, price numeric)")
        for i in range(5):  # extended protocol, one text, five parameter sets
            conn.execute("INSERT INTO insight_items VALUES (%s, %s, %s)", (i, f"n{i}", i * 1.5))
        for i in range(3):  # simple protocol, literals inline and changing
            conn.execute(
                psycopg.sql.SQL("SELECT * FROM insight_items WHERE id = {} AND name <> {}").format(i, f"x{i}"),
                prepare=False,
            )
            conn.pgconn.exec_(f"SELECT name FROM insight_items WHERE id = {i * 7} OR name = 'lit{i}'".encode())
        conn.pgconn.exec_(
            b"UPDATE insight_items SET price = price * 2 WHERE id < 3; SELECT count(*) FROM insight_items"
        )
        for _ in range(2):
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute("INSERT INTO insight_items VALUES (%s, 'dup', 0)", (1,))


def test_fingerprints_are_the_same_for_literal_variants_and_on_every_server(any_pg: EmbeddedPostgres) -> None:
    options = TrackerOptions(analyzer=StatementAnalyzer())
    with ProxyHarness(("127.0.0.1", any_pg.port), options) as proxy:
        _workload(proxy.dsn(sslmode="disable", application_name="insight"))
        proxy.wait_idle()
        events = proxy.events("query", application_name="insight")
    by_summary: dict[str, set[str]] = {}
    for e in events:
        assert "fingerprint" in e, e
        by_summary.setdefault(e["db.query.summary"], set()).add(e["fingerprint"])
    # literal variants: one fingerprint per statement shape
    selects = [e for e in events if e["db.query.text"].startswith("SELECT name FROM insight_items WHERE id =")]
    assert len(selects) == 3 and len({e["fingerprint"] for e in selects}) == 1
    inserts = [e for e in events if e["db.operation.name"] == "INSERT"]
    assert {e["db.query.summary"] for e in inserts} == {"INSERT insight_items"}
    assert {e["db.collection.name"] for e in inserts} == {"insight_items"}
    # the multi-statement Query was split by the parser and each part described
    update = next(e for e in events if e["db.operation.name"] == "UPDATE")
    assert update["db.query.summary"] == "UPDATE insight_items" and update["statement_index"] == 0
    count = next(e for e in events if e["db.query.text"] == "SELECT count(*) FROM insight_items")
    assert count["statement_index"] == 1 and count["db.query.summary"] == "SELECT insight_items"
    fingerprints = {e["db.query.summary"] + "|" + e["protocol"]: e["fingerprint"] for e in events}
    fingerprints["select-literals"] = selects[0]["fingerprint"]
    for label, fp in fingerprints.items():
        assert _SEEN.setdefault(label, fp) == fp, f"{label}: {fp} on PostgreSQL {any_pg.major}, {_SEEN[label]} before"


def test_statistics_equal_the_workload_that_ran(pg: EmbeddedPostgres) -> None:
    options = TrackerOptions(analyzer=StatementAnalyzer())
    with ProxyHarness(("127.0.0.1", pg.port), options) as proxy:
        _workload(proxy.dsn(sslmode="disable", application_name="insight-stats"))
        proxy.wait_idle()
        records = _records(proxy)
    written: list[Record] = []
    stats = StatementStats(output=written.extend, interval=0)
    stats.emit_all(records)
    stats.close()
    rows = [r.fields for r in written if r.event == STATEMENT_STATS and r["application_name"] == "insight-stats"]
    by_summary: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_summary.setdefault(r["db.query.summary"], []).append(r)
    (insert,) = by_summary["INSERT insight_items"]  # five good parameter sets and two duplicates: one fingerprint
    assert (insert["calls"], insert["rows"], insert["errors"]) == (7, 5, {"23": 2})
    selects = by_summary["SELECT insight_items"]
    # three shapes: "id = $1 AND name <> $2" (3 calls), "id = $1 OR name = $2" (3 calls), count(*) (1 call)
    assert sorted(r["calls"] for r in selects) == [1, 3, 3]
    assert sum(r["rows"] for r in selects) == 1 + 1 + 1 + 1 + 1  # ids 0,1,2 match once each; id 0 again (0*7); count
    (update,) = by_summary["UPDATE insight_items"]
    assert (update["calls"], update["rows"], update["errors"]) == (1, 3, {})
    # the UPDATE shared a Query with a SELECT: the time is the batch's, not the statement's
    assert update["untimed_calls"] == 1 and update["duration_buckets"] == {} and update["p50_ms"] is None
    for r in rows:
        assert sum(r["duration_buckets"].values()) == r["calls"] - r.get("untimed_calls", 0)
        if r["duration_buckets"]:
            assert r["min_ms"] <= r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]


def test_pgbench_simple_literals_hit_the_cache_and_normalized_text_hides_them(pg: EmbeddedPostgres) -> None:
    subprocess.run(
        [pg.tool("pgbench"), "-i", "-q", "-s", "1", "-d", pg.dsn()], capture_output=True, check=True, timeout=120
    )
    analyzer = StatementAnalyzer()
    options = TrackerOptions(analyzer=analyzer, text_mode=TextMode.NORMALIZED)
    with ProxyHarness(("127.0.0.1", pg.port), options) as proxy:
        subprocess.run(
            [
                pg.tool("pgbench"),
                "-n",
                "-M",
                "simple",
                "-t",
                "60",
                "-d",
                proxy.dsn(sslmode="disable", application_name="bench"),
            ],
            capture_output=True,
            check=True,
            timeout=120,
        )
        proxy.wait_idle()
        events = proxy.events("query", application_name="bench")
    expected = {
        "BEGIN",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
        "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
        "END",
    }
    # pgbench's own set-up queries (scale, partitions) come first
    transactions = [e for e in events if e["db.query.text"] in expected]
    assert len(transactions) == 60 * 7 and {e["db.query.text"] for e in transactions} == expected
    assert len({e["fingerprint"] for e in transactions}) == 7
    assert not [e for e in events if "'" in e["db.query.text"]]
    # 420 statements, 7 shapes: the parser ran a handful of times (a negative delta strips as "-" + number)
    assert analyzer.counters["parsed"] <= 7 * 2 + 2
    assert analyzer.counters["literal_key_hits"] >= 60 * 5 - 20


@pytest.fixture
def proxy_process(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(*args: str, **kwargs: Any) -> ProxyProcess:
        started.append(ProxyProcess(tmp_path, *args, **kwargs))
        return started[-1]

    yield start
    for process in started:
        process.kill()


@pytest.mark.slow
def test_the_proxy_reports_statistics_serves_them_and_top_shows_them(
    pg: EmbeddedPostgres, proxy_process: Callable[..., ProxyProcess]
) -> None:
    """pgproxy as users run it: statement.stats every interval and at shutdown, /stats, /metrics, pgproxy top."""
    admin = free_port()
    proxy = proxy_process(
        "--upstream",
        f"127.0.0.1:{pg.port}",
        "--admin-listen",
        f"127.0.0.1:{admin}",
        env={"PGPROXY_STATS_INTERVAL": "1"},
    )
    with psycopg.connect(proxy.dsn(application_name="top-test"), autocommit=True) as conn:
        for i in range(6):
            conn.pgconn.exec_(f"SELECT {i} AS n, 'v{i}' AS s".encode())  # simple protocol, changing literals
        for i in range(4):
            conn.execute("SELECT %s::int + 1", (i,))
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / %s::int", (0,))
    first = proxy.wait_for(lambda: proxy.events("statement.stats", application_name="top-test"), what="statement.stats")
    assert {r["calls"] for r in first} <= {6, 4, 1}
    status, body = http(admin, "/stats")
    assert status == 200
    served = json.loads(body)
    assert served["parser"]["parsed"] >= 3 and served["entries"] >= 3
    table = {r["db.query.text"]: r for r in served["statements"] if r["application_name"] == "top-test"}
    assert table["SELECT 0 AS n, 'v0' AS s"]["calls"] == 6
    assert table["SELECT $1::int + 1"]["calls"] == 4
    assert table["SELECT 1 / $1::int"]["errors"] == {"22": 1}
    status, metrics = http(admin, "/metrics")
    assert status == 200 and 'db_query_summary="SELECT"' in metrics and "pgproxy_statement_calls_total{" in metrics
    via_url = subprocess.run(
        [*PGPROXY, "top", "--url", f"http://127.0.0.1:{admin}/stats", "--once", "--sort", "calls"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert via_url.splitlines()[3].split()[2] == "6"  # the six literal variants are one statement, on top
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0
    reported = proxy.events("statement.stats", application_name="top-test")
    totals: dict[str, int] = {}
    for r in reported:
        totals[r["fingerprint"]] = totals.get(r["fingerprint"], 0) + r["calls"]
    assert sorted(totals.values()) == [1, 4, 6]
    summary = proxy.events("stats.reported")[0]
    assert summary["reason"] == "interval" and summary["parsed"] >= 3 and summary["evicted_total"] == 0
    via_log = subprocess.run(
        [*PGPROXY, "top", "--log", str(proxy.stdout), "--once", "--sort", "calls"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # the log also holds pgproxy's own connection set-up statements of psycopg: ours are the top three by calls
    lines = via_log.splitlines()[3:6]
    assert [int(line.split()[2]) for line in lines] == [6, 4, 1], via_log


def test_statistics_of_the_last_interval_are_written_at_shutdown(
    pg: EmbeddedPostgres, proxy_process: Callable[..., ProxyProcess]
) -> None:
    proxy = proxy_process("--upstream", f"127.0.0.1:{pg.port}", env={"PGPROXY_STATS_INTERVAL": "0"})
    with psycopg.connect(proxy.dsn(application_name="shutdown-test"), autocommit=True) as conn:
        conn.execute("SELECT 42")
        conn.execute("SELECT 42")
    proxy.wait_for(lambda: proxy.events("session.ended"), what="session.ended")
    assert not proxy.events("statement.stats")  # interval 0: nothing before shutdown
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0
    (stats,) = proxy.events("statement.stats", application_name="shutdown-test")
    assert (stats["calls"], stats["db.query.summary"], stats["db.operation.name"]) == (2, "SELECT", "SELECT")
    (report,) = proxy.events("stats.reported")
    assert report["reason"] == "shutdown"
    events = [e["event"] for e in proxy.events()]
    assert events.index("stats.reported") < events.index("proxy.stopped")


def test_parameters_named_by_the_parser_are_redacted_through_the_proxy(pg: EmbeddedPostgres) -> None:
    """A password bound in shapes the regex inference missed is masked in the query event."""
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(analyzer=StatementAnalyzer())) as proxy:
        with psycopg.connect(proxy.dsn(sslmode="disable", application_name="redact"), autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE accounts_tmp (username text, password text)")
            conn.execute("INSERT INTO accounts_tmp (username, password) SELECT %s, %s", ("ann", "Hunter2-Secret"))
            conn.execute("SELECT count(*) FROM accounts_tmp WHERE password IN (%s, %s)", ("Hunter2-Secret", "x"))
        proxy.wait_idle()
        text = proxy.text()
        events = proxy.events("query", application_name="redact")
    assert "Hunter2-Secret" not in text
    insert = next(e for e in events if e["db.operation.name"] == "INSERT")
    assert insert["parameters"] == ["ann", "[redacted]"]
    select = next(e for e in events if "IN (" in e["db.query.text"])
    assert select["parameters"] == ["[redacted]", "[redacted]"]
