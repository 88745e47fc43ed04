"""Message-detail events of a ready session (tracker/message_events.py and the message-detail loops), exact records.

What is computed once per session, class or result (an event's first fields,
a row decoder's redacted columns) must follow what changes: a reload's
redaction, an encoding switched in the middle of a chunk, the same message
type arriving with another tag.
"""

from __future__ import annotations

import io
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.protocol import build as b
from pgproxy.sink import LogSink
from pgproxy.tracker import message_events
from pgproxy.tracker.message_events import MessageEvents
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail, KeptRecord, Record
from pgproxy.tracker.redaction import RedactionPolicy
from pgproxy.tracker.session import _DESCRIBE_PORTAL, _EXECUTE_PORTAL, _SYNC_MESSAGE
from tests.test_tracker import session


def messages(records: list[Record]) -> list[dict[str, Any]]:
    return [r.fields for r in records if r.event == "message"]


def _select(columns: list[tuple[str, int]], row: list[bytes | None]) -> bytes:
    return b.row_description(columns) + b.data_row(row) + b.command_complete("SELECT 1") + b.ready_for_query()


def test_one_prepared_round_trip_gives_these_events() -> None:
    t = session(detail=Detail.MESSAGE)
    t.frontend(b.parse("s", "SELECT $1::int4 AS n", (23,)) + b.sync(), now=1.0)
    t.backend(b.message(b"1") + b.ready_for_query(), now=1.1)
    sent = t.frontend(b.bind("", "s", (b"7",)) + b.describe("P", "") + b.execute() + b.sync(), now=2.0)
    answered = t.backend(b.message(b"2") + _select([("n", 23)], [b"7"]), now=2.5)
    head = {"session": "s1"}
    assert messages(sent) == [
        {
            **head,
            "direction": "frontend",
            "type": "Bind",
            "tag": "B",
            "length": 18,
            "portal": "",
            "statement": "s",
            "parameters": [7],
            "parameter_formats": [],
            "result_formats": [],
        },
        {**head, "direction": "frontend", "type": "Describe", "tag": "D", "length": 6, "kind": "P", "name": ""},
        {**head, "direction": "frontend", "type": "Execute", "tag": "E", "length": 9, "portal": "", "max_rows": 0},
        {**head, "direction": "frontend", "type": "Sync", "tag": "S", "length": 4},
    ]
    assert [r.event for r in answered] == ["message"] * 5 + ["query"]
    assert messages(answered) == [
        {**head, "direction": "backend", "type": "BindComplete", "tag": "2", "length": 4},
        {
            **head,
            "direction": "backend",
            "type": "RowDescription",
            "tag": "T",
            "length": 26,
            "columns": [
                {
                    "name": "n",
                    "type": "int4",
                    "type_oid": 23,
                    "table_oid": 0,
                    "column_number": 0,
                    "type_size": -1,
                    "type_modifier": -1,
                    "format": "text",
                }
            ],
        },
        {**head, "direction": "backend", "type": "DataRow", "length": 11, "row_number": 1, "row": {"n": 7}},
        {
            **head,
            "direction": "backend",
            "type": "CommandComplete",
            "tag": "C",
            "length": 13,
            "command_tag": "SELECT 1",
            "command": "SELECT",
            "rows": 1,
        },
        {
            **head,
            "direction": "backend",
            "type": "ReadyForQuery",
            "tag": "Z",
            "length": 5,
            "status": "I",
            "transaction_status": "idle",
        },
    ]


