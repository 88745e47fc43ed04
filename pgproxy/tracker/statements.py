"""Pair requests with responses and turn each executed statement into one event.

PostgreSQL answers a connection's requests strictly in order ("Message Flow",
"Pipelining"), so one FIFO of expected responses is enough: every frontend
Query, Parse, Bind, Describe, Execute, Close, FunctionCall and Sync appends
what it expects; backend messages are matched against the head. After an
ErrorResponse in the extended protocol the server discards everything up to
the next Sync, so the statements queued up to it are reported as skipped.

Completed statements are held until the ReadyForQuery that ends their cycle,
so each event carries the transaction status that followed it, and so an
error later in the same implicit transaction can still say that it rolled
them back ("Multiple Statements in a Simple Query", "Pipelining").

What an event says is what the wire showed, nothing more:

* A statement that fails at Parse, Bind or Describe is one event, the
  Execute that depended on it; the ErrorResponse ends its duration.
* A portal suspended by an Execute row limit and then closed (by Sync ending
  the transaction, Close, or a new Bind of the same name) completed as far as
  its client wanted: ``ok`` with ``portal_suspended``.
* A simple Query's responses arrive together at its ReadyForQuery, so the
  statements of a multi-statement Query have no duration of their own; the
  Query's is given once, as ``batch_duration_ms`` on its last event.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from pgproxy.protocol import messages as m
from pgproxy.protocol.oids import type_name
from pgproxy.protocol.rows import RowDecoder
from pgproxy.protocol.values import (
    DECODER_FAILURE,
    PLAIN_INTEGER,
    PLAIN_TEXT,
    ValueContext,
    ValueDecoder,
    cap_text,
    decoder_for,
    plain_decoding,
)
from pgproxy.tracker.fingerprint import Analysis, Source, annotate
from pgproxy.tracker.options import TextMode, TrackerOptions
from pgproxy.tracker.records import (
    NOTICE,
    NOTIFICATION,
    QUERY,
    SESSION_ANOMALY,
    Record,
    SessionContext,
    round_ms,
    truncate,
)
from pgproxy.tracker.redaction import ParameterMode
from pgproxy.tracker.sql import CACHE_BUDGET_CHARS, CACHED_TEXT_CHARS, operation_name, parameter_names, split_statements

#: Transaction status byte of ReadyForQuery -> logged value.
TRANSACTION_STATUS: Final = {"I": "idle", "T": "in_transaction", "E": "failed_transaction"}

#: Completed events held while waiting for ReadyForQuery before they are released anyway.
MAX_HELD_EVENTS: Final = 1000

#: Answered requests left at the head of a statement tracker's queue before they are dropped (see its _head).
_ANSWERED_KEPT: Final = 64

#: Requests awaiting their responses, per session. A client that sends without
#: reading (15 MB of empty queries) would otherwise grow the queue without
#: limit; past it the session is counted, not paired, until the server has
#: answered everything (PgBouncer bounds its per-client buffers the same way).
MAX_PENDING: Final = 10_000

_NOTICE_LEVELS: Final = {
    "DEBUG": "debug",
    "LOG": "info",
    "INFO": "info",
    "NOTICE": "info",
    "WARNING": "warning",
}


class Outcome(enum.StrEnum):
    """How a statement ended, as the ``outcome`` field says."""

    OK = "ok"
    ERROR = "error"
    EMPTY = "empty"
    SKIPPED = "skipped"
    """Never run: an earlier error (or a syntax error elsewhere in the same Query) stopped it."""
    SUSPENDED = "suspended"
    """A portal still open, partly fetched, when the session ended."""
    INTERRUPTED = "interrupted"
    """The session ended before the server answered."""


# The members read per statement, as module constants: an Enum member read
# through its class (``Outcome.OK``) goes through the enum machinery, and
# ``.value`` is a Python-level property (about 50 and 140 ns, pure Python).
_OK: Final[Outcome] = Outcome.OK
_ERROR: Final[Outcome] = Outcome.ERROR
_EMPTY: Final[Outcome] = Outcome.EMPTY
_SKIPPED: Final[Outcome] = Outcome.SKIPPED
_SUSPENDED: Final[Outcome] = Outcome.SUSPENDED
_INTERRUPTED: Final[Outcome] = Outcome.INTERRUPTED
_NORMALIZED: Final[TextMode] = TextMode.NORMALIZED
_PARSER: Final[Source] = Source.PARSER

_NO_NAMES: Final[Mapping[int, str]] = {}
_SHOW_PARAMETERS: Final = ParameterMode.SHOW


def _integer_mark(data: bytes) -> Any:
    """A mark in a statement tracker's decoder table (see _shown_param): never called."""
    raise AssertionError("a mark, not a decoder")


def _text_mark(data: bytes) -> Any:
    """A mark in a statement tracker's decoder table (see _shown_param): never called."""
    raise AssertionError("a mark, not a decoder")


_INTEGER_MARK: Final[ValueDecoder] = _integer_mark
_TEXT_MARK: Final[ValueDecoder] = _text_mark

#: Command tags that open and close explicit transaction blocks.
_BEGIN: Final = frozenset(("BEGIN", "START TRANSACTION"))
_END: Final = frozenset(("COMMIT", "ROLLBACK", "PREPARE TRANSACTION"))
_CONTROL: Final = _BEGIN | _END
#: ``ROLLBACK TO SAVEPOINT`` completes with the tag ROLLBACK but keeps the block open.
_ROLLBACK_TO: Final = re.compile(r"\s*rollback\s+(?:work\s+|transaction\s+)?to\b", re.IGNORECASE)


# The classes made per statement (an Execution, the Expect... of some requests,
# a SimpleQuery and its Finished statements) are plain classes with their own
# ``__init__``, not dataclasses: in the compiled build (mypyc) a dataclass's
# generated ``__init__`` stays interpreted, and constructing them cost ~16k of
# the ~97k instructions of a pgbench -S statement (tracker and sink, callgrind);
# a written-out ``__init__`` is compiled. They compare by identity (nothing
# compares them by value; ``_remove_waiting`` must remove that very request).


class PreparedStatement:
    __slots__ = ("description", "facts", "name", "parameter_types", "sql")

    def __init__(
        self, name: str, sql: str, parameter_types: tuple[int, ...], description: m.RowDescription | None = None
    ) -> None:
        self.name = name
        self.sql = sql
        self.parameter_types = parameter_types
        self.description = description
        #: What its records say about ``sql`` (see StatementFacts), once it was asked for.
        self.facts: StatementFacts | None = None


class StatementFacts:
    """What every record of one SQL text says about the text, worked out once per text and options.

    A prepared statement is executed again and again (pgbench -M prepared, every
    driver's statement cache), and the unnamed statement of the extended
    protocol is parsed again with the same text (pgbench -M extended, asyncpg,
    JDBC): the redacted ``db.query.text``, the analyzer's fields and operation
    and the parameters' column names do not change between executions.
    Working them out for every statement cost ~4.3k of a compiled pgbench
    prepared statement's ~39k instructions (redaction ~2.2k, two analyzer
    lookups and ``annotate``, callgrind); these are held by the statement, and
    shared by equal texts through :data:`FACTS`.

    Valid while the tracker's options are ``options`` (the very object: a
    reload brings new options, with perhaps another redaction or analyzer).
    Nothing else goes in: the session's encoding and settings shape the text
    (already decoded) and the parameters' values, never these.

    Attributes:
        head: the record's first fields, in their order: ``db.query.text``,
            ``db.operation.name`` (a placeholder the record sets) and the
            analyzer's (``fingerprint``...). Records start from a copy.
        operation: ``db.operation.name`` of a statement without a command tag
            (a command tag names it otherwise).
        names: the column each ``$n`` belongs to (redaction by name).
        sensitive_names: those of ``names`` the redaction policy masks: a Bind
            asks only these (a parameter of any other name is shown as one of
            none would be), so it need not ask the policy about every name.
        literal: the analyzer holds the analysis under the text's literal key,
            not the text (a use counts as a literal-key hit too).
    """

    __slots__ = ("head", "layouts", "literal", "names", "operation", "options", "sensitive_names")

    def __init__(
        self,
        options: TrackerOptions,
        head: dict[str, Any],
        operation: str | None,
        names: Mapping[int, str],
        literal: bool,
    ) -> None:
        self.options = options
        self.head = head
        self.operation = operation
        self.names = names
        self.literal = literal
        is_sensitive = options.redaction.is_sensitive
        self.sensitive_names: Mapping[int, str] = {n: name for n, name in names.items() if is_sensitive(name)}
        self.layouts: list[dict[str, Any] | None] = [None, None, None, None]

    def record_layout(self, statement: bool, portal: bool) -> dict[str, Any]:
        """The fields of a prepared statement's plain success, in their order, the head's values filled in.

        A record copies it and sets every other value: a dict copied from one
        of the same keys is a block copy, where adding twenty-odd keys one by
        one to a new dict (resizing it twice) cost ~3k instructions a record
        (compiled, callgrind). ``statement`` and ``portal``: the record names
        them (a named statement, a named portal).
        """
        index = (2 if statement else 0) + (1 if portal else 0)
        layout = self.layouts[index]
        if layout is None:
            layout = self.layouts[index] = record_layout(self.head, statement, portal, True)
        return layout


