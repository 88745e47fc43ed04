"""pgproxy against a direct connection, PgBouncer and a bare forwarder, in one interleaved run (issue 11).

One command starts an embedded PostgreSQL, PgBouncer in session mode (when
installed), a bare uvloop byte forwarder (bench/forwarder.py, the floor for a
Python proxy) and one pgproxy process per level of detail (logging JSON lines
to a file, as in production). Then, round after round, it runs the same pgbench
workloads against every target in turn (the order rotating each round), so
drift on a shared machine hits all targets alike:

- W1: ``pgbench -S -M simple``, 8 clients;
- W2: ``pgbench -S -M extended`` and ``-M prepared``, 8 clients;
- one client, ``-S -M simple``: the latency each target adds per round trip;
- churn: ``pgbench -S -C`` (a new connection per transaction), 4 clients.

For every run it records TPS, average latency and the proxy's CPU time (utime
+ stime of its process tree from /proc, so per transaction or per connection;
the report also shows the two apart, user space and kernel).
After the rounds: bulk transfers (COPY out of 2,000,000 rows, a SELECT of
1,000,000 rows, psql into /dev/null; at least five interleaved rounds) and memory: 1,000 connections held open
through a fresh instance of each proxy, RSS measured idle (authenticated, no
statement yet) and active (after a prepared and a simple statement each).

``--workers-scaling`` adds pgproxy at query detail with ``proxy.workers`` 1
and 2, each pinned to one core and to two cores (taskset), on W1.

It prints a Markdown report and writes it, with the raw runs as JSON, to
bench/results/<UTC time>.{md,json} and to bench/RESULTS.md (the latest
result, kept in the repository). Medians over the rounds; the worst run of
each cell is reported too.

Run: ``python bench/proxy_bench.py [--seconds 10] [--rounds 3] [--scale 10]``
(about 25 minutes with the defaults; ``--seconds 3 --rounds 1 --skip-bulk
--rss-connections 100`` for a quick look).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import platform
import re
import resource
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import proxy_command, wait_port

from pgproxy.config import env_name
from pgproxy.demo.embedded import EmbeddedPostgres, find_installation, free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
BENCH_DIR = Path(__file__).resolve().parent

W1, W2E, W2P, ONE, CHURN = "W1", "W2e", "W2p", "1c", "C"
WORKLOADS: dict[str, tuple[str, list[str]]] = {
    W1: ("W1 -S simple, 8 clients", ["-S", "-M", "simple", "-c", "8", "-j", "2"]),
    W2E: ("W2 -S extended, 8 clients", ["-S", "-M", "extended", "-c", "8", "-j", "2"]),
    W2P: ("W2 -S prepared, 8 clients", ["-S", "-M", "prepared", "-c", "8", "-j", "2"]),
    ONE: ("-S simple, 1 client", ["-S", "-M", "simple", "-c", "1", "-j", "1"]),
    CHURN: ("-S -C (new connection per tx), 4 clients", ["-S", "-M", "simple", "-C", "-c", "4", "-j", "2"]),
}
ALL_TARGETS = ("direct", "pgbouncer", "pgbouncer-tls", "forwarder", "connection", "query", "message", "wire")


@dataclass
class Run:
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    cpu_s: float
    sys_s: float = 0.0  # the kernel's part of cpu_s (stime)


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    runs: dict[str, list[Run]] = field(default_factory=dict)

    @property
    def is_proxy(self) -> bool:
        return self.proc is not None

    def cpu_times(self) -> tuple[float, float]:
        """utime and stime of the target's live process tree (workers included), apart."""
        if self.proc is None:
            return 0.0, 0.0
        user = kernel = 0
        for pid in _process_tree(self.proc.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            user += int(fields[11])
            kernel += int(fields[12])
        return user / CLK_TCK, kernel / CLK_TCK

    def rss_kib(self) -> int:
        """Resident memory of the target's process tree, KiB."""
        if self.proc is None:
            return 0
        total = 0
        for pid in _process_tree(self.proc.pid):
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
            except OSError:
                continue
        return total

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        alive = self.proc.poll() is None
        self.proc.terminate()
        try:
            rc = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(5)
        return rc if alive else -999


def _process_tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


# ---------------------------------------------------------------------- targets


def start_proxy(
    upstream: int,
    detail: str,
    tmp: Path,
    *,
    workers: int = 1,
    cpus: str | None = None,
    name: str | None = None,
    source: Path | None = None,
    settings: dict[str, str] | None = None,
    python: str | None = None,
) -> Target:
    """pgproxy at ``detail``; ``source`` runs another checkout of it (``--targets query@REF``);
    ``settings`` are options by dotted key (``--targets query+query.fingerprints=false``);
    ``python`` another interpreter (``--targets query+mypyc+python=/path/to/python3.12``)."""
    port = free_port()
    label = name or f"pgproxy {detail}"
    log = tmp / (re.sub(r"\W+", "-", label) + ".jsonl")
    cmd = proxy_command(port, upstream, detail, python)
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    env = dict(os.environ)
    if workers != 1:
        env[env_name("proxy.workers")] = str(workers)
    for key, value in (settings or {}).items():
        env[env_name(key)] = value
    if source is not None:
        env["PYTHONPATH"] = str(source)
    proc = subprocess.Popen(
        cmd,
        stdout=open(log, "ab"),  # noqa: SIM115 (the child owns it; append mode lets us truncate it between runs)
        stderr=subprocess.STDOUT,
        env=env,
        # `python -m` puts the working directory first on sys.path: this checkout's code unless another's is asked
        # for, wherever the benchmark was started from
        cwd=source or BENCH_DIR.parent,
    )
    wait_port(port, proc)
    return Target(label, port, proc, log)


def start_forwarder(upstream: int) -> Target:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH_DIR / "forwarder.py"), str(port), str(upstream)])
    wait_port(port, proc)
    return Target("bare uvloop forwarder", port, proc)


