"""The two-direction wire state machine of one PostgreSQL conversation.

It owns both framers and the little protocol state that decides how bytes are
cut and what a tag means ("Message Flow" in the PostgreSQL documentation):

* the startup phase, where the frontend sends untagged packets and an
  SSLRequest/GSSENCRequest is answered by one unframed byte;
* direct TLS (PostgreSQL 17): a first frontend byte 0x16;
* the authentication exchange, which decides what a frontend ``p`` means;
* ``client_encoding``, which decides how text is decoded;
* encryption and desynchronisation, after which nothing is framed.

Feed it bytes with :meth:`Conversation.receive_frontend` and
:meth:`Conversation.receive_backend`; each returns the frames completed, which
:meth:`Conversation.decode` turns into typed messages on demand, so that a
caller which only counts DataRows never pays for decoding them.
"""

from __future__ import annotations

import enum
from typing import Final

from pgproxy.protocol import messages as m
from pgproxy.protocol.decoding import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    SSL_REQUEST_CODE,
    AuthState,
    decode_frame,
    decode_startup_packet,
    decode_tagged,
)
from pgproxy.protocol.encodings import python_codec
from pgproxy.protocol.errors import FramingError
from pgproxy.protocol.framing import (
    DEFAULT_MAX_FRAME,
    FRAMING_ERROR,
    SINGLE_BYTE,
    TLS_RECORD,
    UNTAGGED,
    Frame,
    Framer,
    FramingMode,
)

_TAG_AUTH: Final = ord("R")
_TAG_PARAMETER_STATUS: Final = ord("S")
_TAG_BACKEND_KEY: Final = ord("K")
_TAG_READY: Final = ord("Z")
_TAG_ERROR: Final = ord("E")
_STARTUP_WATCH: Final = frozenset((_TAG_AUTH, _TAG_PARAMETER_STATUS, _TAG_BACKEND_KEY, _TAG_READY, _TAG_ERROR))
#: Parameter runs kept (see :class:`ParameterRun`): a few server, user and
#: application combinations; beyond that the oldest is forgotten.
_RUNS_KEPT: Final = 8
#: Runs larger than this are not kept (a login's is about 400 bytes).
_RUN_KEPT_BYTES: Final = 4096
#: Authentication requests that may come before the run in its chunk (SASLFinal, then AuthenticationOk).
_RUN_HEAD_MESSAGES: Final = 2


class Phase(enum.Enum):
    """Where the conversation is, as far as framing is concerned."""

    STARTUP = "startup"
    """Waiting for a startup packet from the frontend."""
    NEGOTIATING = "negotiating"
    """SSLRequest or GSSENCRequest sent; the backend's one-byte answer is due."""
    AUTHENTICATING = "authenticating"
    """StartupMessage sent; authentication and backend start-up under way."""
    READY = "ready"
    """The first ReadyForQuery was seen: normal operation."""
    CANCELLING = "cancelling"
    """The connection carried a CancelRequest; nothing else follows."""
    ENCRYPTED = "encrypted"
    """TLS or GSS encryption started; the bytes are opaque from here on."""
    DESYNCHRONIZED = "desynchronized"
    """A framing error: message boundaries were lost; nothing is decoded."""
    CLOSED = "closed"
    """Terminate was sent or the backend failed the start-up."""


class ParameterRun:
    """The ParameterStatus messages a login brings, framed and read once for every login that brings the same bytes.

    After AuthenticationOk the server reports a dozen parameters in one chunk,
    the same bytes for every session of one server, user and application
    (``BackendKeyData``, which differs, follows them). Framing and reading them
    one by one cost about 110k of the 160k instructions of a login's server
    chunk (callgrind, a pgbench -C login); a run seen before is recognised
    with one comparison instead. What a run does to the conversation depends
    only on its bytes, the encoding in force before it and ``max_frame``, so
    reusing it cannot differ from reading it again (``tests/test_conversation.py``
    holds the two ways to the same frames and state).

    Attributes:
        data: the run's bytes, headers included: whole, well-formed messages only.
        encoding: the encoding its names and values were read with (the one in force before it).
        bodies: each message's body as (start, end) within ``data``.
        longest: the largest declared length among them (a smaller ``max_frame`` frames them differently).
        pairs: (name, value) of each, in order.
        parameters: the same as a dict (the last value of a name reported twice, at its first place),
            which updates a conversation's parameters in one C-level merge: from a list of pairs,
            each is an insertion of its own (about 5k instructions a login, compiled; callgrind).
        encoding_after: the encoding once its ``client_encoding`` reports were followed.
        value_settings: how many of them report ``client_encoding`` or ``TimeZone``.
    """

    __slots__ = ("bodies", "data", "encoding", "encoding_after", "longest", "pairs", "parameters", "value_settings")

    def __init__(
        self,
        data: bytes,
        encoding: str,
        bodies: list[tuple[int, int]],
        longest: int,
        pairs: list[tuple[str, str]],
        encoding_after: str,
        value_settings: int,
    ) -> None:
        self.data = data
        self.encoding = encoding
        self.bodies = bodies
        self.longest = longest
        self.pairs = pairs
        self.parameters = dict(pairs)
        self.encoding_after = encoding_after
        self.value_settings = value_settings


