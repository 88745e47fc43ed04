"""Statement facts (what a record says about its SQL text, worked out once per text) agree with the general way.

A prepared statement's records start from its text's facts (the redacted
text, the analyzer's fields, the parameters' column names) instead of
redacting and analysing the text again; these tests hold the two ways to the
same fields, in the same order, for texts and options of every kind, and the
tracker to the same records and analyzer counters with and without the facts,
through re-prepared, closed and re-parsed statements and a configuration reload.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.protocol import build as b
from pgproxy.protocol import messages as m
from pgproxy.tracker import statements
from pgproxy.tracker.fingerprint import StatementAnalyzer
from pgproxy.tracker.options import TextMode, TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.redaction import ParameterMode, RedactionPolicy
from pgproxy.tracker.session import SessionTracker
from pgproxy.tracker.sql import parameter_names

TEXTS = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "INSERT INTO users (name, password, api_key) VALUES ($1, $2, 'k-123')",
    "SELECT * FROM users WHERE token = 'abc' AND id = $1",
    "CREATE ROLE bob PASSWORD 'hunter2'",
    "/* leading */ -- comment\nselect 1, 'x', $1::int",
    "SELECT E'it\\'s', $$dollar 'quoted'$$, 42.5e3",
    "BEGIN",
    "SELEC oops FROM",
    "WITH t AS (SELECT 1) SELECT * FROM t, u WHERE u.secret = $1",
    "CALL do_things($1, 'x')",
    "SELECT 1; SELECT 2",
    "x" * 40 + " = 'long literal that the cap cuts' " * 3,
    "<1234-byte Parse not shown: exceeds max_frame>",
    "",
]

sql_texts = st.one_of(st.sampled_from(TEXTS), st.text(max_size=60))
tags = st.one_of(
    st.none(),
    st.sampled_from(
        [
            m.CommandComplete("SELECT 1", "SELECT", 1),
            m.CommandComplete("UPDATE 2", "UPDATE", 2),
            m.CommandComplete("", "", None),
        ]
    ),
)


@st.composite
def tracker_options(draw: st.DrawFn) -> TrackerOptions:
    analyzer = draw(st.sampled_from(["parser", "lexer", "none"]))
    return TrackerOptions(
        detail=Detail.QUERY,
        max_sql_chars=draw(st.sampled_from([8192, 40, 12])),
        text_mode=draw(st.sampled_from(list(TextMode))),
        redaction=RedactionPolicy(
            parameters=draw(st.sampled_from(list(ParameterMode))),
            sensitive_names=draw(st.sampled_from(["pass|secret|token|api[_-]?key", ""])),
            mask_sql_literals=draw(st.booleans()),
        ),
        analyzer=None if analyzer == "none" else StatementAnalyzer(use_parser=analyzer == "parser"),
    )


@settings(max_examples=300, deadline=None)
@given(options=tracker_options(), sql=sql_texts, tag=tags)
def test_facts_give_the_fields_the_general_way_gives(options: TrackerOptions, sql: str, tag: Any) -> None:
    facts = statements.describe_text(options, sql)
    if facts is None:  # the general way's alone: no text, or a "<...>" stand-in
        assert not sql or sql.startswith("<")
        return
    for _ in range(2):  # the first use and a later one (the analyzer's cache warm)
        general = statements.text_fields(options, sql, tag)
        assert list(statements.known_text_fields(facts, tag).items()) == list(general.items())
    analyzer = options.analyzer
    expected = analyzer.parameter_names(sql) if analyzer is not None else parameter_names(sql)
    assert dict(facts.names) == dict(expected)
    is_sensitive = options.redaction.is_sensitive
    assert dict(facts.sensitive_names) == {n: name for n, name in expected.items() if is_sensitive(name)}


def test_text_longer_than_the_analyzer_caches_takes_the_general_way() -> None:
    options = TrackerOptions(analyzer=StatementAnalyzer(max_cached_chars=10))
    assert statements.describe_text(options, "SELECT 1 FROM t WHERE a = $1") is None
    assert statements.describe_text(options, "SELECT 1") is not None


def test_facts_cache_is_bounded_by_entries_and_characters() -> None:
    options = TrackerOptions(analyzer=None)
    cache = statements.FactsCache(max_entries=3, max_chars=1000)
    for i in range(10):
        cache.facts(options, f"SELECT {i}")
    assert list(cache.entries) == ["SELECT 7", "SELECT 8", "SELECT 9"]
    for i in range(10):
        cache.facts(options, f"SELECT {i} -- " + "x" * 200)
    assert cache.chars <= 1000 and len(cache.entries) == 2
    assert cache.chars == sum(2 * len(text) for text in cache.entries)
    other = TrackerOptions(analyzer=None, max_sql_chars=5)  # a reload: the same text, other facts
    assert cache.facts(other, "SELECT 9").head["db.query.text"] == "SELEC…[+3 chars]"  # type: ignore[union-attr]
    assert cache.facts(options, "SELECT 9").head["db.query.text"] == "SELECT 9"  # type: ignore[union-attr]
    long = "SELECT 1 -- " + "y" * 5000
    assert cache.facts(options, long) is not None and long not in cache.entries


def _reply(command: str = "SELECT 1") -> bytes:
    return b.row_description([("x", 23)]) + b.data_row([b"1"]) + b.command_complete(command) + b.ready_for_query()


def _session(options: TrackerOptions) -> Iterator[tuple[bytes, bool]]:
    """Requests (True) and replies (False) of a session that prepares, re-prepares, closes and re-parses."""
    first, second = TEXTS[0], TEXTS[2]
    yield b.parse("s1", first, (23,)) + b.sync(), True
    yield b.message(b"1") + b.ready_for_query(), False
    for i in range(3):
        yield b.bind("", "s1", (str(i).encode(),)) + b.describe("P", "") + b.execute() + b.sync(), True
        yield b.message(b"2") + _reply(), False
    # Named portals, one fetched in two Executes (suspended), and a slow execution.
    yield b.bind("p1", "s1", (b"8",)) + b.describe("P", "p1") + b.execute("p1") + b.sync(), True
    yield b.message(b"2") + _reply(), False
    yield b.bind("p2", "s1", (None,)) + b.execute("p2", 1) + b.flush(), True
    yield b.message(b"2") + b.data_row([b"1"]) + b.message(b"s"), False
    yield b.execute("p2", 1) + b.sync(), True
    yield b.data_row([b"1"]) + b.command_complete("SELECT 1") + b.ready_for_query(), False
    yield b.bind("", "s1", (b"9",)) + b.execute() + b.sync(), True
    yield b.message(b"2") + _reply(), False  # arrives late: slow (see _run)
    # The name prepared again with another text (after Close, as drivers do; and over it, as psql's PREPARE cannot).
    yield b.close("S", "s1") + b.parse("s1", second, (25, 25)) + b.sync(), True
    yield b.message(b"3") + b.message(b"1") + b.ready_for_query(), False
    yield b.bind("", "s1", (b"bob", b"pw")) + b.execute() + b.sync(), True
    yield b.message(b"2") + b.command_complete("INSERT 0 1") + b.ready_for_query(), False
    yield b.parse("s1", TEXTS[3]) + b.bind("", "s1", (b"7",)) + b.execute() + b.sync(), True
    yield b.message(b"1") + b.message(b"2") + _reply(), False
    # The unnamed statement parsed again and again with one text, then another.
    for text in (first, first, TEXTS[5], first):
        yield b.parse("", text) + b.bind("", "", (b"5",)) + b.execute() + b.sync(), True
        yield b.message(b"1") + b.message(b"2") + _reply(), False
    # A bind of a statement never prepared here, and an execution that fails.
    yield b.bind("", "nope", (b"1",)) + b.execute() + b.sync(), True
    yield b.error_response("ERROR", "26000", "prepared statement does not exist") + b.ready_for_query(), False
    yield b.bind("", "s1", (b"x",)) + b.execute() + b.sync(), True
    yield b.message(b"2") + b.error_response("ERROR", "22P02", "invalid input syntax") + b.ready_for_query(), False
    # Simple Queries: plain successes (one of them twice), a batch, an error, an empty one.
    for text in ("SELECT 2", "select * from pgbench_accounts where aid = 7", "SELECT 2", "SELECT 'x' || 'y'"):
        yield b.query(text), True
        yield _reply(), False
    yield b.query("SELECT 1; SELECT 2"), True
    yield _reply().replace(b.ready_for_query(), b"") + _reply(), False
    yield b.query("SELECT nope"), True
    yield b.error_response("ERROR", "42703", "column does not exist") + b.ready_for_query(), False
    yield b.query(""), True
    yield b.message(b"I") + b.ready_for_query(), False


def _run(
    options: TrackerOptions, reloaded: TrackerOptions, general: bool = False
) -> list[tuple[str, str, list[tuple[str, Any]]]]:
    tracker = SessionTracker("s", options, clock=lambda: 0.0)
    assert tracker.statements is not None
    tracker.statements.plain_layouts = not general
    out = tracker.frontend(b.startup_message({"user": "u", "database": "d"}), 0.0)
    out += tracker.backend(b.authentication_ok() + b.backend_key_data(1) + b.ready_for_query(), 0.0)
    for round_ in (options, reloaded):
        assert tracker.reconfigure(round_)
        for index, (data, frontend) in enumerate(_session(round_)):
            now = index / 10
            answered = now + (2.5 if index == 15 else 0.025)  # 125 ms after the request; the slow one 2.6 s
            out += tracker.frontend(data, now) if frontend else tracker.backend(data, answered)
    return [(r.event, r.level, list(r.fields.items())) for r in out]


@pytest.mark.parametrize("analyzer", ["parser", "lexer", "none"])
@pytest.mark.parametrize("text_mode", list(TextMode))
def test_tracker_gives_the_same_records_and_counts_with_and_without_facts(
    analyzer: str, text_mode: TextMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    def options(**changes: Any) -> tuple[TrackerOptions, TrackerOptions]:
        made = None if analyzer == "none" else StatementAnalyzer(use_parser=analyzer == "parser")
        base = TrackerOptions(text_mode=text_mode, analyzer=made, **changes)
        reloaded = TrackerOptions(
            text_mode=text_mode,
            analyzer=made,
            max_sql_chars=20,
            redaction=RedactionPolicy(parameters=ParameterMode.HASH, mask_sql_literals=True),
        )
        return base, reloaded

    statements.FACTS.clear()
    fast_options = options()
    fast = _run(*fast_options)
    assert statements.FACTS.entries  # the facts were used
    if analyzer != "none":
        assert statements._ANALYSIS_LAYOUTS  # and the simple Queries' layouts
    monkeypatch.setattr(statements, "statement_facts", lambda options, stmt: None)
    general_options = options()
    assert _run(*general_options, general=True) == fast
    if analyzer != "none":
        fast_analyzer, general_analyzer = fast_options[0].analyzer, general_options[0].analyzer
        assert fast_analyzer is not None and general_analyzer is not None
        assert fast_analyzer.snapshot() == general_analyzer.snapshot()


def test_the_session_covers_the_record_shapes() -> None:
    options = TrackerOptions(analyzer=None)
    records = [dict(fields) for event, _, fields in _run(options, options) if event == "query"]
    assert any(r.get("slow") for r in records) and any(r.get("executes") == 2 for r in records)
    assert any(r.get("portal") == "p1" for r in records) and any("error" in r for r in records)
    assert any("statement" not in r and r["outcome"] == "ok" for r in records)
    assert (
        sum(r["protocol"] == "simple" and r["outcome"] == "ok" and "statement_index" not in r for r in records) == 8
    )  # two rounds


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["SELECT a", "SELECT b", "SELECT c", "SELECT d", "SELECT e"]), max_size=40))
def test_facts_cache_keeps_least_recently_used_order(texts: list[str]) -> None:
    """Using the newest entry again skips the move to the end; the order stays the plain LRU's."""
    options = TrackerOptions(analyzer=None)
    cache = statements.FactsCache(max_entries=3)
    model: dict[str, None] = {}
    for text in texts:
        cache.facts(options, text)
        model.pop(text, None)
        model[text] = None
        while len(model) > 3:
            del model[next(iter(model))]
        assert list(cache.entries) == list(model)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["SELECT 1", "SELECT a FROM t", "UPDATE t SET a = 1", "BEGIN", "SELECT 1"]), max_size=30)
)
def test_analysis_layouts_are_the_analysis_own(texts: list[str]) -> None:
    """The layout asked for again (the one asked for last, or one in the table) is the one made for that analysis."""
    analyzer = StatementAnalyzer(use_parser=False)
    for text in texts:
        analysis = analyzer.analyze(text)
        head: dict[str, Any] = {"db.query.text": None, "db.operation.name": None, **analysis.fields}
        layout = statements.analysis_layout(analysis)
        assert list(layout.items()) == list(statements.record_layout(head, False, False, False).items())
        assert statements.analysis_layout(analysis) is layout  # asked again at once: the same dict


