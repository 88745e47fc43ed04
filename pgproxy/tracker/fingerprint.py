"""What a SQL text is, according to PostgreSQL's own parser: fingerprint, operation, targets.

pgproxy sees every statement's text; PostgreSQL's grammar (libpg_query, through
``pglast``) turns it into what a developer hunting slow queries groups by:

- ``fingerprint``: libpg_query's fingerprint, which ignores literal values,
  ``IN`` list lengths, whitespace and comments, and depends on no server
  catalog, so the same query from any server version or sidecar aggregates;
- ``db.operation.name`` and ``db.query.summary`` (OpenTelemetry's "Generating a
  summary of the query": operations and their targets in text order, e.g.
  ``INSERT shipping_details SELECT orders``, at most 255 characters);
- ``db.collection.name`` when the statement touches exactly one table;
- the normalised text (every literal replaced by ``$n``).

Each distinct text is parsed once: results live in an LRU bounded by entries
and bytes. Texts with inline literals (``pgbench -M simple``, ORMs that inline
values) first go through a linear literal-stripping pass, so their ever-changing
literals map to one cache entry; an entry is shared that way only when the
parser replaced exactly the literals the stripping pass found (so no literal can
change the analysis). Text the parser rejects (newer syntax, garbage), text
too long to parse on the event loop, or a missing ``pglast`` fall back to the
lexical scanner of :mod:`pgproxy.tracker.sql`; every fallback is counted.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from pgproxy.tracker import sql as lexical
from pgproxy.tracker.records import truncate

#: OpenTelemetry: "SHOULD truncate the summary to 255 characters".
MAX_SUMMARY_CHARS: Final = 255
#: Texts longer than this are not parsed; the lexer describes them (counted as ``too_long``).
#: Parsing and describing cost ~0.25 ms per KiB of token-dense text (a long column list,
#: ``AND`` chain, ``IN`` list) and grow faster beyond 8 KiB: measured 2-4 ms at 8 KiB,
#: 11-43 ms at 32 KiB, where the lexer takes 0.2-11 ms (README, "Fingerprints and
#: statement statistics"). The limit bounds memory too: libpg_query's normalisation takes
#: ~8 KiB per list element while it runs (8 KiB of ``'a', ``: ~15 MiB, freed on return).
DEFAULT_MAX_PARSE_CHARS: Final = 8 * 1024
#: Longer Queries are split by the lexer. Splitting needs only the parser's scan, ~0.03 ms
#: per KiB (under 1 ms at 32 KiB), where the lexical splitter takes up to 0.4 ms per KiB.
DEFAULT_MAX_SPLIT_CHARS: Final = 32 * 1024
#: Longer texts the lexer describes are not masked either (their fingerprint hashes the text).
MAX_MASKED_CHARS: Final = 128 * 1024
#: Texts longer than this are analysed but not cached (they would evict many small ones).
DEFAULT_MAX_CACHED_CHARS: Final = 32 * 1024
#: libpg_query's normalisation takes time quadratic in the depth of nested subqueries
#: (200 levels, 1.8 KB of text: ~40 ms). Deeper texts get the lexer's ``?`` normalisation.
MAX_NESTED_SELECTS: Final = 32
DEFAULT_CACHE_ENTRIES: Final = 10_000
DEFAULT_CACHE_BYTES: Final = 32 * 1024 * 1024
#: Measured cost of one cache entry beyond its strings (dict slot, dataclass, field mappings): 100k distinct
#: texts grew RSS by 14 MiB for 10,000 entries.
_ENTRY_OVERHEAD: Final = 1300


class Source(enum.Enum):
    """Who described the statement."""

    PARSER = "parser"
    """PostgreSQL's grammar (libpg_query)."""
    LEXER = "lexer"
    """The lexical fallback: the parser rejected the text, it was too long, or pglast is missing."""


#: PostgreSQL's scanner matches a run of operator characters whole and then
#: backs off (``{operator}``, and ``xcstart`` = ``/*{op_chars}*`` with
#: ``yyless(2)``), so its time grows with the square of the run: 40 KB of
#: ``+`` or ``/*`` took libpg_query seconds, holding the event loop. Such
#: texts are described by the (linear) lexer instead.
_LONG_OPERATOR_RUN = re.compile(r"[-+*/<>=~!@#%^&|`?]{64}")


class FallbackReason(enum.Enum):
    """Why the lexer described a statement (counted as ``fallback.<reason>``)."""

    SYNTAX_ERROR = "syntax_error"
    TOO_LONG = "too_long"
    OPERATOR_RUN = "operator_run"
    PARSER_UNAVAILABLE = "parser_unavailable"
    PARSER_ERROR = "parser_error"
    """The library failed otherwise (text it cannot encode...)."""


@dataclass(frozen=True, slots=True)
class Analysis:
    """An immutable description of one statement text.

    Attributes:
        fingerprint: libpg_query's fingerprint (16 hex digits); for lexer
            fallbacks ``lexical:`` and a hash of the text with literals masked.
        operation: ``db.operation.name`` (``SELECT``, ``CREATE TABLE``...).
        summary: ``db.query.summary``.
        collection: ``db.collection.name`` when there is exactly one target.
        procedure: ``db.stored_procedure.name`` of a ``CALL``.
        normalized: the text with every literal replaced (``$n`` by the parser,
            ``?`` by the lexer).
        source: parser or lexer.
        fallback: why the lexer was used, if it was.
        targets: every table (and called procedure) named, in text order, once each.
        parameter_names: the column each ``$n`` is compared with, assigned to or
            inserted into (for redaction by name); parameters with no column are absent.
        fields: the ``query`` record fields this analysis adds (read-only).
    """

    fingerprint: str
    operation: str | None
    summary: str | None
    collection: str | None
    procedure: str | None
    normalized: str
    source: Source
    fallback: FallbackReason | None = None
    targets: tuple[str, ...] = ()
    parameter_names: Mapping[int, str] = field(default_factory=dict, compare=False)
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: The same fields as a plain dict: ``dict.update`` from it is twice as fast as from a mapping proxy.
    _record_fields: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        fingerprint: str,
        operation: str | None,
        summary: str | None,
        collection: str | None,
        procedure: str | None,
        normalized: str,
        source: Source,
        fallback: FallbackReason | None = None,
        targets: tuple[str, ...] = (),
        parameter_names: Mapping[int, str] | None = None,
    ) -> Analysis:
        """An analysis with its ``query`` record fields prepared once (absent values left out)."""
        fields: dict[str, Any] = {"fingerprint": fingerprint}
        if summary:
            fields["db.query.summary"] = summary
        if collection:
            fields["db.collection.name"] = collection
        if procedure:
            fields["db.stored_procedure.name"] = procedure
        return cls(
            fingerprint,
            operation,
            summary,
            collection,
            procedure,
            normalized,
            source,
            fallback,
            targets,
            MappingProxyType(dict(parameter_names or {})),
            MappingProxyType(fields),
            fields,
        )

    @property
    def weight(self) -> int:
        """Approximate bytes this analysis holds (for the cache's byte bound)."""
        return _ENTRY_OVERHEAD + len(self.normalized) + len(self.summary or "")


