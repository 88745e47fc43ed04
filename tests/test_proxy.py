"""The proxy against real servers and real clients: transparency, logs, failures."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import asyncpg
import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres, free_port
from pgproxy.demo.scenario import run_scenario
from pgproxy.protocol.build import startup_message
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from tests.harness import ProxyHarness, chain, recv_until_ready, wait_until_running

MESSAGE = TrackerOptions(detail=Detail.MESSAGE)


def _assert_transparent(near_client, near_server) -> None:  # type: ignore[no-untyped-def]
    near_client.wait_idle()
    near_server.wait_idle()
    a = sorted((bytes(r.client_sent), bytes(r.server_sent)) for r in near_client.recordings)
    b = sorted((bytes(r.client_sent), bytes(r.server_sent)) for r in near_server.recordings)
    assert len(a) == len(b) > 0
    for (a_c, a_s), (b_c, b_s) in zip(a, b, strict=True):
        assert a_c == b_c, "the server did not receive exactly what the client sent"
        assert a_s == b_s, "the client did not receive exactly what the server sent"


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False, **kw)  # type: ignore[call-overload]
    assert out.returncode == 0, out.stderr
    return out


def test_transparency_psql_psycopg_asyncpg(any_pg: EmbeddedPostgres) -> None:
    """Byte-for-byte: what passes through pgproxy is what would pass without it (SQLAlchemy ORM included)."""
    with chain(("127.0.0.1", any_pg.port), MESSAGE, tls_client_mode="passthrough") as (near_client, proxy, near_server):
        dsn = f"postgresql://postgres@127.0.0.1:{near_client.port}/postgres"
        script = """
            CREATE TEMP TABLE t (a int, b text);
            INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 500) g;
            SELECT count(*), sum(a) FROM t;
            COPY t TO STDOUT;
            \\copy t from stdin
