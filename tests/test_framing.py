"""Framing: chunking is invisible, bounds hold, bad lengths are typed errors."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pgproxy.protocol import Framer, FramingMode, framing
from pgproxy.protocol.build import message, startup_message
from pgproxy.protocol.framing import FRAMING_ERROR, SINGLE_BYTE, TLS_RECORD, UNTAGGED

STREAM = (
    message(b"T", struct.pack("!H", 1) + b"a\0" + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0))
    + message(b"D", struct.pack("!HI", 1, 1) + b"7")
    + message(b"C", b"SELECT 1\0")
    + message(b"Z", b"I")
)


def bodies(framer: Framer, chunks: list[bytes]) -> list[tuple[int, bytes | None]]:
    out = []
    for chunk in chunks:
        for tag, buf, start, end in framer.feed(chunk):
            out.append((tag, None if buf is None else bytes(buf[start:end])))
    return out


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize("split", [whole, bytewise], ids=["whole", "one-byte"])
def test_tagged_frames_whole_and_bytewise(split) -> None:  # type: ignore[no-untyped-def]
    frames = bodies(Framer("backend"), split(STREAM))
    assert [chr(t) for t, _ in frames] == ["T", "D", "C", "Z"]
    assert frames[2][1] == b"SELECT 1\0"
    assert frames[3][1] == b"I"


def test_trailing_partial_message_is_held_back() -> None:
    framer = Framer("backend")
    trailing = message(b"C", b"SELECT 12\0")
    frames = bodies(framer, [STREAM + trailing[:7]])
    assert len(frames) == 4
    assert framer.buffered == 7
    assert bodies(framer, [trailing[7:]]) == [(ord("C"), b"SELECT 12\0")]
    assert framer.buffered == 0


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM) * 3), max_size=20))
def test_any_rechunking_gives_identical_frames(cuts: list[int]) -> None:
    data = STREAM * 3
    points = sorted({0, len(data), *cuts})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    assert bodies(Framer("backend"), chunks) == bodies(Framer("backend"), [data])


def test_length_below_four_is_a_framing_error() -> None:
    framer = Framer("backend")
    frames = framer.feed(message(b"Z", b"I") + b"D\x00\x00\x00\x02" + b"junk")
    assert [f[0] for f in frames] == [ord("Z"), FRAMING_ERROR]
    assert framer.error is not None
    assert framer.error.offset == 6
    assert framer.error.excerpt.startswith(b"D\x00\x00\x00\x02")
    assert "impossible" in framer.error.reason
    assert framer.mode is FramingMode.HALTED
    assert framer.feed(b"more bytes") == []


def test_oversized_message_is_streamed_past_not_buffered() -> None:
    framer = Framer("backend", max_frame=1024)
    big = message(b"D", b"x" * 100_000)
    frames = []
    for i in range(0, len(big), 4096):
        frames += framer.feed(big[i : i + 4096])
        assert framer.buffered <= 1024 + 5  # never holds the big body
    frames += framer.feed(message(b"Z", b"I"))
    assert frames[0] == (ord("D"), None, 0, 100_000)
    assert [f[0] for f in frames[1:]] == [ord("Z")]


def test_startup_packets_and_single_byte_answer() -> None:
    framer = Framer("frontend", FramingMode.STARTUP)
    ssl = struct.pack("!II", 8, 80877103)
    frames = framer.feed(ssl + startup_message({"user": "u"}))
    assert len(frames) == 1 and frames[0][0] == UNTAGGED  # stops after one packet
    frames = framer.feed(b"")
    assert frames[0][0] == UNTAGGED and frames[0][1] is not None
    backend = Framer("backend", FramingMode.SINGLE_BYTE)
    assert backend.feed(b"N")[0][0] == SINGLE_BYTE


def test_direct_tls_first_byte_halts() -> None:
    framer = Framer("frontend", FramingMode.STARTUP)
    frames = framer.feed(b"\x16\x03\x01\x02\x00")
    assert frames[0][0] == TLS_RECORD
    assert framer.mode is FramingMode.HALTED


def test_startup_packet_too_long_is_a_framing_error() -> None:
    framer = Framer("frontend", FramingMode.STARTUP)
    frames = framer.feed(struct.pack("!II", 50_000, 196608))
    assert frames[0][0] == FRAMING_ERROR and framer.error is not None


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.sampled_from(list(FramingMode)))
def test_random_bytes_never_raise_and_stay_bounded(data: bytes, mode: FramingMode) -> None:
    framer = Framer("backend", mode, max_frame=512)
    for i in range(0, len(data), 37):
        framer.feed(data[i : i + 37])
        assert framer.buffered <= 512 + 5 or framer.buffered <= 10_000


def _framer_state(framer: Framer) -> tuple[object, ...]:
    return (framer.mode, bytes(framer._pending), framer._need, framer._skip, framer._offset, str(framer.error))


# Messages of every kind count_tags must tell apart: whole ones, a stop tag (E),
# one too large for max_frame=64 (streamed past by feed), and an impossible length.
_PIECES = [
    STREAM,
    message(b"E", b"SERROR\0\0"),
    message(b"d", bytes(100)),
    message(b"Z", b"T"),
    struct.pack("!BI", ord("Q"), 2),
]


def _count_by_index(framer: Framer, chunk: bytes, table: bytes, end: int = -1) -> int:
    """count_tags as the compiled build takes it (native integers), whichever build runs the test."""
    if framer.buffered or framer.skipping or framer.mode is not FramingMode.TAGGED:
        return -1
    return framer._count_by_index(chunk, table, end)


#: Responses as connection detail counts them: ReadyForQuery marked, ErrorResponse a stop.
_RESPONSE_TABLE = framing.count_table(b"Z", stopping=b"E")


@pytest.mark.parametrize("way", [Framer.count_tags, _count_by_index], ids=["count_tags", "by_index"])
@settings(max_examples=400)
@given(
    st.lists(st.sampled_from(range(len(_PIECES))), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=600), max_size=12),
)
def test_count_tags_agrees_with_feed(
    way: Callable[[Framer, bytes, bytes], int], picks: list[int], cuts: list[int]
) -> None:
    """The counting way (count_tags, both of its loops) against feed, chunk by chunk, on twin framers.

    Where count_tags takes a chunk it counts exactly the frames feed gives,
    leaves both framers in the same state, counts the marked ones and finds
    the last one's body; where it declines it has changed nothing, and feed is fed.
    """
    data = b"".join(_PIECES[i] for i in picks)
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    counting, reference = Framer("backend", max_frame=64), Framer("backend", max_frame=64)
    taken = 0
    for a, b in itertools.pairwise(points):
        chunk = data[a:b]
        before = _framer_state(counting)
        last = counting.last
        frames = reference.feed(chunk)
        count = way(counting, chunk, _RESPONSE_TABLE)
        if count < 0:
            assert count == -1
            assert _framer_state(counting) == before
            assert counting.last == last
            counting.feed(chunk)
        else:
            taken += 1
            assert count == len(frames)
            assert counting.last == (frames[-1][2] - 5 if frames else -1)  # where the last one counted starts
            assert all(frame[1] is chunk and frame[0] != ord("E") for frame in frames)
            ready = [frame[2] for frame in frames if frame[0] == ord("Z")]
            assert (counting.marks, counting.watched) == (len(ready), ready[-1] if ready else -1)
            assert not counting.opened
        assert _framer_state(counting) == _framer_state(reference)
    if picks == [0] and len(points) == 2:
        assert taken == 1  # a chunk of whole, plausible messages is taken


#: libpq's Describe, Execute and Sync ending an extended-protocol request (the owner's run count_tags stops before).
_PORTAL_TAIL = message(b"D", b"P\0") + message(b"E", b"\0" + bytes(4)) + message(b"S")
#: Requests around it: whole ones, a Bind whose body ends as the tail does (the walk steps over
#: the tail's start), one too large for max_frame=64, and an impossible length.
_REQUEST_PIECES = [
    message(b"P", b"\0SELECT $1\0\0\0"),
    message(b"B", b"\0\0\0\0\0\x01\0\0\0\x011\0\0"),
    message(b"B", b"\0" + _PORTAL_TAIL),
    message(b"Q", b"SELECT 1\0"),
    message(b"d", bytes(100)),
    struct.pack("!BI", ord("Q"), 2),
    _PORTAL_TAIL,
]


#: Requests as connection detail counts them: Sync and Query marked, extended-protocol steps opening.
_REQUEST_TABLE = framing.count_table(b"QS", opening=b"PBDE")


def _opened(tags: list[int]) -> bool:
    """Whether a step follows the last marked request (any step, with none marked): count_tags' ``opened``."""
    opened = False
    for tag in tags:
        if tag in b"QS":
            opened = False
        elif tag in b"PBDE":
            opened = True
    return opened


