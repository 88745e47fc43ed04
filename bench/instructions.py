"""Instructions per statement, counted by callgrind: the repeatable half of the speed work.

The proxy benchmark (``proxy_bench.py``) is the judge, but on a 2-core machine
shared by pgbench, PostgreSQL and the proxy its ratios move by several per cent
from run to run. Instruction counts do not: the same build, input and
environment give the same count, whatever else the machine is doing. Every
before/after figure in the speed notes of issue 11 is one of these.

Subcommands:

``build DEST [--rev REV] [--pure]``
    Copies ``pgproxy/`` (from the working tree, or from commit REV) to DEST and
    compiles setup.py's modules in place with mypyc, as the docker image does.
    ``--pure`` copies without compiling. Run the other subcommands with
    ``--tree DEST`` to count that build.

``statement [--tree DIR] [--detail D] [--workload W] [--clock fixed|cycling]``
    The main thread's instructions per statement for the session tracker plus
    the sinks the proxy builds with the default configuration (the JSON log
    sink writing to a file, and the statement statistics), fed the exact bytes
    of ``pgbench -S`` in one of its three protocols, one request chunk and one
    answer chunk per statement as the proxy sees them. The count is the
    difference of two runs of different length, so interpreter start-up,
    imports and the warm-up do not count; the log writer's thread is left out.
    The tracker's clock advances 125 µs per reading: every statement lasts
    the same, so the statistics count each in the same bucket in every run,
    and the count does not depend on how fast the machine ran the statements.
    ``--clock cycling`` advances it by steps of 30 to 250 µs in a fixed cycle
    of seven instead: durations that straddle the statistics' 0.05, 0.1 and
    0.2 ms bucket bounds as pgbench -S's do, the same in every run, for a change
    that acts only when a duration leaves the last one's bucket. (Which
    durations come out depends on how many times the tracker reads its clock
    per statement: compare two builds that read it as often.)

``connection [--tree DIR] [--detail D] [--connections N] [--forwarder]``
    The main thread's instructions per new connection for the whole proxy
    (``python -m pgproxy``, or ``bench/forwarder.py`` with ``--forwarder``)
    under callgrind, with a real PostgreSQL behind it and ``pgbench -S -C``
    (one client, one SELECT per connection, then Terminate) in front, the
    issue's churn workload. The count is the difference of a run of N
    connections and one of 3N, each from the proxy's start to its exit on
    SIGTERM, so start-up, the drain and the first connection's one-time work
    (imports, caches) fall out. PostgreSQL and pgbench run outside callgrind.
    ``--functions N`` adds where they go: see below.

``roundtrip [--tree DIR] [--detail D]``
    The whole proxy's main-thread instructions per round trip for one client
    sending simple Queries (``pgbench -S``'s text, one row back) one after
    the other: what the proxy runs between an answer's arrival and the next
    request's, the event loop and sockets included. The proxy (``python -m
    pgproxy``, JSON lines on stdout to a file, as the benchmark runs it) runs
    under callgrind in front of an embedded PostgreSQL; the client is this
    process, talking the protocol over a socket. The count is the difference
    of two runs of different length, as for ``statement``: start-up, the
    connection's set-up and shutdown do not count. ``--keep DIR`` keeps both
    runs' profiles for ``callgrind_annotate`` (suffixed with the run's count).

``--functions N`` (``connection``, ``roundtrip``)
    Where the count goes: the N functions whose inclusive instructions grow
    most per connection or round trip, as the difference of the two runs'
    main-thread profiles (``callgrind_annotate --inclusive=yes``), so one-time
    work (imports, the fingerprint grammar's load, the first connection's
    caches) drops out, as it does from the count. A profile of one run
    cannot say that: there, one-time work outweighs hundreds of connections.
    A function called recursively is listed under each depth (``'2``).

Needs valgrind. ``PYTHONHASHSEED=0`` is set for the counted process.
Run: ``python bench/instructions.py statement --workload prepared``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgproxy.demo.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("simple", "extended", "prepared")
DETAILS = ("connection", "query", "message", "wire")

#: The counted script: builds the tracker and sinks, warms up, then feeds ``count`` statements.
_STATEMENT_CHILD = r"""
import itertools, sys, tempfile, os
from pgproxy.config import load
from pgproxy.proxy.lifecycle import sink_from, stats_from
from pgproxy.protocol import build as b
from pgproxy.sink import Fanout
from pgproxy.tracker.session import SessionTracker

