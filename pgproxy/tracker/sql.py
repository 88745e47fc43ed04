"""Just enough SQL lexing to split statements, name parameters and mask literals.

Not a parser: a single-pass scanner that knows where string literals
(``'...'``, ``E'...'``), quoted identifiers, dollar quotes and comments begin
and end, which is what splitting at semicolons and masking literals need.
When it cannot be sure (unterminated quote), callers fall back to the whole
text.

Every function here is fed text a client chose, so each does work
proportional to the text's length (issue 8: a 20 KB comment once cost 11 s
of quadratic backtracking, freezing every session). The rules that keep it so:
the scanner jumps between interesting characters with regular expressions
(C speed) instead of stepping through every character in Python; patterns
never let two unbounded quantifiers compete for the same characters
(possessive quantifiers, a look-behind so a match cannot start inside a
word, bounded repeats for table names and column lists); positions are
passed around instead of slicing the rest of the text; and results are
cached only for texts of at most :data:`CACHED_TEXT_CHARS`, within a byte
budget. ``tests/test_bounded_work.py`` checks that the work per byte stays
flat as hostile inputs grow tenfold.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from pgproxy.protocol.values import cap_text

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*+)?\$")
_IDENT_CHARS = re.compile(r"[A-Za-z0-9_$\x80-\uffff]")
#: Where the scanner must look: quotes, dollar signs, comment openers.
_INTERESTING = re.compile(r"['\"$]|--|/\*")
#: A "$" that is not a parameter placeholder ($1): it may open a dollar quote (a tag never starts with a digit).
_DOLLAR_NOT_PARAMETER = re.compile(r"\$(?!\d)")
_COMMENT_EDGE = re.compile(r"/\*|\*/")

#: Analysis reads at most this much of one text (parameter names, splitting):
#: the work is linear, but its constant is Python's, and one statement must
#: not hold the event loop for long. Masking reads what will be logged.
MAX_ANALYZED_CHARS = 65536
#: Texts longer than this are analysed every time rather than cached: a cache
#: of whole megabyte statements is what grew RSS by a gigabyte (issue 8).
CACHED_TEXT_CHARS = 4096
#: Characters of text (keys and results together) one analysis cache may hold.
CACHE_BUDGET_CHARS = 4 << 20

_F = TypeVar("_F", bound=Callable[..., Any])


def text_cache(max_entries: int, max_chars: int = CACHE_BUDGET_CHARS) -> Callable[[_F], _F]:
    """An LRU cache for functions of a text, bounded by entries *and* characters.

    Only calls whose first argument is a ``str`` of at most
    :data:`CACHED_TEXT_CHARS` are cached (a result is assumed to be about as
    large as its text, so each entry counts twice its length). Like
    ``functools.lru_cache`` the cached results are shared: callers must not
    mutate them. Single-threaded use (one event loop) is assumed.
    """

    def decorate(fn: _F) -> _F:
        cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        held = [0]

        @wraps(fn)
        def cached(text: str, *args: Any) -> Any:
            if len(text) > CACHED_TEXT_CHARS:
                return fn(text, *args)
            key = (text, *args)
            try:
                value = cache[key]
            except KeyError:
                pass
            else:
                cache.move_to_end(key)
                return value
            value = fn(text, *args)
            cache[key] = value
            held[0] += 2 * len(text)
            while len(cache) > max_entries or held[0] > max_chars:
                old, _ = cache.popitem(last=False)
                held[0] -= 2 * len(old[0])
            return value

        def cache_clear() -> None:
            cache.clear()
            held[0] = 0

        def cache_chars() -> int:
            return held[0]

        cached.cache_clear = cache_clear  # type: ignore[attr-defined]
        cached.cache_chars = cache_chars  # type: ignore[attr-defined]
        cached.cache_len = cache.__len__  # type: ignore[attr-defined]
        return cached  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True, slots=True)
class Token:
    """A lexical span: ``kind`` is "code", "string", "ident", "comment" or "dollar"."""

    kind: str
    start: int
    end: int


def scan(sql: str, partial: bool = False) -> list[Token] | None:
    """Cut SQL into code, literal, quoted-identifier and comment spans.

    Returns None when a quote or comment is left open (the text is then not
    reliably splittable) -- unless ``partial``: the text is the beginning of
    a longer one, and what is open at its end runs to the end.
    """
    out: list[Token] = []
    i = 0
    n = len(sql)
    code_start = 0

    def flush(end: int) -> None:
        if end > code_start:
            out.append(Token("code", code_start, end))

    while i < n:
        found = _INTERESTING.search(sql, i)
        if found is None:
            break
        i = found.start()
        ch = sql[i]
        if ch == "'":
            flush(i)
            start = i
            escape = is_escape_string(sql, i)
            if escape and out and out[-1].kind == "code":
                # E'...' : the E prefix belongs to the literal
                prev = out.pop()
                if prev.end - 1 > prev.start:
                    out.append(Token("code", prev.start, prev.end - 1))
                start = i - 1
            end = after_closing_quote(sql, i + 1, "'", escape)
            if end is None:
                return [*out, Token("string", start, n)] if partial else None
            i = end
            out.append(Token("string", start, i))
            code_start = i
        elif ch == '"':
            flush(i)
            start = i
            end = after_closing_quote(sql, i + 1, '"', False)
            if end is None:
                return [*out, Token("ident", start, n)] if partial else None
            i = end
            out.append(Token("ident", start, i))
            code_start = i
        elif ch == "-":  # "--", as _INTERESTING matched
            flush(i)
            start = i
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            out.append(Token("comment", start, i))
            code_start = i
        elif ch == "/":  # "/*": comments nest in PostgreSQL
            flush(i)
            start = i
            depth = 0
            while True:
                edge = _COMMENT_EDGE.search(sql, i)
                if edge is None:
                    return [*out, Token("comment", start, n)] if partial else None
                i = edge.end()
                depth += 1 if edge.group() == "/*" else -1
                if depth == 0:
                    break
            out.append(Token("comment", start, i))
            code_start = i
        elif ch == "$" and (i == 0 or not _IDENT_CHARS.match(sql[i - 1])):
            m = _DOLLAR_TAG.match(sql, i)
            if m is None:
                i += 1
                continue
            flush(i)
            tag = m.group(0)
            close = sql.find(tag, m.end())
            if close < 0:
                return [*out, Token("dollar", m.start(), n)] if partial else None
            i = close + len(tag)
            out.append(Token("dollar", m.start(), i))
            code_start = i
        else:  # a dollar sign inside an identifier: plain code
            i += 1
    flush(n)
    return out


def is_escape_string(sql: str, quote: int) -> bool:
    """Whether the ``'`` at ``quote`` opens an ``E'...'`` string (backslash escapes apply)."""
    return quote > 0 and sql[quote - 1] in "eE" and (quote < 2 or not _IDENT_CHARS.match(sql[quote - 2]))


