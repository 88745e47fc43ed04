"""One client's bytes cost time proportional to their size: no quadratic analysis, no decoding of what is not shown.

Work is compared, not wall time against a bound: each hostile input is
analysed at size n and at 10 n, and the CPU time of the larger must stay
within 30 times the smaller (linear work gives about 10, quadratic about 100).
Timings take the best of several runs of the calling thread's CPU time, so a
loaded machine slows both sizes alike. Where work can be proved without a
clock (a value decoder that stops where showing stops), the test proves it by
construction instead.

The SQL analyses are timed in a child process whose allocator keeps the memory
it frees (``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_``), because
thread CPU time counts the kernel's page faults too. libpg_query's
normalisation allocates ~8 KiB per list element (10,000 literals: 84 MiB, freed
when the call returns); glibc gave the 50 KB text's blocks back to the kernel
after every call and faulted them in again on the next (~20,800 faults, 35 of
its 42 ms), while the 5 KB text's blocks, under glibc's moving thresholds,
usually stayed mapped. That made "parser analyze" of many string literals read
24-31x for 10x input although its work is linear: with the allocator keeping
its memory it reads 12x, and its peak memory grows 9x.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from pgproxy.protocol import build as b
from pgproxy.protocol import oids
from pgproxy.protocol.build import startup_message
from pgproxy.protocol.decoding import decode_tagged
from pgproxy.protocol.messages import Bind, FieldDescription, Parse
from pgproxy.protocol.rows import RowDecoder
from pgproxy.protocol.values import ValueContext, decoder_for, parse_array_text
from pgproxy.tracker.fingerprint import StatementAnalyzer
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.session import SessionTracker
from pgproxy.tracker.sql import (
    CACHE_BUDGET_CHARS,
    CACHED_TEXT_CHARS,
    mask_sql,
    mask_sql_prefix,
    operation_name,
    parameter_names,
    scan,
    split_statements,
)

BASE = 5_000  # characters: above the analysis caches' size limit, so every call does the work
GROWTH = 10
MAX_RATIO = 30.0
SENSITIVE = re.compile("pass|secret", re.IGNORECASE)


def _cpu_seconds(fn: Callable[[], object], min_total: float = 0.002) -> float:
    """Best-of-3 CPU seconds of one call (repeated until measurable)."""
    repeats = 1
    while True:
        start = time.thread_time()
        for _ in range(repeats):
            fn()
        spent = time.thread_time() - start
        if spent >= min_total or repeats >= 1 << 16:
            break
        repeats *= 4
    best = spent
    for _ in range(2):
        start = time.thread_time()
        for _ in range(repeats):
            fn()
        best = min(best, time.thread_time() - start)
    return best / repeats


def _growth_ratio(make: Callable[[int], object], analyse: Callable[[object], object], base: int = BASE) -> float:
    small, large = make(base), make(base * GROWTH)
    return _cpu_seconds(lambda: analyse(large)) / max(_cpu_seconds(lambda: analyse(small)), 1e-9)


#: Hostile SQL shapes, each a function of the approximate length n.
HOSTILE_SQL: dict[str, Callable[[int], str]] = {
    "block comment then a parameter": lambda n: "SELECT /* " + "x" * n + " */ a FROM t WHERE id = $1",
    "line comment": lambda n: "-- " + "word " * (n // 5) + "\nSELECT $1",
    "one long word": lambda n: "a" * n + " = $1",
    "spaces around an operator": lambda n: "a" + " " * (n // 2) + "=" + " " * (n // 2) + "x",
    "hex literal in an insert": lambda n: "INSERT INTO t (id, password) VALUES ($1, '\\x" + "0f" * (n // 2) + "')",
    "many INSERT INTO without a list": lambda n: "INSERT INTO " * (n // 12),
    "unclosed column list": lambda n: "INSERT INTO t (" + "a, " * (n // 3),
    "many comparisons": lambda n: "a = " * (n // 4),
    "many casts": lambda n: "x = $1::" + "a" * n,
    "many string literals": lambda n: "SELECT " + "'a', " * (n // 5) + "1",
    "many rows of values": lambda n: "INSERT INTO t (password) VALUES " + ", ".join(["('x')"] * (n // 7)),
    "many sensitive columns": lambda n: (
        "INSERT INTO t (" + ", ".join(["password"] * (n // 15)) + ") VALUES (" + ", ".join(["'x'"] * (n // 15)) + ")"
    ),
    "nested comment openers": lambda n: "/*" * (n // 2),
    "nested comments closed": lambda n: "/*" * (n // 4) + "*/" * (n // 4) + " SELECT 1",
    "operator run": lambda n: "SELECT 1 " + "+" * n + " 1",
    "operator runs just short of the parser's refusal": lambda n: "SELECT 1 " + ("+" * 63 + " 1 ") * (n // 66),
    "dollar signs": lambda n: "$" * n,
    "dollar tags": lambda n: "$a" * (n // 2),
    "escaped backslashes": lambda n: "SELECT E'" + "\\\\" * (n // 2) + "'",
    "semicolons": lambda n: "SELECT 1;" * (n // 9),
    "password literals": lambda n: "ALTER ROLE a PASSWORD 'x'; " * (n // 27),
    "comparison with a literal after spaces": lambda n: ("secret" + " " * 100 + "= 'x' ") * (n // 113),
}

_PARSER = StatementAnalyzer(max_cached_chars=0, max_parse_chars=1 << 20, max_split_chars=1 << 20)

SQL_ANALYSES: dict[str, Callable[[str], object]] = {
    "scan": scan,
    "split_statements": split_statements,
    "operation_name": operation_name,
    "parameter_names": parameter_names,
    "mask_sql sensitive": lambda sql: mask_sql(sql, SENSITIVE),
    "mask_sql all literals": lambda sql: mask_sql(sql, SENSITIVE, True),
    "mask_sql_prefix": lambda sql: mask_sql_prefix(sql, 8192, SENSITIVE),
    # PostgreSQL's grammar (pglast): uncached, and allowed to parse both sizes, so that the
    # parser's own growth is measured (its lexical fallback is measured above)
    "parser analyze": _PARSER.analyze,
    "parser split": _PARSER.split,
}


#: glibc keeps what it frees: no page faults between calls decide a size's time (see the module's docstring).
_KEEP_FREED_MEMORY = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(1 << 30)}


def _sql_growth_ratios() -> dict[str, dict[str, float]]:
    """Every hostile shape's growth ratio under every SQL analysis, measured in this process."""
    ratios: dict[str, dict[str, float]] = {}
    for shape, make in HOSTILE_SQL.items():
        assert len(make(BASE)) > CACHED_TEXT_CHARS
        ratios[shape] = {name: _growth_ratio(make, fn) for name, fn in SQL_ANALYSES.items()}  # type: ignore[arg-type]
    return ratios