def test_a_reload_redacts_the_columns_its_policy_names_from_the_next_row_on() -> None:
    t = session(detail=Detail.MESSAGE)
    t.frontend(b.query("SELECT 'a' AS pin, 'b' AS note"), now=1.0)
    (row,) = [f for f in messages(t.backend(_select([("pin", 25), ("note", 25)], [b"a", b"b"]), now=1.1)) if "row" in f]
    assert row["row"] == {"pin": "a", "note": "b"}
    assert t.reconfigure(TrackerOptions(detail=Detail.WIRE, redaction=RedactionPolicy(sensitive_names="^pin$")))
    t.frontend(b.query("SELECT 'a' AS pin, 'b' AS note"), now=2.0)
    (row,) = [f for f in messages(t.backend(_select([("pin", 25), ("note", 25)], [b"a", b"b"]), now=2.1)) if "row" in f]
    assert row["row"] == {"pin": "[redacted]", "note": "b"}
    # The dump masks the value's byte (0x61, "a") with "*" (0x2a).
    assert row["hex"] == (
        "0000  44 00 00 00 10 00 02 00  00 00 01 2a 00 00 00 01  D..........*....\n"
        "0010  62                                                b"
    )


def test_an_encoding_switched_within_a_chunk_decodes_the_rest_of_that_chunk() -> None:
    t = session(detail=Detail.MESSAGE)
    t.frontend(b.query("SET client_encoding TO LATIN1; SELECT 'é' AS e"), now=1.0)
    records = t.backend(
        b.command_complete("SET")
        + b.parameter_status("client_encoding", "LATIN1")
        + b.row_description([("e", 25)])
        + b.data_row(["é".encode("latin-1")])
        + b.command_complete("SELECT 1")
        + b.ready_for_query(),
        now=1.1,
    )
    shown = messages(records)
    assert [f["type"] for f in shown] == [
        "CommandComplete",
        "ParameterStatus",
        "RowDescription",
        "DataRow",
        "CommandComplete",
        "ReadyForQuery",
    ]
    assert shown[1]["name"] == "client_encoding" and shown[1]["value"] == "LATIN1"
    assert shown[3]["row"] == {"e": "é"}


def test_a_terminate_and_an_unknown_tag_still_take_the_general_path() -> None:
    t = session(detail=Detail.MESSAGE)
    records = t.frontend(b.message(b"?", b"xy") + b.message(b"X"), now=1.0)
    assert t.terminated
    assert [r.event for r in records][-1] == "message"
    assert messages(records)[-1] == {
        "session": "s1",
        "direction": "frontend",
        "type": "Terminate",
        "tag": "X",
        "length": 4,
    }


def test_a_row_description_seen_again_is_decoded_under_the_encoding_in_force() -> None:
    t = session(detail=Detail.MESSAGE)
    described = b.row_description([("X", 25)]).replace(b"X", b"\xe9")  # a column name in Latin-1 bytes

    def column_name() -> str:
        t.frontend(b.query("SELECT 1"), now=1.0)
        records = t.backend(described + b.command_complete("SELECT 0") + b.ready_for_query(), now=1.1)
        (shown,) = [f for f in messages(records) if f["type"] == "RowDescription"]
        return str(shown["columns"][0]["name"])

    assert column_name() == column_name() == "\\xe9"  # not UTF-8: shown escaped
    t.frontend(b.query("SET client_encoding TO LATIN1"), now=2.0)
    t.backend(
        b.command_complete("SET") + b.parameter_status("client_encoding", "LATIN1") + b.ready_for_query(), now=2.1
    )
    assert column_name() == "é"