@pytest.mark.parametrize("request_bytes", ["simple", "prepared"])
def test_fields_filled_in_on_arrival_give_way_to_options_changed_before_the_answer(request_bytes: str) -> None:
    """A record takes the fields filled in when its request came only under the options they were made with.

    The session changes options only at a quiet point (SessionTracker.reconfigure), so this is the
    statement tracker's own promise: options replaced while the answer is awaited are the record's.
    """
    first = TrackerOptions(analyzer=StatementAnalyzer())
    reloaded = TrackerOptions(
        analyzer=first.analyzer,
        max_sql_chars=12,
        redaction=RedactionPolicy(parameters=ParameterMode.HASH, mask_sql_literals=True),
    )

    def run(general: bool) -> list[list[tuple[str, Any]]]:
        tracker = SessionTracker("s", first, clock=lambda: 0.0)
        assert tracker.statements is not None
        tracker.statements.plain_layouts = not general
        tracker.frontend(b.startup_message({"user": "u", "database": "d"}), 0.0)
        tracker.backend(b.authentication_ok() + b.backend_key_data(1) + b.ready_for_query(), 0.0)
        if request_bytes == "simple":
            request, answer = b.query("SELECT abalance FROM t WHERE aid = 7"), _reply()
        else:
            tracker.frontend(b.parse("s1", TEXTS[0], (23,)) + b.sync(), 0.0)
            tracker.backend(b.message(b"1") + b.ready_for_query(), 0.0)
            request = b.bind("", "s1", (b"7",)) + b.execute() + b.sync()
            answer = b.message(b"2") + _reply()
        out = []
        for options in (first, reloaded, first):  # the first execution learns the facts; then filled in on arrival
            tracker.frontend(request, 1.0)
            tracker.statements.options = options
            out += tracker.backend(answer, 1.01)
            tracker.statements.options = first
        return [list(r.fields.items()) for r in out if r.event == "query"]

    fast = run(general=False)
    assert fast == run(general=True)
    assert len(fast) == 3 and dict(fast[1])["db.query.text"] != dict(fast[2])["db.query.text"]