# --------------------------------------------------------------------------- literal stripping

_INTERESTING = re.compile(r"['\"$]|--|/\*|(?<![\w$])(?:\d|\.\d)")
_NUMBER = re.compile(
    r"0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?"
)
_COMMENT_EDGE = re.compile(r"/\*|\*/")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")
_IDENT_CHAR = re.compile(r"[\w$]")
#: _NUMBER where no identifier character precedes it. The pattern opens with one character class (the
#: look-behinds follow it) so the regex engine scans for candidate characters in C instead of attempting a
#: match at every position (it does that for a leading alternation of classes: ~35% slower on pgbench's text).
_BARE_NUMBER_PATTERN: Final = (
    r"[\d.](?<![\w$].)"
    r"(?:(?<=0)(?:[xX][0-9a-fA-F_]+|[oO][0-7_]+|[bB][01_]+)"
    r"|(?<=\d)[\d_]*(?:\.[\d_]*)?(?:[eE][-+]?\d+)?"
    r"|(?<=\.)\d[\d_]*(?:[eE][-+]?\d+)?)"
)
_BARE_NUMBER = re.compile(_BARE_NUMBER_PATTERN)
#: The same for ASCII text, where ``\d`` and ``\w`` mean the same with re.ASCII and the engine's class test is a
#: table lookup instead of a Unicode category lookup (another ~25% on pgbench's text).
_BARE_NUMBER_ASCII = re.compile(_BARE_NUMBER_PATTERN, re.ASCII)


def _plain(sql: str) -> bool:
    """No quote, dollar sign or comment anywhere: the text's structure is plain code.

    Five substring tests in C: about a quarter of one regex search for the same characters
    (runs twice per simple Query: splitting, then the literal key).
    """
    return "'" not in sql and '"' not in sql and "$" not in sql and "--" not in sql and "/*" not in sql


def _one_terminated(sql: str, end: int) -> bool:
    """Nothing but white space follows the text's first semicolon, at ``end`` (so it is the only one).

    What ``sql.rstrip().endswith(";") and sql.count(";") == 1`` says, without
    a stripped copy of the text and a count over all of it.
    tests/test_fingerprint.py holds the two together.
    """
    after = end + 1
    return after == len(sql) or sql[after:].isspace()


_STRING_MARK: Final = "\x00s"  # NUL never occurs in a protocol string, so keys cannot collide with real text
_NUMBER_MARK: Final = "\x00n"


def literal_key(sql: str) -> tuple[str, int] | None:
    """The text with string and numeric literals replaced by markers, and how many.

    Linear in the text: every step moves forward with ``str.find`` or an
    anchored regex, and nested comments are walked edge by edge. Quoted
    identifiers, dollar-quoted bodies and comments are kept verbatim (they
    are not literals the parser normalises). None when a quote or comment is
    left open (the text is then used as is).
    """
    if _plain(sql):
        # Nothing quoted or commented: every number is a literal (the common case, done in C).
        key, count = (_BARE_NUMBER_ASCII if sql.isascii() else _BARE_NUMBER).subn(_NUMBER_MARK, sql)
        return key, count
    out: list[str] = []
    n = len(sql)
    pos = 0  # copied up to here
    i = 0
    count = 0
    search = _INTERESTING.search
    while True:
        m = search(sql, i)
        if m is None:
            break
        j = m.start()
        ch = sql[j]
        if ch == "'":
            start = j
            escape = j > 0 and sql[j - 1] in "eE" and (j < 2 or not _IDENT_CHAR.match(sql[j - 2]))
            if j > 0 and sql[j - 1] in "eEbBxXnN" and (j < 2 or not _IDENT_CHAR.match(sql[j - 2])):
                start = j - 1  # the prefix belongs to the literal
            end = lexical.after_closing_quote(sql, j + 1, "'", escape)
            if end is None:
                return None
            out.append(sql[pos:start])
            out.append(_STRING_MARK)
            count += 1
            pos = i = end
        elif ch == '"':
            end = lexical.after_closing_quote(sql, j + 1, '"', False)
            if end is None:
                return None
            i = end
        elif ch == "-":
            end = sql.find("\n", j)
            i = n if end < 0 else end + 1
        elif ch == "/":
            end = _after_comment(sql, j)
            if end is None:
                return None
            i = end
        elif ch == "$":
            if j > 0 and _IDENT_CHAR.match(sql[j - 1]):
                i = j + 1
                continue
            tag = _DOLLAR_TAG.match(sql, j)
            if tag is None:
                i = j + 1  # $1, a parameter
                continue
            close = sql.find(tag.group(0), tag.end())
            if close < 0:
                return None
            i = close + len(tag.group(0))
        else:
            num = _NUMBER.match(sql, j)
            if num is None:  # pragma: no cover - _INTERESTING guarantees a digit
                i = j + 1
                continue
            out.append(sql[pos:j])
            out.append(_NUMBER_MARK)
            count += 1
            pos = i = num.end()
    if not count:
        return sql, 0
    out.append(sql[pos:])
    return "".join(out), count


