"""Statements per second the session tracker sustains on one core (issue 4's benchmark).

Feeds the tracker the exact traffic of `pgbench -S -M prepared` (Bind/Describe/
Execute/Sync answered by BindComplete/RowDescription/DataRow/CommandComplete/
ReadyForQuery), one statement per chunk pair, as the proxy would. Reports statements/s at query
detail and message detail, tracker alone and tracker plus JSON rendering of the
records (the sink's work before its writer thread).

Run: ``python bench/tracker_bench.py [--statements N]``.
"""

from __future__ import annotations

import argparse
import io
import time

from pgproxy.protocol import build as b
from pgproxy.sink import LogSink
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.session import SessionTracker

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"


def run(detail: Detail, statements: int, render: bool) -> float:
    tracker = SessionTracker("bench", TrackerOptions(detail=detail), client=("127.0.0.1", 1), server=("127.0.0.1", 2))
    tracker.frontend(b.startup_message({"user": "bench", "database": "bench"}))
    tracker.backend(b.authentication_ok() + b.backend_key_data(1) + b.ready_for_query())
    tracker.frontend(b.parse("P0_1", SQL, (23,)) + b.sync())
    tracker.backend(b.message(b"1") + b.ready_for_query())
    # Exactly what pgbench -S -M prepared sends and receives per transaction.
    requests = [
        b.bind("", "P0_1", (str(i % 100000).encode(),)) + b.describe("P", "") + b.execute() + b.sync()
        for i in range(1000)
    ]
    reply = (
        b.message(b"2")
        + b.row_description([("abalance", 23)])
        + b.data_row([b"0"])
        + b.command_complete("SELECT 1")
        + b.ready_for_query()
    )
    sink = LogSink(stream=io.StringIO(), fmt="json", max_queued=10**9) if render else None
    emitted = 0
    t0 = time.perf_counter()
    for i in range(statements):
        records = tracker.frontend(requests[i % 1000])
        records += tracker.backend(reply)
        emitted += len(records)
        if sink is not None:
            sink.emit_all(records)
    elapsed = time.perf_counter() - t0
    if sink is not None:
        sink.close()
    assert emitted >= statements
    return statements / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--statements", type=int, default=100_000)
    args = parser.parse_args()
    for detail in (Detail.QUERY, Detail.MESSAGE):
        alone = max(run(detail, args.statements, False) for _ in range(2))
        rendered = max(run(detail, args.statements // 4, True) for _ in range(2))
        print(
            f"{detail.name.lower():<8} tracker only {alone:>10,.0f} statements/s   with JSON rendering {rendered:>9,.0f}/s"
        )
    print("target: >= 50,000 statements/s at query detail (tracker only)")


if __name__ == "__main__":
    main()
