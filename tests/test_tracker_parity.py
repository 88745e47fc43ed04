"""The query-detail hot loops and the general path must not drift apart.

Every recorded conversation, cut into chunks several ways, gives the same
``query``, ``session.*``, ``notice`` and ``notification`` records at query and
at message detail (message detail only adds ``message`` events). A recorded
chunk split into pieces keeps its arrival time, so durations agree too.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.protocol import build as b
from pgproxy.protocol.framing import Framer
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.session import _IDLE_TAIL, _PORTAL_TAIL, _PORTAL_TAIL_MESSAGES, SessionTracker
from tests.golden import Chunks, recordings

RECORDINGS = recordings()

Splitter = Callable[[bytes, random.Random], list[bytes]]


def _whole(data: bytes, rng: random.Random) -> list[bytes]:
    return [data]


def _bytewise(data: bytes, rng: random.Random) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def _random(data: bytes, rng: random.Random) -> list[bytes]:
    pieces, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, 64)
        pieces.append(data[pos : pos + step])
        pos += step
    return pieces


def _header_cuts(data: bytes, rng: random.Random) -> list[bytes]:
    """Cut inside every 5-byte message header position in turn (tag | length)."""
    cut = rng.randint(1, 4)
    return [data[:cut], data[cut:]] if len(data) > cut else [data]


SPLITTERS: dict[str, Splitter] = {"whole": _whole, "bytes": _bytewise, "random": _random, "headers": _header_cuts}


def _records(conn: Chunks, detail: Detail, split: Splitter, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    rng = random.Random(seed)
    tracker = SessionTracker("s1", TrackerOptions(detail=detail), clock=lambda: 0.0)
    out: list[Any] = []
    for index, (frontend, data) in enumerate(conn):
        now = float(index)  # every piece of a recorded chunk arrived when it did
        for piece in split(data, rng):
            out += tracker.frontend(piece, now) if frontend else tracker.backend(piece, now)
    out += tracker.closed("end_of_recording", now=float(len(conn)))
    return [(r.event, r.level, r.fields) for r in out if r.event != "message"]


@pytest.mark.parametrize("scenario", sorted(RECORDINGS))
@pytest.mark.parametrize("splitter", sorted(SPLITTERS))
def test_query_and_message_detail_agree_on_every_chunking(scenario: str, splitter: str) -> None:
    for number, conn in enumerate(RECORDINGS[scenario]):
        reference = _records(conn, Detail.QUERY, _whole, 0)
        assert any(event == "session.ended" for event, _, _ in reference)
        for detail in (Detail.QUERY, Detail.MESSAGE):
            for seed in range(3 if splitter in ("random", "headers") else 1):
                got = _records(conn, detail, SPLITTERS[splitter], seed)
                assert got == reference, (scenario, number, detail.name, seed)


def test_outcomes_recording_shows_what_the_server_did() -> None:
    """The recording of Bind failures, suspended portals and multi-statement Queries, at query detail."""
    events = [
        fields
        for conn in RECORDINGS["outcomes"]
        for event, _, fields in _records(conn, Detail.QUERY, _whole, 0)
        if event == "query"
    ]
    shape = [(e["db.query.text"], e["outcome"], e.get("rolled_back"), e.get("portal_suspended")) for e in events]
    assert ("select 1/$1::int", "error", None, None) in shape
    assert shape.count(("select g from generate_series(1, 3) g", "ok", None, True)) == 2
    assert ("insert into rb values (1)", "ok", True, None) in shape
    assert ("select 3", "skipped", None, None) in shape
    assert [s[1] for s in shape if s[0].endswith(("s1", "selec 2", "s3"))] == ["skipped", "error", "skipped"]
    assert ("select $1::int", "error", None, None) in shape  # psycopg's "abc", at Bind: one event
    assert [s[1] for s in shape if s[0] == "select $1::int + 100"] == ["skipped"]


_QUERY_ONLY_KEYS = ("statements", "unlogged_statements", "unanswered_requests")


def _state(t: SessionTracker) -> tuple[object, ...]:
    counted = (t.messages_from_client, t.messages_from_server, t.bytes_from_client, t.bytes_from_server)
    return (t.in_transaction, t.between_messages, t.ready, *counted)


@pytest.mark.parametrize("scenario", sorted(RECORDINGS))
@pytest.mark.parametrize("splitter", ["whole", "random", "headers"])
def test_connection_detail_counts_what_query_detail_follows(scenario: str, splitter: str) -> None:
    """Connection detail's counting path (once ready) against query detail's full one, step by step.

    After every piece both count the same messages and bytes, agree on the
    transaction and message boundaries, and connection detail never calls a
    session idle that query detail knows is busy (it may call it busy longer:
    extended-protocol steps count as outstanding until their Sync). The
    session records agree but for the fields only query detail has.
    """
    for number, conn in enumerate(RECORDINGS[scenario]):
        for seed in range(2 if splitter != "whole" else 1):
            rng = random.Random(seed)
            trackers = [
                SessionTracker("s1", TrackerOptions(detail=d), clock=lambda: 0.0)
                for d in (Detail.CONNECTION, Detail.QUERY)
            ]
            records: list[list[Any]] = [[], []]
            for index, (frontend, data) in enumerate(conn):
                for piece in SPLITTERS[splitter](data, rng):
                    for tracker, out in zip(trackers, records, strict=True):
                        out += (
                            tracker.frontend(piece, float(index)) if frontend else tracker.backend(piece, float(index))
                        )
                    connection, query = trackers
                    where = (scenario, number, index, seed)
                    assert _state(connection) == _state(query), where
                    assert connection.busy or not query.busy, where
                    assert connection.request_outstanding or not query.request_outstanding, where
            sessions = []
            for tracker, out in zip(trackers, records, strict=True):
                out += tracker.closed("end_of_recording", now=float(len(conn)))
                sessions.append(
                    [
                        (r.event, r.level, {k: v for k, v in r.fields.items() if k not in _QUERY_ONLY_KEYS})
                        for r in out
                        if r.event.startswith("session.")
                    ]
                )
            assert sessions[0] == sessions[1], (scenario, number, seed)


def _pipelined() -> list[Chunks]:
    """A conversation no recording has: pipelined requests, several ReadyForQuery a chunk, odd messages once ready."""
    reply = b.row_description([("a", 23)]) + b.data_row([b"1"]) + b.command_complete("SELECT 1")
    return [
        [
            (True, b.startup_message({"user": "u", "database": "d"})),
            (False, b.authentication_ok() + b.parameter_status("client_encoding", "UTF8") + b.ready_for_query()),
            (True, b.query("SELECT 1") * 3),
            (False, reply + b.ready_for_query() + reply + b.ready_for_query("T")),
            (False, reply + b.ready_for_query("E")),
            (True, b.message(b"F", bytes(10)) * 2),  # FunctionCall, answered by ReadyForQuery too
            (False, b.message(b"V", b"\xff\xff\xff\xff") + b.ready_for_query()),
            (True, b.parse("", "SELECT 1") + b.bind("", "") + b.execute() + b.copy_data(b"x")),
            (True, b.sync() + b.query("SELECT 2")),
            (False, b.message(b"1") + b.message(b"2") + reply + b.ready_for_query() + reply),
            (False, b.ready_for_query() + b.message(b"E", b"no fields") + b.ready_for_query("I")),
            (False, b.parameter_status("client_encoding", "LATIN1") + b.notice_response("NOTICE", "00000", "n")),
            (True, b.query("x" * (1 << 20)) + b.query("SELECT 3")),
            (False, b.message(b"S", b"malformed") + reply + b.ready_for_query()),
            (True, b.query("SELECT 4") + b.message(b"X") + b.sync()),  # a Sync after Terminate: still terminated
        ],
        _remembered_tails(),
    ]


def _remembered_tails() -> Chunks:
    """Answers the pure build's count takes by their idle end and a remembered CommandComplete, and some it must not.

    Drivers' requests (a Query alone, a Bind or a Parse and Bind before libpq's
    Describe, Execute and Sync), answers ending idle in the same CommandComplete
    (learnt, then taken), another one, and chunks that end in the remembered
    bytes or an idle ReadyForQuery's inside a DataRow (the walk steps over them).
    """
    done = b.command_complete("SELECT 1") + b.ready_for_query()
    head = b.row_description([("a", 23)])
    tail = _PORTAL_TAIL
    return [
        (True, b.startup_message({"user": "u", "database": "d"})),
        (False, b.authentication_ok() + b.ready_for_query()),
        (True, b.query("SELECT 1")),
        (False, head + b.data_row([b"1"]) + done),  # learnt
        (True, b.query("SELECT 2")),
        (False, head + b.data_row([b"2"]) + done),  # taken
        (True, b.bind("", "s1", (b"7",)) + tail),
        (False, b.message(b"2") + head + b.data_row([b"3"]) + b.data_row([b"4"]) + done),
        (True, b.parse("", "SELECT $1", ()) + b.bind("", "", (b"7",)) + tail),
        (False, b.message(b"1") + b.message(b"2") + head + done),
        (True, b.query("SELECT 5") + b.query("SELECT 6")),
        (False, done + head + b.command_complete("SELECT 0") + b.ready_for_query()),  # another one, learnt
        (True, b.query("SELECT 7") + b.query("SELECT 8")),
        (False, head + b.data_row([b"x" + b.command_complete("SELECT 0") + b.ready_for_query()])),  # steps over it
        (False, b.command_complete("SELECT 1") + head + b.data_row([b"y" + b.ready_for_query()])),  # and over it
        (False, b.command_complete("SELECT 1") + b.ready_for_query("T")),
        (True, b.describe("P", "") + b.query("SELECT 9") + b.bind("", "", ()) + tail),  # walked before the tail
        (False, b.message(b"2") + done + b.message(b"2") + done),
        (True, b.bind("", "s1") + b.message(b"X") + tail),  # a Terminate before the tail: the general way
    ]


def _counting_state(t: SessionTracker) -> tuple[object, ...]:
    return (*_state(t), t._ready_due, t._unsynced, t._status, t.terminated, t.anomalies, t.conv.phase)


def _declining_framers(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The ids of framers that never take a counting or in-place way (a framed twin's): fill it in."""
    count_tags, pass_whole, feed_one, feed_bind = (
        Framer.count_tags,
        Framer.pass_whole,
        Framer.feed_one,
        Framer.feed_bind,
    )
    declining: set[int] = set()
    # (pass_whole: a lone Terminate's way, and the login burst's, which the twin then frames too;
    # feed_one and feed_bind: the pure build's way for a Query alone and libpq's extended requests)
    monkeypatch.setattr(
        Framer, "pass_whole", lambda self, *args: False if id(self) in declining else pass_whole(self, *args)
    )
    monkeypatch.setattr(
        Framer, "count_tags", lambda self, *args: -1 if id(self) in declining else count_tags(self, *args)
    )
    monkeypatch.setattr(
        Framer, "feed_one", lambda self, *args: False if id(self) in declining else feed_one(self, *args)
    )
    monkeypatch.setattr(
        Framer, "feed_bind", lambda self, *args: -1 if id(self) in declining else feed_bind(self, *args)
    )
    return declining