def _after_comment(sql: str, start: int) -> int | None:
    """Index past the (possibly nested) block comment opening at ``start``."""
    depth = 0
    i = start
    search = _COMMENT_EDGE.search
    while True:
        m = search(sql, i)
        if m is None:
            return None
        depth += 1 if m.group(0) == "/*" else -1
        i = m.end()
        if depth == 0:
            return i


#: Characters after which a text's trailing digits are a literal of their own: no identifier
#: character, decimal point or exponent sign can join them to what precedes them.
_BEFORE_TRAILING_NUMBER: Final = frozenset(" \t\n\r=(,<>")
#: Heads remembered (the memo is emptied when full) and the longest remembered: ~1 MiB at most.
_MAX_HEADS: Final = 256
_MAX_HEAD_CHARS: Final = 2048
_NOT_PLAIN: Final = ("", -1)
_SEEN_ONCE: Final = ("", -2)


class TrailingNumberKeys:
    """:func:`literal_key` of texts ending in a number, from the remembered key of the text before it.

    pgbench -S (simple protocol) and ORMs inlining ``... WHERE id = 42`` send one
    text shape with a new number at its end every time. When the character
    before the number is one of ``_BEFORE_TRAILING_NUMBER`` the number is a
    literal of its own, and in plain text (no quote or comment can hide it) the
    head's numbers are the ones the whole text has: the key is the head's key
    and one marker. The head repeats, so its key is remembered (once seen twice:
    a head that never repeats, as when an earlier literal varies too, costs a
    note and no more). Measured on pgbench's text: 0.15 µs instead of 0.6 µs.
    Any other text gets :func:`literal_key` itself.
    """

    __slots__ = ("_heads", "_last_head", "_last_key")

    def __init__(self) -> None:
        self._heads: dict[str, tuple[str, int]] = {}
        # The head whose remembered key was answered last, and that key: a session repeats its
        # shape, so the next text is compared with it (a prefix test and a digit scan) before the
        # head is stripped and looked up (hashing it). "": none yet (no head is empty).
        self._last_head = ""
        self._last_key: tuple[str, int] = _NOT_PLAIN

    def key(self, sql: str) -> tuple[str, int] | None:
        """:func:`literal_key` of ``sql`` (a method, not ``__call__``: the compiled build calls a method natively)."""
        if self.extends_last_head(sql):  # asked before the strip, which costs ~0.9k instructions itself (compiled)
            return self._last_key
        head = sql.rstrip("0123456789")
        if len(head) == len(sql) or not head or head[-1] not in _BEFORE_TRAILING_NUMBER or len(head) > _MAX_HEAD_CHARS:
            return literal_key(sql)
        heads = self._heads
        keyed = heads.get(head)
        if keyed is None:  # a head not seen (lately): noted, and the text keyed the general way
            if len(heads) >= _MAX_HEADS:
                heads.clear()
            heads[head] = _SEEN_ONCE
            return literal_key(sql)
        if keyed == _SEEN_ONCE:  # seen again: a shape that repeats, its key worth remembering (==, not is: mypyc)
            of_head = literal_key(head) if _plain(head) else None
            # Remembered as the key of the head and a number: the same string object every time, whose
            # hash the analyzer's cache lookup then finds made (no concatenation, no new tuple, no
            # hashing a new key: ~700 instructions a pgbench -S statement, compiled, callgrind).
            keyed = heads[head] = (of_head[0] + _NUMBER_MARK, of_head[1] + 1) if of_head is not None else _NOT_PLAIN
        if keyed[1] < 0:
            return literal_key(sql)
        self._last_head = head
        self._last_key = keyed
        return keyed

    def extends_last_head(self, text: str) -> bool:
        """``text`` is the head whose key was answered last, then a number (ASCII digits, as ``rstrip`` strips them).

        :meth:`key` then answers that head's key without stripping the number
        (stripping a set of characters costs ~0.9k instructions, compiled).
        :meth:`StatementAnalyzer.split` asks it before the five substring
        tests: only a plain head's key is answered from memory, and digits add
        no quote, dollar sign or comment, so such a text is plain too (a simple
        Query of pgbench -S's shape: 27.8k -> 27.0k instructions a statement
        with both, compiled, callgrind). Before any head is remembered, the
        head is empty and nothing extends it.
        """
        head = self._last_head
        start, end = len(head), len(text)
        if not head or end <= start or not text.startswith(head):
            return False
        # Code points, not ``number.isdigit() and number.isascii()`` on a slice: compiled, that
        # copied the slice and called ``isascii`` by name (its two calls a pgbench -S statement:
        # 1.50k -> 0.92k instructions, 27.2k -> 26.6k for the statement, callgrind).
        for i in range(start, end):
            code = ord(text[i])
            if code < 48 or code > 57:  # "0" to "9"
                return False
        return True


_PARAM_NUMBER = re.compile(r"\$(\d+)")
_MARKER = re.compile(r"-?\x00n|\x00s")


# --------------------------------------------------------------------------- operations and targets

