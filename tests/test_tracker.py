"""The sans-IO session tracker: exact records for exact bytes, with an injected clock."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.protocol import build as b
from pgproxy.protocol.build import error_response, startup_message
from pgproxy.tracker.options import QueryFilter, TrackerOptions
from pgproxy.tracker.records import Detail, Record
from pgproxy.tracker.redaction import ParameterMode, RedactionPolicy
from pgproxy.tracker.session import SessionTracker
from pgproxy.tracker.sql import parameter_names, split_statements


def session(**options: Any) -> SessionTracker:
    t = SessionTracker(
        "s1", TrackerOptions(**options), client=("127.0.0.1", 50000), server=("127.0.0.1", 5432), clock=lambda: 0.0
    )
    t.frontend(startup_message({"user": "alice", "database": "app", "application_name": "web"}), now=0.0)
    t.backend(
        b.authentication_ok()
        + b.backend_key_data(4242)
        + b.parameter_status("client_encoding", "UTF8")
        + b.ready_for_query("I"),
        now=0.001,
    )
    return t


def q(records: list[Record]) -> list[tuple[Any, ...]]:
    """The essentials of each query event, in order."""
    return [
        (
            r["db.query.text"],
            r["outcome"],
            r["rows"],
            r.get("duration_ms"),
            r.get("parameters"),
            r["transaction_status"],
        )
        for r in records
        if r.event == "query"
    ]


def test_session_started_and_ready_records() -> None:
    t = SessionTracker("s1", TrackerOptions(detail=Detail.CONNECTION), client=("127.0.0.1", 50000), clock=lambda: 0.0)
    started = t.frontend(startup_message({"user": "alice", "database": "app", "options": "-c x=1"}), now=0.0)
    assert [r.event for r in started] == ["session.started"]
    assert started[0]["user"] == "alice" and started[0]["db.namespace"] == "app"
    assert started[0]["parameters"] == {"options": "-c x=1"}
    ready = t.backend(
        b.authentication_ok()
        + b.parameter_status("server_version", "18.4")
        + b.backend_key_data(7)
        + b.ready_for_query(),
        now=0.0125,
    )
    assert [r.event for r in ready] == ["session.ready"]
    assert ready[0].fields == {
        "session": "s1",
        "user": "alice",
        "db.namespace": "app",
        "backend_pid": 7,
        "auth_method": "trust",
        "server_version": "18.4",
        "parameters": {"server_version": "18.4"},
        "protocol_version": "3.0",
        "setup_ms": 12.5,
    }
    (ended,) = t.closed("client_closed", now=1.0)
    assert ended.event == "session.ended" and ended["duration_ms"] == 1000.0 and ended["backend_pid"] == 7


def test_multi_statement_simple_query() -> None:
    t = session()
    assert t.frontend(b.query("SELECT 1; ; INSERT INTO t VALUES (1); SELECT 'a;b'"), now=1.0) == []
    records = t.backend(
        b.row_description([("?column?", 23)]) + b.data_row([b"1"]) + b.command_complete("SELECT 1"), now=1.002
    )
    records += t.backend(b.command_complete("INSERT 0 1"), now=1.005)
    records += t.backend(
        b.row_description([("?column?", 25)])
        + b.data_row([b"a;b"])
        + b.command_complete("SELECT 1")
        + b.ready_for_query("I"),
        now=1.006,
    )
    # The responses of one Query arrive together: no statement has a duration of
    # its own, the Query's (to its ReadyForQuery) is given once, on the last.
    assert q(records) == [
        ("SELECT 1", "ok", 1, None, None, "idle"),
        ("INSERT INTO t VALUES (1)", "ok", 1, None, None, "idle"),
        ("SELECT 'a;b'", "ok", 1, None, None, "idle"),
    ]
    assert [r.get("batch_duration_ms") for r in records] == [None, None, 6.0]
    assert [r["db.operation.batch.size"] for r in records] == [3, 3, 3]
    assert [r["statement_index"] for r in records] == [0, 1, 2]
    assert [r["db.operation.name"] for r in records] == ["SELECT", "INSERT", "SELECT"]


def test_empty_query_and_error_in_simple_query() -> None:
    t = session()
    t.frontend(b.query(";"), now=0)
    assert q(t.backend(b.message(b"I") + b.ready_for_query(), now=0.001)) == [(";", "empty", 0, 1.0, None, "idle")]
    t.frontend(b.query("SELECT 1/0"), now=1)
    recs = t.backend(error_response("ERROR", "22012", "division by zero") + b.ready_for_query("I"), now=1.004)
    assert q(recs) == [("SELECT 1/0", "error", 0, 4.0, None, "idle")]
    assert recs[0].level == "error"
    assert recs[0]["error"] == {"severity": "ERROR", "sqlstate": "22012", "message": "division by zero"}
    assert recs[0]["db.response.status_code"] == "22012"


def test_extended_unnamed_with_parameters() -> None:
    t = session()
    t.frontend(
        b.parse("", "SELECT * FROM users WHERE id = $1 AND name = $2", (23, 0))
        + b.bind("", "", (b"\x00\x00\x00\x01", b"Demo"), (1, 0))
        + b.describe("P", "")
        + b.execute()
        + b.sync(),
        now=2.0,
    )
    recs = t.backend(
        b.message(b"1")
        + b.message(b"2")
        + b.row_description([("id", 23), ("name", 25)])
        + b.data_row([b"1", b"Demo"])
        + b.command_complete("SELECT 1")
        + b.ready_for_query(),
        now=2.0035,
    )
    assert q(recs) == [("SELECT * FROM users WHERE id = $1 AND name = $2", "ok", 1, 3.5, [1, "Demo"], "idle")]
    assert recs[0]["protocol"] == "extended" and "statement" not in recs[0]


def test_named_statement_reused_a_thousand_times() -> None:
    t = session()
    t.frontend(b.parse("s1", "SELECT $1::int", (23,)) + b.sync(), now=0)
    assert t.backend(b.message(b"1") + b.ready_for_query(), now=0) == []
    events = []
    for i in range(1000):
        t.frontend(b.bind("", "s1", (str(i).encode(),)) + b.execute() + b.sync(), now=float(i))
        events += t.backend(
            b.message(b"2") + b.data_row([str(i).encode()]) + b.command_complete("SELECT 1") + b.ready_for_query(),
            now=i + 0.001,
        )
    assert len(events) == 1000
    assert all(e["db.query.text"] == "SELECT $1::int" and e["statement"] == "s1" for e in events)
    assert [e["parameters"] for e in events[:3]] == [[0], [1], [2]]
    assert events[-1]["parameters"] == [999]


def test_pipeline_of_fifty_with_an_error_in_the_middle() -> None:
    t = session()
    request = b"".join(b.parse("", f"SELECT {i}") + b.bind("", "") + b.execute() for i in range(50)) + b.sync()
    t.frontend(request, now=0)
    response = b""
    for i in range(24):
        response += b.message(b"1") + b.message(b"2") + b.data_row([str(i).encode()]) + b.command_complete("SELECT 1")
    response += b.message(b"1") + b.message(b"2") + error_response("ERROR", "22012", "division by zero")
    response += b.ready_for_query("I")
    recs = [r for r in t.backend(response, now=0.010) if r.event == "query"]
    assert [r["outcome"] for r in recs] == ["ok"] * 24 + ["error"] + ["skipped"] * 25
    assert recs[24]["db.query.text"] == "SELECT 24"
    assert [r["db.query.text"] for r in recs[25:27]] == ["SELECT 25", "SELECT 26"]


def test_portal_fetched_in_batches_is_one_statement() -> None:
    t = session()
    t.frontend(b.query("BEGIN"), now=0)
    t.backend(b.command_complete("BEGIN") + b.ready_for_query("T"), now=0)
    t.frontend(
        b.parse("", "SELECT g FROM generate_series(1,5) g")
        + b.bind("cur", "")
        + b.describe("P", "cur")
        + b.execute("cur", 2)
        + b.sync(),
        now=1.0,
    )
    recs = t.backend(
        b.message(b"1")
        + b.message(b"2")
        + b.row_description([("g", 23)])
        + b.data_row([b"1"])
        + b.data_row([b"2"])
        + b.message(b"s")
        + b.ready_for_query("T"),
        now=1.001,
    )
    assert q(recs) == []
    t.frontend(b.execute("cur", 2) + b.sync(), now=2.0)
    assert (
        q(t.backend(b.data_row([b"3"]) + b.data_row([b"4"]) + b.message(b"s") + b.ready_for_query("T"), now=2.001))
        == []
    )
    t.frontend(b.execute("cur", 2) + b.sync(), now=3.0)
    recs = t.backend(b.data_row([b"5"]) + b.command_complete("SELECT 1") + b.ready_for_query("T"), now=3.0)
    assert q(recs) == [("SELECT g FROM generate_series(1,5) g", "ok", 1, 2000.0, [], "in_transaction")]
    assert recs[0]["db.response.returned_rows"] == 5 and recs[0]["executes"] == 3 and recs[0]["portal"] == "cur"


def test_copy_in_and_out() -> None:
    t = session()
    t.frontend(b.query("COPY t FROM STDIN"), now=0)
    t.backend(b.copy_response(b"G", 2), now=0.001)
    t.frontend(b.copy_data(b"1\tone\n") + b.copy_data(b"2\ttwo\n") + b.copy_done(), now=0.002)
    recs = t.backend(b.command_complete("COPY 2") + b.ready_for_query(), now=0.003)
    assert q(recs) == [("COPY t FROM STDIN", "ok", 2, 3.0, None, "idle")]
    assert recs[0]["copy"] == {"direction": "in", "messages": 2, "bytes": 12}
    t.frontend(b.query("COPY t TO STDOUT"), now=1)
    recs = t.backend(
        b.copy_response(b"H", 2)
        + b.copy_data(b"1\tone\n")
        + b.copy_done()
        + b.command_complete("COPY 1")
        + b.ready_for_query(),
        now=1.001,
    )
    assert recs[0]["copy"] == {"direction": "out", "messages": 1, "bytes": 6} and recs[0]["rows"] == 1


def test_transaction_rolled_back() -> None:
    t = session()
    recs: list[Record] = []
    for sql, reply, status in [
        ("BEGIN", b.command_complete("BEGIN"), "T"),
        ("INSERT INTO t VALUES (1)", b.command_complete("INSERT 0 1"), "T"),
        ("SELECT nope", error_response("ERROR", "42703", 'column "nope" does not exist'), "E"),
        ("ROLLBACK", b.command_complete("ROLLBACK"), "I"),
    ]:
        t.frontend(b.query(sql), now=0)
        recs += t.backend(reply + b.ready_for_query(status), now=0)
    assert [(r["db.query.text"], r["outcome"], r["transaction_status"]) for r in recs] == [
        ("BEGIN", "ok", "in_transaction"),
        ("INSERT INTO t VALUES (1)", "ok", "in_transaction"),
        ("SELECT nope", "error", "failed_transaction"),
        ("ROLLBACK", "ok", "idle"),
    ]


def test_notices_and_notifications_are_their_own_events() -> None:
    t = session()
    t.frontend(b.query("DO $$ BEGIN RAISE WARNING 'careful'; END $$"), now=0)
    recs = t.backend(
        b.notice_response("WARNING", "01000", "careful")
        + b.command_complete("DO")
        + b.notification_response(99, "chan", "hello")
        + b.ready_for_query(),
        now=0.001,
    )
    assert [(r.event, r.level) for r in recs] == [("notice", "warning"), ("notification", "info"), ("query", "info")]
    assert recs[0]["message"] == "careful" and recs[0]["sqlstate"] == "01000"
    assert (recs[1]["channel"], recs[1]["payload"], recs[1]["sender_pid"]) == ("chan", "hello", 99)


def test_slow_statement_is_a_warning() -> None:
    t = session(slow_query_ms=100.0)
    t.frontend(b.query("SELECT pg_sleep(1)"), now=0)
    (rec,) = t.backend(b.command_complete("SELECT 1") + b.ready_for_query(), now=0.25)
    assert rec.level == "warning" and rec["slow"] is True and rec["duration_ms"] == 250.0


def test_filters_and_sampling() -> None:
    draws = iter([0.9, 0.1, 0.9, 0.1])
    t = session(query_filter=QueryFilter(sql_pattern="^select", sample_rate=0.5), draw=lambda: next(draws))
    out = []
    for i in range(4):
        t.frontend(b.query(f"SELECT {i}"), now=0)
        out += t.backend(b.command_complete("SELECT 1") + b.ready_for_query(), now=0)
    t.frontend(b.query("UPDATE t SET a = 1"), now=0)
    out += t.backend(b.command_complete("UPDATE 0") + b.ready_for_query(), now=0)
    t.frontend(b.query("SELECT 1/0"), now=0)
    out += t.backend(error_response("ERROR", "22012", "division by zero") + b.ready_for_query(), now=0)
    # Every statement has its record (metrics and statistics count it); the filter marks what the log writes.
    assert [r["db.query.text"] for r in out] == [*(f"SELECT {i}" for i in range(4)), "UPDATE t SET a = 1", "SELECT 1/0"]
    assert [r["db.query.text"] for r in out if r.logged] == ["SELECT 1", "SELECT 3", "SELECT 1/0"]
    assert "logged" not in out[0]  # a decision, not a field
    other = SessionTracker("s2", TrackerOptions(query_filter=QueryFilter(users=frozenset({"bob"}))), clock=lambda: 0.0)
    other.frontend(startup_message({"user": "alice"}), now=0)
    other.backend(b.authentication_ok() + b.ready_for_query(), now=0)
    other.frontend(b.query("SELECT 1"), now=0)
    (out_of_scope,) = other.backend(b.command_complete("SELECT 1") + b.ready_for_query(), now=0)
    assert out_of_scope["db.query.text"] == "SELECT 1" and not out_of_scope.logged


def _select_user_with_hash(t: SessionTracker) -> list[Record]:
    t.frontend(b.query("SELECT username, hashed_password FROM users"), now=0)
    return t.backend(
        b.row_description([("username", 25), ("hashed_password", 25)])
        + b.data_row([b"Demo", b"pbkdf2:sha256:SECRET"])
        + b.command_complete("SELECT 1")
        + b.ready_for_query(),
        now=0,
    )


def test_sensitive_parameters_and_columns_are_masked() -> None:
    t = session(detail=Detail.MESSAGE)
    t.frontend(
        b.parse("", "INSERT INTO users (username, email, hashed_password) VALUES ($1, $2, $3)")
        + b.bind("", "", (b"Demo", b"demo@aa.io", b"pbkdf2:sha256:SECRET"))
        + b.execute()
        + b.sync(),
        now=0,
    )
    recs = t.backend(b.message(b"1") + b.message(b"2") + b.command_complete("INSERT 0 1") + b.ready_for_query(), now=0)
    (query,) = [r for r in recs if r.event == "query"]
    assert query["parameters"] == ["Demo", "demo@aa.io", "[redacted]"]
    recs = _select_user_with_hash(t)
    (row,) = [r for r in recs if r.get("type") == "DataRow"]
    assert row["row"] == {"username": "Demo", "hashed_password": "[redacted]"}


def test_wire_detail_hex_dumps_mask_secrets() -> None:
    t = session(detail=Detail.WIRE)
    recs = _select_user_with_hash(t)
    dumps = "\n".join(r.get("hex", "") for r in recs)
    assert "Demo" in dumps and "SECRET" not in dumps and "pbkdf2" not in dumps
    assert re.search(r"^0000  44 00 00 00", dumps, re.M)  # the DataRow header stays readable


def test_parameter_modes_hash_and_hide() -> None:
    for mode, expected in ((ParameterMode.HIDE, "[redacted]"), (ParameterMode.HASH, "hmac-sha256:")):
        t = session(redaction=RedactionPolicy(parameters=mode))
        t.frontend(b.parse("", "SELECT $1") + b.bind("", "", (b"42",)) + b.execute() + b.sync(), now=0)
        (rec,) = t.backend(
            b.message(b"1") + b.message(b"2") + b.command_complete("SELECT 1") + b.ready_for_query(), now=0
        )
        assert str(rec["parameters"][0]).startswith(expected)


@pytest.mark.parametrize("detail", [Detail.QUERY, Detail.MESSAGE])
def test_parameters_decode_by_the_encoding_and_time_zone_the_server_reported(detail: Detail) -> None:
    """At login and after a change; a malformed ParameterStatus changes nothing and is reported."""
    t = SessionTracker("s1", TrackerOptions(detail=detail), clock=lambda: 0.0)
    t.frontend(startup_message({"user": "alice", "database": "app"}), now=0.0)
    t.backend(
        b.authentication_ok()
        + b.parameter_status("client_encoding", "LATIN1")
        + b.parameter_status("TimeZone", "Asia/Tokyo")
        + b.ready_for_query(),
        now=0.0,
    )
    epoch_2000 = (0).to_bytes(8, "big")  # binary timestamptz: microseconds since 2000-01-01 UTC

    def parameters() -> list[Any]:
        t.frontend(
            b.parse("", "SELECT $1, $2", (25, 1184))
            + b.bind("", "", ("héllo".encode("latin-1"), epoch_2000), (0, 1))
            + b.execute()
            + b.sync(),
            now=0,
        )
        records = t.backend(b.message(b"1") + b.message(b"2") + b.command_complete("SELECT 1") + b.ready_for_query())
        (query,) = [r for r in records if r.event == "query"]
        return list(query["parameters"])

    assert parameters() == ["héllo", "2000-01-01 09:00:00+09"]
    malformed = b.message(b"S", b"TimeZone\x00UTC")  # the value's terminator is missing
    anomalies = t.backend(b.parameter_status("TimeZone", "America/New_York") + malformed + b.ready_for_query("I"))
    assert [r["kind"] for r in anomalies if r.event == "session.anomaly"] == ["malformed"]
    assert parameters() == ["héllo", "1999-12-31 19:00:00-05"]


def test_session_end_reports_statements_in_flight() -> None:
    t = session()
    t.frontend(b.query("SELECT pg_sleep(100)"), now=0)
    recs = t.closed("client_closed", now=5.0)
    assert [(r.event, r.get("outcome")) for r in recs] == [("query", "interrupted"), ("session.ended", None)]
    assert recs[0]["duration_ms"] == 5000.0


def test_sql_helpers() -> None:
    assert split_statements("select 1; select ';'; /* ; */ select $x$;$x$") == [
        "select 1",
        "select ';'",
        "/* ; */ select $x$;$x$",
    ]
    assert split_statements("select 'unterminated") is None
    assert parameter_names("UPDATE users SET password = $1 WHERE id = $2") == {1: "password", 2: "id"}
    assert parameter_names('INSERT INTO t (a, "Secret") VALUES ($1, $2), ($3, $4)') == {
        1: "a",
        2: "Secret",
        3: "a",
        4: "Secret",
    }
    # The VALUES list is read with the lexer's quote rules: an escaped quote in E'...' does not end the literal.
    assert parameter_names("INSERT INTO users (note, password) VALUES (E'it\\'s, (x', $1)") == {1: "password"}
    assert parameter_names("INSERT INTO users (note, password) VALUES ('it''s, (x', $1)") == {1: "password"}


def test_function_call_is_one_statement() -> None:
    t = session()
    args = (b"\x00\x00\x00\x2a",)
    body = (1234).to_bytes(4, "big") + b"\x00\x01\x00\x01" + b"\x00\x01" + len(args[0]).to_bytes(4, "big") + args[0]
    t.frontend(b.message(b"F", body + b"\x00\x01"), now=0)
    recs = t.backend(b.message(b"V", (4).to_bytes(4, "big") + b"\x00\x00\x00\x54") + b.ready_for_query(), now=0.002)
    assert q(recs) == [
        ("<function call oid=1234>", "ok", 0, 2.0, [{"oid": 0, "format": "binary", "hex": "0000002a"}], "idle")
    ]
    assert recs[0]["protocol"] == "function"


def test_statement_splitting_respects_every_quoting_form() -> None:
    assert split_statements("select 'a''b;c'; select E'x\\\\'; select 2") == [
        "select 'a''b;c'",
        "select E'x\\\\'",
        "select 2",
    ]
    assert split_statements('select E\'it\\\'s;\'; select "a""b;"') == ["select E'it\\'s;'", 'select "a""b;"']
    assert split_statements("select 1 -- trailing; comment\n; select /* a /* nested; */ one */ 2") == [
        "select 1 -- trailing; comment",
        "select /* a /* nested; */ one */ 2",
    ]
    assert split_statements("select $tag$ ; $notend$ ; $tag$") == ["select $tag$ ; $notend$ ; $tag$"]
    assert split_statements('select "unterminated') is None


def test_credentials_are_withheld_in_records_before_any_sink() -> None:
    """The tracker itself withholds secrets (the sink's key scrub is only a second line)."""
    t = SessionTracker("s1", TrackerOptions(detail=Detail.WIRE), clock=lambda: 0.0)
    t.frontend(startup_message({"user": "alice"}), now=0)
    t.backend(b.message(b"R", (3).to_bytes(4, "big")), now=0)  # AuthenticationCleartextPassword
    (pw,) = [r for r in t.frontend(b.message(b"p", b"Sup3r-Secret\0"), now=0) if r.event == "message"]
    assert pw["type"] == "PasswordMessage" and pw["password"] == "[redacted]"
    assert "Sup3r-Secret" not in str(pw.fields) and "53 75 70 33" not in pw["hex"]
    t.backend(b.message(b"R", (10).to_bytes(4, "big") + b"SCRAM-SHA-256\0\0"), now=0)  # AuthenticationSASL
    first = b"n,,n=,r=abcdefghijkl"
    body = b"SCRAM-SHA-256\0" + len(first).to_bytes(4, "big") + first
    (sasl,) = [r for r in t.frontend(b.message(b"p", body), now=0) if r.event == "message"]
    assert sasl["type"] == "SASLInitialResponse" and sasl["data"] == "[redacted]"
    assert sasl["mechanism"] == "SCRAM-SHA-256" and first.hex() not in str(sasl.fields)


def test_error_answering_sync_does_not_eat_the_next_pipeline() -> None:
    """A deferred constraint fails at the implicit commit, in answer to Sync itself."""
    t = session()
    t.frontend(b.parse("", "INSERT INTO t VALUES (1)") + b.bind("", "") + b.execute() + b.sync(), now=0)
    t.frontend(b.parse("", "SELECT 2") + b.bind("", "") + b.execute() + b.sync(), now=0)
    recs = t.backend(
        b.message(b"1")
        + b.message(b"2")
        + b.command_complete("INSERT 0 1")
        + error_response("ERROR", "23503", "insert violates foreign key constraint")
        + b.ready_for_query("I")
        + b.message(b"1")
        + b.message(b"2")
        + b.data_row([b"2"])
        + b.command_complete("SELECT 1")
        + b.ready_for_query("I"),
        now=0.001,
    )
    assert [(r["db.query.text"], r["outcome"]) for r in recs] == [
        ("INSERT INTO t VALUES (1)", "ok"),
        ("<implicit commit at Sync>", "error"),
        ("SELECT 2", "ok"),
    ]
    assert recs[1]["db.response.status_code"] == "23503"


def _connected(detail: Detail) -> SessionTracker:
    t = SessionTracker("s1", TrackerOptions(detail=detail), clock=lambda: 0.0)
    t.frontend(startup_message({"user": "alice", "database": "app"}), now=0.0)
    return t


def test_busy_in_transaction_and_backend_pid_agree_at_every_detail_level() -> None:
    for detail in Detail:
        t = _connected(detail)
        assert t.busy and not t.request_outstanding and t.backend_pid is None  # logging in
        t.backend(b.authentication_ok() + b.backend_key_data(4242) + b.ready_for_query("I"), now=0.001)
        assert (t.busy, t.in_transaction, t.backend_pid) == (False, False, 4242), detail
        t.frontend(b.query("begin"), now=0.002)
        assert t.busy and t.request_outstanding, detail
        t.backend(b.command_complete("BEGIN") + b.ready_for_query("T"), now=0.003)
        assert (t.busy, t.request_outstanding, t.in_transaction) == (True, False, True), detail
        t.frontend(b.parse("", "select 1") + b.bind("", "") + b.execute() + b.flush(), now=0.004)
        assert t.request_outstanding, detail  # no Sync yet: the steps are under way
        t.backend(b.message(b"1") + b.message(b"2") + b.data_row([b"1"]) + b.command_complete("SELECT 1"), now=0.005)
        t.frontend(b.sync(), now=0.006)
        assert t.request_outstanding, detail
        t.backend(b.ready_for_query("E"), now=0.007)
        assert (t.request_outstanding, t.in_transaction) == (False, True), detail
        # Two requests pipelined: the first answer does not make the session idle.
        t.frontend(b.query("rollback") + b.query("select 1"), now=0.008)
        t.backend(b.command_complete("ROLLBACK") + b.ready_for_query("I"), now=0.009)
        assert t.request_outstanding and not t.in_transaction, detail
        t.backend(b.data_row([b"1"]) + b.command_complete("SELECT 1") + b.ready_for_query("I"), now=0.010)
        assert not t.busy, detail
        (ended,) = [r for r in t.closed("client_closed", now=1.0) if r.event == "session.ended"]
        assert ended["transaction_status"] == "idle", detail


def _error(sqlstate: str, text: str, position: int | None = None) -> bytes:
    body = b"SERROR\x00VERROR\x00C" + sqlstate.encode() + b"\x00M" + text.encode() + b"\x00"
    if position is not None:
        body += b"P" + str(position).encode() + b"\x00"
    return b.message(b"E", body + b"\x00")


def test_statement_failing_at_bind_is_one_event_with_its_sql_and_parameters() -> None:
    """psycopg: ``select id from t where id = %s::int`` with "abc" fails at Bind."""
    t = session()
    t.frontend(
        b.parse("", "select id from t where id = $1::int")
        + b.bind("", "", (b"abc",))
        + b.describe("P", "")
        + b.execute()
        + b.sync(),
        now=1.0,
    )
    recs = t.backend(
        b.message(b"1") + _error("22P02", 'invalid input syntax for type integer: "abc"') + b.ready_for_query(),
        now=1.002,
    )
    assert q(recs) == [("select id from t where id = $1::int", "error", 0, 2.0, ["abc"], "idle")]
    assert recs[0]["db.response.status_code"] == "22P02"


def test_prepared_statement_failing_at_bind_names_the_statement() -> None:
    """asyncpg: ``fetchval("select 1/$1::int", 0)`` is evaluated while planning, at Bind."""
    t = session()
    t.frontend(
        b.parse("__asyncpg_stmt_1__", "select 1/$1::int", (23,)) + b.describe("S", "__asyncpg_stmt_1__") + b.sync(),
        now=0,
    )
    assert (
        t.backend(
            b.message(b"1") + b.message(b"t", b"\x00\x01\x00\x00\x00\x17") + b.message(b"n") + b.ready_for_query(),
            now=0,
        )
        == []
    )
    t.frontend(b.bind("", "__asyncpg_stmt_1__", (b"\x00\x00\x00\x00",), (1,)) + b.execute("", 2) + b.sync(), now=1.0)
    recs = t.backend(_error("22012", "division by zero") + b.ready_for_query(), now=1.003)
    assert q(recs) == [("select 1/$1::int", "error", 0, 3.0, [0], "idle")]
    assert recs[0]["statement"] == "__asyncpg_stmt_1__"


def test_statement_failing_at_parse_is_one_event() -> None:
    t = session()
    t.frontend(b.parse("", "selec 1") + b.bind("", "") + b.describe("P", "") + b.execute() + b.sync(), now=1.0)
    recs = t.backend(_error("42601", 'syntax error at or near "selec"', 1) + b.ready_for_query(), now=1.001)
    assert q(recs) == [("selec 1", "error", 0, 1.0, [], "idle")]


def test_portal_suspended_then_closed_by_sync_is_ok() -> None:
    """asyncpg fetchrow: Execute with a row limit, PortalSuspended, Sync ends the transaction."""
    t = session()
    t.frontend(
        b.parse("", "select g from generate_series(1, 5) g") + b.bind("", "") + b.execute("", 1) + b.sync(), now=1.0
    )
    recs = t.backend(
        b.message(b"1") + b.message(b"2") + b.data_row([b"1"]) + b.message(b"s") + b.ready_for_query("I"),
        now=1.002,
    )
    assert q(recs) == [("select g from generate_series(1, 5) g", "ok", 1, 2.0, [], "idle")]
    assert recs[0]["portal_suspended"] is True
    # Inside a transaction block the unnamed portal lives until it is bound again.
    t.frontend(b.query("begin"), now=2.0)
    t.backend(b.command_complete("BEGIN") + b.ready_for_query("T"), now=2.0)
    t.frontend(b.parse("", "select 1") + b.bind("", "") + b.execute("", 1) + b.sync(), now=3.0)
    assert (
        t.backend(
            b.message(b"1") + b.message(b"2") + b.data_row([b"1"]) + b.message(b"s") + b.ready_for_query("T"), now=3.004
        )
        == []
    )
    t.frontend(b.parse("", "select 2") + b.bind("", "") + b.execute() + b.sync(), now=4.0)
    recs = t.backend(
        b.message(b"1")
        + b.message(b"2")
        + b.data_row([b"2"])
        + b.command_complete("SELECT 1")
        + b.ready_for_query("T"),
        now=4.001,
    )
    assert q(recs) == [
        ("select 1", "ok", 1, 4.0, [], "in_transaction"),
        ("select 2", "ok", 1, 1.0, [], "in_transaction"),
    ]
    assert recs[0]["portal_suspended"] is True and "portal_suspended" not in recs[1]


def test_portal_left_open_at_session_end_is_suspended() -> None:
    t = session()
    t.frontend(b.query("begin"), now=0)
    t.backend(b.command_complete("BEGIN") + b.ready_for_query("T"), now=0)
    t.frontend(b.parse("", "select 1") + b.bind("c1", "") + b.execute("c1", 1) + b.sync(), now=1.0)
    t.backend(
        b.message(b"1") + b.message(b"2") + b.data_row([b"1"]) + b.message(b"s") + b.ready_for_query("T"), now=1.001
    )
    recs = t.closed("client_closed", now=9.0)
    assert [(r.event, r.get("outcome")) for r in recs] == [("query", "suspended"), ("session.ended", None)]
    assert recs[0]["duration_ms"] == 1.0 and recs[0]["rows"] == 1


def test_error_in_a_multi_statement_query_rolls_back_and_skips() -> None:
    """``select 1; insert ...; select 1/0; select 3``: the INSERT was rolled back, ``select 3`` never ran."""
    t = session()
    t.frontend(b.query("select 1; insert into t values (1); select 1/0; select 3"), now=1.0)
    recs = t.backend(
        b.row_description([("?column?", 23)])
        + b.data_row([b"1"])
        + b.command_complete("SELECT 1")
        + b.command_complete("INSERT 0 1")
        + _error("22012", "division by zero")
        + b.ready_for_query("I"),
        now=1.005,
    )
    assert [(r["db.query.text"], r["outcome"], r.get("rolled_back")) for r in recs] == [
        ("select 1", "ok", True),
        ("insert into t values (1)", "ok", True),
        ("select 1/0", "error", None),
        ("select 3", "skipped", None),
    ]
    assert recs[-1]["batch_duration_ms"] == 5.0 and recs[2]["db.response.status_code"] == "22012"
    assert [r.get("duration_ms") for r in recs] == [None] * 4


def test_transaction_control_inside_a_multi_statement_query() -> None:
    """COMMIT ends the implicit block; BEGIN makes it explicit (a failed block, not yet rolled back)."""
    t = session()
    t.frontend(b.query("begin; insert into t values (1); commit; insert into t values (2); select 1/0"), now=0)
    recs = t.backend(
        b.command_complete("BEGIN")
        + b.command_complete("INSERT 0 1")
        + b.command_complete("COMMIT")
        + b.command_complete("INSERT 0 1")
        + _error("22012", "division by zero")
        + b.ready_for_query("I"),
        now=0.001,
    )
    assert [r.get("rolled_back") for r in recs] == [None, None, None, True, None]
    t.frontend(b.query("insert into t values (3); begin; insert into t values (4); select 1/0; commit"), now=1)
    recs = t.backend(
        b.command_complete("INSERT 0 1")
        + b.command_complete("BEGIN")
        + b.command_complete("INSERT 0 1")
        + _error("22012", "division by zero")
        + b.ready_for_query("E"),
        now=1.001,
    )
    assert [(r["outcome"], r.get("rolled_back")) for r in recs] == [
        ("ok", None),
        ("ok", None),
        ("ok", None),
        ("error", None),
        ("skipped", None),
    ]
    assert {r["transaction_status"] for r in recs} == {"failed_transaction"}


def test_syntax_error_in_a_later_statement_is_attributed_by_position() -> None:
    """PostgreSQL parses the whole string first: nothing ran, the error is in ``selec 2``."""
    t = session()
    sql = "select 1 as s1; selec 2; select 3 as s3"
    t.frontend(b.query(sql), now=0)
    recs = t.backend(
        _error("42601", 'syntax error at or near "selec"', sql.index("selec 2") + 1) + b.ready_for_query(), now=0.001
    )
    assert [(r["db.query.text"], r["outcome"], r["statement_index"]) for r in recs] == [
        ("select 1 as s1", "skipped", 0),
        ("selec 2", "error", 1),
        ("select 3 as s3", "skipped", 2),
    ]


def test_error_in_a_pipeline_marks_what_the_implicit_transaction_rolled_back() -> None:
    t = session()
    t.frontend(
        b.parse("", "insert into t values (1)")
        + b.bind("", "")
        + b.execute()
        + b.parse("", "select 1/0")
        + b.bind("", "")
        + b.execute()
        + b.sync(),
        now=0,
    )
    recs = t.backend(
        b.message(b"1")
        + b.message(b"2")
        + b.command_complete("INSERT 0 1")
        + b.message(b"1")
        + b.message(b"2")
        + _error("22012", "division by zero")
        + b.ready_for_query(),
        now=0.001,
    )
    assert [(r["outcome"], r.get("rolled_back")) for r in recs] == [("ok", True), ("error", None)]
    # Separate Syncs commit separately: nothing to mark.
    t.frontend(b.parse("", "insert into t values (2)") + b.bind("", "") + b.execute() + b.sync(), now=1)
    t.frontend(b.parse("", "select 1/0") + b.bind("", "") + b.execute() + b.sync(), now=1)
    recs = t.backend(
        b.message(b"1")
        + b.message(b"2")
        + b.command_complete("INSERT 0 1")
        + b.ready_for_query()
        + b.message(b"1")
        + b.message(b"2")
        + _error("22012", "division by zero")
        + b.ready_for_query(),
        now=1.001,
    )
    assert [(r["outcome"], r.get("rolled_back")) for r in recs] == [("ok", None), ("error", None)]


def test_pending_requests_are_bounded_and_the_session_drains_back() -> None:
    t = session()
    assert t.statements is not None
    t.statements.max_pending = 5
    anomalies = [r for r in t.frontend(b.query("select 1") * 20, now=0) if r.event == "session.anomaly"]
    assert len(anomalies) == 1 and anomalies[0]["kind"] == "pending_limit"
    assert t.busy and t.request_outstanding
    answer = (
        b.row_description([("?column?", 23)])
        + b.data_row([b"1"])
        + b.command_complete("SELECT 1")
        + b.ready_for_query()
    )
    recs = t.backend(answer * 20, now=0.001)
    assert len([r for r in recs if r.event == "query"]) == 5
    assert not t.busy and t.statements.untracked is None and t.statements.executed == 20
    t.frontend(b.query("select 2"), now=1)
    assert q(t.backend(answer, now=1.001)) == [("select 2", "ok", 1, 1.0, None, "idle")]


def test_statements_interrupted_by_the_session_end_are_one_event_with_a_count() -> None:
    t = session()
    t.frontend(b.query("select pg_sleep(100)") + b.query("select 2; select 3") * 50, now=0)
    recs = t.closed("client_closed", now=5.0)
    assert [(r.event, r.get("outcome")) for r in recs] == [("query", "interrupted"), ("session.ended", None)]
    assert recs[0]["db.query.text"] == "select pg_sleep(100)" and recs[0]["interrupted_statements"] == 101


def test_between_messages_is_false_while_either_direction_has_half_a_message() -> None:
    for detail in Detail:
        t = _connected(detail)
        t.backend(b.authentication_ok() + b.backend_key_data(4242) + b.ready_for_query("I"), now=0.001)
        assert t.between_messages, detail
        request = b.query("select 1")
        t.frontend(request[:3], now=0.002)
        assert not t.between_messages, detail
        t.frontend(request[3:], now=0.003)
        answer = b.data_row([b"1"]) + b.command_complete("SELECT 1") + b.ready_for_query("I")
        t.backend(answer[:7], now=0.004)
        assert not t.between_messages, detail
        t.backend(answer[7:], now=0.005)
        assert t.between_messages and not t.busy, detail


def test_transaction_blocks_are_followed_even_when_their_events_are_filtered_out() -> None:
    t = session(query_filter=QueryFilter(sql_pattern="insert"))
    steps = b"".join(
        b.parse("", sql) + b.bind("", "") + b.execute() for sql in ("begin", "insert into t values (1)", "select 1/0")
    )
    t.frontend(steps + b.sync(), now=0)
    recs = t.backend(
        b.message(b"1")
        + b.message(b"2")
        + b.command_complete("BEGIN")
        + b.message(b"1")
        + b.message(b"2")
        + b.command_complete("INSERT 0 1")
        + b.message(b"1")
        + b.message(b"2")
        + _error("22012", "division by zero")
        + b.ready_for_query("E"),
        now=0.001,
    )
    # The block is failed, not rolled back yet: the client's ROLLBACK will do that.
    assert [(r["db.query.text"], r["outcome"], r.get("rolled_back")) for r in recs if r.logged] == [
        ("insert into t values (1)", "ok", None),
    ]


def test_a_reload_keeps_the_value_cap_that_stops_decoding_long_arrays() -> None:
    """A reload rebuilds the decoders: with the cap of the new options, not without one."""
    options = {"detail": Detail.QUERY, "max_value_chars": 20}
    t = session(**options)
    t.frontend(b.parse("s", "SELECT $1::int4[]", (1007,)) + b.sync(), now=1.0)
    t.backend(b.message(b"1") + b.ready_for_query(), now=1.1)
    array = ("{" + ",".join(str(n) for n in range(500)) + "}").encode()

    def bound_parameters(now: float) -> Any:
        t.frontend(b.bind("", "s", (array,)) + b.execute() + b.sync(), now=now)
        records = t.backend(b.message(b"2") + b.command_complete("SELECT 0") + b.ready_for_query(), now=now + 0.1)
        (record,) = [r for r in records if r.event == "query"]
        return record.fields["parameters"]

    before = bound_parameters(2.0)
    assert t.reconfigure(TrackerOptions(**options))
    assert bound_parameters(3.0) == before


_LOGIN_STATUSES = [("client_encoding", "UTF8"), ("client_encoding", "LATIN1"), ("TimeZone", "Europe/Paris")]
_LOGIN_STATUSES += [("DateStyle", "ISO, MDY"), ("server_version", "18.4"), ("application_name", "caf\u00e9")]


def _in_order(value: Any) -> Any:
    return list(value.items()) if isinstance(value, dict) else value


def _logins(detail: Detail, logins: list[list[bytes]], general: bool, pipelined: bool = False) -> list[Any]:
    """Logins answered by the server's chunks in ``logins`` (one list per login), each then a statement.

    Records, counts and state per login. ``general``: the chunks as bytearrays,
    for which no known ParameterStatus run or login answer is taken (those are
    for bytes only). The kept runs and answers are forgotten first, so the
    first login of a call is always read the general way.
    """
    from pgproxy.protocol import wire

    for kept in (wire._known_answers, wire._answers_seen, wire._known_runs, wire._runs_seen):
        kept.clear()
    outcome: list[Any] = []
    for login, chunks in enumerate(logins):
        t = SessionTracker(f"s{login}", TrackerOptions(detail=detail), client=("127.0.0.1", 50000), clock=lambda: 0.0)
        records = t.frontend(startup_message({"user": "alice", "database": "app"}), now=0.0)
        if pipelined:  # a client that does not wait for ReadyForQuery: the login's ReadyForQuery answers nothing
            records += t.frontend(b.query("SELECT 1"), now=0.0005)
        for chunk in chunks:
            records += t.backend(bytearray(chunk) if general else chunk, now=0.001)  # type: ignore[arg-type]
        # Its parameter decodes by the client_encoding the login reported (before any later server chunk).
        request = b.parse("", "SELECT $1::text") + b.bind("", "", (b"caf\xe9 \xc3\xa9",)) + b.execute() + b.sync()
        records += t.frontend(request, now=0.002)
        reply = b.message(b"1") + b.message(b"2") + b.data_row([b"x"]) + b.command_complete("SELECT 1")
        records += t.backend(reply + b.ready_for_query(), now=0.004)
        records += t.closed("client_closed", now=0.005)
        value_context = None if t.statements is None else t.statements.value_context
        outcome.append(
            (
                # nested dicts (session.ready's parameters) in order too: the line's order
                [(r.event, r.level, [(k, _in_order(v)) for k, v in r.fields.items()]) for r in records],
                t.messages_from_server,
                t.in_transaction,
                t.backend_pid,
                t.cancel_key,
                dict(t.conv.parameters),
                t.conv.encoding,
                t.startup_wait(),
                None if value_context is None else (value_context.encoding, value_context.timezone),
            )
        )
    return outcome


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(_LOGIN_STATUSES), min_size=1, max_size=6),
    st.sampled_from([b"", b.message(b"S", b"x\x00y\x00z\x00")]),
    st.booleans(),
    st.sampled_from([Detail.CONNECTION, Detail.QUERY]),
)
def test_a_login_with_a_known_parameter_run_gives_the_general_records(
    statuses: list[tuple[str, str]], odd: bytes, split: bool, detail: Detail
) -> None:
    """Conversation.receive_login_backend leaves a known run's frames out and counts them: same records and counts.

    The general path is the same chunks as bytearrays (the known run is taken
    for bytes only); a malformed ParameterStatus after the run sends the chunk
    the general way, and so does a run split from its tail.
    """
    run = b"".join(b.parameter_status(name, value) for name, value in statuses)
    tail = odd + b.backend_key_data(4242) + b.ready_for_query()
    chunks = [b.authentication_ok() + run, tail] if split else [b.authentication_ok() + run + tail]
    assert _logins(detail, [chunks] * 3, general=False) == _logins(detail, [chunks] * 3, general=True)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(_LOGIN_STATUSES), max_size=6),
    st.lists(st.integers(min_value=-(2**31), max_value=2**31 - 1), min_size=3, max_size=3),
    st.sampled_from("ITE"),
    st.booleans(),
    st.sampled_from([Detail.CONNECTION, Detail.QUERY]),
)
def test_a_known_login_answer_gives_the_general_records(
    statuses: list[tuple[str, str]], pids: list[int], status: str, pipelined: bool, detail: Detail
) -> None:
    """A login answer the conversation knew (wire.LoginAnswer) is followed without frames: same records, counts, state.

    Logins differ in BackendKeyData only; the third is known. The general way is
    the same chunks as bytearrays (the known answer is taken for bytes only).
    """
    run = b"".join(b.parameter_status(name, value) for name, value in statuses)
    answers = [
        b.authentication_ok()
        + run
        + b.backend_key_data(pid, pid.to_bytes(4, "big", signed=True)[::-1])
        + b.ready_for_query(status)
        for pid in pids
    ]
    from pgproxy.protocol import wire

    fast = _logins(detail, [[answer] for answer in answers], general=False, pipelined=pipelined)
    assert len(wire._known_answers) == 1  # learnt at the second login, taken at the third
    assert fast == _logins(detail, [[answer] for answer in answers], general=True, pipelined=pipelined)


