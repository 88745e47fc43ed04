"""Log records are values: what the tracker returns, what the sink writes.

The tracker never calls a logger; it returns :class:`Record` objects, so tests
can assert that a given record is the direct consequence of given bytes
(mitmproxy's ``Log`` command, shared/STYLE.md section 2). Event names are
``noun.verb`` in the past tense, or a bare noun for per-item events.
"""

from __future__ import annotations

import enum
from typing import Any, Final

from pgproxy.protocol.values import cap_text


class Detail(enum.IntEnum):
    """How much a session logs; each level includes the ones below it."""

    CONNECTION = 0
    """Session start, readiness, end, anomalies."""
    QUERY = 1
    """Plus one ``query`` event per statement, notices and notifications."""
    MESSAGE = 2
    """Plus one ``message`` event per protocol message, rows decoded."""
    WIRE = 3
    """Plus a hex dump of every message."""

    @classmethod
    def parse(cls, text: str) -> Detail:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(d.name.lower() for d in cls)
            raise ValueError(f"unknown detail level {text!r} (choose {choices})") from None


# Event names, stable and documented in the README.
SESSION_STARTED: Final = "session.started"
SESSION_READY: Final = "session.ready"
SESSION_AUTH_FAILED: Final = "session.auth_failed"
SESSION_STARTUP_FAILED: Final = "session.startup_failed"
SESSION_ENCRYPTED: Final = "session.encrypted"
SESSION_ANOMALY: Final = "session.anomaly"
SESSION_ENDED: Final = "session.ended"
MESSAGE: Final = "message"
QUERY: Final = "query"
NOTICE: Final = "notice"
NOTIFICATION: Final = "notification"


def truncate(value: Any, limit: int) -> Any:
    """A string longer than ``limit`` characters cut to it, saying how much was cut; anything else unchanged.

    Every logged text (values, parameters, SQL, payloads) is capped here or by
    :func:`~pgproxy.protocol.values.cap_text`, which this defers to, so the
    ``…[+N chars]`` marker reads the same wherever a text was cut.
    """
    return cap_text(value, limit) if isinstance(value, str) else value


#: Scaled durations below this (2**31 thousandths of a millisecond: 35 minutes) take
#: :func:`round_ms`'s quick way: the float product is then within 2**-22 of the exact one.
_QUICK_SCALED_BELOW: Final = 2147483648.0


def round_ms(ms: float) -> float:
    """``round(ms, 3)``, the same float, mostly without the builtin's decimal conversion.

    The builtin rounds the exact binary value to three decimals through
    ``_Py_dg_dtoa`` and reads the digits back (~2.4k instructions, a
    tenth of a compiled statement's record). Where ``ms * 1000`` is positive,
    below 2**31 and not within a millionth of a half, the nearest integer
    ``k`` of the float product is that of the exact product (its error is at
    most 2**-22), and ``k / 1000`` is the float nearest to ``k`` thousandths,
    as the builtin's reading of its digits is. Anything else (zero and its
    sign, halves, long or negative durations, NaN) asks the builtin.
    tests/test_durations.py holds the two together.
    """
    scaled = ms * 1000.0
    if 0.0 < scaled < _QUICK_SCALED_BELOW:
        whole = int(scaled)
        fraction = scaled - whole
        if fraction < 0.499999:
            return whole / 1000.0
        if fraction > 0.500001:
            return (whole + 1) / 1000.0
    return round(ms, 3)


class SessionContext:
    """The fields a session's ``query`` records start with (session, addresses, user, database, backend pid).

    A snapshot: the statement tracker makes one when the session's context
    changes (start-up, BackendKeyData) and every ``query`` record shares it
    until the next change, so nothing ever mutates ``fields``. ``rendered`` is
    the log sink's cache of these fields as the start of a JSON object (see
    :meth:`~pgproxy.sink.render.JsonLines.record_line`): nine or ten of a
    ``query`` record's twenty-odd fields rendered and checked for secret keys
    once per session rather than on every statement.
    """

    __slots__ = ("fields", "rendered")

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self.rendered: Any = None  # the sink's; None until it looked


