"""Decode column and parameter values by type OID into JSON-ready values.

The canonical form of a value is chosen so that the text and the binary format
of the same datum decode to the *same* JSON value:

* ``bool`` -> bool; integer types and ``oid`` -> int;
* ``float4``/``float8`` -> float, or the strings ``"NaN"``, ``"Infinity"``,
  ``"-Infinity"`` (JSON has no such numbers); float4 uses the shortest
  decimal that round-trips through 32 bits, as PostgreSQL 12+ prints it;
* ``numeric`` -> exact decimal string as PostgreSQL prints it;
* date/time types, ``interval``, ``bytea``, ``inet``/``cidr``, ``macaddr``,
  ``uuid``, ``bit`` -> the string PostgreSQL prints with ``DateStyle=ISO``,
  ``IntervalStyle=postgres`` and ``bytea_output=hex`` (binary values are
  rendered to that text; text values are passed through unchanged);
* ``json``/``jsonb`` -> the JSON document as a string (re-parsing would
  reorder keys and drop duplicates, which is not what was sent);
* arrays -> nested lists with ``None`` for NULL elements.

Values of unknown type OIDs decode to their text in text format and to an
explicit placeholder ``{"oid": N, "format": "binary", "hex": "..."}`` in
binary format. A value that does not fit its type decodes to
``{"malformed": "<type>", "error": "...", "hex": "..."}``: never an exception.

Decoders are looked up once per column (:func:`decoder_for`) and then called
for every value, so the per-row cost is one call per column.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import math
import operator
import re
import struct
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from pgproxy.protocol import oids
from pgproxy.protocol.errors import DecodeError

JSONValue = Any
ValueDecoder = Callable[[bytes], JSONValue]
TextDecoder = Callable[[str], JSONValue]

_I16 = struct.Struct("!h").unpack_from
_I32 = struct.Struct("!i").unpack_from
_U32 = struct.Struct("!I").unpack_from
_I64 = struct.Struct("!q").unpack_from
_F4 = struct.Struct("!f")
_F8 = struct.Struct("!d").unpack_from
_INTERVAL = struct.Struct("!qii").unpack_from
_TIMETZ = struct.Struct("!qi").unpack_from
_NUMERIC_HEADER = struct.Struct("!hhHh").unpack_from
_ARRAY_HEADER = struct.Struct("!iiI").unpack_from

#: Errors that mean "this value does not fit its type" (anything else a
#: decoder raises is a decoder failure, flagged with :data:`DECODER_FAILURE`).
_MALFORMED = (DecodeError, ValueError, struct.error, OverflowError, IndexError)
#: Key set in the placeholder of a value whose decoder failed unexpectedly.
DECODER_FAILURE: Final = "decoder_failure"

#: How much of a bad value a placeholder shows.
PLACEHOLDER_HEX_BYTES: Final = 64

_INT64_MAX: Final = (1 << 63) - 1
_INT64_MIN: Final = -(1 << 63)
_INT32_MAX: Final = (1 << 31) - 1
_INT32_MIN: Final = -(1 << 31)
_POSTGRES_EPOCH_JDATE: Final = 2451545  # Julian day of 2000-01-01
_USECS_PER_DAY: Final = 86_400_000_000
_UTC = _dt.UTC
_EPOCH_2000 = _dt.datetime(2000, 1, 1, tzinfo=_UTC)


@dataclass(frozen=True, slots=True)
class ValueContext:
    """Session settings that change how values decode.

    Attributes:
        encoding: Python codec of the session's ``client_encoding``.
        timezone: the session's ``TimeZone`` (binary timestamptz values are
            rendered in it, as the server would print them in text).
        max_value_chars: how much of a value will be shown (``None``: all).
            Arrays and records stop decoding once about this many characters
            of them have been rendered, and end with a marker saying how much
            was left out; strings inside them are cut at this length. A
            proxy shows values capped anyway, so decoding the rest of a
            megabyte array would only cost loop time (issue 8).
    """

    encoding: str = "utf-8"
    timezone: str = "UTC"
    max_value_chars: int | None = None


DEFAULT_CONTEXT: Final = ValueContext()


def placeholder(oid: int, data: bytes, error: str | None = None) -> dict[str, Any]:
    """The explicit stand-in for a value that cannot be shown as its type."""
    out: dict[str, Any]
    if error is None:
        out = {"oid": oid, "format": "binary"}
    else:
        out = {"malformed": oids.type_name(oid), "error": error}
    out["hex"] = data[:PLACEHOLDER_HEX_BYTES].hex()
    if len(data) > PLACEHOLDER_HEX_BYTES:
        out["length"] = len(data)
    return out


# --------------------------------------------------------------------------- small helpers


def _exact(data: bytes, n: int, what: str) -> None:
    if len(data) != n:
        raise DecodeError(f"{what} needs {n} bytes, got {len(data)}")


def _special_float(value: float) -> JSONValue:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _float4_shortest(raw: bytes) -> JSONValue:
    (value,) = _F4.unpack(raw)
    if math.isnan(value) or math.isinf(value):
        return _special_float(value)
    # PostgreSQL 12+ prints the shortest decimal that reads back to the same
    # 32-bit float; find it the same way.
    for precision in range(1, 10):
        candidate = float(f"{value:.{precision}g}")
        if _F4.pack(candidate) == raw:
            return candidate
    return value


def _seconds_text(seconds: int, micros: int) -> str:
    """``SS`` plus ``.ffffff`` without trailing zeros, as PostgreSQL's AppendSeconds."""
    if micros:
        return f"{seconds:02d}." + f"{micros:06d}".rstrip("0")
    return f"{seconds:02d}"