_TRANSACTION_KINDS: Final = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}
#: Statement nodes whose name does not spell their command.
_FIXED_OPERATIONS: Final = {
    "CreateStmt": "CREATE TABLE",
    "IndexStmt": "CREATE INDEX",
    "ViewStmt": "CREATE VIEW",
    "VariableSetStmt": "SET",
    "VariableShowStmt": "SHOW",
    "TruncateStmt": "TRUNCATE TABLE",
    "LockStmt": "LOCK TABLE",
    "DeclareCursorStmt": "DECLARE CURSOR",
    "ClosePortalStmt": "CLOSE CURSOR",
    "DeallocateStmt": "DEALLOCATE",
    "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE",
    "CreateSeqStmt": "CREATE SEQUENCE",
    "AlterSeqStmt": "ALTER SEQUENCE",
    "CreateTrigStmt": "CREATE TRIGGER",
    "CreateEnumStmt": "CREATE TYPE",
    "CompositeTypeStmt": "CREATE TYPE",
    "CreateRangeStmt": "CREATE TYPE",
    "RuleStmt": "CREATE RULE",
    "CommentStmt": "COMMENT",
    "ConstraintsSetStmt": "SET CONSTRAINTS",
    "CheckPointStmt": "CHECKPOINT",
    "DiscardStmt": "DISCARD",
    "SecLabelStmt": "SECURITY LABEL",
    "CreatePLangStmt": "CREATE LANGUAGE",
    "CreateFdwStmt": "CREATE FOREIGN DATA WRAPPER",
    "CreateForeignTableStmt": "CREATE FOREIGN TABLE",
    "CreateUserMappingStmt": "CREATE USER MAPPING",
    "CreateAmStmt": "CREATE ACCESS METHOD",
    "CreateCastStmt": "CREATE CAST",
    "CreateOpClassStmt": "CREATE OPERATOR CLASS",
    "CreateOpFamilyStmt": "CREATE OPERATOR FAMILY",
    "CreateConversionStmt": "CREATE CONVERSION",
    "CreateTransformStmt": "CREATE TRANSFORM",
    "CreateEventTrigStmt": "CREATE EVENT TRIGGER",
    "CreateStatsStmt": "CREATE STATISTICS",
    "CreateTableSpaceStmt": "CREATE TABLESPACE",
    "DropTableSpaceStmt": "DROP TABLESPACE",
    "AlterTableSpaceOptionsStmt": "ALTER TABLESPACE",
    "AlterDatabaseSetStmt": "ALTER DATABASE",
    "AlterRoleSetStmt": "ALTER ROLE",
    "AlterFunctionStmt": "ALTER FUNCTION",
    "AlterDefaultPrivilegesStmt": "ALTER DEFAULT PRIVILEGES",
    "AlterTSConfigurationStmt": "ALTER TEXT SEARCH CONFIGURATION",
    "AlterTSDictionaryStmt": "ALTER TEXT SEARCH DICTIONARY",
    "ReassignOwnedStmt": "REASSIGN OWNED",
    "DropOwnedStmt": "DROP OWNED",
}
_OBJECT_TYPES: Final = {
    "OBJECT_MATVIEW": "MATERIALIZED VIEW",
    "OBJECT_FOREIGN_TABLE": "FOREIGN TABLE",
    "OBJECT_TSCONFIGURATION": "TEXT SEARCH CONFIGURATION",
    "OBJECT_TSDICTIONARY": "TEXT SEARCH DICTIONARY",
    "OBJECT_TSPARSER": "TEXT SEARCH PARSER",
    "OBJECT_TSTEMPLATE": "TEXT SEARCH TEMPLATE",
    "OBJECT_FDW": "FOREIGN DATA WRAPPER",
    "OBJECT_FOREIGN_SERVER": "SERVER",
    "OBJECT_EVENT_TRIGGER": "EVENT TRIGGER",
    "OBJECT_ACCESS_METHOD": "ACCESS METHOD",
    "OBJECT_USER_MAPPING": "USER MAPPING",
    "OBJECT_OPCLASS": "OPERATOR CLASS",
    "OBJECT_OPFAMILY": "OPERATOR FAMILY",
    "OBJECT_TABCONSTRAINT": "CONSTRAINT",
    "OBJECT_DEFAULT": "DEFAULT",
    "OBJECT_LARGEOBJECT": "LARGE OBJECT",
    "OBJECT_STATISTIC_EXT": "STATISTICS",
}
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def _object_type(value: Any) -> str:
    text = str(value or "")
    return _OBJECT_TYPES.get(text) or text.removeprefix("OBJECT_").replace("_", " ")


def operation_of(node: str, body: Mapping[str, Any]) -> str | None:
    """The command a statement node performs, spelled as PostgreSQL's command tags do.

    Returns None for nodes that are not statements. A ``SELECT`` that only
    carries ``VALUES`` lists or a set operation (``UNION``) is not an operation
    of its own (its branches are).
    """
    if not node.endswith("Stmt"):
        return None
    if node == "SelectStmt":
        if body.get("op", "SETOP_NONE") != "SETOP_NONE" or ("valuesLists" in body and "targetList" not in body):
            return None  # a set operation (its branches count) or a VALUES list (an anonymous table)
        return "SELECT"
    if node == "ReturnStmt":  # the body of CREATE FUNCTION ... RETURN expr
        return None
    if node == "TransactionStmt":
        return _TRANSACTION_KINDS.get(body.get("kind", ""), "BEGIN")
    if node == "DropStmt":
        return f"DROP {_object_type(body.get('removeType'))}"
    if node in ("AlterTableStmt", "RenameStmt", "AlterObjectSchemaStmt", "AlterOwnerStmt"):
        key = {"AlterTableStmt": "objtype", "RenameStmt": "renameType"}.get(node, "objectType")
        kind = body.get(key, "OBJECT_TABLE")
        if node == "RenameStmt" and kind in ("OBJECT_COLUMN", "OBJECT_ATTRIBUTE", "OBJECT_TABCONSTRAINT"):
            kind = body.get("relationType", "OBJECT_TABLE")  # renaming a column alters its table
        return f"ALTER {_object_type(kind)}"
    if node == "CreateTableAsStmt":
        if body.get("is_select_into"):
            return "SELECT"
        return "CREATE MATERIALIZED VIEW" if body.get("objtype") == "OBJECT_MATVIEW" else "CREATE TABLE AS"
    if node == "CreateFunctionStmt":
        return "CREATE PROCEDURE" if body.get("is_procedure") else "CREATE FUNCTION"
    if node == "DefineStmt":
        return f"CREATE {_object_type(body.get('kind'))}"
    if node == "GrantStmt":
        return "GRANT" if body.get("is_grant") else "REVOKE"
    if node == "GrantRoleStmt":
        return "GRANT" if body.get("is_grant") else "REVOKE"
    if node == "VacuumStmt":
        return "VACUUM" if body.get("is_vacuumcmd") else "ANALYZE"
    if node == "FetchStmt":
        return "MOVE" if body.get("ismove") else "FETCH"
    if node == "VariableSetStmt" and str(body.get("kind", "")).startswith("VAR_RESET"):
        return "RESET"
    if node == "RefreshMatViewStmt":
        return "REFRESH MATERIALIZED VIEW"
    fixed = _FIXED_OPERATIONS.get(node)
    if fixed is not None:
        return fixed
    # CreateSchemaStmt -> CREATE SCHEMA, AlterSystemStmt -> ALTER SYSTEM, CopyStmt -> COPY ...
    return _CAMEL.sub(" ", node.removesuffix("Stmt")).upper()


