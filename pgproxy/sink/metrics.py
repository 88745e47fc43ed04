"""The metrics sink: Prometheus numbers computed from the same records the log gets.

Nothing in the I/O code counts anything for metrics: this sink is handed every
record (tracker records and the proxy's own events alike, before the log's
level filter) and folds them into plain integers. Folding is a few dict
operations per record with no locks; the Prometheus text is built only when
``/metrics`` is scraped, by a custom collector (prometheus-client's
"custom collectors" pattern), so an unscraped endpoint costs nothing more.

Consequences an operator should know (also in the README):

* Statement metrics follow the ``query`` records, so they need ``log.detail``
  at ``query`` or above. ``query.filter`` (scope, sampling, minimum duration)
  does not reduce them: a record the filter did not select (``logged`` False)
  is counted here and skipped by the log only.
* Bytes and messages are added when a session ends (``session.ended``
  carries them), so a long-lived pooled connection shows up at its end.

Label values are bounded: operation names are kept for the first
:data:`MAX_OPERATION_NAMES` distinct well-formed names and reported as
``OTHER`` beyond; SQLSTATE classes are two characters; reasons and kinds come
from fixed vocabularies. No SQL text ever becomes a label.
"""

from __future__ import annotations

import bisect
import platform
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from pgproxy import __version__
from pgproxy.sink.stats import DURATION_BUCKETS_S
from pgproxy.tracker.records import Record

#: OpenTelemetry's explicit bucket boundaries for ``db.client.operation.duration`` (seconds),
#: the same ones the statement statistics report as ``duration_buckets``.
DURATION_BUCKETS: Final = DURATION_BUCKETS_S
#: Distinct ``db_operation_name`` label values kept before new ones are reported as ``OTHER``.
MAX_OPERATION_NAMES: Final = 64
#: Distinct values of other free-ish labels (rejection reasons, anomaly kinds).
MAX_REASONS: Final = 32
_OTHER: Final = "OTHER"
_OPERATION_SHAPE: Final = re.compile(r"[A-Z][A-Z ]{0,31}")
_SQLSTATE_CLASS: Final = re.compile(r"[0-9A-Z]{2}")
_bisect_left: Final = bisect.bisect_left


