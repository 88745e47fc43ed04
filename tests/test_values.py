"""Value codecs against a real server: text and binary agree, and match what clients return.

For every sample the server is asked for the value in text *and* binary
format (libpq via psycopg's low-level API, so we see the real bytes). Our
decoders must produce the same JSON value from both, and that value must
match what asyncpg (binary protocol) and psycopg (text protocol) return for the
same SELECT, normalised to pgproxy's canonical form.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import ipaddress
import json
import math
import uuid
from typing import Any

import asyncpg
import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.protocol.errors import DecodeError
from pgproxy.protocol.values import ValueContext, decode_value, parse_array_text

SAMPLES = [
    "true",
    "false",
    "0::int2",
    "(-32768)::int2",
    "2147483647::int4",
    "(-9223372036854775808)::int8",
    "4294967295::oid",
    "1.5::float4",
    "0.1::float4",
    "-3.4e38::float4",
    "'NaN'::float4",
    "'Infinity'::float8",
    "'-Infinity'::float8",
    "0.1::float8",
    "1e300::float8",
    "0::numeric",
    "1.50::numeric",
    "-123456789.000000001::numeric",
    "0.00001234::numeric",
    "10000::numeric",
    "'NaN'::numeric",
    "1e40::numeric",
    "12345678901234567890.5::numeric(30,5)",
    "'Demo'::text",
    "'héllo ✓'::varchar",
    "'ab'::char(5)",
    "'x'::\"char\"",
    "'pg_class'::name",
    "''::text",
    "'\\xdeadbeef'::bytea",
    "''::bytea",
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
    "'2024-02-29'::date",
    "'0001-01-01'::date",
    "'9999-12-31'::date",
    "'04:05:06.789'::time",
    "'00:00:00'::time",
    "'23:59:59.999999'::time",
    "'2024-01-02 03:04:05.123456'::timestamp",
    "'2000-01-01 00:00:00'::timestamp",
    "'1999-12-31 23:59:59.5'::timestamp",
    "'2024-01-02 03:04:05.5+02'::timestamptz",
    "'1970-01-01 00:00:00+00'::timestamptz",
    "'1 day 02:03:04.5'::interval",
    "'-3 hours'::interval",
    "'00:00:00'::interval",
    '\'{"k": [1, 2, {"x": null}]}\'::json',
    '\'{"b": 1, "a": "z"}\'::jsonb',
    "'192.168.0.1'::inet",
    "'10.0.0.0/8'::cidr",
    "'192.168.0.1/24'::inet",
    "'::1'::inet",
    "'2001:db8::/32'::cidr",
    "'08:00:2b:01:02:03'::macaddr",
    "ARRAY[1, 2, NULL]::int4[]",
    "ARRAY[['a', 'b'], ['c', NULL]]::text[]",
    "'{}'::int4[]",
    "ARRAY['a,b', 'q\"uote', 'back\\slash', 'NULL', '']::text[]",
    "ARRAY[1.5, NULL]::numeric[]",
    "ARRAY[true, false]",
    "ARRAY['2024-01-02'::date]",
    "ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid]",
]
# Values whose canonical form has no client equivalent to compare with (PG-only
# renderings); text == binary is still asserted for them.
SERVER_ONLY = [
    "'infinity'::date",
    "'-infinity'::timestamp",
    "'infinity'::timestamptz",
    "'0044-03-15 BC'::date",
    "'1 year 2 mons 3 days 04:05:06'::interval",
    "'-1 year +2 days'::interval",
    "'04:05:06+05:30'::timetz",
    "'Infinity'::numeric",
    "'-Infinity'::numeric",
    "B'10110'::bit(5)",
    "B'1'::varbit",
    "'(0,1)'::tid",
    "'08:00:2b:01:02:03:04:05'::macaddr8",
    "ARRAY[['2024-01-02 03:04:05+00'::timestamptz]]",
    "'::ffff:1.2.3.4'::inet",
]


def _raw(pg: EmbeddedPostgres, expr: str, fmt: int) -> tuple[int, bytes | None]:
    with psycopg.connect(pg.dsn()) as conn:
        res = conn.pgconn.exec_params(f"SELECT {expr}".encode(), [], result_format=fmt)
        assert res.status == psycopg.pq.ExecStatus.TUPLES_OK, res.error_message
        return res.ftype(0), res.get_value(0, 0)


def _canonical(value: Any, oid: int) -> Any:
    """A client's Python value in pgproxy's canonical JSON form."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, decimal.Decimal):
        if value.is_nan():
            return "NaN"
        return format(value, "f")
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
        if value.microsecond:
            text += f".{value.microsecond:06d}".rstrip("0")
        if value.tzinfo is not None:
            offset = value.utcoffset() or dt.timedelta()
            total = int(offset.total_seconds())
            sign = "-" if total < 0 else "+"
            hours, rem = divmod(abs(total), 3600)
            text += f"{sign}{hours:02d}" + (f":{rem // 60:02d}" if rem else "")
        return text
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        text = value.strftime("%H:%M:%S")
        if value.microsecond:
            text += f".{value.microsecond:06d}".rstrip("0")
        return text
    if isinstance(value, dt.timedelta):
        days = value.days
        secs = value.seconds
        micros = value.microseconds
        if days < 0 and (secs or micros):  # Python normalises -3h to -1 day +21h: undo for comparison
            total = days * 86400_000000 + secs * 1_000000 + micros
            sign = "-" if total < 0 else ""
            total = abs(total)
            h, rem = divmod(total, 3600_000000)
            m, rem = divmod(rem, 60_000000)
            s, us = divmod(rem, 1_000000)
            return f"{sign}{h:02d}:{m:02d}:{s:02d}" + (f".{us:06d}".rstrip("0") if us else "")
        h, rem = divmod(secs, 3600)
        m, s = divmod(rem, 60)
        clock = f"{h:02d}:{m:02d}:{s:02d}" + (f".{micros:06d}".rstrip("0") if micros else "")
        if days:
            return f"{days} day{'s' if days != 1 else ''} {clock}"
        return clock
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(
        value, ipaddress.IPv4Network | ipaddress.IPv6Network | ipaddress.IPv4Interface | ipaddress.IPv6Interface
    ):
        return str(value)
    if isinstance(value, list):
        return [_canonical(v, oid) for v in value]
    if isinstance(value, dict):
        return value
    return str(value)