def _logged_in(detail: Detail) -> SessionTracker:
    t = SessionTracker("s1", TrackerOptions(detail=detail), clock=lambda: 0.0)
    t.frontend(b.startup_message({"user": "u", "database": "d"}), 0.0)
    t.backend(b.authentication_ok() + b.backend_key_data(1) + b.ready_for_query(), 0.0)
    return t


def test_a_chunk_ending_in_a_stray_zero_byte_is_counted_as_the_framed_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before connection detail's count has learnt how answers end, no chunk's end is taken for it.

    A server's message with the tag 0 cut after its tag byte (its length in the next chunk) must
    leave the count where framing leaves it: one message held back, not two idle ones taken.
    """
    declining = _declining_framers(monkeypatch)
    counting, framed = _logged_in(Detail.CONNECTION), _logged_in(Detail.CONNECTION)
    declining.update((id(framed.conv.frontend), id(framed.conv.backend)))
    stray = b"\x00" + struct.pack("!I", 4)  # tag 0, no body
    pieces = [
        (True, b.query("SELECT 1")),
        (False, b.command_complete("SELECT 1") + b.ready_for_query() + stray[:1]),
        (False, stray[1:]),
        (True, b.query("SELECT 1")),
        (False, b.command_complete("SELECT 1") + b.ready_for_query()),
    ]
    for frontend, piece in pieces:
        for t in (counting, framed):
            t.frontend(piece, 1.0) if frontend else t.backend(piece, 1.0)
        assert _counting_state(counting) == _counting_state(framed), piece


def test_a_reload_from_connection_to_query_detail_logs_the_next_statement_in_full() -> None:
    """What connection detail's count remembered of the last answer's end is not query detail's memo.

    The pure build's count learns the bytes an idle answer ended with; query detail's walk takes an
    answer ending in those bytes with the CommandComplete it remembered: after a reload the
    statement is logged as by a session that never counted.
    """
    sessions = [_logged_in(Detail.CONNECTION) for _ in range(2)]
    sessions[1]._memo = None  # as the compiled build: no memo at all
    answer = b.row_description([("n", 23)]) + b.data_row([b"1"]) + b.command_complete("SELECT 1") + b.ready_for_query()
    logged: list[list[tuple[str, dict[str, Any]]]] = []
    for t in sessions:
        for _ in range(2):  # the count learns how the answer ends
            t.frontend(b.query("SELECT 1"), 1.0)
            t.backend(answer, 1.1)
        assert t.reconfigure(TrackerOptions(detail=Detail.QUERY))
        records = t.frontend(b.query("SELECT 1"), 2.0) + t.backend(answer, 2.5)
        logged.append([(r.event, r.fields) for r in records])
    assert [event for event, _ in logged[0]] == ["query"]
    assert logged[0] == logged[1]


@pytest.mark.parametrize("scenario", [*sorted(RECORDINGS), "pipelined"])
@pytest.mark.parametrize("splitter", ["whole", "random", "headers"])
def test_connection_detail_counting_way_agrees_with_the_framed_way(
    scenario: str, splitter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connection detail's counting way (the framer's count_tags) against its framed way, step by step.

    The twin tracker's framers never take the counting way (count_tags declines
    every chunk), so it frames every chunk and counts the frames: after every
    piece both hold the same counts, status and boundaries, and the records agree.
    """
    taken = 0
    declining = _declining_framers(monkeypatch)
    for number, conn in enumerate(_pipelined() if scenario == "pipelined" else RECORDINGS[scenario]):
        for seed in range(2 if splitter != "whole" else 1):
            rng = random.Random(seed)
            counting, framed = (
                SessionTracker("s1", TrackerOptions(detail=Detail.CONNECTION), clock=lambda: 0.0) for _ in range(2)
            )
            declining.clear()
            declining.update((id(framed.conv.frontend), id(framed.conv.backend)))
            records: list[list[Any]] = [[], []]
            for index, (frontend, data) in enumerate(conn):
                for piece in SPLITTERS[splitter](data, rng):
                    before = counting.messages_from_client + counting.messages_from_server
                    for tracker, out in zip((counting, framed), records, strict=True):
                        out += tracker.frontend(piece, 1.0) if frontend else tracker.backend(piece, 1.0)
                    taken += (
                        counting.messages_from_client + counting.messages_from_server > before and counting._counting
                    )
                    assert _counting_state(counting) == _counting_state(framed), (scenario, number, index, seed)
            for tracker, out in zip((counting, framed), records, strict=True):
                out += tracker.closed("end_of_recording", now=2.0)
            assert [(r.event, r.level, r.fields) for r in records[0]] == [
                (r.event, r.level, r.fields) for r in records[1]
            ], (scenario, number, seed)
    assert taken