#: Requests and responses a session's events are kept for (MessageEvents.known), and some they are not.
_KEPT_REQUESTS = [
    b.parse("s1", "SELECT $1::int4", (23,)) + b.sync(),
    b.bind("", "s1", (b"7",)) + b.describe("P", "") + b.execute() + b.sync(),
    b.parse("", "SELECT 'é', $1", ()) + b.bind("", "", (b"7",)) + b.describe("P", "") + b.execute() + b.sync(),
    b.describe("S", "s1") + b.flush(),
    b.close("P", "") + b.sync(),
    b.query("SELECT 1"),
]
_LATIN1_NAME = b.row_description([("X", 25)]).replace(b"X", b"\xe9")  # é in Latin-1, not UTF-8
_KEPT_RESPONSES = [
    b.message(b"1"),
    b.message(b"2"),
    b.message(b"3"),
    b.message(b"n"),
    b.message(b"t", b"\x00\x01\x00\x00\x00\x17"),
    b.row_description([("a", 23)]),
    _LATIN1_NAME,
    b.data_row([b"1"]),
    b.command_complete("SELECT 1"),
    b.ready_for_query(),
    b.ready_for_query("T"),
    b.message(b"s"),
    b.message(b"I"),
    b.error_response("ERROR", "42P01", "no such table"),
    b.parameter_status("client_encoding", "LATIN1"),
    b.parameter_status("client_encoding", "UTF8"),
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.lists(st.integers(0, len(_KEPT_RESPONSES) - 1), min_size=1, max_size=6)),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([Detail.MESSAGE, Detail.WIRE]),
)
def test_kept_events_are_the_events_built_for_the_same_bytes(
    chunks: list[tuple[bool, list[int]]], detail: Detail
) -> None:
    """A session keeping events by their bytes (MessageEvents.known) against a twin building every one.

    Repeated requests and answers, in chunks of several messages, with the
    encoding switched between chunks and within them (a column name whose
    bytes read differently in UTF-8 and Latin-1): every record the same, in
    the same order, hex dumps included.
    """
    kept, built = session(detail=detail), session(detail=detail)
    built._events = MessageEvents("s1", built.options, shortcuts=False)
    got: list[list[Record]] = [[], []]
    for index, (frontend, picks) in enumerate(chunks):
        if frontend:
            data = b"".join(_KEPT_REQUESTS[i % len(_KEPT_REQUESTS)] for i in picks)
        else:
            data = b"".join(_KEPT_RESPONSES[i] for i in picks)
        for tracker, out in zip((kept, built), got, strict=True):
            out += tracker.frontend(data, float(index)) if frontend else tracker.backend(data, float(index))
    for tracker, out in zip((kept, built), got, strict=True):
        out += tracker.closed("end_of_recording", now=99.0)
    assert not any(isinstance(r, KeptRecord) for r in got[1])
    assert [(r.event, r.level, r.fields) for r in got[0]] == [(r.event, r.level, r.fields) for r in got[1]]


_ANSWER_HEADS = [b"", b.message(b"2"), b.message(b"1") + b.message(b"2"), b.message(b"2") + b.message(b"n")]
_ANSWER_TAILS = [
    b.command_complete("SELECT 1") + b.ready_for_query(),
    b.command_complete("SELECT 2") + b.ready_for_query(),
    b.ready_for_query(),
    b.command_complete("SELECT 1") + b.ready_for_query("T"),
    b"",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(_ANSWER_HEADS) - 1),
            st.integers(0, 2),  # a RowDescription: none, one, another
            st.integers(0, 3),  # rows
            st.integers(0, len(_ANSWER_TAILS) - 1),
            st.integers(0, 2),  # the answer cut in two there: not, after its first message, before its last
        ),
        min_size=1,
        max_size=10,
    ),
    st.sampled_from([Detail.MESSAGE, Detail.WIRE]),
)
def test_answers_walked_in_place_get_the_events_built_from_frames(
    answers: list[tuple[int, int, int, int, int]], detail: Detail
) -> None:
    """The message-detail walk of whole answers (SessionTracker._backend_events) against a twin building every event.

    Prepared statements answered by the usual runs of kept responses around
    their rows (remembered by MessageEvents.remember_answer), the runs varied
    from one answer to the next and answers cut mid-way: every record, the
    statements' ``query`` events included, the same and in the same order.
    """
    walked, built = session(detail=detail), session(detail=detail)
    built._events = MessageEvents("s1", built.options, shortcuts=False)
    got: list[list[Record]] = [[], []]
    setup = b.parse("s", "SELECT $1::int4 AS n", (23,)) + b.sync()
    for tracker, out in zip((walked, built), got, strict=True):
        out += tracker.frontend(setup, 0.5) + tracker.backend(b.message(b"1") + b.ready_for_query(), 0.6)
    for index, (head, described, rows, tail, cut) in enumerate(answers):
        request = b.bind("", "s", (b"7",)) + b.describe("P", "") + b.execute() + b.sync()
        description = (b"", b.row_description([("n", 23)]), b.row_description([("m", 25)]))[described]
        answer = _ANSWER_HEADS[head] + description + b.data_row([b"7"]) * rows + _ANSWER_TAILS[tail]
        cut_at = (0, len(answer) - 6, 6)[cut] if len(answer) > 6 else 0
        chunks = [answer[:cut_at], answer[cut_at:]] if cut_at else [answer]
        for tracker, out in zip((walked, built), got, strict=True):
            out += tracker.frontend(request, float(index))
            for chunk in chunks:
                out += tracker.backend(chunk, index + 0.5)
    for tracker, out in zip((walked, built), got, strict=True):
        out += tracker.closed("end_of_recording", now=99.0)
    assert [(r.event, r.level, r.fields) for r in got[0]] == [(r.event, r.level, r.fields) for r in got[1]]
    assert walked.messages_from_server == built.messages_from_server


