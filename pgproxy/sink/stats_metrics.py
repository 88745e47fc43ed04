"""The heaviest statements on ``/metrics``: a prometheus-client collector over the statistics sink.

Only the top ``k`` keys by total time are exported (each key is a fingerprint
with its database, user and application), so label cardinality is bounded by
``k`` however many distinct statements run; ``db.query.summary`` is a label
(low cardinality by design, at most 255 characters), SQL text never is.
Values are cumulative since the key was first seen (a key that drops out of the
top ``k`` stops being exported; one evicted and seen again starts over, as a
restarted process would).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from prometheus_client.core import CounterMetricFamily, Metric

from pgproxy.sink.stats import StatementStats

DEFAULT_TOP_K: Final = 20
_LABELS: Final = ("fingerprint", "db_query_summary", "db_namespace", "user", "application_name")


class TopStatementsCollector:
    """Exports the ``k`` statements with the most total time (prometheus-client "custom collector")."""

    def __init__(self, stats: StatementStats, k: int = DEFAULT_TOP_K) -> None:
        self.stats = stats
        self.k = k

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "pgproxy_statement_calls", "Statements executed, per fingerprint (top by total time)", labels=_LABELS
        )
        seconds = CounterMetricFamily(
            "pgproxy_statement_duration_seconds",
            "Total time of the statements, per fingerprint (top by total time)",
            labels=_LABELS,
        )
        errors = CounterMetricFamily(
            "pgproxy_statement_errors", "Statements that failed, per fingerprint (top by total time)", labels=_LABELS
        )
        rows = CounterMetricFamily(
            "pgproxy_statement_rows", "Rows affected or returned, per fingerprint (top by total time)", labels=_LABELS
        )
        for row in self.stats.snapshot(limit=self.k)["statements"]:
            labels = [
                str(row.get("fingerprint") or ""),
                str(row.get("db.query.summary") or ""),
                str(row.get("db.namespace") or ""),
                str(row.get("user") or ""),
                str(row.get("application_name") or ""),
            ]
            calls.add_metric(labels, row["calls"])
            seconds.add_metric(labels, row["total_ms"] / 1000.0)
            errors.add_metric(labels, sum(row["errors"].values()))
            rows.add_metric(labels, row["rows"])
        yield from (calls, seconds, errors, rows)