def _time_text(micros: int) -> str:
    hours, rem = divmod(micros, 3_600_000_000)
    minutes, rem = divmod(rem, 60_000_000)
    seconds, frac = divmod(rem, 1_000_000)
    return f"{hours:02d}:{minutes:02d}:" + _seconds_text(seconds, frac)


def _offset_text(offset_seconds: int) -> str:
    """``+HH``, ``+HH:MM`` or ``+HH:MM:SS`` as PostgreSQL prints a UTC offset."""
    sign = "-" if offset_seconds < 0 else "+"
    offset_seconds = abs(offset_seconds)
    hours, rem = divmod(offset_seconds, 3600)
    minutes, seconds = divmod(rem, 60)
    out = f"{sign}{hours:02d}"
    if minutes or seconds:
        out += f":{minutes:02d}"
    if seconds:
        out += f":{seconds:02d}"
    return out


def _j2date(jd: int) -> tuple[int, int, int]:
    """Julian day number to (year, month, day), proleptic Gregorian, year <= 0 is BC.

    The classic Fliegel/Van Flandern style conversion PostgreSQL also uses
    (``j2date`` in src/backend/utils/adt/datetime.c), valid for every date
    PostgreSQL can store.
    """
    julian = jd + 32044
    quad = julian // 146097
    extra = (julian - quad * 146097) * 4 + 3
    julian += 60 + quad * 3 + extra // 146097
    quad = julian // 1461
    julian -= quad * 1461
    y = julian * 4 // 1461
    julian = ((julian + 305) % 365 if y != 0 else (julian + 306) % 366) + 123
    y += quad * 4
    year = y - 4800
    quad = julian * 2141 // 65536
    day = julian - 7834 * quad // 256
    month = (quad + 10) % 12 + 1
    return year, month, day


def _date_text(days_since_2000: int) -> tuple[str, str]:
    """(``YYYY-MM-DD``, era suffix) for a day offset from 2000-01-01."""
    year, month, day = _j2date(days_since_2000 + _POSTGRES_EPOCH_JDATE)
    if year <= 0:
        return f"{1 - year:04d}-{month:02d}-{day:02d}", " BC"
    return f"{year:04d}-{month:02d}-{day:02d}", ""


# --------------------------------------------------------------------------- binary decoders


def _bool_bin(data: bytes) -> JSONValue:
    _exact(data, 1, "bool")
    return data[0] != 0


def _int_bin(size: int, name: str) -> ValueDecoder:
    def decode(data: bytes) -> JSONValue:
        _exact(data, size, name)
        return int.from_bytes(data, "big", signed=True)

    return decode


def _uint_bin(size: int, name: str) -> ValueDecoder:
    def decode(data: bytes) -> JSONValue:
        _exact(data, size, name)
        return int.from_bytes(data, "big")

    return decode


def _float4_bin(data: bytes) -> JSONValue:
    _exact(data, 4, "float4")
    return _float4_shortest(data)