def test_a_statement_run_again_gets_its_kept_events_and_the_log_the_same_lines() -> None:
    t = session(detail=Detail.MESSAGE)
    t.frontend(b.parse("s", "SELECT $1::int4 AS n", (23,)) + b.sync(), now=1.0)
    t.backend(b.message(b"1") + b.ready_for_query(), now=1.1)
    runs = []
    for n in range(3):
        sent = t.frontend(b.bind("", "s", (b"7",)) + b.describe("P", "") + b.execute() + b.sync(), now=2.0 + n)
        answered = t.backend(b.message(b"2") + _select([("n", 23)], [b"7"]), now=2.5 + n)
        runs.append(sent + answered)
    kinds = [[type(r).__name__ for r in run if r.event == "message"] for run in runs]
    # Bind (its parameters) and DataRow (its row) are built each time; the rest kept from the first run on
    assert kinds[0] == ["Record"] + ["KeptRecord"] * 5 + ["Record"] + ["KeptRecord"] * 2
    assert kinds[1] == kinds[2] == kinds[0]
    # the very same records handed out again
    assert all(a is b_ for a, b_ in zip(runs[1], runs[2], strict=True) if isinstance(a, KeptRecord))
    assert [r.fields for r in runs[1]] == [r.fields for r in runs[2]]
    # the log sink renders a kept record once and writes the general path's line every time
    records = [r for run in runs for r in run]
    stream = io.StringIO()
    sink = LogSink(stream=stream, fmt="json")
    sink.emit_all(records[: len(runs[0])])
    sink.emit_all(records[len(runs[0]) :])
    sink.close()
    fast = stream.getvalue().splitlines()
    general_stream = io.StringIO()
    general = LogSink(stream=general_stream, fmt="json")
    for r in records:
        general.log(r.level, r.event, **r.fields)
    general.close()
    untimed = [re.sub(r'"timestamp":"[^"]*"', "T", line) for line in fast]
    assert untimed == [re.sub(r'"timestamp":"[^"]*"', "T", line) for line in general_stream.getvalue().splitlines()]
    assert all(r.rendered for r in records if isinstance(r, KeptRecord))


def test_an_event_kept_in_one_encoding_is_not_taken_in_another() -> None:
    t = session(detail=Detail.MESSAGE)

    def names(answer: bytes) -> list[str]:
        t.frontend(b.query("SELECT 1"), now=1.0)
        records = t.backend(answer + b.command_complete("SELECT 0") + b.ready_for_query(), now=1.1)
        return [str(f["columns"][0]["name"]) for f in messages(records) if f["type"] == "RowDescription"]

    assert names(_LATIN1_NAME) == names(_LATIN1_NAME) == ["\\xe9"]  # kept, read as UTF-8
    # The conversation follows the switch as it frames the chunk: the whole chunk reads in Latin-1
    assert names(_LATIN1_NAME + b.parameter_status("client_encoding", "LATIN1") + _LATIN1_NAME) == ["é", "é"]
    assert names(_LATIN1_NAME) == ["é"]
    assert names(b.parameter_status("client_encoding", "UTF8") + _LATIN1_NAME) == ["\\xe9"]