def describe_text(options: TrackerOptions, sql: str) -> StatementFacts | None:
    """The facts of ``sql`` under ``options``, worked out the general way; None where that way must stay.

    None for text the analyzer analyses every time (longer than it caches: each
    use is counted as a miss) and for the "<...>" stand-ins of text not shown
    (the record does not analyse them, the Bind does): those take the general
    path each time. Counts one use of the analyzer, as a record or Bind would.
    """
    analyzer = options.analyzer
    if not sql or sql[0] == "<" or (analyzer is not None and len(sql) > analyzer.max_cached_chars):
        return None
    head: dict[str, Any] = {
        "db.query.text": options.redaction.sql(sql, options.max_sql_chars),
        "db.operation.name": None,
    }
    operation = operation_name(sql)
    literal = False
    if analyzer is not None:
        analysis = analyzer.analyze(sql)
        annotate(head, analysis, options.text_mode is _NORMALIZED, options.max_sql_chars)
        head["db.operation.name"] = None
        if operation is None:
            operation = analysis.operation
        names = analysis.parameter_names if analysis.source is _PARSER else parameter_names(sql)
        literal = not analyzer.holds(sql)
    else:
        names = parameter_names(sql)
    return StatementFacts(options, head, operation, names, literal)


def record_layout(head: Mapping[str, Any], statement: bool, portal: bool, parameters: bool) -> dict[str, Any]:
    """A plain success's fields in the general way's order: ``head``'s, then the record's own (placeholders).

    The record copies it and sets every value but ``outcome`` (ok) and
    ``transaction_status`` (None until ReadyForQuery): a dict copied from one
    with the same keys is a block copy, where adding twenty-odd keys one by one
    to a new dict (resizing it twice) cost ~3k instructions a record (compiled,
    callgrind). ``statement``, ``portal``, ``parameters``: the record has them.
    """
    layout = dict(head)
    layout["protocol"] = None
    if statement:
        layout["statement"] = None
    if portal:
        layout["portal"] = None
    if parameters:
        layout["parameters"] = None
    layout["outcome"] = _OK._value_
    for key in ("duration_ms", "rows", "db.response.returned_rows", "bytes", "command_tag", "transaction_status"):
        layout[key] = None
    return layout


#: Layouts of simple-protocol records by their analysis (keyed by its id, which the
#: analysis held beside its layout keeps from being reused); emptied when full.
_ANALYSIS_LAYOUTS: Final[dict[int, tuple[Analysis, dict[str, Any]]]] = {}
_MAX_ANALYSIS_LAYOUTS: Final = 1024


class _LastLayout:
    """The analysis :func:`analysis_layout` was asked about last, and its layout.

    A session repeats its statement (pgbench -S: one analysis throughout): an
    identity test, where the lookup by id (boxing it, hashing, the tuple) cost
    ~500 instructions a statement (compiled, callgrind). Holding the analysis
    keeps its id from being reused, as the table's entries do.
    """

    __slots__ = ("analysis", "layout")

    def __init__(self) -> None:
        self.analysis: Analysis | None = None
        self.layout: dict[str, Any] = {}


_LAST_LAYOUT: Final = _LastLayout()


def analysis_layout(analysis: Analysis) -> dict[str, Any]:
    """The layout (see :func:`record_layout`) of a simple Query's statement described by ``analysis``."""
    last = _LAST_LAYOUT
    if last.analysis is analysis:
        return last.layout
    known = _ANALYSIS_LAYOUTS.get(id(analysis))
    if known is not None and known[0] is analysis:
        layout = known[1]
    else:
        head: dict[str, Any] = {"db.query.text": None, "db.operation.name": None}
        head.update(analysis.fields)
        layout = record_layout(head, False, False, False)
        if len(_ANALYSIS_LAYOUTS) >= _MAX_ANALYSIS_LAYOUTS:
            _ANALYSIS_LAYOUTS.clear()
        _ANALYSIS_LAYOUTS[id(analysis)] = (analysis, layout)
    last.analysis = analysis
    last.layout = layout
    return layout


def text_fields(
    options: TrackerOptions, sql: str | None, tag: m.CommandComplete | None, analysis: Analysis | None = None
) -> dict[str, Any]:
    """A ``query`` record's first fields, on what its text is: ``db.query.text``, ``db.operation.name``, the analyzer's.

    ``analysis``: the analyzer's answer for ``sql`` when it was asked already (see StatementTracker.query).
    """
    fields: dict[str, Any] = {}
    fields["db.query.text"] = options.redaction.sql(sql, options.max_sql_chars) if sql is not None else None
    fields["db.operation.name"] = tag.command if tag is not None else (operation_name(sql) if sql else None)
    if options.analyzer is not None and sql and sql[0] != "<":  # "<function call ...>" etc. are not SQL
        if analysis is None:
            analysis = options.analyzer.analyze(sql)
        annotate(fields, analysis, options.text_mode is _NORMALIZED, options.max_sql_chars)
    return fields


def known_text_fields(facts: StatementFacts, tag: m.CommandComplete | None) -> dict[str, Any]:
    """:func:`text_fields` from the text's facts: a copy of their head with the operation set.

    The same dict, in the same order (tests/test_statement_facts.py holds them together).
    """
    fields = facts.head.copy()
    fields["db.operation.name"] = tag.command if tag is not None else facts.operation
    return fields


class FactsCache:
    """Statement facts by text, shared by every session (an LRU bounded by entries and characters).

    The unnamed statement is parsed again for every execution and a prepared
    statement is prepared again by every session of a pool: one text's facts
    serve them all. Bounded like :mod:`pgproxy.tracker.sql`'s text caches:
    texts longer than :data:`~pgproxy.tracker.sql.CACHED_TEXT_CHARS` are not
    kept here (their statement still holds its own facts). Single-threaded
    use (one event loop) is assumed, as there.
    """

    __slots__ = ("chars", "entries", "max_chars", "max_entries", "newest")

    def __init__(self, max_entries: int = 4096, max_chars: int = CACHE_BUDGET_CHARS) -> None:
        self.entries: OrderedDict[str, StatementFacts] = OrderedDict()
        self.chars = 0
        self.max_entries = max_entries
        self.max_chars = max_chars
        #: The facts stored or used last: the newest entry while they are in there (each is stored
        #: once), so using them again needs no move to the end (~400 instructions, compiled).
        self.newest: StatementFacts | None = None

    def facts(self, options: TrackerOptions, sql: str) -> StatementFacts | None:
        """The facts of ``sql`` (one use of the analyzer counted, as the general way would)."""
        entries = self.entries
        found = entries.get(sql)
        if found is not None and found.options is options:
            if found is not self.newest:
                entries.move_to_end(sql)
                self.newest = found
            analyzer = options.analyzer
            if analyzer is not None:
                analyzer.count_hit(found.literal)
            return found
        made = describe_text(options, sql)
        if made is not None and len(sql) <= CACHED_TEXT_CHARS:
            if found is not None:
                del entries[sql]
                self.chars -= 2 * len(sql)
            entries[sql] = made
            self.newest = made
            self.chars += 2 * len(sql)  # the text and about as much again (shown text, fields)
            while len(entries) > self.max_entries or self.chars > self.max_chars:
                old, _ = entries.popitem(last=False)
                self.chars -= 2 * len(old)
        return made

    def clear(self) -> None:
        self.entries.clear()
        self.chars = 0


#: The process's statement facts (see FactsCache).
FACTS: Final = FactsCache()


def statement_facts(options: TrackerOptions, stmt: PreparedStatement) -> StatementFacts | None:
    """``stmt``'s facts under ``options``, kept on it (one use of the analyzer counted, as the general way would)."""
    facts = stmt.facts
    if facts is not None and facts.options is options:
        analyzer = options.analyzer
        if analyzer is not None:
            analyzer.count_hit(facts.literal)
        return facts
    facts = stmt.facts = FACTS.facts(options, stmt.sql)
    return facts