def _float8_bin(data: bytes) -> JSONValue:
    _exact(data, 8, "float8")
    return _special_float(_F8(data)[0])


_NUMERIC_SPECIAL = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}


def _numeric_bin(data: bytes) -> JSONValue:
    if len(data) < 8:
        raise DecodeError("numeric header truncated")
    ndigits, weight, sign, dscale = _NUMERIC_HEADER(data, 0)
    if sign in _NUMERIC_SPECIAL:
        return _NUMERIC_SPECIAL[sign]
    if sign not in (0x0000, 0x4000) or ndigits < 0 or dscale < 0:
        raise DecodeError(f"numeric sign {sign:#x} ndigits {ndigits} dscale {dscale}")
    _exact(data, 8 + 2 * ndigits, "numeric")
    digits = struct.unpack_from(f"!{ndigits}h", data, 8)
    if any(d < 0 or d > 9999 for d in digits):
        raise DecodeError("numeric digit outside 0..9999")
    text = "".join(f"{d:04d}" for d in digits)
    point = (weight + 1) * 4  # position of the decimal point within ``text``
    if point <= 0:
        int_part = "0"
        frac = "0" * (-point) + text
    elif point >= len(text):
        int_part = text + "0" * (point - len(text))
        frac = ""
    else:
        int_part, frac = text[:point], text[point:]
    int_part = int_part.lstrip("0") or "0"
    frac = (frac + "0" * dscale)[:dscale]
    out = int_part + ("." + frac if dscale else "")
    return "-" + out if sign == 0x4000 else out


def _text_bin(encoding: str) -> ValueDecoder:
    # A C-level callable: no Python frame per value on the hottest path (text columns).
    return operator.methodcaller("decode", encoding, "backslashreplace")


def _bytea_bin(data: bytes) -> JSONValue:
    return "\\x" + data.hex()


def _uuid_bin(data: bytes) -> JSONValue:
    _exact(data, 16, "uuid")
    return str(uuid.UUID(bytes=data))


def _date_bin(data: bytes) -> JSONValue:
    _exact(data, 4, "date")
    (days,) = _I32(data)
    if days == _INT32_MAX:
        return "infinity"
    if days == _INT32_MIN:
        return "-infinity"
    text, era = _date_text(days)
    return text + era


def _time_bin(data: bytes) -> JSONValue:
    _exact(data, 8, "time")
    (micros,) = _I64(data)
    if not 0 <= micros <= _USECS_PER_DAY:
        raise DecodeError(f"time of {micros} microseconds")
    return _time_text(micros)


def _timetz_bin(data: bytes) -> JSONValue:
    _exact(data, 12, "timetz")
    micros, zone = _TIMETZ(data)
    if not 0 <= micros <= _USECS_PER_DAY:
        raise DecodeError(f"time of {micros} microseconds")
    # The zone is stored as seconds *west* of UTC.
    return _time_text(micros) + _offset_text(-zone)


def _timestamp_text(micros: int) -> tuple[str, str]:
    days, rem = divmod(micros, _USECS_PER_DAY)
    date_text, era = _date_text(days)
    return f"{date_text} {_time_text(rem)}", era


def _timestamp_bin(data: bytes) -> JSONValue:
    _exact(data, 8, "timestamp")
    (micros,) = _I64(data)
    if micros == _INT64_MAX:
        return "infinity"
    if micros == _INT64_MIN:
        return "-infinity"
    text, era = _timestamp_text(micros)
    return text + era


@lru_cache(maxsize=64)
def _zone(name: str) -> _dt.tzinfo | None:
    if name.upper() in ("UTC", "ETC/UTC", "GMT", "Z", "ZULU", "UCT", "ETC/UCT", "ETC/GMT"):
        return _UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _timestamptz_bin(timezone: str) -> ValueDecoder:
    zone = _zone(timezone) or _UTC

    def decode(data: bytes) -> JSONValue:
        _exact(data, 8, "timestamptz")
        (micros,) = _I64(data)
        if micros == _INT64_MAX:
            return "infinity"
        if micros == _INT64_MIN:
            return "-infinity"
        try:
            local = (_EPOCH_2000 + _dt.timedelta(microseconds=micros)).astimezone(zone)
        except OverflowError:
            text, era = _timestamp_text(micros)  # outside datetime's range: shown in UTC
            return text + "+00" + era
        offset = local.utcoffset()
        offset_seconds = int(offset.total_seconds()) if offset is not None else 0
        wall = micros + offset_seconds * 1_000_000
        text, era = _timestamp_text(wall)
        return text + _offset_text(offset_seconds) + era

    return decode


