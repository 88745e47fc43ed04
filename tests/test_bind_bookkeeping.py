"""A Bind's bookkeeping keeps its meaning on its shortcuts: the prepared-statement LRU and the parameter decoders."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.protocol import messages as m
from pgproxy.protocol.values import decoder_for
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import truncate
from pgproxy.tracker.statements import StatementTracker

NAMES = ["a", "b", "c", "d", ""]
operations = st.lists(st.tuples(st.sampled_from(["parse", "bind", "close"]), st.sampled_from(NAMES)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(min_value=1, max_value=4))
def test_prepared_statements_stay_a_least_recently_used_table(ops: list[tuple[str, str]], limit: int) -> None:
    """Binding the statement stored or bound last skips the move to the end; the order is the plain LRU's."""
    tracker = StatementTracker(TrackerOptions(max_prepared_statements=limit, analyzer=None), {"session": "s"})
    model: OrderedDict[str, None] = OrderedDict()
    for number, (op, name) in enumerate(ops):
        if op == "parse":
            tracker.parse(name, f"SELECT {number}", (), 0.0)
            tracker.step_complete()  # ParseComplete
            model.pop(name, None)
            model[name] = None
            while len(model) > limit:
                model.popitem(last=False)
        elif op == "bind":
            tracker.bind("", name, (), (), (), 0.0)
            tracker.step_complete()  # BindComplete
            if name in model:
                model.move_to_end(name)
        else:
            tracker.frontend(m.Close("S", name), 0.0)
            tracker.step_complete()  # CloseComplete
            model.pop(name, None)
        assert list(tracker.statements) == list(model)


OIDS = [0, 16, 20, 21, 23, 25, 114, 700, 701, 1043, 1082, 1114, 1184, 1700, 2950, 3802, 1007]
values = st.one_of(
    st.none(), st.binary(max_size=12), st.sampled_from([b"42", b"-7", b"t", b"3.5", b"{1,2}", b"x" * 300])
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(OIDS), st.sampled_from([0, 1, 2, -1]), values), max_size=6))
def test_bound_parameters_are_decoded_as_decoder_for_decodes(params: list[tuple[int, int, bytes | None]]) -> None:
    options = TrackerOptions(analyzer=None)
    tracker = StatementTracker(options, {"session": "s"})
    tracker.parse("s", "SELECT " + ", ".join(f"${i + 1}" for i in range(len(params))), tuple(p[0] for p in params), 0.0)
    for _ in range(2):  # the decoders made, then kept
        tracker.bind("", "s", tuple(p[1] for p in params), tuple(p[2] for p in params), (), 0.0)
        expected = [
            None
            if raw is None
            else options.redaction.parameter(
                truncate(decoder_for(oid, fmt, tracker.value_context)(raw), options.max_value_chars), raw, None
            )
            for oid, fmt, raw in params
        ]
        assert tracker.portals[""].parameters == expected
