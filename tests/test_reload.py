"""A configuration reload reaches open sessions at their next quiet point (sans-IO, exact records)."""

from __future__ import annotations

from pgproxy.protocol import build as b
from pgproxy.tracker.options import QueryFilter, TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.session import SessionTracker
from tests.test_tracker import session


def events(records: list) -> list[str]:  # type: ignore[type-arg]
    return [r.event for r in records]


def test_connection_to_message_detail_waits_for_the_answer_then_keeps_the_transaction() -> None:
    t = session(detail=Detail.CONNECTION)
    assert t.statements is None
    t.frontend(b.query("begin"), now=1.0)
    assert not t.reconfigure(TrackerOptions(detail=Detail.MESSAGE))  # BEGIN not answered yet
    assert events(t.backend(b.command_complete("BEGIN") + b.ready_for_query("T"), now=1.001)) == []
    assert t.reconfigure(TrackerOptions(detail=Detail.MESSAGE))
    assert t.in_transaction and t.busy and not t.request_outstanding
    t.frontend(b.query("select 1"), now=2.0)
    records = t.backend(
        b.row_description([("x", 23)]) + b.data_row([b"1"]) + b.command_complete("SELECT 1") + b.ready_for_query("T"),
        now=2.5,
    )
    (query,) = [r for r in records if r.event == "query"]
    assert (query["db.query.text"], query["duration_ms"], query["transaction_status"]) == (
        "select 1",
        500.0,
        "in_transaction",
    )
    assert [r["type"] for r in records if r.event == "message"] == [
        "RowDescription",
        "DataRow",
        "CommandComplete",
        "ReadyForQuery",
    ]


def test_back_to_connection_detail_drops_statements_but_not_the_transaction_status() -> None:
    t = session(detail=Detail.QUERY)
    t.frontend(b.query("begin"), now=1.0)
    t.backend(b.command_complete("BEGIN") + b.ready_for_query("T"), now=1.001)
    assert t.reconfigure(TrackerOptions(detail=Detail.CONNECTION))
    assert t.statements is None and t.in_transaction
    t.frontend(b.query("commit"), now=2.0)
    assert t.request_outstanding
    assert events(t.backend(b.command_complete("COMMIT") + b.ready_for_query("I"), now=2.001)) == []
    assert not t.busy
    (ended,) = t.closed("client_closed", now=3.0)
    assert ended["transaction_status"] == "idle"


def test_new_filters_apply_to_the_session_that_is_open() -> None:
    t = session(detail=Detail.QUERY)
    assert t.reconfigure(TrackerOptions(query_filter=QueryFilter(users=frozenset({"bob"}))))
    t.frontend(b.query("select 1"), now=1.0)
    (rec,) = t.backend(b.command_complete("SELECT 1") + b.ready_for_query("I"), now=1.1)
    assert rec.event == "query" and not rec.logged  # alice is out: counted by metrics, not logged


def test_a_session_still_logging_in_is_not_reconfigured() -> None:
    t = SessionTracker("s1", TrackerOptions(detail=Detail.CONNECTION), clock=lambda: 0.0)
    assert not t.reconfigure(TrackerOptions(detail=Detail.QUERY))
    assert t.statements is None


def test_a_statement_prepared_before_the_switch_is_logged_without_sql_text() -> None:
    t = session(detail=Detail.CONNECTION)
    t.frontend(b.parse("s1", "select $1::int") + b.sync(), now=1.0)
    t.backend(b.message(b"1") + b.ready_for_query("I"), now=1.001)
    assert t.reconfigure(TrackerOptions(detail=Detail.QUERY))
    t.frontend(b.bind("", "s1", (b"7",)) + b.execute() + b.sync(), now=2.0)
    records = t.backend(
        b.message(b"2") + b.data_row([b"7"]) + b.command_complete("SELECT 1") + b.ready_for_query("I"), now=2.002
    )
    (query,) = [r for r in records if r.event == "query"]
    assert query["db.query.text"] is None and query["rows"] == 1 and query["outcome"] == "ok"
