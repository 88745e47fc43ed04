"""The process lifecycle, with pgproxy as a real subprocess: signals, reload, probes, sockets."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres, free_port
from tests.harness import PGPROXY, select_events, wait_until


class ProxyProcess:
    """``pgproxy`` run as users run it, logging JSON lines to a file we can read while it runs."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.stdout = tmp / f"stdout-{self.port}.jsonl"
        self.stderr = tmp / f"stderr-{self.port}.txt"
        base = ["--log-format", "json"]
        if not any(a.startswith("--listen") for a in args):
            base += ["--listen", f"127.0.0.1:{self.port}"]
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                [*PGPROXY, *base, *args], stdout=out, stderr=err, env={**os.environ, **(env or {})}
            )
        self.wait_for(lambda: self.events("proxy.started"), what="proxy.started")

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        return select_events(self.stdout.read_text(), event, match, still_writing=True)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
        return wait_until(
            predicate,
            timeout,
            lambda: f"no {what} within {timeout}s: {self.tail()}",
            lambda: (
                None
                if self.proc.poll() is None
                else f"pgproxy exited ({self.proc.returncode}) waiting for {what}: {self.tail()}"
            ),
        )

    def tail(self) -> str:
        return self.stderr.read_text()[-2000:] + self.stdout.read_text()[-3000:]

    def dsn(self, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"sslmode": "disable", **params}.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?{query}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(*args: str, **kwargs: Any) -> ProxyProcess:
        process = ProxyProcess(tmp_path, *args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def http(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --------------------------------------------------------------------------- SIGTERM


@pytest.mark.slow
@pytest.mark.parametrize("detail", ["connection", "query"])
def test_sigterm_lets_transactions_and_statements_finish(
    pg: EmbeddedPostgres, spawn: Callable[..., ProxyProcess], detail: str
) -> None:
    table = f"lifecycle_{detail}"
    with psycopg.connect(pg.dsn(), autocommit=True) as direct:
        direct.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int)")
    proxy = spawn("--upstream", f"127.0.0.1:{pg.port}", "--log-detail", detail, "--max-sigterm-delay", "60")
    idle = psycopg.connect(proxy.dsn(application_name="idle"), autocommit=True)
    idle.execute("SELECT 1")
    in_tx = psycopg.connect(proxy.dsn(application_name="in_tx"))
    in_tx.execute(f"INSERT INTO {table} VALUES (1)")  # psycopg opened a transaction: idle in transaction now
    running = psycopg.connect(proxy.dsn(application_name="running"), autocommit=True)
    result: dict[str, Any] = {}

    def run_statement() -> None:
        try:
            result["row"] = running.execute("SELECT 42 FROM pg_sleep(2)").fetchone()
        except psycopg.Error as exc:
            result["error"] = exc

    worker = threading.Thread(target=run_statement)
    worker.start()
    proxy.wait_for(lambda: _backend_running(pg, "running"), what="the statement to run")
    proxy.signal(signal.SIGTERM)
    proxy.wait_for(lambda: proxy.events("session.ended", application_name="idle"), what="the idle session to end")
    with pytest.raises(psycopg.OperationalError) as idle_error:
        idle.execute("SELECT 1")
    assert "terminating connection due to administrator command" in str(idle_error.value)
    # The transaction is still open and commits.
    in_tx.execute(f"INSERT INTO {table} VALUES (2)")
    in_tx.commit()
    worker.join(60)
    assert result == {"row": (42,)}
    assert proxy.wait() == 0
    with psycopg.connect(pg.dsn()) as direct:
        assert direct.execute(f"SELECT array_agg(id ORDER BY id) FROM {table}").fetchone() == ([1, 2],)
    ended = {e["application_name"]: e for e in proxy.events("session.ended")}
    assert {e["reason"] for e in ended.values()} == {"proxy_shutdown"}
    names = [e["event"] for e in proxy.events()]
    assert names[-1] == "proxy.stopped" and "proxy.stopping" in names and "proxy.deadline" not in names
    for conn in (idle, in_tx, running):
        conn.close()


def _backend_running(pg: EmbeddedPostgres, application: str) -> bool:
    with psycopg.connect(pg.dsn(), autocommit=True) as direct:
        row = direct.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'", (application,)
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.slow
def test_busy_session_gets_the_error_at_the_deadline_and_a_second_signal_ends_at_once(
    pg: EmbeddedPostgres, spawn: Callable[..., ProxyProcess]
) -> None:
    proxy = spawn("--upstream", f"127.0.0.1:{pg.port}", "--max-sigterm-delay", "0.5")
    stuck = psycopg.connect(proxy.dsn(application_name="stuck"))
    stuck.execute("SELECT 1")  # idle in transaction, never committed
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0
    assert proxy.events("proxy.deadline")
    with pytest.raises(psycopg.OperationalError) as err:
        stuck.execute("SELECT 1")
    assert "administrator command" in str(err.value)
    stuck.close()

    second = spawn("--upstream", f"127.0.0.1:{pg.port}", "--max-sigterm-delay", "600")
    sleeper = psycopg.connect(second.dsn(application_name="sleeper"), autocommit=True)
    sleeper.pgconn.send_query(b"SELECT pg_sleep(600)")
    second.wait_for(lambda: _backend_running(pg, "sleeper"), what="the statement to run")
    second.signal(signal.SIGTERM)
    second.wait_for(lambda: second.events("proxy.stopping"), what="proxy.stopping")
    second.signal(signal.SIGINT)
    assert second.wait(30) == 0
    (stopped,) = second.events("proxy.stopped")
    assert stopped["forced"] is True
    sleeper.close()


def test_exit_code_is_128_plus_signal_when_asked(pg: EmbeddedPostgres, spawn: Callable[..., ProxyProcess]) -> None:
    proxy = spawn("--upstream", f"127.0.0.1:{pg.port}", env={"PGPROXY_PROXY_EXIT_ZERO_ON_SIGTERM": "false"})
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 128 + signal.SIGTERM


# --------------------------------------------------------------------------- SIGHUP


@pytest.mark.slow
def test_sighup_reloads_detail_and_reopens_a_renamed_log_file(
    pg: EmbeddedPostgres, spawn: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    config = tmp_path / "pgproxy.toml"
    config.write_text('[log]\ndetail = "connection"\n')
    log_file = tmp_path / "pgproxy.log"
    proxy = spawn("--upstream", f"127.0.0.1:{pg.port}", "--config", str(config), "--log-file", str(log_file))
    kept = psycopg.connect(proxy.dsn(application_name="kept"), autocommit=True)
    kept.execute("SELECT 'before'")

    def in_file(path: Path) -> list[dict[str, Any]]:
        """The complete JSON lines in ``path`` (the file has its own writer thread, apart from stdout's)."""
        return [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]

    # Rename once the file itself holds the session's start: its writer lags stdout's.
    proxy.wait_for(
        lambda: any(e.get("application_name") == "kept" for e in in_file(log_file) if e["event"] == "session.ready"),
        what="session.ready in the log file",
    )
    assert not proxy.events("query")
    log_file.rename(tmp_path / "pgproxy.log.1")  # what logrotate does
    config.write_text('[log]\ndetail = "message"\n')
    proxy.signal(signal.SIGHUP)
    (reloaded,) = proxy.wait_for(lambda: proxy.events("config.reloaded"), what="config.reloaded")
    assert reloaded["applied"] == ["log.detail"] and reloaded["log_file_reopened"] is True
    with psycopg.connect(proxy.dsn(application_name="after"), autocommit=True) as after:
        after.execute("SELECT 'after'")
    proxy.wait_for(lambda: proxy.events("query", application_name="after"), what="a query event")
    assert proxy.events("message", type="DataRow")
    # The connection opened before the reload was not dropped, and logs by the new detail too.
    assert kept.execute("SELECT 'still connected'").fetchone() == ("still connected",)
    proxy.wait_for(lambda: proxy.events("query", application_name="kept"), what="the kept session's query event")
    assert proxy.events("message", type="DataRow", row={"?column?": "still connected"})
    # An invalid file keeps the old settings and says why.
    config.write_text('[log]\ndetail = "verbose"\n')
    proxy.signal(signal.SIGHUP)
    (failed,) = proxy.wait_for(lambda: proxy.events("config.reload_failed"), what="config.reload_failed")
    assert "log.detail" in failed["reason"] and "verbose" in failed["reason"]
    kept.close()
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0
    rotated = [e["event"] for e in in_file(tmp_path / "pgproxy.log.1")]
    fresh = [e["event"] for e in in_file(log_file)]
    # What was written before the rename stays in the renamed file. Lines queued
    # before the signal may land in either file (the writer thread may not have
    # written them yet), so no order across the files is asserted for them;
    # everything logged from the reload on is in the new file, each line once.
    assert rotated[:1] == ["proxy.started"] and "session.ready" in rotated
    assert "config.reloaded" not in rotated and "query" not in rotated and "message" not in rotated
    assert fresh.count("config.reloaded") == 1 and fresh.count("config.reload_failed") == 1
    assert fresh.count("query") == 2 and "message" in fresh and fresh[-1] == "proxy.stopped"
    assert "proxy.started" not in fresh and fresh.count("proxy.stopped") == 1


# --------------------------------------------------------------------------- environment


def test_kubernetes_service_links_are_ignored_and_typos_are_not(
    pg: EmbeddedPostgres, spawn: Callable[..., ProxyProcess]
) -> None:
    links = {
        "PGPROXY_PORT": "tcp://10.96.0.12:6432",
        "PGPROXY_PORT_6432_TCP": "tcp://10.96.0.12:6432",
        "PGPROXY_PORT_6432_TCP_ADDR": "10.96.0.12",
        "PGPROXY_PORT_6432_TCP_PORT": "6432",
        "PGPROXY_PORT_6432_TCP_PROTO": "tcp",
        "PGPROXY_SERVICE_HOST": "10.96.0.12",
        "PGPROXY_SERVICE_PORT": "6432",
        "PGPROXY_SERVICE_PORT_ADMIN": "9090",
    }
    proxy = spawn("--upstream", f"127.0.0.1:{pg.port}", env=links)
    (started,) = proxy.events("proxy.started")
    assert started["ignored_environment"] == sorted(links)
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0
    out = subprocess.run(
        PGPROXY,
        check=False,
        env={**os.environ, **links, "PGPROXY_LOG_DETIAL": "message"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "PGPROXY_LOG_DETIAL" in out.stderr and "did you mean PGPROXY_LOG_DETAIL?" in out.stderr


# --------------------------------------------------------------------------- admin endpoint and listeners


@pytest.mark.slow
def test_admin_endpoint_probes_metrics_and_quitquitquit(spawn: Callable[..., ProxyProcess], tmp_path: Path) -> None:
    upstream = EmbeddedPostgres().start()
    port = upstream.port
    admin = free_port()
    try:
        proxy = spawn("--upstream", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}")
        assert http(admin, "/startup") == (200, "started\n")
        assert http(admin, "/livez") == (200, "ok\n")
        assert http(admin, "/readyz") == (200, "ready\n")
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("SELECT 1")
        proxy.wait_for(lambda: proxy.events("session.ended"), what="session.ended")
        status, text = http(admin, "/metrics")
        assert status == 200
        assert "pgproxy_sessions_total 1.0" in text
        assert 'pgproxy_statements_total{db_operation_name="SELECT",outcome="ok"} 1.0' in text
        assert (
            'db_client_operation_duration_seconds_count{db_operation_name="SELECT",db_system_name="postgresql"} 1.0'
            in text
        )
        assert "pgproxy_build_info{" in text
        upstream.stop()
        status, text = proxy.wait_for(lambda: (r := http(admin, "/readyz"))[0] == 503 and r, what="readyz 503")
        assert "upstream unreachable" in text
        upstream = EmbeddedPostgres(port=port).start()
        proxy.wait_for(lambda: http(admin, "/readyz")[0] == 200, what="readyz 200 again")
        changes = proxy.wait_for(lambda: len(e := proxy.events("readiness.changed")) == 3 and e, what="3 changes")
        assert [e["ready"] for e in changes] == [True, False, True]
        assert http(admin, "/quitquitquit")[0] == 405
        assert http(admin, "/quitquitquit", method="POST") == (200, "stopping\n")
        assert proxy.wait() == 0
        assert proxy.events("proxy.stopped", reason="quitquitquit")
    finally:
        upstream.stop()


def test_several_listeners_and_a_unix_socket(
    pg: EmbeddedPostgres, spawn: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    sockdir = tmp_path / "run"
    sockdir.mkdir()
    tcp1, tcp2 = free_port(), free_port()
    socket_path = sockdir / f".s.PGSQL.{tcp1}"
    proxy = spawn(
        "--upstream",
        f"127.0.0.1:{pg.port}",
        "--listen",
        f"127.0.0.1:{tcp1}",
        "--listen",
        f"127.0.0.1:{tcp2}",
        "--listen",
        str(socket_path),
        port=tcp1,
    )
    (started,) = proxy.events("proxy.started")
    assert started["listen"] == [f"127.0.0.1:{tcp1}", f"127.0.0.1:{tcp2}", str(socket_path)]
    # libpq's own convention: host is the directory, the port names the socket file.
    with psycopg.connect(host=str(sockdir), port=tcp1, user="postgres", dbname="postgres") as conn:
        assert conn.execute("SELECT 'via unix socket'").fetchone() == ("via unix socket",)
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{tcp2}/postgres?sslmode=disable") as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0
    assert not socket_path.exists()
    ready = proxy.events("session.ready")
    assert len(ready) == 2


def test_admin_routes_answer_plain_http() -> None:
    """Unknown paths, wrong methods, a garbled request and an extra JSON route, in process."""
    import asyncio
    import io

    from pgproxy.proxy.admin import AdminServer
    from pgproxy.proxy.server import ProxyServer, ProxySettings
    from pgproxy.sink import LogSink
    from pgproxy.sink.metrics import MetricsSink
    from pgproxy.tracker.options import TrackerOptions

    async def exchange(port: int, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        reply = await reader.read()
        writer.close()
        return reply

    async def main() -> list[bytes]:
        sink = LogSink(stream=io.StringIO(), fmt="json")
        proxy = ProxyServer(ProxySettings(), TrackerOptions(), sink)
        admin = AdminServer(proxy, MetricsSink(), sink, 1.0, stopping=lambda: False, request_stop=lambda _: None)
        admin.add_json_route("/stats", lambda: {"statements": []})
        await admin.start("127.0.0.1", 0)
        port = int(admin.address.rsplit(":", 1)[1])
        try:
            return [
                await exchange(port, b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"),
                await exchange(port, b"GET /nope HTTP/1.1\r\n\r\n"),
                await exchange(port, b"DELETE /livez HTTP/1.1\r\n\r\n"),
                await exchange(port, b"\xff\xfe\r\n\r\n"),
                await exchange(port, b"GET /startup HTTP/1.1\r\n\r\n"),
            ]
        finally:
            await admin.close()
            sink.close()

    stats, missing, method, garbled, startup = asyncio.run(main())
    assert stats.startswith(b"HTTP/1.1 200 OK\r\n") and stats.endswith(b'\r\n\r\n{"statements":[]}\n')
    assert b"Content-Type: application/json" in stats
    assert missing.startswith(b"HTTP/1.1 404 ")
    assert method.startswith(b"HTTP/1.1 405 ")
    assert garbled.startswith(b"HTTP/1.1 400 ")
    assert startup.startswith(b"HTTP/1.1 503 ")  # the proxy never started listening


def test_an_address_in_use_stops_the_start_with_one_clear_line(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flags in (["--listen", f"127.0.0.1:{port}"], ["--admin-listen", f"127.0.0.1:{port}"]):
            out = subprocess.run(
                [*PGPROXY, "--upstream", f"127.0.0.1:{pg.port}", "--log-format", "json", *flags],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert out.returncode == 1
            assert (
                f"cannot listen on {'the admin address ' if 'admin' in flags[0] else ''}127.0.0.1:{port}" in out.stderr
            )
            assert json.loads(out.stdout.splitlines()[-1])["event"] == "proxy.failed"


@pytest.mark.slow
def test_readyz_at_the_limit_and_accepting_during_min_sigterm_delay(
    pg: EmbeddedPostgres, spawn: Callable[..., ProxyProcess]
) -> None:
    admin = free_port()
    proxy = spawn(
        "--upstream",
        f"127.0.0.1:{pg.port}",
        "--admin-listen",
        f"127.0.0.1:{admin}",
        "--min-sigterm-delay",
        "5",
        env={"PGPROXY_PROXY_MAX_CONNECTIONS": "1"},
    )
    first = psycopg.connect(proxy.dsn(application_name="first"), autocommit=True)
    assert http(admin, "/readyz") == (503, "at the connection limit\n")
    first.close()
    proxy.wait_for(lambda: http(admin, "/readyz")[0] == 200, what="readyz 200 below the limit")
    proxy.signal(signal.SIGTERM)
    proxy.wait_for(lambda: proxy.events("proxy.stopping"), what="proxy.stopping")
    assert http(admin, "/readyz") == (503, "stopping\n")
    # Still accepting for min_sigterm_delay: a load balancer may not have noticed yet.
    late = psycopg.connect(proxy.dsn(application_name="late"), autocommit=True)
    assert late.execute("SELECT 'served while stopping'").fetchone() == ("served while stopping",)
    assert proxy.wait() == 0
    with pytest.raises(psycopg.OperationalError, match="administrator command"):
        late.execute("SELECT 1")
    late.close()
    (ended,) = proxy.events("session.ended", application_name="late")
    assert ended["reason"] == "proxy_shutdown"


def test_quitquitquit_is_honoured_from_loopback_only() -> None:
    from pgproxy.proxy.admin import _from_loopback

    assert _from_loopback(("127.0.0.1", 5000)) and _from_loopback(("127.8.9.1", 1))
    assert _from_loopback(("::1", 5000, 0, 0)) and _from_loopback(("::ffff:127.0.0.1", 5000, 0, 0))
    assert not _from_loopback(("10.1.2.3", 5000)) and not _from_loopback(("fe80::1%eth0", 5000, 0, 2))
    assert not _from_loopback("/var/run/x.sock") and not _from_loopback(None)


# --------------------------------------------------------------------------- timed work


def _loop_thread_wakes(pid: int) -> int:
    """How many times the process's main thread (the event loop) slept and was woken: its voluntary switches."""
    for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches for {pid}")


def test_an_idle_proxy_does_not_wake(pg: EmbeddedPostgres, spawn: Callable[..., ProxyProcess]) -> None:
    """Nothing to do, no wake-ups: a sidecar waits most of the day (a one-second timer woke it before).

    The admin endpoint is on and a statement has run, so the statistics have
    something to report at their interval (60 s: not in this window). The
    loop's thread must sleep through a whole two-second window, asked for by
    its count of wakes; a one-second timer makes one in every such window.
    """
    admin = free_port()
    proxy = spawn("--upstream", f"127.0.0.1:{pg.port}", "--admin-listen", f"127.0.0.1:{admin}")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    proxy.wait_for(lambda: proxy.events("session.ended"), what="session.ended")
    assert http(admin, "/metrics")[0] == 200
    pid = proxy.proc.pid
    windows = []
    for _ in range(8):  # the first windows may still see the session's and the scrape's last callbacks
        before = _loop_thread_wakes(pid)
        threading.Event().wait(2.0)  # an absence of events has to be watched for a while
        windows.append(_loop_thread_wakes(pid) - before)
        if windows[-1] == 0:
            break
    assert windows[-1] == 0, f"the idle proxy's event loop woke in every 2 s window: {windows}"
    assert proxy.proc.poll() is None


def test_log_drops_reach_the_metrics_when_they_happen(
    pg: EmbeddedPostgres, spawn: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """A log destination nobody reads loses lines; ``/metrics`` counts them without any timer.

    ``stats.interval`` 0 leaves the proxy no timed work at all, so the count
    can reach the metrics only through the writer's notice of its drops.
    """
    fifo = tmp_path / "stalled.jsonl"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the proxy's open to append succeeds; nothing reads
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe (one page): not 64 KiB, nor 1 MiB on 64 KiB pages
    admin = free_port()
    try:
        proxy = spawn(
            "--upstream",
            f"127.0.0.1:{pg.port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--log-file",
            str(fifo),
            env={"PGPROXY_LOG_MAX_QUEUED_LINES": "100", "PGPROXY_STATS_INTERVAL": "0"},
        )
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            for i in range(3000):  # ~1.5 MB of query lines: the pipe holds a page, the queue 100 lines
                assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)

        def dropped_on_metrics() -> float:
            status, text = http(admin, "/metrics")
            assert status == 200
            found = re.search(r"^pgproxy_log_lines_dropped_total (\S+)$", text, re.MULTILINE)
            return float(found.group(1)) if found else 0.0

        # At most ~250 of the 3,000 query lines fit (the queue, the pipe, the batch the writer holds):
        # the first report comes at the first drop, the later ones at most a second apart.
        counted = proxy.wait_for(lambda: (n := dropped_on_metrics()) > 2500 and n, what="2,500 dropped on /metrics")
        os.set_blocking(reader, True)
        received: list[bytes] = []
        drain = threading.Thread(
            target=lambda: received.extend(iter(lambda: os.read(reader, 1 << 16), b"")), daemon=True
        )
        drain.start()
        proxy.signal(signal.SIGTERM)
        assert proxy.wait() == 0
        drain.join(30)
        reports = [line for line in b"".join(received).splitlines() if b'"log.dropped"' in line]
        assert reports, "the stalled destination never said it dropped lines"
        # The metric sums every destination; stdout (a file) keeps up, so the FIFO's drops are all of them.
        assert json.loads(reports[-1])["dropped_total"] >= counted  # the metric counted lines that were lost
        stopped = proxy.events("proxy.stopped")
        assert stopped and stopped[0]["reason"] == "SIGTERM"
    finally:
        os.close(reader)