@pytest.mark.parametrize("compiled", [False, True], ids=["struct", "by_index"])
@settings(max_examples=400)
@given(
    st.lists(st.sampled_from(range(len(_REQUEST_PIECES))), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=600), max_size=12),
    st.booleans(),
)
def test_count_tags_with_a_run_agrees_with_feed(compiled: bool, picks: list[int], cuts: list[int], tail: bool) -> None:
    """count_tags on requests, with and without the owner's run (libpq's tail), against feed on twin framers.

    A chunk ending in the portal tail is walked up to the tail when ``tail``
    is drawn, as an owner that found it by ``endswith`` asks: the walk either
    lands on the tail (its messages then the owner's to count) or declines,
    nothing changed. Counts, marks and ``opened`` agree with the frames.
    """
    data = b"".join(_REQUEST_PIECES[i] for i in picks)
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    counting, reference = Framer("frontend", max_frame=64), Framer("frontend", max_frame=64)
    for framer in (counting, reference):
        framer.mode = FramingMode.TAGGED
    taken = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(framing, "_COMPILED", compiled)
        for a, b in itertools.pairwise(points):
            chunk = data[a:b]
            before = _framer_state(counting)
            frames = reference.feed(chunk)
            tags = [frame[0] for frame in frames]
            run = 0
            last = counting.last
            counted = frames
            if tail and chunk.endswith(_PORTAL_TAIL):
                run = 3
                count = counting.count_tags(chunk, _REQUEST_TABLE, len(chunk) - len(_PORTAL_TAIL))
                if count >= 0:
                    tags = tags[:-3]  # the owner's
                    counted = frames[:-3]
            else:
                count = counting.count_tags(chunk, _REQUEST_TABLE)
            if count < 0:
                assert count == -1
                assert _framer_state(counting) == before
                assert counting.last == last
                counting.feed(chunk)
            else:
                taken += 1
                assert counting.last == (counted[-1][2] - 5 if counted else -1)
                assert count + (run if tail and chunk.endswith(_PORTAL_TAIL) else 0) == len(frames)
                assert all(frame[1] is chunk for frame in frames)
                assert counting.marks == sum(tag in b"QS" for tag in tags)
                assert counting.opened == _opened(tags)
            assert _framer_state(counting) == _framer_state(reference)
    if picks == [0, 1, 6] and len(points) == 2:
        assert taken == 1  # Parse, Bind and the tail, whole: taken