def _trunc_div(a: int, b: int) -> tuple[int, int]:
    """Division truncating toward zero, as C does (PostgreSQL's interval maths)."""
    q = abs(a) // b
    q = q if a >= 0 else -q
    return q, a - q * b


def interval_text(months: int, days: int, micros: int) -> str:
    """Render an interval as PostgreSQL does with ``IntervalStyle = postgres``."""
    if months == _INT32_MAX and days == _INT32_MAX and micros == _INT64_MAX:
        return "infinity"
    if months == _INT32_MIN and days == _INT32_MIN and micros == _INT64_MIN:
        return "-infinity"
    years, mons = _trunc_div(months, 12)
    parts: list[str] = []
    is_zero = True
    is_before = False
    for value, unit in ((years, "year"), (mons, "mon"), (days, "day")):
        if value == 0:
            continue
        plus = "+" if is_before and value > 0 else ""
        parts.append(f"{'' if is_zero else ' '}{plus}{value} {unit}{'' if value == 1 else 's'}")
        is_before = value < 0
        is_zero = False
    hours, rem = _trunc_div(micros, 3_600_000_000)
    minutes, rem = _trunc_div(rem, 60_000_000)
    seconds, frac = _trunc_div(rem, 1_000_000)
    if is_zero or micros != 0:
        minus = micros < 0
        sign = "-" if minus else ("+" if is_before else "")
        parts.append(
            f"{'' if is_zero else ' '}{sign}{abs(hours):02d}:{abs(minutes):02d}:"
            + _seconds_text(abs(seconds), abs(frac))
        )
    return "".join(parts)


def _interval_bin(data: bytes) -> JSONValue:
    _exact(data, 16, "interval")
    micros, days, months = _INTERVAL(data)
    return interval_text(months, days, micros)


def _json_bin(encoding: str) -> ValueDecoder:
    def decode(data: bytes) -> JSONValue:
        return data.decode("utf-8", "backslashreplace")

    return decode


def _jsonb_bin(data: bytes) -> JSONValue:
    if not data or data[0] != 1:
        raise DecodeError("jsonb version byte is not 1")
    return data[1:].decode("utf-8", "backslashreplace")


def _jsonpath_bin(data: bytes) -> JSONValue:
    if not data or data[0] != 1:
        raise DecodeError("jsonpath version byte is not 1")
    return data[1:].decode("utf-8", "backslashreplace")


def _inet_bin(cidr: bool) -> ValueDecoder:
    def decode(data: bytes) -> JSONValue:
        if len(data) < 4:
            raise DecodeError("inet header truncated")
        family, bits, _is_cidr, size = data[0], data[1], data[2], data[3]
        addr = data[4:]
        if len(addr) != size:
            raise DecodeError(f"inet address of {len(addr)} bytes, header says {size}")
        text: str
        if family == 2 and size == 4:
            text = str(ipaddress.IPv4Address(addr))
            full = 32
        elif family == 3 and size == 16:
            v6 = ipaddress.IPv6Address(addr)
            mapped = v6.ipv4_mapped
            text = f"::ffff:{mapped}" if mapped is not None else v6.compressed
            full = 128
        else:
            raise DecodeError(f"inet family {family} with {size} bytes")
        if bits > full:
            raise DecodeError(f"inet netmask /{bits}")
        if cidr or bits != full:
            text += f"/{bits}"
        return text

    return decode


def _macaddr_bin(size: int) -> ValueDecoder:
    def decode(data: bytes) -> JSONValue:
        _exact(data, size, "macaddr")
        return ":".join(f"{b:02x}" for b in data)

    return decode


def _bit_bin(data: bytes) -> JSONValue:
    if len(data) < 4:
        raise DecodeError("bit length truncated")
    (nbits,) = _I32(data)
    if nbits < 0 or (nbits + 7) // 8 != len(data) - 4:
        raise DecodeError(f"bit string of {nbits} bits in {len(data) - 4} bytes")
    return "".join(f"{b:08b}" for b in data[4:])[:nbits]