#: Runs recently read, newest last (see :class:`ParameterRun`).
_known_runs: Final[list[ParameterRun]] = []
#: Hashes of runs seen once: a run is kept the second time it is seen, so that
#: logins which never repeat (a unique application_name each) pay one hash, not
#: a second reading.
_runs_seen: Final[set[int]] = set()


def _run_start(data: bytes, max_frame: int) -> int:
    """Where a chunk's ParameterStatus run starts, after at most two authentication requests; -1 if it has none.

    Only well-framed headers are passed over (else the framer's own checks
    and errors apply: the general path).
    """
    pos = 0
    n = len(data)
    for _ in range(_RUN_HEAD_MESSAGES + 1):
        if n - pos < 5:
            return -1
        tag = data[pos]
        if tag == _TAG_PARAMETER_STATUS:
            return pos
        if tag != _TAG_AUTH:
            return -1
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        if length < 4 or length > max_frame:
            return -1
        pos += 1 + length
    return -1


def _known_run(data: bytes, pos: int, encoding: str, max_frame: int) -> ParameterRun | None:
    for run in _known_runs:
        if run.encoding == encoding and run.longest <= max_frame and data.startswith(run.data, pos):
            return run
    return None


def _read_status(body: bytes | bytearray, encoding: str) -> tuple[tuple[str, str], str, int] | None:
    """A ParameterStatus body (its last NUL left out) read as :meth:`Conversation._on_parameter_status` does.

    ((name, value), the encoding in force after it, 1 if it reports ``client_encoding`` or
    ``TimeZone`` else 0); None unless it is exactly a name and a value. For learning a run or
    an answer, once: the conversation's own reading stays inline.
    """
    parts = body.split(b"\x00")
    if len(parts) != 2:
        return None
    name = parts[0].decode(encoding, "backslashreplace")
    value = parts[1].decode(encoding, "backslashreplace")
    if name == "client_encoding":
        return (name, value), python_codec(value), 1
    return (name, value), encoding, 1 if name == "TimeZone" else 0


def _read_run(frames: list[Frame], first: int, encoding: str) -> ParameterRun | None:
    """The run of ParameterStatus frames from ``frames[first]``, read as :meth:`Conversation._on_parameter_status` does.

    The run ends before the first malformed or oversized one (the general path
    reads that every time); None if that is the first.
    """
    buf = frames[first][1]
    if buf is None:
        return None
    before = encoding
    run_start = frames[first][2] - 5
    bodies: list[tuple[int, int]] = []
    pairs: list[tuple[str, str]] = []
    value_settings = 0
    longest = 0
    expected = frames[first][2]
    for tag, fbuf, start, end in frames[first:]:
        if tag != _TAG_PARAMETER_STATUS or fbuf is not buf or start != expected:
            break
        if not (end > start and buf[end - 1] == 0):
            break
        status = _read_status(buf[start : end - 1], encoding)
        if status is None:
            break
        pair, encoding, setting = status
        pairs.append(pair)
        value_settings += setting
        bodies.append((start - run_start, end - run_start))
        longest = max(longest, end - start + 4)
        expected = end + 5
    if not pairs:
        return None
    return ParameterRun(bytes(buf[run_start : expected - 5]), before, bodies, longest, pairs, encoding, value_settings)


