"""Just enough SQL lexing to split statements, name parameters and mask literals.

Not a parser: a single-pass scanner that knows where string literals
(``'...'``, ``E'...'``), quoted identifiers, dollar quotes and comments begin
and end, which is what splitting at semicolons and masking literals need.
When it cannot be sure (unterminated quote), callers fall back to the whole
text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")
_IDENT_CHARS = re.compile(r"[A-Za-z0-9_$\x80-\uffff]")


@dataclass(frozen=True, slots=True)
class Token:
    """A lexical span: ``kind`` is "code", "string", "ident", "comment" or "dollar"."""

    kind: str
    start: int
    end: int


def scan(sql: str) -> list[Token] | None:
    """Cut SQL into code, literal, quoted-identifier and comment spans.

    Returns None when a quote or comment is left open (the text is then not
    reliably splittable).
    """
    out: list[Token] = []
    i = 0
    n = len(sql)
    code_start = 0

    def flush(end: int) -> None:
        if end > code_start:
            out.append(Token("code", code_start, end))

    while i < n:
        ch = sql[i]
        if ch == "'":
            flush(i)
            start = i
            escape = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _IDENT_CHARS.match(sql[i - 2]))
            if escape and out and out[-1].kind == "code":
                # E'...' : the E prefix belongs to the literal
                prev = out.pop()
                if prev.end - 1 > prev.start:
                    out.append(Token("code", prev.start, prev.end - 1))
                start = i - 1
            end = _after_closing_quote(sql, i + 1, "'", escape)
            if end is None:
                return None
            i = end
            out.append(Token("string", start, i))
            code_start = i
        elif ch == '"':
            flush(i)
            start = i
            end = _after_closing_quote(sql, i + 1, '"', False)
            if end is None:
                return None
            i = end
            out.append(Token("ident", start, i))
            code_start = i
        elif ch == "-" and sql.startswith("--", i):
            flush(i)
            start = i
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            out.append(Token("comment", start, i))
            code_start = i
        elif ch == "/" and sql.startswith("/*", i):
            flush(i)
            start = i
            depth = 0
            while i < n:
                if sql.startswith("/*", i):
                    depth += 1
                    i += 2
                elif sql.startswith("*/", i):
                    depth -= 1
                    i += 2
                    if depth == 0:
                        break
                else:
                    i += 1
            if depth:
                return None
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
                return None
            i = close + len(tag)
            out.append(Token("dollar", m.start(), i))
            code_start = i
        else:
            i += 1
    flush(n)
    return out


def _after_closing_quote(sql: str, pos: int, quote: str, backslash_escapes: bool) -> int | None:
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


@lru_cache(maxsize=2048)
def split_statements(sql: str) -> list[str] | None:
    """Split a simple-query string at top-level semicolons.

    Empty statements are dropped (the server ignores them too). Returns None
    when the text cannot be split reliably.
    """
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


_OPERATION = re.compile(r"\s*([A-Za-z]+)(?:\s+([A-Za-z]+))?")
_TWO_WORD = {"CREATE", "DROP", "ALTER", "START", "REFRESH"}


@lru_cache(maxsize=2048)
def operation_name(sql: str) -> str | None:
    """The statement's leading keyword(s): ``SELECT``, ``CREATE TABLE``..."""
    tokens = scan(sql)
    text = sql
    if tokens:
        first = next((t for t in tokens if t.kind not in ("comment",) and sql[t.start : t.end].strip()), None)
        if first is not None:
            text = sql[first.start :]
    m = _OPERATION.match(text)
    if not m:
        return None
    word = m.group(1).upper()
    if word in _TWO_WORD and m.group(2):
        return f"{word} {m.group(2).upper()}"
    return word


# --------------------------------------------------------------------------- parameter names

_PARAM = r"\$(\d+)(?:\s*::\s*[\w\s\[\]\".]+?)?"
_COMPARE = re.compile(
    r"(?:\"?([A-Za-z_][\w$]*)\"?)\s*(?:=|<>|!=|<=|>=|<|>|\bLIKE\b|\bILIKE\b)\s*\(?\s*"
    + _PARAM
    + r"(?=\s*[\),;]|\s+|$)",
    re.IGNORECASE,
)
_COMPARE_REVERSED = re.compile(
    r"\$(\d+)\s*(?:=|<>|!=)\s*\"?([A-Za-z_][\w$]*)\"?",
    re.IGNORECASE,
)
_INSERT = re.compile(r"\bINSERT\s+INTO\s+[^\(]+\(([^\)]*)\)\s*(?:OVERRIDING\s+\w+\s+VALUE\s+)?VALUES\s*", re.IGNORECASE)
_PARAM_ONLY = re.compile(r"^\s*\(?\s*\$(\d+)\s*(?:::\s*[\w\s\[\]\".]+)?\)?\s*$")


