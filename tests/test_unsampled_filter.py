"""The statement tracker's in-place filter decision agrees with ``QueryFilter.keep``.

With no SQL pattern and no sampling (``QueryFilter.unsampled``), the tracker asks
only keep()'s duration test, without the call (a frame per statement, pure
Python). These tests run statements through the tracker and hold each record's
``logged`` to what keep() answers for the same statement.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.protocol import messages as m
from pgproxy.tracker.options import QueryFilter, TrackerOptions
from pgproxy.tracker.records import round_ms
from pgproxy.tracker.statements import StatementTracker

_DURATIONS = st.one_of(
    st.floats(min_value=-5.0, max_value=5.0),  # seconds; negative: a clock that stepped back
    st.just(math.nan),
)


def _logged(query_filter: QueryFilter, duration_s: float, failed: bool, slow_query_ms: float) -> tuple[bool, bool]:
    """One simple Query through a tracker: its record's ``logged``, and keep()'s answer for it."""
    options = TrackerOptions(analyzer=None, query_filter=query_filter, slow_query_ms=slow_query_ms)
    tracker = StatementTracker(options, {"session": "s"})
    tracker.frontend(m.Query("SELECT 1"), 10.0)
    done = 10.0 + duration_s
    if failed:
        records = tracker.backend(m.ErrorResponse((("S", "ERROR"), ("V", "ERROR"), ("C", "42P01"), ("M", "no"))), done)
    else:
        records = tracker.backend(m.CommandComplete("SELECT 1", "SELECT", 1), done)
    records += tracker.backend(m.ReadyForQuery("I"), done)
    (record,) = [r for r in records if r.event == "query"]
    duration_ms = round_ms(duration_s * 1000.0)  # as the record shows it
    slow = duration_ms >= slow_query_ms
    expected = query_filter.keep("SELECT 1", duration_ms, failed, slow, lambda: 0.0)
    return record.logged, expected


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=0.0, max_value=5000.0),
    _DURATIONS,
    st.booleans(),
    st.floats(min_value=0.0, max_value=5000.0),
)
def test_unsampled_filter_logs_what_keep_keeps(
    min_duration_ms: float, duration_s: float, failed: bool, slow_query_ms: float
) -> None:
    query_filter = QueryFilter(min_duration_ms=min_duration_ms)
    assert query_filter.unsampled
    logged, expected = _logged(query_filter, duration_s, failed, slow_query_ms)
    assert logged == expected


def test_a_pattern_or_sampling_is_not_unsampled() -> None:
    assert QueryFilter().unsampled
    assert not QueryFilter(sql_pattern="^select").unsampled
    assert not QueryFilter(sample_rate=0.5).unsampled
    assert not QueryFilter(sql_pattern="x", sample_rate=0.0).unsampled
