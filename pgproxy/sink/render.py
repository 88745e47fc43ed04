"""Renderers and the last-line scrubber for log events."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, Final

import structlog

from pgproxy.tracker.records import SESSION_READY, KeptRecord, Record
from pgproxy.tracker.redaction import DEFAULT_SENSITIVE_NAMES, REDACTED

#: Top-level keys that never carry values: a defence in depth behind the
#: tracker's own redaction, for fields added by any future code path.
_SECRET_KEYS: Final = frozenset(
    variant
    for name in ("password", "passwd", "secret", "secret_key", "token", "sasl_data", "md5", "api_key")
    for variant in (name, name.upper(), name.capitalize())
)


_orjson: Any
try:  # orjson renders an event ~5x faster than the standard library
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised where orjson is absent
    _orjson = None


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _dumps_stdlib(obj: Any, **_kw: Any) -> str:
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_default)
    except (RecursionError, ValueError, TypeError) as exc:
        # Too deep or otherwise unrenderable: render field by field, replacing
        # what cannot be rendered, so the event itself is never lost.
        if not isinstance(obj, dict):
            return json.dumps({"unrenderable": f"{type(exc).__name__}: {exc}"})
        out: dict[str, Any] = {}
        for key, value in obj.items():
            try:
                json.dumps(value, default=_default)
            except (RecursionError, ValueError, TypeError) as err:
                out[str(key)] = f"[unrenderable {type(value).__name__}: {type(err).__name__}]"
            else:
                out[str(key)] = value
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=_default)


def _dumps_orjson(obj: Any, **_kw: Any) -> str:
    try:
        return str(_orjson.dumps(obj, default=_default).decode())
    except TypeError:  # e.g. integers beyond 64 bits: the standard library copes
        return _dumps_stdlib(obj)


#: JSON serializer for events: compact, UTF-8, never fails on odd values.
dumps = _dumps_orjson if _orjson is not None else _dumps_stdlib


#: b"000" to b"999", and b"000Z" to b"999Z": a timestamp's microseconds as two table lookups
#: (formatting them cost more than the rest of the timestamp).
_THREE_DIGITS: Final = tuple(f"{n:03d}".encode() for n in range(1000))
_THREE_DIGITS_Z: Final = tuple(f"{n:03d}Z".encode() for n in range(1000))
#: b'000Z"}' to b'999Z"}': how a direct JSON line ends (``Stamp.stamp(closing=True)``: one piece fewer to join).
_THREE_DIGITS_CLOSING: Final = tuple(f'{n:03d}Z"}}'.encode() for n in range(1000))


class Stamp:
    """structlog processor: ``level``, an ISO-8601 UTC ``timestamp``, and the secret scrub, in one call.

    Equivalent to ``add_log_level`` + ``TimeStamper(fmt="iso", utc=True)`` plus
    withholding any top-level key that names a secret (a defence in depth
    behind the tracker's redaction), but the date-time prefix is formatted once
    per second rather than per event: this runs on the event loop for every event.
    """

    __slots__ = ("_clock", "_prefix", "_second")

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        # The clock (nanoseconds) kept: ``time.time_ns`` looked up on the module per chunk
        # cost ~270 of stamp()'s ~1.2k instructions (compiled, callgrind).
        self._clock = clock
        self._second = -1
        self._prefix = b""  # b"2026-11-27T12:00:00." for self._second

    def __call__(self, _logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event["level"] = "warning" if method == "warn" else method
        event["timestamp"] = self.timestamp()
        for key in _SECRET_KEYS.intersection(event):
            event[key] = REDACTED
        return event

    def timestamp(self) -> str:
        """Now, as ISO 8601 UTC with microseconds (``2026-11-27T12:00:00.123456Z``)."""
        return self.stamp().decode()

    def stamp(self, closing: bool = False) -> bytes:
        """:meth:`timestamp` in ASCII bytes, what the direct JSON lines splice in (no text built, then encoded).

        From the integer clock: no float arithmetic, and the microseconds are
        exact (truncated, as before). Bytes from the start saved ~1k of its
        ~2.2k instructions in the compiled build (callgrind), once per chunk
        of records. ``closing``: followed by the ``"}`` that ends a direct line.
        """
        micros = self._clock() // 1000
        second = micros // 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)).encode()
        # A remainder, not ``micros - second * 1_000_000``: compiled, that product leaves
        # mypyc's short-integer fast path (~790 of this method's ~2k instructions, callgrind).
        micros %= 1_000_000
        ends = _THREE_DIGITS_CLOSING if closing else _THREE_DIGITS_Z
        return self._prefix + _THREE_DIGITS[micros // 1000] + ends[micros % 1000]


#: Keys that send a record the general way: the event's own name, level and
#: timestamp, and the secret keys (the general path withholds their values).
_GUARDED_KEYS: Final = _SECRET_KEYS | {"event", "level", "timestamp"}
# Bound once: per line, a method looked up on the module and on the set cost
# ~1k of the ~14k instructions of JsonLines.line in the compiled build (callgrind).
_guarded_keys_absent: Final[Callable[[Iterable[Any]], bool]] = _GUARDED_KEYS.isdisjoint
_orjson_dumps: Final[Any] = _orjson.dumps if _orjson is not None else None
# Compiled, a module's function used as a value is looked up in the module's dict (~130 instructions a line).
_render_default: Final = _default
#: Whether a line's pieces are put together by ``b"%b" %`` rather than joined: in the compiled build
#: (mypyc) that formatting of bytes is one allocation and a copy of each piece (CPyBytes_Build), where
#: the join takes each through the buffer protocol, with a tuple to hold them: a prepared statement's
#: sink 11.9k -> 11.35k instructions (callgrind). Interpreted, the formatting parses its format and
#: costs more than the join (28.0k -> 29.4k): pure Python joins.
_FORMAT_PIECES: Final = not __file__.endswith(".py")


#: Field layouts :class:`JsonLines` remembers as checked (then it forgets them all and starts again):
#: one per prepared statement text and simple-Query analysis in use, as the tracker keeps them.
_MAX_LAYOUTS: Final = 1024


class JsonLines:
    """Renders a record's fields straight to one JSON line, without structlog's processor chain.

    The line is the one the general path (``Stamp`` then ``JSONRenderer(dumps)``)
    writes, byte for byte: the fields in their order, then ``event``, ``level``
    and ``timestamp``; secret keys withheld. This runs once per ``query`` and
    ``message`` event on the event loop, where the general path's bound-logger
    call, dict copies and processors cost about twenty times the rendering
    itself. Returns None when the fast way cannot promise the same line
    (orjson missing, a reserved or secret key, a value orjson refuses); the
    caller then takes the general path.
    """

    __slots__ = (
        "_head",
        "_head_event",
        "_head_level",
        "_heads",
        "_layout",
        "_layouts",
        "_parameters",
        "_parameters_rendered",
        "_stamp",
    )

    def __init__(self, stamp: Stamp) -> None:
        self._stamp = stamp
        # Field layouts (see Record.layout) found free of guarded keys, by id (the dict kept,
        # so its id is not reused while it is here), and the one a line used last.
        self._layouts: dict[int, dict[str, Any]] = {}
        self._layout: dict[str, Any] | None = None
        self._heads: dict[tuple[str, str], bytes] = {}  # (event, level) -> b',"event":...,"timestamp":"'
        # The last line's head and the event and level it is for: a run of one kind of
        # record (every statement's ``query`` at info) skips the pair's tuple and lookup
        # (~550 instructions a line, compiled, callgrind). Compared by identity: an equal
        # name in another object only takes the lookup.
        self._head_event: str | None = None  # None: no line yet (no event is None)
        self._head_level: str | None = None
        self._head = b""
        # The last session.ready's ``parameters`` dict (kept, so its id is not reused) and, once a
        # second record brought the same dict, its rendering (see _ready_fields).
        self._parameters: dict[str, Any] | None = None
        self._parameters_rendered: Any = None

    def __call__(self, event: str, level: str, fields: dict[str, Any]) -> str | None:
        return self.line(event, level, fields, self._stamp.stamp())

    def line(self, event: str, level: str, fields: dict[str, Any], stamp: bytes) -> str | None:
        """The line with a ``timestamp`` the caller took: one for every record of a chunk (:meth:`LogSink.emit_all`)."""
        line = self.record_line(Record(event, level, fields), stamp + b'"}')
        return None if line is None else line.decode()

    def record_line(self, record: Record, closing: bytes) -> bytes | None:
        """A record's line in UTF-8, ending with ``closing`` (``Stamp.stamp(closing=True)``: the timestamp's value and ``"}``).

        A ``query`` record's session fields come from their rendering cached for the session;
        a :class:`~pgproxy.tracker.records.KeptRecord` keeps its line up to the
        timestamp (``rendered``), which the log sink then uses as it is.

        Bytes, as orjson renders them: the log writer's thread turns a whole
        batch of them into text at once (:class:`~pgproxy.sink.writer.QueueWriter`),
        where decoding each line here on the event loop cost ~1.2k instructions
        a record in the compiled build (callgrind).

        Those fields (:class:`~pgproxy.tracker.records.SessionContext`) are
        checked for secret keys and rendered once per session, and spliced
        before the statement's own, so each statement renders and checks only
        its dozen own fields (the same line as rendering the joined fields).
        One method, not one per step: each Python call cost ~1.5k instructions
        a record in the pure build.
        """
        dumps = _orjson_dumps
        fields = record.own
        layout = record.layout
        # A copy of a checked layout with as many fields has its keys: no need to check them again.
        checked = layout is not None and len(fields) == len(layout) and (layout is self._layout or self._free(layout))
        if dumps is None or not (checked or _guarded_keys_absent(fields)):
            return None
        context = record.context
        start: bytes
        if context is None:
            start = b"{"
            if record.event == SESSION_READY:
                fields = self._ready_fields(fields)
        else:
            rendered = context.rendered  # None (not rendered yet): not a bytes value, compiled
            if rendered is None:
                rendered = context.rendered = _start(context.fields)
            if not rendered:  # the session's fields cannot be written the fast way
                return None
            start = rendered
        try:
            body: bytes = dumps(fields, default=_render_default)
        except TypeError:  # e.g. integers beyond 64 bits: the general path copes
            return None
        event, level = record.event, record.level
        if event is self._head_event and level is self._head_level:
            head = self._head
        else:
            found = self._heads.get((event, level))
            if found is None:
                found = b',"event":' + _orjson.dumps(event) + b',"level":' + _orjson.dumps(level) + b',"timestamp":"'
                self._heads[(event, level)] = found
            head = self._head = found
            self._head_event, self._head_level = event, level
        if isinstance(record, KeptRecord):  # handed out again: its line up to the timestamp is kept with it
            rendered = record.rendered = b"".join((start, head[1:])) if len(body) == 2 else start + body[1:-1] + head
            return rendered + closing
        if len(body) == 2:  # no fields: '{}'
            return b"".join((start, head[1:], closing))
        if _FORMAT_PIECES:
            return b"%b%b%b%b" % (start, body[1:-1], head, closing)
        return b"".join((start, body[1:-1], head, closing))

    def _ready_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``session.ready``'s fields, its ``parameters`` as their rendering when the last record brought the same dict.

        Sessions answered by a login answer the tracker knew share one
        parameters dict (tracker/session.py _answer_parameters); its dozen
        entries cost ~3.5k instructions to render per connection (compiled,
        callgrind), where a copy of the record's ten fields with the dict's
        rendering (an ``orjson.Fragment``, written as it is) costs a fraction.
        The same dict renders to the same bytes; a dict seen for the first time
        (a session's own copy) is rendered with its record as before, so only
        a dict that comes back is rendered apart. tests/test_sink.py holds the
        lines to the general path's.
        """
        parameters = fields.get("parameters")
        if parameters is None:
            return fields
        if parameters is not self._parameters:
            self._parameters = parameters
            self._parameters_rendered = None
            return fields
        rendered = self._parameters_rendered
        if rendered is None:
            try:
                rendered = self._parameters_rendered = _orjson.Fragment(_orjson_dumps(parameters, default=_default))
            except TypeError:
                return fields
        return {**fields, "parameters": rendered}

    def _free(self, layout: dict[str, Any]) -> bool:
        """Whether ``layout``'s keys are free of guarded ones (then it is the last layout used).

        Checked once per layout: a record copied from it has its keys while it
        has as many (:attr:`~pgproxy.tracker.records.Record.layout`), so the
        record's own check (``isdisjoint`` over its twenty-odd keys, ~2.5k of
        a compiled prepared statement's ~16k sink instructions, callgrind) is
        skipped. A layout with a guarded key is not kept: its records are
        checked one by one (and go the general way).
        """
        layouts = self._layouts
        if layouts.get(id(layout)) is not layout:
            if not _guarded_keys_absent(layout):
                return False
            if len(layouts) >= _MAX_LAYOUTS:
                layouts.clear()
            layouts[id(layout)] = layout
        self._layout = layout
        return True


def _start(fields: dict[str, Any]) -> bytes:
    """``fields`` as the start of an object (``{"a":1,"b":2,``), or b"" when the fast way cannot write them."""
    if _orjson_dumps is None or not _guarded_keys_absent(fields):
        return b""
    try:
        body: bytes = _orjson_dumps(fields, default=_default)
    except TypeError:
        return b""
    return b"{" if len(body) == 2 else body[:-1] + b","


#: Context repeated on every query event; JSON keeps it, a terminal reader does not need it.
_CONSOLE_OMITS: Final = ("db.system.name", "server.address", "server.port", "client.address", "client.port")


class ConsoleRenderer:
    """Human-readable rendering: one line per event, hex dumps indented below it."""

    def __init__(self, colors: bool) -> None:
        try:  # structlog >= 25 renamed pad_event (and warns about the old name)
            self._inner = structlog.dev.ConsoleRenderer(colors=colors, sort_keys=False, pad_event_to=18)
        except TypeError:
            self._inner = structlog.dev.ConsoleRenderer(colors=colors, sort_keys=False, pad_event=18)

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        dump = event.pop("hex", None)
        for key in _CONSOLE_OMITS:
            event.pop(key, None)
        columns = event.get("columns")
        if isinstance(columns, list):  # RowDescription: "users_id:int4 users_email:varchar" reads best
            event["columns"] = " ".join(
                f"{c.get('name')}:{c.get('type')}" + (":binary" if c.get("format") == "binary" else "")
                for c in columns
                if isinstance(c, dict)
            )
        line: str = self._inner(logger, method, event)
        if dump:
            line += "\n" + "\n".join("    " + row for row in str(dump).splitlines())
        return line


__all__ = ["DEFAULT_SENSITIVE_NAMES", "ConsoleRenderer", "JsonLines", "Stamp", "dumps"]
