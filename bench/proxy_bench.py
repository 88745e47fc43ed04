"""pgbench direct vs through pgproxy, in one interleaved session (issues 3 and 4).

One command starts an embedded PostgreSQL, one pgproxy process per level of
detail (logging JSON lines to a file, as in production), and PgBouncer in
session mode when it is installed; then, round after round, runs the same
pgbench workloads against each target in turn, so drift on the machine hits
all targets alike. It prints TPS, average latency and the ratio to direct,
the proxy's CPU time per transaction, bulk transfer rates (COPY out of
2,000,000 rows, SELECT of 1,000,000 pre-filled rows) and a `pgbench -C`
connection-churn soak.

Run: ``python bench/proxy_bench.py [--seconds 5] [--rounds 2] [--scale 10]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pgproxy.demo.embedded import EmbeddedPostgres, find_installation, free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    results: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)  # workload -> (tps, lat, cpu)

    def cpu_seconds(self) -> float:
        if self.proc is None:
            return 0.0
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_proxy(upstream: int, detail: str, tmp: Path, loop: str = "uvloop") -> Target:
    port = free_port()
    log = tmp / f"pgproxy-{detail}-{loop}.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgproxy",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"127.0.0.1:{upstream}",
            "--log-detail",
            detail,
            "--log-format",
            "json",
            "--loop",
            loop,
        ],
        stdout=open(log, "wb"),  # noqa: SIM115 (the child owns it)
        stderr=subprocess.STDOUT,
    )
    _wait_port(port)
    return Target(f"pgproxy {detail}" + ("" if loop == "uvloop" else f" ({loop})"), port, proc, log)


def start_pgbouncer(upstream: int, tmp: Path) -> Target | None:
    exe = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if exe is None:
        return None
    port = free_port()
    ini = tmp / "pgbouncer.ini"
    (tmp / "users.txt").write_text('"postgres" ""\n')
    ini.write_text(
        f"[databases]\n* = host=127.0.0.1 port={upstream}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"auth_type = trust\nauth_file = {tmp / 'users.txt'}\npool_mode = session\nmax_client_conn = 500\n"
        f"default_pool_size = 50\nlogfile = {tmp / 'pgbouncer.log'}\nunix_socket_dir =\n"
    )
    cmd = [exe, str(ini)]
    if os.geteuid() == 0:
        os.chmod(tmp, 0o777)
        for p in tmp.iterdir():
            os.chmod(p, 0o666)
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_port(port)
    except RuntimeError:
        proc.kill()
        return None
    return Target("pgbouncer (session)", port, proc)


def _wait_port(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def pgbench(pg: EmbeddedPostgres, port: int, args: list[str], seconds: float) -> tuple[float, float, int, str]:
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
    return tps, lat, tx, failed.group(1) if failed else "0"


WORKLOADS = {
    "-S simple, 8 clients": ["-S", "-M", "simple", "-c", "8", "-j", "2"],
    "-S prepared, 8 clients": ["-S", "-M", "prepared", "-c", "8", "-j", "2"],
    "-S simple, 1 client": ["-S", "-M", "simple", "-c", "1", "-j", "1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each pgbench run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--details", default="connection,query,message,wire")
    parser.add_argument("--churn-seconds", type=float, default=20.0)
    parser.add_argument("--churn-runs", type=int, default=5)
    parser.add_argument("--skip-bulk", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pgproxy-bench-"))
    with EmbeddedPostgres(find_installation(), settings={"max_connections": "300"}) as pg:
        print(
            f"PostgreSQL {pg.major}, pgbench scale {args.scale}, {os.cpu_count()} cores, "
            f"{args.rounds} rounds x {args.seconds:g}s per run",
            flush=True,
        )
        subprocess.run(
            [
                pg.tool("pgbench"),
                "-i",
                "-q",
                "-s",
                str(args.scale),
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
        if not args.skip_bulk:
            pg.psql(
                "CREATE TABLE bulk_copy AS SELECT g AS id, md5(g::text) AS h, now() AS t"
                " FROM generate_series(1, 2000000) g"
            )
            pg.psql(
                "CREATE TABLE bulk_select AS SELECT g AS id, md5(g::text) AS h, g * 1.5 AS n"
                " FROM generate_series(1, 1000000) g"
            )
            pg.psql("VACUUM ANALYZE bulk_copy")
            pg.psql("VACUUM ANALYZE bulk_select")
        targets = [Target("direct", pg.port)]
        for detail in args.details.split(","):
            targets.append(start_proxy(pg.port, detail, tmp))
        bouncer = start_pgbouncer(pg.port, tmp)
        if bouncer:
            targets.append(bouncer)
        try:
            for _round in range(args.rounds):
                for workload, wargs in WORKLOADS.items():
                    for target in targets:
                        cpu0 = target.cpu_seconds()
                        tps, lat, tx, _failed = pgbench(pg, target.port, wargs, args.seconds)
                        cpu_us = (target.cpu_seconds() - cpu0) / tx * 1e6 if target.proc else 0.0
                        target.results.setdefault(workload, []).append((tps, lat, cpu_us))
            report(targets)
            if not args.skip_bulk:
                run_bulk(pg, targets)
            churn(pg, tmp, args.churn_seconds, args.churn_runs)
        finally:
            for target in targets:
                if target.proc is not None:
                    target.proc.terminate()
                    target.proc.wait(10)
    shutil.rmtree(tmp, ignore_errors=True)


def report(targets: list[Target]) -> None:
    direct = targets[0]
    for workload in WORKLOADS:
        base = statistics.median(r[0] for r in direct.results[workload])
        print(f"\npgbench {workload}")
        print(f"  {'target':<24} {'TPS':>9} {'latency ms':>11} {'vs direct':>10} {'proxy CPU µs/tx':>16}")
        for target in targets:
            runs = target.results[workload]
            tps = statistics.median(r[0] for r in runs)
            lat = statistics.median(r[1] for r in runs)
            cpu = statistics.median(r[2] for r in runs)
            cpu_text = f"{cpu:>16.1f}" if target.proc is not None else f"{'':>16}"
            print(f"  {target.name:<24} {tps:>9.0f} {lat:>11.3f} {tps / base:>10.2f}{cpu_text}", flush=True)


BULK = {"COPY out 2M rows": "\\copy bulk_copy TO '/dev/null'", "SELECT 1M rows": "SELECT * FROM bulk_select"}


def run_bulk(pg: EmbeddedPostgres, targets: list[Target]) -> None:
    """MB/s of two bulk transfers, direct and through the proxies (psql reading into /dev/null)."""
    sizes: dict[str, int] = {}
    timings: dict[str, dict[str, float]] = {}
    for target in [t for t in targets if t.name == "direct" or t.name.startswith("pgproxy")]:
        for label, sql in BULK.items():
            app = "bulk-" + label.split()[0].lower()
            env = {**os.environ, "PGSSLMODE": "disable", "PGAPPNAME": app}
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
                env=env,
                timeout=900,
                stdout=subprocess.DEVNULL,
            )
            timings.setdefault(target.name, {})[label] = time.perf_counter() - t0
            if target.log is not None and label not in sizes:
                sizes[label] = _session_bytes(target.log, app)
    print("\nbulk transfers (psql into /dev/null; MB on the wire from the proxy's session.ended)")
    header = "".join(f"{label + ' MB/s':>24}{'vs direct':>10}" for label in BULK)
    print(f"  {'target':<24}{header}")
    for name, row in timings.items():
        cells = ""
        for label in BULK:
            mb = sizes.get(label, 0) / 1e6
            cells += f"{mb / row[label]:>24.1f}{timings['direct'][label] / row[label]:>10.2f}"
        print(f"  {name:<24}{cells}", flush=True)
    print("  sizes: " + ", ".join(f"{label} = {sizes.get(label, 0) / 1e6:.0f} MB" for label in BULK))


def _session_bytes(log: Path, application: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"session.ended"' in line and f'"application_name":"{application}"' in line:
                return int(re.search(r'"bytes_from_server":(\d+)', line).group(1))  # type: ignore[union-attr]
        time.sleep(0.1)
    return 0


def churn(pg: EmbeddedPostgres, tmp: Path, seconds: float, runs: int) -> None:
    """pgbench -S -C (a new connection per transaction), repeated, against uvloop and asyncio proxies.

    Issue 3 measured uvloop aborting under this load when half-close was
    propagated with write_eof(); pgproxy closes instead. Each run uses a fresh
    proxy process, whose exit status is checked.
    """
    print(f"\nconnection churn soak: {runs} x pgbench -S -C -c 4 -j 2 -T {seconds:g}")
    for loop in ("uvloop", "asyncio"):
        tps_runs, failures, crashes, connections = [], 0, 0, 0
        for _ in range(runs):
            target = start_proxy(pg.port, "query", tmp, loop)
            try:
                tps, _lat, tx, failed = pgbench(pg, target.port, ["-S", "-C", "-c", "4", "-j", "2"], seconds)
                tps_runs.append(tps)
                connections += tx
                failures += int(failed)
            finally:
                assert target.proc is not None
                alive = target.proc.poll() is None
                target.proc.terminate()
                rc = target.proc.wait(10)
                if not alive or rc not in (0, -15):
                    crashes += 1
        print(
            f"  pgproxy query ({loop}){'':<8} median {statistics.median(tps_runs):>6.0f} TPS  {connections} connections"
            f"  failed transactions {failures}  proxy crashes {crashes}/{runs}",
            flush=True,
        )
    direct_tps, _, tx, failed = pgbench(pg, pg.port, ["-S", "-C", "-c", "4", "-j", "2"], seconds)
    print(f"  {'direct':<24} {direct_tps:>13.0f} TPS  {tx} connections  failed transactions {failed}")


if __name__ == "__main__":
    main()