def _tid_bin(data: bytes) -> JSONValue:
    _exact(data, 6, "tid")
    block, offset = struct.unpack("!IH", data)
    return f"({block},{offset})"


def _void_bin(data: bytes) -> JSONValue:
    return ""


# --------------------------------------------------------------------------- text decoders (str -> value)


def _bool_text(s: str) -> JSONValue:
    if s == "t":
        return True
    if s == "f":
        return False
    raise DecodeError(f"bool text {s!r}")


def _float_text(s: str) -> JSONValue:
    if s in ("NaN", "Infinity", "-Infinity"):
        return s
    return float(s)


# --------------------------------------------------------------------------- arrays

#: PostgreSQL's MAXDIM: no array has more dimensions, so deeper text is malformed.
MAX_ARRAY_DIMENSIONS: Final = 6
_QUOTED_RUN = re.compile(r'[^"\\]+')
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=8)
def _unquoted_run(delimiter: str) -> re.Pattern[str]:
    return re.compile(r"[^\\{}" + re.escape(delimiter) + r"]+")


def cap_text(text: str, limit: int | None) -> str:
    """``text`` cut at ``limit`` characters, saying how many were left out."""
    if limit is not None and len(text) > limit:
        return f"{text[:limit]}…[+{len(text) - limit} chars]"
    return text


def _omitted(count: int, unit: str) -> str:
    return f"…[+{count} {unit}]"


def parse_array_text(s: str, element: TextDecoder | None, delimiter: str = ",", limit: int | None = None) -> JSONValue:
    """Parse PostgreSQL's array text form (``{1,2,NULL}``, ``[0:1]={a,b}``, nested).

    Elements are decoded with ``element`` (``None`` keeps them as strings);
    an unquoted ``NULL`` is ``None``. Runs of ordinary characters are
    scanned by regular expressions, so the cost per byte is flat and mostly
    in C.

    Args:
        s: the array's text.
        element: decoder of one element's text.
        delimiter: ``,`` (``;`` for ``box``).
        limit: stop after about this many characters of the text and end the
            innermost list with ``"…[+N chars]"`` (N characters not parsed);
            strings inside are cut at this length. ``None`` parses it all.

    Raises:
        DecodeError: malformed text, or nested deeper than PostgreSQL allows.
    """
    pos = 0
    n = len(s)
    if s.startswith("["):  # explicit bounds decoration: "[1:2][3:4]={...}"
        eq = s.find("=")
        if eq < 0:
            raise DecodeError("array bounds without '='")
        pos = eq + 1
    if pos >= n or s[pos] != "{":
        raise DecodeError("array text does not start with '{'")
    stop = n if limit is None else pos + limit
    unquoted = _unquoted_run(delimiter)
    stack: list[list[Any]] = []
    root: list[Any] | None = None
    expecting_value = True
    while pos < n:
        if pos >= stop and stack:
            stack[-1].append(_omitted(n - pos, "chars"))
            return stack[0]
        ch = s[pos]
        if ch == "{":
            if len(stack) >= MAX_ARRAY_DIMENSIONS:
                raise DecodeError(f"array text nested deeper than {MAX_ARRAY_DIMENSIONS} dimensions")
            new: list[Any] = []
            if stack:
                stack[-1].append(new)
            stack.append(new)
            pos += 1
            expecting_value = True
        elif ch == "}":
            if not stack:
                raise DecodeError("unbalanced '}' in array")
            done = stack.pop()
            pos += 1
            expecting_value = False
            if not stack:
                root = done
                break
        elif ch == delimiter:
            pos += 1
            expecting_value = True
        elif ch.isspace():
            m = _SPACES.match(s, pos)
            pos = m.end() if m else pos + 1
        elif ch == '"':
            if not stack or not expecting_value:
                raise DecodeError("misplaced array element")
            text, pos, complete = _quoted_element(s, pos + 1, stop)
            if not complete:
                stack[-1].append(cap_text(text, limit))
                stack[-1].append(_omitted(n - pos, "chars"))
                return stack[0]
            stack[-1].append(element(text) if element else cap_text(text, limit))
            expecting_value = False
        else:
            start = pos
            if not stack or not expecting_value:
                raise DecodeError(f"misplaced array element at {start}")
            parts: list[str] = []
            while pos < n:
                m = unquoted.match(s, pos)
                if m is not None:
                    parts.append(m.group())
                    pos = m.end()
                elif s[pos] == "\\" and pos + 1 < n:
                    parts.append(s[pos + 1])
                    pos += 2
                else:
                    break
                if pos > stop:
                    break
            raw = "".join(parts).strip()
            if raw.upper() == "NULL" and s[start:pos].strip().upper() == "NULL":
                stack[-1].append(None)
            else:
                stack[-1].append(element(raw) if element else cap_text(raw, limit))
            expecting_value = False
    if root is None or s[pos:].strip():
        raise DecodeError("array text is not one balanced {...}")
    return root


