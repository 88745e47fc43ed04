"""A record copied from a field layout is checked for guarded keys once per layout, and still writes the general path's line.

A plain success's ``query`` record is a copy of its statement's field layout
with the values filled in (:attr:`~pgproxy.tracker.records.Record.layout`);
the log sink checks a layout's keys for reserved and secret names once and
skips the check for every record that still has the layout's keys (as many
fields as it). These tests hold that shortcut to the general path (structlog,
the joined fields) byte for byte, with layouts that name guarded keys and
records that gain fields after they were made (``rolled_back``, or a secret
one), check that real records take it, and that the tracker fills in only a
layout's empty values (the contract statistics' shortcut relies on).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pgproxy.protocol import build as b
from pgproxy.sink import render
from pgproxy.sink.stats import StatementStats
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail, Record, SessionContext
from pgproxy.tracker.redaction import ParameterMode, RedactionPolicy
from pgproxy.tracker.session import SessionTracker
from tests.golden import recordings
from tests.harness import json_lines, logged_in_tracker

_KEYS = st.sampled_from(
    ["db.query.text", "rows", "outcome", "ü", "password", "Token", "timestamp"]
)  # not event, level: log() takes those
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.lists(st.integers(min_value=0, max_value=9), max_size=3),
)


@st.composite
def _records(draw: st.DrawFn) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]]:
    """(context, own, layout) triples: records copied from a few layouts, values set, perhaps a field added."""
    layouts = draw(st.lists(st.dictionaries(_KEYS, _VALUES, max_size=5), min_size=1, max_size=3))
    context = draw(st.dictionaries(st.sampled_from(["session", "user", "secret"]), _VALUES, max_size=2))
    out = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        layout = draw(st.sampled_from(layouts))
        own = layout.copy()
        for key in layout:
            if draw(st.booleans()):
                own[key] = draw(_VALUES)
        added = draw(
            st.dictionaries(st.sampled_from(["rolled_back", "secret", "timestamp", "rows"]), _VALUES, max_size=2)
        )
        own.update(added)  # after it was made (ReadyForQuery's rolled_back); "rows" may be the layout's own
        out.append((context, own, draw(st.sampled_from([layout, None]))))
    return out


@settings(max_examples=400, deadline=None)
@given(made=_records(), level=st.sampled_from(["info", "error"]))
def test_records_from_layouts_write_the_general_paths_lines(
    made: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]], level: str
) -> None:
    records = [
        Record("query", level, own, context=SessionContext(context) if context else None, layout=layout)
        for context, own, layout in made
    ]
    joined = [Record("query", level, {**context, **own}) for context, own, _ in made]
    fast = json_lines(records, general=False)  # one sink for them all: a layout is checked once
    assert fast == json_lines(joined, general=True)
    assert all("hunter" not in line for line in fast)


def test_a_secret_added_to_a_checked_layouts_record_is_withheld() -> None:
    layout: dict[str, Any] = {"db.query.text": "SELECT 1", "rows": None}
    plain = Record("query", "info", {**layout, "rows": 1}, layout=layout)
    added = Record("query", "info", {**layout, "rows": 2, "password": "hunter2"}, layout=layout)
    fast = json_lines([plain, added], general=False)
    assert fast == json_lines([Record("query", "info", dict(r.fields)) for r in (plain, added)], general=True)
    assert "hunter2" not in fast[1] and '"password":"[redacted]"' in fast[1]


_REPLY = b.row_description([("n", 23)]) + b.data_row([b"1"]) + b.command_complete("SELECT 1") + b.ready_for_query()


def _statements(tracker: SessionTracker) -> list[Record]:
    """Two simple Queries and two executions of a prepared statement: plain successes, copied from layouts."""
    out = []
    for _ in range(2):
        out += tracker.frontend(b.query("SELECT 1")) + tracker.backend(_REPLY)
    out += tracker.frontend(b.parse("s1", "SELECT n FROM t WHERE n = $1", (23,)) + b.sync())
    out += tracker.backend(b.message(b"1") + b.ready_for_query())
    for n in (b"7", b"8"):
        out += tracker.frontend(b.bind("", "s1", (n,)) + b.describe("P", "") + b.execute() + b.sync())
        out += tracker.backend(b.message(b"2") + _REPLY)
    return [r for r in out if r.event == "query"]


def test_real_plain_records_carry_their_layout_and_skip_the_per_record_check(monkeypatch: pytest.MonkeyPatch) -> None:
    records = _statements(logged_in_tracker())
    assert len(records) == 4
    assert all(r.layout is not None and list(r.own) == list(r.layout) for r in records)
    assert records[0].layout is records[1].layout and records[2].layout is records[3].layout
    checked: list[list[str]] = []
    real = render._guarded_keys_absent

    def counting(keys: Any) -> bool:
        checked.append(list(keys))
        return real(keys)

    monkeypatch.setattr(render, "_guarded_keys_absent", counting)  # pure Python: read from the module per call
    fast = json_lines(records, general=False)
    if render.__file__.endswith(".py"):  # compiled, the module's functions read it natively
        assert len(checked) == 3  # the session's fields once, each of the two layouts once: no record's own
    assert fast == json_lines(records, general=True)
    assert [r.layout for r in records] == [None] * 4  # joined by the general path: no longer a copy of the layout


#: What a layout's counted fields hold (None: a placeholder each record fills in) and what records fill in.
_LAYOUT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "fingerprint": st.sampled_from([None, "fp1"]),
    "outcome": st.sampled_from([None, "ok", "skipped"]),
    "duration_ms": st.none(),
    "rows": st.none(),
}
_FILLED_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "fingerprint": st.sampled_from(["fp1", "fp2", None]),
    "outcome": st.sampled_from(["ok", "error", "skipped"]),
    "duration_ms": st.one_of(st.floats(min_value=0.0, max_value=2000.0), st.none()),
    "rows": st.one_of(st.integers(min_value=0, max_value=5), st.none()),
    "db.response.status_code": st.sampled_from([None, "08P01"]),
}
_LAYOUTS = st.fixed_dictionaries(
    _LAYOUT_VALUES, optional={"db.response.status_code": st.sampled_from([None, "42601"]), "summary": st.just("s")}
)


def _filled(outcome: str = "ok", fingerprint: str = "fp1") -> dict[str, Any]:
    return {"fingerprint": fingerprint, "outcome": outcome, "duration_ms": 0.5, "rows": 1}


_PLACEHOLDERS: dict[str, Any] = {"fingerprint": "fp1", "outcome": None, "duration_ms": None, "rows": None}


@settings(max_examples=500, deadline=None)
@example(  # the layout leaves the outcome to its records: a skipped statement is not counted
    layouts=[_PLACEHOLDERS], steps=[(0, 0, _filled(), {}, False), (0, 0, _filled("skipped"), {}, False)], max_entries=9
)
@example(  # and the fingerprint: another statement's entry
    layouts=[{**_PLACEHOLDERS, "fingerprint": None, "outcome": "ok"}],
    steps=[(0, 0, _filled(), {}, False), (0, 0, _filled(fingerprint="fp2"), {}, False)],
    max_entries=9,
)
@example(  # a status code added after the record was made: an error
    layouts=[{**_PLACEHOLDERS, "outcome": "ok"}],
    steps=[(0, 0, _filled(), {}, False), (0, 0, _filled(), {"db.response.status_code": "08P01"}, False)],
    max_entries=9,
)
@given(
    layouts=st.lists(_LAYOUTS, min_size=1, max_size=2),
    steps=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=1),  # which layout
            st.sampled_from([0, 0, 0, 1, 2, 3, 4]),  # which session (2, 3: 0, 1 again, new connections; 4: none)
            st.fixed_dictionaries(_FILLED_VALUES),  # values for the layout's empty fields
            st.sampled_from([{}, {}, {}, {"db.response.status_code": "08P01"}, {"rows": 3}, {"rolled_back": True}]),
            st.booleans(),  # a report after it
        ),
        max_size=10,
    ),
    max_entries=st.sampled_from([0, 1, 3, 5000]),
)
def test_statistics_of_records_from_layouts_are_the_general_paths(
    layouts: list[dict[str, Any]], steps: list[tuple[int, int, dict[str, Any], dict[str, Any], bool]], max_entries: int
) -> None:
    """Records copied from layouts (their empty values filled in, fields added later) count as their joined fields do."""
    sessions = [SessionContext({"db.namespace": "app", "user": user}) for user in ("alice", "bob", "alice", "bob")]
    now = [0.0]
    with_layout = StatementStats(interval=0, max_entries=max_entries, clock=lambda: now[0])
    general = StatementStats(interval=0, max_entries=max_entries, clock=lambda: now[0])
    reports: tuple[list[Any], list[Any]] = ([], [])
    for index, session, values, added, report in steps:
        layout = layouts[index % len(layouts)]
        own = layout.copy()
        own.update((key, value) for key, value in values.items() if key in layout and layout[key] is None)
        own.update(added)
        context = sessions[session] if session < 4 else None
        with_layout.emit_all([Record("query", "info", own, context=context, layout=layout)])
        general.emit_all([Record("query", "info", {**(context.fields if context else {}), **own})])
        now[0] += 1.0
        if report:
            reports[0].append([r.fields for r in with_layout.flush()])
            reports[1].append([r.fields for r in general.flush()])
    assert reports[0] == reports[1]
    assert with_layout.snapshot() == general.snapshot()
    assert (with_layout.unattributed, with_layout.evicted) == (general.unattributed, general.evicted)
    assert [r.fields for r in with_layout.flush()] == [r.fields for r in general.flush()]


def test_real_records_take_the_statistics_layout_shortcut() -> None:
    tracker = logged_in_tracker()
    records = _statements(tracker) + _statements(tracker)
    stats = StatementStats(interval=0)
    stats.emit_all(records)
    assert stats._last_layout is records[-1].layout is not None
    counted = {s["db.query.text"]: s["calls"] for s in stats.snapshot()["statements"]}
    assert counted == {"SELECT 1": 4, "SELECT n FROM t WHERE n = $1": 4}


def test_the_tracker_fills_in_only_a_layouts_empty_values() -> None:
    """The tracker's side of the contract both shortcuts rely on (Record.layout's docstring).

    Every recorded conversation at query detail, with each redaction of
    parameters: a record copied from a layout keeps the layout's keys first and
    in order, and every value the layout gives (not None) unchanged; the layout
    itself never changes. Statistics take a layout's outcome and fingerprint
    from the layout, so a tracker that overwrote one in its copy would count
    the statement under the wrong ones without this test failing elsewhere.
    """
    seen: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}  # id -> (layout, its values at first sight)
    copies = 0
    for mode in ParameterMode:
        options = TrackerOptions(detail=Detail.QUERY, redaction=RedactionPolicy(parameters=mode, hash_key=b"k"))
        for conns in recordings().values():
            for conn in conns:
                tracker = SessionTracker(
                    "s",
                    options,
                    client=("127.0.0.1", 1),
                    server=("127.0.0.1", 2),
                    clock=itertools.count(0, 0.0007).__next__,
                )
                records = [
                    r
                    for frontend, data in conn
                    for r in (tracker.frontend(data) if frontend else tracker.backend(data))
                ]
                for record in records:
                    layout = record.layout
                    if layout is None:
                        continue
                    copies += 1
                    first = seen.setdefault(id(layout), (layout, dict(layout)))[1]
                    assert list(record.own)[: len(layout)] == list(layout)
                    given_values = {k: v for k, v in layout.items() if v is not None}
                    assert {k: record.own[k] for k in given_values} == given_values
                    assert layout == first and list(layout) == list(first)
    assert copies >= 20 and len(seen) >= 3  # the recordings' plain successes do take layouts
