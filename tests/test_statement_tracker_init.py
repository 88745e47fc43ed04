"""StatementTracker's written-out __init__ sets every dataclass field to its declared default."""

from __future__ import annotations

import dataclasses
from typing import Any

from pgproxy.protocol.values import ValueContext
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.statements import MAX_PENDING, ImplicitTransaction, StatementTracker


def _declared_default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def test_every_field_starts_at_its_declared_default() -> None:
    options, context, values = TrackerOptions(), {"session": "s"}, ValueContext("latin-1", "UTC", 10)
    tracker = StatementTracker(options, context, values)
    assert tracker.options is options and tracker.context is context and tracker.value_context is values
    given = {"options", "context", "value_context"}
    for f in dataclasses.fields(StatementTracker):
        if f.name not in given:
            assert getattr(tracker, f.name) == _declared_default(f), f.name
    assert StatementTracker(options, context).value_context == ValueContext()
    assert StatementTracker(options, context, max_pending=3).max_pending == 3 != MAX_PENDING


def test_two_trackers_share_no_mutable_state() -> None:
    a, b = StatementTracker(TrackerOptions(), {}), StatementTracker(TrackerOptions(), {})
    for f in dataclasses.fields(StatementTracker):
        value = getattr(a, f.name)
        if isinstance(value, list | dict) or dataclasses.is_dataclass(value):
            assert value is not getattr(b, f.name), f.name


def test_implicit_transaction_starts_at_its_declared_defaults() -> None:
    """ImplicitTransaction's written-out __init__ too: the declared defaults, and a list of its own each."""
    a, b = ImplicitTransaction(), ImplicitTransaction(explicit=True)
    for f in dataclasses.fields(ImplicitTransaction):
        assert getattr(a, f.name) == _declared_default(f), f.name
    assert b.explicit is True and b.uncommitted == []
    assert a.uncommitted is not b.uncommitted
    assert a == ImplicitTransaction(False) and a != b
