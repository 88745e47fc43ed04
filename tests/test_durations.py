"""A record's milliseconds are rounded as ``round(ms, 3)`` rounds them, by the quick way or the builtin's."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pgproxy.tracker import records
from pgproxy.tracker.records import round_ms


def _same(ms: float) -> None:
    got, expected = round_ms(ms), round(ms, 3)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert (got, math.copysign(1.0, got)) == (expected, math.copysign(1.0, expected)), ms


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.floats(min_value=0.0, max_value=5.0),
        st.floats(min_value=0.0, max_value=3.0e6),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=0, max_value=2**31 + 10).map(lambda k: k / 1000.0),
    )
)
@example(0.0)
@example(-0.0)
@example(-0.0001)
@example(2147483.6475)
@example(2147483.648)
def test_round_ms_is_round_to_three_places(ms: float) -> None:
    _same(ms)


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=0, max_value=2**31), st.integers(min_value=-64, max_value=64))
def test_round_ms_near_halves_and_integers(k: int, ulps: int) -> None:
    """Around k + 1/2 and k thousandths, a few floats either way: where the quick way must step aside or be right."""
    for target in ((k + 0.5) / 1000.0, k / 1000.0):
        ms = target
        for _ in range(abs(ulps)):
            ms = math.nextafter(ms, math.inf if ulps > 0 else -math.inf)
        _same(ms)


def test_round_ms_takes_the_quick_way_for_ordinary_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> float:
        raise AssertionError("the builtin was asked")

    monkeypatch.setattr(records, "round", refuse, raising=False)
    assert round_ms(0.123456) == 0.123 and round_ms(12.3456789) == 12.346 and round_ms(250.0) == 250.0
    with pytest.raises(AssertionError):
        round_ms(0.0)  # zero keeps its sign by the builtin's way