def after_closing_quote(sql: str, pos: int, quote: str, backslash_escapes: bool) -> int | None:
    """Index just past the quote that closes a literal whose body starts at ``pos``.

    A doubled quote stands for itself; in ``E'...'`` strings a quote preceded
    by an odd number of backslashes does too. None when the literal is open.
    """
    n = len(sql)
    while True:
        j = sql.find(quote, pos)
        if j < 0:
            return None
        if backslash_escapes:
            k = j - 1
            while k >= pos and sql[k] == "\\":
                k -= 1
            if (j - 1 - k) % 2:
                pos = j + 1
                continue
        if j + 1 < n and sql[j + 1] == quote:
            pos = j + 2
            continue
        return j + 1


@text_cache(2048)
def split_statements(sql: str) -> list[str] | None:
    """Split a simple-query string at top-level semicolons.

    Empty statements are dropped (the server ignores them too). Returns None
    when the text cannot be split reliably, or is longer than
    :data:`MAX_ANALYZED_CHARS` and holds a semicolon (bounded work: the whole
    text is then logged with each statement's index).
    """
    if len(sql) > MAX_ANALYZED_CHARS:
        return None if ";" in sql else [sql.strip()]
    tokens = scan(sql)
    if tokens is None:
        return None
    parts: list[str] = []
    start = 0
    for tok in tokens:
        if tok.kind != "code":
            continue
        pos = sql.find(";", tok.start, tok.end)
        while pos >= 0:
            parts.append(sql[start:pos])
            start = pos + 1
            pos = sql.find(";", start, tok.end)
    parts.append(sql[start:])
    return [p.strip() for p in parts if _has_code(p)]