class LoginAnswer:
    """A server's whole answer to a login, learnt once, for every login whose chunk brings the same bytes.

    With trust (or any method whose last step is AuthenticationOk alone) the
    server answers a login with one chunk: AuthenticationOk, a dozen
    ParameterStatus, BackendKeyData and ReadyForQuery. Between the sessions of
    one server, user and application only BackendKeyData's body (the process id
    and the secret key) differs. Even with the ParameterStatus run known
    (:class:`ParameterRun`), framing and following the other three messages cost
    about 70k instructions of a pgbench -C connection (callgrind, pure Python);
    a known answer is recognised by its size and two comparisons and followed
    at once (:meth:`Conversation.receive_login_answer`). What such a chunk does
    to a conversation depends only on its bytes, the encoding in force before it
    and ``max_frame``, so following it from here cannot differ from framing it
    (``tests/test_conversation.py`` holds the two ways to the same state).

    Attributes:
        head: the chunk's bytes up to BackendKeyData's body (its header included).
        tail: the bytes after that body (the ReadyForQuery).
        size: the chunk's length (so the body's length, too).
        encoding: the encoding in force before it.
        longest: the largest declared length among its messages.
        pairs: (name, value) of each ParameterStatus, in order.
        parameters: the same as a dict (see :class:`ParameterRun`'s).
        encoding_after: the encoding once its ``client_encoding`` reports were followed.
        value_settings: how many of them report ``client_encoding`` or ``TimeZone``.
        messages: how many messages the chunk holds.
        status: the ReadyForQuery's transaction status (``I``, ``T`` or ``E``).
    """

    __slots__ = (
        "encoding",
        "encoding_after",
        "head",
        "longest",
        "messages",
        "pairs",
        "parameters",
        "size",
        "status",
        "tail",
        "value_settings",
    )

    def __init__(
        self,
        head: bytes,
        tail: bytes,
        encoding: str,
        longest: int,
        pairs: list[tuple[str, str]],
        encoding_after: str,
        value_settings: int,
    ) -> None:
        self.head = head
        self.tail = tail
        self.size = len(head) + _KEY_BODY + len(tail)
        self.encoding = encoding
        self.longest = longest
        self.pairs = pairs
        self.parameters = dict(pairs)
        self.encoding_after = encoding_after
        self.value_settings = value_settings
        self.messages = len(pairs) + 3
        self.status = chr(tail[5])


#: AuthenticationOk, as a login's answer starts.
_AUTHENTICATION_OK: Final = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
#: BackendKeyData's header and its body's length in protocol 3.0 (process id and a 4-byte key).
_KEY_HEADER: Final = b"K\x00\x00\x00\x0c"
_KEY_BODY: Final = 8
#: The ReadyForQuery that ends a login answer (status byte aside), and the statuses taken.
_READY_HEADER: Final = b"Z\x00\x00\x00\x05"
_READY_STATUSES: Final = b"ITE"
#: A login answer's bytes before BackendKeyData, when it ends with one of 3.0's and a ReadyForQuery.
_ANSWER_END: Final = len(_KEY_HEADER) + _KEY_BODY + len(_READY_HEADER) + 1
#: Login answers recently learnt, newest last (see :class:`LoginAnswer`), and how many are kept.
_known_answers: Final[list[LoginAnswer]] = []
_ANSWERS_KEPT: Final = 8
#: Hashes of answers seen once (their bytes before BackendKeyData): an answer is
#: learnt the second time, so that logins which never repeat pay one hash.
_answers_seen: Final[set[int]] = set()


def _learn_answer(data: bytes, encoding: str) -> LoginAnswer | None:
    """``data`` as a :class:`LoginAnswer`, if it is exactly one (else None).

    Exactly: AuthenticationOk, then only well-formed ParameterStatus (name and
    value, as :meth:`Conversation._on_parameter_status` reads them without a
    message object), then a protocol 3.0 BackendKeyData and a ReadyForQuery
    ending the chunk, every length within the chunk.
    """
    n = len(data)
    if n < len(_AUTHENTICATION_OK) + _ANSWER_END or not data.startswith(_AUTHENTICATION_OK):
        return None
    key_at = n - _ANSWER_END
    if not data.startswith(_KEY_HEADER, key_at) or not data.startswith(_READY_HEADER, n - 6):
        return None
    if data[n - 1] not in _READY_STATUSES:
        return None
    before = encoding
    pairs: list[tuple[str, str]] = []
    value_settings = 0
    longest = 12  # BackendKeyData's; AuthenticationOk's is 8, ReadyForQuery's 5
    pos = len(_AUTHENTICATION_OK)
    while pos < key_at:
        if key_at - pos < 5 or data[pos] != _TAG_PARAMETER_STATUS:
            return None
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        end = pos + 1 + length
        if length < 5 or end > key_at or data[end - 1] != 0:
            return None
        status = _read_status(data[pos + 5 : end - 1], encoding)
        if status is None:
            return None
        pair, encoding, setting = status
        pairs.append(pair)
        value_settings += setting
        longest = max(longest, length)
        pos = end
    head = data[: key_at + len(_KEY_HEADER)]
    return LoginAnswer(head, data[n - 6 :], before, longest, pairs, encoding, value_settings)


def _remember_answer(data: bytes, encoding: str) -> None:
    """After a login chunk took the general way: learn it as a :class:`LoginAnswer` the second time it is seen."""
    if len(data) < _ANSWER_END or not data.startswith(_AUTHENTICATION_OK):
        return
    key = hash(data[: len(data) - _ANSWER_END])
    if key not in _answers_seen:
        if len(_answers_seen) >= 4 * _ANSWERS_KEPT:
            _answers_seen.clear()
        _answers_seen.add(key)
        return
    answer = _learn_answer(data, encoding)
    if answer is None:
        return
    if len(_known_answers) >= _ANSWERS_KEPT:
        del _known_answers[0]
    _known_answers.append(answer)