def _quoted_element(s: str, pos: int, stop: int) -> tuple[str, int, bool]:
    """The body of a quoted array element starting at ``pos``; the position after it; whether it ended.

    Stops early (``False``) once past ``stop``: what follows will not be shown.
    """
    n = len(s)
    parts: list[str] = []
    while True:
        if pos >= n:
            raise DecodeError("unterminated quoted array element")
        if pos > stop:
            return "".join(parts), pos, False
        m = _QUOTED_RUN.match(s, pos)
        if m is not None:
            parts.append(m.group())
            pos = m.end()
            continue
        if s[pos] == "\\":
            if pos + 1 >= n:
                raise DecodeError("dangling backslash in array")
            parts.append(s[pos + 1])
            pos += 2
            continue
        return "".join(parts), pos + 1, True  # the closing quote


def _array_bin(ctx: ValueContext) -> ValueDecoder:
    def decode(data: bytes) -> JSONValue:
        if len(data) < 12:
            raise DecodeError("array header truncated")
        ndim, _flags, element_oid = _ARRAY_HEADER(data, 0)
        if ndim == 0:
            return []
        if not 0 < ndim <= 6:  # MAXDIM is 6
            raise DecodeError(f"array with {ndim} dimensions")
        pos = 12
        dims: list[int] = []
        for _ in range(ndim):
            if pos + 8 > len(data):
                raise DecodeError("array dimensions truncated")
            (dim,) = _I32(data, pos)
            if dim < 0:
                raise DecodeError(f"array dimension {dim}")
            dims.append(dim)
            pos += 8  # dimension size, lower bound (not shown)
        element = decoder_for(element_oid, 1, ctx, safe=False)
        limit = ctx.max_value_chars
        budget = len(data) if limit is None else limit
        total = math.prod(dims)
        flat: list[JSONValue] = []
        shown = 0
        for done in range(total):
            if shown > budget:  # the rest would not be shown: do not decode it
                out = _nest(flat, dims)
                out.append(_omitted(total - done, "elements"))
                return out
            if pos + 4 > len(data):
                raise DecodeError("array element truncated")
            (length,) = _I32(data, pos)
            pos += 4
            if length == -1:
                flat.append(None)
                shown += 5
                continue
            if length < 0 or pos + length > len(data):
                raise DecodeError("array element runs past the value")
            value = element(data[pos : pos + length])
            flat.append(cap_text(value, limit) if isinstance(value, str) else value)
            shown += length + 2
            pos += length
        if pos != len(data):
            raise DecodeError("trailing bytes after array elements")
        return _nest(flat, dims)

    return decode


def _nest(flat: list[JSONValue], dims: list[int]) -> list[JSONValue]:
    for dim in reversed(dims[1:]):
        flat = [flat[i : i + dim] for i in range(0, len(flat), dim)]
    return flat


#: Records inside records (binary ``record`` fields of type ``record``) nest
#: no deeper than this: each level costs a Python frame, and the rendered
#: event must stay well inside any JSON encoder's nesting limit.
MAX_RECORD_NESTING: Final = 16
_record_depth = [0]


