"""Message-detail events: one ``message`` record per protocol message, and each DataRow with its row.

At ``message`` detail a W2-prepared transaction (Bind/Describe/Execute/Sync
answered by BindComplete/RowDescription/DataRow/CommandComplete/ReadyForQuery)
logs nine of these beside its ``query`` event, so each must cost a few µs.
What does not change from one message to the next is computed once: the
fields every event of a message class starts with (``session``,
``direction``, ``type``, ``tag``) per session, which fields a class lists and
which of them are secret per class, and which columns of a result are
redacted per row decoder. Events are built from those by copying a dict and
adding what the message itself says.

Most of a statement's messages are the same bytes every time it runs
(Describe, Execute, Sync, a Parse of the same text; BindComplete, the same
RowDescription, CommandComplete, ReadyForQuery), and for most kinds the
bytes alone make the event: those are kept per session with the message
decoded from them (:meth:`MessageEvents.known`), so the next one is neither
decoded nor described, and its record (shared, never changed: its fields are
its ``layout``) is rendered once by the log sink.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final, TypeAlias

from pgproxy.protocol import messages as m
from pgproxy.protocol.decoding import BindFields, data_row_values
from pgproxy.protocol.errors import DecodeError
from pgproxy.protocol.framing import FRAMING_ERROR, UNTAGGED, Frame
from pgproxy.protocol.hexdump import hexdump, mask
from pgproxy.protocol.oids import type_name
from pgproxy.protocol.rows import RowDecoder
from pgproxy.protocol.values import DECODER_FAILURE, cap_text
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import MESSAGE, Detail, KeptRecord, Record, truncate
from pgproxy.tracker.redaction import REDACTED, ParameterMode
from pgproxy.tracker.statements import TRANSACTION_STATUS, Execution, StatementTracker, decoder_failure_record

_HEADER_BYTES: Final = 5  # tag + Int32 length
#: Events a session keeps per direction (then it forgets them and starts again), the largest
#: body kept, and the message bytes kept per direction. What a kept event holds grows with its
#: message (its key, its fields, its rendered line; at wire detail a hex dump too): with only the
#: count and body caps, 32 distinct Parses of 1 KiB held 44 KiB per session at message detail and
#: 132 KiB at wire detail (tracemalloc). A statement's usual repeated messages (libpq's Describe,
#: Execute and Sync, BindComplete, a RowDescription, CommandComplete, ReadyForQuery, a driver's
#: unnamed Parse) are tens of bytes each and fit many times over.
_KNOWN_KEPT: Final = 32
KNOWN_BODY_BYTES: Final = 1024
_KNOWN_BYTES: Final = 4096
#: Message kinds whose event is made by their bytes alone (with the session's options and
#: encoding), and the statement tracker's handling of them by the message alone: never a
#: Bind (its parameters are the portal's), a DataRow (rows have their own path), nor a
#: kind the session itself reacts to.
_KEPT_FRONTEND: Final = frozenset((m.Parse, m.Describe, m.Execute, m.Sync, m.Flush, m.Close))
_KEPT_BACKEND: Final = frozenset(
    (
        m.ParseComplete,
        m.BindComplete,
        m.CloseComplete,
        m.NoData,
        m.ParameterDescription,
        m.RowDescription,
        m.CommandComplete,
        m.ReadyForQuery,
        m.EmptyQueryResponse,
        m.PortalSuspended,
    )
)
#: Their tags, asked before anything is sliced: Parse, Describe, Execute, Sync, Flush, Close;
#: ParseComplete, BindComplete, CloseComplete, NoData, ParameterDescription, RowDescription,
#: CommandComplete, ReadyForQuery, EmptyQueryResponse, PortalSuspended.
KNOWN_FRONTEND_TAGS: Final = frozenset(b"PDESHC")
KNOWN_BACKEND_TAGS: Final = frozenset(b"123ntTCZIs")
#: A kept message's event record, and the message it was decoded to.
Known: TypeAlias = tuple[Record, m.Message]
#: A run of kept responses, as an answer starts or ends (see MessageEvents.answer_head): each one's
#: kept record and message, and the statement tracker's handler of its kind.
KnownRun: TypeAlias = tuple[tuple[Record, m.Message, Any], ...]

#: Adds a message's own fields to its event; True when its body must be masked in hex dumps.
Describer: TypeAlias = Callable[["MessageEvents", Any, dict[str, Any], "StatementTracker | None"], bool]


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldPlan:
    """How a message class without a describer of its own lists its dataclass fields (computed once per class)."""

    fields: tuple[tuple[str, bool], ...]  # (name, is secret)
    masked: bool  # a secret field: the body is masked in hex dumps
    authentication: bool  # an AuthenticationXxx message: its method is named too


_FIELD_PLANS: dict[type, _FieldPlan] = {}


def _field_plan(cls: type) -> _FieldPlan:
    plan = _FIELD_PLANS.get(cls)
    if plan is None:
        secrets = m.secret_fields(cls)
        fields = tuple((f.name, f.name in secrets) for f in dataclasses.fields(cls))
        plan = _FIELD_PLANS[cls] = _FieldPlan(
            fields, any(secret for _, secret in fields), issubclass(cls, m.Authentication)
        )
    return plan


class MessageEvents:
    """Builds one session's ``message`` events (the tracker decides when; this decides what they say).

    Args:
        session_id: the session every event names.
        options: caps, redaction and detail; a reconfigured session builds a new instance.
        shortcuts: whether events take their shortcuts (kept by their message's bytes,
            :meth:`known`; a Bind's made from its fields, :meth:`bind`); tests compare a
            session that takes them with one that builds every event the general way.

    """

    __slots__ = (
        "_backend",
        "_columns",
        "_frontend",
        "_known_backend",
        "_known_backend_bytes",
        "_known_encoding",
        "_known_frontend",
        "_known_frontend_bytes",
        "_row_head",
        "_row_plan",
        "answer_head",
        "answer_head_run",
        "answer_tail",
        "answer_tail_run",
        "options",
        "session_id",
        "shortcuts",
        "wire",
    )

    def __init__(self, session_id: str, options: TrackerOptions, shortcuts: bool = True) -> None:
        self.session_id = session_id
        self.options = options
        self.shortcuts = shortcuts
        self.wire = options.detail >= Detail.WIRE
        # Per message class and direction: (tag, the event's first fields, its describer).
        self._frontend: dict[type, tuple[int, dict[str, Any], Describer | None]] = {}
        self._backend: dict[type, tuple[int, dict[str, Any], Describer | None]] = {}
        self._row_head: dict[str, Any] = {"session": session_id, "direction": "backend", "type": "DataRow"}
        # The last row decoder seen and the indexes of its redacted columns.
        self._row_plan: tuple[RowDecoder | None, tuple[int, ...]] = (None, ())
        # The last RowDescription described and its columns (each event gets copies).
        self._columns: tuple[m.RowDescription | None, list[dict[str, Any]]] = (None, [])
        # Kept events by their message's bytes (header included), per direction, and the
        # encoding they were decoded in (see known()).
        self._known_frontend: dict[bytes, Known] = {}
        self._known_backend: dict[bytes, Known] = {}
        self._known_encoding = ""
        # The bytes of the messages kept per direction (see _KNOWN_BYTES).
        self._known_frontend_bytes = 0
        self._known_backend_bytes = 0
        #: How the last answers started and ended, runs of kept responses (see remember_answer).
        self.answer_head = self.answer_tail = b""
        self.answer_head_run: KnownRun = ()
        self.answer_tail_run: KnownRun = ()

    def known(self, frontend: bool, encoding: str) -> dict[bytes, Known]:
        """The events kept for one direction, by their message's bytes (header included), in ``encoding``.

        The session's message-detail loops look a message of a kept kind
        (KNOWN_FRONTEND_TAGS, KNOWN_BACKEND_TAGS) up here by its bytes before
        decoding it: a record found is the one :meth:`message` made for the
        same bytes, and its message the one they decoded to (frozen). The
        statement tracker still handles the message. Asked once per chunk: a
        changed encoding forgets them all.
        """
        if encoding != self._known_encoding:
            self._known_encoding = encoding
            self._known_frontend = {}
            self._known_backend = {}
            self._known_frontend_bytes = self._known_backend_bytes = 0
            self._forget_answers()
        return self._known_frontend if frontend else self._known_backend

    def remember_answer(self, head: bytes, head_run: KnownRun, tail: bytes, tail_run: KnownRun) -> None:
        """How an answer started (``head``, whole kept responses) and ended (``tail``): the next is likely the same.

        A statement run again is answered by the same responses around its
        rows (BindComplete, its RowDescription; CommandComplete, ReadyForQuery):
        the session's walk (SessionTracker._backend_events) takes a chunk that
        starts with ``head`` or ends with ``tail`` by one ``startswith`` or
        ``endswith``, their kept events and messages (``head_run``, ``tail_run``)
        without a lookup each. Empty bytes: not learnt, the last one kept. Their
        bytes count towards the kept messages' (_KNOWN_BYTES): a run that does
        not fit is not remembered, and forgetting the kept events forgets them.
        """
        held = self._known_backend_bytes
        if head and held + len(head) - len(self.answer_head) <= _KNOWN_BYTES:
            held += len(head) - len(self.answer_head)
            self.answer_head, self.answer_head_run = head, head_run
        if tail and held + len(tail) - len(self.answer_tail) <= _KNOWN_BYTES:
            held += len(tail) - len(self.answer_tail)
            self.answer_tail, self.answer_tail_run = tail, tail_run
        self._known_backend_bytes = held

    def _forget_answers(self) -> None:
        self.answer_head = self.answer_tail = b""
        self.answer_head_run = self.answer_tail_run = ()

    def keep(self, known: dict[bytes, Known], key: bytes, msg: m.Message, record: Record, frontend: bool) -> Record:
        """``record``, :meth:`message`'s event of ``msg`` decoded from ``key``: kept when its kind's bytes make it.

        A kept record is shared from then on (a :class:`~pgproxy.tracker.records.KeptRecord`,
        fields never changed), so the log sink keeps its rendering too.
        Returns the record to hand out: the kept one, or ``record``.
        """
        if not self.shortcuts or type(msg) not in (_KEPT_FRONTEND if frontend else _KEPT_BACKEND):
            return record
        held = (self._known_frontend_bytes if frontend else self._known_backend_bytes) + len(key)
        if len(known) >= _KNOWN_KEPT or held > _KNOWN_BYTES:  # forget them all and start again
            known.clear()
            held = len(key)
            if not frontend:
                self._forget_answers()
        if frontend:
            self._known_frontend_bytes = held
        else:
            self._known_backend_bytes = held
        kept = KeptRecord(record.event, record.level, record.own)
        known[key] = (kept, msg)
        return kept

    def message(self, msg: m.Message, frame: Frame, frontend: bool, statements: StatementTracker | None) -> Record:
        """The ``message`` event of one decoded message (every message but a DataRow at query tracking)."""
        tag, buf, start, end = frame
        kind = type(msg)
        heads = self._frontend if frontend else self._backend
        head = heads.get(kind)
        if head is None or head[0] != tag:
            head = heads[kind] = (tag, self._head(msg.type, tag, frontend), _DESCRIBERS.get(kind))
        fields = head[1].copy()
        if buf is not None and tag != FRAMING_ERROR:
            fields["length"] = end - start + 4 if tag >= 0 or tag == UNTAGGED else end - start
        describe = head[2]
        masked_body = describe(self, msg, fields, statements) if describe is not None else self._fields(msg, fields)
        if self.wire and buf is not None and tag != FRAMING_ERROR:
            self._hex(fields, tag, buf, start, end, masked_body)
        return Record(MESSAGE, "debug", fields)

    def bind(
        self, bound: BindFields, tag: int, buf: bytes, start: int, end: int, statements: StatementTracker
    ) -> Record:
        """:meth:`message`'s event of a Bind, from its fields as read (``read_bind``) rather than a message object.

        A Bind is the one request of a prepared statement's that is not kept
        (its parameters change): the session's message-detail loop reads it
        as query detail does and hands the fields here, without the frozen
        message's construction or the generic decoding and describing.
        """
        head = self._frontend.get(m.Bind)
        if head is None or head[0] != tag:
            head = self._frontend[m.Bind] = (tag, self._head("Bind", tag, True), _DESCRIBERS.get(m.Bind))
        fields = head[1].copy()
        fields["length"] = end - start + 4
        masked_body = self._bind_fields(bound[0], bound[1], bound[2], bound[3], bound[4], fields, statements)
        if self.wire:
            self._hex(fields, tag, buf, start, end, masked_body)
        return Record(MESSAGE, "debug", fields)

    def _hex(self, fields: dict[str, Any], tag: int, buf: bytes, start: int, end: int, masked_body: bool) -> None:
        header = _HEADER_BYTES if tag >= 0 else (4 if tag == UNTAGGED else 0)
        raw = buf[start - header : end]
        if masked_body:
            # Keep the header (and a startup packet's code word) readable.
            raw = mask(raw, [(header + (4 if tag == UNTAGGED else 0), len(raw))])
        fields["hex"] = hexdump(raw, self.options.max_hexdump_bytes)

    def _head(self, type_name: str, tag: int, frontend: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "session": self.session_id,
            "direction": "frontend" if frontend else "backend",
            "type": type_name,
        }
        if tag >= 0:
            fields["tag"] = chr(tag)
        return fields

    def row(self, frame: Frame, exe: Execution | None, statements: StatementTracker | None, out: list[Record]) -> int:
        """Append the ``message`` event of one DataRow (within the per-result cap), its row decoded and redacted.

        A value whose decoder failed is shown as a placeholder and reported
        in a ``session.anomaly`` record before the row's event. Returns the
        number of those anomaly records.
        """
        opts = self.options
        if exe is not None:
            if exe.rows_logged >= opts.max_rows_per_result:
                return 0  # beyond the cap: counted by the statement tracker, nothing built
            exe.rows_logged += 1
        _tag, buf, start, end = frame
        fields = self._row_head.copy()
        fields["length"] = (end - start if buf is not None else end) + 4
        if exe is not None:
            fields["row_number"] = exe.rows
        spans: list[tuple[int, int]] = []
        failures = 0
        if buf is None:
            fields["oversized"] = True
        elif exe is not None and statements is not None:
            decoder = statements.row_decoder(exe)
            if decoder is not None:
                try:
                    row = decoder.decode(buf, start, end)
                except DecodeError as exc:
                    fields["error"] = str(exc)
                else:
                    plan = self._row_plan
                    if plan[0] is not decoder:
                        plan = self._row_plan = (decoder, self._redacted_columns(decoder))
                    redacted = plan[1]
                    limit = opts.max_value_chars
                    for index, name in enumerate(decoder.names):
                        value = row[name]
                        if redacted and index in redacted:
                            if value is not None:
                                row[name] = REDACTED
                            if not spans:
                                columns = _value_spans(buf, start, end)
                                spans = [columns[i] for i in redacted]
                        elif type(value) is str:
                            if len(value) > limit:
                                row[name] = cap_text(value, limit)
                        elif type(value) is dict and DECODER_FAILURE in value:
                            failures += 1
                            out.append(decoder_failure_record(self.session_id, decoder.fields[index].type_oid, value))
                        elif isinstance(value, str):
                            row[name] = truncate(value, limit)
                    fields["row"] = row
        if self.wire and buf is not None:
            raw = buf[start - _HEADER_BYTES : end]
            fields["hex"] = hexdump(
                mask(raw, [(a - start + _HEADER_BYTES, b - start + _HEADER_BYTES) for a, b in spans]),
                opts.max_hexdump_bytes,
            )
        out.append(Record(MESSAGE, "debug", fields))
        return failures

    def _redacted_columns(self, decoder: RowDecoder) -> tuple[int, ...]:
        policy = self.options.redaction
        return tuple(index for index, name in enumerate(decoder.names) if policy.is_sensitive(name))

    # ------------------------------------------------------------------ describers

    def _row_description(self, msg: m.RowDescription, fields: dict[str, Any], _st: StatementTracker | None) -> bool:
        # The session hands the same decoded RowDescription again for the same bytes
        # (SessionTracker._row_description): its columns are copied from the last ones.
        last, columns = self._columns
        if msg is not last:
            columns = self._column_list(msg)
            self._columns = (msg, columns)
        fields["columns"] = [column.copy() for column in columns]
        return False

    @staticmethod
    def _column_list(msg: m.RowDescription) -> list[dict[str, Any]]:
        return [
            {
                "name": f.name,
                "type": type_name(f.type_oid),
                "type_oid": f.type_oid,
                "table_oid": f.table_oid,
                "column_number": f.column_number,
                "type_size": f.type_size,
                "type_modifier": f.type_modifier,
                "format": "binary" if f.format == 1 else "text",
            }
            for f in msg.fields
        ]

    def _startup(self, msg: m.StartupMessage, fields: dict[str, Any], _st: StatementTracker | None) -> bool:
        fields["protocol_version"] = f"{msg.protocol_major}.{msg.protocol_minor}"
        fields["parameters"] = msg.params
        return False

    def _sql(self, msg: m.Query | m.Parse, fields: dict[str, Any], _st: StatementTracker | None) -> bool:
        limit = self.options.max_sql_chars
        shown = fields["query"] = self.options.redaction.sql(msg.query, limit)
        if isinstance(msg, m.Parse):
            fields["statement"] = msg.statement
            fields["parameter_types"] = [type_name(t) if t else "unspecified" for t in msg.parameter_types]
        # Beyond the shown part nothing was analysed: a dump of it is masked.
        return len(msg.query) > limit or shown != msg.query

    def _bind(self, msg: m.Bind, fields: dict[str, Any], statements: StatementTracker | None) -> bool:
        return self._bind_fields(
            msg.portal, msg.statement, msg.parameter_formats, msg.parameters, msg.result_formats, fields, statements
        )

    def _bind_fields(
        self,
        portal_name: str,
        statement: str,
        parameter_formats: tuple[int, ...],
        parameters: tuple[bytes | None, ...],
        result_formats: tuple[int, ...],
        fields: dict[str, Any],
        statements: StatementTracker | None,
    ) -> bool:
        fields["portal"] = portal_name
        fields["statement"] = statement
        portal = statements.portals.get(portal_name) if statements is not None else None
        params = portal.parameters if portal is not None else [REDACTED if p is not None else None for p in parameters]
        fields["parameters"] = params
        fields["parameter_formats"] = list(parameter_formats)
        fields["result_formats"] = list(result_formats)
        return self.options.redaction.parameters is not ParameterMode.SHOW or portal is None or REDACTED in params

    def _error(
        self, msg: m.ErrorResponse | m.NoticeResponse, fields: dict[str, Any], _st: StatementTracker | None
    ) -> bool:
        fields.update(msg.named_fields())
        return False

    def _copy_data(self, msg: m.CopyData, fields: dict[str, Any], _st: StatementTracker | None) -> bool:
        fields["bytes"] = len(msg.data)
        return True  # COPY payloads may hold any column: counted, never shown

    def _ready(self, msg: m.ReadyForQuery, fields: dict[str, Any], _st: StatementTracker | None) -> bool:
        fields["status"] = msg.status
        fields["transaction_status"] = TRANSACTION_STATUS.get(msg.status, msg.status)
        return False

    def _command_complete(self, msg: m.CommandComplete, fields: dict[str, Any], _st: StatementTracker | None) -> bool:
        fields["command_tag"] = msg.tag
        fields["command"] = msg.command
        fields["rows"] = msg.rows
        return False

    def _notification(self, msg: m.NotificationResponse, fields: dict[str, Any], _st: StatementTracker | None) -> bool:
        fields["process_id"] = msg.process_id
        fields["channel"] = msg.channel
        fields["payload"] = truncate(msg.payload, self.options.max_value_chars)
        return False

    def _function_call(self, msg: m.FunctionCall, fields: dict[str, Any], _st: StatementTracker | None) -> bool:
        fields["function_oid"] = msg.function_oid
        fields["arguments"] = len(msg.arguments)
        return True

    # Describe, Execute, Close and the messages without fields are most of a
    # prepared statement's traffic: their own describers list what the general
    # walk below would (1.8 -> ~0.5 µs an event).

    def _describe(self, msg: m.Describe | m.Close, fields: dict[str, Any], _st: StatementTracker | None) -> bool:
        limit = self.options.max_value_chars
        kind, name = msg.kind, msg.name
        fields["kind"] = kind if len(kind) <= limit else cap_text(kind, limit)
        fields["name"] = name if len(name) <= limit else cap_text(name, limit)
        return False

    def _execute(self, msg: m.Execute, fields: dict[str, Any], _st: StatementTracker | None) -> bool:
        limit = self.options.max_value_chars
        portal = msg.portal
        fields["portal"] = portal if len(portal) <= limit else cap_text(portal, limit)
        fields["max_rows"] = msg.max_rows
        return False

    def _nothing(self, _msg: m.Message, _fields: dict[str, Any], _st: StatementTracker | None) -> bool:
        return False

    def _fields(self, msg: m.Message, fields: dict[str, Any]) -> bool:
        """Every other message: its dataclass fields, secrets withheld, bytes as capped hex."""
        plan = _FIELD_PLANS.get(type(msg)) or _field_plan(type(msg))
        if plan.fields:
            limit = self.options.max_value_chars
            for name, is_secret in plan.fields:
                if is_secret:
                    fields[name] = REDACTED
                    continue
                value = getattr(msg, name)
                if isinstance(value, bytes):
                    value = truncate(value.hex(), limit)
                elif isinstance(value, tuple):
                    value = list(value)
                fields[name] = truncate(value, limit)
        if plan.authentication and isinstance(msg, m.Authentication):
            fields["method"] = msg.method
        return plan.masked


#: Message types with a rendering of their own; the rest list their fields.
_DESCRIBERS: Final[dict[type, Describer]] = {
    m.RowDescription: MessageEvents._row_description,
    m.StartupMessage: MessageEvents._startup,
    m.Query: MessageEvents._sql,
    m.Parse: MessageEvents._sql,
    m.Bind: MessageEvents._bind,
    m.ErrorResponse: MessageEvents._error,
    m.NoticeResponse: MessageEvents._error,
    m.CopyData: MessageEvents._copy_data,
    m.ReadyForQuery: MessageEvents._ready,
    m.CommandComplete: MessageEvents._command_complete,
    m.NotificationResponse: MessageEvents._notification,
    m.FunctionCall: MessageEvents._function_call,
    m.Describe: MessageEvents._describe,
    m.Close: MessageEvents._describe,
    m.Execute: MessageEvents._execute,
    m.Sync: MessageEvents._nothing,
    m.Flush: MessageEvents._nothing,
    m.ParseComplete: MessageEvents._nothing,
    m.BindComplete: MessageEvents._nothing,
    m.CloseComplete: MessageEvents._nothing,
    m.NoData: MessageEvents._nothing,
    m.EmptyQueryResponse: MessageEvents._nothing,
    m.PortalSuspended: MessageEvents._nothing,
    m.CopyDone: MessageEvents._nothing,
}


def _value_spans(buf: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """Absolute [start, end) of each column's value bytes in a DataRow body (empty for NULL).

    Computed from the values the one DataRow walker cut, not by walking the row again.
    """
    spans: list[tuple[int, int]] = []
    pos = start + 2
    for value in data_row_values(buf, start, end):
        pos += 4
        size = len(value) if value is not None else 0
        spans.append((pos, pos + size))
        pos += size
    return spans
