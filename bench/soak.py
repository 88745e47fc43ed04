"""The long soak and fault suite, run by hand: no single client may freeze or swell the proxy.

Starts an embedded PostgreSQL and pgproxy (a separate process, so its memory
and descriptors are measured alone), then runs, in order:

1. **connections** — N concurrent logins held open: time to log them all in,
   RSS per connection, descriptors held and given back.
2. **server kill** — the server is killed (SIGQUIT, as a crash) and restarted
   under a client that keeps logging in: the proxy stays up, and the first
   login after the restart is timed.
3. **slowloris** — sockets that trickle a startup packet a byte a second: all
   closed by ``proxy.startup_timeout``, while a well-behaved client measures
   its latency.
4. **hostile inputs** — quadratic-SQL shapes, a megabyte ``int4[]`` text
   parameter, an array nested 2,000 deep, 65,535 parameter types, an
   SSLRequest stream, a client that sends without reading — each a few
   times, while the well-behaved client measures its latency.
5. **mixed soak** — pgbench (extended protocol) plus connection churn for
   ``--duration`` seconds, with the latency probe.

Prints the figures: connections held, RSS per connection, descriptors, the
well-behaved client's worst latency per phase, dropped log lines, failed
transactions, sessions started and ended. Loopback only; every loop is
bounded in count and time.

Usage::

    python bench/soak.py --duration 300 --connections 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from common import proxy_command, wait_port

from pgproxy.config import env_name
from pgproxy.demo.embedded import EmbeddedPostgres, _run_as_user, free_port
from pgproxy.protocol import build as b

STARTUP_TIMEOUT = 5.0


# --------------------------------------------------------------------------- processes


def proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_proxy(pg: EmbeddedPostgres, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env[env_name("proxy.startup_timeout")] = str(STARTUP_TIMEOUT)
    proc = subprocess.Popen(
        [*proxy_command(port, pg.port, "query"), "--log-file", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    wait_port(port, proc, timeout=30)
    return proc


def kill_and_restart(pg: EmbeddedPostgres) -> float:
    """SIGQUIT the postmaster (an immediate shutdown, like a crash), start it again; seconds down."""
    proc = pg._proc
    assert proc is not None and pg.datadir is not None and pg._bindir is not None and pg._tmp is not None
    proc.send_signal(signal.SIGQUIT)
    proc.wait(30)
    down = time.monotonic()
    account = _run_as_user()
    log = open(pg._tmp / "postgres.log", "ab")  # noqa: SIM115 (owned by the process)
    pg._proc = subprocess.Popen(
        [str(pg._bindir / "postgres"), "-D", str(pg.datadir)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"PATH": str(pg._bindir), "LC_ALL": "C", "LANG": "C"},
        cwd=str(pg._tmp),
        start_new_session=True,
        user=account.pw_uid if account else None,
        group=account.pw_gid if account else None,
        extra_groups=[] if account else None,
    )
    log.close()
    pg._wait_ready()
    return time.monotonic() - down


# --------------------------------------------------------------------------- the well-behaved client


@dataclass
class Probe:
    """A well-behaved client running ``SELECT 1`` in a loop, recording latencies."""

    dsn: str
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        conn: asyncpg.Connection | None = None
        while True:
            try:
                if conn is None:
                    conn = await asyncpg.connect(self.dsn, timeout=30)
                start = time.perf_counter()
                await conn.fetchval("SELECT 1")
                self.latencies.append(time.perf_counter() - start)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                self.failures += 1
                conn = None
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self.latencies.clear()
        self.failures = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, prefix: str = "probe") -> dict[str, Any]:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        lat = sorted(self.latencies)
        return {
            f"{prefix}_queries": len(lat),
            f"{prefix}_failures": self.failures,
            f"{prefix}_p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
            f"{prefix}_worst_ms": round(lat[-1] * 1000, 2) if lat else None,
        }


# --------------------------------------------------------------------------- raw protocol clients


async def raw_session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b.startup_message({"user": "postgres", "database": "postgres"}))
    await read_until_ready(reader)
    return reader, writer


async def read_until_ready(reader: asyncio.StreamReader, timeout: float = 60) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while not re.search(rb"Z\x00\x00\x00\x05[ITE]$", data[-6:]):
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    return data


async def extended(port: int, sql: str, types: tuple[int, ...], params: tuple[bytes, ...]) -> None:
    reader, writer = await raw_session(port)
    writer.write(b.parse("", sql, types) + b.bind("", "", params) + b.execute() + b.sync())
    await read_until_ready(reader)
    writer.close()


async def hostile_many_types(port: int) -> None:
    reader, writer = await raw_session(port)
    types = (23,) * 65535
    body = b"\x00SELECT 1\x00" + struct.pack("!H", len(types)) + struct.pack(f"!{len(types)}I", *types)
    writer.write(b"P" + struct.pack("!I", len(body) + 4) + body + b.sync())
    await read_until_ready(reader)
    writer.close()


async def hostile_ssl_stream(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b.startup_packet(80877103) * 1000)
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(10):
            while await reader.read(65536):
                pass
    writer.close()


async def hostile_send_without_reading(port: int, megabytes: int = 5) -> None:
    _reader, writer = await raw_session(port)
    empty_query = b.query("")
    chunk = empty_query * (1 << 16)
    sent = 0
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(20):
            while sent < megabytes << 20:
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
    writer.transport.abort()


def hostile_actions(port: int) -> dict[str, Any]:
    int_array = ("{" + ",".join(str(i % 1000) for i in range(250_000)) + "}").encode()
    return {
        "20 KB comment and a parameter": lambda: extended(
            port, "/* " + "x" * 20_000 + " */ SELECT $1::int", (23,), (b"1",)
        ),
        "20 KB hex literal in an insert": lambda: extended(
            port, "SELECT $1::int, '\\x" + "0f" * 10_000 + "'::bytea", (23,), (b"1",)
        ),
        "1 MB int4[] text parameter": lambda: extended(port, "SELECT cardinality($1::int4[])", (1007,), (int_array,)),
        "int4[] nested 2,000 deep": lambda: extended(
            port, "SELECT $1::int4[]", (1007,), (b"{" * 2000 + b"1" + b"}" * 2000,)
        ),
        "1 MB of string literals": lambda: extended(port, "SELECT " + "'a', " * 150_000 + "$1::int", (23,), (b"1",)),
        "operator run": lambda: extended(port, "SELECT 1 " + "+" * 40_000 + " 1", (), ()),
        "65,535 parameter types": lambda: hostile_many_types(port),
        "SSLRequest stream": lambda: hostile_ssl_stream(port),
        "sending without reading (5 MB)": lambda: hostile_send_without_reading(port),
    }


# --------------------------------------------------------------------------- phases


async def phase_connections(dsn: str, pid: int, count: int) -> dict[str, Any]:
    rss0, fds0 = proc_rss_kb(pid), proc_fds(pid)
    gate = asyncio.Semaphore(100)

    async def login() -> asyncpg.Connection:
        async with gate:
            conn = await asyncpg.connect(dsn, timeout=60)
            await conn.fetchval("SELECT 1")
            return conn

    start = time.perf_counter()
    conns = await asyncio.gather(*(login() for _ in range(count)), return_exceptions=True)
    logins = time.perf_counter() - start
    held = [c for c in conns if isinstance(c, asyncpg.Connection)]
    await asyncio.sleep(1)
    rss1, fds1 = proc_rss_kb(pid), proc_fds(pid)
    await asyncio.gather(*(c.close() for c in held), return_exceptions=True)
    deadline = time.monotonic() + 30
    while proc_fds(pid) > fds0 + 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return {
        "connections_held": len(held),
        "login_errors": count - len(held),
        "all_logins_s": round(logins, 2),
        "rss_before_mb": round(rss0 / 1024, 1),
        "rss_held_mb": round(rss1 / 1024, 1),
        "rss_per_connection_kb": round((rss1 - rss0) / max(1, len(held)), 1),
        "fds_before": fds0,
        "fds_held": fds1,
        "fds_after": proc_fds(pid),
    }


async def phase_server_kill(dsn: str, pg: EmbeddedPostgres, proxy: subprocess.Popen[bytes]) -> dict[str, Any]:
    down = await asyncio.to_thread(kill_and_restart, pg)
    restarted = time.monotonic()
    first_login = None
    for _ in range(600):
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            await conn.fetchval("SELECT 1")
            await conn.close()
            first_login = time.monotonic() - restarted
            break
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            await asyncio.sleep(0.05)
    return {
        "server_down_s": round(down, 2),
        "proxy_alive": proxy.poll() is None,
        "first_login_after_restart_s": round(first_login, 3) if first_login is not None else None,
    }


async def phase_slowloris(port: int, sockets: int) -> dict[str, Any]:
    packet = b.startup_message({"user": "postgres", "database": "postgres"})
    closed = 0

    async def trickle() -> None:
        nonlocal closed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for byte in packet:
                writer.write(bytes([byte]))
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1):
                        if await reader.read(65536) == b"":
                            closed += 1
                            return
        except ConnectionError:
            closed += 1
        finally:
            writer.transport.abort()

    start = time.perf_counter()
    await asyncio.gather(*(trickle() for _ in range(sockets)), return_exceptions=True)
    return {
        "slowloris_sockets": sockets,
        "slowloris_closed_by_proxy": closed,
        "slowloris_s": round(time.perf_counter() - start, 1),
    }


async def phase_hostile(port: int, repeats: int, probes: tuple[Probe, Probe]) -> dict[str, Any]:
    timings: dict[str, float] = {}
    worst: dict[str, tuple[float, float]] = {}
    errors: dict[str, str] = {}
    for name, action in hostile_actions(port).items():
        marks = [len(p.latencies) for p in probes]
        start = time.perf_counter()
        for _ in range(repeats):
            try:
                await action()
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.2)  # let the probes see the tail of it
        timings[name] = round((time.perf_counter() - start) / repeats * 1000, 1)
        proxied, direct = (max(p.latencies[m:], default=0.0) * 1000 for p, m in zip(probes, marks, strict=True))
        worst[name] = (round(proxied, 1), round(direct, 1))
    return {
        "hostile_ms_each": timings,
        "probe_worst_ms_through_proxy_vs_direct": worst,
        "hostile_client_errors": errors,
    }


async def phase_mixed(pg: EmbeddedPostgres, port: int, dsn: str, pid: int, duration: int) -> dict[str, Any]:
    pgbench = pg.tool("pgbench")
    proxied = f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable"
    await asyncio.to_thread(
        subprocess.run, [pgbench, "-i", "-q", "-s", "1", proxied], capture_output=True, check=True, timeout=300
    )
    rss0 = proc_rss_kb(pid)
    bench = await asyncio.create_subprocess_exec(
        pgbench,
        "-c",
        "8",
        "-j",
        "2",
        "-M",
        "extended",
        "-T",
        str(duration),
        proxied,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    churned = churn_errors = 0
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(dsn, timeout=30)
            await conn.fetchval("SELECT count(*) FROM pgbench_branches")
            await conn.close()
            churned += 1
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            churn_errors += 1
        await asyncio.sleep(0.05)
    out, _ = await bench.communicate()
    text = out.decode(errors="replace")
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    tps = re.search(r"tps = ([\d.]+)", text)
    return {
        "soak_s": duration,
        "transactions": int(processed.group(1)) if processed else None,
        "failed_transactions": int(failed.group(1)) if failed else (None if processed else text[-500:]),
        "tps": float(tps.group(1)) if tps else None,
        "churned_connections": churned,
        "churn_errors": churn_errors,
        "rss_start_mb": round(rss0 / 1024, 1),
        "rss_end_mb": round(proc_rss_kb(pid) / 1024, 1),
    }


def log_figures(log: Path) -> dict[str, Any]:
    counts: dict[str, int] = {}
    dropped = 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        name = event.get("event", "?")
        counts[name] = counts.get(name, 0) + 1
        if name == "log.dropped":
            dropped = max(dropped, int(event.get("dropped_total", 0)))
    keys = (
        "session.started",
        "session.ended",
        "session.anomaly",
        "session.timed_out",
        "session.refused",
        "upstream.unresponsive",
        "upstream.unreachable",
        "cancel.forwarded",
    )
    return {"log_lines": sum(counts.values()), "dropped_log_lines": dropped, **{k: counts.get(k, 0) for k in keys}}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="pgproxy-soak-"))
    log = workdir / "pgproxy.jsonl"
    pg = EmbeddedPostgres(settings={"max_connections": str(args.connections + 200)})
    pg.start()
    port = free_port()
    proxy = start_proxy(pg, port, log)
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    probe = Probe(dsn)
    # The same probe straight to the server: what the server's own load costs
    # (hostile inputs make PostgreSQL work too), as opposed to what the proxy adds.
    direct = Probe(pg.dsn())
    try:
        print(f"pgproxy pid {proxy.pid}, PostgreSQL {pg.major} on {pg.port}; log {log}", flush=True)
        figures["connections"] = await phase_connections(dsn, proxy.pid, args.connections)
        print("connections", figures["connections"], flush=True)
        probe.start()
        figures["server_kill"] = {**await phase_server_kill(dsn, pg, proxy), **await probe.stop()}
        print("server_kill", figures["server_kill"], flush=True)
        probe.start()
        figures["slowloris"] = {**await phase_slowloris(port, args.slowloris), **await probe.stop()}
        print("slowloris", figures["slowloris"], flush=True)
        probe.start()
        await asyncio.sleep(2)
        figures["baseline"] = await probe.stop()
        print("baseline", figures["baseline"], flush=True)
        probe.start()
        direct.start()
        hostile = await phase_hostile(port, args.repeats, (probe, direct))
        figures["hostile"] = {**hostile, **await probe.stop(), **await direct.stop("direct_probe")}
        print("hostile", figures["hostile"], flush=True)
        probe.start()
        direct.start()
        mixed = await phase_mixed(pg, port, dsn, proxy.pid, args.duration)
        figures["mixed"] = {**mixed, **await probe.stop(), **await direct.stop("direct_probe")}
        print("mixed", figures["mixed"], flush=True)
        figures["proxy_alive_at_end"] = proxy.poll() is None
        figures["fds_at_end"] = proc_fds(proxy.pid)
    finally:
        if proxy.poll() is None:
            proxy.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proxy.wait(30)
        if proxy.poll() is None:
            proxy.kill()
        pg.stop()
    figures["log"] = log_figures(log)
    print("log", figures["log"], flush=True)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=300, help="seconds of the mixed soak (default 300)")
    parser.add_argument("--connections", type=int, default=1000, help="concurrent logins held (default 1000)")
    parser.add_argument("--slowloris", type=int, default=200, help="trickling sockets (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each hostile input (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    ns = parser.parse_args()
    result = asyncio.run(main(ns))
    print(json.dumps(result, indent=2))
    if ns.json:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")
