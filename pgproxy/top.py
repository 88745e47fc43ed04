"""``pgproxy top``: the heaviest statements, live, by total time.

Two sources, both produced by the statistics sink (:mod:`pgproxy.sink.stats`):

- ``--url http://127.0.0.1:9090/stats``: the admin endpoint's cumulative
  table, fetched every refresh;
- ``--log FILE``: a JSON log, whose ``statement.stats`` records (one per
  changed statement per interval) are summed; new lines are read as they are
  appended.

``--once`` prints one table and exits (scripts, tests); otherwise the screen is
redrawn every ``--refresh`` seconds until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from typing import IO, Any

from pgproxy.sink.stats import STATEMENT_STATS, Aggregate, Entry, StatsKey

SORT_KEYS = ("total_ms", "calls", "mean_ms", "p99_ms", "errors", "rows")


class LogFollower:
    """Sums the ``statement.stats`` records of a JSON log, reading what was appended since the last call."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries: dict[StatsKey, Entry] = {}
        self._offset = 0
        self._partial = b""

    def poll(self) -> None:
        with open(self.path, "rb") as handle:
            handle.seek(0, 2)
            if handle.tell() < self._offset:  # rotated or truncated: start over
                self._offset, self._partial = 0, b""
                self.entries.clear()
            handle.seek(self._offset)
            data = self._partial + handle.read()
            self._offset = handle.tell()
        lines = data.split(b"\n")
        self._partial = lines.pop()
        self.feed(lines)

    def feed(self, lines: Iterable[bytes | str]) -> None:
        for line in lines:
            if STATEMENT_STATS.encode() not in (line if isinstance(line, bytes) else line.encode()):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == STATEMENT_STATS:
                self.add(record)

    def add(self, record: Mapping[str, Any]) -> None:
        key: StatsKey = (
            str(record.get("fingerprint")),
            record.get("db.namespace"),
            record.get("user"),
            record.get("application_name"),
        )
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(
                key, record.get("db.query.summary"), record.get("db.operation.name"), record.get("db.query.text")
            )
        entry.total.merge(Aggregate.from_fields(record))

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for entry in self.entries.values():
            fields = entry.identity()
            fields.update(entry.cumulative().fields())
            out.append(fields)
        return out


def fetch(url: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The admin endpoint's ``/stats`` table."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        body = json.loads(reply.read())
    return list(body.get("statements", []))


def _sort_value(row: Mapping[str, Any], sort: str) -> float:
    value = row.get(sort)
    if isinstance(value, dict):  # errors by class
        return float(sum(value.values()))
    return float(value or 0)


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value >= 100_000:
        return f"{value / 1000:.0f}s"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}"


def render(rows: list[dict[str, Any]], sort: str = "total_ms", limit: int = 20, width: int = 120) -> str:
    """The table as text: heaviest first by ``sort``."""
    rows = sorted(rows, key=lambda r: _sort_value(r, sort), reverse=True)
    calls = sum(int(r.get("calls") or 0) for r in rows)
    total = sum(float(r.get("total_ms") or 0) for r in rows)
    lines = [
        f"pgproxy top — {len(rows)} statements, {calls} calls, {total / 1000:.3f} s total; sorted by {sort}"
        " (percentiles estimated from histogram buckets)",
        "",
        f"{'total_ms':>10} {'%':>5} {'calls':>8} {'mean':>8} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}"
        f" {'err':>5} {'rows':>9}  statement",
    ]
    fixed = 10 + 6 + 9 + 9 * 5 + 6 + 10 + 2
    for row in rows[:limit]:
        errors = sum((row.get("errors") or {}).values())
        share = 100.0 * float(row.get("total_ms") or 0) / total if total else 0.0
        who = "/".join(str(x) for x in (row.get("user"), row.get("db.namespace"), row.get("application_name")) if x)
        label = f"{row.get('db.query.summary') or row.get('db.operation.name') or '?'}  [{row.get('fingerprint')}"
        label += f" {who}]" if who else "]"
        room = max(width - fixed, 20)
        if len(label) > room:
            label = label[: room - 1] + "…"
        lines.append(
            f"{_ms(row.get('total_ms')):>10} {share:>5.1f} {int(row.get('calls') or 0):>8}"
            f" {_ms(row.get('mean_ms')):>8} {_ms(row.get('p50_ms')):>8} {_ms(row.get('p95_ms')):>8}"
            f" {_ms(row.get('p99_ms')):>8} {_ms(row.get('max_ms')):>8} {errors:>5} {int(row.get('rows') or 0):>9}"
            f"  {label}"
        )
    if not rows:
        lines.append("(no statement statistics yet: is [stats] enabled and has traffic passed?)")
    return "\n".join(lines) + "\n"


def build_top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgproxy top",
        description="Live view of the heaviest statements (per fingerprint, database, user and application).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="the admin endpoint's /stats URL, e.g. http://127.0.0.1:9090/stats")
    source.add_argument("--log", metavar="FILE", help="a JSON log file with statement.stats records")
    parser.add_argument("--sort", choices=SORT_KEYS, default="total_ms", help="order (default total_ms)")
    parser.add_argument("--limit", type=int, default=20, help="rows shown (default 20)")
    parser.add_argument("--refresh", type=float, default=2.0, help="seconds between redraws (default 2)")
    parser.add_argument("--once", action="store_true", help="print one table and exit")
    return parser


def top_command(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    follower = LogFollower(args.log) if args.log else None
    try:
        while True:
            try:
                if follower is not None:
                    follower.poll()
                    rows = follower.rows()
                else:
                    rows = fetch(args.url)
            except (OSError, ValueError) as exc:
                print(f"pgproxy top: cannot read {args.log or args.url}: {exc}", file=sys.stderr)
                return 1
            width = shutil.get_terminal_size((120, 40)).columns
            table = render(rows, args.sort, args.limit, width)
            if args.once:
                out.write(table)
                return 0
            out.write("\x1b[H\x1b[2J" + table)
            out.flush()
            time.sleep(args.refresh)
    except KeyboardInterrupt:
        return 0
