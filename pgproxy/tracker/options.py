"""Options of the session tracker (plain values; the CLI maps config onto them)."""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pgproxy.protocol.framing import DEFAULT_MAX_FRAME
from pgproxy.tracker.fingerprint import StatementAnalyzer, shared_analyzer
from pgproxy.tracker.records import Detail
from pgproxy.tracker.redaction import RedactionPolicy


@dataclass(frozen=True, slots=True)
class QueryFilter:
    """Which ``query`` events are logged.

    A statement is logged when it matches every non-empty scope (users,
    databases, applications, SQL regex) and then: it failed, or it was slow,
    or it lasted at least ``min_duration_ms`` and survived sampling.

    Attributes:
        users, databases, applications: log only these (empty: all).
        sql_pattern: log only statements whose SQL matches (search, case-insensitive).
        min_duration_ms: successful statements faster than this are not logged.
        sample_rate: fraction (0..1) of successful, non-slow statements logged.
    """

    users: frozenset[str] = frozenset()
    databases: frozenset[str] = frozenset()
    applications: frozenset[str] = frozenset()
    sql_pattern: str = ""
    min_duration_ms: float = 0.0
    sample_rate: float = 1.0
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    #: No SQL pattern and no sampling: :meth:`keep` is the duration's test alone (the statement tracker
    #: asks that in place, without the call: ~18 bytecodes and a frame per statement, pure Python).
    unsampled: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be within 0..1, not {self.sample_rate}")
        regex = re.compile(self.sql_pattern, re.IGNORECASE) if self.sql_pattern else None
        object.__setattr__(self, "_regex", regex)
        object.__setattr__(self, "unsampled", regex is None and self.sample_rate >= 1.0)

    def in_scope(self, user: str | None, database: str | None, application: str | None) -> bool:
        """Whether a session's statements may be logged at all."""
        return (
            (not self.users or (user or "") in self.users)
            and (not self.databases or (database or "") in self.databases)
            and (not self.applications or (application or "") in self.applications)
        )

    def keep(self, sql: str | None, duration_ms: float, failed: bool, slow: bool, draw: Callable[[], float]) -> bool:
        """Decide for one statement of an in-scope session."""
        if self._regex is not None and not self._regex.search(sql or ""):
            return False
        if failed or slow:
            return True
        if duration_ms < self.min_duration_ms:
            return False
        return self.sample_rate >= 1.0 or draw() < self.sample_rate


class TextMode(enum.Enum):
    """What ``db.query.text`` shows."""

    RAW = "raw"
    """The statement as sent (redaction still applies)."""
    NORMALIZED = "normalized"
    """Every literal replaced by ``$n`` (PostgreSQL's parser) or ``?`` (lexer fallback)."""


@dataclass(frozen=True, slots=True)
class TrackerOptions:
    """Everything a :class:`~pgproxy.tracker.session.SessionTracker` is told.

    Attributes:
        detail: how much to log.
        max_frame: messages with longer bodies are skipped, header only.
        max_rows_per_result: DataRow events logged per result; the rest counted.
        max_value_chars: longer logged values are cut, with the count of what was cut.
        max_sql_chars: longer SQL texts are cut likewise.
        max_hexdump_bytes: bytes of one message shown in a hex dump.
        slow_query_ms: statements at least this slow are logged at warning.
        max_prepared_statements: per-session cache of named statements (LRU).
        max_prepared_bytes: characters of SQL text that cache may hold; the
            least recently used statements are forgotten beyond it.
        redaction: what is withheld.
        query_filter: which query events are logged.
        draw: random source for sampling (injected for tests).
        analyzer: describes statements (fingerprint, summary...); None leaves
            those fields out. Shared by every session of the process.
        text_mode: raw or normalised ``db.query.text``.
    """

    detail: Detail = Detail.QUERY
    max_frame: int = DEFAULT_MAX_FRAME
    max_rows_per_result: int = 100
    max_value_chars: int = 256
    max_sql_chars: int = 8192
    max_hexdump_bytes: int = 4096
    slow_query_ms: float = 1000.0
    max_prepared_statements: int = 1000
    max_prepared_bytes: int = 16 << 20
    redaction: RedactionPolicy = field(default_factory=RedactionPolicy)
    query_filter: QueryFilter = field(default_factory=QueryFilter)
    draw: Callable[[], float] = random.random
    analyzer: StatementAnalyzer | None = field(default_factory=shared_analyzer, compare=False)
    text_mode: TextMode = TextMode.RAW
