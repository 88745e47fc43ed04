"""A Bind's bookkeeping keeps its meaning on its shortcuts: the prepared-statement LRU and the parameter decoders."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.protocol import messages as m
from pgproxy.protocol import oids
from pgproxy.protocol.values import (
    DECODER_FAILURE,
    PLAIN_INTEGER,
    PLAIN_TEXT,
    ValueContext,
    decoder_for,
    plain_decoding,
)
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import truncate
from pgproxy.tracker.redaction import ParameterMode, RedactionPolicy
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


OIDS = [0, 16, 18, 19, 20, 21, 23, 25, 26, 28, 29, 114, 142, 700, 701, 705, 1042, 1043, 1082, 1114, 1184, 1700]
OIDS += [2950, 3802, 5069, 1007, 1009, 199]
values = st.one_of(
    st.none(),
    st.binary(max_size=12),
    st.sampled_from([b"42", b"-7", b" 12 ", b"1_000", b"4a", b"", b"t", b"3.5", b"{1,2}", b"x" * 300]),
    st.sampled_from(["é", "日本", "\udcff"]).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\xff\xfe", b"\x00", b"9" * 5000]),  # not UTF-8, a NUL, more digits than int() takes
)
ENCODINGS = ["utf-8", "latin-1", "euc_jp", "ascii", "no-such-codec"]


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(OIDS + list(oids.ARRAY_ELEMENT)),
    st.sampled_from([0, 1]),
    st.sampled_from(ENCODINGS),
    values,
)
def test_plain_decoding_names_what_decoder_for_does(oid: int, fmt: int, encoding: str, raw: bytes | None) -> None:
    """A type's plain decoding, where it succeeds, is what its guarded decoder gives."""
    if raw is None:
        return
    ctx = ValueContext(encoding=encoding)
    expected = decoder_for(oid, fmt, ctx)(raw)
    kind = plain_decoding(oid, fmt)
    try:
        if kind == PLAIN_INTEGER:
            assert int(raw) == expected and type(expected) is int
        elif kind == PLAIN_TEXT:
            assert raw.decode(encoding, "backslashreplace") == expected
    except (ValueError, LookupError):
        assert type(expected) is dict  # the decoder's placeholder, which the shortcut defers to


def test_plain_decoding_covers_text_and_integers() -> None:
    assert plain_decoding(oids.INT4, 0) == plain_decoding(oids.INT8, 0) == PLAIN_INTEGER
    assert plain_decoding(0, 0) == plain_decoding(oids.TEXT, 0) == plain_decoding(oids.TEXT, 1) == PLAIN_TEXT
    assert plain_decoding(oids.INT4, 1) == plain_decoding(oids.FLOAT8, 0) == plain_decoding(1007, 0) == 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(OIDS), st.sampled_from([0, 1, 2, -1]), values), max_size=6),
    st.sampled_from(ENCODINGS),
)
def test_bound_parameters_are_decoded_as_decoder_for_decodes(
    params: list[tuple[int, int, bytes | None]], encoding: str
) -> None:
    options = TrackerOptions(analyzer=None)
    tracker = StatementTracker(options, {"session": "s"})
    tracker.set_value_context(ValueContext(encoding=encoding))
    tracker.parse("s", "SELECT " + ", ".join(f"${i + 1}" for i in range(len(params))), tuple(p[0] for p in params), 0.0)
    hashed = TrackerOptions(analyzer=None, redaction=RedactionPolicy(parameters=ParameterMode.HASH))
    for round_ in (options, options, hashed, options):  # the decoders made, kept; then hashed, then shown again
        tracker.options = round_
        tracker.bind("", "s", tuple(p[1] for p in params), tuple(p[2] for p in params), (), 0.0)
        decoded = [
            None if raw is None else decoder_for(oid, fmt, tracker.value_context)(raw) for oid, fmt, raw in params
        ]
        expected = [
            None if raw is None else round_.redaction.parameter(truncate(value, round_.max_value_chars), raw, None)
            for value, (_oid, _fmt, raw) in zip(decoded, params, strict=True)
        ]
        assert tracker.portals[""].parameters == expected
        failures = [value for value in decoded if isinstance(value, dict) and DECODER_FAILURE in value]
        assert len(tracker.take_released()) == len(failures)  # one session.anomaly each


_ROW: Final = "row"  # a DataRow, counted as the session's loops count one
_COLUMNS: Final = "columns"  # a RowDescription, paired as the session's loops pair one


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=0, max_value=5),
    st.lists(st.tuples(st.booleans(), st.booleans()), min_size=100, max_size=400),
)
def test_the_queue_pairs_pipelined_requests_in_order(ahead: int, steps: list[tuple[bool, bool]]) -> None:
    """Requests sent ahead of their answers (``ahead`` statements at least, until the end): answers pair in order.

    The queue is a list whose answered head is dropped when the queue empties or
    grows long (see StatementTracker._head); hundreds of steps cross both.
    """
    tracker = StatementTracker(TrackerOptions(analyzer=None), {"session": "s"})
    answers: list[tuple[bool, list[m.Message | str]]] = []  # per statement sent: simple?, its responses to come
    logged: list[tuple[str, int]] = []

    def send(number: int, simple: bool) -> None:
        text = f"SELECT {number}"
        done: list[m.Message | str] = [_ROW] * (number % 3)
        done += [m.CommandComplete("SELECT 1", "SELECT", 1), m.ReadyForQuery("I")]
        if simple:
            tracker.frontend(m.Query(text), 0.0)
            done = [_COLUMNS, *done]
        else:
            for request in (m.Parse("", text, ()), m.Bind("", "", (), (), ()), m.Execute("", 0), m.Sync()):
                tracker.frontend(request, 0.0)
            done = [m.ParseComplete(), m.BindComplete(), *done]
        answers.append((simple, done))
        assert len(tracker.pending) - len(tracker._waiting()) < 64  # answered ones are dropped as requests come

    def answer() -> None:
        response = answers[0][1].pop(0)
        if response == _ROW:
            tracker.count_results(1, 10)
        elif response == _COLUMNS:
            tracker.description_arrived(None, 1.0)
        else:
            assert isinstance(response, m.Message)
            logged.extend((r["db.query.text"], r["db.response.returned_rows"]) for r in tracker.backend(response, 1.0))
        if not answers[0][1]:
            answers.pop(0)
        # A Query waits as one request until its ReadyForQuery; Parse, Bind, Execute and Sync one each.
        waiting = sum(1 if simple else len([r for r in left if isinstance(r, m.Message)]) for simple, left in answers)
        assert len(tracker._waiting()) == waiting
        assert tracker.awaiting == bool(answers)

    sent = 0
    for _ in range(ahead):
        send(sent, False)
        sent += 1
    for is_send, simple in steps:
        if is_send:
            send(sent, simple)
            sent += 1
        elif len(answers) > ahead:
            answer()
    while answers:
        answer()
    assert logged == [(f"SELECT {n}", n % 3) for n in range(sent)]
    assert not tracker.awaiting and tracker._waiting() == []