@pytest.fixture(scope="module")
def sql_growth_ratios() -> dict[str, dict[str, float]]:
    """The ratios, measured once in a child process whose allocator keeps freed memory."""
    child = subprocess.run(
        [sys.executable, "-c", "import json, tests.test_bounded_work as t; print(json.dumps(t._sql_growth_ratios()))"],
        env={**os.environ, **_KEEP_FREED_MEMORY},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert child.returncode == 0, f"measuring child failed:\n{child.stderr}"
    ratios: dict[str, dict[str, float]] = json.loads(child.stdout)
    return ratios


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(HOSTILE_SQL))
def test_sql_analysis_work_per_byte_is_flat(shape: str, sql_growth_ratios: dict[str, dict[str, float]]) -> None:
    ratios = sql_growth_ratios[shape]
    worst = max(ratios, key=ratios.__getitem__)
    assert ratios[worst] < MAX_RATIO, f"{shape}: {worst} grew {ratios[worst]:.0f}x for 10x input ({ratios})"


def test_quadratic_backtracking_would_be_caught() -> None:
    """The measure itself can fail: the old parameter-name pattern, quadratic on one long word."""
    old = re.compile(r"(?:\"?([A-Za-z_][\w$]*)\"?)\s*(?:=|<>|!=|<=|>=|<|>)\s*\(?\s*\$(\d+)", re.IGNORECASE)
    ratio = _growth_ratio(lambda n: "a" * n + " = x", old.findall, base=300)  # type: ignore[arg-type]
    assert ratio > MAX_RATIO


