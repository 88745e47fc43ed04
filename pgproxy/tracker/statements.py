"""Pair requests with responses and turn each executed statement into one event.

PostgreSQL answers a connection's requests strictly in order ("Message Flow",
"Pipelining"), so one FIFO of expected responses is enough: every frontend
Query, Parse, Bind, Describe, Execute, Close, FunctionCall and Sync appends
what it expects; backend messages are matched against the head. After an
ErrorResponse in the extended protocol the server discards everything up to
the next Sync, so the statements queued up to it are reported as skipped.

Completed statements are held until the ReadyForQuery that ends their cycle,
so each event carries the transaction status that followed it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from pgproxy.protocol import messages as m
from pgproxy.protocol.rows import RowDecoder
from pgproxy.protocol.values import ValueContext, ValueDecoder, decoder_for
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import NOTICE, NOTIFICATION, QUERY, Record
from pgproxy.tracker.sql import operation_name, parameter_names, split_statements

#: Transaction status byte of ReadyForQuery -> logged value.
TRANSACTION_STATUS: Final = {"I": "idle", "T": "in_transaction", "E": "failed_transaction"}

#: Completed events held while waiting for ReadyForQuery before they are released anyway.
MAX_HELD_EVENTS: Final = 1000

_NOTICE_LEVELS: Final = {
    "DEBUG": "debug",
    "LOG": "info",
    "INFO": "info",
    "NOTICE": "info",
    "WARNING": "warning",
}


@dataclass(slots=True)
class PreparedStatement:
    name: str
    sql: str
    parameter_types: tuple[int, ...]
    description: m.RowDescription | None = None


@dataclass(slots=True)
class Execution:
    """One statement under way: what becomes a ``query`` event."""

    protocol: str  # "simple", "extended" or "function"
    sql: str | None
    started: float
    statement: str | None = None
    portal: str | None = None
    parameters: list[Any] | None = None
    index: int | None = None
    description: m.RowDescription | None = None
    result_formats: tuple[int, ...] | None = None
    rows: int = 0
    bytes: int = 0
    executes: int = 0
    copy: str | None = None
    copy_messages: int = 0
    copy_bytes: int = 0
    decoder: RowDecoder | None = None
    rows_logged: int = 0
    source: Portal | None = None  # where a late RowDescription (Describe) lands


@dataclass(slots=True)
class Portal:
    name: str
    statement: PreparedStatement | None
    sql: str | None
    parameters: list[Any]
    result_formats: tuple[int, ...]
    description: m.RowDescription | None = None
    suspended: Execution | None = None


@dataclass(slots=True)
class SimpleQuery:
    """A Query message: one or more statements, answered until ReadyForQuery."""

    sql: str
    parts: list[str] | None
    started: float
    index: int = 0
    current: Execution | None = None
    failed: bool = False


@dataclass(slots=True)
class _Pending:
    """One expected response: ``kind`` and what it concerns."""

    kind: str  # query | parse | bind | describe | execute | close | sync | function
    target: Any = None
    extra: Any = None


@lru_cache(maxsize=256)
def _row_decoder(
    description: m.RowDescription, result_formats: tuple[int, ...] | None, ctx: ValueContext
) -> RowDecoder:
    """Row decoders shared by every result with the same shape (a prepared
    statement executed again and again sends an equal RowDescription each time)."""
    return RowDecoder.for_description(description, result_formats, ctx)


def _forget(table: MutableMapping[str, Any], item: PreparedStatement | Portal) -> None:
    """Drop ``item`` from its table unless a newer one took its name meanwhile."""
    if table.get(item.name) is item:
        del table[item.name]


@dataclass(slots=True)
class StatementTracker:
    """Correlates one session's requests and responses into ``query`` events.

    Args:
        options: tracker options (redaction, filters, caps).
        context: fields every query event carries (session, user, database...);
            the owner keeps it up to date.
        value_context: how values decode (encoding, time zone); the owner
            replaces it when the session's settings change.
    """

    options: TrackerOptions
    context: dict[str, Any]
    value_context: ValueContext = field(default_factory=ValueContext)
    statements: OrderedDict[str, PreparedStatement] = field(default_factory=OrderedDict)
    portals: dict[str, Portal] = field(default_factory=dict)
    pending: deque[_Pending] = field(default_factory=deque)
    held: list[Record] = field(default_factory=list)
    transaction_status: str | None = None
    status: str | None = None  # the last ReadyForQuery's status byte (I, T, E)
    executed: int = 0
    in_scope: bool = True
    orphan: Execution | None = None
    _group_start: float | None = None
    _decoders: dict[tuple[int, int], ValueDecoder] = field(default_factory=dict)

    def set_value_context(self, ctx: ValueContext) -> None:
        """The session's encoding or time zone changed: decode with the new settings."""
        self.value_context = ctx
        self._decoders.clear()

    # ------------------------------------------------------------------ frontend

    def frontend(self, msg: m.Message, now: float) -> list[Record]:
        """Account for one frontend message; returns records released by it."""
        handler = FRONTEND_HANDLERS.get(type(msg))
        if handler is not None:
            handler(self, msg, now)
        return []

    def _on_oversized(self, msg: m.Oversized, now: float) -> None:
        # A statement too long to buffer still gets its responses paired.
        text = f"<{msg.length}-byte {msg.expected} not shown: exceeds max_frame>"
        if msg.expected == "Query":
            self.pending.append(_Pending("query", SimpleQuery(text, None, now)))
        elif msg.expected == "Parse":
            self._on_parse(m.Parse("", text, ()), now)

    def _on_query(self, msg: m.Query, now: float) -> None:
        self.pending.append(_Pending("query", SimpleQuery(msg.query, split_statements(msg.query), now)))

    def _on_parse(self, msg: m.Parse, now: float) -> None:
        self._group(now)
        stmt = PreparedStatement(msg.statement, msg.query, msg.parameter_types)
        self._store_statement(stmt)
        self.pending.append(_Pending("parse", stmt))

    def _on_bind(self, msg: m.Bind, now: float) -> None:
        self._group(now)
        bound = self._bind(msg)
        self.portals[msg.portal] = bound
        self.pending.append(_Pending("bind", bound))

    def _on_describe(self, msg: m.Describe, now: float) -> None:
        self._group(now)
        target: Any = self.statements.get(msg.name) if msg.kind == "S" else self.portals.get(msg.name)
        self.pending.append(_Pending("describe", target, msg.kind))

    def _on_execute(self, msg: m.Execute, now: float) -> None:
        portal = self.portals.get(msg.portal)
        started = self._group_start if self._group_start is not None else now
        self._group_start = None
        if portal is not None and portal.suspended is not None:
            exe = portal.suspended
            portal.suspended = None
        elif portal is not None:
            exe = Execution(
                "extended",
                portal.sql,
                started,
                statement=portal.statement.name if portal.statement else None,
                portal=msg.portal,
                parameters=portal.parameters,
                description=portal.description,
                result_formats=portal.result_formats,
                source=portal,
            )
        else:
            exe = Execution("extended", None, started, portal=msg.portal)
        exe.executes += 1
        self.pending.append(_Pending("execute", exe, portal))

    def _on_close(self, msg: m.Close, now: float) -> None:
        self._group(now)
        self.pending.append(_Pending("close", msg.name, msg.kind))

    def _on_sync(self, msg: m.Sync, now: float) -> None:
        self._group_start = None
        self.pending.append(_SYNC)

    def _on_function_call(self, msg: m.FunctionCall, now: float) -> None:
        args = [self._loggable_param(raw, 0, msg.argument_format(i), None) for i, raw in enumerate(msg.arguments)]
        exe = Execution("function", f"<function call oid={msg.function_oid}>", now, parameters=args)
        self.pending.append(_Pending("function", exe))

    def _group(self, now: float) -> None:
        if self._group_start is None:
            self._group_start = now

    def _store_statement(self, stmt: PreparedStatement) -> None:
        statements = self.statements
        statements.pop(stmt.name, None)
        statements[stmt.name] = stmt
        while len(statements) > self.options.max_prepared_statements:
            statements.popitem(last=False)

    def _bind(self, msg: m.Bind) -> Portal:
        stmt = self.statements.get(msg.statement)
        if stmt is not None:
            self.statements.move_to_end(msg.statement)
        sql = stmt.sql if stmt else None
        types = stmt.parameter_types if stmt else ()
        names = parameter_names(sql) if sql and msg.parameters else {}
        params = [
            self._loggable_param(
                raw,
                types[i] if i < len(types) else 0,
                msg.parameter_format(i),
                names.get(i + 1),
            )
            for i, raw in enumerate(msg.parameters)
        ]
        description = stmt.description if stmt else None
        return Portal(msg.portal, stmt, sql, params, msg.result_formats, description)

    def _loggable_param(self, raw: bytes | None, oid: int, fmt: int, name: str | None) -> Any:
        policy = self.options.redaction
        if raw is None:
            return None
        if policy.is_sensitive(name):
            return policy.parameter(None, raw, name)
        decode = self._decoders.get((oid, fmt))
        if decode is None:
            decode = self._decoders[(oid, fmt)] = decoder_for(oid, fmt, self.value_context)
        value = decode(raw)
        return policy.parameter(self._cap(value), raw, name)

    def _cap(self, value: Any) -> Any:
        limit = self.options.max_value_chars
        if isinstance(value, str) and len(value) > limit:
            return f"{value[:limit]}…[+{len(value) - limit} chars]"
        return value

    # ------------------------------------------------------------------ backend

    def current_execution(self) -> Execution | None:
        """The statement whose results are arriving now, if any."""
        if not self.pending:
            return self.orphan
        for item in self.pending:
            if item.kind == "query":
                sq: SimpleQuery = item.target
                return sq.current
            if item.kind in ("execute", "function"):
                exe: Execution = item.target
                return exe
            if item.kind in ("sync",):
                return None
        return None

    def data_row(self, nbytes: int) -> Execution | None:
        """Count one DataRow of ``nbytes`` (the hot path: nothing decoded)."""
        exe = self.current_execution()
        if exe is not None:
            exe.rows += 1
            exe.bytes += nbytes
        return exe

    def count_results(self, rows: int, row_bytes: int, copies: int = 0, copy_bytes: int = 0) -> None:
        """Count a run of DataRows and/or CopyData messages (either direction) for the current statement."""
        exe = self.current_execution()
        if exe is not None:
            exe.rows += rows
            exe.bytes += row_bytes
            exe.copy_messages += copies
            exe.copy_bytes += copy_bytes

    def row_decoder(self, exe: Execution) -> RowDecoder | None:
        """Decoder for the DataRows of ``exe`` (built once per result)."""
        if exe.description is None and exe.source is not None:
            # Describe was answered after Execute was sent (pipelined): use it now.
            portal = exe.source
            exe.description = portal.description or (portal.statement.description if portal.statement else None)
        if exe.decoder is None and exe.description is not None:
            exe.decoder = _row_decoder(exe.description, exe.result_formats, self.value_context)
        return exe.decoder

    def backend(self, msg: m.Message, now: float) -> list[Record]:
        """Account for one backend message (not DataRow); returns released records."""
        handler = BACKEND_HANDLERS.get(type(msg))
        if handler is None:
            return []
        return handler(self, msg, now)

    def _on_step_complete(self, msg: m.Message, now: float) -> list[Record]:
        # ParseComplete, BindComplete, CloseComplete answer the head of the queue.
        head = self.pending[0] if self.pending else None
        if head is not None and head.kind in ("parse", "bind", "close"):
            self.pending.popleft()
            if head.kind == "close":
                return self._closed(head, now)
        return []

    def _on_parameter_description(self, msg: m.ParameterDescription, now: float) -> list[Record]:
        head = self.pending[0] if self.pending else None
        if head is not None and head.kind == "describe" and isinstance(head.target, PreparedStatement):
            stmt: PreparedStatement = head.target
            if not any(stmt.parameter_types) or len(stmt.parameter_types) < len(msg.type_oids):
                stmt.parameter_types = msg.type_oids
        return []

    def _on_row_description(self, msg: m.Message, now: float) -> list[Record]:
        self.description_arrived(msg if isinstance(msg, m.RowDescription) else None, now)  # else NoData
        return []

    def description_arrived(self, description: m.RowDescription | None, now: float) -> None:
        """A RowDescription (or NoData: None) answered the head of the queue.

        Callers that do not decode rows pass None for a RowDescription too:
        only row decoding needs the columns, the pairing does not.
        """
        head = self.pending[0] if self.pending else None
        if head is None:
            # Results whose request we never saw (a capture joined mid-stream).
            self.orphan = Execution("unknown", None, now, description=description)
        elif head.kind == "describe":
            self.pending.popleft()
            if head.target is not None:
                head.target.description = description
        elif head.kind == "query":
            exe = self._simple_current(head.target, now)
            exe.description = description
            exe.decoder = None

    def _on_command_complete(self, msg: m.CommandComplete, now: float) -> list[Record]:
        return self._complete(now, "ok", tag=msg)

    def _on_empty_query(self, msg: m.Message, now: float) -> list[Record]:
        return self._complete(now, "empty")

    def _on_portal_suspended(self, msg: m.Message, now: float) -> list[Record]:
        head = self.pending[0] if self.pending else None
        if head is not None and head.kind == "execute":
            self.pending.popleft()
            portal: Portal | None = head.extra
            if portal is not None:
                portal.suspended = head.target
        return []

    def _on_copy_response(self, msg: m.Message, now: float) -> list[Record]:
        head = self.pending[0] if self.pending else None
        copying = self._simple_current(head.target, now) if head and head.kind == "query" else self.current_execution()
        if copying is not None:
            copying.copy = _COPY_DIRECTION[type(msg)]
        return []

    def _on_function_call_response(self, msg: m.FunctionCallResponse, now: float) -> list[Record]:
        head = self.pending[0] if self.pending else None
        if head is not None and head.kind == "function":
            exe: Execution = head.target
            exe.bytes += len(msg.value or b"")
            return self._finish(exe, now, "ok")
        return []

    def _on_notice(self, msg: m.NoticeResponse, now: float) -> list[Record]:
        return [self._notice(msg)]

    def _on_notification(self, msg: m.NotificationResponse, now: float) -> list[Record]:
        return [self._notification(msg)]

    def _simple_current(self, sq: SimpleQuery, now: float) -> Execution:
        if sq.current is None:
            index = sq.index
            if sq.parts is not None and index < len(sq.parts):
                sql = sq.parts[index]
                shown_index = index if len(sq.parts) > 1 else None
            else:
                sql = sq.sql
                shown_index = index if (sq.parts is None or index > 0) else None
            sq.current = Execution("simple", sql, sq.started, index=shown_index)
        return sq.current

    def _complete(self, now: float, outcome: str, tag: m.CommandComplete | None = None) -> list[Record]:
        head = self.pending[0] if self.pending else None
        if head is None:
            orphan, self.orphan = self.orphan, None
            return self._finish(orphan, now, outcome, tag) if orphan is not None else []
        if head.kind == "query":
            sq: SimpleQuery = head.target
            exe = self._simple_current(sq, now)
            sq.current = None
            sq.index += 1
            sq.started = now
            return self._finish(exe, now, outcome, tag)
        if head.kind == "execute":
            self.pending.popleft()
            return self._finish(head.target, now, outcome, tag)
        return []

    def _error(self, err: m.ErrorResponse, now: float) -> list[Record]:
        head = self.pending[0] if self.pending else None
        if head is None:
            return []
        out: list[Record] = []
        if head.kind == "query":
            sq: SimpleQuery = head.target
            exe = self._simple_current(sq, now)
            sq.current = None
            sq.failed = True
            return self._finish(exe, now, "error", error=err)
        if head.kind == "function":
            exe = head.target
            head.kind = "function_failed"  # ReadyForQuery still ends the cycle
            return self._finish(exe, now, "error", error=err)
        if head.kind == "sync":
            # An error answering Sync itself: the implicit commit failed (a
            # deferred constraint, a serialization failure). ReadyForQuery follows.
            exe = Execution("extended", "<implicit commit at Sync>", self._group_start or now)
            return self._finish(exe, now, "error", error=err)
        # Extended protocol: the failing step, then everything up to Sync is skipped.
        failed = self.pending.popleft()
        if failed.kind == "parse":
            stmt: PreparedStatement = failed.target
            _forget(self.statements, stmt)
            exe = Execution("extended", stmt.sql, self._group_start or now, statement=stmt.name or None)
            self._group_start = None
            out += self._finish(exe, now, "error", error=err)
        elif failed.kind in ("bind", "describe", "close"):
            target: Any = failed.target
            if failed.kind == "bind":
                _forget(self.portals, target)
            sql = target.sql if isinstance(target, (Portal, PreparedStatement)) else None
            params = target.parameters if isinstance(target, Portal) else None
            exe = Execution("extended", sql, self._group_start or now, parameters=params)
            self._group_start = None
            out += self._finish(exe, now, "error", error=err)
        elif failed.kind == "execute":
            out += self._finish(failed.target, now, "error", error=err)
        while self.pending and self.pending[0].kind != "sync":
            skipped = self.pending.popleft()
            what: Any = skipped.target
            if skipped.kind == "execute":
                out += self._finish(what, now, "skipped")
            elif skipped.kind == "parse":
                _forget(self.statements, what)
            elif skipped.kind == "bind":
                _forget(self.portals, what)
        return out

    def _closed(self, item: _Pending, now: float) -> list[Record]:
        name, kind = item.target, item.extra
        if kind == "S":
            self.statements.pop(name, None)
            return []
        portal = self.portals.pop(name, None)
        if portal is not None and portal.suspended is not None:
            return self._finish(portal.suspended, now, "suspended")
        return []

    def _ready(self, msg: m.ReadyForQuery, now: float) -> list[Record]:
        out: list[Record] = []
        while self.pending:
            item = self.pending.popleft()
            if item.kind == "execute":
                out += self._finish(item.target, now, "skipped")
            if item.kind in ("sync", "query", "function", "function_failed"):
                break
        self.status = msg.status
        self.transaction_status = TRANSACTION_STATUS.get(msg.status, msg.status)
        if msg.status == "I":
            # Portals live until the end of their transaction ("Extended Query").
            for portal in self.portals.values():
                if portal.suspended is not None:
                    out += self._finish(portal.suspended, now, "suspended")
            self.portals.clear()
        held, self.held = self.held, []
        for record in (*held, *out):
            record.fields["transaction_status"] = self.transaction_status
        return held + out

    # ------------------------------------------------------------------ events

    def _finish(
        self,
        exe: Execution,
        now: float,
        outcome: str,
        tag: m.CommandComplete | None = None,
        error: m.ErrorResponse | None = None,
    ) -> list[Record]:
        self.executed += 1
        if not self.in_scope:
            return []
        opts = self.options
        duration_ms = round((now - exe.started) * 1000.0, 3)
        slow = outcome != "skipped" and duration_ms >= opts.slow_query_ms
        failed = outcome == "error"
        sql = exe.sql
        if not opts.query_filter.keep(sql, duration_ms, failed, slow, opts.draw):
            return []
        shown_sql = opts.redaction.sql(sql) if sql is not None else None
        if shown_sql is not None and len(shown_sql) > opts.max_sql_chars:
            shown_sql = f"{shown_sql[: opts.max_sql_chars]}…[+{len(shown_sql) - opts.max_sql_chars} chars]"
        fields: dict[str, Any] = dict(self.context)
        operation = tag.command if tag is not None else (operation_name(sql) if sql else None)
        fields["db.query.text"] = shown_sql
        fields["db.operation.name"] = operation
        fields["protocol"] = exe.protocol
        if exe.statement:
            fields["statement"] = exe.statement
        if exe.portal:
            fields["portal"] = exe.portal
        if exe.index is not None:
            fields["statement_index"] = exe.index
        if exe.parameters is not None:
            fields["parameters"] = exe.parameters
        fields["outcome"] = outcome
        fields["duration_ms"] = duration_ms
        rows = tag.rows if tag is not None and tag.rows is not None else exe.rows
        fields["rows"] = rows
        fields["db.response.returned_rows"] = exe.rows
        fields["bytes"] = exe.bytes
        if exe.executes > 1:
            fields["executes"] = exe.executes
        if tag is not None:
            fields["command_tag"] = tag.tag
        if exe.copy is not None:
            fields["copy"] = {"direction": exe.copy, "messages": exe.copy_messages, "bytes": exe.copy_bytes}
        level = "info"
        if error is not None:
            details = error.named_fields()
            fields["db.response.status_code"] = error.sqlstate
            fields["error"] = {
                k: details[k] for k in ("severity", "sqlstate", "message", "detail", "hint", "position") if k in details
            }
            level = "error"
        elif slow:
            level = "warning"
        if slow:
            fields["slow"] = True
        fields["transaction_status"] = None
        record = Record(QUERY, level, fields)
        self.held.append(record)
        if len(self.held) > MAX_HELD_EVENTS:
            held, self.held = self.held, []
            return held
        return []

    def _notice(self, msg: m.NoticeResponse) -> Record:
        details = msg.named_fields()
        fields: dict[str, Any] = {"session": self.context.get("session")}
        fields.update(details)
        return Record(NOTICE, _NOTICE_LEVELS.get(msg.severity.upper(), "info"), fields)

    def _notification(self, msg: m.NotificationResponse) -> Record:
        fields = {
            "session": self.context.get("session"),
            "channel": msg.channel,
            "payload": self._cap(msg.payload),
            "sender_pid": msg.process_id,
        }
        return Record(NOTIFICATION, "info", fields)

    def interrupted(self, now: float) -> list[Record]:
        """The session ended: report statements still under way, release held events."""
        out: list[Record] = []
        seen: set[int] = set()
        for item in list(self.pending):
            exe: Execution | None = None
            if item.kind == "query":
                exe = None if item.target.failed else self._simple_current(item.target, now)
            elif item.kind in ("execute", "function"):
                exe = item.target
            if exe is not None and id(exe) not in seen:
                seen.add(id(exe))
                out += self._finish(exe, now, "interrupted")
        self.pending.clear()
        held, self.held = self.held, []
        return held + out