#: Fields visited in text order where the parser's struct order differs.
_FIELD_ORDER: Final = {
    "UpdateStmt": ("relation", "targetList", "fromClause", "whereClause", "returningList"),
    "SelectStmt": ("distinctClause", "targetList", "intoClause", "fromClause", "whereClause"),
    "CreateTableAsStmt": ("into", "query"),
}
_QUALIFIED_NAME = re.compile(
    rb'(?:"(?:[^"]|"")*"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)'
    rb'(?:\s*\.\s*(?:"(?:[^"]|"")*"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)){0,2}'
)
_SPACE_AROUND_DOT = re.compile(rb"\s*\.\s*")


@dataclass(slots=True)
class _Emit:
    """A deferred summary part: the operation keyword, emitted after a WITH clause's parts."""

    text: str


@dataclass(slots=True)
class _Target:
    """A deferred summary part: a target that is not a RangeVar (dropped object, called procedure)."""

    name: str | None


def _names(items: Any) -> str | None:
    """``[{"String": {"sval": "s"}}, {"String": {"sval": "t"}}]`` -> ``s.t``."""
    if not isinstance(items, list):
        return None
    parts = [i["String"].get("sval", "") for i in items if isinstance(i, dict) and "String" in i]
    return ".".join(parts) if parts else None


def _relation_text(rangevar: Mapping[str, Any], raw: bytes) -> str:
    """The table name as the application wrote it (case and quotes kept), else as parsed."""
    location = rangevar.get("location", -1)
    if isinstance(location, int) and 0 <= location < len(raw):
        m = _QUALIFIED_NAME.match(raw, location)
        if m is not None:
            return _SPACE_AROUND_DOT.sub(b".", m.group(0)).decode("utf-8", "replace")
    parts = [rangevar.get(k) for k in ("catalogname", "schemaname", "relname")]
    return ".".join(p for p in parts if p)


_CONTAINERS: Final = (dict, list)
#: Nodes that never contain a table reference or a statement: not walked into.
_LEAVES: Final = frozenset(
    (
        "ColumnRef",
        "A_Const",
        "ParamRef",
        "TypeName",
        "String",
        "Integer",
        "Float",
        "Boolean",
        "BitString",
        "A_Star",
        "RoleSpec",
        "DefElem",
        "ColumnDef",
        "SortBy",
        "IndexElem",
        "AccessPriv",
    )
)


def _push(stack: list[Any], children: list[object]) -> None:
    """Push children so that the first is visited first (skipping scalars)."""
    stack.extend([c for c in reversed(children) if type(c) in (dict, list, _Emit, _Target)])


def _statement_children(node: str, body: Mapping[str, Any], op: str) -> list[Any]:
    """A statement's parts in text order: WITH clause, the operation, its own targets, the rest."""
    children: list[Any] = []
    if "withClause" in body:
        children.append(body["withClause"])
    children.append(_Emit(op))
    if node == "CallStmt":
        funccall = body.get("funccall") or {}
        children.append(_Target(_names(funccall.get("funcname"))))
    elif node == "DropStmt":
        for obj in body.get("objects") or ():
            if isinstance(obj, dict) and "List" in obj:
                children.append(_Target(_names(obj["List"].get("items"))))
    elif node == "CreateFunctionStmt":
        children.append(_Target(_names(body.get("funcname"))))
    elif node == "InsertStmt":
        values = body.get("selectStmt", {}).get("SelectStmt")
        if values is not None and "valuesLists" in values and "targetList" not in values:
            # INSERT ... VALUES: the VALUES list is no SELECT of its own (subqueries in it still count).
            body = {**body, "selectStmt": values}
    order = _FIELD_ORDER.get(node, ())
    children.extend(body[key] for key in order if key in body)
    children.extend(v for k, v in body.items() if k not in _NOT_WALKED and k not in order)
    return children


#: Statement fields whose contents are not part of the statement's own work:
#: the WITH clause (walked first) and a SQL-standard function body.
_NOT_WALKED: Final = frozenset(("withClause", "sql_body"))


def describe_tree(
    statements: list[object], raw: bytes
) -> tuple[str | None, list[str], list[str], str | None, dict[int, str]]:
    """Operations and targets of parsed statements, in text order.

    Args:
        statements: the ``stmts`` list of libpg_query's JSON parse tree.
        raw: the statement text as UTF-8 (the tree's locations are byte offsets).

    Returns:
        (first operation, summary parts, distinct targets, CALLed procedure,
        parameter number -> column name).
        Walks with an explicit stack: a deep expression cannot exhaust
        Python's recursion limit.
    """
    parts: list[str] = []
    targets: list[str] = []
    ctes: set[str] = set()
    first_op: str | None = None
    procedure: str | None = None
    params: dict[int, str] = {}
    last_op_index = -1
    stack: list[Any] = []
    for s in reversed(statements):
        stmt = s.get("stmt") if isinstance(s, dict) else None
        stack.append(stmt)
        select = stmt.get("SelectStmt") if isinstance(stmt, dict) else None
        if select is not None and "valuesLists" in select and "targetList" not in select:
            stack.append(_Emit("SELECT"))  # a bare VALUES statement is a SELECT (its command tag says so)
            if s is statements[0]:
                first_op = "SELECT"

    def add_target(name: str | None) -> None:
        if not name:
            return
        if name not in parts[last_op_index + 1 :]:
            parts.append(name)
        if name not in targets:
            targets.append(name)

    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is list:
            elements: list[object] = item  # typed: mypyc cannot reverse an Any
            stack.extend([v for v in reversed(elements) if type(v) in _CONTAINERS])
            continue
        if kind is _Emit:
            parts.append(item.text)
            last_op_index = len(parts) - 1
            continue
        if kind is _Target:
            add_target(item.name)
            continue
        if kind is not dict:
            continue
        if "relname" in item:  # a RangeVar, wrapped or embedded
            if item.get("schemaname") or item["relname"] not in ctes:
                add_target(_relation_text(item, raw))
            continue
        if len(item) == 1:
            ((node, body),) = item.items()
            if type(body) is dict and node[:1].isupper():
                if node.endswith("Stmt"):
                    op = operation_of(node, body)
                    if op is None:
                        if node == "SelectStmt" and "larg" in body:
                            # A set operation: its branches are embedded SelectStmt bodies.
                            first_op = first_op or "SELECT"
                            branches = [{"SelectStmt": body[k]} for k in ("larg", "rarg") if k in body]
                            rest = [v for k, v in body.items() if k not in ("larg", "rarg", "withClause")]
                            _push(stack, [body.get("withClause"), *branches, *rest])
                        else:
                            stack.append(body)
                        continue
                    if first_op is None:
                        first_op = op
                    if node == "InsertStmt":
                        _name_inserted_parameters(body, params)
                    if node == "CallStmt" and procedure is None:
                        procedure = _names((body.get("funccall") or {}).get("funcname"))
                    _push(stack, _statement_children(node, body, op))
                    continue
                if node in _LEAVES:
                    continue
                if node in _NAMES_PARAMETERS:
                    _name_parameters(node, body, params)
                if node == "CommonTableExpr" and body.get("ctename"):
                    ctes.add(body["ctename"])
                stack.append(body)
                continue
        fields: dict[str, object] = item
        stack.extend([v for v in reversed(fields.values()) if type(v) in _CONTAINERS])
    return first_op, [p for p in parts if p], targets, procedure, params