class Record:
    """One log event: its name, level and JSON-ready fields.

    A value: nothing changes a record once the tracker has returned it. It is
    a plain class with a written-out ``__init__`` rather than a dataclass: a
    frozen dataclass's ``__init__`` sets each attribute through
    ``object.__setattr__`` (0.50 against 0.13 µs per record, and message detail
    makes ten records per pgbench transaction), and in the compiled build a
    dataclass's generated ``__init__`` stays interpreted (~1.8k instructions a
    record, callgrind) where this one is compiled. Equality and ``repr`` are
    the dataclass's.

    ``logged`` is False for a ``query`` record that ``query.filter`` (scope,
    SQL pattern, minimum duration, sampling) did not select: the log sink
    skips it, while metrics and statistics still count it, so their numbers
    are what ran, not what was sampled. It is not a field: it is never written.

    A ``query`` record keeps its session's fields apart: ``context`` (a shared
    :class:`SessionContext`) holds them and ``own`` the statement's, so the
    sink renders the shared ones once per session and the tracker does not
    copy them into every record. ``fields`` is always the whole, context first
    (the order every line is written in): asking for it joins the two once,
    after which ``own`` is the whole and ``context`` None. Code on the
    per-statement path reads ``own`` and ``context`` (or :meth:`get`) and
    adds to ``own``, which is right in either state; nothing removes a field.

    ``layout``, when not None, is the dict ``own`` was copied from (a plain
    success's layout, kept by its statement's facts or analysis, never changed):
    ``own`` holds its keys, in its order, and any added later; the tracker
    fills in only the layout's None values, so the others (the text's
    analysis, ``outcome``) are the record's too. The log sink checks a layout's
    keys for reserved and secret names once, not every record's (~2.5k
    instructions a compiled record, callgrind), and statistics find a layout's
    entry once per run of its records; while ``own`` has as many fields as the
    layout, its keys are the layout's.
    """

    __slots__ = ("context", "event", "layout", "level", "logged", "own")

    def __init__(
        self,
        event: str,
        level: str,
        fields: dict[str, Any],
        logged: bool = True,
        context: SessionContext | None = None,
        layout: dict[str, Any] | None = None,
    ) -> None:
        self.event = event
        self.level = level  # "debug" | "info" | "warning" | "error"
        self.own = fields
        self.logged = logged
        self.context = context
        self.layout = layout

    @property
    def fields(self) -> dict[str, Any]:
        """All the fields, the session's first (joined on first use; ``own`` is this dict from then on)."""
        context = self.context
        if context is not None:
            self.own = {**context.fields, **self.own}
            self.context = None
            self.layout = None  # the joined dict was not copied from it
        return self.own

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.event, self.level, self.fields, self.logged) == (
            other.event,
            other.level,
            other.fields,
            other.logged,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable fields, as the dataclass had

    def __repr__(self) -> str:
        return f"Record(event={self.event!r}, level={self.level!r}, fields={self.fields!r}, logged={self.logged!r})"

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def __contains__(self, key: object) -> bool:
        return key in self.own or (self.context is not None and key in self.context.fields)

    def get(self, key: str, default: Any = None) -> Any:
        """A field's value, without joining the session's fields to the record's."""
        own = self.own
        if key in own:
            return own[key]
        context = self.context
        if context is not None:
            return context.fields.get(key, default)
        return default


class KeptRecord(Record):
    """A record the tracker hands out again and again, the same object, because the same bytes made it.

    Message detail keeps a session's ``message`` events by their message's
    bytes (:meth:`~pgproxy.tracker.message_events.MessageEvents.known`): most
    of a statement's messages are the same every time it runs. Its fields are
    its ``layout`` and never change, so ``rendered`` may keep the log sink's
    rendering of it (see :meth:`~pgproxy.sink.render.JsonLines.record_line`):
    its line up to the timestamp's value, or b"" when the sink's fast way
    cannot write it; None until the sink looked.
    """

    __slots__ = ("rendered",)

    def __init__(self, event: str, level: str, fields: dict[str, Any]) -> None:
        super().__init__(event, level, fields, True, None, fields)
        self.rendered: bytes | None = None