_SYNC: Final = _Pending("sync")
_COPY_DIRECTION: Final = {m.CopyInResponse: "in", m.CopyOutResponse: "out", m.CopyBothResponse: "both"}

# Dispatch by exact message type: one dict lookup instead of a chain of isinstance checks.
FRONTEND_HANDLERS: Final[dict[type, Any]] = {
    m.Query: StatementTracker._on_query,
    m.Parse: StatementTracker._on_parse,
    m.Bind: StatementTracker._on_bind,
    m.Describe: StatementTracker._on_describe,
    m.Execute: StatementTracker._on_execute,
    m.Close: StatementTracker._on_close,
    m.Sync: StatementTracker._on_sync,
    m.FunctionCall: StatementTracker._on_function_call,
    m.Oversized: StatementTracker._on_oversized,
}
BACKEND_HANDLERS: Final[dict[type, Any]] = {
    m.ParseComplete: StatementTracker._on_step_complete,
    m.BindComplete: StatementTracker._on_step_complete,
    m.CloseComplete: StatementTracker._on_step_complete,
    m.ParameterDescription: StatementTracker._on_parameter_description,
    m.RowDescription: StatementTracker._on_row_description,
    m.NoData: StatementTracker._on_row_description,
    m.CommandComplete: StatementTracker._on_command_complete,
    m.EmptyQueryResponse: StatementTracker._on_empty_query,
    m.PortalSuspended: StatementTracker._on_portal_suspended,
    m.ErrorResponse: StatementTracker._error,
    m.ReadyForQuery: StatementTracker._ready,
    m.CopyInResponse: StatementTracker._on_copy_response,
    m.CopyOutResponse: StatementTracker._on_copy_response,
    m.CopyBothResponse: StatementTracker._on_copy_response,
    m.FunctionCallResponse: StatementTracker._on_function_call_response,
    m.NoticeResponse: StatementTracker._on_notice,
    m.NotificationResponse: StatementTracker._on_notification,
}