def _has_code(text: str) -> bool:
    tokens = scan(text)
    if tokens is None:
        return bool(text.strip())
    return any(t.kind != "comment" and text[t.start : t.end].strip() for t in tokens)


_OPERATION = re.compile(r"\s*+([A-Za-z]++)(?:\s++([A-Za-z]++))?")
_SPACES = re.compile(r"\s*+")


def _after_leading_comments(sql: str) -> int | None:
    """Offset of the first character that is neither white space nor in a comment (None: an open comment)."""
    pos = 0
    n = len(sql)
    while True:
        pos = _SPACES.match(sql, pos).end()  # type: ignore[union-attr]
        if sql.startswith("--", pos):
            newline = sql.find("\n", pos)
            if newline < 0:
                return n
            pos = newline + 1
        elif sql.startswith("/*", pos):
            depth = 0
            while True:
                edge = _COMMENT_EDGE.search(sql, pos, MAX_ANALYZED_CHARS)
                if edge is None:
                    return None  # open, or longer than what is analysed
                pos = edge.end()
                depth += 1 if edge.group() == "/*" else -1
                if depth == 0:
                    break
        else:
            return pos


_TWO_WORD = {"CREATE", "DROP", "ALTER", "START", "REFRESH"}


@text_cache(2048)
def operation_name(sql: str) -> str | None:
    """The statement's leading keyword(s): ``SELECT``, ``CREATE TABLE``...

    Reads past leading white space and comments only, not the whole text.
    """
    pos = _after_leading_comments(sql)
    if pos is None:
        return None
    m = _OPERATION.match(sql, pos)
    if not m:
        return None
    word = m.group(1).upper()
    if word in _TWO_WORD and m.group(2):
        return f"{word} {m.group(2).upper()}"
    return word


# --------------------------------------------------------------------------- parameter names

# A match may not start inside a word (the look-behind), and no two unbounded
# quantifiers compete for the same characters (possessive ``*+``/``++``):
# without both, a long word or run of spaces costs quadratic backtracking.
_PARAM = r"\$(\d++)(?:\s*+::\s*+[\w\s\[\]\".]+?)?"
_COMPARE = re.compile(
    r"(?<![\w$])(?:\"?([A-Za-z_][\w$]*+)\"?)\s*+(?:=|<>|!=|<=|>=|<|>|\bLIKE\b|\bILIKE\b)\s*+\(?\s*+"
    + _PARAM
    + r"(?=\s*+[\),;]|\s|$)",
    re.IGNORECASE,
)
_COMPARE_REVERSED = re.compile(
    r"\$(\d++)\s*+(?:=|<>|!=)\s*+\"?([A-Za-z_][\w$]*+)\"?",
    re.IGNORECASE,
)
#: Table names up to 512 characters, column lists up to 64 KB: bounded, so a
#: text of many ``INSERT INTO`` without a parenthesis costs linear time.
_INSERT = re.compile(
    r"\bINSERT\s++INTO\s++[^\(]{1,512}+\(([^\)]{0,65536}+)\)\s*+(?:OVERRIDING\s++\w++\s++VALUE\s++)?VALUES\s*+",
    re.IGNORECASE,
)
_PARAM_ONLY = re.compile(r"\s*+\(?\s*+\$(\d++)\s*+(?:::\s*+[\w\s\[\]\".]++)?\)?\s*+$")
_LIST_EDGE = re.compile(r"['\"(),]")
_SPACE_OR_COMMA = re.compile(r"[ \t\r\n,]*+")