class _Bounded:
    """Maps label values onto at most ``limit`` distinct ones (the rest become ``OTHER``)."""

    __slots__ = ("known", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.known: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.known:
            return value
        if len(self.known) >= self.limit:
            return _OTHER
        self.known.add(value)
        return value


class MetricsSink:
    """Folds records into counters, gauges and a histogram; renders Prometheus text on demand.

    Args:
        loop: the event loop's name, for the build-info metric.
    """

    def __init__(self, loop: str = "") -> None:
        self.loop = loop
        self.sessions_total = 0
        self.open_sessions: set[str] = set()
        self.rejected: Counter[str] = Counter()
        self.bytes = {"client_to_server": 0, "server_to_client": 0}
        self.messages = {"client_to_server": 0, "server_to_client": 0}
        # A plain dict, not a Counter: its item increments cost twice a dict's (per statement here).
        self.statements: dict[tuple[str, str], int] = {}
        self.errors: Counter[str] = Counter()
        self.upstream_failures = 0
        self.log_dropped = 0
        self.anomalies: Counter[str] = Counter()
        self.cancels: Counter[tuple[str, str]] = Counter()
        self.ended: Counter[str] = Counter()
        # Histogram by operation name: per-bucket counts (not cumulative), sum.
        self.durations: dict[str, list[int]] = {}
        self.duration_sums: dict[str, float] = {}
        self._operation = _Bounded(MAX_OPERATION_NAMES)
        self._reason = _Bounded(MAX_REASONS)
        self._handlers = {
            "query": self._query,
            "session.started": self._started,
            "session.ended": self._ended,
            "session.rejected": self._rejected,
            "session.refused": self._rejected,
            "session.auth_failed": self._startup_error,
            "session.startup_failed": self._startup_error,
            "session.anomaly": self._anomaly,
            "upstream.unreachable": self._upstream_unreachable,
            "log.dropped": self._log_dropped,
            "cancel.forwarded": self._cancel_forwarded,
            "cancel.failed": self._cancel_failed,
        }
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ------------------------------------------------------------------ feeding

    def emit_all(self, records: list[Record]) -> None:
        handlers = self._handlers
        for record in records:
            handler = handlers.get(record.event)
            if handler is not None:
                # own: a record's fields, less a query record's shared session ones (user, database...),
                # which no handler reads; joining them would copy them on every statement.
                handler(record.own)

    def emit(self, record: Record) -> None:
        self.emit_all([record])

    def _query(self, fields: dict[str, Any]) -> None:
        name = fields.get("db.operation.name")
        if type(name) is str and name in self._operation.known:  # seen before: no regex match, no call
            operation = name
        else:
            operation = self._operation(name) if isinstance(name, str) and _OPERATION_SHAPE.fullmatch(name) else _OTHER
        outcome = fields.get("outcome") or "unknown"
        reason = outcome if type(outcome) is str and outcome in self._reason.known else self._reason(outcome)
        statements = self.statements
        key = (operation, reason)
        statements[key] = statements.get(key, 0) + 1
        status = fields.get("db.response.status_code")
        if status:
            self._error(status)
        duration = fields.get("duration_ms")
        if outcome != "skipped" and isinstance(duration, int | float):
            seconds = duration / 1000.0
            buckets = self.durations.get(operation)
            if buckets is None:
                buckets = self.durations[operation] = [0] * (len(DURATION_BUCKETS) + 1)
                self.duration_sums[operation] = 0.0
            # Prometheus buckets are "less than or equal": bisect_left puts 0.005 in le="0.005".
            buckets[_bisect_left(DURATION_BUCKETS, seconds)] += 1
            self.duration_sums[operation] += seconds

    def _error(self, sqlstate: Any) -> None:
        text = str(sqlstate)[:2]
        self.errors[text if _SQLSTATE_CLASS.fullmatch(text) else _OTHER] += 1

    def _started(self, fields: dict[str, Any]) -> None:
        self.sessions_total += 1
        session = fields.get("session")
        if isinstance(session, str):
            self.open_sessions.add(session)

    def _ended(self, fields: dict[str, Any]) -> None:
        session = fields.get("session")
        if session not in self.open_sessions:
            return  # never started (rejected, refused, a cancel request): not a session to count
        self.open_sessions.discard(session)
        self.ended[self._reason(str(fields.get("reason")))] += 1
        for key, direction in (("client", "client_to_server"), ("server", "server_to_client")):
            nbytes = fields.get(f"bytes_from_{key}")
            if isinstance(nbytes, int):
                self.bytes[direction] += nbytes
            count = fields.get(f"messages_from_{key}")
            if isinstance(count, int):
                self.messages[direction] += count

    def _rejected(self, fields: dict[str, Any]) -> None:
        # session.rejected's reason is the limit's name; session.refused's reason is
        # a sentence for a person, its refusal the kind (proxy.session.Refusal).
        label = fields.get("refusal", fields.get("reason"))
        self.rejected[self._reason(label if isinstance(label, str) and label.isidentifier() else _OTHER)] += 1

    def _startup_error(self, fields: dict[str, Any]) -> None:
        status = fields.get("sqlstate")
        if status:
            self._error(status)

    def _anomaly(self, fields: dict[str, Any]) -> None:
        self.anomalies[self._reason(str(fields.get("kind")))] += 1

    def _upstream_unreachable(self, fields: dict[str, Any]) -> None:
        self.upstream_failures += 1

    def _log_dropped(self, fields: dict[str, Any]) -> None:
        count = fields.get("dropped_since_last_report")
        if isinstance(count, int):
            self.log_dropped += count

    def _cancel_forwarded(self, fields: dict[str, Any]) -> None:
        self.cancels[(self._reason(str(fields.get("reason"))), "forwarded")] += 1

    def _cancel_failed(self, fields: dict[str, Any]) -> None:
        self.cancels[(self._reason(str(fields.get("reason"))), "failed")] += 1

    # ------------------------------------------------------------------ exposition

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """prometheus-client's custom-collector hook: build the families from the folded numbers."""
        info = GaugeMetricFamily(
            "pgproxy_build_info", "pgproxy version, Python version and event loop", labels=["version", "python", "loop"]
        )
        info.add_metric([__version__, platform.python_version(), self.loop], 1)
        yield info
        yield GaugeMetricFamily(
            "pgproxy_sessions_open", "client sessions started and not yet ended", len(self.open_sessions)
        )
        yield CounterMetricFamily("pgproxy_sessions", "client sessions started (session.started)", self.sessions_total)
        ended = CounterMetricFamily("pgproxy_sessions_ended", "client sessions ended, by reason", labels=["reason"])
        for reason, count in sorted(self.ended.items()):
            ended.add_metric([reason], count)
        yield ended
        rejected = CounterMetricFamily(
            "pgproxy_sessions_rejected", "connections refused before a session began, by reason", labels=["reason"]
        )
        for reason, count in sorted(self.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        nbytes = CounterMetricFamily(
            "pgproxy_bytes", "bytes relayed, by direction (added when a session ends)", labels=["direction"]
        )
        messages = CounterMetricFamily(
            "pgproxy_messages",
            "protocol messages relayed, by direction (added when a session ends)",
            labels=["direction"],
        )
        for direction in ("client_to_server", "server_to_client"):
            nbytes.add_metric([direction], self.bytes[direction])
            messages.add_metric([direction], self.messages[direction])
        yield nbytes
        yield messages
        statements = CounterMetricFamily(
            "pgproxy_statements",
            "statements logged as query events, by operation and outcome",
            labels=["db_operation_name", "outcome"],
        )
        for (operation, outcome), count in sorted(self.statements.items()):
            statements.add_metric([operation, outcome], count)
        yield statements
        errors = CounterMetricFamily("pgproxy_errors", "server errors, by SQLSTATE class", labels=["sqlstate_class"])
        for klass, count in sorted(self.errors.items()):
            errors.add_metric([klass], count)
        yield errors
        histogram = HistogramMetricFamily(
            "db_client_operation_duration",
            "statement duration as OpenTelemetry db.client.operation.duration: first request byte to completion",
            labels=["db_system_name", "db_operation_name"],
            unit="seconds",
        )
        for operation, counts in sorted(self.durations.items()):
            cumulative, running = [], 0
            for bound, count in zip((*map(_le, DURATION_BUCKETS), "+Inf"), counts, strict=True):
                running += count
                cumulative.append((bound, running))
            histogram.add_metric(["postgresql", operation], cumulative, self.duration_sums[operation])
        yield histogram
        yield CounterMetricFamily(
            "pgproxy_upstream_connect_failures",
            "upstream connections that failed (upstream.unreachable)",
            self.upstream_failures,
        )
        yield CounterMetricFamily(
            "pgproxy_log_lines_dropped", "log lines dropped because the output could not keep up", self.log_dropped
        )
        anomalies = CounterMetricFamily(
            "pgproxy_anomalies",
            "decoding anomalies by kind (desynchronized, malformed, oversized, ...)",
            labels=["kind"],
        )
        for kind, count in sorted(self.anomalies.items()):
            anomalies.add_metric([kind], count)
        yield anomalies
        cancels = CounterMetricFamily(
            "pgproxy_cancels", "cancel requests to the upstream, by reason and outcome", labels=["reason", "outcome"]
        )
        for (reason, outcome), count in sorted(self.cancels.items()):
            cancels.add_metric([reason, outcome], count)
        yield cancels


def _le(bound: float) -> str:
    return repr(float(bound))
