"""The two-direction state machine and typed decoding, on recorded real conversations."""

from __future__ import annotations

import dataclasses
import inspect
import random
import subprocess
import sys
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.protocol import Conversation, Phase, wire
from pgproxy.protocol import messages as m
from pgproxy.protocol.build import (
    authentication_ok,
    backend_key_data,
    error_response,
    message,
    ready_for_query,
    startup_message,
)
from pgproxy.protocol.decoding import (
    BACKEND,
    FRONTEND,
    _read_authentication,
    _read_backend_key_data,
    _read_startup_message,
    _Reader,
    decode_startup_packet,
    decode_tagged,
)
from pgproxy.protocol.encodings import python_codec
from pgproxy.protocol.errors import DecodeError, ProtocolError
from pgproxy.protocol.framing import UNTAGGED
from tests.golden import Chunks, recordings

RECORDINGS = recordings()


def decode_all(chunks: Chunks) -> list[m.Message]:
    conv = Conversation()
    out: list[m.Message] = []
    for frontend, data in chunks:
        frames = conv.receive_frontend(data) if frontend else conv.receive_backend(data)
        out += [conv.decode(f, frontend) for f in frames]
    return out


def decode_with_sides(chunks: Chunks) -> list[tuple[m.Message, bool]]:
    conv = Conversation()
    out: list[tuple[m.Message, bool]] = []
    for frontend, data in chunks:
        frames = conv.receive_frontend(data) if frontend else conv.receive_backend(data)
        out += [(conv.decode(f, frontend), frontend) for f in frames]
    return out


