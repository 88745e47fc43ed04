"""A ``query`` record's session fields, shared and rendered once per session, give the lines and values of a plain record.

The statement tracker hands every ``query`` record of a session the same
:class:`SessionContext` (session, addresses, user, database, backend pid)
instead of copying those fields into each record; the log sink renders them
once per session and splices the statement's own fields after them (issue 11).
These tests hold that to the general path (structlog, the joined fields) byte
for byte, for odd values too, and check that a change of the session's fields
reaches the next record.
"""

from __future__ import annotations

import io
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.protocol import build as b
from pgproxy.sink import Fanout, LogSink
from pgproxy.sink.stats import StatementStats
from pgproxy.tracker.records import Record, SessionContext
from pgproxy.tracker.session import SessionTracker
from tests.harness import json_lines, logged_in_tracker

_TIMESTAMP = re.compile(r'"timestamp":"[^"]*"')

_KEYS = st.sampled_from(
    ["session", "user", "db.namespace", "backend_pid", "ünïcode", "password", "Token", "timestamp", "x" * 40]
)
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 80), max_value=1 << 80),  # beyond 64 bits: orjson refuses them
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),  # non-ASCII, control characters, lone surrogates
    st.binary(max_size=4),
    st.lists(st.integers(min_value=0, max_value=9), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    context=st.dictionaries(_KEYS, _VALUES, max_size=5),
    own=st.lists(
        st.dictionaries(st.sampled_from(["db.query.text", "rows", "secret", "ü", "outcome"]), _VALUES), max_size=3
    ),
    level=st.sampled_from(["info", "warning", "error"]),
)
def test_spliced_lines_are_the_general_paths(context: dict[str, Any], own: list[dict[str, Any]], level: str) -> None:
    shared = SessionContext(context)
    records = [Record("query", level, fields, context=shared) for fields in own]
    joined = [{**context, **fields} for fields in own]
    for record, fields in zip(records, joined, strict=True):
        assert record.get("session", "absent") == fields.get("session", "absent")
        assert ("user" in record) == ("user" in fields)
    fast = json_lines(records, general=False)
    plain = [Record("query", level, dict(fields)) for fields in joined]
    assert fast == json_lines(plain, general=True)
    assert [r.fields for r in records] == joined  # joined on demand, context first
    assert list(records[0].fields) == list(joined[0]) if records else True
    assert context == shared.fields  # never changed by the records


_REPLY = b.row_description([("n", 23)]) + b.data_row([b"1"]) + b.command_complete("SELECT 1") + b.ready_for_query()


def _query(tracker: SessionTracker, sql: str = "SELECT 1") -> Record:
    records = tracker.frontend(b.query(sql)) + tracker.backend(_REPLY)
    (record,) = [r for r in records if r.event == "query"]
    return record


def test_query_records_share_the_sessions_fields_and_show_them_first() -> None:
    tracker = logged_in_tracker()
    first, second = _query(tracker), _query(tracker, "SELECT 'ü', 2")
    assert first.context is not None and first.context is second.context
    assert "session" not in first.own
    assert list(first.fields)[:10] == [
        *("session", "db.system.name", "server.address", "server.port", "client.address", "client.port"),
        *("user", "db.namespace", "application_name", "backend_pid"),
    ]
    assert first["backend_pid"] == 4242 and first.fields["transaction_status"] == "idle"
    assert json_lines([second], general=False) == json_lines(
        [Record("query", "info", dict(second.fields))], general=True
    )


def test_a_change_of_the_sessions_fields_reaches_the_next_record() -> None:
    tracker = logged_in_tracker()
    before = _query(tracker)
    tracker.backend(b.backend_key_data(777))  # a BackendKeyData after start-up: the context's backend_pid changes
    after = _query(tracker)
    assert before["backend_pid"] == 4242 and after["backend_pid"] == 777
    assert json_lines([before, after], general=False) == json_lines(
        [Record("query", "info", dict(r.fields)) for r in (before, after)], general=True
    )


def test_statistics_and_log_see_the_same_fields_either_way() -> None:
    def run(join: bool) -> tuple[list[str], list[Any]]:
        tracker = logged_in_tracker()
        stream = io.StringIO()
        log = LogSink(stream=stream, fmt="json")
        stats = StatementStats(interval=0)
        sink = Fanout(log, [stats])
        for i in range(3):
            record = _query(tracker, f"SELECT {i}")
            if join:
                record.fields  # noqa: B018 - joined before the sink sees it
            sink.emit_all([record])
        log.close()
        snapshot = [(e.key, e.cumulative().calls) for e in stats.entries.values()]
        return [_TIMESTAMP.sub("T", x) for x in stream.getvalue().splitlines()], snapshot

    lines, snapshot = run(join=False)
    assert (lines, snapshot) == run(join=True)
    assert snapshot and snapshot[0][0][1:] == ("bench", "bench", "pgbench")
