"""libpq's Describe, Execute and Sync in one call (StatementTracker.portal_tail) keep the three calls' meaning."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pgproxy.protocol import messages as m
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Record
from pgproxy.tracker.statements import StatementTracker

#: What a session does between (and instead of) libpq's tails: requests and the server's answers.
OPS = ["parse", "parse_named", "bind", "bind_named", "tail", "step", "complete", "ready", "ready_error"]


def _three(tracker: StatementTracker, now: float) -> None:
    """The general way: the three requests' own calls, as the message loop makes them."""
    tracker.describe("P", "", now)
    tracker.execute("", now)
    tracker.sync()


def _named(value: Any) -> Any:
    """A prepared statement by its name and text (twins hold equal ones, not the same)."""
    return (value.name, value.sql) if hasattr(value, "sql") and hasattr(value, "name") else value


def _pending(tracker: StatementTracker) -> list[tuple[Any, ...]]:
    """What each awaited request is, by its class and the fields its record is made from."""
    return [
        (
            type(item).__name__,
            getattr(item, "sql", None),
            getattr(item, "started", None),
            _named(getattr(item, "statement", None)),
            getattr(item, "portal", None),
            getattr(item, "parameters", None),
            getattr(item, "executes", None),
            _named(getattr(item, "target", None)),
        )
        for item in tracker.pending[tracker._first :]
    ]


def _state(tracker: StatementTracker) -> tuple[Any, ...]:
    return (_pending(tracker), tracker.untracked, tracker._group_start, tracker.executed)


def _records(records: list[Record]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(r.event, r.level, r.fields) for r in records]


#: Message detail's kept events for the tail's three requests (stand-ins: the tracker only places them).
KEPT = tuple(Record(f"message.{name}", "info", {"session": "s"}) for name in ("Describe", "Execute", "Sync"))


def _three_kept(tracker: StatementTracker, now: float) -> list[Record]:
    """Message detail's general way: each request's call, what it released, then its message's kept event."""
    out: list[Record] = []
    for call, record in zip(
        (lambda: tracker.describe("P", "", now), lambda: tracker.execute("", now), tracker.sync), KEPT, strict=True
    ):
        call()
        out += tracker.take_released()
        out.append(record)
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(OPS), max_size=40),
    st.integers(min_value=1, max_value=10),
    st.booleans(),
)
@example(ops=["parse", "bind", "tail", "step", "step", "complete", "ready"], max_pending=10, kept=False)
@example(ops=["parse", "bind", "tail"], max_pending=3, kept=False)  # the three fit exactly
@example(ops=["parse", "bind", "tail", "tail"], max_pending=5, kept=False)  # the second tail reaches the bound half-way
@example(ops=["parse", "bind", "tail", "tail"], max_pending=5, kept=True)  # message detail's, half-way
@example(ops=["parse", "bind", "tail", "step", "complete", "ready"], max_pending=10, kept=True)
def test_portal_tail_is_the_three_calls(ops: list[str], max_pending: int, kept: bool) -> None:
    """Twin trackers, one taking libpq's tail in one call, the other by its three: same state, same records.

    Near the pending bound the one call falls back to the three, so the
    anomaly and the counting of untracked requests come out the same.
    With ``kept`` (message detail) each kept event comes after what its
    request released, as message detail's loop places them.
    """
    options = TrackerOptions(analyzer=None)
    one, three = (StatementTracker(options, {"session": "s"}, max_pending=max_pending) for _ in range(2))
    for step, op in enumerate(ops):
        now = float(step)
        outs: list[list[Record]] = []
        for tracker in (one, three):
            if op == "tail":
                if tracker is one:
                    tracker.portal_tail(now, *KEPT) if kept else tracker.portal_tail(now)
                elif kept:
                    outs.append(_records(_three_kept(tracker, now)))
                    continue
                else:
                    _three(tracker, now)
            elif op.startswith("parse"):
                tracker.parse("s1" if op == "parse_named" else "", f"SELECT $1 -- {step % 3}", (23,), now)
            elif op.startswith("bind"):
                tracker.bind("", "s1" if op == "bind_named" else "", (0,), (str(step).encode(),), (), now)
            elif op == "step":
                tracker.step_complete()
            elif op == "complete":
                tracker.command_complete(m.CommandComplete("SELECT 1", "SELECT", 1), now)
            else:
                tracker.ready("E" if op == "ready_error" else "I", now)
            outs.append(_records(tracker.take_released()))
        assert outs[0] == outs[1], (step, op)
        assert _state(one) == _state(three), (step, op)