# --------------------------------------------------------------------------- parameter names

_NAMES_PARAMETERS: Final = frozenset(("A_Expr", "ResTarget"))


def _parameters_in(expr: Any) -> list[int]:
    """Numbers of the ``$n`` inside an expression, not looking into subqueries (they name their own)."""
    out: list[int] = []
    stack = [expr]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            ref = item.get("ParamRef")
            if ref is not None:
                out.append(int(ref.get("number", 0)))
            elif "SubLink" not in item:
                stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return out


def _column_of(expr: Any) -> str | None:
    """The column an expression is (``col``, ``t.col``, ``col::type``), else None."""
    while type(expr) is dict:
        if "ColumnRef" in expr:
            fields = expr["ColumnRef"].get("fields") or []
            last = fields[-1] if fields else None
            return last["String"].get("sval") if isinstance(last, dict) and "String" in last else None
        if "TypeCast" in expr:
            expr = expr["TypeCast"].get("arg")
            continue
        return None
    return None


def _assign(names: dict[int, str], column: str | None, expr: Any) -> None:
    if column:
        for number in _parameters_in(expr):
            names.setdefault(number, column)


def _name_parameters(node: str, body: Mapping[str, Any], names: dict[int, str]) -> None:
    """``col = $1``, ``$1 = col``, ``col IN ($1, $2)``, ``(a, b) = ($1, $2)``, ``SET col = $1``, ``$1 AS col``."""
    if node == "A_Expr":
        left, right = body.get("lexpr"), body.get("rexpr")
        if type(left) is dict and type(right) is dict and "RowExpr" in left and "RowExpr" in right:
            for a, b in zip(left["RowExpr"].get("args") or (), right["RowExpr"].get("args") or (), strict=False):
                _assign(names, _column_of(a), b)
                _assign(names, _column_of(b), a)
            return
        _assign(names, _column_of(left), right)
        _assign(names, _column_of(right), left)
    elif "name" in body and "val" in body:  # ResTarget: SET col = ..., ON CONFLICT ... SET, SELECT ... AS col
        value = body["val"]
        multi = value.get("MultiAssignRef") if type(value) is dict else None
        if multi is not None:  # SET (a, b) = ($1, $2)
            args = (multi.get("source") or {}).get("RowExpr", {}).get("args") or []
            index = int(multi.get("colno", 0)) - 1
            value = args[index] if 0 <= index < len(args) else None
        _assign(names, body["name"], value)


def _name_inserted_parameters(body: Mapping[str, Any], names: dict[int, str]) -> None:
    """``INSERT INTO t (a, b) VALUES ($1, f($2)), ...`` or ``... SELECT $1, $2``: by position."""
    columns = [c.get("ResTarget", {}).get("name") for c in body.get("cols") or () if isinstance(c, dict)]
    select = (body.get("selectStmt") or {}).get("SelectStmt")
    if not columns or not isinstance(select, dict):
        return
    rows = [row.get("List", {}).get("items") or [] for row in select.get("valuesLists") or () if isinstance(row, dict)]
    if "targetList" in select:
        rows.append([t.get("ResTarget", {}).get("val") for t in select["targetList"] if isinstance(t, dict)])
    for row in rows:
        for column, value in zip(columns, row, strict=False):
            _assign(names, column, value)


def _summary(parts: list[str]) -> str | None:
    """Join summary parts, cut at a part boundary to 255 characters."""
    out: list[str] = []
    length = 0
    for part in parts:
        extra = len(part) + (1 if out else 0)
        if length + extra > MAX_SUMMARY_CHARS:
            break
        out.append(part)
        length += extra
    return " ".join(out) or None


# --------------------------------------------------------------------------- the analyzer


class _Parser:
    """The few libpg_query entry points used, imported on first use (pglast takes ~60 ms to import)."""

    def __init__(self) -> None:
        self.loaded = False
        self.available = False
        self.error: type[Exception] = Exception
        self.fingerprint: Callable[[str], str] = str
        self.normalize: Callable[[str], str] = str
        self.parse_json: Callable[[str], str] = str
        self.split: Callable[[str], tuple[str, ...]] = tuple
        self.loads: Callable[[str], Any] = str

    def load(self) -> bool:
        if not self.loaded:
            self.loaded = True
            try:
                import orjson
                from pglast import parser
            except ImportError:
                return False
            self.error = parser.ParseError
            self.fingerprint = parser.fingerprint
            self.normalize = parser.normalize
            self.parse_json = parser.parse_sql_json
            self.split = parser.split
            self.loads = orjson.loads
            self.available = True
        return self.available


