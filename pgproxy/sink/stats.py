"""Per-fingerprint statement statistics: pg_stat_statements from the wire.

A sink beside the log: it consumes the same ``query`` records the log gets,
including those ``query.filter`` kept out of the log (sampling thins the log,
not these numbers), and folds them, per (fingerprint, database, user, application), into calls,
errors by SQLSTATE class, rows, total/min/max time and a latency histogram
with OpenTelemetry's ``db.client.operation.duration`` buckets. The table is
bounded (least recently seen entries are evicted and counted). Every
``interval`` seconds the entries that changed are written as
``statement.stats`` records (the interval's own numbers), and once more at
shutdown; :meth:`StatementStats.snapshot` gives the cumulative numbers that
``pgproxy top`` and the admin endpoint's ``/stats`` show.

No I/O here: time comes from an injected clock, records go to an injected
``output`` (the log sink); the proxy's lifecycle calls :meth:`tick` on a timer.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pgproxy.tracker.records import QUERY, Record, SessionContext

STATEMENT_STATS: Final = "statement.stats"
STATS_REPORTED: Final = "stats.reported"

#: OpenTelemetry's explicit bucket boundaries for ``db.client.operation.duration`` (seconds).
DURATION_BUCKETS_S: Final[tuple[float, ...]] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
#: The histogram kept: OpenTelemetry's bounds plus 1-2-5 steps between them and below 1 ms (ms).
#: A proxy's statements mostly take well under 1 ms, where OpenTelemetry's first bucket would
#: leave every percentile a guess between 0 and 1 ms.
LATENCY_BUCKETS_MS: Final[tuple[float, ...]] = (
    *(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
    *(20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0),
)
_LATENCY_LABELS: Final = (*(f"{b:g}" for b in LATENCY_BUCKETS_MS), "+Inf")
#: For each OpenTelemetry bucket (and +Inf), the fine buckets it is the sum of.
_OTEL_SLICES: Final = tuple(
    range(
        LATENCY_BUCKETS_MS.index(low * 1000.0) + 1 if low else 0,
        LATENCY_BUCKETS_MS.index(high * 1000.0) + 1 if high else len(LATENCY_BUCKETS_MS) + 1,
    )
    for low, high in zip((0.0, *DURATION_BUCKETS_S), (*DURATION_BUCKETS_S, 0.0), strict=True)
)
#: Outcomes that ran on the server (``skipped`` and ``empty`` did not).
_COUNTED: Final = frozenset(("ok", "error", "suspended", "interrupted"))
DEFAULT_MAX_ENTRIES: Final = 5000
_bisect_left: Final = bisect.bisect_left
#: Each fine bucket's exclusive lower and inclusive upper bound (ms): a duration d is in bucket i
#: when _LOWER_MS[i] < d <= _UPPER_MS[i], the index bisect_left gives.
_LOWER_MS: Final[tuple[float, ...]] = (-math.inf, *LATENCY_BUCKETS_MS)
_UPPER_MS: Final[tuple[float, ...]] = (*LATENCY_BUCKETS_MS, math.inf)
#: The last bucket's index (+Inf).
_TOP: Final = len(LATENCY_BUCKETS_MS)

StatsKey = tuple[str, str | None, str | None, str | None]
"""(fingerprint, database, user, application)."""


@dataclass(slots=True)
class Aggregate:
    """Counts for one key over some span of time (mergeable: ``pgproxy top`` sums interval records)."""

    calls: int = 0
    untimed: int = 0
    rows: int = 0
    total_ms: float = 0.0
    min_ms: float = math.inf
    max_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    #: The bucket of the last duration added: not a count, only where add() looks first.
    last_bucket: int = field(default=0, compare=False, repr=False)

    def add(self, duration_ms: float | None, rows: int, sqlstate: str | None) -> None:
        """Count one statement; ``duration_ms`` None for a statement with no time of its own
        (inside a multi-statement Query, whose time is the batch's; a capture without times)."""
        self.calls += 1
        self.rows += rows
        if sqlstate:
            cls = sqlstate[:2]
            self.errors[cls] = self.errors.get(cls, 0) + 1
        if duration_ms is None:
            self.untimed += 1
            return
        self.total_ms += duration_ms
        # Comparisons, not min()/max() calls: this runs per statement.
        if duration_ms < self.min_ms:  # noqa: PLR1730
            self.min_ms = duration_ms
        if duration_ms > self.max_ms:  # noqa: PLR1730
            self.max_ms = duration_ms
        # bisect_left: a duration equal to a bound belongs to that bound's bucket (le semantics).
        # One statement's durations mostly fall in one bucket: the last one is checked first,
        # two comparisons where the bisect_left call cost ~750 instructions (compiled, callgrind).
        bucket = self.last_bucket
        if not _LOWER_MS[bucket] < duration_ms <= _UPPER_MS[bucket]:
            # Not there: mostly a neighbour (pgbench -S's durations straddle 0.05, 0.1 and 0.2 ms,
            # a third of them in another bucket than the last, callgrind), each asked as the last
            # one was, before the bisect_left call. NaN fails every comparison and goes to
            # bisect_left, as before.
            if bucket < _TOP and _LOWER_MS[bucket + 1] < duration_ms <= _UPPER_MS[bucket + 1]:
                bucket += 1
            elif bucket > 0 and _LOWER_MS[bucket - 1] < duration_ms <= _UPPER_MS[bucket - 1]:
                bucket -= 1
            else:
                bucket = _bisect_left(LATENCY_BUCKETS_MS, duration_ms)
            self.last_bucket = bucket
        self.buckets[bucket] += 1

    def merge(self, other: Aggregate) -> None:
        self.calls += other.calls
        self.untimed += other.untimed
        self.rows += other.rows
        self.total_ms += other.total_ms
        self.min_ms = min(self.min_ms, other.min_ms)
        self.max_ms = max(self.max_ms, other.max_ms)
        for cls, n in other.errors.items():
            self.errors[cls] = self.errors.get(cls, 0) + n
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]

    def quantile(self, q: float) -> float | None:
        """Estimated q-quantile in ms: linear within the histogram bucket, clamped to min/max."""
        timed = self.calls - self.untimed
        if not timed:
            return None
        rank = q * timed
        seen = 0
        for index, count in enumerate(self.buckets):
            if count and seen + count >= rank:
                low = LATENCY_BUCKETS_MS[index - 1] if index else 0.0
                high = LATENCY_BUCKETS_MS[index] if index < len(LATENCY_BUCKETS_MS) else self.max_ms
                low, high = max(low, self.min_ms), min(high, self.max_ms)
                return round(low + (high - low) * (rank - seen) / count, 3)
            seen += count
        return round(self.max_ms, 3)

    def fields(self) -> dict[str, Any]:
        """The numbers as record fields."""
        timed = self.calls - self.untimed
        out: dict[str, Any] = {
            "calls": self.calls,
            "errors": dict(sorted(self.errors.items())),
            "rows": self.rows,
            "total_ms": round(self.total_ms, 3),
            "min_ms": round(self.min_ms, 3) if timed else None,
            "max_ms": round(self.max_ms, 3) if timed else None,
            "mean_ms": round(self.total_ms / timed, 3) if timed else None,
            "p50_ms": self.quantile(0.50),
            "p95_ms": self.quantile(0.95),
            "p99_ms": self.quantile(0.99),
            "duration_buckets": bucket_fields(self.buckets),
            "latency_buckets_ms": {label: n for label, n in zip(_LATENCY_LABELS, self.buckets, strict=True) if n},
        }
        if self.untimed:
            out["untimed_calls"] = self.untimed
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Aggregate:
        """Rebuild an aggregate from a ``statement.stats`` record (what ``pgproxy top`` reads)."""
        agg = cls(
            calls=int(fields.get("calls") or 0),
            untimed=int(fields.get("untimed_calls") or 0),
            rows=int(fields.get("rows") or 0),
            total_ms=float(fields.get("total_ms") or 0.0),
            min_ms=float(fields["min_ms"]) if fields.get("min_ms") is not None else math.inf,
            max_ms=float(fields.get("max_ms") or 0.0),
            errors={str(k): int(v) for k, v in (fields.get("errors") or {}).items()},
        )
        fine = fields.get("latency_buckets_ms")
        if fine is not None:
            for index, label in enumerate(_LATENCY_LABELS):
                agg.buckets[index] = int(fine.get(label, 0))
        else:  # only OpenTelemetry's buckets: each count goes to the top of its range
            coarse = fields.get("duration_buckets") or {}
            for label, fine_range in zip(_BUCKET_LABELS, _OTEL_SLICES, strict=True):
                agg.buckets[fine_range[-1]] += int(coarse.get(label, 0))
        return agg


