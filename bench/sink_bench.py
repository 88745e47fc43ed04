"""CPU per statement of the sinks and the statement analyzer at ``query`` detail.

The tracker's records for ``pgbench -S`` (simple: a new literal in every text;
prepared: one text) are recorded once, then fed, one statement's records per
call as the proxy does, through each consumer alone and through the
:class:`~pgproxy.sink.Fanout` the proxy builds (log + statistics, + metrics
when the admin endpoint is on). Times are process CPU (the log writer's thread
included), the best of ``--repeat`` runs, in µs per statement.

Run: ``python bench/sink_bench.py [--statements N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from pgproxy.protocol import build as b
from pgproxy.sink import Fanout, LogSink
from pgproxy.sink.metrics import MetricsSink
from pgproxy.sink.stats import StatementStats
from pgproxy.tracker.fingerprint import StatementAnalyzer
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail, Record
from pgproxy.tracker.session import SessionTracker

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
REPLY = (
    b.row_description([("abalance", 23)]) + b.data_row([b"0"]) + b.command_complete("SELECT 1") + b.ready_for_query()
)


def _tracker() -> SessionTracker:
    tracker = SessionTracker(
        "bench", TrackerOptions(detail=Detail.QUERY), client=("127.0.0.1", 1), server=("127.0.0.1", 2)
    )
    tracker.frontend(b.startup_message({"user": "bench", "database": "bench"}))
    tracker.backend(b.authentication_ok() + b.backend_key_data(1) + b.ready_for_query())
    return tracker


def recorded(statements: int) -> list[list[Record]]:
    """The records of ``pgbench -S -M simple``, one list per statement."""
    tracker = _tracker()
    out = []
    for i in range(statements):
        records = tracker.frontend(b.query(SELECT.format(i % 100_000 + 1)))
        records += tracker.backend(REPLY)
        out.append(records)
    return out


def cpu_per_call(
    feed: Callable[[list[Record]], None], batches: list[list[Record]], after: Callable[[], object]
) -> float:
    t0 = time.process_time()
    for records in batches:
        feed(records)
    after()
    return (time.process_time() - t0) / len(batches) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--statements", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated names of the rows to run")
    args = parser.parse_args()
    batches = recorded(args.statements)
    texts = [SELECT.format(i % 100_000 + 1) for i in range(args.statements)]
    bodies = [t[:-1] for t in texts]
    analyzer = StatementAnalyzer()
    analyzer.analyze(bodies[0])

    def log_sink() -> LogSink:
        return LogSink(stream=open("/dev/null", "w"), fmt="json", max_queued=10**9)

    rows: dict[str, Callable[[], float]] = {}

    def row(name: str) -> Callable[[Callable[[], float]], Callable[[], float]]:
        def register(fn: Callable[[], float]) -> Callable[[], float]:
            rows[name] = fn
            return fn

        return register

    @row("analyze (new literal)")
    def _analyze() -> float:
        t0 = time.process_time()
        for text in bodies:
            analyzer.analyze(text)
        return (time.process_time() - t0) / len(bodies) * 1e6

    @row("split (one statement;)")
    def _split() -> float:
        t0 = time.process_time()
        for text in texts:
            analyzer.split(text)
        return (time.process_time() - t0) / len(texts) * 1e6

    @row("log")
    def _log() -> float:
        sink = log_sink()
        try:
            return cpu_per_call(sink.emit_all, batches, sink.flush)
        finally:
            sink.close()

    @row("stats")
    def _stats() -> float:
        stats = StatementStats(interval=60.0)
        return cpu_per_call(stats.emit_all, batches, lambda: None)

    @row("metrics")
    def _metrics() -> float:
        metrics = MetricsSink()
        return cpu_per_call(metrics.emit_all, batches, lambda: None)

    @row("fanout log+stats")
    def _fanout() -> float:
        sink = log_sink()
        fan = Fanout(sink, [StatementStats(interval=60.0, output=sink.emit_all)])
        try:
            return cpu_per_call(fan.emit_all, batches, sink.flush)
        finally:
            sink.close()

    @row("fanout log+stats+metrics")
    def _fanout_all() -> float:
        sink = log_sink()
        fan = Fanout(sink, [MetricsSink(), StatementStats(interval=60.0, output=sink.emit_all)])
        try:
            return cpu_per_call(fan.emit_all, batches, sink.flush)
        finally:
            sink.close()

    only = set(filter(None, args.only.split(",")))
    for name, fn in rows.items():
        if only and name not in only:
            continue
        best = min(fn() for _ in range(args.repeat))
        print(f"{name:<28} {best:6.2f} µs/statement")


if __name__ == "__main__":
    main()