@dataclass
class StatementAnalyzer:
    """Describes SQL texts, each distinct one parsed once (process-wide, shared by sessions).

    Args:
        max_entries: cached analyses at most (least recently used evicted).
        max_bytes: approximate bytes the cache may hold.
        max_cached_chars: longer texts are analysed every time, never cached.
        max_parse_chars: longer texts are described by the lexer, not parsed.
        max_split_chars: longer Queries are split by the lexer, not the parser.
        use_parser: False forces the lexical fallback (for tests and comparisons).

    Attributes:
        counters: ``parsed``, ``fallback.<reason>``, ``cache_hits``,
            ``cache_misses``, ``cache_evictions``, ``literal_key_hits``.
    """

    max_entries: int = DEFAULT_CACHE_ENTRIES
    max_bytes: int = DEFAULT_CACHE_BYTES
    max_cached_chars: int = DEFAULT_MAX_CACHED_CHARS
    max_parse_chars: int = DEFAULT_MAX_PARSE_CHARS
    max_split_chars: int = DEFAULT_MAX_SPLIT_CHARS
    use_parser: bool = True
    _counts: Counter[str] = field(default_factory=Counter, repr=False)
    _hits: int = field(default=0, repr=False)  # cache hits not yet added to _counts
    _literal_hits: int = field(default=0, repr=False)  # literal_key_hits not yet added
    _cache: OrderedDict[str, Analysis] = field(default_factory=OrderedDict, repr=False)
    _bytes: int = 0
    _parser: _Parser = field(default_factory=_Parser, repr=False)
    _literal_key: TrailingNumberKeys = field(default_factory=TrailingNumberKeys, repr=False)
    #: The analysis stored or used last: the cache's newest entry while it is in there (each analysis
    #: is stored once, under one key), so using it again needs no move to the end.
    _newest: Analysis | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ public

    @property
    def counters(self) -> Counter[str]:
        """The counters (see Attributes), cache hits included.

        A hit (every statement, nearly) adds to a plain integer, added here:
        a ``Counter`` item costs ~0.1 µs per increment. Every other count goes
        through here too, so the counters keep the order they were first counted in.
        """
        if self._hits:
            self._counts["cache_hits"] += self._hits
            self._hits = 0
        if self._literal_hits:
            self._counts["literal_key_hits"] += self._literal_hits
            self._literal_hits = 0
        return self._counts

    def _used(self, key: str, hit: Analysis) -> None:
        """Count a cache hit on ``key`` and make it the most recently used entry.

        Unless it is the newest already: a session's statements repeat, and the
        OrderedDict method call cost ~450 instructions (compiled). Each
        process's event loop is the analyzer's only user, but proxies run in
        threads (tests, embedding) may share it: an entry another thread
        evicted between the lookup and here is simply not moved.
        """
        if hit is not self._newest:
            try:
                self._cache.move_to_end(key)
            except KeyError:
                pass
            self._newest = hit
        self._hits += 1

    def analyze(self, sql: str) -> Analysis:
        """Describe one statement's text (cached)."""
        cache = self._cache
        hit = cache.get(sql)
        if hit is not None:
            self._used(sql, hit)
            return hit
        keyed = self._literal_key.key(sql) if len(sql) <= self.max_cached_chars else None
        if keyed is not None and keyed[1]:
            key = keyed[0]
            hit = cache.get(key)
            if hit is not None:
                self._used(key, hit)
                self._literal_hits += 1
                return hit
        self.counters["cache_misses"] += 1
        analysis = self._analyze(sql)
        if len(sql) <= self.max_cached_chars:
            shareable = (
                keyed is not None
                and keyed[1]
                and analysis.source is Source.PARSER
                and _same_shape(keyed[0], sql, analysis.normalized)
            )
            self._store(keyed[0] if shareable and keyed is not None else sql, analysis)
        return analysis

    def split(self, sql: str) -> list[str] | None:
        """Split a simple-protocol Query into its statements, as the server's parser does.

        Texts without a semicolon are one statement and keep the lexical
        splitter's answer; the parser splits the others (dollar quotes, nested
        comments, function bodies and all). Falls back to the lexer (counted)
        when the text does not parse; None when neither can split it.
        """
        end = sql.find(";")
        if end < 0:
            return lexical.split_statements(sql)
        if _one_terminated(sql, end):
            body = sql[:end]
            if self._literal_key.extends_last_head(body) or _plain(sql):
                # One statement and its terminator (pgbench -M simple, psql): no parse needed.
                only = body.strip()
                return [only] if only else []
        reason = self._parse_refusal(sql, self.max_split_chars)
        if reason is None:
            try:
                return [part.strip() for part in self._parser.split(sql)]
            except self._parser.error:
                reason = FallbackReason.SYNTAX_ERROR
            except Exception:  # anything else the library raises must not end the session's decoding
                reason = FallbackReason.PARSER_ERROR
        self.counters[f"split_fallback.{reason.value}"] += 1
        return lexical.split_statements(sql)

    def parameter_names(self, sql: str) -> Mapping[int, str]:
        """The column each ``$n`` of a prepared statement belongs to, for redaction by name.

        From the parse tree when the text parses (it sees ``IN`` lists, row
        comparisons, ``INSERT ... SELECT``, expressions around a parameter);
        from the lexical inference otherwise.
        """
        analysis = self.analyze(sql)
        if analysis.source is Source.PARSER:
            return analysis.parameter_names
        return lexical.parameter_names(sql)

    def holds(self, sql: str) -> bool:
        """The analysis of ``sql`` is cached under the text itself (not its literal key)."""
        return sql in self._cache

    def count_hit(self, literal: bool) -> None:
        """Count a use of an analysis the caller kept (statement facts) as the cache hit it stands for.

        ``literal``: a hit through the text's literal key. The kept analysis is
        not moved to the cache's recent end: under eviction pressure the
        counters of misses and evictions may differ from asking :meth:`analyze`.
        """
        self._hits += 1
        if literal:
            self._literal_hits += 1

    @property
    def entries(self) -> int:
        return len(self._cache)

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def snapshot(self) -> dict[str, Any]:
        """Counters and cache occupancy, for reports."""
        return {**dict(self.counters), "cache_entries": len(self._cache), "cache_bytes": self._bytes}

    # ------------------------------------------------------------------ internals

    def _parse_refusal(self, sql: str, limit: int | None = None) -> FallbackReason | None:
        if not self.use_parser or not self._parser.load():
            return FallbackReason.PARSER_UNAVAILABLE
        if len(sql) > (self.max_parse_chars if limit is None else limit):
            return FallbackReason.TOO_LONG
        if _LONG_OPERATOR_RUN.search(sql) is not None:
            return FallbackReason.OPERATOR_RUN
        return None

    def _analyze(self, sql: str) -> Analysis:
        reason = self._parse_refusal(sql)
        if reason is None:
            parser = self._parser
            try:
                fingerprint = parser.fingerprint(sql)
                if _nested_selects(sql) > MAX_NESTED_SELECTS:
                    self.counters["normalize_skipped.deep"] += 1
                    normalized = lexical.mask_sql(sql, None, True)
                else:
                    normalized = parser.normalize(sql)
                tree = parser.parse_json(sql)
            except parser.error:
                reason = FallbackReason.SYNTAX_ERROR
            except Exception:  # e.g. text the library cannot encode: describe it lexically, keep decoding
                reason = FallbackReason.PARSER_ERROR
            else:
                self.counters["parsed"] += 1
                return self._from_tree(sql, fingerprint, normalized, tree)
        self.counters[f"fallback.{reason.value}"] += 1
        return _lexical_analysis(sql, reason)

    def _from_tree(self, sql: str, fingerprint: str, normalized: str, tree: str) -> Analysis:
        try:
            statements = self._parser.loads(tree).get("stmts") or []
        except ValueError:
            # Nesting deeper than the JSON decoder allows: the fingerprint is
            # still the parser's, the operation comes from the lexer.
            statements = None
        if statements is None:
            operation = lexical.operation_name(sql)
            return Analysis.build(fingerprint, operation, operation, None, None, normalized, Source.PARSER)
        operation, parts, targets, procedure, params = describe_tree(statements, sql.encode("utf-8", "surrogatepass"))
        collection = targets[0] if len(targets) == 1 else None
        return Analysis.build(
            fingerprint,
            operation,
            _summary(parts),
            collection,
            procedure,
            normalized,
            Source.PARSER,
            targets=tuple(targets),
            parameter_names=params,
        )

    def _store(self, key: str, analysis: Analysis) -> None:
        cache = self._cache
        old = cache.pop(key, None)
        if old is not None:
            self._bytes -= old.weight + len(key)
        cache[key] = analysis
        self._newest = analysis
        self._bytes += analysis.weight + len(key)
        while cache and (len(cache) > self.max_entries or self._bytes > self.max_bytes):
            evicted_key, evicted = cache.popitem(last=False)
            self._bytes -= evicted.weight + len(evicted_key)
            self.counters["cache_evictions"] += 1


