"""The pure tracker keeps its instance attributes within CPython's compact layout.

CPython 3.11 keeps an instance's attributes in a compact, shared-key layout
only while the class's instances have set at most 29 distinct ones between
them (measured: reading an attribute of an object with 30 or more costs ~13%
more). The tracker is read attribute by attribute for every message, so
crossing the line slows every statement: 34 attributes set in ``__init__``
once, and the answer memos' five briefly, cost ~1.7k instructions a statement
(pure, callgrind). State a session rarely changes starts as a class attribute;
new per-session state belongs in an existing object. This test counts what a
tracker holds after real recorded conversations at every level of detail.
"""

from __future__ import annotations

import pytest

from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.session import SessionTracker
from tests.golden import recordings

#: At most this many instance attributes keep the compact layout (CPython 3.11's shared keys).
COMPACT_ATTRIBUTES = 29


@pytest.mark.parametrize("detail", list(Detail), ids=lambda d: d.name.lower())
def test_a_tracker_holds_no_more_attributes_than_the_compact_layout(detail: Detail) -> None:
    seen: set[str] = set()
    for scenario, conns in recordings().items():
        for conn in conns:
            tracker = SessionTracker("s1", TrackerOptions(detail=detail), clock=lambda: 0.0)
            if not hasattr(tracker, "__dict__"):
                pytest.skip("compiled: the tracker's attributes are native fields, not a dict")
            for index, (frontend, data) in enumerate(conn):
                if frontend:
                    tracker.frontend(data, float(index))
                else:
                    tracker.backend(data, float(index))
                seen |= vars(tracker).keys()
            tracker.closed("end_of_recording", now=float(len(conn)))
            seen |= vars(tracker).keys()
            assert len(seen) <= COMPACT_ATTRIBUTES, (scenario, len(seen), sorted(seen))