_BUCKET_LABELS: Final = (*(f"{b:g}" for b in DURATION_BUCKETS_S), "+Inf")


def bucket_fields(buckets: Sequence[int]) -> dict[str, int]:
    """Non-empty OpenTelemetry buckets by upper bound in seconds (``"0.005": 12``; not cumulative)."""
    out = {}
    for label, fine_range in zip(_BUCKET_LABELS, _OTEL_SLICES, strict=True):
        n = sum(buckets[i] for i in fine_range)
        if n:
            out[label] = n
    return out


@dataclass(slots=True)
class Entry:
    """One key's statistics: up to the last report (``total``) and since then (``period``)."""

    key: StatsKey
    summary: str | None
    operation: str | None
    text: str | None
    total: Aggregate = field(default_factory=Aggregate)
    period: Aggregate = field(default_factory=Aggregate)

    def cumulative(self) -> Aggregate:
        """Everything since the key was first seen."""
        both = Aggregate()
        both.merge(self.total)
        both.merge(self.period)
        return both

    def identity(self) -> dict[str, Any]:
        fingerprint, database, user, application = self.key
        return {
            "fingerprint": fingerprint,
            "db.namespace": database,
            "user": user,
            "application_name": application,
            "db.query.summary": self.summary,
            "db.operation.name": self.operation,
            "db.query.text": self.text,
        }