1	one
2	two
\\.
            SELECT 1/0;
            LISTEN chan; NOTIFY chan, 'hello';
        """
        subprocess.run(
            [any_pg.tool("psql"), "-X", "-d", dsn],
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT %s::int + 1, %s::text", (41, "text"))
            with conn.cursor(binary=True) as cur:
                cur.execute("SELECT now(), 1.5::numeric, ARRAY[1,2,NULL]")
                cur.fetchall()
            with conn.pipeline():
                for i in range(20):
                    conn.execute("SELECT %s::int * 2", (i,))

        async def with_asyncpg() -> None:
            conn = await asyncpg.connect(dsn)
            await conn.fetch("SELECT * FROM users WHERE id = $1", 1)
            stmt = await conn.prepare("SELECT $1::int + $2::int")
            for i in range(10):
                await stmt.fetchval(i, i)
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.execute("SELECT * FROM no_such_table")
            await conn.close()

        asyncio.run(with_asyncpg())
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS orm_transparency")
            admin.execute("CREATE DATABASE orm_transparency")
        orm_dsn = "postgresql+psycopg://" + dsn.split("://", 1)[1].rsplit("/", 1)[0] + "/orm_transparency"
        assert run_scenario(orm_dsn)["username"] == "Demo"
        _assert_transparent(near_client, near_server)
        proxy.wait_idle()
        assert not proxy.events("session.anomaly")


@pytest.mark.slow
def test_transparency_pgbench_all_modes(pg: EmbeddedPostgres) -> None:
    subprocess.run(
        [pg.tool("pgbench"), "-i", "-q", "-s", "1", "-d", pg.dsn()], capture_output=True, check=True, timeout=120
    )
    with chain(("127.0.0.1", pg.port), TrackerOptions(detail=Detail.QUERY)) as (near_client, proxy, near_server):
        for mode in ("simple", "extended", "prepared"):
            _run(
                [
                    pg.tool("pgbench"),
                    "-n",
                    "-M",
                    mode,
                    "-c",
                    "2",
                    "-j",
                    "1",
                    "-t",
                    "50",
                    "-d",
                    f"postgresql://postgres@127.0.0.1:{near_client.port}/postgres?sslmode=disable",
                ]
            )
        _assert_transparent(near_client, near_server)
        proxy.wait_idle()
        queries = proxy.events("query")
        # 3 modes x 2 clients x 50 transactions x 7 statements (BEGIN..END of tpcb-like)
        assert len([q for q in queries if q["outcome"] == "ok"]) >= 3 * 2 * 50 * 7
        assert not [q for q in queries if q["outcome"] == "error"]


@pytest.mark.slow
def test_large_result_is_forwarded_intact(pg: EmbeddedPostgres) -> None:
    """A 100 MB result through the proxy: identical bytes, rows counted, a bounded log."""
    with chain(("127.0.0.1", pg.port), MESSAGE) as (near_client, proxy, near_server):
        dsn = f"postgresql://postgres@127.0.0.1:{near_client.port}/postgres?sslmode=disable"
        with psycopg.connect(dsn) as conn:
            cur = conn.execute("SELECT g, repeat('x', 1000) FROM generate_series(1, 100000) g")
            n = 0
            while cur.fetchmany(10000):
                n += 1
        _assert_transparent(near_client, near_server)
        assert sum(len(r.server_sent) for r in near_server.recordings) > 100_000_000
        proxy.wait_idle()
        (query,) = [q for q in proxy.events("query") if "repeat" in (q.get("db.query.text") or "")]
        assert query["rows"] == 100000
        rows_logged = proxy.events("message", type="DataRow")
        assert len(rows_logged) == MESSAGE.max_rows_per_result


def test_demo_row_is_logged_by_name_text_and_binary(pg: EmbeddedPostgres) -> None:
    """The Wireshark view: RowDescription names, DataRow values, SELECT 1, ReadyForQuery."""
    with ProxyHarness(("127.0.0.1", pg.port), MESSAGE) as proxy:
        sql = (
            "SELECT users.id AS users_id, users.username AS users_username, users.email AS users_email "
            "FROM users WHERE users.username = 'Demo'"
        )
        with psycopg.connect(proxy.dsn(sslmode="disable")) as conn:
            conn.execute(sql).fetchall()  # text results
            with conn.cursor(binary=True) as cur:
                cur.execute(sql)  # binary results
                cur.fetchall()

        async def binary_asyncpg() -> None:
            conn = await asyncpg.connect(proxy.dsn())
            await conn.fetch(sql)
            await conn.close()

        asyncio.run(binary_asyncpg())
        proxy.wait_idle()
        descriptions = proxy.events("message", type="RowDescription")
        names = [[c["name"] for c in d["columns"]] for d in descriptions]
        assert ["users_id", "users_username", "users_email"] in names
        rows = [e["row"] for e in proxy.events("message", type="DataRow")]
        expected = {"users_id": 1, "users_username": "Demo", "users_email": "demo@aa.io"}
        assert rows.count(expected) == 3, rows
        formats = {c["format"] for d in descriptions for c in d["columns"] if c["name"] == "users_id"}
        assert formats >= {"text"}
        completes = proxy.events("message", type="CommandComplete", command_tag="SELECT 1")
        assert len(completes) == 3
        assert proxy.events("message", type="ReadyForQuery", transaction_status="idle")


def test_unreachable_upstream_gets_a_proper_error(pg: EmbeddedPostgres) -> None:
    dead_port = free_port()
    with ProxyHarness(("127.0.0.1", dead_port), TrackerOptions()) as proxy:
        with pytest.raises(psycopg.OperationalError) as err:
            psycopg.connect(proxy.dsn(sslmode="disable"), connect_timeout=5)
        assert "pgproxy could not connect to the upstream server" in str(err.value)
        assert f"127.0.0.1:{dead_port}" in str(err.value)

        async def asyncpg_sees_08001() -> None:
            with pytest.raises(asyncpg.PostgresError) as exc:
                await asyncpg.connect(proxy.dsn())
            assert exc.value.sqlstate == "08001"

        asyncio.run(asyncpg_sees_08001())
        proxy.wait_idle()
        failures = proxy.events("upstream.unreachable")
        assert len(failures) == 2 and all("refused" in f["reason"].lower() for f in failures)
        startup = proxy.events("session.startup_failed")
        assert [s["sqlstate"] for s in startup] == ["08001", "08001"]
        assert not proxy.events("session.auth_failed")

    # ... and the same proxy process keeps serving others: a working upstream next to it
    with (
        ProxyHarness(("127.0.0.1", pg.port), TrackerOptions()) as proxy,
        psycopg.connect(proxy.dsn(sslmode="disable")) as conn,
    ):
        assert conn.execute("SELECT 7").fetchone() == (7,)


def test_connect_timeout_is_reported(pg: EmbeddedPostgres) -> None:
    # A listening socket that never accepts: the kernel's backlog fills, the SYN is not answered.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(blackhole.getsockname())
        except BlockingIOError:
            pass
        fillers.append(s)
    try:
        with ProxyHarness(blackhole.getsockname(), TrackerOptions(), connect_timeout=0.5) as proxy:
            with pytest.raises(psycopg.OperationalError) as err:
                psycopg.connect(proxy.dsn(sslmode="disable"), connect_timeout=30)
            # The proxy's 0.5 s timeout answered (its FATAL says so), not the client's own 30 s one.
            assert "pgproxy could not connect to the upstream server" in str(err.value)
            assert "timeout after 0.5s" in str(err.value)
            (unreachable,) = proxy.wait_for(lambda: proxy.events("upstream.unreachable"))
            assert "timeout" in unreachable["reason"]
    finally:
        for s in fillers:
            s.close()
        blackhole.close()


def test_cancel_through_the_proxy(pg: EmbeddedPostgres) -> None:
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions()) as proxy:

        async def cancelled() -> None:
            conn = await asyncpg.connect(proxy.dsn())
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute("SELECT pg_sleep(10)", timeout=0.5)
            assert await conn.fetchval("SELECT 1") == 1  # the session survives the cancel
            await conn.close()

        asyncio.run(cancelled())
        proxy.wait_idle()
        (cancel,) = proxy.wait_for(lambda: proxy.events("cancel.forwarded"))
        assert isinstance(cancel["backend_pid"], int)
        assert cancel["target_session"] is not None
        (query,) = [q for q in proxy.events("query") if "pg_sleep" in q["db.query.text"]]
        assert query["outcome"] == "error" and query["db.response.status_code"] == "57014"


def test_psql_ctrl_c_cancels(pg: EmbeddedPostgres) -> None:
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions()) as proxy:
        proc = subprocess.Popen(
            [pg.tool("psql"), "-X", "-d", proxy.dsn(sslmode="disable"), "-c", "SELECT pg_sleep(10)"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until_running(pg, "SELECT pg_sleep(10)")
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        _out, err = proc.communicate(timeout=30)
        assert "canceling statement due to user request" in err
        proxy.wait_for(lambda: proxy.events("cancel.forwarded"))


@pytest.mark.parametrize("detail", [Detail.CONNECTION, Detail.QUERY], ids=["connection", "query"])
def test_client_killed_mid_query_ends_its_backend(pg: EmbeddedPostgres, detail: Detail) -> None:
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(detail=detail)) as proxy:
        proc = subprocess.Popen(
            [
                pg.tool("psql"),
                "-X",
                "-d",
                proxy.dsn(sslmode="disable", application_name="victim"),
                "-c",
                "SELECT pg_sleep(30)",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def active() -> int:
            return int(
                pg.psql(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'victim' AND state = 'active'"
                ).strip()
            )

        proxy.wait_for(lambda: active() == 1)  # the statement runs (not merely the login)
        proc.kill()
        proc.wait()
        proxy.wait_for(lambda: active() == 0, timeout=15)
        proxy.wait_idle()
        (ended,) = proxy.events("session.ended", application_name="victim")
        assert ended["reason"] in ("client_closed", "client_error")
        (cancel,) = proxy.wait_for(lambda: proxy.events("cancel.forwarded"))
        assert cancel["reason"] == "client_vanished" and cancel["target_session"] == ended["session"]
        if detail >= Detail.QUERY:
            (query,) = proxy.events("query", application_name="victim")
            assert query["outcome"] == "interrupted"


def test_idle_client_vanishing_sends_no_cancel(pg: EmbeddedPostgres) -> None:
    for detail in (Detail.CONNECTION, Detail.QUERY):
        with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(detail=detail)) as proxy:
            sock = socket.create_connection((proxy.host, proxy.port))
            sock.sendall(startup_message({"user": "postgres", "database": "postgres"}))
            recv_until_ready(sock)
            sock.close()  # vanishes without Terminate, but nothing was running
            proxy.wait_idle()
            assert proxy.events("session.ended")
            assert not proxy.events("cancel.forwarded")


def test_upstream_dying_mid_session_disconnects_the_client(pg: EmbeddedPostgres) -> None:
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions()) as proxy:
        with psycopg.connect(proxy.dsn(sslmode="disable", application_name="doomed"), autocommit=True) as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            pg.psql(f"SELECT pg_terminate_backend({pid})")
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        proxy.wait_idle()
        (ended,) = proxy.events("session.ended", application_name="doomed")
        assert ended["reason"] in ("server_closed", "server_error")
        assert ended["level"] == "warning"
        assert ended["bytes_from_server"] > 0 and ended["bytes_from_client"] > 0


def test_sslmode_require_is_refused_and_prefer_is_decoded(pg: EmbeddedPostgres) -> None:
    with ProxyHarness(("127.0.0.1", pg.port), MESSAGE) as proxy:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn(sslmode="require"))
        with psycopg.connect(proxy.dsn(sslmode="prefer")) as conn:
            assert conn.execute("SELECT 'plain'").fetchone() == ("plain",)
        proxy.wait_idle()
        answers = proxy.events("message", type="SSLResponse")
        assert answers and all(a["answer"] == "N" for a in answers)
        assert proxy.events("message", type="DataRow")


SLOW_READER_SQL = "SELECT repeat('x', 2000) FROM generate_series(1, 100000)"


@pytest.mark.slow
def test_slow_reader_keeps_proxy_memory_bounded(pg: EmbeddedPostgres) -> None:
    """A client that stops reading a 200 MB result must not make the proxy buffer it."""
    code = f"""