def start_pgbouncer(upstream: int, tmp: Path, pool_size: int = 50, server_tls: bool = False) -> Target | None:
    exe = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if exe is None:
        return None
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="pgbouncer-", dir=tmp))
    ini = home / "pgbouncer.ini"
    (home / "users.txt").write_text('"postgres" ""\n')
    ini.write_text(
        f"[databases]\n* = host=127.0.0.1 port={upstream}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"auth_type = trust\nauth_file = {home / 'users.txt'}\npool_mode = session\n"
        f"max_client_conn = {pool_size + 100}\ndefault_pool_size = {pool_size}\nlogfile = {home / 'pgbouncer.log'}\n"
        "unix_socket_dir =\n" + ("server_tls_sslmode = require\n" if server_tls else "")
    )
    cmd = [exe, str(ini)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        for path in (tmp, home):
            os.chmod(path, 0o777)
        for p in home.iterdir():
            os.chmod(p, 0o666)
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
    except RuntimeError:
        proc.kill()
        return None
    return Target("PgBouncer (session, server TLS)" if server_tls else "PgBouncer (session)", port, proc)


def start_targets(names: list[str], pg: EmbeddedPostgres, tmp: Path, pool_size: int = 50) -> list[Target]:
    targets = []
    for name in names:
        if name == "direct":
            targets.append(Target("direct", pg.port))
        elif name in ("pgbouncer", "pgbouncer-tls"):
            bouncer = start_pgbouncer(pg.port, tmp, pool_size, server_tls=name == "pgbouncer-tls")
            if bouncer is None:
                print("  (PgBouncer not installed or failed to start: skipped)", flush=True)
            else:
                targets.append(bouncer)
        elif name == "forwarder":
            targets.append(start_forwarder(pg.port))
        else:  # query, query+mypyc, query+query.fingerprints=false+stats.enabled=false, query@REF, query+mypyc@REF
            spec, _, ref = name.partition("@")
            detail, *extras = spec.split("+")
            pairs = dict(a.split("=", 1) for a in extras if a != "mypyc")
            python = pairs.pop("python", None)  # not an option: the interpreter (its venv must hold the dependencies)
            root = checkout(ref, tmp) if ref else None
            source = compiled(tmp, root, python) if "mypyc" in extras else root
            label = f"pgproxy {spec}" + (f" @{ref}" if ref else "")
            if python is not None:  # the path is long: the label names the version
                version = subprocess.run(
                    [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                    capture_output=True, text=True, check=True,
                ).stdout.strip()  # fmt: skip
                label = label.replace(f"python={python}", f"python {version}")
            targets.append(start_proxy(pg.port, detail, tmp, name=label, settings=pairs, source=source, python=python))
    return targets


def compiled(tmp: Path, root: Path | None = None, python: str | None = None) -> Path:
    """A copy of a checkout's package (this one, or ``root``) with its setup.py's modules compiled by
    mypyc (``PGPROXY_COMPILE=1``), for this interpreter or ``python`` (with the mypyc of its environment)."""
    root = root or BENCH_DIR.parent
    path = tmp / ("src-mypyc" if root == BENCH_DIR.parent else f"src-mypyc-{root.name}")
    if python is not None:
        path = path.with_name(path.name + "-" + re.sub(r"\W+", "-", python).strip("-"))
    if not path.exists():
        shutil.copytree(root / "pgproxy", path / "pgproxy", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        modules = runpy.run_path(str(root / "setup.py"), run_name="setup")["COMPILED"]
        print(f"compiling {len(modules)} modules of {root.name} with mypyc...", flush=True)
        mypyc = Path(python or sys.executable).parent / "mypyc"
        subprocess.run([str(mypyc), *modules], cwd=path, check=True, capture_output=True)
    return path


def checkout(ref: str, tmp: Path) -> Path:
    """A detached worktree of ``ref`` (for before/after comparisons in one run); removed at exit."""
    path = tmp / ("src-" + re.sub(r"\W+", "-", ref))
    if not path.exists():
        subprocess.run(["git", "-C", str(BENCH_DIR), "worktree", "add", "--detach", "-q", str(path), ref], check=True)
        atexit.register(subprocess.run, ["git", "-C", str(BENCH_DIR), "worktree", "prune"])  # after tmp is gone
    return path


# ---------------------------------------------------------------------- pgbench


def pgbench(pg: EmbeddedPostgres, port: int, args: list[str], seconds: float) -> tuple[float, float, int, int]:
    out = subprocess.run(
        [
            pg.tool("pgbench"),
            "-n",
            "-T",
            str(int(seconds)),
            *args,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "postgres",
        ],
        capture_output=True,
        text=True,
        timeout=seconds * 4 + 60,
        check=False,
        env={**os.environ, "PGSSLMODE": "disable"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed on port {port}: {out.stderr[-2000:]}")
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))  # type: ignore[union-attr]
    lat = float(re.search(r"latency average = ([\d.]+) ms", out.stdout).group(1))  # type: ignore[union-attr]
    tx = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))  # type: ignore[union-attr]
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    return tps, lat, tx, int(failed.group(1)) if failed else 0


def measure(pg: EmbeddedPostgres, target: Target, workload: str, seconds: float) -> Run:
    user0, kernel0 = target.cpu_times()
    tps, lat, tx, failed = pgbench(pg, target.port, WORKLOADS[workload][1], seconds)
    user1, kernel1 = target.cpu_times()
    run = Run(tps, lat, tx, failed, user1 + kernel1 - user0 - kernel0, kernel1 - kernel0)
    target.runs.setdefault(workload, []).append(run)
    if target.log is not None:
        os.truncate(target.log, 0)  # the child appends; keeps the disk from filling at message detail
    return run


# ---------------------------------------------------------------------- bulk and memory

#: Rounds of the bulk transfers at least. Each is one psql run of a second or two: with three rounds the
#: compiled query detail's COPY out read 0.83 and then 0.69x direct in two full runs, and 1.09 in five
#: interleaved rounds of it alone (the forwarder 0.99, its five runs 1.16-1.58 s).
BULK_ROUNDS = 5
BULK = {"COPY out 2M rows": "\\copy bulk_copy TO '/dev/null'", "SELECT 1M rows": "SELECT * FROM bulk_select"}


def run_bulk(pg: EmbeddedPostgres, targets: list[Target], rounds: int) -> dict[str, dict[str, float]]:
    """Median seconds of each bulk transfer per target (psql reading into /dev/null), interleaved."""
    timings: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for label, sql in BULK.items():
            for target in targets:
                timings.setdefault(target.name, {}).setdefault(label, []).append(_psql_seconds(pg, target, sql))
    return {name: {label: statistics.median(runs) for label, runs in row.items()} for name, row in timings.items()}


def _psql_seconds(pg: EmbeddedPostgres, target: Target, sql: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [
            pg.tool("psql"),
            "-X",
            "-q",
            "-o",
            "/dev/null",
            "-h",
            "127.0.0.1",
            "-p",
            str(target.port),
            "-U",
            "postgres",
            "-c",
            sql,
        ],
        check=True,
        env={**os.environ, "PGSSLMODE": "disable"},
        timeout=900,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def bulk_sizes(pg: EmbeddedPostgres) -> dict[str, float]:
    """MB each bulk transfer puts on the wire (measured directly: the table's text size)."""
    return {
        label: float(pg.psql(f"SELECT sum(octet_length(t::text)) FROM {table} t").strip() or 0) / 1e6
        for label, table in (("COPY out 2M rows", "bulk_copy"), ("SELECT 1M rows", "bulk_select"))
    }


@dataclass
class Memory:
    baseline_kib: int
    idle_kib: int
    active_kib: int
    connections: int
    connect_s: float

    @property
    def per_idle(self) -> float:
        return (self.idle_kib - self.baseline_kib) / self.connections

    @property
    def per_active(self) -> float:
        return (self.active_kib - self.baseline_kib) / self.connections


def hold_connections(target: Target, count: int) -> Memory:
    """Open ``count`` connections through ``target``; RSS before, idle, and after a statement on each."""
    import asyncpg

    async def main() -> Memory:
        gate = asyncio.Semaphore(64)

        async def connect() -> Any:
            async with gate:
                return await asyncpg.connect(
                    host="127.0.0.1", port=target.port, user="postgres", database="postgres", ssl=False
                )

        warm = await connect()  # the first session's one-off costs (imports, caches) are not per connection
        await warm.fetchval("SELECT abalance FROM pgbench_accounts WHERE aid = $1", 1)
        await warm.close()
        await asyncio.sleep(0.5)
        baseline = target.rss_kib()
        t0 = time.perf_counter()
        conns = await asyncio.gather(*(connect() for _ in range(count)))
        connect_s = time.perf_counter() - t0
        await asyncio.sleep(0.5)
        idle = target.rss_kib()

        async def work(i: int, conn: Any) -> None:
            async with gate:
                await conn.fetchval("SELECT abalance FROM pgbench_accounts WHERE aid = $1", i + 1)
                await conn.execute("SELECT 1")

        await asyncio.gather(*(work(i, c) for i, c in enumerate(conns)))
        await asyncio.sleep(0.5)
        active = target.rss_kib()
        await asyncio.gather(*(c.close() for c in conns))
        return Memory(baseline, idle, active, count, connect_s)

    return asyncio.run(main())


# ---------------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _tps(target: Target, workload: str) -> float:
    return _median([r.tps for r in target.runs.get(workload, [])])


def _cpu_per_tx_us(target: Target, workload: str, kernel_only: bool = False) -> float:
    """Median µs of the proxy's CPU per transaction (per connection under churn); ``kernel_only``: its stime part."""
    runs = [r for r in target.runs.get(workload, []) if r.transactions]
    return _median([(r.sys_s if kernel_only else r.cpu_s) / r.transactions * 1e6 for r in runs])


def _find(targets: list[Target], prefix: str) -> Target | None:
    return next((t for t in targets if t.name.startswith(prefix)), None)


def render(
    meta: dict[str, Any],
    targets: list[Target],
    bulk: dict[str, dict[str, float]],
    sizes: dict[str, float],
    memory: dict[str, Memory],
    scaling: list[Target],
    exits: dict[str, int | None],
) -> str:
    direct = _find(targets, "direct")
    bouncer = _find(targets, "PgBouncer")
    forwarder = _find(targets, "bare")
    out = [
        f"# pgproxy benchmark, {meta['date']}",
        "",
        f"commit `{meta['commit']}`; Python {meta.get('python', '?')}; PostgreSQL {meta['postgres']}, "
        f"pgbench scale {meta['scale']}, "
        f"{meta['cores']} cores shared by pgbench, the server and the proxy; {meta['rounds']} interleaved rounds x "
        f"{meta['seconds']:g} s per run; pgproxy logs JSON lines to a file; PgBouncer "
        f"{meta['pgbouncer'] or '(not installed)'} in session mode; load average at start {meta['load']}. "
        "Medians over the rounds; (xB) = ratio to PgBouncer, (xF) = ratio to the bare forwarder.",
        "",
        "| target | W1 -S simple, 8 clients | W2 -S extended | W2 -S prepared | 1 client: added µs per round trip "
        "| proxy CPU µs/tx (W1) | -C: TPS | -C: proxy CPU µs per connection |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    direct_lat = _median([r.latency_ms for r in direct.runs.get(ONE, [])]) if direct else float("nan")
    bouncer_added = (_median([r.latency_ms for r in bouncer.runs.get(ONE, [])]) - direct_lat) * 1000 if bouncer else 0
    forwarder_churn = _cpu_per_tx_us(forwarder, CHURN) if forwarder else 0
    for t in targets:
        cells = [t.name]
        for w in (W1, W2E, W2P):
            text = f"{_tps(t, w):,.0f}"
            if t.name.startswith("pgproxy") and bouncer:
                text += f" ({_tps(t, w) / _tps(bouncer, w):.2f}xB)"
            if t.name == "pgproxy connection" and forwarder:
                text += f" ({_tps(t, w) / _tps(forwarder, w):.2f}xF)"
            cells.append(text)
        if t is direct:
            cells += ["—", "—", f"{_tps(t, CHURN):,.0f}", "—"]
        else:
            added = (_median([r.latency_ms for r in t.runs.get(ONE, [])]) - direct_lat) * 1000
            text = f"+{added:.0f}"
            if t.name.startswith("pgproxy") and bouncer and bouncer_added > 0:
                text += f" ({added / bouncer_added:.2f}xB)"
            cells.append(text)
            cells.append(f"{_cpu_per_tx_us(t, W1):.1f}")
            cells.append(f"{_tps(t, CHURN):,.0f}")
            churn = _cpu_per_tx_us(t, CHURN)
            text = f"{churn:.0f}"
            if t.name.startswith("pgproxy") and forwarder_churn:
                text += f" ({churn / forwarder_churn:.2f}xF)"
            cells.append(text + (" (pools server connections)" if t is bouncer else ""))
        out.append("| " + " | ".join(cells) + " |")

    out += [
        "",
        "## Proxy CPU µs per transaction: user space + kernel",
        "",
        "The kernel's part (stime: the socket reads and writes, the log's writes) is the floor every proxy "
        "relaying the same bytes pays; the user-space part is the proxy's own work.",
        "",
        "| target | " + " | ".join(WORKLOADS[w][0] for w in (W1, W2E, W2P)) + " |",
        "|---|---:|---:|---:|",
    ]
    for t in targets:
        if not t.is_proxy:
            continue
        cells = [t.name]
        for w in (W1, W2E, W2P):
            total, kernel = _cpu_per_tx_us(t, w), _cpu_per_tx_us(t, w, kernel_only=True)
            cells.append(f"{total - kernel:.1f} + {kernel:.1f}" if t.runs.get(w) else "")
        out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        "## Every workload: median TPS (worst run), ratio to direct, proxy CPU µs per transaction",
        "",
        "| target | " + " | ".join(WORKLOADS[w][0] for w in WORKLOADS) + " |",
        "|---|" + "---:|" * len(WORKLOADS),
    ]
    for t in targets:
        cells = [t.name]
        for w in WORKLOADS:
            runs = t.runs.get(w, [])
            if not runs:
                cells.append("")
                continue
            text = f"{_tps(t, w):,.0f} ({min(r.tps for r in runs):,.0f})"
            if direct and t is not direct:
                text += f" {_tps(t, w) / _tps(direct, w):.2f}xD"
            if t.is_proxy:
                text += f", {_cpu_per_tx_us(t, w):.1f} µs"
            cells.append(text)
        out.append("| " + " | ".join(cells) + " |")

    if bulk:
        base = bulk.get("direct", {})
        out += [
            "",
            "## Bulk transfers (psql into /dev/null, median of the rounds)",
            "",
            "| target | " + " | ".join(f"{label}: MB/s (xdirect)" for label in BULK) + " |",
            "|---|" + "---:|" * len(BULK),
        ]
        for name, row in bulk.items():
            cells = [name]
            for label in BULK:
                ratio = base[label] / row[label] if label in base else float("nan")
                cells.append(f"{sizes.get(label, 0) / row[label]:.0f} ({ratio:.2f})")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out.append("Sizes: " + ", ".join(f"{label} ≈ {mb:.0f} MB of row text" for label, mb in sizes.items()) + ".")

    if memory:
        n = next(iter(memory.values())).connections
        out += [
            "",
            f"## Memory: {n:,} connections held through a fresh instance of each proxy",
            "",
            "Idle: authenticated, no statement yet. Active: after one prepared (extended) and one simple "
            "statement on each connection, still open. RSS of the proxy's process tree.",
            "",
            "| target | RSS before | KiB per idle connection | KiB per active connection | time to open all |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, m in memory.items():
            out.append(
                f"| {name} | {m.baseline_kib / 1024:.1f} MiB | {m.per_idle:.1f} | {m.per_active:.1f} "
                f"| {m.connect_s:.1f} s |"
            )

    if scaling:
        out += [
            "",
            "## Scaling: pgproxy query detail, W1, by workers and cores (taskset)",
            "",
            "| configuration | TPS (worst) | proxy CPU µs/tx |",
            "|---|---:|---:|",
        ]
        for t in scaling:
            runs = t.runs.get(W1, [])
            out.append(
                f"| {t.name} | {_tps(t, W1):,.0f} ({min(r.tps for r in runs):,.0f}) | {_cpu_per_tx_us(t, W1):.1f} |"
            )

    failed = sum(r.failed for t in targets + scaling for runs in t.runs.values() for r in runs)
    bad_exits = {name: rc for name, rc in exits.items() if name.startswith("pgproxy") and rc not in (0, -15, None)}
    out += [
        "",
        f"Failed transactions: {failed}. pgproxy exits on SIGTERM: "
        + ("all clean." if not bad_exits else ", ".join(f"{n}: {rc}" for n, rc in bad_exits.items()))
        + (" (-999: had died before the end.)" if bad_exits else ""),
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------- main


def _prepare(pg: EmbeddedPostgres, scale: int, bulk: bool) -> None:
    subprocess.run(
        [
            pg.tool("pgbench"),
            "-i",
            "-q",
            "-s",
            str(scale),
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            "postgres",
            "postgres",
        ],
        check=True,
        capture_output=True,
    )
    if bulk:
        pg.psql(
            "CREATE TABLE bulk_copy AS SELECT g AS id, md5(g::text) AS h, now() AS t FROM generate_series(1, 2000000) g"
        )
        pg.psql(
            "CREATE TABLE bulk_select AS SELECT g AS id, md5(g::text) AS h, g * 1.5 AS n"
            " FROM generate_series(1, 1000000) g"
        )
        pg.psql("VACUUM ANALYZE bulk_copy")
        pg.psql("VACUUM ANALYZE bulk_select")


def _tls_server(settings: dict[str, str]) -> tuple[Any, dict[str, bytes]]:
    """The newest OpenSSL-enabled installation, and a throw-away certificate for ssl=on."""
    import trustme  # the test extra brings it

    from pgproxy.demo.embedded import installations

    found = [i for i in installations() if i.has_ssl]
    if not found:
        sys.exit("--tls needs a PostgreSQL built with OpenSSL (e.g. Debian's postgresql package)")
    cert = trustme.CA().issue_cert("127.0.0.1", "localhost")
    settings.update(ssl="on", ssl_cert_file="'server.crt'", ssl_key_file="'server.key'")
    files = {"server.crt": cert.cert_chain_pems[0].bytes(), "server.key": cert.private_key_pem.bytes()}
    return max(found, key=lambda i: i.major), files


def _meta(args: argparse.Namespace, pg: EmbeddedPostgres) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "-C", str(BENCH_DIR), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    version = ""
    if Path(exe).exists():
        first = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout.splitlines()
        version = first[0].split()[-1] if first else ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit,
        # The proxy's interpreter, unless a target names another (``+python=PATH``): what it costs
        # depends on it (3.12 and 3.13 run the compiled query path in 17-19% more instructions than 3.11).
        "python": platform.python_version(),
        "postgres": pg.major,
        "scale": args.scale,
        "cores": os.cpu_count(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "pgbouncer": version,
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each pgbench run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument(
        "--targets",
        default="direct,pgbouncer,forwarder,connection,query,message",
        help=f"among {','.join(ALL_TARGETS)}; DETAIL@REF runs another git ref, "
        "DETAIL+KEY=VALUE sets options (e.g. query+query.fingerprints=false), DETAIL+mypyc runs the compiled build, "
        "DETAIL+python=PATH runs it on that interpreter (its venv holding the dependencies, and mypy for +mypyc)",
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"among {','.join(WORKLOADS)}")
    parser.add_argument("--skip-bulk", action="store_true")
    parser.add_argument("--rss-connections", type=int, default=1000, help="0 skips the memory measurement")
    parser.add_argument(
        "--workers-scaling", action="store_true", help="pgproxy query with 1 and 2 workers, 1 and 2 cores"
    )
    parser.add_argument("--no-save", action="store_true", help="print only; do not write bench/results or RESULTS.md")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve TLS (an OpenSSL build, ssl=on; 'direct' is then TLS end to end): compare "
        "query with query+tls.upstream_mode=require and pgbouncer with pgbouncer-tls",
    )
    args = parser.parse_args()
    names = [n for n in args.targets.split(",") if n]
    workloads = [w for w in args.workloads.split(",") if w]
    for name in names:
        if name.split("@")[0].split("+")[0] not in ALL_TARGETS:
            parser.error(f"unknown target {name!r}")
    for workload in workloads:
        if workload not in WORKLOADS:
            parser.error(f"unknown workload {workload!r} (choose among {','.join(WORKLOADS)})")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 connections need 2,000+ descriptors

    tmp = Path(tempfile.mkdtemp(prefix="pgproxy-bench-"))
    settings = {"max_connections": str(max(300, args.rss_connections + 100))}
    targets: list[Target] = []
    scaling: list[Target] = []
    exits: dict[str, int | None] = {}
    bulk: dict[str, dict[str, float]] = {}
    sizes: dict[str, float] = {}
    memory: dict[str, Memory] = {}
    installation = find_installation()
    files: dict[str, bytes] = {}
    if args.tls:
        installation, files = _tls_server(settings)
    with EmbeddedPostgres(installation, settings=settings, files=files) as pg:
        meta = _meta(args, pg)
        print(f"preparing: PostgreSQL {pg.major}, pgbench scale {args.scale}", flush=True)
        _prepare(pg, args.scale, not args.skip_bulk)
        try:
            targets = start_targets(names, pg, tmp)
            for rnd in range(args.rounds):
                order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
                for w in workloads:
                    for target in order:
                        run = measure(pg, target, w, args.seconds)
                        print(
                            f"round {rnd + 1} {WORKLOADS[w][0]:<42} {target.name:<24} {run.tps:>9.0f} TPS "
                            f"{run.latency_ms:>7.3f} ms"
                            + (
                                f" {run.cpu_s / max(run.transactions, 1) * 1e6:>7.1f} µs CPU/tx"
                                if target.is_proxy
                                else ""
                            ),
                            flush=True,
                        )
            if args.workers_scaling:
                scaling = workers_scaling(pg, tmp, args)
            if not args.skip_bulk:
                print("bulk transfers...", flush=True)
                sizes = bulk_sizes(pg)
                bulk = run_bulk(pg, targets, max(args.rounds, BULK_ROUNDS))
        finally:
            for target in targets + scaling:
                exits[target.name] = target.stop()
        if args.rss_connections:
            for name in names:
                if name == "direct":
                    continue
                print(f"memory: {args.rss_connections} connections through {name}...", flush=True)
                fresh = start_targets([name], pg, tmp, pool_size=args.rss_connections + 10)
                try:
                    if fresh:
                        memory[fresh[0].name] = hold_connections(fresh[0], args.rss_connections)
                finally:
                    for target in fresh:
                        target.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    report = render(meta, targets, bulk, sizes, memory, scaling, exits)
    print("\n" + report, flush=True)
    if not args.no_save:
        results = BENCH_DIR / "results"
        results.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        (results / f"{stamp}.md").write_text(report)
        raw = {
            "meta": meta,
            "runs": {t.name: {w: [asdict(r) for r in runs] for w, runs in t.runs.items()} for t in targets + scaling},
            "bulk_seconds": bulk,
            "bulk_mb": sizes,
            "memory": {name: asdict(m) for name, m in memory.items()},
            "exits": exits,
        }
        (results / f"{stamp}.json").write_text(json.dumps(raw, indent=1))
        (BENCH_DIR / "RESULTS.md").write_text(report)
        print(f"written: bench/results/{stamp}.md, .json and bench/RESULTS.md", flush=True)


def workers_scaling(pg: EmbeddedPostgres, tmp: Path, args: argparse.Namespace) -> list[Target]:
    """pgproxy at query detail with 1 and 2 workers, pinned to one core and to two; W1, interleaved."""
    configs = [(1, "0"), (2, "0"), (1, "0,1"), (2, "0,1")]
    scaling = [
        start_proxy(
            pg.port,
            "query",
            tmp,
            workers=n,
            cpus=cpus,
            name=f"pgproxy query, workers={n}, cores {cpus.replace(',', '+')}",
        )
        for n, cpus in configs
    ]
    for rnd in range(args.rounds):
        for target in scaling[rnd % len(scaling) :] + scaling[: rnd % len(scaling)]:
            run = measure(pg, target, W1, args.seconds)
            print(f"round {rnd + 1} scaling {target.name:<40} {run.tps:>9.0f} TPS", flush=True)
    return scaling


if __name__ == "__main__":
    main()