@dataclass
class StatementStats:
    """The statistics table and its reporting schedule.

    Args:
        output: where ``statement.stats`` records go (the log sink's ``emit_all``).
        interval: seconds between reports (0: only at shutdown and on demand).
        max_entries: keys kept at most; the least recently seen is evicted.
        clock: monotonic seconds.
        extra: called at each report for more fields of the ``stats.reported``
            record (the statement analyzer's parse and fallback counters).
    """

    output: Callable[[list[Record]], None] | None = None
    interval: float = 60.0
    max_entries: int = DEFAULT_MAX_ENTRIES
    clock: Callable[[], float] = time.monotonic
    extra: Callable[[], Mapping[str, Any]] | None = None
    entries: OrderedDict[StatsKey, Entry] = field(default_factory=OrderedDict)
    evicted: int = 0
    unattributed: int = 0
    _changed: dict[StatsKey, Entry] = field(default_factory=dict)
    _evicted_in_period: int = 0
    _lost_calls: int = 0
    _period_start: float = field(default=0.0)
    # The entry the last record went to, and what found it: see observe().
    _last_context: SessionContext | None = None
    _last_fingerprint: str | None = None
    _last_entry: Entry | None = None
    # The field layout (Record.layout) of the last record, when its copies go to _last_entry.
    _last_layout: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._period_start = self.clock()

    # ------------------------------------------------------------------ consuming records

    def emit_all(self, records: list[Record]) -> None:
        """Fold every ``query`` record in; report if an interval has passed.

        A list, not any iterable: compiled, a list is walked by index, where an
        iterable took the iterator protocol (``PyObject_GetIter`` and
        ``PyIter_Next``: ~0.8k instructions over a pgbench -C connection's
        chunks, compiled, callgrind).
        """
        for record in records:
            if record.event == QUERY:
                self.observe(record)
        if self.interval > 0 and self.clock() - self._period_start >= self.interval:  # tick(), inlined
            self.flush("interval")

    def emit(self, record: Record) -> None:
        self.emit_all([record])

    def observe(self, record: Record) -> None:
        """Fold one ``query`` record into its entry."""
        fields = record.own  # the statement's fields; the session's are in record.context (not copied)
        context = record.context
        layout = record.layout
        last = self._last_entry
        if (
            layout is not None
            and layout is self._last_layout
            and last is not None
            and len(fields) == len(layout)
            and (context is self._last_context or self._same_session(context, last))
        ):
            # Another copy of the last record's field layout in the same session: the layout's
            # outcome and fingerprint are its (the tracker fills in only the layout's empty
            # values), so the same entry, and no error (the layout has no status code). A
            # session repeating its statements skips reading and comparing those fields:
            # ~500 of observe's ~1.7k instructions (compiled, callgrind).
            period = last.period
            if not period.calls:
                self._changed[last.key] = last
            period.add(fields.get("duration_ms"), fields.get("rows") or 0, None)
            return
        if fields.get("outcome") not in _COUNTED:
            return
        fingerprint = fields.get("fingerprint")
        if fingerprint is None:
            self.unattributed += 1  # no SQL text (a function call) or fingerprints switched off
            return
        if (
            last is not None
            and fingerprint == self._last_fingerprint
            and (context is self._last_context or self._same_session(context, last))
        ):
            # The same session (one shared, unchanging SessionContext) and statement as the
            # last record: the same key, and its entry is still the most recently seen, so
            # neither the lookup nor the move to the end is needed. A session repeating its
            # statements (the common case) skips the key's tuple, its hash, three field reads
            # and move_to_end: ~1.6k of observe's ~4.6k instructions (compiled, callgrind).
            entry = last
            key = entry.key
        else:
            session = fields if context is None else context.fields
            key = (fingerprint, session.get("db.namespace"), session.get("user"), session.get("application_name"))
            entries = self.entries
            found = entries.get(key)
            if found is None:
                entry = Entry(
                    key, fields.get("db.query.summary"), fields.get("db.operation.name"), fields.get("db.query.text")
                )
                entries[key] = entry
                if len(entries) > self.max_entries:
                    self._evict()
            else:
                entry = found
                entries.move_to_end(key)
            self._last_context = context
            self._last_fingerprint = fingerprint
            # No shortcut through a session-less record (its key's fields are its own) or an
            # entry evicted as soon as made (max_entries 0).
            self._last_entry = entry if context is not None and self.max_entries > 0 else None
        # The layout's copies may take the shortcut above when the layout itself says what this
        # record's fields said: its fingerprint, a counted outcome, no error.
        self._last_layout = (
            layout
            if layout is not None
            and len(fields) == len(layout)
            and layout.get("fingerprint") == fingerprint
            and layout.get("outcome") in _COUNTED
            and "db.response.status_code" not in layout
            else None
        )
        period = entry.period  # folded into entry.total when reported
        if not period.calls:  # its first call since the last report: the entry has changed
            self._changed[key] = entry
        # duration_ms is absent inside a multi-statement Query (batch_duration_ms)
        period.add(fields.get("duration_ms"), fields.get("rows") or 0, fields.get("db.response.status_code"))

    def _same_session(self, context: SessionContext | None, last: Entry) -> bool:
        """Whether ``context`` is another session of the last entry's database, user and application (then it is the last).

        Each connection has its own context, so a connection-per-request
        application (pgbench -C) met the shortcuts above with a new one every
        time and took the lookup by key (the tuple, its hash, ``move_to_end``:
        ~5k instructions a connection, compiled, callgrind), where three reads
        say it is the same key's session.
        """
        if context is None:
            return False
        session = context.fields
        key = last.key
        if (
            session.get("db.namespace") == key[1]
            and session.get("user") == key[2]
            and session.get("application_name") == key[3]
        ):
            self._last_context = context
            return True
        return False

    def _evict(self) -> None:
        key, entry = self.entries.popitem(last=False)
        # Never the last entry (the most recently seen, at the other end): checked anyway, so
        # a change to eviction cannot leave observe()'s shortcut on an entry no longer kept.
        if entry is self._last_entry:
            self._last_entry = None
        self.evicted += 1
        self._evicted_in_period += 1
        if self._changed.pop(key, None) is not None:
            self._lost_calls += entry.period.calls  # seen this interval, never reported

    # ------------------------------------------------------------------ reporting

    def seconds_to_report(self) -> float | None:
        """How long until :meth:`tick` reports (0: it is due); None when only shutdown and requests report.

        The lifecycle's timer sleeps this long: a quiet proxy wakes once per interval, not once a second.
        """
        if self.interval <= 0:
            return None
        return max(0.0, self._period_start + self.interval - self.clock())

    def tick(self) -> None:
        """Report if the interval has passed (the lifecycle's timer calls this too).

        Due exactly when :meth:`seconds_to_report` says 0: the timer that sleeps
        that long then always finds the report due.
        """
        if self.seconds_to_report() == 0.0:
            self.flush("interval")

    def flush(self, reason: str = "on_demand") -> list[Record]:
        """Write (and return) the records for everything that changed since the last report."""
        records = self.report(reason)
        if records and self.output is not None:
            self.output(records)
        return records

    def report(self, reason: str) -> list[Record]:
        """``statement.stats`` records for changed entries, heaviest first, then one ``stats.reported``.

        Resets the interval. Nothing (not even ``stats.reported``) when nothing changed and nothing was lost.
        """
        now = self.clock()
        interval_s = round(now - self._period_start, 3)
        self._period_start = now
        changed = sorted(self._changed.values(), key=lambda e: e.period.total_ms, reverse=True)
        self._changed = {}
        if not changed and not self._evicted_in_period and not self._lost_calls:
            return []
        out: list[Record] = []
        for entry in changed:
            fields = entry.identity()
            fields["interval_s"] = interval_s
            fields.update(entry.period.fields())
            out.append(Record(STATEMENT_STATS, "info", fields))
            entry.total.merge(entry.period)
            entry.period = Aggregate()
        summary: dict[str, Any] = {
            "reason": reason,
            "interval_s": interval_s,
            "reported": len(changed),
            "entries": len(self.entries),
            "max_entries": self.max_entries,
            "evicted": self._evicted_in_period,
            "evicted_total": self.evicted,
            "unreported_calls": self._lost_calls,
            "unattributed_total": self.unattributed,
        }
        if self.extra is not None:
            summary.update(self.extra())
        out.append(Record(STATS_REPORTED, "info", summary))
        self._evicted_in_period = 0
        self._lost_calls = 0
        return out

    def close(self) -> None:
        """Shutdown: report what changed since the last interval."""
        self.flush("shutdown")

    # ------------------------------------------------------------------ on demand

    def snapshot(self, limit: int | None = None) -> dict[str, Any]:
        """Cumulative numbers per entry, heaviest (most total time) first, for ``/stats`` and ``/metrics``.

        Entries are ranked on their total time before any is rendered, so the
        top ``limit`` (what ``/metrics`` asks for on every scrape) costs little
        however many entries there are.
        """
        ranked = sorted(self.entries.values(), key=lambda e: e.total.total_ms + e.period.total_ms, reverse=True)
        rows = []
        for entry in ranked[:limit] if limit else ranked:
            fields = entry.identity()
            fields.update(entry.cumulative().fields())
            rows.append(fields)
        extra = dict(self.extra()) if self.extra is not None else {}
        return {
            **({"parser": extra} if extra else {}),
            "entries": len(self.entries),
            "max_entries": self.max_entries,
            "evicted_total": self.evicted,
            "statements": rows,
        }