def rechunk(chunks: Chunks, rng: random.Random) -> Chunks:
    out: Chunks = []
    for frontend, data in chunks:
        pos = 0
        while pos < len(data):
            step = rng.randint(1, max(1, len(data) // 3))
            out.append((frontend, data[pos : pos + step]))
            pos += step
    return out


def test_all_scenarios_were_recorded() -> None:
    assert set(RECORDINGS) >= {"psql", "asyncpg", "psycopg", "pgbench_extended", "copy", "notify", "scram"}


@pytest.mark.parametrize("scenario", sorted(RECORDINGS))
def test_recordings_decode_without_anomalies(scenario: str) -> None:
    for conn in RECORDINGS[scenario]:
        msgs = decode_all(conn)
        bad = [x for x in msgs if isinstance(x, m.Malformed | m.Unknown | m.Desynchronized | m.Oversized)]
        assert not bad
        assert isinstance(msgs[0], m.StartupMessage | m.SSLRequest)


@pytest.mark.parametrize("scenario", sorted(RECORDINGS))
def test_one_byte_at_a_time_is_identical(scenario: str) -> None:
    for conn in RECORDINGS[scenario]:
        bytewise = [(f, data[i : i + 1]) for f, data in conn for i in range(len(data))]
        assert decode_all(bytewise) == decode_all(conn)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.sampled_from(sorted(RECORDINGS)))
def test_any_rechunking_of_a_recording_is_identical(seed: int, scenario: str) -> None:
    for conn in RECORDINGS[scenario]:
        assert decode_all(rechunk(conn, random.Random(seed))) == decode_all(conn)


@pytest.mark.parametrize("scenario", sorted(RECORDINGS))
def test_a_decoded_message_names_the_side_that_sent_it(scenario: str) -> None:
    """``direction`` (a table beside the classes, not a class attribute) agrees with the stream each came from."""
    for conn in RECORDINGS[scenario]:
        for msg, frontend in decode_with_sides(conn):
            if isinstance(msg, m.CopyData | m.CopyDone | m.EncryptionStarted):
                assert msg.direction == "both"
            else:
                assert msg.direction == ("frontend" if frontend else "backend"), msg


def test_every_tag_decodes_to_a_type_of_its_side() -> None:
    classes = {cls.__name__: cls for cls in vars(m).values() if isinstance(cls, type) and issubclass(cls, m.Message)}
    for table, side in ((FRONTEND, "frontend"), (BACKEND, "backend")):
        for name, _decoder in table.values():
            assert m.DIRECTIONS.get(classes[name], "both") == ("both" if name in ("CopyData", "CopyDone") else side)
    for name in ("SSLRequest", "GSSENCRequest", "CancelRequest", "StartupMessage", "SASLResponse", "GSSResponse"):
        assert m.DIRECTIONS[classes[name]] == "frontend"
    for pseudo in (m.Unknown("x", b""), m.Malformed("x", "Bind", "short", 5), m.EncryptionStarted("tls")):
        assert pseudo.direction == "both"


@pytest.mark.parametrize(
    ("body", "method"),
    [
        (b"\0\0\0\0", "ok"),
        (b"\0\0\0\2", "kerberos_v5"),
        (b"\0\0\0\3", "cleartext_password"),
        (b"\0\0\0\5salt", "md5"),
        (b"\0\0\0\7", "gss"),
        (b"\0\0\0\x08token", "gss"),
        (b"\0\0\0\x09", "sspi"),
        (b"\0\0\0\x0aSCRAM-SHA-256\0\0", "sasl"),
        (b"\0\0\0\x0bfirst", "sasl"),
        (b"\0\0\0\x0cfinal", "sasl"),
        (b"\0\0\0\x63?", "unknown"),
    ],
)
def test_an_authentication_request_names_its_method(body: bytes, method: str) -> None:
    msg = decode_tagged(False, ord("R"), body, 0, len(body))
    assert isinstance(msg, m.Authentication) and msg.method == method and msg.direction == "backend"


MESSAGE_CLASSES = sorted(
    (c for c in vars(m).values() if isinstance(c, type) and dataclasses.is_dataclass(c) and c is not m.Message),
    key=lambda c: c.__name__,
)


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
def test_a_message_is_built_from_its_fields_and_stays_frozen(cls: type) -> None:
    """Written-out ``__init__`` methods (the compiled build's fast construction) take the fields in order and keep them."""
    fields = [f.name for f in dataclasses.fields(cls)]
    assert list(inspect.signature(cls).parameters) == fields
    values = [object() for _ in fields]
    for msg in (cls(*values), cls(**dict(zip(fields, values, strict=True)))):
        assert [getattr(msg, name) for name in fields] == values
        if fields:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(msg, fields[0], None)
    assert cls(*values) == cls(*values)


def test_psql_recording_content() -> None:
    (conn,) = RECORDINGS["psql"]
    msgs = decode_all(conn)
    queries = [x.query for x in msgs if isinstance(x, m.Query)]
    assert any("username = 'Demo'" in q for q in queries)
    errors = [x for x in msgs if isinstance(x, m.ErrorResponse)]
    assert [e.sqlstate for e in errors] == ["22012"]
    assert errors[0].named_fields()["message"] == "division by zero"
    tags = [x.tag for x in msgs if isinstance(x, m.CommandComplete)]
    assert "INSERT 0 2" in tags
    assert isinstance(msgs[-1], m.Terminate)


def test_scram_exchange_is_told_apart_by_auth_state() -> None:
    (conn,) = RECORDINGS["scram"]
    types = [type(x).__name__ for x in decode_all(conn)]
    assert "AuthenticationSASL" in types
    assert types.index("SASLInitialResponse") < types.index("AuthenticationSASLContinue") < types.index("SASLResponse")
    assert "AuthenticationSASLFinal" in types and "PasswordMessage" not in types


def test_copy_and_notify_recordings() -> None:
    (copy,) = RECORDINGS["copy"]
    msgs = decode_all(copy)
    assert any(isinstance(x, m.CopyInResponse) for x in msgs)
    assert any(isinstance(x, m.CopyOutResponse) for x in msgs)
    assert sum(isinstance(x, m.CopyData) for x in msgs) >= 2
    (notify,) = RECORDINGS["notify"]
    msgs = decode_all(notify)
    (note,) = [x for x in msgs if isinstance(x, m.NotificationResponse)]
    assert (note.channel, note.payload) == ("chan", "payload 1")
    assert any(isinstance(x, m.NoticeResponse) and x.message == "a notice" for x in msgs)


def test_ssl_negotiation_then_plaintext_then_encrypted() -> None:
    conv = Conversation()
    conv.receive_frontend(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest
    assert conv.phase is Phase.NEGOTIATING
    (answer,) = conv.receive_backend(b"N")
    assert conv.decode(answer, False) == m.SSLResponse("N")
    conv.receive_frontend(startup_message({"user": "u", "database": "d"}))
    assert conv.phase is Phase.AUTHENTICATING and conv.startup is not None
    conv2 = Conversation()
    conv2.receive_frontend(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
    conv2.receive_backend(b"S")
    assert conv2.phase is Phase.ENCRYPTED
    assert conv2.receive_frontend(b"\x16\x03\x01anything") == []


def test_old_server_answers_sslrequest_with_an_error() -> None:
    conv = Conversation()
    conv.receive_frontend(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
    frames = conv.receive_backend(error_response("FATAL", "08P01", "unsupported frontend protocol"))
    (msg,) = [conv.decode(f, False) for f in frames]
    assert isinstance(msg, m.ErrorResponse) and msg.sqlstate == "08P01"


def test_protocol_32_startup_and_long_cancel_key() -> None:
    conv = Conversation()
    (frame,) = conv.receive_frontend(startup_message({"user": "u"}, minor=2))
    start = conv.decode(frame, True)
    assert isinstance(start, m.StartupMessage) and (start.protocol_major, start.protocol_minor) == (3, 2)
    key = bytes(range(32))
    (kd,) = conv.receive_backend(message(b"K", (1234).to_bytes(4, "big") + key))
    decoded = conv.decode(kd, False)
    assert decoded == m.BackendKeyData(1234, key)
    assert "secret_key" in m.secret_fields(m.BackendKeyData)


def test_unknown_tag_and_malformed_body_never_raise() -> None:
    assert decode_tagged(False, ord("?"), b"abc", 0, 3) == m.Unknown("?", b"abc")
    bad = decode_tagged(False, ord("T"), b"\x00\x05abc", 0, 5)
    assert isinstance(bad, m.Malformed) and bad.expected == "RowDescription"


@pytest.mark.parametrize(
    ("body", "decoded"),
    [
        (b"TimeZone\x00UTC\x00", m.ParameterStatus("TimeZone", "UTC")),
        (b"\x00\x00", m.ParameterStatus("", "")),
        (b"a\xff\x00b\x00", m.ParameterStatus("a\\xff", "b")),
        # The reasons the generic reader gives, with its absolute offsets (the body starts at 2 here).
        (b"TimeZone\x00UTC", m.Malformed("S", "ParameterStatus", "unterminated string at body offset 11", 16)),
        (b"TimeZone", m.Malformed("S", "ParameterStatus", "unterminated string at body offset 2", 12)),
        (b"a\x00b\x00cd", m.Malformed("S", "ParameterStatus", "2 unexpected trailing bytes", 10)),
    ],
)
def test_parameter_status_bodies(body: bytes, decoded: m.Message) -> None:
    buf = b"S?" + body + b"Z?"  # bounds, not the end of the buffer, end the body
    assert decode_tagged(False, ord("S"), buf, 2, 2 + len(body)) == decoded


def _startup_by_reader(buf: bytes, start: int, end: int) -> m.Message:
    """The StartupMessage decoder's general way (the reader), without its split fast path: the oracle for it."""
    r = _Reader(buf, start, end, "utf-8")
    code = r.uint32()
    return _read_startup_message(r, code >> 16, code & 0xFFFF)


@settings(max_examples=500)
@given(st.lists(st.sampled_from([b"\x00", b"\x00\x00", b"user", b"x", b"\xff"]), max_size=10))
def test_startup_message_split_agrees_with_the_reader(pieces: list[bytes]) -> None:
    payload = b"".join(pieces)
    buf = b"zz" + (196608).to_bytes(4, "big") + payload + b"yy"  # bounds, not the buffer, end the body

    def outcome(decode: Callable[[bytes, int, int], m.Message]) -> object:
        try:
            return decode(buf, 2, 6 + len(payload))
        except DecodeError as exc:
            return str(exc)

    assert outcome(decode_startup_packet) == outcome(_startup_by_reader)


@settings(max_examples=300)
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes_only_raise_package_errors(data: bytes, frontend: bool) -> None:
    conv = Conversation(max_frame=256)
    try:
        frames = conv.receive_frontend(data) if frontend else conv.receive_backend(data)
        for f in frames:
            conv.decode(f, frontend)
    except ProtocolError:
        pass
    assert conv.frontend.buffered <= 10_016 and conv.backend.buffered <= 256 + 5


def test_protocol_package_imports_neither_asyncio_nor_structlog() -> None:
    code = (
        "import sys; import pgproxy.protocol, pgproxy.tracker.session, pgproxy.tracker.fingerprint, "
        "pgproxy.tracker.replication, pgproxy.offline.capture, pgproxy.offline.pcap; "
        "bad = [m for m in ('asyncio', 'structlog', 'uvloop', 'mypy_extensions') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_gssenc_then_ssl_then_startup() -> None:
    """libpq with gssencmode=prefer and sslmode=prefer asks twice before starting up."""
    conv = Conversation()
    msgs = []
    for frontend, data in [
        (True, b"\x00\x00\x00\x08\x04\xd2\x16\x30"),  # GSSENCRequest
        (False, b"N"),
        (True, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),  # SSLRequest
        (False, b"N"),
        (True, startup_message({"user": "u"})),
        (False, message(b"R", b"\x00\x00\x00\x00") + message(b"Z", b"I")),
    ]:
        frames = conv.receive_frontend(data) if frontend else conv.receive_backend(data)
        msgs += [conv.decode(f, frontend) for f in frames]
    assert [type(x).__name__ for x in msgs] == [
        "GSSENCRequest",
        "GSSENCResponse",
        "SSLRequest",
        "SSLResponse",
        "StartupMessage",
        "AuthenticationOk",
        "ReadyForQuery",
    ]
    assert conv.phase is Phase.READY


# The login burst: a ParameterStatus run read before is recognised instead of read again (wire.ParameterRun).

_HEADS = [b"", authentication_ok(), message(b"R", (12).to_bytes(4, "big") + b"v=abc") + authentication_ok()]
_NAMES = [b"client_encoding", b"TimeZone", b"DateStyle", b"application_name", b"a\xff", b""]
_VALUES = [b"UTF8", b"LATIN1", b"SQL_ASCII", b"WIN1251", b"Etc/UTC", b"caf\xc3\xa9", b"\xe9t\xe9", b""]
_ODD_STATUS = [message(b"S", b"TimeZone\x00UTC"), message(b"S", b"a\x00b\x00c\x00"), b"S\x00\x00\x00\x02"]
_TAILS = [b"", backend_key_data(4242) + ready_for_query(), backend_key_data(7) + b"Z\x00\x00", b"S\x00\x00\x00\x01"]


def _parameter_statuses() -> st.SearchStrategy[bytes]:
    well_formed = st.builds(
        lambda name, value: message(b"S", name + b"\x00" + value + b"\x00"),
        st.sampled_from(_NAMES),
        st.sampled_from(_VALUES),
    )
    return st.one_of(well_formed, well_formed, well_formed, st.sampled_from(_ODD_STATUS))


def _burst_outcome(chunks: list[bytes | bytearray], startup: bytes, max_frame: int, login: bool = False) -> object:
    """Everything a login's server chunks leave in a fresh conversation: frames, decoded messages, state.

    ``login``: by receive_login_backend, frames left out marked ``("left out", count)``.
    """
    conv = Conversation(max_frame)
    conv.receive_frontend(startup)
    frames_seen: list[list[object]] = []  # per chunk
    for chunk in chunks:
        if login:
            frames, left_out = conv.receive_login_backend(chunk)
        else:
            frames, left_out = conv.receive_backend(chunk), 0
        seen: list[object] = []
        for tag, buf, start, end in frames:
            frame = (tag, buf, start, end)
            body = None if buf is None else bytes(buf[start:end])
            seen.append((tag, start, end, body, conv.decoded_backend(frame), conv.decode(frame, False)))
        if left_out:
            seen.append(("left out", left_out))
        frames_seen.append(seen)
    error = conv.error
    return (
        frames_seen,
        *_login_state(conv),
        None if error is None else (error.offset, error.reason, error.excerpt),
    )


def _login_state(conv: Conversation) -> tuple[object, ...]:
    """What a login leaves in a conversation: its parameters, encoding, phase, key, authentication and buffer."""
    return (
        list(conv.parameters.items()),
        conv.encoding,
        conv.value_settings_reported,
        conv.parameters_malformed,
        conv.phase,
        conv.backend_pid,
        conv.backend_key,
        conv.auth_state,
        conv.auth_method,
        conv.backend.buffered,
    )


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(_HEADS),
    st.lists(_parameter_statuses(), min_size=1, max_size=8),
    st.sampled_from(_TAILS),
    st.sampled_from([{}, {"client_encoding": "LATIN1"}]),
    st.sampled_from([1 << 20, 24]),
    st.sampled_from([b"", message(b"S", b"x\x00y\x00") + b"E\x00\x00\x00\x03"]),
)
def test_a_login_burst_seen_before_agrees_with_reading_it(
    head: bytes, statuses: list[bytes], tail: bytes, startup_params: dict[str, str], max_frame: int, later: bytes
) -> None:
    """The third login with the same ParameterStatus run takes the known run; it must equal the general path.

    The general path is the same chunk as a bytearray (the fast path takes bytes
    only); a later chunk (another status, then an impossible length) checks that
    the stream offsets stayed exact.
    """
    wire._known_runs.clear()
    wire._runs_seen.clear()
    startup = startup_message({"user": "u", **startup_params})
    burst = head + b"".join(statuses) + tail
    general = _burst_outcome([bytearray(burst), bytearray(later)], startup, max_frame)
    for _ in range(3):  # seen, kept, then recognised
        assert _burst_outcome([burst, later], startup, max_frame) == general
    # Kept: the well-formed statuses up to the first odd or oversized one (the general path reads that one every time).
    kept = [run.data for run in wire._known_runs if burst.startswith(run.data, len(head))]
    usable = 0
    for status in statuses:
        if status in _ODD_STATUS or len(status) - 1 > max_frame:
            break
        usable += 1
    assert kept == ([b"".join(statuses[:usable])] if usable else [])
    # receive_login_backend: the same, but the known run's frames left out and counted, unless a
    # malformed ParameterStatus follows it in the chunk (the caller then reads them all).
    by_login = _burst_outcome([burst, later], startup, max_frame, login=True)
    assert by_login == _without_left_out(general, by_login)
    every_status_followed = not any(status in _ODD_STATUS for status in statuses) and not tail.startswith(b"S")
    if usable and every_status_followed and max_frame > 24:
        assert by_login[0][0][-1] == ("left out", usable)  # type: ignore[index]


# A login's whole answer learnt before (wire.LoginAnswer): followed at once, the same state as framing it.

_KEYS = st.tuples(st.integers(min_value=-(2**31), max_value=2**31 - 1), st.binary(min_size=4, max_size=4))


def _answer_outcome(
    before: list[bytes | bytearray], answer: bytes | bytearray, later: bytes, startup: bytes, max_frame: int
) -> tuple[object, ...]:
    """A fresh conversation's state after ``before`` chunks, a login answer and a later chunk; and whether it was known."""
    conv = Conversation(max_frame)
    conv.receive_frontend(startup)
    for chunk in before:
        conv.receive_backend(chunk)
    known = conv.receive_login_answer(answer)
    if known is None:
        conv.receive_login_backend(answer)
    state = _login_state(conv)
    frames = [(tag, start, end) for tag, _, start, end in conv.receive_backend(later)]
    error = conv.error
    return (known is not None, state, frames, None if error is None else (error.offset, error.reason))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_parameter_statuses(), max_size=8),
    st.lists(_KEYS, min_size=3, max_size=3),
    st.sampled_from("ITEX"),
    st.sampled_from([[], [message(b"R", (3).to_bytes(4, "big"))]]),  # trust, or a password asked first
    st.sampled_from([{}, {"client_encoding": "LATIN1"}]),
    st.sampled_from([1 << 20, 24]),
    st.sampled_from([b"", ready_for_query(), message(b"S", b"x\x00y\x00") + b"E\x00\x00\x00\x03"]),
)
def test_a_login_answer_seen_before_agrees_with_framing_it(
    statuses: list[bytes],
    keys: list[tuple[int, bytes]],
    status: str,
    before: list[bytes],
    startup_params: dict[str, str],
    max_frame: int,
    later: bytes,
) -> None:
    """The third login whose answer differs only in BackendKeyData is followed at once; the same state as framing it.

    The general way is the same chunk as a bytearray (the known answer is taken
    for bytes only); a later chunk checks that the stream offsets stayed exact.
    Only an answer of exactly AuthenticationOk, well-formed ParameterStatus
    within ``max_frame``, BackendKeyData and ReadyForQuery is ever taken.
    """
    wire._known_answers.clear()
    wire._answers_seen.clear()
    wire._known_runs.clear()
    wire._runs_seen.clear()
    startup = startup_message({"user": "u", **startup_params})
    taken = []
    for pid, key in keys:  # seen, learnt, then known
        answer = authentication_ok() + b"".join(statuses) + backend_key_data(pid, key) + message(b"Z", status.encode())
        general = _answer_outcome(list(map(bytearray, before)), bytearray(answer), later, startup, max_frame)
        fast = _answer_outcome(before, answer, later, startup, max_frame)  # type: ignore[arg-type]
        assert not general[0]
        assert fast[1:] == general[1:]
        taken.append(fast[0])
    qualifies = status != "X" and not any(s in _ODD_STATUS or len(s) - 1 > max_frame for s in statuses)
    assert taken == [False, False, qualifies]


def _without_left_out(general: object, by_login: object) -> object:
    """The general outcome with each chunk's first ``count`` frames (ParameterStatus, well-formed) moved to a mark."""
    frames_general, *state = general  # type: ignore[misc]
    frames_login = by_login[0]  # type: ignore[index]
    expected = []
    for seen, seen_by_login in zip(frames_general, frames_login, strict=True):
        mark = seen_by_login[-1] if seen_by_login and seen_by_login[-1][0] == "left out" else None
        if mark is None:
            expected.append(seen)
            continue
        # Only where every ParameterStatus of the chunk was followed (else the caller reads them all).
        assert not any(f[0] == ord("S") and isinstance(f[5], m.Malformed) for f in seen)
        first = next(i for i, frame in enumerate(seen) if frame[0] == ord("S"))
        run = seen[first : first + mark[1]]
        assert all(f[0] == ord("S") and f[4] is None and isinstance(f[5], m.ParameterStatus) for f in run)
        expected.append(seen[:first] + seen[first + mark[1] :] + [mark])
    return (expected, *state)


@settings(max_examples=400)
@given(st.binary(max_size=270), st.sampled_from([ord("R"), ord("K")]))
def test_authentication_and_key_data_fast_ways_agree_with_the_reader(body: bytes, tag: int) -> None:
    """AuthenticationOk (and the other code-only requests) and BackendKeyData skip the reader; same messages and errors."""
    if tag == ord("R") and body[:1] != b"\xff":
        body = (int.from_bytes(body[:1] or b"\x00", "big") % 14).to_bytes(4, "big") + body[4:]
    buf = b"zz" + body + b"yy"  # bounds, not the buffer, end the body
    read = _read_authentication if tag == ord("R") else _read_backend_key_data

    def by_reader() -> m.Message:
        try:
            return read(_Reader(buf, 2, 2 + len(body), "utf-8"))
        except (DecodeError, ValueError) as exc:
            return m.Malformed(chr(tag), BACKEND[tag][0], str(exc), len(body) + 4)

    assert decode_tagged(False, tag, buf, 2, 2 + len(body)) == by_reader()


def test_a_startup_packet_seen_before_is_the_same_message() -> None:
    """The second connection with the same StartupMessage takes the decoded one (wire._startup_message)."""
    for params, encoding in (
        ({"user": "u", "database": "d"}, "utf-8"),
        ({"user": "u", "client_encoding": "LATIN1"}, "latin-1"),
    ):
        packet = startup_message(params)
        first, second = Conversation(), Conversation()
        first.receive_frontend(packet)
        frame = second.receive_frontend(bytes(packet))[0]
        assert second.startup is first.startup  # one frozen message serves both
        assert second.startup == decode_startup_packet(packet, 4, len(packet))
        assert second.encoding == first.encoding == encoding
        # Decoded with UTF-8: handed on only while that is still the encoding in force.
        assert second.decoded_frontend(frame) is (second.startup if encoding == "utf-8" else None)


_STARTUP_PARAMS = st.dictionaries(
    st.sampled_from(["user", "database", "application_name", "client_encoding", "options", "replication", "x"]),
    st.sampled_from(["u", "", "LATIN1", "UTF8", "database", "caf\u00e9", "-c a=b"]),
    max_size=5,
)


def _startup_outcome(packet: bytes | bytearray, later: bytes) -> tuple[object, ...]:
    """A fresh conversation's state after a start-up packet (the known way first, if it takes it) and a later chunk."""
    conv = Conversation()
    known = conv.receive_startup(packet)
    # The known way makes no frame; the general way's one frame is the packet's, and is handed its message.
    (frame,) = [(UNTAGGED, packet, 4, len(packet))] if known is not None else conv.receive_frontend(packet)
    assert (frame[0], frame[2], frame[3]) == (UNTAGGED, 4, len(packet))
    state = (
        conv.phase,
        conv.startup,
        conv.encoding,
        conv.frontend.mode,
        conv.backend.mode,
        conv.decoded_frontend(frame) is conv.startup,
    )
    after = [(tag, start, end) for tag, _, start, end in conv.receive_frontend(later)]
    error = conv.error
    return (known is not None, known is None or known is conv.startup, state, after, error and error.offset)


@settings(max_examples=200, deadline=None)
@given(
    _STARTUP_PARAMS,
    st.sampled_from([(3, 0), (3, 2), (2, 0)]),
    st.sampled_from([b"", message(b"Q", b"SELECT 1\x00"), b"Q\x00\x00\x00\x01"]),
)
def test_a_known_startup_packet_agrees_with_framing_it(
    params: dict[str, str], version: tuple[int, int], later: bytes
) -> None:
    """Conversation.receive_startup takes a StartupMessage packet seen before; the same state and offsets as framing it.

    The general way is the same packet as a bytearray (the known way takes bytes only).
    """
    packet = startup_message(params)
    packet = packet[:4] + ((version[0] << 16) | version[1]).to_bytes(4, "big") + packet[8:]
    general = _startup_outcome(bytearray(packet), later)
    first = _startup_outcome(packet, later)  # decoded, and kept if it is a protocol 3 StartupMessage
    second = _startup_outcome(packet, later)
    assert not general[0]
    assert first[1:] == general[1:]
    assert second[1:] == general[1:]
    # Protocol 3 StartupMessages that keep UTF-8 in force (the encoding they were decoded with).
    assert second[0] == (version[0] == 3 and python_codec(params.get("client_encoding", "UTF8")) == "utf-8")