def _split_top_level(text: str, start: int = 0) -> tuple[list[tuple[int, int]], int]:
    """Spans of the items of a parenthesised list at ``text[start] == '('``, and the offset after it.

    Jumps between quotes, parentheses and commas, so the cost is the list's
    length, not the rest of the text's.
    """
    depth = 0
    items: list[tuple[int, int]] = []
    item_start = start + 1
    i = start
    n = len(text)
    while i < n:
        m = _LIST_EDGE.search(text, i)
        if m is None:
            break
        i = m.start()
        ch = text[i]
        if ch in "'\"":
            close = after_closing_quote(text, i + 1, ch, ch == "'" and is_escape_string(text, i))
            if close is None:
                break
            i = close
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                items.append((item_start, i))
                return items, i + 1
        elif depth == 1:  # a top-level comma
            items.append((item_start, i))
            item_start = i + 1
        i += 1
    return items, n


def _ident(name: str) -> str:
    name = name.strip()
    if name.startswith('"') and name.endswith('"'):
        return name[1:-1]
    return name.lower().rsplit(".", 1)[-1]


@text_cache(2048)
def parameter_names(sql: str) -> dict[int, str]:
    """Guess the column each ``$n`` parameter belongs to, for redaction by name.

    Recognises ``INSERT INTO t (a, b) VALUES ($1, $2)`` (casts allowed,
    multi-row lists too) and comparisons such as ``col = $1`` or
    ``SET col = $2``. Parameters it cannot attribute are simply absent, and
    so are those beyond the first :data:`MAX_ANALYZED_CHARS` of the text.
    """
    if len(sql) > MAX_ANALYZED_CHARS:
        sql = sql[:MAX_ANALYZED_CHARS]
    names: dict[int, str] = {}
    for m in _COMPARE.finditer(sql):
        names.setdefault(int(m.group(2)), _ident(m.group(1)))
    for m in _COMPARE_REVERSED.finditer(sql):
        names.setdefault(int(m.group(1)), _ident(m.group(2)))
    for m in _INSERT.finditer(sql):
        columns = [_ident(c) for c in m.group(1).split(",")]
        pos = m.end()
        while pos < len(sql) and sql[pos] == "(":
            items, pos = _split_top_level(sql, pos)
            for col, (a, b) in zip(columns, items, strict=False):
                pm = _PARAM_ONLY.match(sql, a, b)
                if pm:
                    names[int(pm.group(1))] = col
            pos = _SPACE_OR_COMMA.match(sql, pos).end()  # type: ignore[union-attr]
    return names


# --------------------------------------------------------------------------- masking


_PASSWORD_LITERAL = re.compile(r"(?i)\b(PASSWORD)\s++$")
_NUMBER = re.compile(r"(?<![\w$])-?\d++(?:\.\d++)?(?:[eE][-+]?\d++)?(?![\w$])")
_COMPARED_COLUMN = re.compile(r"(?<![\w$])\"?([A-Za-z_][\w$]*+)\"?\s*+(?:=|<>|!=|\bLIKE\b)\s*+$", re.IGNORECASE)
_MASK = "'[redacted]'"
#: How far before a literal ``PASSWORD`` or a column comparison is looked for.
_LOOK_BEHIND = 120


