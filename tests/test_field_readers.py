"""The request readers query detail uses without message objects agree with the general decoding.

``read_query``, ``read_parse`` and ``read_kind_and_name`` take a shortcut (one
or two ``find``s) when a body is well formed and the generic reader otherwise:
on any body, the shortcut gives what the reader gives, or the reader raises
(the message is then Malformed, with the reader's error text). The session's
query-detail loop hands requests to the statement tracker by these fields;
for malformed requests it falls back to the general way, so both detail
levels report the same records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.protocol import build as b
from pgproxy.protocol import decoding as d
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.session import SessionTracker

_UNREADABLE = (d.DecodeError, ValueError, UnicodeError)

#: reader, the reader's general way, and well-formed bodies to mutate.
READERS: dict[str, tuple[Callable[..., Any], Callable[[Any], Any], list[bytes]]] = {
    "query": (d.read_query, d._query_by_reader, [b.query("SELECT 1")[5:], b.query("")[5:]]),
    "parse": (
        d.read_parse,
        d._parse_by_reader,
        # no parameter types (libpq's usual Parse): read_parse's shortcut without a find
        [
            b.parse("s1", "SELECT $1, $2", (23, 25))[5:],
            b.parse("", "SELECT 1", ())[5:],
            b.parse("s2", "SELECT $1", ())[5:],
        ],
    ),
    "describe": (
        d.read_kind_and_name,
        d._kind_and_name_by_reader,
        [b.describe("P", "")[5:], b.describe("S", "s1")[5:]],
    ),
}


def _outcome(read: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", read()
    except _UNREADABLE as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=400)
@given(
    st.sampled_from(sorted(READERS)),
    st.integers(min_value=0, max_value=2),
    st.lists(st.tuples(st.integers(min_value=0, max_value=40), st.binary(max_size=3)), max_size=3),
    st.integers(min_value=0, max_value=3),
)
def test_a_shortcut_reads_what_the_reader_reads(
    name: str, which: int, edits: list[tuple[int, bytes]], offset: int
) -> None:
    read, general, bodies = READERS[name]
    body = bodies[which % len(bodies)]
    for pos, insert in edits:  # replace a few bytes: truncations, stray NULs, bad counts
        pos = min(pos, len(body))
        body = body[:pos] + insert + body[pos + len(insert) :]
    buf = b"\x00" * offset + body + b"\x01"  # the body inside a larger buffer, as frames are
    start, end = offset, offset + len(body)
    assert _outcome(lambda: read(buf, start, end, "utf-8")) == _outcome(
        lambda: general(d._Reader(buf, start, end, "utf-8"))
    )


@pytest.mark.parametrize(
    ("tag", "frame"),
    [
        ("Q", b.query("SELECT 1")),
        ("P", b.parse("s1", "SELECT $1", (23,))),
        ("B", b.bind("p", "s1", (b"42", None))),
        ("D", b.describe("P", "p")),
        ("E", b.execute("p")),
        ("C", b.close("P", "p")),
        ("S", b.sync()),
    ],
)
def test_the_message_is_built_from_the_reader_fields(tag: str, frame: bytes) -> None:
    msg = d.decode_tagged(True, frame[0], frame, 5, len(frame))
    assert type(msg).__name__ != "Malformed"
    readers: dict[str, Callable[..., Any]] = {
        "Q": lambda *a: (d.read_query(*a),),
        "P": d.read_parse,
        "B": d.read_bind,
        "D": d.read_kind_and_name,
        "E": d.read_execute,
        "C": d.read_kind_and_name,
        "S": lambda *a: (),
    }
    fields = readers[tag](frame, 5, len(frame), "utf-8")
    assert tuple(getattr(msg, f) for f in msg.__dataclass_fields__) == fields


MALFORMED = [
    b"Q\x00\x00\x00\x07abc",  # no terminator
    b"P\x00\x00\x00\x0cs1\x00SEL\x00\x00",  # count cut short
    b"B\x00\x00\x00\x06\x00\x00",  # ends before the formats
    b"D\x00\x00\x00\x06Pp",  # name not terminated
    b"E\x00\x00\x00\x06p\x00",  # row limit missing
    b"S\x00\x00\x00\x05x",  # Sync with a body
    b"Q\x00\x00\x00\x07\xff\xfe\x00",  # not UTF-8 (shown escaped, not malformed)
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_a_malformed_request_gives_the_same_records_at_query_and_message_detail(bad: bytes) -> None:
    def run(detail: Detail) -> list[tuple[str, dict[str, Any]]]:
        tracker = SessionTracker("s1", TrackerOptions(detail=detail), clock=lambda: 0.0)
        out = tracker.frontend(b.startup_message({"user": "u", "database": "d"}), 0.0)
        out += tracker.backend(b.authentication_ok() + b.ready_for_query(), 0.0)
        out += tracker.frontend(bad + b.query("SELECT 1"), 1.0)
        reply = b.row_description([("x", 23)]) + b.data_row([b"1"]) + b.command_complete("SELECT 1")
        out += tracker.backend(reply + b.ready_for_query() + b.ready_for_query(), 2.0)
        return [(r.event, r.fields) for r in out if r.event != "message"]

    query = run(Detail.QUERY)
    assert query == run(Detail.MESSAGE)
    odd_text = bad.startswith(b"Q\x00\x00\x00\x07\xff")
    malformed = [fields for event, fields in query if event == "session.anomaly" and fields["kind"] == "malformed"]
    assert len(malformed) == (0 if odd_text else 1)
    texts = [fields["db.query.text"] for event, fields in query if event == "query"]
    assert texts[0] == ("\\xff\\xfe" if odd_text else "SELECT 1")


def _bind_by_reader(r: d._Reader) -> d.BindFields:
    """Bind's layout by the generic reader: the reference read_bind's index arithmetic is held to."""
    portal = r.cstring()
    statement = r.cstring()
    fmts = r.int16_array()
    params = r.values()
    results = r.int16_array()
    r.done()
    return portal, statement, fmts, params, results


def _execute_by_reader(r: d._Reader) -> tuple[str, int]:
    portal = r.cstring()
    limit = r.int32()
    r.done()
    return portal, limit


#: The two readers without a shortcut of their own, and well-formed bodies to mutate:
#: same fields when the body reads, an error (of their own wording) when it does not.
BY_INDEX: dict[str, tuple[Callable[..., Any], Callable[[Any], Any], list[bytes]]] = {
    "bind": (
        d.read_bind,
        _bind_by_reader,
        [
            b.bind("", "P0_1", (b"42",))[5:],
            b.bind("p", "s1", (b"42", None, b""), (0, 1), (1,))[5:],
            b.bind("", "", (), (1, 0, 1), (0, 1))[5:],
        ],
    ),
    "execute": (d.read_execute, _execute_by_reader, [b.execute()[5:], b.execute("p", 10)[5:]]),
}


@settings(max_examples=400)
@given(
    st.sampled_from(sorted(BY_INDEX)),
    st.integers(min_value=0, max_value=2),
    st.lists(st.tuples(st.integers(min_value=0, max_value=40), st.binary(max_size=4)), max_size=3),
    st.integers(min_value=0, max_value=3),
)
def test_bind_and_execute_read_what_the_reader_reads(
    name: str, which: int, edits: list[tuple[int, bytes]], offset: int
) -> None:
    read, general, bodies = BY_INDEX[name]
    body = bodies[which % len(bodies)]
    for pos, insert in edits:  # negative and oversized lengths, stray NULs, bad counts
        pos = min(pos, len(body))
        body = body[:pos] + insert + body[pos + len(insert) :]
    buf = b"\x00" * offset + body + b"\x01"
    start, end = offset, offset + len(body)
    ours, theirs = (
        _outcome(lambda: read(buf, start, end, "utf-8")),
        _outcome(lambda: general(d._Reader(buf, start, end, "utf-8"))),
    )
    assert (ours[0] == "ok") == (theirs[0] == "ok")
    if ours[0] == "ok":
        assert ours == theirs


@settings(max_examples=200)
@given(
    st.lists(
        st.sampled_from(["SELECT 1", "UPDATE 1", "INSERT 0 1", "BEGIN", "SELECT 1\x00x", "SÉLECT 2", ""]), max_size=12
    )
)
def test_a_known_command_complete_is_the_message_decoding_gives(tags: list[str]) -> None:
    """known_command_complete (its memo of the last tag, then the cache) answers what decoding answers.

    Every body is decoded after the question, so later questions find it
    cached: the answer is None or the very message decode_tagged returns,
    for repeated, alternating, malformed and non-ASCII tags.
    """
    for tag in tags:
        frame = b.command_complete(tag)
        buf = b"\x01" + frame + b"\x01"
        start, end = 6, 1 + len(frame)
        known = d.known_command_complete(buf, start, end)
        decoded = d.decode_tagged(False, ord("C"), buf, start, end, "utf-8")
        cached = d._COMMAND_COMPLETE_CACHE.get(buf[start : end - 1])
        assert known is None or known is decoded
        assert known is cached or (known is None and cached is decoded)