def _record_bin(ctx: ValueContext) -> ValueDecoder:
    """Anonymous composite (``record``): Int32 count, then (oid, length, bytes) each."""

    def decode(data: bytes) -> JSONValue:
        if _record_depth[0] >= MAX_RECORD_NESTING:
            raise DecodeError(f"records nested deeper than {MAX_RECORD_NESTING}")
        _record_depth[0] += 1
        try:
            return decode_fields(data)
        finally:
            _record_depth[0] -= 1

    def decode_fields(data: bytes) -> JSONValue:
        if len(data) < 4:
            raise DecodeError("record header truncated")
        (count,) = _I32(data, 0)
        pos = 4
        out: list[JSONValue] = []
        limit = ctx.max_value_chars
        budget = len(data) if limit is None else limit
        for done in range(count):
            if pos - 4 - 8 * done > budget:  # the rest would not be shown: do not decode it
                out.append(_omitted(count - done, "fields"))
                return out
            if pos + 8 > len(data):
                raise DecodeError("record field truncated")
            (oid,) = _U32(data, pos)
            (length,) = _I32(data, pos + 4)
            pos += 8
            if length == -1:
                out.append(None)
                continue
            if length < 0 or pos + length > len(data):
                raise DecodeError("record field runs past the value")
            value = decoder_for(oid, 1, ctx)(data[pos : pos + length])
            out.append(cap_text(value, limit) if isinstance(value, str) else value)
            pos += length
        return out

    return decode


# --------------------------------------------------------------------------- registry

#: Text-format decoders applied to the decoded string; missing means "keep the string".
_TEXT: dict[int, TextDecoder] = {
    oids.BOOL: _bool_text,
    oids.INT2: int,
    oids.INT4: int,
    oids.INT8: int,
    oids.OID: int,
    oids.XID: int,
    oids.CID: int,
    oids.XID8: int,
    oids.FLOAT4: _float_text,
    oids.FLOAT8: _float_text,
}

_TEXT_INTEGERS = frozenset((oids.INT2, oids.INT4, oids.INT8, oids.OID, oids.XID, oids.CID, oids.XID8))

#: Binary decoders that do not depend on the session.
_BINARY: dict[int, ValueDecoder] = {
    oids.BOOL: _bool_bin,
    oids.INT2: _int_bin(2, "int2"),
    oids.INT4: _int_bin(4, "int4"),
    oids.INT8: _int_bin(8, "int8"),
    oids.OID: _uint_bin(4, "oid"),
    oids.XID: _uint_bin(4, "xid"),
    oids.CID: _uint_bin(4, "cid"),
    oids.XID8: _uint_bin(8, "xid8"),
    oids.REGPROC: _uint_bin(4, "regproc"),
    oids.REGCLASS: _uint_bin(4, "regclass"),
    oids.REGTYPE: _uint_bin(4, "regtype"),
    oids.REGPROCEDURE: _uint_bin(4, "regprocedure"),
    oids.REGOPER: _uint_bin(4, "regoper"),
    oids.REGOPERATOR: _uint_bin(4, "regoperator"),
    oids.REGNAMESPACE: _uint_bin(4, "regnamespace"),
    oids.REGROLE: _uint_bin(4, "regrole"),
    oids.FLOAT4: _float4_bin,
    oids.FLOAT8: _float8_bin,
    oids.NUMERIC: _numeric_bin,
    oids.BYTEA: _bytea_bin,
    oids.UUID: _uuid_bin,
    oids.DATE: _date_bin,
    oids.TIME: _time_bin,
    oids.TIMETZ: _timetz_bin,
    oids.TIMESTAMP: _timestamp_bin,
    oids.INTERVAL: _interval_bin,
    oids.JSONB: _jsonb_bin,
    oids.JSONPATH: _jsonpath_bin,
    oids.INET: _inet_bin(cidr=False),
    oids.CIDR: _inet_bin(cidr=True),
    oids.MACADDR: _macaddr_bin(6),
    oids.MACADDR8: _macaddr_bin(8),
    oids.BIT: _bit_bin,
    oids.VARBIT: _bit_bin,
    oids.TID: _tid_bin,
    oids.VOID: _void_bin,
}

#: Types whose binary form is their text in the client encoding.
_TEXTUAL_BINARY = frozenset(
    (oids.TEXT, oids.VARCHAR, oids.BPCHAR, oids.NAME, oids.CHAR, oids.UNKNOWN, oids.XML, oids.CSTRING)
)


def known(oid: int) -> bool:
    """True when the OID has a dedicated decoder (arrays of known types included)."""
    return (
        oid in _BINARY
        or oid in _TEXTUAL_BINARY
        or oid in (oids.JSON, oids.RECORD)
        or (oid in oids.ARRAY_ELEMENT and known(oids.ARRAY_ELEMENT[oid]))
    )


