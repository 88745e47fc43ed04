"""The per-session tracker: bytes and timestamps in, log records out (sans-IO).

The proxy calls :meth:`SessionTracker.frontend` and :meth:`SessionTracker.backend`
with every chunk *after* forwarding it, and :meth:`SessionTracker.closed` when
the session ends. The tracker owns the :class:`~pgproxy.protocol.Conversation`
for framing and decoding, the :class:`~pgproxy.tracker.statements.StatementTracker`
for query events, and the rendering of message events. It never performs I/O
and never logs: it returns :class:`~pgproxy.tracker.records.Record` values.

The clock is injected (``now`` arguments, or the ``clock`` callable), so tests
can assert exact durations.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pgproxy.protocol import messages as m
from pgproxy.protocol.decoding import (
    UNREADABLE_BODY,
    decode_tagged,
    known_command_complete,
    read_bind,
    read_execute,
    read_kind_and_name,
    read_parse,
    read_query,
)
from pgproxy.protocol.framing import FRAMING_ERROR, TLS_RECORD, Frame, Framer, count_table, tag_table
from pgproxy.protocol.replication import is_replication_connection
from pgproxy.protocol.values import ValueContext
from pgproxy.protocol.wire import Conversation, LoginAnswer, Phase
from pgproxy.tracker.message_events import (
    KNOWN_BACKEND_TAGS,
    KNOWN_BODY_BYTES,
    KNOWN_FRONTEND_TAGS,
    KnownRun,
    MessageEvents,
)
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import (
    SESSION_ANOMALY,
    SESSION_AUTH_FAILED,
    SESSION_ENCRYPTED,
    SESSION_ENDED,
    SESSION_READY,
    SESSION_STARTED,
    SESSION_STARTUP_FAILED,
    Detail,
    Record,
    round_ms,
)
from pgproxy.tracker.replication import ReplicationStreams
from pgproxy.tracker.statements import (
    BACKEND_HANDLERS,
    FRONTEND_HANDLERS,
    TRANSACTION_STATUS,
    Execution,
    StatementTracker,
)

if TYPE_CHECKING:  # the compiled build's native integer type; nothing is imported at run time
    from mypy_extensions import i64

_DATA_ROW: Final = ord("D")
_COPY_DATA: Final = ord("d")
_TERMINATE: Final = ord("X")
_ROW_DESCRIPTION: Final = ord("T")
_READY_FOR_QUERY: Final = ord("Z")
_PARAMETER_STATUS: Final = ord("S")
_PASSWORD_FAMILY: Final = ord("p")  # needs the authentication state: general path
_BIND: Final = ord("B")
_EXECUTE: Final = ord("E")
_DESCRIBE: Final = ord("D")
_SYNC: Final = ord("S")
_QUERY: Final = ord("Q")
_PARSE: Final = ord("P")
#: Requests query detail reads by their fields, without a message object (see _request_by_fields).
_COMMAND_COMPLETE: Final = ord("C")
_READ_BY_FIELDS: Final = frozenset((_BIND, _EXECUTE, _DESCRIBE, _SYNC, _QUERY, _PARSE))
#: The same as a tag table (Framer.feed_whole): the tags of a chunk query detail walks in place (see _frontend_requests).
_BY_FIELDS_TAGS: Final = tag_table(b"BEDSQP")
#: How libpq (pgbench, psycopg) ends an extended-protocol statement: Describe of the unnamed
#: portal, Execute of it without a row limit, Sync. A chunk that ends so has the three
#: checked by one endswith and handled without reading them (see _frontend_requests).
_PORTAL_TAIL: Final = b"D\x00\x00\x00\x06P\x00" + b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" + b"S\x00\x00\x00\x04"
_PORTAL_TAIL_MESSAGES: Final = 3
#: _PORTAL_TAIL's three messages, each as message detail keeps its event (MessageEvents.known).
_DESCRIBE_PORTAL: Final = _PORTAL_TAIL[:7]
_EXECUTE_PORTAL: Final = _PORTAL_TAIL[7:17]
_SYNC_MESSAGE: Final = _PORTAL_TAIL[17:]
#: Terminate, as every client sends it: the whole chunk that ends a connection (see SessionTracker.frontend).
_TERMINATE_MESSAGE: Final = b"X\x00\x00\x00\x04"
_READY_PHASE: Final = Phase.READY
_AUTHENTICATING_PHASE: Final = Phase.AUTHENTICATING  # asked per server chunk until ready
_QUERY_DETAIL: Final = Detail.QUERY  # asked (with MESSAGE) by every new tracker
_MESSAGE_DETAIL: Final = Detail.MESSAGE
#: Responses query detail walks in place when a chunk holds nothing else (see _backend_responses):
#: ParseComplete, BindComplete, CloseComplete, CommandComplete, DataRow, ErrorResponse,
#: EmptyQueryResponse, NoticeResponse, RowDescription, ReadyForQuery, NoData, PortalSuspended,
#: ParameterDescription. Never ParameterStatus: the conversation follows it.
_WALKED_RESPONSES: Final = tag_table(b"123CDEINTZnst")
#: Responses message detail walks in place when a chunk holds nothing else (see _backend_events):
#: DataRow and the kinds whose events are kept by their bytes (KNOWN_BACKEND_TAGS).
_MESSAGE_WALKED_RESPONSES: Final = tag_table(b"D" + bytes(sorted(KNOWN_BACKEND_TAGS)))
#: The end of nearly every answer outside a transaction block: ReadyForQuery, idle. A chunk
#: that ends so has it checked by one endswith and handled without reading it (see _backend_responses).
_IDLE_TAIL: Final = b"Z\x00\x00\x00\x05I"
_IDLE_TAIL_BYTES: Final = 6
_IDLE: Final = "I"  # its status
#: Empty ParseComplete, BindComplete and CloseComplete runs a driver's answer may start with, before its
#: RowDescription (pgbench -M prepared: BindComplete; extended: ParseComplete, BindComplete) -> how many.
_STEP_RUNS: Final = {
    b"": 0,
    **{bytes((a,)) + b"\x00\x00\x00\x04": 1 for a in b"123"},
    **{bytes((a,)) + b"\x00\x00\x00\x04" + bytes((c,)) + b"\x00\x00\x00\x04": 2 for a in b"123" for c in b"123"},
}
#: The furthest a RowDescription's body starts after such a run (two steps and its header).
_LEARNT_HEAD_STARTS: Final = 15
#: Running as the compiled build's extension module (see pgproxy.protocol.COMPILED).
_COMPILED: Final = not __file__.endswith(".py")
_LENGTH: Final = struct.Struct("!I").unpack_from
#: ParseComplete, BindComplete, CloseComplete: empty bodies that answer the head of the queue.
_STEP_COMPLETE: Final = frozenset((ord("1"), ord("2"), ord("3")))
_PARSE_COMPLETE: Final = ord("1")
_CLOSE_COMPLETE: Final = ord("3")
#: A ReadyForQuery's status byte -> its status (None: Malformed, the general way). A tuple
#: indexed by the byte: under mypyc a dict's get takes a boxed int.
_READY_STATUS: Final = tuple(chr(i) if chr(i) in "ITE" else None for i in range(256))
#: Frontend messages a ReadyForQuery answers ("Message Flow"): Query, Sync, FunctionCall.
_ANSWERED_BY_READY: Final = frozenset((ord("Q"), ord("S"), ord("F")))
#: Extended-protocol steps that are under way until a Sync follows them:
#: Parse, Bind, Describe, Execute, Close, Flush.
_UNSYNCED_STEPS: Final = frozenset((ord("P"), ord("B"), ord("D"), ord("E"), ord("C"), ord("H")))
#: The session context's fields ``session.ended`` repeats, where present.
_ENDED_CONTEXT: Final = ("user", "db.namespace", "application_name", "backend_pid", "client.address", "client.port")
#: Ways a session can end after the client's Terminate, all of them that Terminate's doing.
_ENDED_BY_TERMINATE: Final = frozenset(("client_closed", "client_eof", "client_error", "server_closed", "server_error"))
#: ReadyForQuery status bytes of an open transaction (in a block, or failed).
_IN_TRANSACTION: Final = frozenset(("T", "E"))
_HEADER_BYTES: Final = 5  # tag + Int32 length
#: Decoded RowDescriptions a session keeps at message detail, and the largest body kept
#: (about 60 columns): a few tens of KiB per session at most.
_DESCRIPTIONS_KEPT: Final = 8
_DESCRIPTION_KEPT_BYTES: Final = 2048
#: Backend tags still decoded at connection detail after ReadyForQuery:
#: ErrorResponse (FATAL terminations) and ParameterStatus (encoding changes).
_CONNECTION_LEVEL_BACKEND: Final = frozenset((ord("E"), ord("S"), FRAMING_ERROR))
#: Connection detail's count of a ready session's responses (Framer.count_tags): ReadyForQuery marked,
#: a chunk with an ErrorResponse or a ParameterStatus (_CONNECTION_LEVEL_BACKEND) takes the general way.
_COUNTED_RESPONSES: Final = count_table(b"Z", stopping=b"ES")
#: Connection detail's count of a ready session's requests (Framer.count_tags; see _count_requests):
#: _ANSWERED_BY_READY marked, _UNSYNCED_STEPS opening, a Terminate the general way.
_COUNTED_REQUESTS: Final = count_table(b"QSF", opening=b"PBDECH", stopping=b"X")
#: A ReadyForQuery status byte as its character, without a call to chr().
_STATUS_BYTES: Final = tuple(chr(i) for i in range(256))

#: Message types the session itself reacts to (everything else only feeds the statement tracker).
_FRONTEND_NOTABLE: Final = frozenset(
    (m.StartupMessage, m.Terminate, m.EncryptionStarted, m.Desynchronized, m.Malformed, m.Oversized)
)
_BACKEND_NOTABLE: Final = frozenset(
    (
        m.ParameterStatus,
        m.BackendKeyData,
        m.NegotiateProtocolVersion,
        m.ReadyForQuery,
        m.ErrorResponse,
        m.SSLResponse,
        m.GSSENCResponse,
        m.Desynchronized,
        m.Malformed,
        m.Oversized,
    )
)
#: Notable only until the session is ready (the first ReadyForQuery, a start-up failure).
_STARTUP_ONLY: Final = frozenset((m.ReadyForQuery, m.ErrorResponse))
_BACKEND_NOTABLE_WHEN_READY: Final = _BACKEND_NOTABLE - _STARTUP_ONLY

#: Startup parameters shown as their own fields rather than inside ``parameters``.
_PROMOTED_STARTUP: Final = ("user", "database", "application_name")

# The session events' usual fields, in their order: the fast ways of _started, _ready and closed copy
# them (a copy of a dict and its values replaced, no key inserted), and the log sink checks a
# layout's keys for reserved and secret names once rather than every record's (see Record.layout).
# Callgrind, compiled, a pgbench -C-like connection at query detail: session.ended's building
# ~9.6k -> ~5k instructions, and ~1.5k a record of the sink's check.
#: A session context with all its keys: session, db.system.name, the server's and the client's
#: address and port, user, db.namespace, application_name, backend_pid.
_FULL_CONTEXT: Final = 10
#: The context before start-up (the first four, both addresses known).
_OPENING_CONTEXT: Final = 6
_STARTED_LAYOUT: Final[dict[str, Any]] = dict.fromkeys(
    (
        "session",
        "server.address",
        "server.port",
        "client.address",
        "client.port",
        "user",
        "db.namespace",
        "application_name",
        "protocol_version",
    )
)
_STARTED_LAYOUT_PARAMETERS: Final[dict[str, Any]] = {**_STARTED_LAYOUT, "parameters": None}
_READY_LAYOUT: Final[dict[str, Any]] = dict.fromkeys(
    (
        "session",
        "user",
        "db.namespace",
        "application_name",
        "backend_pid",
        "auth_method",
        "server_version",
        "parameters",
        "protocol_version",
        "setup_ms",
    )
)
_ENDED_LAYOUT: Final[dict[str, Any]] = dict.fromkeys(
    (
        "session",
        "reason",
        "duration_ms",
        "bytes_from_client",
        "bytes_from_server",
        "messages_from_client",
        "messages_from_server",
        "user",
        "db.namespace",
        "application_name",
        "backend_pid",
        "client.address",
        "client.port",
        "statements",
        "transaction_status",
    )
)
#: Connection detail's (no statement tracker: no ``statements``).
_ENDED_LAYOUT_COUNTING: Final[dict[str, Any]] = {k: None for k in _ENDED_LAYOUT if k != "statements"}


class Side(enum.Enum):
    """One end of the conversation."""

    CLIENT = "client"
    SERVER = "server"


@dataclasses.dataclass(frozen=True, slots=True)
class StartupWait:
    """Who owes the next step of an unfinished start-up, and what (see :meth:`SessionTracker.startup_wait`).

    Attributes:
        owed_by: the side the conversation waits for.
        awaiting: what it has not sent yet, in words (``the startup packet``...).
        at_boundary: the server's stream ends on a message boundary, so the
            proxy may append an ErrorResponse of its own without corrupting it.
    """

    owed_by: Side
    awaiting: str
    at_boundary: bool


_AUTH_REPLY: Final = {
    "password": "the password",
    "sasl_initial": "the SASL initial response",
    "sasl_continue": "the SASL response",
    "gss": "the GSSAPI response",
}


#: _AnswerMemo.done_tail before one is learnt: it does not end in _IDLE_TAIL, so query detail's
#: walk never takes it; connection detail's count asks for it by identity (a chunk may end in it).
_NO_TAIL: Final = b"\x00"


class _AnswerMemo:
    """The pure build's memo of how a session's last walked answer ended and started.

    ``done_tail`` holds the bytes of its CommandComplete and idle ReadyForQuery,
    ``done_message`` the CommandComplete's message (known_command_complete's,
    the same object for the same bytes): an answer that ends in the same bytes
    (pgbench -S: every one, "SELECT 1") has both taken at the walk's tail
    without reading them, a loop turn fewer in Framer.feed_whole_from and in
    SessionTracker._backend_responses. ``done_tail`` is never a chunk's end
    before one is learnt (it does not end in _IDLE_TAIL). ``head`` holds the
    bytes of its first step completions (``head_steps`` of them: a driver's
    ParseComplete and BindComplete) and RowDescription, taken the same way by
    an answer that starts with them (pgbench: every one); ``head_end`` is where
    the chunk being walked starts after them (0: it does not). Callgrind, pure,
    instructions a statement: pgbench -M simple 98.2k -> 86.4k with the Query's
    own way (Framer.feed_one), prepared 108.1k -> 99.3k, extended 127.6k -> 114.7k.

    One attribute of the tracker rather than five: CPython 3.11 keeps an
    object's attributes in its class's shared key table up to 30 keys, and
    the tracker's reads and method lookups became the slow kind past that
    (~1.7k instructions a statement). The compiled build walks natively and
    makes none.
    """

    __slots__ = ("done_message", "done_tail", "head", "head_end", "head_steps")

    def __init__(self) -> None:
        self.done_tail = _NO_TAIL
        self.done_message: m.CommandComplete | None = None
        self.head: bytes | None = None
        self.head_steps = 0
        self.head_end = 0


class SessionTracker:
    """Everything pgproxy knows and logs about one client session.

    Args:
        session_id: short unique id carried by every record.
        options: detail level, caps, redaction, filters.
        client: (address, port) of the client, if known.
        server: (address, port) of the upstream server, if known.
        clock: monotonic clock used when a call passes no ``now``.

    Attributes:
        bytes_from_client, bytes_from_server: every byte seen, decoded or not.
        messages_from_client, messages_from_server: frames seen.
    """

    # What a session rarely changes starts as a class attribute, read through the
    # instance until the session sets its own: CPython 3.11 keeps at most 30 of an
    # instance's attributes in its compact layout, and a tracker that set 34 in
    # __init__ paid for moving them to a dict of their own, and a slower access ever
    # after (pure Python, callgrind). Each is read once or twice a connection at most.
    # (The compiled build makes them instance attributes with these defaults.)
    #: Message detail's record maker (see _message_record).
    _events: MessageEvents | None = None
    # Message detail: decoded RowDescriptions by their body (see _row_description).
    _descriptions: dict[bytes, m.Message] | None = None
    _descriptions_encoding = ""
    encrypted: str | None = None
    #: TLS protocol version per leg ("client", "upstream") where pgproxy itself runs TLS (replaced, never changed).
    tls: dict[str, str] = {}  # never mutated: tls_established replaces it
    #: The server's NegotiateProtocolVersion, if it sent one (older minor version, unknown ``_pq_.`` options).
    negotiated: m.NegotiateProtocolVersion | None = None
    auth_failed = False
    anomalies = 0
    _value_settings_seen = 0  # the conversation's value_settings_reported when last applied
    #: The pure build's memo of how the last walked answer ended and started (query detail only: message
    #: detail never walks, and its tracker would otherwise hold 31 attributes).
    _memo: _AnswerMemo | None = None

    def __init__(
        self,
        session_id: str,
        options: TrackerOptions | None = None,
        *,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_id = session_id
        self.options = options or TrackerOptions()
        self.detail = self.options.detail
        self._message_level = self.detail >= _MESSAGE_DETAIL  # checked per frame: keep it a plain bool
        if self._message_level:
            self._events = MessageEvents(session_id, self.options)
        self.clock = clock
        self.conv = Conversation(self.options.max_frame)
        self.started_at = clock()
        self.ready_at: float | None = None
        self.bytes_from_client = 0
        self.bytes_from_server = 0
        self.messages_from_client = 0
        self.messages_from_server = 0
        self.client = client
        self.server = server
        self.context: dict[str, Any] = {"session": session_id, "db.system.name": "postgresql"}
        if server is not None:
            self.context["server.address"], self.context["server.port"] = server
        if client is not None:
            self.context["client.address"], self.context["client.port"] = client
        self.statements: StatementTracker | None = (
            StatementTracker(self.options, self.context, _value_context("utf-8", "UTC", self.options.max_value_chars))
            if self.detail >= _QUERY_DETAIL
            else None
        )
        #: Replication stream summaries, on walsender connections (``replication`` start-up parameter).
        self.replication: ReplicationStreams | None = None
        self.terminated = False
        # Connection detail only (query detail asks the statement tracker): how
        # many ReadyForQuery are still due, whether extended-protocol steps were
        # sent without a Sync yet, and the last ReadyForQuery's status byte.
        self._ready_due = 0
        self._unsynced = False
        self._status: str | None = None
        self._ended = False
        # Start-up only: which side sent last, and whether the server has
        # answered the StartupMessage at all (for startup_wait()).
        self._server_spoke_last = False
        self._server_answered_startup = False
        #: Connection detail and ready: requests and responses are only counted (see _follow_counting).
        self._counting = False
        if not _COMPILED and not self._message_level:  # (connection detail counts with its done_tail)
            self._memo = _AnswerMemo()

    def tls_established(self, leg: str, version: str) -> None:
        """pgproxy itself runs TLS ``version`` on ``leg`` (``client`` or ``upstream``); ``session.ready`` names it.

        On the client leg pgproxy has terminated the client's TLS, so the
        decrypted stream starts up afresh (the proxy says so rather than
        reaching into the conversation it does not own).
        """
        self.tls = {**self.tls, leg: version}  # a dict of its own: the class's empty one is shared
        if leg == "client":
            self.conv.tls_terminated()

    def join_established(self) -> None:
        """Start from a conversation already under way (a capture that missed the start-up).

        The session counts as ready from here, but no ``session.ready`` is
        reported: its authentication method, parameters and set-up time were
        not seen, and are not made up.
        """
        self.conv.assume_established()
        self.ready_at = self.started_at
        self._follow_counting()

    # ------------------------------------------------------------------ feeding

    def frontend(self, data: bytes, now: float | None = None) -> list[Record]:
        """Account for bytes the client sent (already forwarded)."""
        self.bytes_from_client += len(data)
        if self._counting:
            framer = self.conv.frontend
            if data == _TERMINATE_MESSAGE and framer.pass_whole(len(data)):
                # The client's goodbye alone in its chunk, once per connection: _count_requests' doing
                # without the framer's walk and a loop (~5k instructions, pure; callgrind)
                self.messages_from_client += 1
                self.terminated = True
                return []
            if _COMPILED:  # its walk is native
                count = framer.count_tags(data, _COUNTED_REQUESTS)
            elif data and data[0] == _QUERY and framer.feed_one(data, len(data)):
                # The pure build: a Query alone in its chunk (pgbench -S, psql) by one header read
                # (Framer.feed_one), not count_tags' loop turn (~2k instructions under the interpreter)
                self.messages_from_client += 1
                self._ready_due += 1
                self._unsynced = False
                return []
            elif self._count_known_requests(data, framer):
                return []
            else:
                count = framer.count_tags(data, _COUNTED_REQUESTS)
            if count >= 0:  # whole, plausible messages (and a partial last one), no Terminate among them
                self.messages_from_client += count
                # _count_requests' result: every Query, Sync or FunctionCall is due a ReadyForQuery, and
                # extended-protocol steps after the last of them are unsynced
                marks = framer.marks
                if marks:
                    self._ready_due += marks
                    self._unsynced = framer.opened
                elif framer.opened:
                    self._unsynced = True
                return []
            framed = [frame[0] for frame in self.conv.receive_frontend(data)]
            self.messages_from_client += len(framed)
            self._count_requests(framed)
            return []
        conv = self.conv
        statements = self.statements
        if (
            statements is not None
            and type(data) is bytes
            and self.ready_at is not None
            and conv.phase is _READY_PHASE
            and not self._message_level
            and self.replication is None
        ):
            if data == _TERMINATE_MESSAGE and conv.frontend.pass_whole(len(data)):
                # The client's goodbye alone in its chunk (libpq's PQfinish, once per connection): what the
                # general way does with it (the statement tracker has no handler for Terminate), without
                # framing and decoding it (~10k instructions a connection, pure; callgrind)
                self.messages_from_client += 1
                self.terminated = True
                return statements.take_released() if statements.outbox else []
            # libpq's Describe, Execute and Sync ending the chunk: checked by one endswith
            if data.endswith(_PORTAL_TAIL):
                tail = len(data) - len(_PORTAL_TAIL)
                # A Bind before them (pgbench -M prepared, a driver's prepared statement), or a Parse and
                # a Bind (pgbench -M extended, an unnamed statement): what the walk below does with them,
                # without its loops (see Framer.feed_bind), every body read before anything is done;
                # a body that does not read goes to the walk, which decodes it the general way.
                bind_at = conv.frontend.feed_bind(data, tail)  # 0 alone, after the Parse otherwise; -1: the walk
                if bind_at >= 0:
                    self.messages_from_client += (2 if bind_at else 1) + _PORTAL_TAIL_MESSAGES
                    now = self.clock() if now is None else now
                    try:
                        parsed = read_parse(data, _HEADER_BYTES, bind_at, conv.encoding) if bind_at else None
                        bind = read_bind(data, bind_at + _HEADER_BYTES, tail, conv.encoding)
                    except UNREADABLE_BODY:
                        return self._frontend_requests(data, statements, now, tail)
                    if parsed is not None:
                        statements.parse(parsed[0], parsed[1], parsed[2], now)
                    statements.bind(bind[0], bind[1], bind[2], bind[3], bind[4], now)
                    statements.portal_tail(now)
                    return statements.take_released() if statements.outbox else []
            else:
                tail = -1
                if data and data[0] == _QUERY and conv.frontend.feed_one(data, len(data)):
                    # A Query alone in its chunk (pgbench -S, psql, simple-protocol clients): what the walk
                    # below does with it, without its loops (see Framer.feed_one); a body that does not
                    # read goes to the walk, which decodes it the general way (nothing was done with it).
                    self.messages_from_client += 1
                    now = self.clock() if now is None else now
                    try:
                        sql = read_query(data, _HEADER_BYTES, len(data), conv.encoding)
                    except UNREADABLE_BODY:
                        return self._frontend_requests(data, statements, now, -1)
                    statements.query(sql, now)
                    return statements.take_released() if statements.outbox else []
            count = conv.frontend.feed_whole(data, _BY_FIELDS_TAGS, tail, _PORTAL_TAIL_MESSAGES)
            if count:
                self.messages_from_client += count
                return self._frontend_requests(data, statements, self.clock() if now is None else now, tail)
        elif (
            self._message_level
            and type(data) is bytes
            and data.endswith(_PORTAL_TAIL)
            and self._events is not None
            and statements is not None
            and self.ready_at is not None
            and conv.phase is _READY_PHASE
            and conv.decoding
            and self.replication is None
        ):
            records = self._portal_statement_events(data, statements, self._events, now)
            if records is not None:
                return records
        if self.ready_at is None:
            self._server_spoke_last = False
            if not self._message_level and self.replication is None:
                startup = conv.receive_startup(data)
                if startup is not None:  # a StartupMessage seen before: no frame, its fields kept (_started)
                    self.messages_from_client += 1
                    started: list[Record] = []
                    if statements is not None:
                        started = statements.frontend(startup, self.clock() if now is None else now)
                    started.append(self._started(startup))
                    return started
        if not conv.decoding:
            return []
        frames = conv.receive_frontend(data)
        if not frames:
            return []
        self.messages_from_client += len(frames)
        now = self.clock() if now is None else now
        out: list[Record] = []
        if self.replication is not None:
            out += self.replication.feed(frames, False, now)
        if self.ready_at is not None:
            if statements is None:
                self._count_requests([frame[0] for frame in frames])
                return out
            if not self._message_level:
                return self._frontend_query_detail(frames, statements, now, out)
            if self._events is not None:
                return self._frontend_message_detail(frames, statements, self._events, now, out)
        for frame in frames:
            self._on_frontend(frame, now, out)
        return out

    def _frontend_query_detail(
        self, frames: list[Frame], statements: StatementTracker, now: float, out: list[Record]
    ) -> list[Record]:
        """The query-detail hot loop for requests: decode and hand each message to the statement tracker.

        Messages the session itself must react to (Terminate, anomalies) and
        pseudo frames take the general path; CopyData is counted in runs.
        """
        conv = self.conv
        encoding = conv.encoding
        copies = copy_bytes = 0
        for frame in frames:
            tag, buf, start, end = frame
            if tag == _COPY_DATA:
                copies += 1
                copy_bytes += end - start if buf is not None else end
                continue
            if copies:
                statements.count_results(0, 0, copies, copy_bytes)
                copies = copy_bytes = 0
            if buf is None or tag < 0 or tag == _PASSWORD_FAMILY:
                self._on_frontend(frame, now, out)
                continue
            if tag in _READ_BY_FIELDS and _request_by_fields(statements, tag, buf, start, end, encoding, now):
                continue
            self._frontend_decoded(tag, buf, start, end, statements, encoding, now, out)
        if copies:
            statements.count_results(0, 0, copies, copy_bytes)
        if statements.outbox:
            out += statements.take_released()
        return out

    def _frontend_requests(self, data: bytes, statements: StatementTracker, now: float, tail: int) -> list[Record]:
        """:meth:`_frontend_query_detail` for a chunk of whole requests read by their fields, walked in place.

        The framer checked the chunk (:meth:`~pgproxy.protocol.framing.Framer.feed_whole`):
        whole messages, all Query, Parse, Bind, Describe, Execute or Sync
        (pgbench's and most drivers' chunks). Each goes to the statement tracker
        as the general loop hands it (a body that does not read: the general
        way, by :meth:`_frontend_decoded`), without a frame tuple per message, a
        list of them, and the wire layer's pass over it. tests/test_tracker_parity.py
        holds it to the general way (same records, offsets and errors).
        """
        out: list[Record] = []
        encoding = self.conv.encoding
        by_index = _COMPILED
        pos: i64 = 0
        n: i64 = len(data)
        # libpq's Describe, Execute and Sync (_PORTAL_TAIL at ``tail``), where the walk reaches
        # them: what _request_by_fields would read from them, without reading.
        while pos < n:
            if pos == tail:
                statements.portal_tail(now)
                break
            tag: i64 = data[pos]
            if by_index:  # native integers, each byte before its shift (see Framer.feed_whole)
                b1: i64 = data[pos + 1]
                b2: i64 = data[pos + 2]
                b3: i64 = data[pos + 3]
                b4: i64 = data[pos + 4]
                length: i64 = b1 << 24 | b2 << 16 | b3 << 8 | b4
            else:
                length = _LENGTH(data, pos + 1)[0]
            start: i64 = pos + _HEADER_BYTES
            pos += 1 + length
            if not _request_by_fields(statements, tag, data, start, pos, encoding, now):
                self._frontend_decoded(tag, data, start, pos, statements, encoding, now, out)
        if statements.outbox:
            out += statements.take_released()
        return out

    def _frontend_decoded(
        self,
        tag: int,
        buf: bytes,
        start: int,
        end: int,
        statements: StatementTracker,
        encoding: str,
        now: float,
        out: list[Record],
    ) -> None:
        """A request the query-detail loops do not read by its fields: decoded, then handled."""
        msg = decode_tagged(True, tag, buf, start, end, encoding)
        kind = type(msg)
        if kind in _FRONTEND_NOTABLE:
            self._on_frontend((tag, buf, start, end), now, out, msg)
            return
        handler = FRONTEND_HANDLERS.get(kind)
        if handler is not None:
            handler(statements, msg, now)

    def backend(self, data: bytes, now: float | None = None) -> list[Record]:
        """Account for bytes the client received (from the server or the proxy)."""
        self.bytes_from_server += len(data)
        conv = self.conv
        if self._counting:
            framer = conv.backend
            memo = self._memo  # the pure build's (see _count_known_responses); the compiled walk is native
            if memo is not None and self._count_known_responses(data, framer, memo):
                return []
            count = framer.count_tags(data, _COUNTED_RESPONSES)
            if count >= 0:  # no error, no parameter change, nothing odd: counted
                self.messages_from_server += count
                ready = framer.marks  # ReadyForQuery messages; the body of the chunk's last in watched
                if ready:
                    self._status = _STATUS_BYTES[data[framer.watched]]
                    due = self._ready_due
                    if due:
                        self._ready_due = due - ready if due > ready else 0
                return []
            malformed = conv.parameters_malformed
            frames = conv.receive_backend(data)
            return self._count_responses(frames, now, conv.parameters_malformed == malformed)
        statements = self.statements
        if (
            statements is not None
            and type(data) is bytes
            and self.ready_at is not None
            and not self._message_level
            and self.replication is None
        ):
            tail = len(data) - len(_IDLE_TAIL) if data.endswith(_IDLE_TAIL) else -1  # an idle ReadyForQuery
            if _COMPILED:  # the native walk keeps no memo (see AnswerMemo)
                count = conv.receive_whole(data, _WALKED_RESPONSES, tail, 1)
            else:
                tail_count = 1
                head_end = head_count = 0
                memo = self._memo
                if memo is not None:
                    if tail >= 0 and data.endswith(memo.done_tail):  # after the CommandComplete seen last
                        tail = len(data) - len(memo.done_tail)
                        tail_count = 2
                    head = memo.head
                    if head is not None and data.startswith(head):  # the steps and RowDescription seen last
                        head_end = len(head)
                        head_count = memo.head_steps + 1
                    memo.head_end = head_end
                count = conv.receive_whole_from(data, _WALKED_RESPONSES, head_end, head_count, tail, tail_count)
            if count:
                self.messages_from_server += count
                if conv.value_settings_reported != self._value_settings_seen:
                    self._value_settings_changed()
                return self._backend_responses(data, statements, self.clock() if now is None else now, tail)
        elif (
            self._message_level
            and statements is not None
            and type(data) is bytes
            and self.ready_at is not None
            and self.replication is None
            and self._events is not None
            and self._events.shortcuts
            and conv.decoding
        ):
            walked = self._backend_events(data, statements, self._events, now)
            if walked is not None:
                return walked
        if self.ready_at is None and not self._message_level and self.replication is None:
            fresh = not conv.parameters  # nothing reported before: the answer's parameters become all of them
            answer = conv.receive_login_answer(data)
            if answer is not None:
                return self._login_answered(answer, statements, now, fresh)
        malformed = conv.parameters_malformed
        if self.ready_at is None:
            self._server_spoke_last = True
            self._server_answered_startup = self._server_answered_startup or conv.phase is _AUTHENTICATING_PHASE
        if not conv.decoding:
            return []
        message_level = self._message_level
        if self.ready_at is None and not message_level and self.replication is None:
            # A login's known ParameterStatus run comes counted, not framed: below
            # message detail the loops below pass over followed ones anyway.
            frames, followed_run = conv.receive_login_backend(data)
            self.messages_from_server += followed_run
        else:
            frames = conv.receive_backend(data)
        if not frames:
            return []
        self.messages_from_server += len(frames)
        now = self.clock() if now is None else now
        out: list[Record] = []
        if self.replication is not None:
            out += self.replication.feed(frames, True, now)
        # Below message detail a ParameterStatus the conversation followed needs
        # nothing more (a login brings a dozen) than the value context, which only
        # message detail reads within a backend chunk: set here, once per chunk.
        # A malformed one (the count moved) sends them all the general way.
        followed = not message_level and conv.parameters_malformed == malformed
        if followed and statements is not None and conv.value_settings_reported != self._value_settings_seen:
            self._value_settings_changed()
        # At connection detail, once the session is ready only errors and
        # parameter changes matter: everything else is counted, not decoded.
        minimal = statements is None and self.ready_at is not None
        if statements is not None:
            if not message_level:
                return self._backend_query_detail(frames, statements, now, out, followed)
            if self.ready_at is not None and self._events is not None:
                return self._backend_message_detail(frames, statements, self._events, now, out)
        for frame in frames:
            tag = frame[0]
            if tag == _PARAMETER_STATUS and followed and frame[1] is not None:
                continue
            if tag == _DATA_ROW:
                if statements is not None:
                    body = _body_length(frame)
                    exe = statements.data_row(body + _HEADER_BYTES)
                    if message_level:
                        self._row_record(frame, exe, out)
                continue
            if minimal and tag not in _CONNECTION_LEVEL_BACKEND:
                if tag == _READY_FOR_QUERY and frame[1] is not None:
                    self._ready_for_query(chr(frame[1][frame[2]]))
                continue
            if tag == _COPY_DATA and message_level and statements is not None and self._copy_capped(statements):
                statements.count_results(0, 0, 1, _body_length(frame))
                continue
            self._on_backend(frame, now, out)
        return out

    def _backend_query_detail(
        self, frames: list[Frame], statements: StatementTracker, now: float, out: list[Record], followed: bool
    ) -> list[Record]:
        """The query-detail hot loop: DataRows and CopyData are counted in runs, not one by one.

        Responses are strictly ordered, so a run of DataRows (or CopyData)
        belongs to whichever statement is current when the run ends; the run
        is flushed before any other message is looked at.
        """
        rows = row_bytes = copies = copy_bytes = 0
        ready = self.ready_at is not None
        encoding = self.conv.encoding
        for tag, buf, start, end in frames:
            if tag == _DATA_ROW:
                rows += 1
                row_bytes += (end - start if buf is not None else end) + _HEADER_BYTES
                continue
            if tag == _COPY_DATA:
                copies += 1
                copy_bytes += end - start if buf is not None else end
                continue
            if rows or copies:
                statements.count_results(rows, row_bytes, copies, copy_bytes)
                rows = row_bytes = copies = copy_bytes = 0
            if tag == _ROW_DESCRIPTION and buf is not None:
                # Query detail pairs the RowDescription with its request but never
                # decodes rows, so its columns need not be decoded either.
                statements.description_arrived(None, now)
                continue
            if tag == _PARAMETER_STATUS and followed and buf is not None:
                continue
            if ready and buf is not None and tag >= 0:
                # The responses of every statement, by their fields (see _request_by_fields):
                # an empty step completion, a ReadyForQuery's status byte.
                if tag in _STEP_COMPLETE and end == start:
                    statements.step_complete()
                    continue
                if tag == _READY_FOR_QUERY and end - start == 1:
                    status = _READY_STATUS[buf[start]]
                    if status is not None:
                        records = statements.ready(status, now)
                        if records:
                            out += records
                        continue
                self._backend_decoded(tag, buf, start, end, statements, encoding, now, out)
                continue
            self._on_backend((tag, buf, start, end), now, out)
        if rows or copies:
            statements.count_results(rows, row_bytes, copies, copy_bytes)
        return out

    def _backend_responses(self, data: bytes, statements: StatementTracker, now: float, tail: int) -> list[Record]:
        """:meth:`_backend_query_detail` for a ready session's chunk of whole responses, walked in place.

        The conversation checked the chunk (:meth:`~pgproxy.protocol.wire.Conversation.receive_whole`):
        whole messages, all of the kinds a statement's answer is made of
        (_WALKED_RESPONSES: no ParameterStatus, which the conversation follows,
        and no CopyData). Each is handled as the framed loop handles it, without a
        frame tuple per message, their list and the wire layer's pass over it.
        tests/test_tracker_parity.py holds it to the framed way.
        """
        out: list[Record] = []
        rows = row_bytes = 0
        encoding = self.conv.encoding
        by_index = _COMPILED
        pos: i64 = 0
        n: i64 = len(data)
        if not by_index:  # the pure build's memo (the compiled build asks no more of it than this)
            memo = self._memo
            if memo is not None and memo.head_end:  # the chunk starts as the last one did (AnswerMemo.head)
                pos = memo.head_end
                for _ in range(memo.head_steps):
                    statements.step_complete()
                statements.description_arrived(None, now)
        # An idle ReadyForQuery (_IDLE_TAIL at ``tail``) where the walk reaches it, in the pure build after
        # the CommandComplete seen last when the chunk ends so (_AnswerMemo): handled without reading them.
        while pos < n:
            if pos == tail:
                if rows:
                    statements.count_results(rows, row_bytes, 0, 0)
                    rows = 0
                if not by_index and n - tail != _IDLE_TAIL_BYTES:  # after _AnswerMemo.done_message's
                    memo = self._memo
                    if memo is not None and memo.done_message is not None:
                        records = statements.command_complete(memo.done_message, now)
                        if records:
                            out += records
                records = statements.ready("I", now)
                if records:
                    out += records
                break
            tag: i64 = data[pos]
            if by_index:  # native integers, each byte before its shift (see Framer.feed_whole)
                b1: i64 = data[pos + 1]
                b2: i64 = data[pos + 2]
                b3: i64 = data[pos + 3]
                b4: i64 = data[pos + 4]
                length: i64 = b1 << 24 | b2 << 16 | b3 << 8 | b4
            else:
                length = _LENGTH(data, pos + 1)[0]
            start: i64 = pos + _HEADER_BYTES
            pos += 1 + length
            if tag == _DATA_ROW:
                rows += 1
                row_bytes += length + 1  # the body and the header
                continue
            if rows:
                statements.count_results(rows, row_bytes, 0, 0)
                rows = row_bytes = 0
            if tag == _ROW_DESCRIPTION:
                statements.description_arrived(None, now)  # see _backend_query_detail
                if not by_index and start <= _LEARNT_HEAD_STARTS:
                    self._learn_head(data, start, pos)
                continue
            if pos == start and _PARSE_COMPLETE <= tag <= _CLOSE_COMPLETE:  # _STEP_COMPLETE, no boxed int
                statements.step_complete()
                continue
            if tag == _READY_FOR_QUERY and pos - start == 1:
                status = _READY_STATUS[data[start]]
                if status is not None:
                    records = statements.ready(status, now)
                    if records:
                        out += records
                    continue
            elif tag == _COMMAND_COMPLETE:
                completed = known_command_complete(data, start, pos)
                if completed is not None:
                    if not by_index and pos == tail and n - tail == _IDLE_TAIL_BYTES:
                        self._learn_end(data, start, completed)
                    records = statements.command_complete(completed, now)
                    if records:
                        out += records
                    continue
            self._backend_decoded(tag, data, start, pos, statements, encoding, now, out)
        if rows:
            statements.count_results(rows, row_bytes, 0, 0)
        return out

    def _learn_head(self, data: bytes, start: int, end: int) -> None:
        """The pure build's walk met a RowDescription near the chunk's start (body at ``start``, ending at ``end``).

        When all before it is step completions (a driver's ParseComplete and
        BindComplete), the next answer likely starts the same (_AnswerMemo.head).
        A method of its own: the compiled walk, which never calls it, stays smaller.
        """
        memo = self._memo
        learnt = _STEP_RUNS.get(data[: start - _HEADER_BYTES])
        if memo is not None and learnt is not None:
            memo.head = data[:end]
            memo.head_steps = learnt

    def _learn_end(self, data: bytes, start: int, completed: m.CommandComplete) -> None:
        """The pure build's walk met ``completed``'s CommandComplete (body at ``start``) just before the idle end.

        Not before the remembered CommandComplete that ends the chunk: the caller
        asks that the chunk end in _IDLE_TAIL right after it. The next answer
        likely ends the same (_AnswerMemo.done_tail).
        """
        memo = self._memo
        if memo is not None and completed is not memo.done_message:
            memo.done_tail = data[start - _HEADER_BYTES :]
            memo.done_message = completed

    def _backend_decoded(
        self,
        tag: int,
        buf: bytes,
        start: int,
        end: int,
        statements: StatementTracker,
        encoding: str,
        now: float,
        out: list[Record],
    ) -> None:
        """A response of a ready session the query-detail loops do not read by its fields: decoded, then handled."""
        msg = decode_tagged(False, tag, buf, start, end, encoding)
        kind = type(msg)
        if kind not in _BACKEND_NOTABLE_WHEN_READY:
            handler = BACKEND_HANDLERS.get(kind)
            if handler is not None:
                records = handler(statements, msg, now)
                if records:
                    out += records
            return
        self._on_backend((tag, buf, start, end), now, out, msg)

    def _frontend_message_detail(
        self, frames: list[Frame], statements: StatementTracker, events: MessageEvents, now: float, out: list[Record]
    ) -> list[Record]:
        """The message-detail loop for requests of a ready session: per message, its statement records, then its event.

        What :meth:`_on_frontend` does for these messages, without its
        questions about start-up, pseudo frames and detail level per message
        (about 1 µs of the ~5 µs a message event cost, measured with pgbench
        -M prepared traffic in a single-process benchmark). Messages the
        session reacts to (Terminate, anomalies), pseudo frames, passwords and
        CopyData take the general path. A message with the bytes of one seen
        before is neither decoded nor described: its kept event and message
        are taken (:meth:`MessageEvents.known`; a pgbench -M extended statement's
        tracker and sink 366k -> 258k instructions pure, 167k -> 100k compiled).
        """
        encoding = self.conv.encoding
        handlers = FRONTEND_HANDLERS
        known = events.known(True, encoding)
        shortcuts = events.shortcuts
        for frame in frames:
            tag, buf, start, end = frame
            if buf is None or tag < 0 or tag in (_PASSWORD_FAMILY, _COPY_DATA):
                self._on_frontend(frame, now, out)
                continue
            if tag == _BIND and shortcuts:
                # Read by its fields, as query detail reads it (a body that does not read: decoded below,
                # as the general way does), and its event made of them (MessageEvents.bind)
                try:
                    bound = read_bind(buf, start, end, encoding)
                except UNREADABLE_BODY:
                    pass
                else:
                    statements.bind(bound[0], bound[1], bound[2], bound[3], bound[4], now)
                    if statements.outbox:
                        out += statements.take_released()
                    out.append(events.bind(bound, tag, buf, start, end, statements))
                    continue
            key: bytes | None = None
            if tag in KNOWN_FRONTEND_TAGS and end - start <= KNOWN_BODY_BYTES:
                # The same bytes as a message seen before: its event and message (MessageEvents.known)
                key = buf[start - _HEADER_BYTES : end]
                found = known.get(key)
                if found is not None:
                    record, msg = found
                    handler = handlers.get(type(msg))
                    if handler is not None:
                        handler(statements, msg, now)
                        if statements.outbox:
                            out += statements.take_released()
                    out.append(record)
                    continue
            msg = decode_tagged(True, tag, buf, start, end, encoding)
            kind = type(msg)
            if kind in _FRONTEND_NOTABLE:
                self._on_frontend(frame, now, out, msg)
                continue
            handler = handlers.get(kind)
            if handler is not None:
                handler(statements, msg, now)
                if statements.outbox:
                    out += statements.take_released()
            record = events.message(msg, frame, True, statements)
            out.append(events.keep(known, key, msg, record, True) if key is not None else record)
        return out

    def _portal_statement_events(
        self, data: bytes, statements: StatementTracker, events: MessageEvents, now: float | None
    ) -> list[Record] | None:
        """Message detail's way with a Bind, or a Parse and a Bind, before libpq's Describe, Execute and Sync.

        What :meth:`_frontend_message_detail` does with the chunk's frames,
        without framing it: the framer checks the first one or two messages
        as query detail's way does (Framer.feed_bind), and the three
        at the end (_PORTAL_TAIL) take their kept events and messages
        (MessageEvents.known) straight, as the loop would find them by their
        bytes. None, with nothing done, when they are not kept yet (the
        session's first such statement) or the chunk is not so: the general
        way takes it. (pgbench -M prepared at message detail, tracker and
        sink, pure: 248k -> 233k instructions a statement, callgrind.)
        """
        conv = self.conv
        if not events.shortcuts:
            return None
        known = events.known(True, conv.encoding)
        describe = known.get(_DESCRIBE_PORTAL)
        execute = known.get(_EXECUTE_PORTAL)
        sync = known.get(_SYNC_MESSAGE)
        if describe is None or execute is None or sync is None:
            return None
        tail = len(data) - len(_PORTAL_TAIL)
        bind_at = conv.frontend.feed_bind(data, tail)
        if bind_at < 0:
            return None
        self.messages_from_client += (2 if bind_at else 1) + _PORTAL_TAIL_MESSAGES
        now = self.clock() if now is None else now
        frames: list[Frame] = [(_BIND, data, bind_at + _HEADER_BYTES, tail)]
        if bind_at:
            frames.insert(0, (_PARSE, data, _HEADER_BYTES, bind_at))
        out = self._frontend_message_detail(frames, statements, events, now, [])
        # The tail's three as query detail hands them to the statement tracker (portal_tail), each
        # message's kept event placed after what its request released
        statements.portal_tail(now, describe[0], execute[0], sync[0])
        out += statements.take_released()
        return out

    def _backend_message_detail(
        self, frames: list[Frame], statements: StatementTracker, events: MessageEvents, now: float, out: list[Record]
    ) -> list[Record]:
        """The message-detail loop for responses of a ready session: per message, its event, then its statement records.

        What :meth:`_on_backend` does for these messages, without its
        start-up questions per message; DataRows go straight to their event.
        ParameterStatus and anomalies take the general path (and a changed
        encoding is read again after them); so do pseudo frames and CopyData.
        Messages seen before take their kept events, as in :meth:`_frontend_message_detail`.
        """
        encoding = self.conv.encoding
        handlers = BACKEND_HANDLERS
        known = events.known(False, encoding)
        for frame in frames:
            tag, buf, start, end = frame
            if tag == _DATA_ROW:
                exe = statements.data_row((end - start if buf is not None else end) + _HEADER_BYTES)
                failures = events.row(frame, exe, statements, out)
                if failures:  # set on the instance only when there is one (see the class attributes)
                    self.anomalies += failures
                continue
            if buf is None or tag < 0 or tag == _COPY_DATA:
                if tag == _COPY_DATA and self._copy_capped(statements):
                    statements.count_results(0, 0, 1, _body_length(frame))
                else:
                    self._on_backend(frame, now, out)
                continue
            key: bytes | None = None
            if tag in KNOWN_BACKEND_TAGS and end - start <= KNOWN_BODY_BYTES:
                # The same bytes as a message seen before: its event and message (MessageEvents.known)
                key = buf[start - _HEADER_BYTES : end]
                found = known.get(key)
                if found is not None:
                    record, msg = found
                    handler = handlers.get(type(msg))
                    records = handler(statements, msg, now) if handler is not None else None
                    out.append(record)
                    if records:
                        out += records
                    continue
            if tag == _ROW_DESCRIPTION:
                msg = self._row_description(buf, start, end, encoding)
            else:
                msg = decode_tagged(False, tag, buf, start, end, encoding)
            kind = type(msg)
            if kind in _BACKEND_NOTABLE_WHEN_READY:
                self._on_backend(frame, now, out, msg)
                encoding = self.conv.encoding
                known = events.known(False, encoding)
                continue
            handler = handlers.get(kind)
            records = handler(statements, msg, now) if handler is not None else None
            record = events.message(msg, frame, False, statements)
            out.append(events.keep(known, key, msg, record, False) if key is not None else record)
            if records:
                out += records
        return out

    def _backend_events(
        self, data: bytes, statements: StatementTracker, events: MessageEvents, now: float | None
    ) -> list[Record] | None:
        """:meth:`_backend_message_detail` for a ready session's chunk of whole responses, walked in place.

        The conversation checks the chunk (:meth:`~pgproxy.protocol.wire.Conversation.receive_whole_from`):
        whole messages, each a DataRow or of a kind whose event may be kept
        (_MESSAGE_WALKED_RESPONSES: no ParameterStatus, which the conversation
        follows, no ErrorResponse, NoticeResponse or CopyData); otherwise None
        is returned, nothing has changed, and the framed loop takes the chunk.
        Each message is handled as that loop handles it, without the framer's
        pass, a frame tuple per message and their list. A run of kept responses
        the last answers started or ended with (MessageEvents.answer_head and
        answer_tail: a driver's BindComplete and RowDescription, CommandComplete
        and ReadyForQuery) is found by one ``startswith`` or ``endswith`` and its
        kept events and messages taken in order, neither checked nor looked up
        one by one. Taken only with the events' shortcuts:
        tests/test_message_events.py holds it to a session building every event
        from frames.
        """
        conv = self.conv
        encoding = conv.encoding
        known = events.known(False, encoding)  # (a changed encoding forgets the runs too)
        head = events.answer_head
        head_end: i64 = len(head) if head and data.startswith(head) else 0
        head_run = events.answer_head_run if head_end else ()
        tail = events.answer_tail
        n: i64 = len(data)
        tail_at: i64 = n - len(tail) if tail and data.endswith(tail) else -1
        tail_run = events.answer_tail_run if tail_at >= 0 else ()
        count = conv.receive_whole_from(
            data, _MESSAGE_WALKED_RESPONSES, head_end, len(head_run), tail_at, len(tail_run)
        )
        if not count:
            return None
        self.messages_from_server += count
        now = self.clock() if now is None else now
        out: list[Record] = []
        for record, msg, handler in head_run:
            records = handler(statements, msg, now) if handler is not None else None
            out.append(record)
            if records:
                out += records
        handlers = BACKEND_HANDLERS
        by_index = _COMPILED
        # Learning how this answer starts and ends when the remembered runs were not found: the
        # kept responses since run_start, in order, and the head's run while it still starts the chunk.
        learning = not head_end or tail_at < 0
        head_open = not head_end
        tail_taken = False
        run: list[tuple[Record, m.Message, Any]] = []
        run_start: i64 = head_end
        learnt_head = b""
        learnt_head_run: KnownRun = ()
        pos: i64 = head_end
        while pos < n:
            if pos == tail_at:
                for record, msg, handler in tail_run:
                    records = handler(statements, msg, now) if handler is not None else None
                    out.append(record)
                    if records:
                        out += records
                tail_taken = True
                break
            tag: i64 = data[pos]
            if by_index:  # native integers, each byte before its shift (see Framer.feed_whole)
                b1: i64 = data[pos + 1]
                b2: i64 = data[pos + 2]
                b3: i64 = data[pos + 3]
                b4: i64 = data[pos + 4]
                length: i64 = b1 << 24 | b2 << 16 | b3 << 8 | b4
            else:
                length = _LENGTH(data, pos + 1)[0]
            start: i64 = pos + _HEADER_BYTES
            end: i64 = pos + 1 + length
            if tag == _DATA_ROW:
                exe = statements.data_row(length + 1)
                failures = events.row((tag, data, start, end), exe, statements, out)
                if failures:  # set on the instance only when there is one (see the class attributes)
                    self.anomalies += failures
            else:
                key: bytes | None = None
                if end - start <= KNOWN_BODY_BYTES:  # every other kind walked is one kept by its bytes
                    key = data[pos:end]
                    found = known.get(key)
                    if found is not None:
                        record, msg = found
                        handler = handlers.get(type(msg))
                        records = handler(statements, msg, now) if handler is not None else None
                        out.append(record)
                        if records:
                            out += records
                        if learning:
                            run.append((record, msg, handler))
                        pos = end
                        continue
                if tag == _ROW_DESCRIPTION:
                    msg = self._row_description(data, start, end, encoding)
                else:
                    msg = decode_tagged(False, tag, data, start, end, encoding)
                kind = type(msg)
                frame: Frame = (tag, data, start, end)
                if kind in _BACKEND_NOTABLE_WHEN_READY:
                    self._on_backend(frame, now, out, msg)
                    encoding = self.conv.encoding
                    known = events.known(False, encoding)
                    learning = False  # (what was learnt may be another encoding's)
                else:
                    handler = handlers.get(kind)
                    records = handler(statements, msg, now) if handler is not None else None
                    record = events.message(msg, frame, False, statements)
                    kept = events.keep(known, key, msg, record, False) if key is not None else record
                    out.append(kept)
                    if records:
                        out += records
                    if kept is not record:  # kept from now on: part of a run
                        if learning:
                            run.append((kept, msg, handler))
                        pos = end
                        continue
            # Neither found nor kept: the run so far ends here (the answer's head, if it started it).
            if learning:
                if head_open:
                    learnt_head, learnt_head_run = data[:pos], tuple(run)
                    head_open = False
                run = []
                run_start = end
            pos = end
        if learning:
            if head_open:  # every response kept: the head is all of them
                learnt_head, learnt_head_run = data, (*run, *tail_run) if tail_taken else tuple(run)
            if tail_taken or run_start >= n:
                events.remember_answer(learnt_head, learnt_head_run, b"", ())
            else:
                events.remember_answer(learnt_head, learnt_head_run, data[run_start:], tuple(run))
        return out

    def _row_description(self, buf: bytes, start: int, end: int, encoding: str) -> m.Message:
        """A RowDescription decoded once per session, encoding and shape (message detail).

        A statement executed again and again is described by the same bytes
        each time; decoding them cost ~3 µs of a W2-prepared transaction's
        message-detail work. Messages are frozen, so the decoded one is shared.
        At most :data:`_DESCRIPTIONS_KEPT` are kept (then the cache starts
        over), none larger than :data:`_DESCRIPTION_KEPT_BYTES`.
        """
        if end - start > _DESCRIPTION_KEPT_BYTES:
            return decode_tagged(False, _ROW_DESCRIPTION, buf, start, end, encoding)
        cache = self._descriptions
        if cache is None or self._descriptions_encoding != encoding:
            cache = self._descriptions = {}
            self._descriptions_encoding = encoding
        key = buf[start:end]
        msg = cache.get(key)
        if msg is None:
            msg = decode_tagged(False, _ROW_DESCRIPTION, buf, start, end, encoding)
            if len(cache) >= _DESCRIPTIONS_KEPT:
                cache.clear()
            cache[key] = msg
        return msg

    def _count_known_requests(self, data: bytes, framer: Framer) -> bool:
        """The pure build's count of an extended-protocol request as libpq sends it: True if counted, or nothing changed.

        A Bind, or a Parse and a Bind, or any whole requests, before libpq's
        Describe, Execute and Sync (pgbench -M prepared and extended; the tail
        by one ``endswith``): one or two header reads (Framer.feed_bind), or a
        walk that stops before the tail, instead of a loop turn per message in
        Framer.count_tags (~2k instructions each under the interpreter). The
        compiled build's walk is native and takes every chunk.
        """
        if not data.endswith(_PORTAL_TAIL):
            return False
        tail = len(data) - len(_PORTAL_TAIL)
        bind_at = framer.feed_bind(data, tail)
        if bind_at >= 0:
            count = 2 if bind_at else 1
        else:
            count = framer.count_tags(data, _COUNTED_REQUESTS, tail)
            if count < 0:
                return False
            self._ready_due += framer.marks
        self.messages_from_client += count + _PORTAL_TAIL_MESSAGES
        self._ready_due += 1  # the tail's Sync
        self._unsynced = False
        return True

    def _count_known_responses(self, data: bytes, framer: Framer, memo: _AnswerMemo) -> bool:
        """The pure build's count of an answer that ends idle: True if counted, or nothing changed.

        The idle ReadyForQuery ending the chunk, and the CommandComplete before
        it when it is the one that ended the last such answer (pgbench -S: every
        one, "SELECT 1"; ``memo.done_tail``), are taken by one ``endswith``
        instead of a loop turn each in Framer.count_tags (~2k instructions a
        message under the interpreter). A remembered tail is whole messages by
        its own lengths: an answer whose walk lands on it ends in them.
        """
        done_tail = memo.done_tail
        if done_tail is not _NO_TAIL and data.endswith(done_tail):  # (a chunk may end in a stray 0 byte)
            run = 2
            count = framer.count_tags(data, _COUNTED_RESPONSES, len(data) - len(done_tail))
        elif data.endswith(_IDLE_TAIL):
            run = 1
            count = framer.count_tags(data, _COUNTED_RESPONSES, len(data) - _IDLE_TAIL_BYTES)
            if count > 0 and data[framer.last] == _COMMAND_COMPLETE:  # it ends the idle tail's run
                memo.done_tail = data[framer.last :]
        else:
            return False
        if count < 0:
            return False
        self.messages_from_server += count + run
        ready = framer.marks + 1  # and the idle one ends the chunk
        self._status = _IDLE
        due = self._ready_due
        if due:
            self._ready_due = due - ready if due > ready else 0
        return True

    def _count_requests(self, tags: bytearray | list[int]) -> None:
        """Connection detail, once ready: only Terminate and what makes the session busy matter; nothing is decoded.

        ``tags`` are the requests' tags (pseudo tags included), of the frames the
        framer gave (a chunk :meth:`~pgproxy.protocol.framing.Framer.count_tags` declined); the
        caller has counted the messages.
        """
        for tag in tags:
            if tag in _ANSWERED_BY_READY:
                self._ready_due += 1
                self._unsynced = False
            elif tag in _UNSYNCED_STEPS:
                self._unsynced = True
            elif tag == _TERMINATE:
                self.terminated = True

    def _count_responses(self, frames: list[Frame], now: float | None, followed: bool) -> list[Record]:
        """Connection detail, once ready: ReadyForQuery's status byte, and errors and parameter changes.

        Everything else is counted, not decoded. The same as the general
        loop of :meth:`backend` at this detail, without its questions that
        only start-up, query or message detail need.
        """
        out: list[Record] = []
        if not frames:
            return out
        self.messages_from_server += len(frames)
        for frame in frames:
            tag = frame[0]
            if tag == _READY_FOR_QUERY:
                buf = frame[1]
                if buf is not None:
                    self._status = chr(buf[frame[2]])
                    if self._ready_due:
                        self._ready_due -= 1
            elif tag in _CONNECTION_LEVEL_BACKEND and not (
                tag == _PARAMETER_STATUS and followed and frame[1] is not None
            ):
                self._on_backend(frame, self.clock() if now is None else now, out)
        return out

    def _follow_counting(self) -> None:
        """Connection detail once ready, without a replication stream: :meth:`_count_requests` and :meth:`_count_responses`."""
        self._counting = self.statements is None and self.ready_at is not None and self.replication is None

    def _ready_for_query(self, status: str) -> None:
        """Connection detail: a ReadyForQuery answered one request (its status byte is all we read)."""
        self._status = status
        if self._ready_due:
            self._ready_due -= 1

    # ------------------------------------------------------------------ narrow questions (for the proxy)

    @property
    def cancel_key(self) -> bytes | None:
        """The session's cancellation secret (BackendKeyData), for a CancelRequest pgproxy sends itself; never logged."""
        return self.conv.backend_key

    @property
    def backend_pid(self) -> int | None:
        """The server process serving this session (from BackendKeyData), if it said."""
        return self.conv.backend_pid

    @property
    def in_transaction(self) -> bool:
        """The last ReadyForQuery said a transaction block is open (``T``) or failed (``E``)."""
        status = self.statements.status if self.statements is not None else self._status
        return status in _IN_TRANSACTION

    @property
    def request_outstanding(self) -> bool:
        """A request went to the server and the ReadyForQuery ending it has not come back.

        Extended-protocol steps sent without a Sync (Parse/Bind/Execute and
        Flush) count as outstanding. False before the session is ready and
        once decoding stopped (encrypted or desynchronized): nothing known.
        """
        if self.ready_at is None or not self.conv.decoding:
            return False
        if self.statements is not None:
            return self.statements.awaiting
        return self._ready_due > 0 or self._unsynced

    @property
    def between_messages(self) -> bool:
        """Neither direction is in the middle of a message, so a whole one may be added to either.

        False once decoding stopped (encrypted, desynchronized): the boundaries are unknown then.
        """
        conv = self.conv
        if not conv.decoding:
            return False
        return not (conv.frontend.buffered or conv.frontend.skipping or conv.backend.buffered or conv.backend.skipping)

    @property
    def busy(self) -> bool:
        """Closing the session now would cut something short.

        True while logging in (before the first ReadyForQuery), while a request
        is outstanding, while a transaction is open, and when decoding stopped
        (encrypted or desynchronized sessions cannot be shown to be idle).
        Correct at every detail level: connection detail reads only the
        ReadyForQuery status byte and the tags of requests.
        """
        if self.ready_at is None or not self.conv.decoding:
            return True
        return self.request_outstanding or self.in_transaction

    @property
    def ready(self) -> bool:
        """The first ReadyForQuery has been seen: start-up and authentication are complete."""
        return self.ready_at is not None

    def reconfigure(self, options: TrackerOptions) -> bool:
        """Adopt new options (a configuration reload) now if the session is at a quiet point.

        Quiet means ready, decoding, and no request outstanding, so no
        statement is half-tracked under the old rules. Returns False when not
        quiet; the caller asks again after the next response.

        Going from connection detail to query detail or above starts the
        statement tracker here: statements prepared before are unknown to it,
        so their later executions are logged without SQL text (never guessed).
        Going down to connection detail drops it, keeping the transaction status.
        """
        if self.ready_at is None or not self.conv.decoding or self.request_outstanding:
            return False
        self.options = options
        self.detail = options.detail
        self._message_level = self.detail >= Detail.MESSAGE
        if self._memo is not None:
            # Connection detail's count learns only the bytes of how an answer ended; query detail's
            # walk, taking them, handles the CommandComplete it remembers with them: a new memo.
            self._memo = _AnswerMemo()
        self._events = MessageEvents(self.session_id, options) if self._message_level else None
        statements = self.statements
        if self.detail < Detail.QUERY:
            if statements is not None:
                self._status = statements.status
                self._ready_due, self._unsynced = 0, False
                self.statements = None
            self._follow_counting()
            return True
        if statements is None:
            statements = self.statements = StatementTracker(options, self.context)
            self._counting = False
            statements.status = self._status
            statements.transaction_status = TRANSACTION_STATUS.get(self._status or "", self._status)
        statements.options = options
        # Caps and redaction may have changed: decoders are rebuilt with the new ones.
        statements.set_value_context(
            _value_context(self.conv.encoding, self.conv.parameters.get("TimeZone", "UTC"), options.max_value_chars)
        )
        ctx = self.context
        statements.in_scope = options.query_filter.in_scope(
            ctx.get("user"), ctx.get("db.namespace"), ctx.get("application_name")
        )
        return True

    def startup_wait(self) -> StartupWait | None:
        """Who the unfinished start-up waits for, so a timeout can blame the right side.

        Returns:
            ``None`` once the session is ready, and whenever the tracker cannot
            tell (encrypted, desynchronised, cancel connection, failed start-up).
        """
        conv = self.conv
        phase = conv.phase
        if self.ready_at is not None:
            return None
        at_boundary = conv.backend.buffered == 0
        if phase is Phase.STARTUP:
            return StartupWait(Side.CLIENT, "the startup packet", conv.frontend.buffered == 0 and at_boundary)
        if phase is Phase.NEGOTIATING:
            return StartupWait(Side.SERVER, "the encryption request (SSLRequest/GSSENCRequest)", False)
        if phase is not Phase.AUTHENTICATING:
            return None
        auth = conv.auth_state
        if self._server_spoke_last and auth is not None:
            return StartupWait(Side.CLIENT, _AUTH_REPLY.get(auth, "the authentication response"), at_boundary)
        if not self._server_answered_startup:
            awaiting = "the startup packet"
        elif auth is not None:
            awaiting = "the authentication response"
        else:
            awaiting = "the end of start-up (ReadyForQuery)"
        return StartupWait(Side.SERVER, awaiting, at_boundary)

    def anomaly(self, kind: str, reason: str, **fields: Any) -> Record:
        """A record for something that went wrong with decoding (not with the session)."""
        self.anomalies += 1
        return Record(
            SESSION_ANOMALY, "warning", {"session": self.session_id, "kind": kind, "reason": reason, **fields}
        )

    def closed(self, reason: str, now: float | None = None, fields: dict[str, Any] | None = None) -> list[Record]:
        """The session ended; statements under way are reported, then ``session.ended``.

        ``fields`` (the proxy's byte counts and the like) are added to
        ``session.ended`` last. A dict, not keyword arguments: compiled, a call
        with ``**`` takes the generic entry point, its keywords parsed into a
        new dict (~1.5k instructions a connection, callgrind).
        """
        if self._ended:
            return []
        self._ended = True
        now = self.clock() if now is None else now
        out: list[Record] = []
        if self.replication is not None:
            out += self.replication.closed(now)
        if self.statements is not None:
            out += self.statements.interrupted(now)
        if self.terminated and reason in _ENDED_BY_TERMINATE:
            # The client said goodbye; which side's EOF the proxy saw first
            # (the server closes as soon as it reads Terminate) is a race.
            reason = "client_terminated"
        statements = self.statements
        context = self.context
        status = self._status
        layout: dict[str, Any] | None = None
        if (
            len(context) == _FULL_CONTEXT
            and fields is not None
            and len(fields) == 2
            and "bytes_from_client" in fields
            and "bytes_from_server" in fields
            and not (self.encrypted or self.anomalies)
        ):
            if statements is not None:
                if not (statements.unlogged or statements.untracked):
                    layout = _ENDED_LAYOUT
            elif status is not None:
                layout = _ENDED_LAYOUT_COUNTING
        facts: _StartupFacts | None = None
        if layout is not None:
            facts = _known_facts(self.conv.startup)
            if facts is None:  # forgotten meanwhile (64 other start-ups): the general way
                layout = None
        if layout is not None and fields is not None and facts is not None:
            # The usual end (the proxy's two byte counts, nothing unusual to say): the general way's
            # fields, in its order, as a copy of their layout filled in but for the session's own
            # (see _StartupFacts.ended_layout). A full context's user, database and application are
            # the StartupMessage's (_started promoted them). tests/test_session_events.py holds the two together.
            address = context["client.address"]
            own = facts.ended_layout
            if own is None or facts.ended_base is not layout or facts.ended_address != address:
                own = facts.ended_layout = _ended_layout(facts, layout, address)
                facts.ended_base = layout
                facts.ended_address = address
            layout = own
            end = own.copy()
            end["session"] = self.session_id
            end["reason"] = reason
            end["duration_ms"] = round_ms((now - self.started_at) * 1000.0)
            end["bytes_from_client"] = fields["bytes_from_client"]
            end["bytes_from_server"] = fields["bytes_from_server"]
            end["messages_from_client"] = self.messages_from_client
            end["messages_from_server"] = self.messages_from_server
            end["backend_pid"] = context["backend_pid"]
            end["client.port"] = context["client.port"]
            if statements is not None:
                end["statements"] = statements.executed
                end["transaction_status"] = statements.transaction_status
            elif status is not None:
                end["transaction_status"] = TRANSACTION_STATUS.get(status, status)
        else:
            end = self._ended_fields(reason, now, fields)
        # The server hanging up on a session that had started is worth a warning;
        # after a refused login it is the expected end.
        unexpected = reason in ("server_closed", "server_error") and not self.auth_failed
        out.append(Record(SESSION_ENDED, "warning" if unexpected else "info", end, layout=layout))
        return out

    def _ended_fields(self, reason: str, now: float, fields: dict[str, Any] | None) -> dict[str, Any]:
        """``session.ended``'s fields, the general way."""
        end: dict[str, Any] = {
            "session": self.session_id,
            "reason": reason,
            "duration_ms": round_ms((now - self.started_at) * 1000.0),
            "bytes_from_client": self.bytes_from_client,
            "bytes_from_server": self.bytes_from_server,
            "messages_from_client": self.messages_from_client,
            "messages_from_server": self.messages_from_server,
        }
        context = self.context
        for key in _ENDED_CONTEXT:
            if key in context:
                end[key] = context[key]
        if self.statements is not None:
            end["statements"] = self.statements.executed
            end["transaction_status"] = self.statements.transaction_status
            # Beyond the pending bound statements were counted, not logged.
            if self.statements.unlogged:
                end["unlogged_statements"] = self.statements.unlogged
            if self.statements.untracked:
                end["unanswered_requests"] = self.statements.untracked
        elif self._status is not None:
            end["transaction_status"] = TRANSACTION_STATUS.get(self._status, self._status)
        if self.encrypted:
            end["encrypted"] = self.encrypted
        if self.anomalies:
            end["anomalies"] = self.anomalies
        if fields:
            end.update(fields)
        return end

    # ------------------------------------------------------------------ frontend

    def _copy_capped(self, statements: StatementTracker) -> bool:
        """COPY data beyond the per-result cap is counted, not decoded or logged (as DataRows are).

        A replication stream's CopyData are summarised (``replication.streamed``)
        and logged one by one only at wire detail.
        """
        if self.replication is not None and self.replication.streaming and self.detail < Detail.WIRE:
            return True
        exe = statements.current_execution()
        return exe is not None and exe.copy_messages >= self.options.max_rows_per_result

    def _on_frontend(self, frame: Frame, now: float, out: list[Record], msg: m.Message | None = None) -> None:
        tag = frame[0]
        statements = self.statements
        if tag == _COPY_DATA and (
            not self._message_level or (statements is not None and self._copy_capped(statements))
        ):
            # Counted, not decoded: below message detail, or beyond the per-result cap.
            if statements is not None:
                statements.count_results(0, 0, 1, _body_length(frame))
            return
        if msg is None:  # else decoded already by the caller's hot loop
            conv = self.conv
            buf = frame[1]
            if tag >= 0 and buf is not None:  # the common case, without the generic decode() dispatch
                msg = decode_tagged(True, tag, buf, frame[2], frame[3], conv.encoding, conv.auth_state)
            else:  # the StartupMessage the conversation decoded to follow its state, or any other packet
                msg = conv.decoded_frontend(frame) or conv.decode_frontend(frame)
        kind = type(msg)
        if kind is m.CopyData:
            if statements is not None:
                statements.count_results(0, 0, 1, len(msg.data))  # type: ignore[attr-defined]
        elif statements is not None:
            out += statements.frontend(msg, now)
        if self._message_level:
            out.append(self._message_record(msg, frame, True))
        if kind not in _FRONTEND_NOTABLE and tag != TLS_RECORD:
            return
        if isinstance(msg, m.StartupMessage):
            out.append(self._started(msg))
        elif isinstance(msg, m.Terminate):
            self.terminated = True
        elif isinstance(msg, m.EncryptionStarted) or tag == TLS_RECORD:
            self.encrypted = "direct_tls"
            out.append(Record(SESSION_ENCRYPTED, "info", {"session": self.session_id, "method": "direct_tls"}))
        elif isinstance(msg, m.Desynchronized):
            out.append(self._desynchronized(msg))
        elif isinstance(msg, m.Malformed | m.Oversized):
            out.append(self._odd_message(msg, "frontend"))

    def _started(self, msg: m.StartupMessage) -> Record:
        facts = _known_facts(msg)
        if facts is None:
            facts = _startup_facts(msg)
        promoted = facts.promoted
        extra = facts.extra
        ctx = self.context
        client, server = self.client, self.server
        # Both addresses known and nothing promoted yet, all three promoted now: the context's keys
        # are the layout's, in its order (session and db.system.name, the addresses, the promoted).
        usual = client is not None and server is not None and len(ctx) == _OPENING_CONTEXT and len(promoted) == 3
        ctx.update(promoted)
        if facts.replication:
            self.replication = ReplicationStreams(ctx)
        if self.statements is not None:
            self.statements.context_changed()
            self.statements.in_scope = self.options.query_filter.in_scope(
                ctx.get("user"), ctx.get("db.namespace"), ctx.get("application_name")
            )
        if usual and client is not None and server is not None:
            # The general way's fields below, as a copy of their layout filled in but for the session's
            # own three (see _StartupFacts.started_layout).
            layout = facts.started_layout
            if layout is None or facts.started_server != server:
                layout = facts.started_layout = _started_layout(facts, server)
                facts.started_server = server
            fields = layout.copy()
            fields["session"] = self.session_id
            fields["client.address"], fields["client.port"] = client
            return Record(SESSION_STARTED, "info", fields, layout=layout)
        return Record(SESSION_STARTED, "info", _started_record_fields(ctx, facts.version, extra))

    # ------------------------------------------------------------------ backend

    def _on_backend(self, frame: Frame, now: float, out: list[Record], msg: m.Message | None = None) -> None:
        tag = frame[0]
        statements = self.statements
        if tag == _COPY_DATA and not self._message_level:
            if statements is not None:
                statements.count_results(0, 0, 1, _body_length(frame))
            return
        if msg is None:
            conv = self.conv
            msg = conv.decoded_backend(frame)  # start-up messages the conversation decoded to follow its state
            if msg is None:
                buf = frame[1]
                if tag >= 0 and buf is not None:
                    msg = decode_tagged(False, tag, buf, frame[2], frame[3], conv.encoding)
                else:
                    msg = conv.decode_backend(frame)
        kind = type(msg)
        records: list[Record] = []
        if statements is not None:
            if kind is m.CopyData:
                statements.count_results(0, 0, 1, len(msg.data))  # type: ignore[attr-defined]
            else:
                records = statements.backend(msg, now)
        if self._message_level:
            out.append(self._message_record(msg, frame, False))
        if kind not in _BACKEND_NOTABLE or (kind in _STARTUP_ONLY and self.ready_at is not None):
            if records:
                out += records
            return
        if isinstance(msg, m.ParameterStatus):
            self._parameter_status(msg)
        elif isinstance(msg, m.BackendKeyData):
            self.context["backend_pid"] = msg.process_id
            if statements is not None:
                statements.context_changed()
        elif isinstance(msg, m.NegotiateProtocolVersion):
            self.negotiated = msg
        elif isinstance(msg, m.ReadyForQuery) and self.ready_at is None:
            self._status = msg.status
            self.ready_at = now
            self._follow_counting()
            out.append(self._ready(now))
        elif isinstance(msg, m.ErrorResponse) and self.ready_at is None:
            self.auth_failed = True
            fields = {"session": self.session_id, **msg.named_fields()}
            for key in ("user", "db.namespace", "client.address"):
                if key in self.context:
                    fields[key] = self.context[key]
            # Class 28 is "invalid authorization specification"; anything else
            # (unknown database, too many clients, unreachable upstream) is not
            # an authentication failure and is not called one.
            event = SESSION_AUTH_FAILED if msg.sqlstate.startswith("28") else SESSION_STARTUP_FAILED
            out.append(Record(event, "warning", fields))
        elif isinstance(msg, m.SSLResponse | m.GSSENCResponse) and msg.answer in ("S", "G"):
            self.encrypted = "tls" if msg.answer == "S" else "gss"
            out.append(Record(SESSION_ENCRYPTED, "info", {"session": self.session_id, "method": self.encrypted}))
        elif isinstance(msg, m.Desynchronized):
            out.append(self._desynchronized(msg))
        elif isinstance(msg, m.Malformed | m.Oversized):
            out.append(self._odd_message(msg, "backend"))
        out += records

    def _login_answered(
        self, answer: LoginAnswer, statements: StatementTracker | None, now: float | None, fresh: bool = False
    ) -> list[Record]:
        """A login's whole answer the conversation knew (:meth:`~pgproxy.protocol.wire.Conversation.receive_login_answer`).

        What the general loop does with its messages below message detail,
        without a frame, a message object or a pass over them (about 30k
        instructions a pgbench -C connection, pure Python, callgrind):
        AuthenticationOk concerns nobody, the followed ParameterStatus only the
        value context, BackendKeyData names the backend, and ReadyForQuery
        makes the session ready (``session.ready``, then whatever the statement
        tracker releases). tests/test_tracker.py holds it to the general way.

        ``fresh``: the conversation had no parameters before this answer, so
        they are now the answer's, in its order, and ``session.ready`` gets the
        copy every session with this answer shares (see _answer_parameters).
        """
        self._server_spoke_last = True
        self._server_answered_startup = True
        self.messages_from_server += answer.messages
        now = self.clock() if now is None else now
        conv = self.conv
        if statements is not None and conv.value_settings_reported != self._value_settings_seen:
            self._value_settings_changed()
        self.context["backend_pid"] = conv.backend_pid
        status = answer.status
        records: list[Record] = []
        if statements is not None:
            statements.context_changed()
            records = statements.ready(status, now)
        self._status = status
        self.ready_at = now
        self._follow_counting()
        out = [self._ready(now, _answer_parameters(answer) if fresh else None)]
        if records:
            out += records
        return out

    def _parameter_status(self, msg: m.ParameterStatus) -> None:
        if msg.name in ("client_encoding", "TimeZone") and self.statements is not None:
            self._value_settings_changed()

    def _value_settings_changed(self) -> None:
        """client_encoding or TimeZone was reported: values decode by the conversation's settings now."""
        conv = self.conv
        self._value_settings_seen = conv.value_settings_reported
        if self.statements is not None:
            self.statements.set_value_context(
                _value_context(conv.encoding, conv.parameters.get("TimeZone", "UTC"), self.options.max_value_chars)
            )

    def _ready(self, now: float, parameters: dict[str, str] | None = None) -> Record:
        """``session.ready``; ``parameters``: the conversation's parameters as a shared copy, if there is one."""
        params = dict(self.conv.parameters) if parameters is None else parameters
        context = self.context
        startup = self.conv.startup
        if (
            len(context) == _FULL_CONTEXT
            and startup is not None
            and not self.tls
            and self.negotiated is None
            and "server_version" in params
        ):
            auth_method = self.conv.auth_method or "trust"
            facts = _known_facts(startup) if parameters is not None else None
            if facts is not None:
                # A known login answer's shared parameters, after this StartupMessage: the fields
                # but the session's own three are those of the last session like it (see
                # _StartupFacts.ready_layout). The context's user, database and application
                # are the message's (_started promoted them: a full context has nothing else).
                layout = facts.ready_layout
                if layout is None or facts.ready_parameters is not params or facts.ready_auth != auth_method:
                    layout = facts.ready_layout = _ready_layout(facts, params, auth_method)
                    facts.ready_parameters = params
                    facts.ready_auth = auth_method
                fields = layout.copy()
                fields["session"] = self.session_id
                fields["backend_pid"] = context["backend_pid"]
                fields["setup_ms"] = round_ms((now - self.started_at) * 1000.0)
                return Record(SESSION_READY, "info", fields, layout=layout)
            # The general way's fields below, as a copy of their layout (see _READY_LAYOUT): the
            # way of every message-detail session (its login answer walks the message loop, not
            # _login_answered), of a login answer's first session and of an answer split across reads.
            fields = _READY_LAYOUT.copy()
            fields["session"] = self.session_id
            fields["user"] = context["user"]
            fields["db.namespace"] = context["db.namespace"]
            fields["application_name"] = context["application_name"]
            fields["backend_pid"] = context["backend_pid"]
            fields["auth_method"] = auth_method
            fields["server_version"] = params["server_version"]
            fields["parameters"] = params
            fields["protocol_version"] = f"{startup.protocol_major}.{startup.protocol_minor}"
            fields["setup_ms"] = round_ms((now - self.started_at) * 1000.0)
            return Record(SESSION_READY, "info", fields, layout=_READY_LAYOUT)
        return Record(SESSION_READY, "info", self._ready_fields(now, params))

    def _ready_fields(self, now: float, params: dict[str, str]) -> dict[str, Any]:
        """``session.ready``'s fields, the general way."""
        context = self.context
        fields: dict[str, Any] = {"session": self.session_id}
        for key in ("user", "db.namespace", "application_name", "backend_pid"):
            if key in context:
                fields[key] = context[key]
        fields["auth_method"] = self.conv.auth_method or "trust"
        if "server_version" in params:
            fields["server_version"] = params["server_version"]
        fields["parameters"] = params
        if self.tls:
            fields["tls"] = dict(self.tls)
        startup = self.conv.startup
        if startup is not None:
            # The version in use: what the client asked for, or the newest
            # the server offered in NegotiateProtocolVersion ("Protocol versions").
            minor = startup.protocol_minor
            if self.negotiated is not None:
                minor = min(minor, self.negotiated.newest_minor)
                if self.negotiated.unrecognized_options:
                    fields["protocol_options_unsupported"] = list(self.negotiated.unrecognized_options)
            fields["protocol_version"] = f"{startup.protocol_major}.{minor}"
        fields["setup_ms"] = round_ms((now - self.started_at) * 1000.0)
        return fields

    def _desynchronized(self, msg: m.Desynchronized) -> Record:
        return self.anomaly(
            "desynchronized",
            msg.reason,
            stream=msg.stream,
            offset=msg.offset,
            excerpt=msg.excerpt.hex(),
            action="stopped decoding; bytes still forwarded unchanged",
        )

    def _odd_message(self, msg: m.Malformed | m.Oversized, direction: str) -> Record:
        if isinstance(msg, m.Oversized):
            return self.anomaly(
                "oversized", f"{msg.expected} of {msg.length} bytes exceeds max_frame", direction=direction
            )
        return self.anomaly("malformed", msg.reason, direction=direction, type=msg.expected, length=msg.length)

    # ------------------------------------------------------------------ message events

    def _row_record(self, frame: Frame, exe: Execution | None, out: list[Record]) -> None:
        events = self._events
        if events is not None:
            found = events.row(frame, exe, self.statements, out)
            if found:
                self.anomalies += found

    def _message_record(self, msg: m.Message, frame: Frame, frontend: bool) -> Record:
        events = self._events
        if events is None:  # a reconfigured session that was below message detail
            events = self._events = MessageEvents(self.session_id, self.options)
        return events.message(msg, frame, frontend, self.statements)


#: Value contexts by (encoding, time zone, max_value_chars): frozen, so sessions with the same settings share one.
_value_contexts: Final[dict[tuple[str, str, int | None], ValueContext]] = {}
#: The last two contexts _value_context returned, newest last: a session asks for the two the last one did.
_recent_value_contexts: Final[list[ValueContext]] = []
_VALUE_CONTEXTS_KEPT: Final = 64


def _started_record_fields(ctx: dict[str, Any], version: str, extra: dict[str, str]) -> dict[str, Any]:
    """``session.started``'s fields, the general way: the session's context (but db.system.name), version, parameters."""
    fields = {k: v for k, v in ctx.items() if k != "db.system.name"}
    fields["protocol_version"] = version
    if extra:
        fields["parameters"] = dict(extra)
    return fields


def _value_context(encoding: str, timezone: str, max_value_chars: int | None) -> ValueContext:
    """``ValueContext(encoding, timezone, max_value_chars)``, built once per distinct settings.

    A query-detail session builds two (its statement tracker's, then the one
    its login's client_encoding and TimeZone reports set); a frozen dataclass
    sets each field through ``object.__setattr__``, about 5k instructions a
    context compiled (callgrind), where a look-up costs a tuple and a hash.
    The last two returned are compared first, without the tuple: every
    session of an application asks for the two the last one did.
    """
    recent = _recent_value_contexts
    for context in recent:
        if context.encoding == encoding and context.timezone == timezone and context.max_value_chars == max_value_chars:
            return context
    key = (encoding, timezone, max_value_chars)
    found = _value_contexts.get(key)
    if found is None:
        found = ValueContext(encoding, timezone, max_value_chars)
        if len(_value_contexts) >= _VALUE_CONTEXTS_KEPT:
            _value_contexts.clear()
        _value_contexts[key] = found
    recent.append(found)
    if len(recent) > 2:
        del recent[0]
    return found


#: ``session.ready``'s parameters by known login answer's id (the answer kept with them).
_ready_parameters: Final[dict[int, tuple[LoginAnswer, dict[str, str]]]] = {}
_READY_PARAMETERS_KEPT: Final = 64


def _answer_parameters(answer: LoginAnswer) -> dict[str, str]:
    """A copy of a known login answer's parameters, made once and shared by every ``session.ready`` it answers.

    Every connection of an application gets the same answer, so its
    sessions' ``parameters`` (a dozen entries) are one dict: not copied per
    session, and the JSON log sink renders it once and reuses the rendering
    while the next record brings the same dict (see
    :meth:`~pgproxy.sink.render.JsonLines.record_line`). Nothing changes a
    record's fields, so the copy never changes; it is not the answer's own
    dict, which the protocol package keeps.
    """
    known = _ready_parameters.get(id(answer))
    if known is None or known[0] is not answer:
        known = (answer, dict(answer.parameters))
        if len(_ready_parameters) >= _READY_PARAMETERS_KEPT:
            _ready_parameters.clear()
        _ready_parameters[id(answer)] = known
    return known[1]


class _StartupFacts:
    """What the session events take from one StartupMessage, worked out once for every session that sends it.

    The conversation decodes one message per distinct packet, and every
    connection of one application brings the same packet: reading its fields
    per session cost about 10k of ``session.started``'s 22k instructions (pure
    Python, callgrind); a message is frozen, so they cannot change.

    ``started_layout``, ``ready_layout`` and ``ended_layout`` are
    ``session.started``'s, ``session.ready``'s and ``session.ended``'s usual
    fields filled in but for each session's own (``session``, the client's
    address and port; ``session``, ``backend_pid``, ``setup_ms``; all but the
    user, database, application and client address), for the last upstream
    address, login answer's parameters and authentication method, and client
    address: a session's record is a copy with its own set, where setting every
    field cost ~1k, ~2.5k and ~1.5k instructions a connection (compiled,
    callgrind). Each is a record's ``layout``
    (:attr:`~pgproxy.tracker.records.Record.layout`), replaced, never changed.
    """

    __slots__ = (
        "ended_address",
        "ended_base",
        "ended_layout",
        "extra",
        "msg",
        "promoted",
        "ready_auth",
        "ready_layout",
        "ready_parameters",
        "replication",
        "started_layout",
        "started_server",
        "version",
    )

    def __init__(
        self, msg: m.StartupMessage, promoted: dict[str, Any], replication: bool, version: str, extra: dict[str, str]
    ) -> None:
        self.msg = msg
        #: The session context's promoted fields, in their order.
        self.promoted = promoted
        #: Whether it opens a replication connection.
        self.replication = replication
        #: The protocol version asked for ("3.0").
        self.version = version
        #: The other start-up parameters.
        self.extra = extra
        self.started_layout: dict[str, Any] | None = None
        self.started_server: tuple[str, int] | None = None
        self.ready_layout: dict[str, Any] | None = None
        self.ready_parameters: dict[str, str] | None = None
        self.ready_auth = ""
        self.ended_layout: dict[str, Any] | None = None
        self.ended_base: dict[str, Any] | None = None  # _ENDED_LAYOUT or _ENDED_LAYOUT_COUNTING
        self.ended_address: str | None = None


#: Start-up facts by their message's id (the message kept with them, so its id is not reused).
_started_fields: Final[dict[int, _StartupFacts]] = {}
_STARTED_KEPT: Final = 64


def _known_facts(msg: m.StartupMessage | None) -> _StartupFacts | None:
    """The facts kept for ``msg``; None when there is no message or its facts were forgotten (64 other start-ups).

    Found by the message's id alone: the facts hold the message, so while
    they are kept no other object can have its id.
    """
    return _started_fields.get(id(msg)) if msg is not None else None


def _startup_facts(msg: m.StartupMessage) -> _StartupFacts:
    """A StartupMessage's facts, kept for the next session with the same message."""
    params = msg.params
    promoted: dict[str, Any] = {}
    if "user" in params:
        promoted["user"] = params["user"]
    promoted["db.namespace"] = params.get("database") or params.get("user")
    if "application_name" in params:
        promoted["application_name"] = params["application_name"]
    facts = _StartupFacts(
        msg,
        promoted,
        is_replication_connection(params.get("replication")),
        f"{msg.protocol_major}.{msg.protocol_minor}",
        {k: v for k, v in params.items() if k not in _PROMOTED_STARTUP},
    )
    if len(_started_fields) >= _STARTED_KEPT:
        _started_fields.clear()
    _started_fields[id(msg)] = facts
    return facts


def _started_layout(facts: _StartupFacts, server: tuple[str, int]) -> dict[str, Any]:
    """``session.started``'s usual fields for ``facts`` and ``server``; the session's own three are None.

    Only for the usual case (_started): all three promoted fields present.
    """
    extra = facts.extra
    layout = (_STARTED_LAYOUT_PARAMETERS if extra else _STARTED_LAYOUT).copy()
    layout["server.address"], layout["server.port"] = server
    layout.update(facts.promoted)
    layout["protocol_version"] = facts.version
    if extra:
        layout["parameters"] = dict(extra)
    return layout


def _ready_layout(facts: _StartupFacts, params: dict[str, str], auth_method: str) -> dict[str, Any]:
    """``session.ready``'s usual fields for ``facts``, a login answer's ``params`` and ``auth_method``.

    The session's own three (``session``, ``backend_pid``, ``setup_ms``) are None.
    Only for the usual case (_ready): a full context, ``server_version`` reported.
    """
    startup = facts.msg
    layout = _READY_LAYOUT.copy()
    layout.update(facts.promoted)
    layout["auth_method"] = auth_method
    layout["server_version"] = params["server_version"]
    layout["parameters"] = params
    layout["protocol_version"] = f"{startup.protocol_major}.{startup.protocol_minor}"
    return layout


def _ended_layout(facts: _StartupFacts, base: dict[str, Any], address: str) -> dict[str, Any]:
    """``session.ended``'s usual fields (``base``'s keys) with the start-up's three and the client's ``address``."""
    layout = base.copy()
    layout.update(facts.promoted)
    layout["client.address"] = address
    return layout


def _request_by_fields(
    statements: StatementTracker, tag: int, buf: bytes, start: int, end: int, encoding: str, now: float
) -> bool:
    """Hand a statement's request to the statement tracker by its fields, without a message object.

    Query detail only needs a request's fields: reading them with the
    decoder's own readers (``read_bind``...) and calling the statement
    tracker with them skips the message object and the handler lookup (the
    frozen message's construction was most of a request's decoding).
    Returns False when the body does not read (the caller decodes it the
    general way, which reports it as Malformed); nothing was done then.
    """
    if tag == _SYNC:
        if end != start:
            return False
        statements.sync()
        return True
    try:  # only the reading: a failure in the statement tracker is not a malformed message
        if tag == _BIND:
            bind = read_bind(buf, start, end, encoding)
        elif tag == _EXECUTE:
            portal = read_execute(buf, start, end, encoding)[0]
        elif tag == _DESCRIBE:
            kind, name = read_kind_and_name(buf, start, end, encoding)
        elif tag == _QUERY:
            sql = read_query(buf, start, end, encoding)
        else:  # Parse
            name, sql, types = read_parse(buf, start, end, encoding)
    except UNREADABLE_BODY:
        return False
    if tag == _BIND:
        statements.bind(bind[0], bind[1], bind[2], bind[3], bind[4], now)
    elif tag == _EXECUTE:
        statements.execute(portal, now)
    elif tag == _DESCRIBE:
        statements.describe(kind, name, now)
    elif tag == _QUERY:
        statements.query(sql, now)
    else:
        statements.parse(name, sql, types, now)
    return True


def _body_length(frame: Frame) -> int:
    """Body length of a frame, also for an oversized one whose body was not kept."""
    return frame[3] - frame[2] if frame[1] is not None else frame[3]
