"""A lone simple Query is analyzed when it arrives, not when its answer is recorded.

Between an answer's arrival and the client's next request (one client,
``pgbench -S``), the proxy's work on the answer delays that request, while
it idles as the server works on the statement. StatementTracker.query asks
the analyzer then, and the record takes that analysis. These tests hold the
records to those of the way that asks when the answer is recorded (a Query
sent while another waits, pipelined), and the analyzer to one question per
statement either way.
"""

from __future__ import annotations

from typing import Any

import pytest

from pgproxy.protocol import build as b
from pgproxy.tracker.fingerprint import StatementAnalyzer
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail, Record
from pgproxy.tracker.session import SessionTracker

ROWS = b.row_description([("abalance", 23)]) + b.data_row([b"0"]) + b.command_complete("SELECT 1")
READY = b.ready_for_query()
FAILED = b.error_response("ERROR", "42P01", 'relation "nope" does not exist')

#: (Query text, the server's answer without its ReadyForQuery)
CASES: list[tuple[str, bytes]] = [
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 31337;", ROWS),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 7", ROWS),
    ("select * from nope where x = 'secret'", FAILED),
    ("UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 3;", b.command_complete("UPDATE 1")),
    ("SELECT 1; SELECT 2;", ROWS + ROWS),  # two statements: analyzed when recorded, as before
    ("", b.message(b"I")),  # EmptyQueryResponse
    ("  ;", b.message(b"I")),
]


def _tracker(analyzer: StatementAnalyzer) -> SessionTracker:
    tracker = SessionTracker(
        "s1", TrackerOptions(detail=Detail.QUERY, analyzer=analyzer), client=("127.0.0.1", 1), server=("127.0.0.1", 2)
    )
    tracker.frontend(b.startup_message({"user": "bench", "database": "bench"}), 0.0)
    tracker.backend(b.authentication_ok() + b.backend_key_data(1) + READY, 0.0)
    return tracker


def _fields(records: list[Record]) -> list[tuple[str, dict[str, Any]]]:
    return [(r.event, dict(r.fields)) for r in records]


def _asked(analyzer: StatementAnalyzer) -> int:
    """How often the analyzer was asked (a hit or a miss)."""
    counts = analyzer.counters
    return counts["cache_hits"] + counts["cache_misses"]


def _one_at_a_time(analyzer: StatementAnalyzer) -> tuple[list[Record], list[int]]:
    """Each Query answered before the next: the Query is analyzed on arrival. Also how often the
    analyzer was asked once each answer was recorded, and again once the next Query arrived."""
    tracker = _tracker(analyzer)
    records: list[Record] = []
    asked = []
    for i, (sql, answer) in enumerate(CASES):
        records += tracker.frontend(b.query(sql), 10.0 + i)
        asked.append(_asked(analyzer))
        records += tracker.backend(answer + READY, 10.5 + i)
        asked.append(_asked(analyzer))
    return records, asked


def _pipelined(analyzer: StatementAnalyzer) -> list[Record]:
    """The same Queries, each sent before the previous one's answer: analyzed when recorded."""
    tracker = _tracker(analyzer)
    records: list[Record] = []
    records += tracker.frontend(b.query(CASES[0][0]), 10.0)
    for i, (_sql, answer) in enumerate(CASES):
        if i + 1 < len(CASES):
            records += tracker.frontend(b.query(CASES[i + 1][0]), 10.0 + i + 1)
        records += tracker.backend(answer + READY, 10.5 + i)
    return records


def test_a_query_analyzed_on_arrival_makes_the_records_of_one_analyzed_when_recorded() -> None:
    early, _ = _one_at_a_time(StatementAnalyzer())
    late = _pipelined(StatementAnalyzer())
    assert [r.event for r in early].count("query") == 8
    assert _fields(early) == _fields(late)


def test_the_analyzer_is_asked_once_per_statement_when_it_arrives() -> None:
    analyzer = StatementAnalyzer()
    _, asked = _one_at_a_time(analyzer)
    # The lone statements are asked about when they arrive, not when their answers are recorded.
    for i, (sql, _answer) in enumerate(CASES[:4]):
        before = asked[2 * i - 1] if i else 0
        assert asked[2 * i] == before + 1, sql
        assert asked[2 * i + 1] == asked[2 * i], sql
    # Both ways ask as often in all.
    pipelined = StatementAnalyzer()
    _pipelined(pipelined)
    assert _asked(pipelined) == asked[-1]


@pytest.mark.parametrize("sql", ["SELECT abalance FROM pgbench_accounts WHERE aid = 42;", "select 1"])
def test_a_query_the_session_leaves_unanswered_is_recorded_with_its_arrival_analysis(sql: str) -> None:
    """The session ends before the answer (``interrupted``): still one question, the record's fields as analyzed."""
    analyzer = StatementAnalyzer()
    tracker = _tracker(analyzer)
    tracker.frontend(b.query(sql), 10.0)
    assert _asked(analyzer) == 1
    ended = [f for event, f in _fields(tracker.closed("client_closed", 11.0)) if event == "query"]
    assert _asked(analyzer) == 1
    fresh = StatementAnalyzer().analyze(sql.rstrip(";").strip())
    assert [f["outcome"] for f in ended] == ["interrupted"]
    assert {k: ended[0][k] for k in fresh.fields} == fresh.fields


def test_a_query_sent_behind_another_is_not_analyzed_before_it_is_recorded() -> None:
    """Queued behind the Query under way, it may never be recorded (the session ends: it is only
    counted in ``interrupted_statements``), and then the analyzer is never asked about it, as before."""
    analyzer = StatementAnalyzer()
    tracker = _tracker(analyzer)
    tracker.frontend(b.query("SELECT abalance FROM pgbench_accounts WHERE aid = 1;"), 10.0)
    tracker.frontend(b.query("SELECT bbalance FROM pgbench_branches WHERE bid = 1;"), 10.1)
    assert _asked(analyzer) == 1
    ended = [f for event, f in _fields(tracker.closed("client_closed", 11.0)) if event == "query"]
    assert [(f["outcome"], f.get("interrupted_statements")) for f in ended] == [("interrupted", 2)]
    assert _asked(analyzer) == 1