@text_cache(4096)
def mask_sql(sql: str, sensitive: re.Pattern[str] | None, all_literals: bool = False, partial: bool = False) -> str:
    """Mask literals that must not be logged.

    Always masks the literal after ``PASSWORD`` (``CREATE ROLE ... PASSWORD
    '...'``). With a ``sensitive`` column pattern, masks literals compared
    with or inserted into matching columns. With ``all_literals``, masks every
    string and numeric literal (``?``), for PII-sensitive deployments.
    With ``partial`` the text is the beginning of a longer one: a literal
    open at its end is masked as a literal (see :func:`mask_sql_prefix`).
    """
    if "'" not in sql and "$" not in sql and not all_literals:
        return sql
    tokens = scan(sql, partial)
    if tokens is None:
        return sql
    masked_cols = _sensitive_literal_targets(sql, tokens, sensitive) if sensitive is not None else set()
    out: list[str] = []
    for index, tok in enumerate(tokens):
        text = sql[tok.start : tok.end]
        if tok.kind in ("string", "dollar"):
            if all_literals or index in masked_cols or _after_password(sql, tok.start):
                out.append(_MASK if not all_literals else "?")
                continue
        elif tok.kind == "code" and all_literals:
            text = _NUMBER.sub("?", text)
        out.append(text)
    return "".join(out)


def _after_password(sql: str, start: int) -> bool:
    """The literal at ``start`` follows the keyword ``PASSWORD`` (and white space)."""
    window = sql[max(0, start - _LOOK_BEHIND) : start]
    stripped = window.rstrip()
    if len(stripped) == len(window) or stripped[-8:].upper() != "PASSWORD":
        return False
    return _PASSWORD_LITERAL.search(window) is not None


def mask_sql_prefix(sql: str, limit: int, sensitive: re.Pattern[str] | None, all_literals: bool = False) -> str:
    """The first ``limit`` characters of ``sql``, masked, ending with how many were cut.

    Only what is shown is analysed, so a megabyte statement costs what its
    logged part costs; a literal cut at the limit is masked like any other.
    """
    shown = sql if len(sql) <= limit else sql[:limit]
    if not all_literals and "'" not in shown and ("$" not in shown or _DOLLAR_NOT_PARAMETER.search(shown) is None):
        # No literal to mask (no quote, no dollar quote: at most $n placeholders), answered
        # without mask_sql's cache: a text not seen before, as pgbench -S sends, cost ~6 µs
        # to enter there, one seen ~1.5 µs (the extended protocol's $1 texts), ~0.2-0.4 here.
        return sql if shown is sql else f"{shown}…[+{len(sql) - limit} chars]"
    if len(sql) <= limit:
        masked = mask_sql(sql, sensitive, all_literals)
        return cap_text(masked, limit)
    masked = mask_sql(shown, sensitive, all_literals, True)
    return f"{masked[:limit]}…[+{len(sql) - limit} chars]"


def _sensitive_literal_targets(sql: str, tokens: list[Token], sensitive: re.Pattern[str]) -> set[int]:
    """Indexes of literal tokens that belong to a sensitive column."""
    targets: set[int] = set()
    literals = [(tok.start, index) for index, tok in enumerate(tokens) if tok.kind in ("string", "dollar")]
    for start, index in literals:
        operator_end = sql[max(0, start - _LOOK_BEHIND) : start].rstrip()[-1:]
        if operator_end not in ("=", ">", "e", "E"):  # "=", "<>", "!=", "LIKE": cheap pre-check
            continue
        m = _COMPARED_COLUMN.search(sql, max(0, start - _LOOK_BEHIND), start)
        if m and sensitive.search(m.group(1)):
            targets.add(index)
    starts = [start for start, _ in literals]
    for m in _INSERT.finditer(sql):
        columns = [_ident(c) for c in m.group(1).split(",")]
        pos = m.end()
        while pos < len(sql) and sql[pos] == "(":
            items, pos = _split_top_level(sql, pos)
            for col, (a, b) in zip(columns, items, strict=False):
                if sensitive.search(col):
                    k = bisect_left(starts, a)
                    while k < len(starts) and starts[k] < b:
                        targets.add(literals[k][1])
                        k += 1
            pos = _SPACE_OR_COMMA.match(sql, pos).end()  # type: ignore[union-attr]
    return targets
