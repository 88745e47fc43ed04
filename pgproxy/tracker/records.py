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
    """

    __slots__ = ("event", "fields", "level", "logged")

    def __init__(self, event: str, level: str, fields: dict[str, Any], logged: bool = True) -> None:
        self.event = event
        self.level = level  # "debug" | "info" | "warning" | "error"
        self.fields = fields
        self.logged = logged

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
        return key in self.fields

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)