# --------------------------------------------------------------------------- values

INT4_ARRAY = 1007
TEXT_ARRAY = 1009
RECORD = oids.RECORD


def _int_array_text(n: int) -> bytes:
    return ("{" + ",".join(str(i % 1000) for i in range(n // 4)) + "}").encode()


def _binary_int_array(count: int) -> bytes:
    header = struct.pack("!iiIii", 1, 0, 23, count, 1)
    return header + b"".join(struct.pack("!ii", 4, i) for i in range(count))


HOSTILE_VALUES: dict[str, tuple[int, int, Callable[[int], bytes]]] = {
    "int4[] text": (INT4_ARRAY, 0, _int_array_text),
    "text[] quoted with escapes": (TEXT_ARRAY, 0, lambda n: b'{"' + b"\\\\a" * (n // 3) + b'"}'),
    "text[] unquoted with escapes": (TEXT_ARRAY, 0, lambda n: b"{" + b"\\,a" * (n // 3) + b"}"),
    "text[] spaces": (TEXT_ARRAY, 0, lambda n: b"{" + b" " * n + b"a}"),
    "array text opening braces": (INT4_ARRAY, 0, lambda n: b"{" * n),
    "int4[] binary": (INT4_ARRAY, 1, lambda n: _binary_int_array(n // 8)),
    "text": (oids.TEXT, 0, lambda n: b"x" * n),
    "bytea binary": (oids.BYTEA, 1, lambda n: b"\x00" * n),
}


@pytest.mark.parametrize("limit", [256, None], ids=["shown", "offline"])
@pytest.mark.parametrize("kind", sorted(HOSTILE_VALUES))
def test_value_decoding_work_per_byte_is_flat(kind: str, limit: int | None) -> None:
    oid, fmt, make = HOSTILE_VALUES[kind]
    decode = decoder_for(oid, fmt, ValueContext(max_value_chars=limit))
    ratio = _growth_ratio(make, decode)  # type: ignore[arg-type]
    assert ratio < MAX_RATIO, f"{kind}: {ratio:.0f}x for 10x input"


def test_arrays_decode_only_what_is_shown() -> None:
    """Past the shown part nothing is parsed: a malformed tail after a megabyte is never reached."""
    text = _int_array_text(1 << 20)[:-1] + b",not-a-number}"
    shown = decoder_for(INT4_ARRAY, 0, ValueContext(max_value_chars=256))(text)
    assert isinstance(shown, list) and shown[:3] == [0, 1, 2]
    assert isinstance(shown[-1], str) and shown[-1].startswith("…[+") and shown[-1].endswith(" chars]")
    assert len(repr(shown)) < 2 * 256 + 64
    full = decoder_for(INT4_ARRAY, 0, ValueContext())(text)  # offline, everything: the tail is malformed
    assert isinstance(full, dict) and full["malformed"] == "_int4"
    # binary arrays: a megabyte claims more elements than it holds; the shown part decodes
    binary = _binary_int_array(1 << 17)
    lying = binary[:12] + struct.pack("!i", (1 << 17) + 5) + binary[16:]
    shown = decoder_for(INT4_ARRAY, 1, ValueContext(max_value_chars=256))(lying)
    assert shown[:2] == [0, 1] and shown[-1] == f"…[+{(1 << 17) + 5 - (len(shown) - 1)} elements]"


def test_every_rendered_value_respects_max_value_chars() -> None:
    limit = 64
    ctx = ValueContext(max_value_chars=limit)
    samples: list[tuple[int, int, bytes]] = [
        (INT4_ARRAY, 0, _int_array_text(100_000)),
        (TEXT_ARRAY, 0, b'{"' + b"y" * 10_000 + b'"}'),
        (TEXT_ARRAY, 0, b"{" + b"z" * 10_000 + b"}"),
        (TEXT_ARRAY, 0, b"{{" + b",".join([b"abc"] * 5000) + b"}}"),
        (INT4_ARRAY, 1, _binary_int_array(10_000)),
        (
            RECORD,
            1,
            struct.pack("!i", 2000) + b"".join(struct.pack("!Ii", 23, 4) + struct.pack("!i", i) for i in range(2000)),
        ),
        (RECORD, 1, struct.pack("!i", 1) + struct.pack("!Ii", 25, 10_000) + b"t" * 10_000),
    ]
    for oid, fmt, data in samples:
        value = decoder_for(oid, fmt, ctx)(data)
        rendered = repr(value)
        assert len(rendered) < 3 * limit + 64, (oid, fmt, rendered[:200])
        assert "…[+" in rendered


def test_deep_nesting_is_malformed_not_a_crash() -> None:
    deep = b"{" * 2000 + b"1" + b"}" * 2000
    value = decoder_for(INT4_ARRAY, 0, ValueContext(max_value_chars=256))(deep)
    assert isinstance(value, dict) and "deeper than 6 dimensions" in value["error"]
    assert parse_array_text("{{{{{{1}}}}}}", int) == [[[[[[1]]]]]]  # PostgreSQL's six are fine
    record = struct.pack("!i", 0)
    for _ in range(3000):  # a record whose only field is a record, 3,000 deep
        record = struct.pack("!iIi", 1, RECORD, len(record)) + record
    value = decoder_for(RECORD, 1, ValueContext(max_value_chars=256))(record)
    assert "records nested deeper than 16" in repr(value)


def test_row_decoder_caps_arrays_in_rows() -> None:
    field = FieldDescription("a", 0, 0, INT4_ARRAY, -1, -1, 0)
    decoder = RowDecoder([field], ctx=ValueContext(max_value_chars=32))
    value = _int_array_text(50_000)
    body = struct.pack("!hi", 1, len(value)) + value
    row = decoder.decode(body, 0, len(body))
    assert row["a"][-1].startswith("…[+")


# --------------------------------------------------------------------------- messages


def test_counts_are_unsigned_sixteen_bit() -> None:
    """65,535 parameter types is valid (PostgreSQL accepts it): not a 'negative count'."""
    types = (23,) * 65535
    body = b"s\x00SELECT 1\x00" + struct.pack("!H", len(types)) + struct.pack(f"!{len(types)}I", *types)
    msg = decode_tagged(True, ord("P"), b"P" + struct.pack("!I", len(body) + 4) + body, 5, 5 + len(body))
    assert isinstance(msg, Parse) and len(msg.parameter_types) == 65535
    params = (b"1",) * 65535
    body = b"\x00s\x00" + struct.pack("!HH", 0, len(params)) + b"".join(struct.pack("!i", 1) + p for p in params)
    body += struct.pack("!H", 0)
    msg = decode_tagged(True, ord("B"), b"B" + struct.pack("!I", len(body) + 4) + body, 5, 5 + len(body))
    assert isinstance(msg, Bind) and len(msg.parameters) == 65535


def _tracker() -> SessionTracker:
    t = SessionTracker("s", TrackerOptions(detail=Detail.MESSAGE), clock=lambda: 0.0)
    t.frontend(startup_message({"user": "u", "database": "d"}))
    t.backend(b.authentication_ok() + b.backend_key_data(1) + b.ready_for_query("I"))
    return t


def test_deeply_nested_bind_parameter_is_logged_not_fatal() -> None:
    """A text int4[] nested 2,000 deep: the query event is kept, the parameter shown as malformed."""
    t = _tracker()
    deep = b"{" * 2000 + b"1" + b"}" * 2000
    records = t.frontend(
        b.parse("", "SELECT $1::int[]", (INT4_ARRAY,)) + b.bind("", "", (deep,)) + b.execute() + b.sync()
    )
    records += t.backend(
        b.message(b"1")  # ParseComplete; the Bind fails
        + b.error_response("ERROR", "54000", "number of array dimensions (2000) exceeds the maximum allowed (6)")
        + b.ready_for_query("I")
    )
    (query,) = [r for r in records if r.event == "query" and r["outcome"] == "error"]
    (param,) = query["parameters"]
    assert param["malformed"] == "_int4"
    assert not [r for r in records if r.event == "session.anomaly"]
    assert t.conv.decoding
    records = t.frontend(b.query("SELECT 2"))  # the session is still decoded
    records += t.backend(b.command_complete("SELECT 1") + b.ready_for_query("I"))
    assert [r["db.query.text"] for r in records if r.event == "query"] == ["SELECT 2"]


def test_megabyte_array_parameter_costs_what_its_shown_part_costs() -> None:
    """A 1 MB int4[] Bind costs little more than a 10 KB one: the array is decoded as far as shown."""
    t = _tracker()
    t.frontend(b.parse("s", "INSERT INTO t (a) VALUES ($1)", (INT4_ARRAY,)))

    def bind_of(size: int) -> Callable[[], object]:
        message = b.bind("", "s", (_int_array_text(size),))
        return lambda: t.frontend(message)

    small = _cpu_seconds(bind_of(10_000))
    large = _cpu_seconds(bind_of(1 << 20))
    # 100x the bytes; copying them is linear (C speed), parsing them is not done.
    assert large / small < 30


# --------------------------------------------------------------------------- memory


def test_analysis_caches_are_bounded_by_size_and_skip_large_texts() -> None:
    split_statements.cache_clear()  # type: ignore[attr-defined]
    large = "SELECT 1; " + "x" * CACHED_TEXT_CHARS
    split_statements(large)
    assert split_statements.cache_len() == 0  # type: ignore[attr-defined]
    for i in range(3000):  # 3,000 distinct 3 KB statements
        split_statements(f"SELECT {i}; " + "y" * 3000)
    assert split_statements.cache_chars() <= CACHE_BUDGET_CHARS  # type: ignore[attr-defined]
    assert 0 < split_statements.cache_len() < 3000  # type: ignore[attr-defined]
    split_statements.cache_clear()  # type: ignore[attr-defined]


def test_prepared_statements_are_bounded_by_size() -> None:
    t = SessionTracker("s", TrackerOptions(max_prepared_bytes=50_000), clock=lambda: 0.0)
    t.frontend(startup_message({"user": "u", "database": "d"}))
    t.backend(b.authentication_ok() + b.backend_key_data(1) + b.ready_for_query("I"))
    for i in range(100):  # 100 named statements of 10 KB each
        t.frontend(b.parse(f"s{i}", f"SELECT {i} AS /* {'z' * 10_000} */ a"))
    assert t.statements is not None
    held = t.statements.statements
    assert sum(len(s.sql) for s in held.values()) <= 50_000
    assert "s99" in held and "s0" not in held  # the least recently used went first


def test_a_failing_value_decoder_is_one_anomaly_and_the_query_event_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder bug (here a RecursionError) is caught where it happens: one anomaly, the event kept, decoding on."""
    from pgproxy.protocol import values

    def broken(text: str) -> object:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setitem(values._TEXT, oids.FLOAT8, broken)
    values.decoder_for.cache_clear()
    try:
        t = _tracker()
        records = t.frontend(b.parse("", "SELECT $1::float8", (oids.FLOAT8,)) + b.bind("", "", (b"1.5",)))
        records += t.frontend(b.execute() + b.sync())
        records += t.backend(
            b.message(b"1") + b.message(b"2") + b.command_complete("SELECT 1") + b.ready_for_query("I")
        )
        (anomaly,) = [r for r in records if r.event == "session.anomaly"]
        assert anomaly["kind"] == "decoder_failure" and "RecursionError" in anomaly["reason"]
        (query,) = [r for r in records if r.event == "query"]
        assert query["outcome"] == "ok" and query["parameters"][0]["decoder_failure"] is True
        assert t.conv.decoding
    finally:
        values.decoder_for.cache_clear()