@pytest.mark.parametrize("compiled", [False, True], ids=["struct", "by_index"])
@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(range(len(_REQUEST_PIECES))), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=600), max_size=8),
)
@example(picks=[0, 1, 6], cuts=[])  # pgbench -M extended's request
@example(picks=[1, 6, 0, 1, 6], cuts=[len(_REQUEST_PIECES[1]) + len(_PORTAL_TAIL)])  # -M prepared's, then extended's
@example(picks=[0, 3, 6], cuts=[])  # a Parse and a Query before the tail: not taken
@example(picks=[3, 0, 1, 6], cuts=[])  # a Query first: not taken
@example(picks=[0, 2, 6], cuts=[])  # a Bind whose body ends as the tail does
def test_feed_bind_agrees_with_feed(compiled: bool, picks: list[int], cuts: list[int]) -> None:
    """feed_bind, the owner's reading of libpq's Bind (or Parse and Bind) before its tail, against feed.

    It takes a chunk exactly when feed frames it as a Bind, or a Parse then a
    Bind, followed by the three tail messages, every one whole, nothing held
    back and within ``max_frame``; it says where the Bind starts, and leaves
    the framer as feed leaves its twin. Otherwise it returns -1 and has
    changed nothing.
    """
    data = b"".join(_REQUEST_PIECES[i] for i in picks)
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    taking, reference = Framer("frontend", max_frame=64), Framer("frontend", max_frame=64)
    for framer in (taking, reference):
        framer.mode = FramingMode.TAGGED
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(framing, "_COMPILED", compiled)
        for a, b in itertools.pairwise(points):
            chunk = data[a:b]
            before = _framer_state(taking)
            fresh = not reference.buffered and not reference.skipping and reference.mode is FramingMode.TAGGED
            frames = reference.feed(chunk)
            tags = [frame[0] for frame in frames]
            wholly = fresh and all(frame[1] is chunk for frame in frames) and not reference.buffered
            expected = -1
            if chunk.endswith(_PORTAL_TAIL) and wholly and tags in (list(b"BDES"), list(b"PBDES")):
                expected = frames[-4][2] - 5  # where the Bind's header starts
            at = taking.feed_bind(chunk, len(chunk) - len(_PORTAL_TAIL)) if chunk.endswith(_PORTAL_TAIL) else -1
            assert at == expected, (chunk, tags)
            if at < 0:
                assert _framer_state(taking) == before
                taking.feed(chunk)
            assert _framer_state(taking) == _framer_state(reference)
    if picks == [0, 1, 6] and not cuts:
        assert at == len(_REQUEST_PIECES[0])  # taken, the Bind after the Parse