def _json_equal(ours: Any, theirs: Any, oid: int) -> bool:
    if oid in (114, 3802):  # json, jsonb: psycopg parses, asyncpg returns the text
        return json.loads(ours) == (json.loads(theirs) if isinstance(theirs, str) else theirs)
    if oid in (700,) and isinstance(theirs, float) and isinstance(ours, float):
        return math.isclose(ours, theirs, rel_tol=1e-6)
    return bool(ours == theirs)


@pytest.fixture(scope="module")
def samples(pg: EmbeddedPostgres) -> dict[str, tuple[int, Any, Any]]:
    out = {}
    for expr in SAMPLES + SERVER_ONLY:
        oid, text = _raw(pg, expr, 0)
        oid2, binary = _raw(pg, expr, 1)
        assert oid == oid2
        ctx = ValueContext("utf-8", "Etc/UTC")
        out[expr] = (oid, decode_value(oid, 0, text, ctx), decode_value(oid, 1, binary, ctx))
    return out


@pytest.mark.parametrize("expr", SAMPLES + SERVER_ONLY)
def test_text_and_binary_decode_to_the_same_value(samples: dict[str, tuple[int, Any, Any]], expr: str) -> None:
    oid, text_value, binary_value = samples[expr]
    assert not (isinstance(binary_value, dict) and "malformed" in binary_value), binary_value
    assert text_value == binary_value, f"{expr} (oid {oid})"


def test_values_match_asyncpg_binary(pg: EmbeddedPostgres, samples: dict[str, tuple[int, Any, Any]]) -> None:
    async def fetch() -> list[Any]:
        conn = await asyncpg.connect(pg.dsn())
        try:
            return [await conn.fetchval(f"SELECT {expr}") for expr in SAMPLES]
        finally:
            await conn.close()

    mismatches = []
    for expr, value in zip(SAMPLES, asyncio.run(fetch()), strict=True):
        oid, ours, _ = samples[expr]
        if expr.endswith('::"char"'):
            value = value.decode() if isinstance(value, bytes) else value  # asyncpg returns "char" as bytes
        if not _json_equal(ours, _canonical(value, oid), oid):
            mismatches.append((expr, ours, _canonical(value, oid)))
    assert not mismatches


def test_values_match_psycopg_text(pg: EmbeddedPostgres, samples: dict[str, tuple[int, Any, Any]]) -> None:
    mismatches = []
    with psycopg.connect(pg.dsn()) as conn:
        for expr in SAMPLES:
            (value,) = conn.execute(f"SELECT {expr}").fetchone()  # type: ignore[misc]
            oid, ours, _ = samples[expr]
            if oid == 1042:  # psycopg keeps char(n) padding, as does the server's text
                value = str(value)
            if not _json_equal(ours, _canonical(value, oid), oid):
                mismatches.append((expr, ours, _canonical(value, oid)))
    assert not mismatches


def test_malformed_and_unknown_values_become_placeholders() -> None:
    assert decode_value(23, 1, b"\x01\x02") == {
        "malformed": "int4",
        "error": "int4 needs 4 bytes, got 2",
        "hex": "0102",
    }
    assert decode_value(99999, 1, b"\xff") == {"oid": 99999, "format": "binary", "hex": "ff"}
    assert decode_value(99999, 0, b"happy") == "happy"  # text of an unknown type (an enum) stays readable
    assert decode_value(16, 0, b"maybe")["malformed"] == "bool"
    assert decode_value(23, 0, None) is None


def test_array_text_parser_edge_cases() -> None:
    assert parse_array_text("[0:1]={1,2}", int) == [1, 2]
    assert parse_array_text('{"NULL",NULL, x }', None) == ["NULL", None, "x"]
    assert parse_array_text("{{1,2},{3,4}}", int) == [[1, 2], [3, 4]]
    with pytest.raises(DecodeError):
        parse_array_text("{1,2", int)


def test_anonymous_record_binary_fields_are_typed(pg: EmbeddedPostgres) -> None:
    oid, binary = _raw(pg, "ROW(1, 'a', NULL, 2.5::numeric)", 1)
    assert decode_value(oid, 1, binary) == [1, "a", None, "2.5"]
    oid, text = _raw(pg, "ROW(1, 'a', NULL, 2.5::numeric)", 0)
    assert decode_value(oid, 0, text) == "(1,a,,2.5)"  # text carries no field types: shown as sent


def test_client_encoding_is_honoured() -> None:
    assert decode_value(25, 0, "héllo".encode("latin-1"), ValueContext("latin-1")) == "héllo"
    assert decode_value(25, 0, b"\xff\xfe", ValueContext("utf-8")) == "\\xff\\xfe"