def test_the_portal_tail_taken_straight_is_libpqs_describe_execute_and_sync() -> None:
    """The three kept events a Bind's chunk ends with are looked up by these bytes (SessionTracker._portal_statement_events)."""
    assert (b.describe("P", ""), b.execute(), b.sync()) == (_DESCRIBE_PORTAL, _EXECUTE_PORTAL, _SYNC_MESSAGE)
    t = session(detail=Detail.MESSAGE)
    t.frontend(b.parse("s", "SELECT $1::int4 AS n", (23,)) + b.sync(), now=1.0)
    t.backend(b.message(b"1") + b.ready_for_query(), now=1.1)
    chunk = b.bind("", "s", (b"7",)) + _DESCRIBE_PORTAL + _EXECUTE_PORTAL + _SYNC_MESSAGE
    first = t.frontend(chunk, now=2.0)  # the tail's events kept from here on
    t.backend(b.message(b"2") + _select([("n", 23)], [b"7"]), now=2.5)
    again = t.frontend(chunk, now=3.0)
    assert [r.fields for r in again] == [r.fields for r in first]
    assert all(a is b_ for a, b_ in zip(first[1:], again[1:], strict=True))
    assert t.messages_from_client == 1 + 2 + 4 + 4  # the start-up packet, Parse and Sync, twice four


def test_kept_events_hold_a_bounded_share_of_the_messages_seen() -> None:
    """Distinct large messages (an ORM's unnamed Parse of each of its statements) do not pile up per session.

    A kept event holds its message's bytes, its fields and its rendered line: at most
    _KNOWN_BYTES of message bytes are kept per direction, then the session forgets them and starts again.
    """
    t = session(detail=Detail.MESSAGE)
    t.frontend(b.sync(), now=0.5)
    t.backend(b.ready_for_query(), now=0.6)
    events = t._events
    assert events is not None
    for i in range(40):
        text = f"SELECT {i} AS n, '" + "x" * 900 + "' AS pad"
        sent = t.frontend(b.parse("", text, ()) + b.sync(), now=1.0 + i)
        t.backend(b.message(b"1") + b.ready_for_query(), now=1.1 + i)
        kept = events.known(True, t.conv.encoding)
        assert sum(len(key) for key in kept) <= message_events._KNOWN_BYTES
        assert [f["query"] for f in messages(sent) if f["type"] == "Parse"] == [text]
    again = t.frontend(b.parse("", text, ()) + b.sync(), now=50.0)  # the last one is still kept
    assert isinstance(again[0], KeptRecord)


def test_remembered_answer_runs_are_held_within_the_kept_bytes() -> None:
    """A remembered head or tail counts towards the backend's kept bytes; one that would pass them is not taken."""
    events = MessageEvents("s", TrackerOptions(detail=Detail.MESSAGE))
    budget = message_events._KNOWN_BYTES
    events.remember_answer(b"h" * 100, (), b"t" * 50, ())
    assert (events.answer_head, events.answer_tail, events._known_backend_bytes) == (b"h" * 100, b"t" * 50, 150)
    events.remember_answer(b"H" * budget, (), b"", ())  # 50 + budget: over, the last head stays
    assert (events.answer_head, events._known_backend_bytes) == (b"h" * 100, 150)
    events.remember_answer(b"", (), b"T" * (budget - 100), ())  # replaces the tail: exactly the budget
    assert (events.answer_tail, events._known_backend_bytes) == (b"T" * (budget - 100), budget)
    events.remember_answer(b"x" * 101, (), b"", ())  # one byte over
    assert (events.answer_head, events._known_backend_bytes) == (b"h" * 100, budget)