detail, workload, warm, count, clocked = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
# JSON lines on stdout, and stdout a file: one destination, as the benchmark runs the proxy.
log = tempfile.NamedTemporaryFile(suffix=".log", delete=False).name
out = os.open(log, os.O_WRONLY | os.O_APPEND)
os.dup2(out, 1)
os.close(out)
config = load(env={}, overrides={"log.detail": detail, "log.format": "json"})
log_sink = sink_from(config)
stats = stats_from(config, log_sink.emit_all)
sink = Fanout(log_sink, [stats]) if stats is not None else log_sink
# A clock of fixed steps, a C callable as time.monotonic is: every statement lasts the same,
# so the statistics take the same bucket in every run and the count does not follow the timing.
clock = itertools.count(1000.0, 0.000125).__next__
if clocked == "cycling":  # steps of 30-250 µs, seven of them (prime: every pairing of reads comes round)
    steps = (0.00004, 0.00007, 0.00012, 0.00018, 0.00025, 0.00009, 0.00003)
    clock = itertools.accumulate(itertools.cycle(steps), initial=1000.0).__next__
tracker = SessionTracker(
    "bench", config.tracker_options(), client=("127.0.0.1", 1), server=("127.0.0.1", 2), clock=clock
)
sink.emit_all(tracker.frontend(b.startup_message({"user": "bench", "database": "bench", "application_name": "pgbench"})))
sink.emit_all(tracker.backend(b.authentication_ok() + b.backend_key_data(1) + b.ready_for_query()))
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
PARAM_SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
ROWS = b.row_description([("abalance", 23)]) + b.data_row([b"0"]) + b.command_complete("SELECT 1") + b.ready_for_query()
if workload == "simple":
    requests = [b.query(SQL.format(i * 7919 % 100000 + 1)) for i in range(1000)]
    reply = ROWS
elif workload == "extended":
    requests = [
        b.parse("", PARAM_SQL, ()) + b.bind("", "", (str(i * 7919 % 100000 + 1).encode(),))
        + b.describe("P", "") + b.execute() + b.sync()
        for i in range(1000)
    ]
    reply = b.message(b"1") + b.message(b"2") + ROWS
else:
    sink.emit_all(tracker.frontend(b.parse("P_0", PARAM_SQL, ()) + b.sync()))
    sink.emit_all(tracker.backend(b.message(b"1") + b.ready_for_query()))
    requests = [
        b.bind("", "P_0", (str(i * 7919 % 100000 + 1).encode(),)) + b.describe("P", "") + b.execute() + b.sync()
        for i in range(1000)
    ]
    reply = b.message(b"2") + ROWS
frontend, backend, emit_all = tracker.frontend, tracker.backend, sink.emit_all
for i in range(warm + count):
    records = frontend(requests[i % 1000])
    if records:  # as the proxy: a chunk without records reaches no sink
        emit_all(records)
    records = backend(reply)
    if records:
        emit_all(records)
sink.close()
os.unlink(log)
"""


def _callgrind(out: str) -> list[str]:
    """The valgrind command line that writes one profile per thread under ``out``."""
    return ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}/cg.%p"]


def _main_thread_total(out: str) -> int:
    """The instruction total of the one main-thread profile callgrind wrote under ``out``."""
    main = [p for p in Path(out).iterdir() if p.name.endswith("-01")]
    if len(main) != 1:
        raise RuntimeError(f"expected one main-thread profile, found {sorted(p.name for p in Path(out).iterdir())}")
    text = main[0].read_text()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no total in {main[0]}")
    return int(found.group(1))


def _main_thread_instructions(tree: Path, script: str, args: list[str]) -> int:
    """Instructions the main thread of ``python -c script args`` ran, under callgrind."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [*_callgrind(out), sys.executable, "-c", script, *args],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
            check=True,
            capture_output=True,
        )
        return _main_thread_total(out)