import resource, socket, sys, time
sys.path.insert(0, {os.getcwd()!r})
from tests.harness import ProxyHarness
from pgproxy.tracker.options import TrackerOptions
import psycopg
with ProxyHarness(("127.0.0.1", {pg.port}), TrackerOptions()) as proxy:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    conn = psycopg.connect(proxy.dsn(sslmode="disable"))
    sock = socket.socket(fileno=conn.pgconn.socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    conn.pgconn.send_query(b"{SLOW_READER_SQL}")
    conn.pgconn.flush()
    print("sent", flush=True)
    sys.stdin.readline()  # the test says when the server is stalled writing to the proxy
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sessions = list(proxy.server.sessions)
    print((peak - before) // 1024, sum(s.tracker.bytes_from_server for s in sessions if s.tracker))
    sock.detach()
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "sent", proc.stderr.read() if proc.stderr else ""
        # Not reading: the backpressure must reach the server, which then waits to write (ClientWrite).
        wait_until_running(pg, SLOW_READER_SQL.replace("'", "''"), wait_event="ClientWrite")
        out, err = proc.communicate("go\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    grew_mb, proxied = map(int, out.strip().splitlines()[-1].split())
    print(f"proxy RSS growth with a stalled reader of a 200 MB result: {grew_mb} MB; {proxied} bytes relayed")
    assert grew_mb < 40, f"proxy process grew by {grew_mb} MB while the client did not read a 200 MB result"
    assert proxied < 40 * 1024 * 1024, f"the proxy took {proxied} bytes of a result the client did not read"