_SELECT_OR_PAREN = re.compile(r"[()]|\b[sS][eE][lL][eE][cC][tT]\b")


def _nested_selects(sql: str) -> int:
    """How deep ``SELECT``s nest inside parentheses (an over-estimate: quotes and comments are not skipped)."""
    if sql.count("(") < MAX_NESTED_SELECTS:
        return 0
    deepest = 0
    stack: list[bool] = [False]  # per open parenthesis: did a SELECT start directly inside it?
    nested = 0
    for m in _SELECT_OR_PAREN.finditer(sql):
        token = m.group(0)
        if token == "(":
            stack.append(False)
        elif token == ")":
            if len(stack) > 1 and stack.pop():
                nested -= 1
        elif not stack[-1]:
            stack[-1] = True
            nested += 1
            deepest = max(deepest, nested)
    return deepest


def _same_shape(key: str, sql: str, normalized: str) -> bool:
    """Whether the parser replaced exactly the literals the stripping pass marked, and nothing else.

    Then no literal value can change the analysis, and every text with the same
    key may share it. Compared with each marker (a minus sign folded into a
    number, as the grammar does) and each ``$n`` the normalisation added made
    one placeholder; anything else (a literal the parser keeps, such as a type
    modifier or a COPY file name; a constant the pass does not mark, such as
    ``true``) makes the shapes differ, and the text is cached by itself.
    """
    existing = max((int(n) for n in _PARAM_NUMBER.findall(sql)), default=0)
    marked = _MARKER.sub("\x00", key)
    replaced = _PARAM_NUMBER.sub(lambda m: "\x00" if int(m.group(1)) > existing else m.group(0), normalized)
    return marked == replaced


def _lexical_analysis(sql: str, reason: FallbackReason) -> Analysis:
    """What today's lexer can say about text the parser did not take."""
    normalized = lexical.mask_sql(sql, None, True) if len(sql) <= MAX_MASKED_CHARS else sql
    digest = hashlib.blake2b(" ".join(normalized.split()).encode("utf-8", "surrogatepass"), digest_size=8)
    operation = lexical.operation_name(sql)
    return Analysis.build(
        f"lexical:{digest.hexdigest()}", operation, operation, None, None, normalized, Source.LEXER, reason
    )


_SHARED: list[StatementAnalyzer] = []


def shared_analyzer() -> StatementAnalyzer:
    """The process-wide analyzer: every session (and a reloaded configuration) shares one cache."""
    if not _SHARED:
        _SHARED.append(StatementAnalyzer())
    return _SHARED[0]


def annotate(fields: dict[str, Any], analysis: Analysis, normalized_text: bool, max_chars: int) -> None:
    """Add an analysis to a ``query`` record's fields.

    Adds ``fingerprint``, ``db.query.summary``, ``db.collection.name`` and
    ``db.stored_procedure.name`` (when known); fills ``db.operation.name``
    when the server's command tag did not (a failed statement); with
    ``normalized_text`` replaces ``db.query.text`` by the normalised text.
    """
    fields.update(analysis._record_fields)
    if fields.get("db.operation.name") is None:
        fields["db.operation.name"] = analysis.operation
    if normalized_text:
        fields["db.query.text"] = truncate(analysis.normalized, max_chars)