class Execution:
    """One statement under way: what becomes a ``query`` event."""

    __slots__ = (
        "analysis",
        "bytes",
        "copy",
        "copy_bytes",
        "copy_messages",
        "decoder",
        "description",
        "executes",
        "index",
        "layout",
        "options",
        "parameters",
        "plain",
        "portal",
        "protocol",
        "result_formats",
        "rows",
        "rows_logged",
        "source",
        "sql",
        "started",
        "statement",
        "suspended_at",
    )

    def __init__(
        self,
        protocol: str,  # "simple", "extended" or "function"
        sql: str | None,
        started: float,
        statement: str | None = None,
        portal: str | None = None,
        parameters: list[Any] | None = None,
        index: int | None = None,
        description: m.RowDescription | None = None,
        result_formats: tuple[int, ...] | None = None,
        source: Portal | None = None,  # where a late RowDescription (Describe) lands
    ) -> None:
        self.protocol = protocol
        self.sql = sql
        self.started = started
        self.statement = statement
        self.portal = portal
        self.parameters = parameters
        self.index = index
        self.description = description
        self.result_formats = result_formats
        self.rows = 0
        self.bytes = 0
        self.executes = 0
        self.copy: str | None = None
        self.copy_messages = 0
        self.copy_bytes = 0
        self.decoder: RowDecoder | None = None
        self.rows_logged = 0
        self.source = source
        self.suspended_at: float | None = None  # the last PortalSuspended's arrival
        self.analysis: Analysis | None = None  # of ``sql``, made when the request came (see StatementTracker.query)
        #: A plain success's record fields (see record_layout), filled in on the request's arrival as far as
        #: the request says: the layout's copy, ``db.query.text``, ``protocol``, the statement, portal and
        #: parameters (a simple Query's Execution is made then too). The proxy is idle while the server
        #: works; between the answer's arrival and the client's next request (one client: pgbench -S) its
        #: work on the answer delays that request: ~1.2k instructions fewer there (a simple Query 22.5k ->
        #: 19.6k per answer, a prepared statement's tracker 8.3k -> 7.1k, compiled, callgrind). The record
        #: takes them (once) only where it is a plain success made under these ``options`` (StatementTracker._record);
        #: any other is made the general way. ``layout``: the dict they were copied from.
        self.plain: dict[str, Any] | None = None
        self.layout: dict[str, Any] | None = None
        self.options: TrackerOptions | None = None


class Portal:
    __slots__ = ("description", "name", "parameters", "result_formats", "sql", "statement", "suspended")

    def __init__(
        self,
        name: str,
        statement: PreparedStatement | None,
        sql: str | None,
        parameters: list[Any],
        result_formats: tuple[int, ...],
        description: m.RowDescription | None = None,
    ) -> None:
        self.name = name
        self.statement = statement
        self.sql = sql
        self.parameters = parameters
        self.result_formats = result_formats
        self.description = description
        self.suspended: Execution | None = None


class Finished:
    """A statement of a simple Query whose response has arrived; logged at the Query's ReadyForQuery."""

    __slots__ = ("error", "exe", "outcome", "tag")

    def __init__(
        self,
        exe: Execution,
        outcome: Outcome,
        tag: m.CommandComplete | None = None,
        error: m.ErrorResponse | None = None,
    ) -> None:
        self.exe = exe
        self.outcome = outcome
        self.tag = tag
        self.error = error


@dataclass(frozen=True, slots=True)
class Batch:
    """A statement's place in a multi-statement simple Query.

    Attributes:
        size: statements in the Query.
        total: seconds from the Query's arrival to its ReadyForQuery (None if it never came).
        last: this is the Query's last statement, the one that carries ``total``.
    """

    size: int
    total: float | None
    last: bool


class SimpleQuery:
    """A Query message: one or more statements, answered until ReadyForQuery.

    Attributes:
        parts: the statements, split lexically (None when that is unreliable).
        offsets: 1-based character position where each part starts in ``sql``
            (ErrorResponse positions count the same way).
        index: the statement whose responses are arriving.
        finished: statements answered so far, logged together at ReadyForQuery.
    """

    __slots__ = ("analysis", "current", "failed", "finished", "first", "index", "offsets", "parts", "sql", "started")

    def __init__(self, sql: str, parts: list[str] | None, started: float, offsets: list[int] | None = None) -> None:
        self.sql = sql
        self.parts = parts
        self.started = started
        self.offsets = offsets
        self.index = 0
        self.current: Execution | None = None
        self.failed = False
        self.finished: list[Finished] = []
        self.analysis: Analysis | None = None  # of its only statement, when analyzed on arrival
        self.first: Execution | None = None  # that statement's Execution, made on arrival with the analysis

    @property
    def size(self) -> int:
        return len(self.parts) if self.parts else 1

    def part_at(self, position: int) -> int | None:
        """Index of the statement containing 1-based character ``position``."""
        if not self.offsets:
            return None
        found = None
        for index, start in enumerate(self.offsets):
            if start > position:
                break
            found = index
        return found


# ---------------------------------------------------------------------- expected responses


class ExpectDescribe:
    __slots__ = ("target",)

    def __init__(self, target: PreparedStatement | Portal | None) -> None:
        self.target = target


class ExpectClose:
    __slots__ = ("name", "portal")

    def __init__(self, name: str, portal: bool) -> None:
        self.name = name
        self.portal = portal  # Close of a portal (else of a prepared statement)


class ExpectSync:
    """A Sync: its ReadyForQuery ends the extended-query cycle."""

    __slots__ = ()


class ExpectFunction:
    __slots__ = ("exe", "failed")

    def __init__(self, exe: Execution) -> None:
        self.exe = exe
        self.failed = False  # its ErrorResponse came; ReadyForQuery still ends the cycle


#: What the head of the queue waits for, told apart by class (no ``kind`` class
#: attribute: mypyc takes a dataclass's ClassVar for a field). A Query, Parse,
#: Bind or Execute queues the object it made, which is all its answer needs: the
#: SimpleQuery, the PreparedStatement, the Portal, the Execution (whose
#: ``source`` is the portal it runs). A wrapper per request cost an allocation and
#: a free (~270 instructions each, compiled, callgrind; four per pgbench -M
#: extended statement). Describe, Close, Sync and FunctionCall keep theirs.
Expected = (
    SimpleQuery | PreparedStatement | Portal | ExpectDescribe | Execution | ExpectClose | ExpectSync | ExpectFunction
)


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


def _offsets(sql: str, parts: list[str] | None) -> list[int] | None:
    """1-based start of each (stripped) part in ``sql``, found in order."""
    if parts is None or len(parts) < 2:
        return None
    out: list[int] = []
    pos = 0
    for part in parts:
        found = sql.find(part, pos)
        if found < 0:
            return None
        out.append(found + 1)
        pos = found + len(part)
    return out


@dataclass(slots=True, init=False)
class ImplicitTransaction:
    """Which logged statements an error would roll back.

    Statements outside an explicit block run in an implicit transaction that
    lasts until the Query's (or the pipeline's Sync's) ReadyForQuery; an error
    before then rolls all of them back. BEGIN turns it into an explicit block
    (those statements then wait for the client's COMMIT or ROLLBACK), COMMIT
    and ROLLBACK end it ("Multiple Statements in a Simple Query").
    """

    explicit: bool = False
    uncommitted: list[Record] = field(default_factory=list)

    def __init__(self, explicit: bool = False) -> None:
        """The dataclass's fields at their declared defaults, written out (as StatementTracker's).

        Compiled, the dataclass's generated ``__init__`` stays interpreted: every
        query-detail connection (its StatementTracker) and multi-statement Query
        builds one. tests/test_statement_tracker_init.py holds it to the declared defaults.
        """
        self.explicit = explicit
        self.uncommitted = []

    def completed(self, command: str | None, sql: str | None, record: Record | None) -> None:
        if command not in _CONTROL:
            if not self.explicit and record is not None:
                self.uncommitted.append(record)
        elif command in _BEGIN:
            self.explicit = True
            self.uncommitted.clear()
        elif command in _END and not (command == "ROLLBACK" and sql and _ROLLBACK_TO.match(sql)):
            self.explicit = False
            self.uncommitted.clear()

    def failed(self) -> None:
        if not self.explicit:
            for record in self.uncommitted:
                record.own["rolled_back"] = True  # own: right whether or not its fields were joined
        self.uncommitted.clear()


def decoder_failure_record(session: Any, oid: int, placeholder: dict[str, Any]) -> Record:
    """One ``session.anomaly`` for a value whose decoder failed (the value itself is shown as a placeholder)."""
    return Record(
        SESSION_ANOMALY,
        "error",
        {
            "session": session,
            "kind": "decoder_failure",
            "reason": f"decoding a {type_name(oid)} value failed: {placeholder.get('error')}",
            "action": "the value is shown as a placeholder; decoding and forwarding go on",
        },
    )