def statement(tree: Path, detail: str, workload: str, count: int, warm: int, clock: str = "fixed") -> float:
    """Main-thread instructions per statement (difference of a run of ``count`` and one of ``3 * count``)."""
    short = _main_thread_instructions(tree, _STATEMENT_CHILD, [detail, workload, str(warm), str(count), clock])
    long = _main_thread_instructions(tree, _STATEMENT_CHILD, [detail, workload, str(warm), str(3 * count), clock])
    return (long - short) / (2 * count)


def _proxy_run(
    tree: Path, pg: EmbeddedPostgres, detail: str, connections: int, forwarder: bool, keep: Path | None
) -> int:
    """Main-thread instructions of one proxy process serving ``connections`` pgbench -C connections."""
    from common import proxy_command, wait_port  # bench/common.py: the scripts import it by its bare name

    from pgproxy.demo.embedded import free_port

    port = free_port()
    upstream = pg.port
    if forwarder:
        command = [sys.executable, str(ROOT / "bench" / "forwarder.py"), str(port), str(upstream)]
    else:
        command = proxy_command(port, upstream, detail)
    with tempfile.TemporaryDirectory() as out:
        log = Path(out) / "proxy.log"
        with open(log, "wb") as stdout:
            proc = subprocess.Popen(
                [*_callgrind(out), *command],
                cwd=tree,
                env={**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
                stdout=stdout,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_port(port, proc, timeout=300)
                client = [pg.tool("pgbench"), "-n", "-S", "-C", "-M", "simple", "-c", "1", "-t", str(connections)]
                client += ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "postgres"]
                subprocess.run(client, check=True, capture_output=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                if proc.wait(timeout=300) not in (0, -signal.SIGTERM):
                    raise RuntimeError(f"proxy exited {proc.returncode}: {log.read_text()[-2000:]}")
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for profile in Path(out).glob("cg.*"):
                shutil.copy(profile, keep / f"{profile.name}.{connections}")
        return _main_thread_total(out)


def connection(tree: Path, detail: str, connections: int, forwarder: bool, keep: Path | None) -> float:
    """Main-thread instructions per pgbench -C connection (difference of N and 3N connections)."""
    from pgproxy.demo.embedded import EmbeddedPostgres

    with EmbeddedPostgres(settings={"max_connections": "20"}) as pg:
        init = [pg.tool("pgbench"), "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres"]
        subprocess.run([*init, "postgres"], check=True, capture_output=True)
        short = _proxy_run(tree, pg, detail, connections, forwarder, keep)
        long = _proxy_run(tree, pg, detail, 3 * connections, forwarder, keep)
    return (long - short) / (2 * connections)


def _inclusive(profile: Path) -> dict[str, int]:
    """Inclusive instructions per function in one callgrind profile, by function name (``callgrind_annotate``)."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(profile)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    counts: dict[str, int] = {}
    for found in re.finditer(r"^\s*([\d,]+) \([^)]*\)\s+(?:\S*:)?(\S+?)(?: \[.*\])?$", text, re.MULTILINE):
        # A function appears once per object file it was inlined from: its largest count is the function's.
        name = found.group(2)
        counts[name] = max(counts.get(name, 0), int(found.group(1).replace(",", "")))
    return counts


def per_unit_functions(keep: Path, short: int, long: int, top: int, total: float) -> list[tuple[float, str]]:
    """The ``top`` functions by inclusive instructions per unit: the two runs' main-thread profiles, differenced.

    Left out: the frames that hold all of it (``total`` per unit or more: the
    interpreter's and the event loop's outer frames, which say nothing), and
    names callgrind could not resolve (``0x...``, call stubs).
    """
    profiles = []
    for count in (short, long):
        found = [p for p in keep.iterdir() if p.name.endswith(f"-01.{count}")]
        if len(found) != 1:
            raise RuntimeError(f"expected one main-thread profile of the {count} run in {keep}, found {len(found)}")
        profiles.append(_inclusive(found[0]))
    before, after = profiles
    units = long - short
    rows = [((after.get(name, 0) - before.get(name, 0)) / units, name) for name in before.keys() | after.keys()]
    rows = [(per, name) for per, name in rows if per < 0.99 * total and not name.startswith("0x")]
    rows.sort(reverse=True)
    return rows[:top]


def _print_functions(rows: list[tuple[float, str]], unit: str) -> None:
    print(f"inclusive instructions per {unit}, by function (main thread; the two runs' difference):")
    for per, name in rows:
        print(f"{per / 1000:10.2f}k  {name}")


def _answer(sock: socket.socket, pending: bytearray) -> None:
    """Read backend messages up to and including ReadyForQuery ("Z"), or raise on an ErrorResponse."""
    while True:
        while len(pending) >= 5:
            tag = pending[0]
            (length,) = struct.unpack_from("!i", pending, 1)
            if len(pending) < 1 + length:
                break
            body = bytes(pending[5 : 1 + length])
            del pending[: 1 + length]
            if tag == ord("E"):
                raise RuntimeError(f"the server answered with an error: {body!r}")
            if tag == ord("Z"):
                return
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("the proxy closed the connection")
        pending += data


#: The table ``pgbench -S`` reads, small: the round trip is the proxy's, not the server's.
_ROUNDTRIP_TABLE = (
    "CREATE TABLE IF NOT EXISTS pgbench_accounts (aid int PRIMARY KEY, abalance int NOT NULL DEFAULT 0);"
    "INSERT INTO pgbench_accounts SELECT g, 0 FROM generate_series(1, 100000) g ON CONFLICT DO NOTHING;"
)


def _roundtrip_run(tree: Path, upstream: int, detail: str, warm: int, count: int, keep: Path | None) -> int:
    """Main-thread instructions of one proxy run serving one client's ``warm + count`` simple Queries."""
    sys.path.insert(0, str(ROOT))
    from common import proxy_command  # bench/common.py: the scripts import it by its bare name

    from pgproxy.demo.embedded import free_port
    from pgproxy.protocol import build as b

    port = free_port()
    with tempfile.TemporaryDirectory() as out:
        cmd = [*_callgrind(out), *proxy_command(port, upstream, detail)]
        with open(Path(out) / "proxy.jsonl", "wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=tree,
                env={**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 300  # start-up under callgrind takes a minute
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the proxy exited: {(Path(out) / 'proxy.jsonl').read_text()[-2000:]}")
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            with sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pending = bytearray()
                sock.sendall(
                    b.startup_message({"user": "postgres", "database": "postgres", "application_name": "pgbench"})
                )
                _answer(sock, pending)
                requests = [
                    b.query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {i * 7919 % 100000 + 1};")
                    for i in range(1000)
                ]
                for i in range(warm + count):
                    sock.sendall(requests[i % 1000])
                    _answer(sock, pending)
                sock.sendall(b.message(b"X"))
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for profile in Path(out).iterdir():
                if profile.name.startswith("cg."):
                    shutil.copy(profile, keep / f"{profile.name}.{count}")
        return _main_thread_total(out)


def roundtrip(tree: Path, detail: str, count: int, warm: int, keep: Path | None) -> float:
    """The proxy's main-thread instructions per round trip (difference of a run of ``count`` and one of ``3 * count``)."""
    sys.path.insert(0, str(ROOT))
    from pgproxy.demo.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as pg:
        pg.psql(_ROUNDTRIP_TABLE)
        short = _roundtrip_run(tree, pg.port, detail, warm, count, keep)
        long = _roundtrip_run(tree, pg.port, detail, warm, 3 * count, keep)
    return (long - short) / (2 * count)


def build(dest: Path, rev: str | None, pure: bool) -> None:
    """A copy of the package at ``dest``, compiled in place unless ``pure``."""
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / "pgproxy").exists():
        shutil.rmtree(dest / "pgproxy")
    if rev is None:
        shutil.copytree(ROOT / "pgproxy", dest / "pgproxy", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        setup_py = (ROOT / "setup.py").read_text()
    else:
        archive = subprocess.run(["git", "archive", rev, "pgproxy"], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        setup_py = subprocess.run(
            ["git", "show", f"{rev}:setup.py"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
    if pure:
        return
    listed = re.search(r"COMPILED = \[(.*?)\]", setup_py, re.DOTALL)
    assert listed is not None, "setup.py lists no COMPILED modules"
    modules = re.findall(r'"([^"]+\.py)"', listed.group(1))
    mypyc = Path(sys.executable).parent / "mypyc"
    subprocess.run([str(mypyc), *modules], cwd=dest, check=True, capture_output=True)
    for leftover in ("build",):
        shutil.rmtree(dest / leftover, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="copy (and compile) the package into DEST")
    b.add_argument("dest", type=Path)
    b.add_argument("--rev", help="a commit to take the package from (default: the working tree)")
    b.add_argument("--pure", action="store_true", help="copy without compiling")
    s = commands.add_parser("statement", help="instructions per statement, tracker and sinks")
    s.add_argument("--tree", type=Path, default=ROOT, help="directory holding the pgproxy package to count")
    s.add_argument("--detail", choices=DETAILS, default="query")
    s.add_argument("--workload", choices=(*WORKLOADS, "all"), default="all")
    s.add_argument("--statements", type=int, default=1000, help="statements in the shorter counted run")
    s.add_argument("--warm", type=int, default=1000, help="statements before counting (fills every cache)")
    s.add_argument("--clock", choices=("fixed", "cycling"), default="fixed", help="statement durations (see above)")
    c = commands.add_parser("connection", help="instructions per new connection, whole proxy, pgbench -S -C")
    c.add_argument("--tree", type=Path, default=ROOT, help="directory holding the pgproxy package to count")
    c.add_argument("--detail", choices=DETAILS, default="query")
    c.add_argument("--connections", type=int, default=100, help="connections in the shorter counted run")
    c.add_argument("--forwarder", action="store_true", help="count bench/forwarder.py instead of the proxy")
    c.add_argument("--keep", type=Path, help="copy the callgrind profiles here (for callgrind_annotate)")
    c.add_argument("--functions", type=int, default=0, metavar="N", help="also list the N costliest functions")
    r = commands.add_parser("roundtrip", help="instructions per round trip, the whole proxy, one client")
    r.add_argument("--tree", type=Path, default=ROOT, help="directory holding the pgproxy package to count")
    r.add_argument("--detail", choices=DETAILS, default="query")
    r.add_argument("--round-trips", type=int, default=500, help="round trips in the shorter counted run")
    r.add_argument("--warm", type=int, default=500, help="round trips before counting")
    r.add_argument("--keep", type=Path, help="keep both runs' callgrind profiles here")
    r.add_argument("--functions", type=int, default=0, metavar="N", help="also list the N costliest functions")
    args = parser.parse_args()
    if args.command in ("roundtrip", "connection"):
        with tempfile.TemporaryDirectory() as scratch:
            keep = args.keep or (Path(scratch) if args.functions else None)
            if args.command == "roundtrip":
                per = roundtrip(args.tree.resolve(), args.detail, args.round_trips, args.warm, keep)
                print(f"{args.detail:<10} simple    {per / 1000:8.1f}k instructions per round trip (proxy main thread)")
                short, unit = args.round_trips, "round trip"
            else:
                per = connection(args.tree.resolve(), args.detail, args.connections, args.forwarder, keep)
                what = "forwarder" if args.forwarder else args.detail
                print(f"{what:<10} pgbench -C {per / 1000:8.1f}k instructions per connection (main thread)")
                short, unit = args.connections, "connection"
            if args.functions and keep is not None:
                _print_functions(per_unit_functions(keep, short, 3 * short, args.functions, per), unit)
        return
    if args.command == "build":
        build(args.dest.resolve(), args.rev, args.pure)
        print(f"built {args.dest} ({'pure' if args.pure else 'compiled'}, {args.rev or 'working tree'})")
        return
    workloads = WORKLOADS if args.workload == "all" else (args.workload,)
    for workload in workloads:
        per = statement(args.tree.resolve(), args.detail, workload, args.statements, args.warm, args.clock)
        print(f"{args.detail:<10} {workload:<9} {per / 1000:8.1f}k instructions per statement (main thread)")


if __name__ == "__main__":
    main()