def _raw_decoder(oid: int, fmt: int, ctx: ValueContext) -> ValueDecoder:
    """Unguarded decoder for one (OID, format); may raise on malformed values."""
    encoding = ctx.encoding
    if fmt == 0:
        element = oids.ARRAY_ELEMENT.get(oid)
        if element is not None:
            inner = _TEXT.get(element)
            limit = ctx.max_value_chars

            def decode_array(data: bytes) -> JSONValue:
                # Decoding the bytes is C-speed; parsing stops where showing stops.
                return parse_array_text(data.decode(encoding, "backslashreplace"), inner, ",", limit)

            return decode_array
        if oid in _TEXT_INTEGERS:
            # int() parses ASCII digits straight from bytes, and every client
            # encoding PostgreSQL supports is ASCII-compatible for digits.
            return int
        conv = _TEXT.get(oid)
        if conv is None:
            return _text_bin(encoding)

        def decode_text(data: bytes) -> JSONValue:
            return conv(data.decode(encoding, "backslashreplace"))

        return decode_text
    if fmt != 1:
        raise DecodeError(f"format code {fmt}")
    binary = _BINARY.get(oid)
    if binary is not None:
        return binary
    if oid in _TEXTUAL_BINARY:
        return _text_bin(encoding)
    if oid == oids.JSON:
        return _json_bin(encoding)
    if oid == oids.TIMESTAMPTZ:
        return _timestamptz_bin(ctx.timezone)
    if oid in oids.ARRAY_ELEMENT:
        return _array_bin(ctx)
    if oid == oids.RECORD:
        return _record_bin(ctx)

    def unknown(data: bytes) -> JSONValue:
        return placeholder(oid, data)

    return unknown


#: What :func:`plain_decoding` says of a type and format.
PLAIN_INTEGER: Final = 1
PLAIN_TEXT: Final = 2


def plain_decoding(oid: int, fmt: int) -> int:
    """How :func:`decoder_for` decodes a well-formed value of ``oid`` in ``fmt``, where that is one C call.

    PLAIN_INTEGER: ``int(data)``; PLAIN_TEXT: ``data.decode(ctx.encoding,
    "backslashreplace")``; 0: anything else. Where that call raises, the decoder
    shows a placeholder instead: a caller taking the shortcut asks the decoder
    then. The statement tracker decodes a Bind's parameters so (a call through
    the guarded decoder cost ~1.5k instructions a parameter, compiled);
    tests/test_bind_bookkeeping.py holds it to :func:`decoder_for`.
    """
    if fmt == 0:
        if oids.ARRAY_ELEMENT.get(oid) is not None:
            return 0
        if oid in _TEXT_INTEGERS:
            return PLAIN_INTEGER
        return PLAIN_TEXT if _TEXT.get(oid) is None else 0
    if fmt == 1 and _BINARY.get(oid) is None and oid in _TEXTUAL_BINARY:
        return PLAIN_TEXT
    return 0


@lru_cache(maxsize=4096)
def decoder_for(oid: int, fmt: int, ctx: ValueContext = DEFAULT_CONTEXT, safe: bool = True) -> ValueDecoder:
    """A decoder for values of type ``oid`` in format ``fmt`` (0 text, 1 binary).

    With ``safe`` (the default) the decoder never raises: a value that does
    not fit its type becomes a :func:`placeholder` naming the problem.
    Decoders are cached, so resolving a RowDescription's columns is cheap.
    """
    try:
        raw = _raw_decoder(oid, fmt, ctx)
    except DecodeError as exc:
        reason = str(exc)

        def bad_format(data: bytes) -> JSONValue:
            return placeholder(oid, data, reason)

        return bad_format
    if not safe:
        return raw

    def guarded(data: bytes) -> JSONValue:
        try:
            return raw(data)
        except _MALFORMED as exc:  # the value does not fit its type: shown as such
            return placeholder(oid, data, str(exc) or type(exc).__name__)
        except Exception as exc:  # a decoder bug (RecursionError included): never breaks the message
            failed = placeholder(oid, data, f"{type(exc).__name__}: {exc}")
            failed[DECODER_FAILURE] = True  # the tracker reports it as a session.anomaly
            return failed

    return guarded


def decode_value(oid: int, fmt: int, data: bytes | None, ctx: ValueContext = DEFAULT_CONTEXT) -> JSONValue:
    """Decode one value (``None`` stays ``None``); never raises."""
    if data is None:
        return None
    return decoder_for(oid, fmt, ctx)(data)