@dataclass(slots=True, init=False)
class StatementTracker:
    """Correlates one session's requests and responses into ``query`` events.

    Args:
        options: tracker options (redaction, filters, caps).
        context: fields every query event carries (session, user, database...);
            the owner keeps it up to date.
        value_context: how values decode (encoding, time zone); the owner
            replaces it when the session's settings change.
        max_pending: requests awaiting responses before the session is only counted.
    """

    options: TrackerOptions
    context: dict[str, Any]
    value_context: ValueContext = field(default_factory=ValueContext)
    max_pending: int = MAX_PENDING
    statements: OrderedDict[str, PreparedStatement] = field(default_factory=OrderedDict)
    portals: dict[str, Portal] = field(default_factory=dict)
    #: What the requests sent expect, in order, from ``_first`` on: see :meth:`_head`.
    pending: list[Expected] = field(default_factory=list)
    held: list[Record] = field(default_factory=list)
    #: Records made while reading requests (the pending-bound anomaly): the owner takes them.
    outbox: list[Record] = field(default_factory=list)
    transaction_status: str | None = None
    status: str | None = None  # the last ReadyForQuery's status byte (I, T, E)
    executed: int = 0
    in_scope: bool = True
    orphan: Execution | None = None
    #: Beyond ``max_pending``: requests (Query, Sync, FunctionCall) still to be
    #: answered that were counted, not queued; None while pairing normally.
    untracked: int | None = None
    unlogged: int = 0  # statements completed while untracked
    transaction: ImplicitTransaction = field(default_factory=ImplicitTransaction)
    #: When the requests up to the next Execute began (a Parse's, Bind's, Describe's or Close's arrival):
    #: set by each request written out, not through a method (a call per request, pure Python).
    _group_start: float | None = None
    #: Parameter decoders by ``oid * 2 + format`` (text 0, binary 1; any other format is not kept):
    #: an int key, where an ``(oid, format)`` tuple cost ~250 instructions per parameter to make and hash.
    _decoders: dict[int, ValueDecoder] = field(default_factory=dict)
    #: The statement last stored or moved to the end of ``statements``: still the last one while it is in there
    #: (it is never put back once removed; a Parse makes a new one).
    _newest: PreparedStatement | None = None
    _statement_chars: int = 0  # SQL held by ``statements``; an upper bound (Close is not subtracted)
    _shared_context: SessionContext | None = None  # a snapshot of ``context`` for query records
    _first: int = 0  # where the queue starts in ``pending`` (see _head)
    #: The last row decoder made (message detail), and for what: description, result formats, value context.
    _row_decoded: tuple[m.RowDescription, tuple[int, ...] | None, ValueContext, RowDecoder] | None = None
    #: Plain successes fill a copy of their layout (see record_layout); False: every
    #: record is made the general way (tests/test_statement_facts.py compares the two).
    plain_layouts: bool = True

    def __init__(
        self,
        options: TrackerOptions,
        context: dict[str, Any],
        value_context: ValueContext | None = None,
        max_pending: int = MAX_PENDING,
    ) -> None:
        """Every field at its declared default, written out rather than the dataclass's generated ``__init__``.

        Compiled, the generated one stays interpreted and sets each of the 24
        native attributes generically: ~14k instructions per query-detail
        connection (callgrind), where this one is native. tests/test_statement_tracker_init.py
        holds it to the declared defaults.
        """
        self.options = options
        self.context = context
        self.value_context = ValueContext() if value_context is None else value_context
        self.max_pending = max_pending
        self.statements = OrderedDict()
        self.portals = {}
        self.pending = []
        self.held = []
        self.outbox = []
        self.transaction_status = None
        self.status = None
        self.executed = 0
        self.in_scope = True
        self.orphan = None
        self.untracked = None
        self.unlogged = 0
        self.transaction = ImplicitTransaction()
        self._group_start = None
        self._decoders = {}
        self._newest = None
        self._statement_chars = 0
        self._shared_context = None
        self._first = 0
        self._row_decoded = None
        self.plain_layouts = True

    def context_changed(self) -> None:
        """The owner changed ``context``: the next query record takes a new snapshot of it."""
        self._shared_context = None

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
        if self.outbox:
            out, self.outbox = self.outbox, []
            return out
        return []

    def _expect(self, item: Expected) -> bool:
        """Queue what a request expects; False (and counted only) past the bound."""
        if self.untracked is None:
            pending = self.pending
            if self._first >= _ANSWERED_KEPT:  # never answered all (pipelining): the answered ones go now
                del pending[: self._first]
                self._first = 0
            if len(pending) - self._first < self.max_pending:
                pending.append(item)
                return True
            self.untracked = 0
            self.outbox.append(
                Record(
                    SESSION_ANOMALY,
                    "warning",
                    {
                        "session": self.context.get("session"),
                        "kind": "pending_limit",
                        "reason": f"more than {self.max_pending} requests await responses (the client is not reading)",
                        "action": "statements are counted, not logged, until the server has answered them all",
                    },
                )
            )
        if isinstance(item, (SimpleQuery, ExpectSync, ExpectFunction)):
            self.untracked += 1
        return False

    def _on_oversized(self, msg: m.Oversized, now: float) -> None:
        # A statement too long to buffer still gets its responses paired.
        text = f"<{msg.length}-byte {msg.expected} not shown: exceeds max_frame>"
        if msg.expected == "Query":
            self._expect(SimpleQuery(text, None, now))
        elif msg.expected == "Parse":
            self.parse("", text, (), now)

    # The requests of a statement by their fields: the query-detail hot loop reads
    # these straight from the frame (pgproxy.protocol.decoding's read_... functions)
    # without building the message; the _on_... handlers take the message's fields.

    def _on_query(self, msg: m.Query, now: float) -> None:
        self.query(msg.query, now)

    def query(self, sql: str, now: float) -> None:
        """A Query: one or more statements, answered by ReadyForQuery."""
        if self.untracked is not None:
            self._expect(_SYNC)  # counted as one request
            return
        analyzer = self.options.analyzer
        parts = analyzer.split(sql) if analyzer is not None else split_statements(sql)
        offsets = _offsets(sql, parts) if parts is not None and len(parts) > 1 else None  # one part: none, no call
        sq = SimpleQuery(sql, parts, now, offsets)
        if analyzer is not None and parts is not None and len(parts) == 1 and self._first == len(self.pending):
            # Analyzed now, while the server works on it, rather than when its answer is
            # recorded: between that answer's arrival and the client's next request (one
            # client: pgbench -S), the proxy's work on the answer delays the next request
            # (~2.9k of the ~22k instructions after an answer is relayed, compiled, callgrind).
            # Only a Query nothing waits before: one that will get its record even if the
            # session ends first (``interrupted``), so the analyzer counts each statement once
            # as before. The record asks for the same text's analysis (_simple_execution).
            only = parts[0]
            if only and only[0] != "<":  # as _record and text_fields ask
                analysis = sq.analysis = analyzer.analyze(only)
                if self.plain_layouts:
                    # Its Execution and its record's fields too (see Execution.plain), while the server works.
                    exe = sq.first = Execution("simple", only, now)
                    exe.analysis = analysis
                    layout = exe.layout = analysis_layout(analysis)
                    opts = exe.options = self.options
                    plain = exe.plain = (
                        layout.copy()
                    )  # see Execution.plain; written out here and below: a call costs ~1.5k instructions pure
                    plain["protocol"] = "simple"
                    plain["db.query.text"] = (
                        truncate(analysis.normalized, opts.max_sql_chars)
                        if opts.text_mode is _NORMALIZED
                        else opts.redaction.sql(only, opts.max_sql_chars)
                    )
        self._expect(sq)

    def _on_parse(self, msg: m.Parse, now: float) -> None:
        self.parse(msg.statement, msg.query, msg.parameter_types, now)

    def parse(self, name: str, sql: str, parameter_types: tuple[int, ...], now: float) -> None:
        """A Parse: a prepared statement ``name`` (empty: the unnamed one)."""
        if self.untracked is not None:
            return
        if self._group_start is None:  # the first request of a group (see _group_start)
            self._group_start = now
        stmt = PreparedStatement(name, sql, parameter_types)
        replaced = self.statements.get(name)
        if replaced is not None and replaced.facts is not None and replaced.sql == sql:
            # The same text again (pgbench -M extended parses the unnamed statement for every
            # execution): its facts are the text's, so the new statement takes them instead of
            # looking them up by text in FACTS (hashing the new text, ~1.2k instructions, compiled).
            stmt.facts = replaced.facts
        self._store_statement(stmt, replaced)
        self._expect(stmt)

    def _on_bind(self, msg: m.Bind, now: float) -> None:
        self.bind(msg.portal, msg.statement, msg.parameter_formats, msg.parameters, msg.result_formats, now)

    def bind(
        self,
        portal: str,
        statement: str,
        parameter_formats: tuple[int, ...],
        parameters: tuple[bytes | None, ...],
        result_formats: tuple[int, ...],
        now: float,
    ) -> None:
        """A Bind: ``statement``'s parameters bound into ``portal``."""
        if self.untracked is not None:
            return
        if self._group_start is None:  # the first request of a group (see _group_start)
            self._group_start = now
        bound = self._bind(portal, statement, parameter_formats, parameters, result_formats)
        replaced = self.portals.get(portal)
        if replaced is not None and replaced.suspended is not None:
            # Binding a portal's name again drops the old portal (the unnamed
            # one always; asyncpg's fetchrow inside a transaction leaves it so).
            self._finish_suspended(replaced)
        self.portals[portal] = bound
        self._expect(bound)

    def _on_describe(self, msg: m.Describe, now: float) -> None:
        self.describe(msg.kind, msg.name, now)

    def describe(self, kind: str, name: str, now: float) -> None:
        """A Describe of a prepared statement (``kind`` S) or a portal (P)."""
        if self.untracked is not None:
            return
        if self._group_start is None:  # the first request of a group (see _group_start)
            self._group_start = now
        target = self.statements.get(name) if kind == "S" else self.portals.get(name)
        self._expect(ExpectDescribe(target))

    def _on_execute(self, msg: m.Execute, now: float) -> None:
        self.execute(msg.portal, now)

    def execute(self, portal_name: str, now: float) -> None:
        """An Execute of a portal: the statement that becomes a ``query`` event."""
        if self.untracked is not None:
            return
        self._expect(self._execution(portal_name, now))

    def portal_tail(
        self,
        now: float,
        describe: Record | None = None,
        execute: Record | None = None,
        sync: Record | None = None,
    ) -> None:
        """libpq's Describe, Execute and Sync of the unnamed portal, as ``describe``, ``execute`` and ``sync`` take them.

        What libpq sends after every Bind (pgbench -M extended and prepared,
        psycopg, most drivers): one call that checks the pending bound once
        and appends the three, instead of three calls each through
        :meth:`_expect`. Near the bound (or untracked) the three calls take
        them, so a session at its limit counts them as before.
        tests/test_statement_tail.py holds it to the three calls.

        ``describe``, ``execute``, ``sync``: message detail's three message
        events, one for each request; each goes to the outbox
        (:meth:`take_released`) right after its request is taken, behind
        whatever that request released, so the caller takes the tail's records
        in one list, in the three calls' order. Three arguments and three
        appends, not a tuple and ``outbox += kept``: compiled, list += tuple is
        a generic call and the caller's tuple one more object per statement.
        """
        if self.untracked is None:
            pending = self.pending
            if self._first >= _ANSWERED_KEPT:  # as _expect: the answered ones go now
                del pending[: self._first]
                self._first = 0
            if len(pending) - self._first + 3 <= self.max_pending:
                # (describe's start of a group is not needed: with none started, the Execution starts ``now``)
                pending.append(ExpectDescribe(self.portals.get("")))
                pending.append(self._execution("", now))  # ends the group (_group_start None), as sync does
                pending.append(_SYNC)
                if describe is not None and execute is not None and sync is not None:
                    outbox = self.outbox  # nothing released in between: the three together
                    outbox.append(describe)
                    outbox.append(execute)
                    outbox.append(sync)
                return
        self.describe("P", "", now)
        if describe is not None:
            self.outbox.append(describe)
        self.execute("", now)
        if execute is not None:
            self.outbox.append(execute)
        self.sync()
        if sync is not None:
            self.outbox.append(sync)

    def _execution(self, portal_name: str, now: float) -> Execution:
        """What an Execute of ``portal_name`` expects: its statement's Execution, counted (``executes``)."""
        portal = self.portals.get(portal_name)
        started = self._group_start if self._group_start is not None else now
        self._group_start = None
        if portal is not None and portal.suspended is not None:
            exe = portal.suspended
            portal.suspended = None
        elif portal is not None:
            statement = portal.statement
            # Positional (statement, portal, parameters, index, description, result_formats, source):
            # keyword arguments are matched by name at every call (pure Python).
            exe = Execution(
                "extended",
                portal.sql,
                started,
                statement.name if statement else None,
                portal_name,
                portal.parameters,
                None,
                portal.description,
                portal.result_formats,
                portal,
            )
            facts = statement.facts if statement is not None and self.plain_layouts else None
            if (
                facts is not None
                and facts.options is self.options
                and statement is not None
                and portal.sql is statement.sql
            ):
                # A statement whose text's facts are known (executed before): its record's fields
                # now (see Execution.plain). The record still asks statement_facts, which counts the use.
                statement_name = exe.statement
                layout = facts.layouts[(2 if statement_name else 0) + (1 if portal_name else 0)]  # see record_layout
                if layout is None:
                    layout = facts.record_layout(bool(statement_name), bool(portal_name))
                plain = exe.plain = layout.copy()  # see Execution.plain
                exe.layout = layout
                exe.options = self.options
                plain["protocol"] = "extended"
                if statement_name:
                    plain["statement"] = statement_name
                if portal_name:
                    plain["portal"] = portal_name
                plain["parameters"] = exe.parameters
        else:
            exe = Execution("extended", None, started, portal=portal_name)
        exe.executes += 1
        return exe

    def _on_close(self, msg: m.Close, now: float) -> None:
        if self.untracked is not None:
            return
        if self._group_start is None:  # the first request of a group (see _group_start)
            self._group_start = now
        self._expect(ExpectClose(msg.name, msg.kind == "P"))

    def _on_sync(self, msg: m.Sync, now: float) -> None:
        self.sync()

    def sync(self) -> None:
        """A Sync: its ReadyForQuery ends the extended-query cycle."""
        self._group_start = None
        self._expect(_SYNC)

    def _on_function_call(self, msg: m.FunctionCall, now: float) -> None:
        if self.untracked is not None:
            self._expect(_SYNC)
            return
        args = [self._loggable_param(raw, 0, msg.argument_format(i), None) for i, raw in enumerate(msg.arguments)]
        exe = Execution("function", f"<function call oid={msg.function_oid}>", now, parameters=args)
        self._expect(ExpectFunction(exe))

    def _store_statement(self, stmt: PreparedStatement, replaced: PreparedStatement | None) -> None:
        """Keep ``stmt`` as the most recently used under its name (``replaced``: the one it had)."""
        statements = self.statements
        if replaced is not None and replaced is not self._newest:
            del statements[stmt.name]  # to be put back at the end
        # else a new name, or the name's entry is the newest (the last) already: replacing its value in
        # place keeps the order a removal and insertion would (an OrderedDict pop cost ~800 instructions).
        statements[stmt.name] = stmt
        self._newest = stmt
        while len(statements) > self.options.max_prepared_statements:
            statements.popitem(last=False)
        self._statement_chars += len(stmt.sql)
        if self._statement_chars > self.options.max_prepared_bytes:
            # Bounded by size too (issue 8): recount exactly, then forget the least recently used.
            held = sum(len(s.sql) for s in statements.values())
            while held > self.options.max_prepared_bytes and len(statements) > 1:
                _name, old = statements.popitem(last=False)
                held -= len(old.sql)
            self._statement_chars = held

    def _bind(
        self,
        portal: str,
        statement: str,
        parameter_formats: tuple[int, ...],
        parameters: tuple[bytes | None, ...],
        result_formats: tuple[int, ...],
    ) -> Portal:
        stmt = self.statements.get(statement)
        if stmt is not None and stmt is not self._newest:
            # Recently used now (``statements`` is an LRU). A session binding the statement it used
            # last (pgbench -S: always) skips the OrderedDict method call (~400 instructions, compiled).
            self.statements.move_to_end(statement)
            self._newest = stmt
        sql = stmt.sql if stmt else None
        types = stmt.parameter_types if stmt else ()
        names: Mapping[int, str] = _NO_NAMES
        if stmt is not None and sql and parameters:
            facts = statement_facts(self.options, stmt)
            if facts is not None:
                names = facts.sensitive_names
            else:
                analyzer = self.options.analyzer
                names = analyzer.parameter_names(sql) if analyzer else parameter_names(sql)
        shown = self.options.redaction.parameters is _SHOW_PARAMETERS
        params: list[Any] = []
        # m.format_code's rules, its call per parameter only for one code per parameter.
        fmt = parameter_formats[0] if len(parameter_formats) == 1 else 0
        per_parameter = len(parameter_formats) > 1
        for i, raw in enumerate(parameters):
            oid = types[i] if i < len(types) else 0
            if per_parameter:
                fmt = m.format_code(parameter_formats, i)
            name = names.get(i + 1) if names else None
            if shown and name is None and raw is not None and (fmt == 0 or fmt == 1) and self.plain_layouts:
                params.append(self._shown_param(raw, oid, fmt))
            else:
                params.append(self._loggable_param(raw, oid, fmt, name))
        description = stmt.description if stmt else None
        return Portal(portal, stmt, sql, params, result_formats, description)

    def _shown_param(self, raw: bytes, oid: int, fmt: int) -> Any:
        """:meth:`_loggable_param` of a value shown as decoded (no name, ``parameters = "show"``), format 0 or 1.

        An integer in text and text itself decode with one C call here (see
        :func:`~pgproxy.protocol.values.plain_decoding`), not through the guarded
        decoder (~1.5k instructions a parameter, compiled); the decoder table
        holds a mark for them. A value that call refuses takes the general way.
        """
        decoders = self._decoders
        key = oid * 2 + fmt
        decode = decoders.get(key)
        if decode is None:
            kind = plain_decoding(oid, fmt)
            decode = decoders[key] = (
                _INTEGER_MARK
                if kind == PLAIN_INTEGER
                else _TEXT_MARK
                if kind == PLAIN_TEXT
                else decoder_for(oid, fmt, self.value_context)
            )
        if decode is _INTEGER_MARK:
            try:
                return int(raw)
            except Exception:  # not an integer: the decoder's placeholder, the general way
                return self._loggable_param(raw, oid, fmt, None)
        if decode is _TEXT_MARK:
            try:
                text = raw.decode(self.value_context.encoding, "backslashreplace")
            except Exception:
                return self._loggable_param(raw, oid, fmt, None)
            return cap_text(text, self.options.max_value_chars)
        return self._loggable_param(raw, oid, fmt, None)

    def _loggable_param(self, raw: bytes | None, oid: int, fmt: int, name: str | None) -> Any:
        policy = self.options.redaction
        if raw is None:
            return None
        if policy.is_sensitive(name):
            return policy.parameter(None, raw, name)
        if fmt == 0 or fmt == 1:
            decode = self._decoders.get(oid * 2 + fmt)
            if decode is None:
                decode = self._decoders[oid * 2 + fmt] = decoder_for(oid, fmt, self.value_context)
            elif decode is _INTEGER_MARK or decode is _TEXT_MARK:  # see _shown_param
                decode = decoder_for(oid, fmt, self.value_context)
        else:  # a format code that does not exist: its placeholder says which
            decode = decoder_for(oid, fmt, self.value_context)
        value = decode(raw)
        if type(value) is dict and DECODER_FAILURE in value:
            self.outbox.append(decoder_failure_record(self.context.get("session"), oid, value))
        return policy.parameter(truncate(value, self.options.max_value_chars), raw, name)

    # ------------------------------------------------------------------ backend

    def current_execution(self) -> Execution | None:
        """The statement whose results are arriving now, if any."""
        pending = self.pending
        first = self._first
        try:
            head = pending[first]
        except IndexError:  # nothing awaits an answer
            return self.orphan
        if isinstance(head, Execution):  # an Execute's rows (the usual answer: no walk)
            return head
        if isinstance(head, SimpleQuery):  # a Query's rows (no walk either)
            return head.current
        for index in range(first, len(pending)):
            item = pending[index]
            if isinstance(item, SimpleQuery):
                return item.current
            if isinstance(item, Execution):
                return item
            if isinstance(item, ExpectFunction):
                return item.exe
            if isinstance(item, ExpectSync):
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
        description = exe.description
        if exe.decoder is None and description is not None:
            # The last one again for the very same description, formats and context (a statement run
            # again is described by the same shared, frozen RowDescription: message detail keeps it):
            # _row_decoder's cache hashes its key, and a frozen dataclass's hash (the description's,
            # each column's, the value context's) is computed anew each time, in Python (~3 us pure).
            last = self._row_decoded
            if (
                last is not None
                and last[0] is description
                and last[1] == exe.result_formats
                and last[2] is self.value_context
            ):
                exe.decoder = last[3]
            else:
                decoder = exe.decoder = _row_decoder(description, exe.result_formats, self.value_context)
                self._row_decoded = (description, exe.result_formats, self.value_context, decoder)
        return exe.decoder

    def backend(self, msg: m.Message, now: float) -> list[Record]:
        """Account for one backend message (not DataRow); returns released records."""
        handler = BACKEND_HANDLERS.get(type(msg))
        if handler is None:
            return []
        return handler(self, msg, now)

    @property
    def awaiting(self) -> bool:
        """Requests went to the server that it has not answered (queued or only counted)."""
        return len(self.pending) > self._first or bool(self.untracked)

    def _head(self) -> Expected | None:
        """What the server answers next: the head of the queue, ``pending[_first]``, if any.

        The queue is a list and an index, not a deque: the compiled build calls
        a deque's methods generically (~230 instructions each for ``append``,
        ``popleft`` and ``[0]``, five of each per pgbench -M extended statement,
        callgrind), a list's natively. Taking the head is ``_first += 1``; the
        answered items before ``_first`` are dropped all at once: at the
        ReadyForQuery that finds everything answered (:meth:`ready`), else when a
        request is queued behind _ANSWERED_KEPT of them (:meth:`_expect`).
        """
        try:  # no length test first: the interpreter's way to the item is shortest so
            return self.pending[self._first]
        except IndexError:
            return None

    def _pop_head(self) -> Expected:
        """Take the head of the queue (there is one)."""
        first = self._first
        self._first = first + 1
        return self.pending[first]

    def _waiting(self) -> list[Expected]:
        """The queue, a copy (for the paths that walk it: errors, the end)."""
        return self.pending[self._first :]

    def _on_step_complete(self, msg: m.Message, now: float) -> list[Record]:
        return self.step_complete()

    def step_complete(self) -> list[Record]:
        """A ParseComplete, BindComplete or CloseComplete answered the head of the queue."""
        try:  # self._head(), written out: the answers of every statement take this way
            head: Expected | None = self.pending[self._first]
        except IndexError:
            head = None
        if head is None:
            return []
        if isinstance(head, (PreparedStatement, Portal)):  # a Parse's, a Bind's
            self._first += 1
        elif isinstance(head, ExpectClose):
            self._first += 1
            self._closed(head)
        return []

    def _on_parameter_description(self, msg: m.ParameterDescription, now: float) -> list[Record]:
        head = self._head()
        if isinstance(head, ExpectDescribe) and isinstance(head.target, PreparedStatement):
            stmt = head.target
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
        try:  # self._head(), written out: the answers of every statement take this way
            head: Expected | None = self.pending[self._first]
        except IndexError:
            head = None
        if head is None:
            if self.untracked is None:
                # Results whose request we never saw (a capture joined mid-stream).
                self.orphan = Execution("unknown", None, now, description=description)
        elif isinstance(head, ExpectDescribe):
            self._first += 1
            target = head.target
            # Each class's own attribute, set natively: the union's is a generic setattr (~180 instructions).
            if isinstance(target, Portal):  # noqa: SIM114
                target.description = description
            elif target is not None:
                target.description = description
        elif isinstance(head, SimpleQuery):
            exe = head.current  # self._simple_current(head), written out
            if exe is None:
                exe = head.current = self._simple_execution(head, head.index)
            exe.description = description
            exe.decoder = None

    def command_complete(self, msg: m.CommandComplete, now: float) -> list[Record]:
        """A CommandComplete: the statement at the head of the queue succeeded; the records it releases."""
        return self._complete(now, _OK, msg)

    def _on_empty_query(self, msg: m.Message, now: float) -> list[Record]:
        return self._complete(now, _EMPTY)

    def _on_portal_suspended(self, msg: m.Message, now: float) -> list[Record]:
        head = self._head()
        if isinstance(head, Execution):
            self._first += 1
            head.suspended_at = now
            if head.source is not None:
                head.source.suspended = head
        return []

    def _on_copy_response(self, msg: m.Message, now: float) -> list[Record]:
        head = self._head()
        copying = self._simple_current(head) if isinstance(head, SimpleQuery) else self.current_execution()
        if copying is not None:
            copying.copy = _COPY_DIRECTION[type(msg)]
        return []

    def _on_function_call_response(self, msg: m.FunctionCallResponse, now: float) -> list[Record]:
        head = self._head()
        if isinstance(head, ExpectFunction):
            head.exe.bytes += len(msg.value or b"")
            self._finish(head.exe, now, _OK)
        return []

    def _on_notice(self, msg: m.NoticeResponse, now: float) -> list[Record]:
        return [self._notice(msg)]

    def _on_notification(self, msg: m.NotificationResponse, now: float) -> list[Record]:
        return [self._notification(msg)]

    def _simple_current(self, sq: SimpleQuery) -> Execution:
        if sq.current is None:
            sq.current = self._simple_execution(sq, sq.index)
        return sq.current

    def _simple_execution(self, sq: SimpleQuery, index: int) -> Execution:
        if index == 0 and sq.first is not None:  # made on arrival (see query): taken once
            exe = sq.first
            sq.first = None
            return exe
        if sq.parts is not None and index < len(sq.parts):
            sql = sq.parts[index]
            shown_index = index if len(sq.parts) > 1 else None
        else:
            sql = sq.sql
            shown_index = index if (sq.parts is None or index > 0) else None
        exe = Execution("simple", sql, sq.started, None, None, None, shown_index)  # positional: see execute()
        if index == 0 and sq.analysis is not None:  # of sq.parts[0], this sql (see query)
            exe.analysis = sq.analysis
        return exe

    def _complete(self, now: float, outcome: Outcome, tag: m.CommandComplete | None = None) -> list[Record]:
        try:  # self._head(), written out: the answers of every statement take this way
            head: Expected | None = self.pending[self._first]
        except IndexError:
            head = None
        if head is None:
            if self.untracked is not None:
                self.executed += 1
                self.unlogged += 1
                return []
            orphan, self.orphan = self.orphan, None
            if orphan is not None:
                self._finish(orphan, now, outcome, tag)
            return []
        if isinstance(head, SimpleQuery):
            exe = head.current  # self._simple_current(head), written out, and taken
            if exe is None:
                exe = self._simple_execution(head, head.index)
            else:
                head.current = None
            head.index += 1
            head.finished.append(Finished(exe, outcome, tag))
        elif isinstance(head, Execution):
            self._first += 1
            self._finish(head, now, outcome, tag)
        return self.take_released() if self.outbox else []

    def _error(self, err: m.ErrorResponse, now: float) -> list[Record]:
        head = self._head()
        if head is None:
            return []
        if isinstance(head, SimpleQuery):
            self._simple_error(head, err)
            return []
        if isinstance(head, ExpectFunction):
            head.failed = True  # ReadyForQuery still ends the cycle
            self._finish(head.exe, now, _ERROR, error=err)
            return []
        if isinstance(head, ExpectSync):
            # An error answering Sync itself: the implicit commit failed (a
            # deferred constraint, a serialization failure). ReadyForQuery follows.
            exe = Execution("extended", "<implicit commit at Sync>", self._group_start or now)
            self.transaction.failed()
            self._finish(exe, now, _ERROR, error=err)
            return []
        # Extended protocol: the failing step, then everything up to Sync is skipped.
        failed = self._pop_head()
        self.transaction.failed()
        subject: PreparedStatement | Portal | None = None
        if isinstance(failed, Execution):
            self._finish(failed, now, _ERROR, error=err)
        else:
            if isinstance(failed, PreparedStatement):  # its Parse failed
                subject = failed
                _forget(self.statements, subject)
            elif isinstance(failed, Portal):  # its Bind failed
                subject = failed
                _forget(self.portals, subject)
            elif isinstance(failed, ExpectDescribe):
                subject = failed.target
            dependent = self._dependent_execute(subject) if subject is not None else None
            if dependent is not None:
                # One statement, one event: the Execute that needed the failed
                # step carries the error, with its SQL and parameters.
                self._remove_waiting(dependent)
                self._finish(dependent, now, _ERROR, error=err)
            else:
                sql = subject.sql if subject is not None else None
                params = subject.parameters if isinstance(subject, Portal) else None
                name = subject.name or None if isinstance(subject, PreparedStatement) else None
                exe = Execution("extended", sql, self._group_start or now, statement=name, parameters=params)
                self._finish(exe, now, _ERROR, error=err)
        self._group_start = None
        while self._first < len(self.pending) and not isinstance(self.pending[self._first], ExpectSync):
            skipped = self._pop_head()
            if isinstance(skipped, Execution):
                self._finish(skipped, now, _SKIPPED)
            elif isinstance(skipped, PreparedStatement):
                _forget(self.statements, skipped)
            elif isinstance(skipped, Portal):
                _forget(self.portals, skipped)
        return self.take_released() if self.outbox else []

    def _dependent_execute(self, subject: PreparedStatement | Portal) -> Execution | None:
        """The first Execute before the next Sync that runs ``subject`` (a statement or portal)."""
        for item in self._waiting():
            if isinstance(item, ExpectSync):
                return None
            if isinstance(item, Execution):
                portal = item.source
                if portal is not None and (portal is subject or portal.statement is subject):
                    return item
        return None

    def _remove_waiting(self, item: Expected) -> None:
        """Take ``item`` (that very object, waiting in the queue) out of the queue."""
        pending = self.pending
        for index in range(self._first, len(pending)):
            if pending[index] is item:
                del pending[index]
                return

    def _simple_error(self, sq: SimpleQuery, err: m.ErrorResponse) -> None:
        """An error ends a simple Query: attribute it, and the statements after it never ran.

        PostgreSQL parses the whole string before running any of it, so a
        syntax error in a later statement stops them all; the error's
        position (counted in characters from the start of the string) says
        which statement it is in.
        """
        culprit = sq.index
        position = err.get("P")
        if position is not None and position.isdigit() and not sq.finished:
            found = sq.part_at(int(position))
            if found is not None and found > culprit:
                culprit = found
        exe = sq.current if culprit == sq.index and sq.current is not None else self._simple_execution(sq, culprit)
        for index in range(sq.index, culprit):
            sq.finished.append(Finished(self._simple_execution(sq, index), _SKIPPED))
        sq.finished.append(Finished(exe, _ERROR, error=err))
        for index in range(culprit + 1, sq.size if sq.parts else culprit + 1):
            sq.finished.append(Finished(self._simple_execution(sq, index), _SKIPPED))
        sq.current = None
        sq.index = sq.size
        sq.failed = True

    def _closed(self, item: ExpectClose) -> None:
        if not item.portal:
            self.statements.pop(item.name, None)
            return
        portal = self.portals.pop(item.name, None)
        if portal is not None:
            self._finish_suspended(portal)

    def _finish_suspended(self, portal: Portal) -> None:
        """A suspended portal was closed: its statement is complete as far as the client wanted."""
        exe, portal.suspended = portal.suspended, None
        if exe is not None:
            self._finish(exe, exe.suspended_at or exe.started, _OK, portal_suspended=True)

    def _ready(self, msg: m.ReadyForQuery, now: float) -> list[Record]:
        return self.ready(msg.status, now)

    def ready(self, status: str, now: float) -> list[Record]:
        """A ReadyForQuery with transaction ``status`` (I, T, E) ended a cycle: the records it releases."""
        answered = False
        pending = self.pending
        first = self._first
        while first < len(pending):
            item = pending[first]
            first += 1
            self._first = first
            if isinstance(item, SimpleQuery):
                self._release_query(item, now)
                answered = True
                break
            if item is _SYNC or isinstance(item, (ExpectSync, ExpectFunction)):  # _SYNC: the usual one, no tuple
                answered = True
                break
            if isinstance(item, Execution):
                self._finish(item, now, _SKIPPED)
        if not answered and self.untracked is not None:
            self.untracked -= 1
            if self.untracked <= 0 and first == len(pending):
                self.untracked = None  # drained: pair requests and responses again
        if first == len(pending) and first:  # all answered: the list starts over (see _head)
            pending.clear()
            self._first = 0
        if status != self.status:  # else ``transaction_status`` says it already
            self.status = status
            self.transaction_status = TRANSACTION_STATUS.get(status, status)
        if status == "I" and self.portals:
            # Portals live until the end of their transaction ("Extended Query").
            for portal in self.portals.values():
                if portal.suspended is not None:
                    self._finish_suspended(portal)
            self.portals.clear()
        # The implicit transaction ends (an explicit block goes on while the status says so).
        transaction = self.transaction
        transaction.explicit = status == "T" or status == "E"
        if transaction.uncommitted:
            transaction.uncommitted.clear()
        held, self.held = self.held, []
        for record in held:
            record.own["transaction_status"] = self.transaction_status
        if self.outbox:
            return self.take_released() + held
        return held

    def _release_query(self, sq: SimpleQuery, now: float) -> None:
        """A simple Query's ReadyForQuery: log its statements, with what is known of their timing."""
        if sq.current is not None:  # answered without CommandComplete (a COPY cut short)
            sq.finished.append(Finished(sq.current, _OK))
            sq.current = None
        finished = sq.finished
        parts = sq.parts
        if len(finished) == 1 and (len(parts) if parts else 1) == 1:
            # One statement (nearly every Query): _log_query's way for it, written out (a call fewer).
            sq.finished = []
            item = finished[0]
            self._finish(item.exe, now, item.outcome, item.tag, item.error)
            return
        self._log_query(sq, now - sq.started, now)

    def _log_query(self, sq: SimpleQuery, total: float | None, now: float) -> None:
        """Log a simple Query's finished statements; ``total`` is its duration when its ReadyForQuery came."""
        finished, sq.finished = sq.finished, []
        parts = sq.parts
        size = len(parts) if parts else len(finished)  # sq.size when it has parts: no property call
        if size <= 1:
            for item in finished:
                self._finish(item.exe, now, item.outcome, item.tag, item.error)
            return
        # Walk the Query's transaction with the records as they are made, so
        # that an error can mark the statements it rolled back.
        transaction = ImplicitTransaction(explicit=self.status in ("T", "E"))
        last = len(finished) - 1
        for number, item in enumerate(finished):
            record = self._finish(
                item.exe,
                now,
                item.outcome,
                item.tag,
                item.error,
                batch=Batch(size, total, number == last),
            )
            if item.outcome is _ERROR:
                transaction.failed()
            elif item.outcome is _OK:
                transaction.completed(item.tag.command if item.tag else None, item.exe.sql, record)

    # ------------------------------------------------------------------ events

    def _finish(
        self,
        exe: Execution,
        now: float,
        outcome: Outcome,
        tag: m.CommandComplete | None = None,
        error: m.ErrorResponse | None = None,
        *,
        portal_suspended: bool = False,
        batch: Batch | None = None,
    ) -> Record | None:
        """Make the event of a statement (held until ReadyForQuery), ``logged`` as ``query.filter`` decides.

        Statements of a multi-statement Query (``batch``) are judged by the
        Query's duration; only the last one shows it.
        """
        record = self._record(exe, now, outcome, tag, error, portal_suspended, batch)
        if exe.protocol == "extended" and outcome is _OK and not portal_suspended:
            # Kept up to date whether or not the event is logged (filters, scope).
            self.transaction.completed(tag.command if tag else None, exe.sql, record)
        return record

    def _record(
        self,
        exe: Execution,
        now: float,
        outcome: Outcome,
        tag: m.CommandComplete | None,
        error: m.ErrorResponse | None,
        portal_suspended: bool,
        batch: Batch | None,
    ) -> Record:
        if outcome is not _SKIPPED:
            self.executed += 1
        opts = self.options
        if batch is None:
            duration_ms = round_ms((now - exe.started) * 1000.0)
        else:
            duration_ms = round_ms(batch.total * 1000.0) if batch.total is not None else 0.0
        if batch is None:
            shows_duration = outcome is not _SKIPPED
        else:  # the Query's duration, once, whatever became of its last statement
            shows_duration = batch.last and batch.total is not None
        slow = shows_duration and duration_ms >= opts.slow_query_ms
        failed = outcome is _ERROR
        sql = exe.sql
        # Every statement makes its record (metrics and statistics count them all); the filter
        # only decides whether the log writes it. Out of scope: no draw is spent.
        query_filter = opts.query_filter
        if query_filter.unsampled:  # keep()'s answer without its call: only the duration's test is left
            logged = self.in_scope and (failed or slow or not duration_ms < query_filter.min_duration_ms)
        else:
            logged = self.in_scope and query_filter.keep(sql, duration_ms, failed, slow, opts.draw)
        context = self._shared_context
        if context is None:
            context = self._shared_context = SessionContext(dict(self.context))
        source = exe.source
        stmt = source.statement if source is not None else None
        facts = statement_facts(opts, stmt) if stmt is not None and sql is stmt.sql else None
        rows = tag.rows if tag is not None and tag.rows is not None else exe.rows
        if (
            self.plain_layouts
            and tag is not None
            and outcome is _OK
            and error is None
            and batch is None
            and not slow
            and not portal_suspended
            and exe.index is None
            and exe.copy is None
        ):
            # A plain success (nearly every record): the general way's fields below, filled into
            # a copy of their layout (see record_layout) where the statement has one.
            plain: dict[str, Any] | None = exe.plain
            layout: dict[str, Any] | None = None
            if plain is not None:  # filled in on the request's arrival (see Execution.plain): taken once
                exe.plain = None
                if exe.options is not opts:  # the options were reloaded meanwhile
                    plain = None
            if facts is not None and exe.executes == 1 and exe.parameters is not None:
                # A prepared statement's: its text's facts hold the layout.
                if plain is not None:
                    layout = exe.layout
                else:
                    statement = exe.statement
                    portal = exe.portal
                    layout = facts.layouts[(2 if statement else 0) + (1 if portal else 0)]  # see record_layout
                    if layout is None:
                        layout = facts.record_layout(bool(statement), bool(portal))
                    plain = layout.copy()
                    if statement:
                        plain["statement"] = statement
                    if portal:
                        plain["portal"] = portal
                    plain["parameters"] = exe.parameters
                    plain["protocol"] = exe.protocol
            elif (
                facts is None
                and sql
                and sql[0] != "<"
                and opts.analyzer is not None
                and exe.parameters is None
                and not exe.statement
                and not exe.portal
                and exe.executes <= 1
            ):
                # A simple Query's (pgbench -S): from its analysis's layout.
                if plain is not None:
                    layout = exe.layout
                else:
                    analysis = exe.analysis if exe.analysis is not None else opts.analyzer.analyze(sql)
                    layout = analysis_layout(analysis)
                    plain = layout.copy()
                    plain["db.query.text"] = (
                        truncate(analysis.normalized, opts.max_sql_chars)
                        if opts.text_mode is _NORMALIZED
                        else opts.redaction.sql(sql, opts.max_sql_chars)
                    )
                    plain["protocol"] = exe.protocol
            else:
                plain = None
            if plain is not None:
                plain["db.operation.name"] = tag.command
                plain["duration_ms"] = duration_ms
                plain["rows"] = rows
                plain["db.response.returned_rows"] = exe.rows
                plain["bytes"] = exe.bytes
                plain["command_tag"] = tag.tag
                record = Record(QUERY, "info", plain, logged, context, layout)
                held = self.held  # self._hold(record), written out
                held.append(record)
                if len(held) > MAX_HELD_EVENTS:
                    self.outbox += held
                    self.held = []
                return record
        # The statement's own fields; the session's are shared (SessionContext).
        fields = text_fields(opts, sql, tag, exe.analysis) if facts is None else known_text_fields(facts, tag)
        fields["protocol"] = exe.protocol
        if exe.statement:
            fields["statement"] = exe.statement
        if exe.portal:
            fields["portal"] = exe.portal
        if exe.index is not None:
            fields["statement_index"] = exe.index
        if batch is not None:
            fields["db.operation.batch.size"] = batch.size
        if exe.parameters is not None:
            fields["parameters"] = exe.parameters
        fields["outcome"] = outcome._value_  # the str itself: .value is a Python-level property
        if shows_duration:
            fields["duration_ms" if batch is None else "batch_duration_ms"] = duration_ms
        fields["rows"] = rows
        fields["db.response.returned_rows"] = exe.rows
        fields["bytes"] = exe.bytes
        if exe.executes > 1:
            fields["executes"] = exe.executes
        if portal_suspended:
            fields["portal_suspended"] = True
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
        return self._hold(Record(QUERY, level, fields, logged, context))

    def _hold(self, record: Record) -> Record:
        """Keep a query record until its ReadyForQuery; past MAX_HELD_EVENTS the held ones are released."""
        held = self.held
        held.append(record)
        if len(held) > MAX_HELD_EVENTS:
            self.outbox += held
            self.held = []
        return record

    def take_released(self) -> list[Record]:
        """Records released outside a ReadyForQuery (too many held, the pending bound)."""
        out, self.outbox = self.outbox, []
        return out

    def _notice(self, msg: m.NoticeResponse) -> Record:
        details = msg.named_fields()
        fields: dict[str, Any] = {"session": self.context.get("session")}
        fields.update(details)
        return Record(NOTICE, _NOTICE_LEVELS.get(msg.severity.upper(), "info"), fields)

    def _notification(self, msg: m.NotificationResponse) -> Record:
        fields = {
            "session": self.context.get("session"),
            "channel": msg.channel,
            "payload": truncate(msg.payload, self.options.max_value_chars),
            "sender_pid": msg.process_id,
        }
        return Record(NOTIFICATION, "info", fields)

    def interrupted(self, now: float) -> list[Record]:
        """The session ended: release held events, then report what was left unanswered.

        The statement the server was working on gets an ``interrupted`` event;
        those queued behind it are counted in that one event
        (``interrupted_statements``) rather than logged one by one, so a
        client that sent a flood of requests and vanished costs one line.
        Portals still suspended were really left open: ``suspended``.
        """
        first: Execution | None = None
        count = self.untracked or 0
        for item in self._waiting():
            exe: Execution | None = None
            if isinstance(item, SimpleQuery):
                sq = item
                self._log_query(sq, None, now)
                if not sq.failed:
                    exe = self._simple_current(sq)
                    count += sq.size - sq.index - 1
            elif isinstance(item, Execution):
                exe = item
            elif isinstance(item, ExpectFunction) and not item.failed:
                exe = item.exe
            if exe is not None:
                count += 1
                if first is None:
                    first = exe
        self.pending.clear()
        self._first = 0
        if first is not None:
            record = self._finish(first, now, _INTERRUPTED)
            if record is not None and count > 1:
                record.own["interrupted_statements"] = count
        for portal in self.portals.values():
            if portal.suspended is not None:
                exe = portal.suspended
                self._finish(exe, exe.suspended_at or now, _SUSPENDED)
        self.portals.clear()
        out = self.outbox + self.held
        self.outbox, self.held = [], []
        return out


_SYNC: Final = ExpectSync()
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
    m.CommandComplete: StatementTracker.command_complete,
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