#: StartupMessages by their packet bytes (see :func:`_startup_message`), and how many are kept.
_startups: Final[dict[bytes, tuple[m.StartupMessage, str | None]]] = {}
_STARTUPS_KEPT: Final = 64
#: Larger packets are decoded each time (pgbench's is 60 bytes).
_STARTUP_KEPT_BYTES: Final = 1024


def _startup_message(buf: bytes, start: int, end: int) -> tuple[m.StartupMessage, str | None] | None:
    """A protocol 3 StartupMessage and its ``client_encoding``, decoded once per distinct packet.

    Every connection of one application sends the same packet; decoding it
    cost about 31k instructions (callgrind), a look-up costs a slice and a
    hash. Messages are frozen, so one can serve every session. Anything but a
    StartupMessage (a malformed packet) is decoded, and judged, every time.
    """
    key = buf[start:end]
    known = _startups.get(key)
    if known is None:
        msg = decode_startup_packet(buf, start, end)
        if not isinstance(msg, m.StartupMessage):
            return None
        known = (msg, msg.params.get("client_encoding"))
        if len(key) <= _STARTUP_KEPT_BYTES:
            if len(_startups) >= _STARTUPS_KEPT:
                _startups.clear()
            _startups[key] = known
    return known


# Asked per chunk: module constants, because an enum class's attribute
# (``Phase.READY``) costs about 1,000 instructions under CPython 3.11 (callgrind).
_READY: Final = Phase.READY
_AUTHENTICATING: Final = Phase.AUTHENTICATING
_TAGGED: Final = FramingMode.TAGGED
_ENCRYPTED: Final = Phase.ENCRYPTED
_DESYNCHRONIZED: Final = Phase.DESYNCHRONIZED
# Asked or set on every login (a dozen times a connection): constants too.
_STARTUP_PHASE: Final = Phase.STARTUP
_STARTUP_MODE: Final = FramingMode.STARTUP
_HALTED: Final = FramingMode.HALTED
_SINGLE_BYTE: Final = FramingMode.SINGLE_BYTE