def test_sessions_answered_by_one_known_login_answer_share_their_parameters() -> None:
    """session.ready's parameters: one dict for every session of a known answer, the conversation's in its order.

    Not when the server reported a parameter before the answer (then the
    conversation's parameters are more than the answer's): that session gets
    a copy of its own, with every parameter.
    """
    answer = b.authentication_ok() + b"".join(b.parameter_status(k, v) for k, v in _LOGIN_STATUSES)
    answer += b.backend_key_data(4242) + b.ready_for_query()

    def ready(early: bytes = b"") -> tuple[dict[str, str], dict[str, str]]:
        t = SessionTracker("s", TrackerOptions(detail=Detail.QUERY), client=("127.0.0.1", 50000), clock=lambda: 0.0)
        t.frontend(startup_message({"user": "alice", "database": "app"}), now=0.0)
        if early:
            t.backend(early, now=0.0005)
        (record,) = [r for r in t.backend(answer, now=0.001) if r.event == "session.ready"]
        assert list(record.fields["parameters"].items()) == list(t.conv.parameters.items())
        return record.fields["parameters"], t.conv.parameters

    from pgproxy.protocol import wire

    for kept in (wire._known_answers, wire._answers_seen, wire._known_runs, wire._runs_seen):
        kept.clear()
    first, second, third, fourth = ready()[0], ready()[0], ready()[0], ready()[0]
    assert first is not second and second is not third  # learnt at the second login, known from the third
    assert third is fourth and third == first
    early, conversation = ready(b.parameter_status("is_superuser", "on"))
    assert early is not third and early["is_superuser"] == "on" and early is not conversation


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["user", "database", "application_name", "client_encoding", "options", "replication"]),
        st.sampled_from(["alice", "", "LATIN1", "database", "true", "caf\u00e9"]),
        max_size=5,
    ),
    st.sampled_from([Detail.CONNECTION, Detail.QUERY, Detail.MESSAGE]),
)
def test_a_known_startup_packet_gives_the_general_records(params: dict[str, str], detail: Detail) -> None:
    """A StartupMessage seen before (Conversation.receive_startup) and its kept fields give the general records.

    The general way is the same packet as a bytearray; the second session
    with bytes takes the known packet and the fields kept from the first.
    """
    from pgproxy.tracker import session as tracker_session

    tracker_session._started_fields.clear()
    packet = startup_message(params)

    def session(data: bytes | bytearray) -> Any:
        t = SessionTracker("s", TrackerOptions(detail=detail), client=("127.0.0.1", 50000), clock=lambda: 0.0)
        records = t.frontend(data, now=0.0)  # type: ignore[arg-type]
        records += t.backend(b.authentication_ok() + b.backend_key_data(7) + b.ready_for_query(), now=0.001)
        records += t.closed("client_closed", now=0.002)
        return (
            [(r.event, r.level, list(r.fields.items())) for r in records],  # in order: the line's order
            t.messages_from_client,
            dict(t.context),
            t.replication is not None,
            t.conv.encoding,
        )

    general = session(bytearray(packet))
    assert session(packet) == general
    assert session(packet) == general


def test_value_contexts_are_shared_and_equal_to_new_ones() -> None:
    """Sessions with the same settings share one frozen ValueContext (tracker.session._value_context), equal to a new one."""
    from pgproxy.protocol.values import ValueContext
    from pgproxy.tracker import session as tracker_session

    first = tracker_session._value_context("latin-1", "Europe/Paris", 40)
    assert first == ValueContext("latin-1", "Europe/Paris", 40)
    assert tracker_session._value_context("latin-1", "Europe/Paris", 40) is first
    assert tracker_session._value_context("latin-1", "Europe/Paris", None) == ValueContext("latin-1", "Europe/Paris")
    t = SessionTracker("s", TrackerOptions(detail=Detail.QUERY, max_value_chars=7))
    assert t.statements is not None and t.statements.value_context == ValueContext(max_value_chars=7)