def _split_top_level(text: str) -> tuple[list[str], int]:
    """Items of a parenthesised list starting at text[0] == '('; and the end offset."""
    depth = 0
    items: list[str] = []
    start = 1
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                items.append(text[start:i])
                return items, i + 1
        elif ch == "," and depth == 1:
            items.append(text[start:i])
            start = i + 1
    return items, len(text)


def _ident(name: str) -> str:
    name = name.strip()
    if name.startswith('"') and name.endswith('"'):
        return name[1:-1]
    return name.lower().rsplit(".", 1)[-1]


@lru_cache(maxsize=2048)
def parameter_names(sql: str) -> dict[int, str]:
    """Guess the column each ``$n`` parameter belongs to, for redaction by name.

    Recognises ``INSERT INTO t (a, b) VALUES ($1, $2)`` (casts allowed,
    multi-row lists too) and comparisons such as ``col = $1`` or
    ``SET col = $2``. Parameters it cannot attribute are simply absent.
    """
    names: dict[int, str] = {}
    for m in _COMPARE.finditer(sql):
        names.setdefault(int(m.group(2)), _ident(m.group(1)))
    for m in _COMPARE_REVERSED.finditer(sql):
        names.setdefault(int(m.group(1)), _ident(m.group(2)))
    for m in _INSERT.finditer(sql):
        columns = [_ident(c) for c in m.group(1).split(",")]
        rest = sql[m.end() :]
        while rest.startswith("("):
            items, end = _split_top_level(rest)
            for col, item in zip(columns, items, strict=False):
                pm = _PARAM_ONLY.match(item)
                if pm:
                    names[int(pm.group(1))] = col
            rest = rest[end:].lstrip()
            if not rest.startswith(","):
                break
            rest = rest[1:].lstrip()
    return names


# --------------------------------------------------------------------------- masking


_PASSWORD_LITERAL = re.compile(r"(?i)\b(PASSWORD)\s+$")
_MASK = "'[redacted]'"


@lru_cache(maxsize=4096)
def mask_sql(sql: str, sensitive: re.Pattern[str] | None, all_literals: bool = False) -> str:
    """Mask literals that must not be logged.

    Always masks the literal after ``PASSWORD`` (``CREATE ROLE ... PASSWORD
    '...'``). With a ``sensitive`` column pattern, masks literals compared
    with or inserted into matching columns. With ``all_literals``, masks every
    string and numeric literal (``?``), for PII-sensitive deployments.
    """
    if "'" not in sql and "$" not in sql and not all_literals:
        return sql
    tokens = scan(sql)
    if tokens is None:
        return sql
    masked_cols = _sensitive_literal_targets(sql, tokens, sensitive) if sensitive is not None else set()
    out: list[str] = []
    for index, tok in enumerate(tokens):
        text = sql[tok.start : tok.end]
        if tok.kind in ("string", "dollar"):
            before = "".join(out[-3:])
            if all_literals or index in masked_cols or _PASSWORD_LITERAL.search(before):
                out.append(_MASK if not all_literals else "?")
                continue
        elif tok.kind == "code" and all_literals:
            text = re.sub(r"(?<![\w$])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w$])", "?", text)
        out.append(text)
    return "".join(out)


def _sensitive_literal_targets(sql: str, tokens: list[Token], sensitive: re.Pattern[str]) -> set[int]:
    """Indexes of literal tokens that belong to a sensitive column."""
    targets: set[int] = set()
    for index, tok in enumerate(tokens):
        if tok.kind not in ("string", "dollar"):
            continue
        before = sql[max(0, tok.start - 120) : tok.start]
        m = re.search(r"\"?([A-Za-z_][\w$]*)\"?\s*(?:=|<>|!=|\bLIKE\b)\s*$", before, re.IGNORECASE)
        if m and sensitive.search(m.group(1)):
            targets.add(index)
    for m in _INSERT.finditer(sql):
        columns = [_ident(c) for c in m.group(1).split(",")]
        pos = m.end()
        while pos < len(sql) and sql[pos] == "(":
            items, end = _split_top_level(sql[pos:])
            offset = pos + 1
            for col, item in zip(columns, items, strict=False):
                if sensitive.search(col):
                    for index, tok in enumerate(tokens):
                        if tok.kind in ("string", "dollar") and offset <= tok.start < offset + len(item):
                            targets.add(index)
                offset += len(item) + 1
            pos += end
            while pos < len(sql) and sql[pos] in " \t\r\n,":
                pos += 1
    return targets