class Conversation:
    """Sans-IO state of both directions of one frontend/backend conversation.

    Args:
        max_frame: bodies longer than this are streamed past and reported as
            :class:`~pgproxy.protocol.messages.Oversized`.

    Attributes:
        phase: current :class:`Phase`.
        encoding: Python codec for text, following ``client_encoding``.
        parameters: the last value of every ParameterStatus seen.
        startup: the StartupMessage, once seen.
        backend_pid: from BackendKeyData.
        auth_state: what a frontend ``p`` message means now.
        error: the framing error that desynchronised the stream, if any.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.frontend = Framer("frontend", _STARTUP_MODE, max_frame)
        self.backend = Framer("backend", _TAGGED, max_frame)
        self.phase = _STARTUP_PHASE
        self.encoding = "utf-8"
        self.parameters: dict[str, str] = {}
        self.startup: m.StartupMessage | None = None
        self.backend_pid: int | None = None
        self.backend_key: bytes | None = None  # cancellation secret: never logged
        self.auth_state: str | None = None
        self.auth_method: str | None = None
        self.error: FramingError | None = None
        #: How many ParameterStatus for ``client_encoding`` or ``TimeZone`` (the
        #: settings that change how values decode) were followed: a caller that
        #: decodes values compares it with the count it last saw.
        self.value_settings_reported = 0
        #: How many ParameterStatus could not be followed (malformed; the message
        #: is kept for :meth:`decoded_backend`): while it stands still, every
        #: ParameterStatus received was followed.
        self.parameters_malformed = 0
        # Messages decoded for the state above during the last receive_backend
        # call, by frame start (with the frame's buffer): the tracker takes them
        # instead of decoding the same frames again (start-up sends ~15).
        self._decoded: dict[int, tuple[object, m.Message]] = {}
        # The StartupMessage decoded to read client_encoding: (buffer, start, encoding used, message).
        self._decoded_startup: tuple[object, int, str, m.Message] | None = None
        self._negotiating: int = 0  # code of the pending SSL/GSSENC request

    # ----------------------------------------------------------------- feeding

    def receive_frontend(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Frames completed by a chunk the frontend sent."""
        framer = self.frontend
        frames = framer.feed(data)
        if framer.mode is _TAGGED:
            if frames and frames[-1][0] == FRAMING_ERROR:
                self._desync(framer)
            return frames
        out: list[Frame] = []
        while frames:
            out.extend(frames)
            for frame in frames:
                self._on_frontend_unit(frame)
            if framer.mode is _HALTED or framer.mode is _SINGLE_BYTE or not framer.buffered:
                break
            frames = framer.feed(b"")
        return out

    def receive_backend(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Frames completed by a chunk the backend sent."""
        if self.phase is _AUTHENTICATING:
            return self._receive_login(data, True)[0]
        if self._decoded:
            self._decoded = {}
        return self._follow_backend(self.backend.feed(data))

    def receive_whole(self, data: bytes, accepted: bytes, tail_at: int = -1, tail_count: int = 0) -> int:
        """:meth:`receive_backend` for a ready conversation's chunk its owner walks in place: how many messages, or 0.

        Only whole messages with tags ``accepted`` are taken (see
        :meth:`~pgproxy.protocol.framing.Framer.feed_whole`, which ``tail_at`` and
        ``tail_count`` are passed to), none of them one the conversation follows
        (ParameterStatus, which ``accepted`` must not take); otherwise 0 is
        returned, nothing has changed, and :meth:`receive_backend` takes the
        same chunk.
        """
        if self.phase is not _READY:
            return 0
        count = self.backend.feed_whole(data, accepted, tail_at, tail_count)
        if count and self._decoded:
            self._decoded = {}
        return count

    def receive_whole_from(
        self, data: bytes, accepted: bytes, head_end: int, head_count: int, tail_at: int, tail_count: int
    ) -> int:
        """:meth:`receive_whole` by :meth:`~pgproxy.protocol.framing.Framer.feed_whole_from` (the interpreter's)."""
        if self.phase is not _READY:
            return 0
        count = self.backend.feed_whole_from(data, accepted, head_end, head_count, tail_at, tail_count)
        if count and self._decoded:
            self._decoded = {}
        return count

    def receive_startup(self, data: bytes | bytearray | memoryview) -> m.StartupMessage | None:
        """:meth:`receive_frontend` for a whole StartupMessage packet seen before: its message, or None.

        Every connection of one application sends the same packet; its message
        is decoded once (see :func:`_startup_message`). Here the packet is
        followed as receive_frontend follows it -- the message kept, both
        directions tagged, the stream offset past it -- without the framer's
        start-up pass and a frame (about 12k instructions, pure Python,
        callgrind), and handed to the caller, as :meth:`decoded_frontend` hands
        it, only while UTF-8 (the encoding it was decoded with) stays in force.
        None, with nothing changed, for anything else (a packet naming another
        ``client_encoding`` too: receive_frontend then takes it).
        """
        if self.phase is not _STARTUP_PHASE or type(data) is not bytes or len(data) < 8:
            return None
        if int.from_bytes(data[:4], "big") != len(data):
            return None
        known = _startups.get(data[4:])  # only protocol 3 StartupMessages are kept
        if known is None:
            return None
        msg, encoding = known
        # Decoded with UTF-8: only while that stays the encoding in force (see decoded_frontend;
        # a caller would decode the packet again by the client_encoding it names).
        if self.encoding != "utf-8" or (encoding and python_codec(encoding) != "utf-8"):
            return None
        if not self.frontend.pass_startup(len(data)):
            return None
        self._decoded_startup = (data, 4, "utf-8", msg)
        self.startup = msg
        if encoding:
            self.encoding = "utf-8"
        self.phase = _AUTHENTICATING
        self.frontend.mode = _TAGGED
        self.backend.mode = _TAGGED
        return msg

    def receive_login_answer(self, data: bytes | bytearray | memoryview) -> LoginAnswer | None:
        """:meth:`receive_backend` for a login's whole answer learnt before (see :class:`LoginAnswer`): it, or None.

        The answer is followed as receive_backend follows it -- the
        authentication settled, the parameters reported, the backend's key
        kept, the conversation ready, the stream offset past the chunk -- but
        no frames are made: the caller reads the little it needs from the
        answer. None, with nothing changed, for any other chunk (receive_backend
        or :meth:`receive_login_backend` then takes it).
        """
        if self.phase is not _AUTHENTICATING or type(data) is not bytes:
            return None
        n = len(data)
        encoding = self.encoding
        for answer in _known_answers:
            if (
                answer.size == n
                and answer.encoding == encoding
                and data.startswith(answer.head)
                and data.endswith(answer.tail)
            ):
                break
        else:
            return None
        framer = self.backend
        if answer.longest > framer.max_frame or not framer.pass_whole(n):
            return None
        if self._decoded:
            self._decoded = {}
        # AuthenticationOk
        self.auth_state = None
        if self.auth_method is None:
            self.auth_method = "trust"
        # The ParameterStatus run
        self.parameters.update(answer.parameters)
        self.encoding = answer.encoding_after
        self.value_settings_reported += answer.value_settings
        # BackendKeyData, then ReadyForQuery
        key_at = len(answer.head)
        self.backend_pid = int.from_bytes(data[key_at : key_at + 4], "big", signed=True)
        self.backend_key = data[key_at + 4 : key_at + _KEY_BODY]
        self.phase = _READY
        return answer

    def receive_login_backend(self, data: bytes | bytearray | memoryview) -> tuple[list[Frame], int]:
        """:meth:`receive_backend` for a caller that skips followed ParameterStatus frames anyway: (frames, how many it left out).

        A known ParameterStatus run (see :class:`ParameterRun`) is followed as
        :meth:`receive_backend` follows it, but yields no frames, only its
        length: a login's dozen frame tuples, and the caller's loop passing
        over them, are work nobody reads below message detail (callgrind, a
        pgbench -C login). Every other chunk gets exactly receive_backend's
        frames and a count of 0, and so does a chunk where a malformed
        ParameterStatus follows the run (the caller reads them all then): the
        frames left out are only ever the run's well-formed ParameterStatus
        frames, in one piece, in a chunk whose ParameterStatus were all
        followed (``tests/test_conversation.py`` holds it to receive_backend).
        """
        if self.phase is _AUTHENTICATING:
            return self._receive_login(data, False)
        return self.receive_backend(data), 0

    def _receive_login(self, data: bytes | bytearray | memoryview, framed: bool) -> tuple[list[Frame], int]:
        """A chunk while authenticating: a known ParameterStatus run at once (:class:`ParameterRun`), any other
        the general way and remembered; with the frames, how many of the run's were left out (``framed`` False).
        A chunk that made the conversation ready may be learnt as a :class:`LoginAnswer`."""
        framer = self.backend
        run_at = -1
        encoding = self.encoding
        clean = type(data) is bytes and framer.mode is _TAGGED and not framer.buffered and not framer.skipping
        run = None
        if clean and isinstance(data, bytes):
            run_at = _run_start(data, framer.max_frame)
            if run_at >= 0:
                run = _known_run(data, run_at, encoding, framer.max_frame)
        if run is not None and isinstance(data, bytes):
            out = self._follow_known_run(data, run_at, run, framed)
        else:
            if self._decoded:
                self._decoded = {}
            out = self._follow_backend(framer.feed(data)), 0
            if run_at >= 0 and isinstance(data, bytes):
                self._remember_run(out[0], data, run_at, encoding)
        if clean and self.phase is _READY and isinstance(data, bytes):
            _remember_answer(data, encoding)  # learnt here, taken by receive_login_answer
        return out

    def _follow_known_run(self, data: bytes, run_at: int, run: ParameterRun, framed: bool) -> tuple[list[Frame], int]:
        """The frames of a chunk with a known run, and how many of the run's own frames were left out.

        The messages before and after the run are framed from slices of
        ``data`` and their frames then point into ``data`` itself, at the
        offsets the general path gives them. Unless ``framed``, the run's own
        frames are left out (see :meth:`receive_login_backend`) -- but not
        when a malformed ParameterStatus follows it in the chunk: the caller
        then reads every one of them the general way, as it would have.
        """
        framer = self.backend
        if self._decoded:
            self._decoded = {}
        out = self._follow_backend([(t, data, s, e) for t, _, s, e in framer.feed(data[:run_at])]) if run_at else []
        at = len(out)
        malformed = self.parameters_malformed
        size = len(run.data)
        framer.passed(size)
        self.parameters.update(run.parameters)
        self.encoding = run.encoding_after
        self.value_settings_reported += run.value_settings
        rest = run_at + size
        if rest < len(data):
            tail = framer.feed(data[rest:])
            out += self._follow_backend(
                [(t, data, s + rest, e + rest) if b is not None else (t, None, s, e) for t, b, s, e in tail]
            )
        if not framed and self.parameters_malformed == malformed:
            return out, len(run.bodies)
        out[at:at] = [(_TAG_PARAMETER_STATUS, data, run_at + start, run_at + end) for start, end in run.bodies]
        return out, 0

    def _remember_run(self, frames: list[Frame], data: bytes, run_at: int, encoding: str) -> None:
        """After the general path: keep the chunk's ParameterStatus run the second time it is seen (see ParameterRun)."""
        first = -1
        for index, frame in enumerate(frames):
            if frame[2] == run_at + 5 and frame[1] is data:
                first = index
                break
        if first < 0:
            return
        end = run_at
        for tag, buf, start, stop in frames[first:]:
            if tag != _TAG_PARAMETER_STATUS or buf is not data or start != end + 5:
                break
            end = stop
        if end - run_at > _RUN_KEPT_BYTES:
            return
        key = hash(data[run_at:end])
        if key not in _runs_seen:
            if len(_runs_seen) >= 4 * _RUNS_KEPT:
                _runs_seen.clear()
            _runs_seen.add(key)
            return
        run = _read_run(frames, first, encoding)
        if run is None:
            return
        if len(_known_runs) >= _RUNS_KEPT:
            del _known_runs[0]
        _known_runs.append(run)

    def _follow_backend(self, frames: list[Frame]) -> list[Frame]:
        """Follow the conversation's state through a chunk's frames (and what the framer still holds)."""
        framer = self.backend
        if self.phase is _READY:
            for frame in frames:
                if frame[0] == _TAG_PARAMETER_STATUS:
                    self._on_parameter_status(frame)
            if frames and frames[-1][0] == FRAMING_ERROR:  # the framer halts after one: always the last
                self._desync(framer)
            return frames
        out: list[Frame] = []
        while frames:
            out.extend(frames)
            for frame in frames:
                tag = frame[0]
                if tag == _TAG_PARAMETER_STATUS:  # a dozen per login: straight to it
                    self._on_parameter_status(frame)
                elif tag in _STARTUP_WATCH or tag < 0:
                    self._on_backend_unit(frame)
            if framer.mode is _HALTED or not framer.buffered:
                break
            frames = framer.feed(b"")
        return out

    # ----------------------------------------------------------------- decoding

    def decode(self, frame: Frame, frontend: bool) -> m.Message:
        """Typed message for a frame this conversation produced."""
        tag = frame[0]
        if tag >= 0 and frame[1] is not None:
            return decode_tagged(frontend, tag, frame[1], frame[2], frame[3], self.encoding, self.auth_state)
        if tag == FRAMING_ERROR:
            err = self.error
            if err is None:
                return m.Desynchronized("frontend" if frontend else "backend", 0, "framing error", b"")
            return m.Desynchronized(err.direction, err.offset, err.reason, err.excerpt)
        if tag == SINGLE_BYTE and frame[1] is not None:
            answer = chr(frame[1][frame[2]])
            if self._negotiating == GSSENC_REQUEST_CODE:
                return m.GSSENCResponse(answer)
            return m.SSLResponse(answer)
        return decode_frame(frontend, frame, self.encoding, self.auth_state)

    def decode_frontend(self, frame: Frame) -> m.Message:
        return self.decode(frame, True)

    def decode_backend(self, frame: Frame) -> m.Message:
        return self.decode(frame, False)

    def decoded_backend(self, frame: Frame) -> m.Message | None:
        """The message the last :meth:`receive_backend` already decoded for ``frame`` (to follow the state), if any.

        Start-up's authentication requests and BackendKeyData are decoded
        here to follow the conversation; a caller that wants the message too
        takes it rather than decoding the frame a second time. A well-formed
        ParameterStatus is followed without building a message (a login brings
        a dozen): only a malformed one is kept, for the caller to report.
        """
        entry = self._decoded.get(frame[2])
        if entry is not None and entry[0] is frame[1]:
            return entry[1]
        return None

    def decoded_frontend(self, frame: Frame) -> m.Message | None:
        """The StartupMessage the conversation already decoded for ``frame`` (to read its encoding), if any.

        Only when decoding it again would give the same message: the caller
        decodes with the encoding in force now, which the StartupMessage's own
        ``client_encoding`` may have changed.
        """
        entry = self._decoded_startup
        if entry is not None and entry[0] is frame[1] and entry[1] == frame[2] and entry[2] == self.encoding:
            return entry[3]
        return None

    def assume_established(self) -> None:
        """Start mid-conversation (a capture that missed the start-up): both sides tagged."""
        self.phase = Phase.READY
        self.frontend.mode = FramingMode.TAGGED
        self.backend.mode = FramingMode.TAGGED

    def tls_terminated(self) -> None:
        """A proxy in the middle accepted the frontend's TLS itself: inside it, start-up begins afresh.

        The SSLRequest seen last is not answered on this stream (the answer
        went into the TLS session's set-up), and the first plaintext
        packet inside TLS is a startup packet again.
        """
        self.phase = Phase.STARTUP
        self._negotiating = 0
        self.frontend.mode = FramingMode.STARTUP
        self.backend.mode = FramingMode.TAGGED

    @property
    def decoding(self) -> bool:
        """False once the conversation is encrypted or desynchronised.

        Asked twice per statement: two identity checks, where membership in a
        frozenset of the two phases hashed an enum member by a Python-level
        ``Enum.__hash__`` (~1,100 instructions a call, compiled; callgrind).
        """
        phase = self.phase
        return phase is not _ENCRYPTED and phase is not _DESYNCHRONIZED

    # ----------------------------------------------------------------- state

    def _on_frontend_unit(self, frame: Frame) -> None:
        tag, buf, start, end = frame
        if tag == TLS_RECORD:
            self._encrypted()
            return
        if tag == FRAMING_ERROR:
            self._desync(self.frontend)
            return
        if tag != UNTAGGED or buf is None:
            return
        code = int.from_bytes(buf[start : start + 4], "big")
        if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
            self.phase = Phase.NEGOTIATING
            self._negotiating = code
            self.backend.mode = FramingMode.SINGLE_BYTE
        elif code == CANCEL_REQUEST_CODE:
            self.phase = Phase.CANCELLING
            self.frontend.mode = FramingMode.HALTED
        else:
            known = _startup_message(buf, start, end) if code >> 16 == 3 else None
            if known is not None:
                msg, encoding = known
                self._decoded_startup = (buf, start, "utf-8", msg)
                self.startup = msg
                if encoding:
                    self.encoding = python_codec(encoding)
            self.phase = _AUTHENTICATING
            self.frontend.mode = _TAGGED
            self.backend.mode = _TAGGED

    def _on_backend_unit(self, frame: Frame) -> None:
        tag, buf, start, end = frame
        if tag == FRAMING_ERROR:
            self._desync(self.backend)
        elif tag == SINGLE_BYTE and buf is not None:
            answer = buf[start]
            if answer in (0x53, 0x47):  # 'S' TLS accepted, 'G' GSS accepted
                self._encrypted()
            else:
                self.phase = Phase.STARTUP
                self.backend.mode = FramingMode.TAGGED
        elif buf is None:
            return
        elif tag == _TAG_AUTH:
            msg = decode_tagged(False, tag, buf, start, end, self.encoding)
            self._decoded[start] = (buf, msg)
            self._on_authentication(msg)
        elif tag == _TAG_PARAMETER_STATUS:
            self._on_parameter_status(frame)
        elif tag == _TAG_BACKEND_KEY:
            key = decode_tagged(False, tag, buf, start, end, self.encoding)
            self._decoded[start] = (buf, key)
            if isinstance(key, m.BackendKeyData):
                self.backend_pid = key.process_id
                self.backend_key = key.secret_key
        elif tag == _TAG_READY:
            self.phase = _READY
            self.auth_state = None
        elif tag == _TAG_ERROR and self.phase in (Phase.AUTHENTICATING, Phase.NEGOTIATING, Phase.STARTUP):
            # A start-up failure (bad password, unknown database...) ends the session.
            self.phase = Phase.CLOSED

    def _on_authentication(self, msg: m.Message) -> None:
        if isinstance(msg, (m.AuthenticationCleartextPassword, m.AuthenticationMD5Password)):
            self.auth_state = AuthState.PASSWORD
        elif isinstance(msg, m.AuthenticationSASL):
            self.auth_state = AuthState.SASL_INITIAL
        elif isinstance(msg, m.AuthenticationSASLContinue):
            self.auth_state = AuthState.SASL_CONTINUE
        elif isinstance(msg, (m.AuthenticationGSS, m.AuthenticationSSPI, m.AuthenticationGSSContinue)):
            self.auth_state = AuthState.GSS
        elif isinstance(msg, m.AuthenticationOk):
            self.auth_state = None
        if isinstance(msg, m.Authentication) and not isinstance(
            msg,
            (m.AuthenticationOk, m.AuthenticationSASLContinue, m.AuthenticationSASLFinal, m.AuthenticationGSSContinue),
        ):
            self.auth_method = msg.method
        elif isinstance(msg, m.AuthenticationOk) and self.auth_method is None:
            self.auth_method = "trust"

    def _on_parameter_status(self, frame: Frame) -> None:
        tag, buf, start, end = frame
        if buf is None:
            return
        # "name NUL value NUL" is read with one split, without a message object
        # (a third of the decoder's cost); anything else is decoded the general
        # way, which reports it as Malformed.
        parts = buf[start : end - 1].split(b"\x00") if end > start and buf[end - 1] == 0 else None
        if parts is not None and len(parts) == 2:
            encoding = self.encoding
            name = parts[0].decode(encoding, "backslashreplace")
            value = parts[1].decode(encoding, "backslashreplace")
        else:
            msg = decode_tagged(False, tag, buf, start, end, self.encoding)
            self._decoded[start] = (buf, msg)
            if not isinstance(msg, m.ParameterStatus):
                self.parameters_malformed += 1
                return
            name, value = msg.name, msg.value
        self.parameters[name] = value
        if name == "client_encoding":
            self.encoding = python_codec(value)
            self.value_settings_reported += 1
        elif name == "TimeZone":
            self.value_settings_reported += 1

    def _encrypted(self) -> None:
        self.phase = Phase.ENCRYPTED
        self.frontend.mode = FramingMode.HALTED
        self.backend.mode = FramingMode.HALTED

    def _desync(self, framer: Framer) -> None:
        self.phase = Phase.DESYNCHRONIZED
        if self.error is None:
            self.error = framer.error
        self.frontend.mode = FramingMode.HALTED
        self.backend.mode = FramingMode.HALTED