def _walk_state(t: SessionTracker) -> tuple[object, ...]:
    error = t.conv.error
    errors = (error.direction, error.offset, error.reason, error.excerpt) if error is not None else None
    framers = tuple((f._offset, f.buffered, f.mode) for f in (t.conv.frontend, t.conv.backend))
    return (*_state(t), framers, t.conv.phase, errors, t.terminated, t.conv.encoding, t.conv.parameters)


#: Requests a chunk walked in place may hold (and a few it may not: Close, Flush, CopyData, Terminate).
_REQUESTS = [
    b.query("SELECT 1"),
    b.query("SELECT 1; SELECT 2"),
    b.parse("", "SELECT $1", (23,)),
    b.parse("s1", "SELECT $1::int"),
    b.bind("", "s1", (b"42",)),
    b.bind("", "", (b"1", None), (0, 1), (1,)),
    b.describe("P", ""),
    b.describe("S", "s1"),
    b.execute(),
    b.execute("", 1),
    b.sync(),
    b.close("S", "s1"),
    b.message(b"H"),
    b.copy_data(b"x"),
    b.message(b"X"),  # alone in its chunk: SessionTracker.frontend's way for a goodbye
    b.bind("", "s1", (b"7",)) + b.describe("P", "") + b.execute() + b.sync(),  # pgbench -M prepared
    # pgbench -M extended: libpq's Describe, Execute and Sync end the chunk (the walk's _PORTAL_TAIL)
    b.parse("", "SELECT $1", ()) + b.bind("", "", (b"7",)) + b.describe("P", "") + b.execute() + b.sync(),
    b.describe("P", "") + b.execute() + b.sync(),
    b.describe("P", "") + b.execute("", 5) + b.sync(),
]
_ANSWER = b.row_description([("a", 23)]) + b.data_row([b"1"]) + b.command_complete("SELECT 1") + b.ready_for_query()
#: Responses a chunk walked in place may hold (and a few it may not: ParameterStatus, CopyData, CopyOutResponse).
_RESPONSES = [
    b.message(b"1"),
    b.message(b"2"),
    b.message(b"3"),
    b.row_description([("a", 23)]),
    b.data_row([b"1"]),
    b.data_row([b"22", None]),
    b.command_complete("SELECT 1"),
    b.command_complete("INSERT 0 3"),
    b.ready_for_query(),
    b.ready_for_query("T"),
    b.ready_for_query("E"),
    b.message(b"n"),
    b.message(b"s"),
    b.message(b"I"),
    b.message(b"t", b"\x00\x01\x00\x00\x00\x17"),
    b.error_response("ERROR", "42P01", "no such table"),
    b.notice_response("NOTICE", "00000", "n"),
    b.parameter_status("TimeZone", "UTC"),
    b.parameter_status("client_encoding", "LATIN1"),
    b.copy_response(b"H", 1),
    b.copy_data(b"x"),
    _ANSWER,
    b.message(b"2") + _ANSWER,
    b.message(b"1") + b.message(b"2") + _ANSWER,
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.lists(st.integers(min_value=0, max_value=max(len(_REQUESTS), len(_RESPONSES)) - 1), max_size=4),
            st.one_of(  # mostly well-formed
                st.just([]), st.lists(st.tuples(st.integers(0, 60), st.binary(max_size=3)), min_size=1, max_size=1)
            ),
            st.one_of(st.just(0), st.integers(min_value=1, max_value=2)),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_query_detail_walks_whole_messages_as_the_framed_way_does(
    chunks: list[tuple[bool, list[int], list[tuple[int, bytes]], int]],
) -> None:
    """Query detail's in-place walk of a chunk of whole messages (Framer.feed_whole) against the framed way.

    The twin is fed the same chunks as bytearrays, which the walk never takes:
    after every chunk both hold the same counts, stream offsets, phase,
    parameters and errors, and their records agree, for well-formed chunks,
    chunks with a mutated body or header (malformed messages, impossible
    lengths) and chunks cut short, in both directions.
    """
    walked, framed = (SessionTracker("s1", TrackerOptions(detail=Detail.QUERY), clock=lambda: 0.0) for _ in range(2))
    records: list[list[Any]] = [[], []]
    login = b.authentication_ok() + b.parameter_status("client_encoding", "UTF8") + b.ready_for_query()
    for tracker, out in zip((walked, framed), records, strict=True):
        out += tracker.frontend(b.startup_message({"user": "u", "database": "d"}), 0.0)
        out += tracker.backend(login, 0.0)
    for index, (frontend, picks, edits, cut) in enumerate(chunks):
        kinds = _REQUESTS if frontend else _RESPONSES
        data = b"".join(kinds[i % len(kinds)] for i in picks)
        for pos, insert in edits:  # a mutated body or header
            pos = min(pos, len(data))
            data = data[:pos] + insert + data[pos + len(insert) :]
        if cut:
            data = data[:-cut]  # a partial last message: held back
        if frontend:
            records[0] += walked.frontend(data, float(index))
            records[1] += framed.frontend(bytearray(data), float(index))  # type: ignore[arg-type]
        else:
            records[0] += walked.backend(data, float(index))
            records[1] += framed.backend(bytearray(data), float(index))  # type: ignore[arg-type]
        assert _walk_state(walked) == _walk_state(framed)
    for tracker, out in zip((walked, framed), records, strict=True):
        out += tracker.closed("end_of_recording", now=99.0)
    assert [(r.event, r.level, r.fields) for r in records[0]] == [(r.event, r.level, r.fields) for r in records[1]]


def test_the_walks_known_tails_are_what_libpq_and_the_server_send() -> None:
    """The bytes the walks take unread are the messages they stand for (the builder's, as libpq sends them)."""
    assert b.describe("P", "") + b.execute() + b.sync() == _PORTAL_TAIL
    assert _PORTAL_TAIL_MESSAGES == 3
    assert b.ready_for_query("I") == _IDLE_TAIL


def _walked_and_framed(
    chunks: list[tuple[bool, bytes]], also: Callable[[SessionTracker], object] = lambda t: None
) -> tuple[list[Any], list[Any]]:
    """Feed the chunks (frontend?, bytes) to a tracker as bytes (walked) and to its twin as bytearrays (framed).

    After every chunk their states (and ``also``'s answers) agree.
    """
    walked, framed = (SessionTracker("s1", TrackerOptions(detail=Detail.QUERY), clock=lambda: 0.0) for _ in range(2))
    records: list[list[Any]] = [[], []]
    login = b.authentication_ok() + b.ready_for_query()
    for tracker, out in zip((walked, framed), records, strict=True):
        out += tracker.frontend(b.startup_message({"user": "u", "database": "d"}), 0.0)
        out += tracker.backend(login, 0.0)
    for index, (frontend, data) in enumerate(chunks):
        for tracker, out, chunk in ((walked, records[0], data), (framed, records[1], bytearray(data))):
            feed = tracker.frontend if frontend else tracker.backend
            out += feed(chunk, float(index))  # type: ignore[arg-type]
        assert _walk_state(walked) == _walk_state(framed)
        assert also(walked) == also(framed)
    for tracker, out in zip((walked, framed), records, strict=True):
        out += tracker.closed("end_of_recording", now=99.0)
    return [(r.event, r.level, r.fields) for r in records[0]], [(r.event, r.level, r.fields) for r in records[1]]


def test_a_known_tail_inside_a_message_is_read_as_that_message() -> None:
    """A chunk whose last bytes spell a known tail, inside its last message, is walked message by message.

    A Bind whose result format codes end in _PORTAL_TAIL's bytes and a DataRow
    whose value ends in _IDLE_TAIL's: the walk never reaches a message boundary
    there, so it reads them whole, as the framed way does.
    """
    codes = struct.unpack("!83h", bytes(166 - len(_PORTAL_TAIL)) + _PORTAL_TAIL)
    bind = b.bind("", "s1", (b"1",), (), codes)
    row = b.data_row([b"x" + _IDLE_TAIL])
    assert bind.endswith(_PORTAL_TAIL) and row.endswith(_IDLE_TAIL)
    parse = b.parse("s1", "SELECT $1") + b.sync()
    walked, framed = _walked_and_framed(
        [
            (True, parse),
            (False, b.message(b"1") + b.ready_for_query()),
            (True, bind + b.describe("P", "") + b.execute() + b.sync()),
            (True, bind),  # the Bind ends the chunk: its tail-like end is a Bind's
            (False, b.message(b"2") + b.row_description([("a", 23)]) + row),
            (False, b.command_complete("SELECT 1") + b.ready_for_query()),
        ]
    )
    assert walked == framed
    assert [fields["db.query.text"] for event, _, fields in walked if event == "query"] == ["SELECT $1"]


def test_a_query_alone_in_its_chunk_is_taken_as_the_walk_takes_it() -> None:
    """SessionTracker.frontend's way for a Query alone in its chunk (Framer.feed_one) against the framed way.

    Well formed, with a body that does not read (a NUL inside, none at its end:
    Malformed, and the session goes on undecoded), and with a length that
    says more or less than the chunk holds.
    """
    query = b.query("SELECT 1")
    answer = b.row_description([("a", 23)]) + b.data_row([b"1"]) + b.command_complete("SELECT 1") + b.ready_for_query()
    wrong_length = [query[:-1], query + b.sync(), query[:1] + struct.pack("!I", 99) + query[5:]]
    for chunk in [query, *wrong_length, b"Q\x00\x00\x00\x0bSE\x00T 1\x00", b"Q\x00\x00\x00\x0cSELECT 1x"]:
        walked, framed = _walked_and_framed([(True, query), (False, answer), (True, chunk), (False, answer)])
        assert walked == framed, chunk
        assert [event for event, _, _ in walked].count("query") >= 1


def test_an_answer_ending_as_the_last_one_did_is_walked_as_the_framed_way() -> None:
    """The pure build's memo of the last answer's end (_AnswerMemo.done_tail) against the framed way.

    Answers that end in the remembered CommandComplete and idle ReadyForQuery
    (alone, after another CommandComplete in the same chunk, after a different
    one), one whose last DataRow's value ends in those bytes (the walk never
    reaches them on a message boundary), and answers that end otherwise.
    """
    select = b.command_complete("SELECT 1")
    done_tail = select + b.ready_for_query()
    head = b.row_description([("a", 23)]) + b.data_row([b"1"])
    answers = [
        head + done_tail,  # learnt
        head + done_tail,  # taken at the tail
        head + select + head + done_tail,  # "SELECT 1; SELECT 1": a CommandComplete before the tail
        head + b.command_complete("SELECT 2") + head + done_tail,
        b.command_complete("UPDATE 1") + done_tail,  # a CommandComplete just before the remembered one
        b.command_complete("UPDATE 1") + done_tail,
        b.command_complete("UPDATE 1") + done_tail,
        head + b.command_complete("INSERT 0 3") + b.ready_for_query(),  # another end, learnt
        head + done_tail,
        head + done_tail,
        b.row_description([("a", 25)]) + b.data_row([b"x" + select]) + b.ready_for_query(),  # inside a DataRow
        b.error_response("ERROR", "42P01", "no such table") + b.ready_for_query(),
        head + select + b.ready_for_query("T"),
        head + done_tail[:-1] + b"E",
        head + done_tail,
    ]
    chunks: list[tuple[bool, bytes]] = []
    for answer in answers:
        two = answer.count(b"C\x00\x00\x00") == 2
        chunks += [(True, b.query("SELECT 1; SELECT 2" if two else "SELECT 1")), (False, answer)]
    walked, framed = _walked_and_framed(chunks)
    assert walked == framed
    tags = [fields.get("command_tag") for event, _, fields in walked if event == "query"]
    assert tags[:6] == ["SELECT 1", "SELECT 1", "SELECT 1", "SELECT 1", "SELECT 2", "SELECT 1"]


def test_an_answer_starting_as_the_last_one_did_is_walked_as_the_framed_way() -> None:
    """The pure build's memo of the last answer's start (_AnswerMemo.head) against the framed way.

    Extended-protocol answers whose step completions and RowDescription repeat
    (taken unread), change (learnt again), or are followed by a malformed
    message or cut short (the chunk goes the framed way), and a RowDescription
    after other messages (not learnt).
    """
    parse, bind = b.message(b"1"), b.message(b"2")
    desc, other = b.row_description([("a", 23)]), b.row_description([("b", 25)])
    rest = b.data_row([b"1"]) + b.command_complete("SELECT 1") + b.ready_for_query()
    answers = [
        bind + desc + rest,  # learnt
        bind + desc + rest,  # taken unread
        bind + desc + b.data_row([b"2"]) + b.command_complete("SELECT 1") + b.ready_for_query("T"),
        bind + desc + b.error_response("ERROR", "22012", "division by zero") + b.ready_for_query(),
        parse + bind + other + rest,  # learnt again
        parse + bind + other + rest,
        parse + bind + other,  # cut short: the rest follows
        rest,
        bind + desc + rest,
        desc + rest,  # a Query's answer: no step completions
        desc + rest,
        b.notice_response("NOTICE", "00000", "n") + desc + rest,  # not learnt: a notice first
        desc + desc + rest,
        bind + desc + rest,
        bind + desc + b"D\x00\x00\x00\x02",  # an impossible length after the remembered start: decoding stops
    ]
    requests = {
        0: b.bind("", "s1", (b"1",)) + b.describe("P", "") + b.execute() + b.sync(),
        1: b.parse("", "SELECT 1", ()) + b.bind("", "", ()) + b.describe("P", "") + b.execute() + b.sync(),
    }
    chunks: list[tuple[bool, bytes]] = [
        (True, b.parse("s1", "SELECT $1") + b.sync()),
        (False, parse + b.ready_for_query()),
    ]
    for answer in answers:
        if answer.startswith(bind):
            chunks.append((True, requests[0]))
        elif answer.startswith(parse):
            chunks.append((True, requests[1]))
        elif answer != rest:
            chunks.append((True, b.query("SELECT 1")))
        chunks.append((False, answer))
    walked, framed = _walked_and_framed(chunks)
    assert walked == framed
    assert [event for event, _, _ in walked].count("query") >= 12
    assert any(event == "session.anomaly" for event, _, _ in walked)


def test_a_bind_before_libpqs_tail_is_taken_as_the_walk_takes_it() -> None:
    """SessionTracker.frontend's way for a Bind, Describe, Execute and Sync chunk (Framer.feed_bind) against the framed way.

    Well formed, with a body that does not read (Malformed, and the session
    goes on undecoded), and with a length that says more or less than the
    chunk holds before the tail.
    """
    bind = b.bind("", "s1", (b"1",))
    unreadable = bind[:12] + b"\x00\x09" + bind[14:]  # nine parameters, one there
    assert len(unreadable) == len(bind)
    wrong_length = [bind[:1] + struct.pack("!I", len(bind) - 2) + bind[5:], bind[:1] + struct.pack("!I", 99) + bind[5:]]
    answer = b.message(b"2") + _ANSWER
    for first in [bind, *wrong_length, unreadable]:
        chunks = [(True, b.parse("s1", "SELECT $1") + b.sync()), (False, b.message(b"1") + b.ready_for_query())]
        chunks += [(True, bind + _PORTAL_TAIL), (False, answer), (True, first + _PORTAL_TAIL), (False, answer)]
        walked, framed = _walked_and_framed(chunks, _awaited)
        assert walked == framed, first
        assert [event for event, _, _ in walked].count("query") >= 1


def _awaited(t: SessionTracker) -> list[str]:
    """What the statement tracker awaits answers to (every request's expectation is queued, even unanswered ones)."""
    statements = t.statements
    assert statements is not None
    return [type(item).__name__ for item in statements.pending[statements._first :]]


def test_a_parse_and_bind_before_libpqs_tail_are_taken_as_the_walk_takes_them() -> None:
    """SessionTracker.frontend's way for a Parse, Bind, Describe, Execute and Sync chunk (Framer.feed_bind).

    Against the framed way: well formed, either body unreadable, lengths that
    do not meet the next message or the tail, and another message second.
    """
    parse, bind = b.parse("", "SELECT $1", ()), b.bind("", "", (b"1",))
    unreadable_parse = parse[:-1] + b"x"  # its types' count cut: no terminating zero
    unreadable_bind = bind[:11] + b"\x00\x09" + bind[13:]  # nine parameters, one there
    firsts = [
        parse + bind,
        unreadable_parse + bind,
        parse + unreadable_bind,
        parse[:1] + struct.pack("!I", len(parse) - 2) + parse[5:] + bind,
        parse[:1] + struct.pack("!I", len(parse) + 3) + parse[5:] + bind,
        parse + bind[:1] + struct.pack("!I", len(bind) - 2) + bind[5:],
        parse + b.describe("S", ""),
        parse + b"E" + struct.pack("!I", 12) + bytes(8),  # an Execute whose body would read as a Bind's
        parse + bind[:1] + struct.pack("!I", 2) + bind[5:],
    ]
    answer = b.message(b"1") + b.message(b"2") + _ANSWER
    for first in firsts:
        chunks = [(True, parse + bind + _PORTAL_TAIL), (False, answer), (True, first + _PORTAL_TAIL), (False, answer)]
        walked, framed = _walked_and_framed(chunks, _awaited)
        assert walked == framed, first
        assert [event for event, _, _ in walked].count("query") >= 1


_MEMO_SELECT = b.command_complete("SELECT 1")
#: Answer pieces around the pure build's _AnswerMemo: step runs, RowDescriptions, rows whose values spell the
#: remembered bytes, other CommandCompletes, ReadyForQuery of each status, and messages the walk does not take.
_MEMO_PIECES = [
    b.message(b"1"),
    b.message(b"2"),
    b.message(b"3"),
    b.row_description([("a", 23)]),
    b.row_description([("b", 25)]),
    b.data_row([b"1"]),
    b.data_row([b"x" + _MEMO_SELECT + _IDLE_TAIL]),
    b.data_row([b"\x00" + b.message(b"2") + b.row_description([("a", 23)])]),
    _MEMO_SELECT,
    b.command_complete("UPDATE 1"),
    b.ready_for_query(),
    b.ready_for_query("T"),
    b.ready_for_query("E"),
    b.error_response("ERROR", "22012", "division by zero"),
    b.notice_response("NOTICE", "00000", "n"),
    b.notification_response(7, "ch", "p"),
    b.parameter_status("TimeZone", "UTC"),
    b.parameter_status("client_encoding", "LATIN1"),
    b.message(b"I"),
    b.message(b"s"),
    b.message(b"n"),
    b.copy_response(b"H", 1) + b.copy_data(b"x") + b.copy_done(),
]
_MEMO_ANSWERS = [
    b.message(b"2") + b.row_description([("a", 23)]) + b.data_row([b"1"]) + _MEMO_SELECT + b.ready_for_query(),
    b.message(b"1") + b.message(b"2") + b.row_description([("a", 23)]) + _MEMO_SELECT + b.ready_for_query(),
    b.row_description([("a", 23)]) + b.data_row([b"1"]) + _MEMO_SELECT + b.ready_for_query(),
]
_MEMO_REQUESTS = [
    b.query("SELECT 1"),
    b.bind("", "s1", (b"1",)) + _PORTAL_TAIL,
    b.parse("", "SELECT $1", ()) + b.bind("", "", (b"1",)) + _PORTAL_TAIL,
    b.parse("", "SELECT 1") + b.bind("", "") + b.describe("P", "") + b.execute("", 1) + b.sync(),
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(_MEMO_REQUESTS) - 1),
            st.lists(
                st.one_of(
                    st.integers(0, len(_MEMO_PIECES) - 1).map(lambda i: _MEMO_PIECES[i]),
                    st.integers(0, len(_MEMO_ANSWERS) - 1).map(lambda i: _MEMO_ANSWERS[i]),
                ),
                min_size=1,
                max_size=6,
            ),
            st.lists(st.integers(1, 60), max_size=2),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_the_answer_memos_agree_with_the_framed_way_on_any_answer(
    steps: list[tuple[int, list[bytes], list[int]]],
) -> None:
    """The pure build's _AnswerMemo (how the last answer started and ended) against the framed way and message detail.

    Answers that repeat the remembered start or end, hold them inside a
    DataRow's value or after another CommandComplete, end in another status,
    carry errors, notices, notifications, parameter changes or a COPY, come
    cut anywhere (the remembered bytes across two chunks), several a chunk:
    after every chunk the walked tracker (bytes: the memos learn and are
    taken) and its framed twin (bytearrays) agree, and so do their records
    and message detail's.
    """
    chunks: list[tuple[bool, bytes]] = [
        (True, b.parse("s1", "SELECT $1") + b.sync()),
        (False, b.message(b"1") + b.ready_for_query()),
    ]
    for request, pieces, cuts in steps:
        chunks.append((True, _MEMO_REQUESTS[request]))
        answer = b"".join(pieces)
        at = 0
        for cut in sorted({min(c, len(answer)) for c in cuts}):
            if cut > at:
                chunks.append((False, answer[at:cut]))
                at = cut
        if at < len(answer):
            chunks.append((False, answer[at:]))
    walked, framed = _walked_and_framed(chunks)
    assert walked == framed
    message = SessionTracker("s1", TrackerOptions(detail=Detail.MESSAGE), clock=lambda: 0.0)
    out = message.frontend(b.startup_message({"user": "u", "database": "d"}), 0.0)
    out += message.backend(b.authentication_ok() + b.ready_for_query(), 0.0)
    for index, (frontend, data) in enumerate(chunks):
        out += message.frontend(data, float(index)) if frontend else message.backend(data, float(index))
    out += message.closed("end_of_recording", now=99.0)
    assert [(r.event, r.level, r.fields) for r in out if r.event != "message"] == walked
