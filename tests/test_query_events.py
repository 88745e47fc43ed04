"""Query events match what real clients executed: SQL, parameters, rows, errors, pipelines."""

from __future__ import annotations

import asyncio
import select
import socket
import subprocess
import time
from typing import Any

import asyncpg
import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.demo.scenario import run_scenario
from pgproxy.protocol.build import query as query_message
from pgproxy.protocol.build import ready_for_query, startup_message
from pgproxy.proxy.session import ClientSession, UpstreamSide
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.session import SessionTracker
from tests.harness import ProxyHarness


@pytest.fixture
def proxy(pg: EmbeddedPostgres):  # type: ignore[no-untyped-def]
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions()) as harness:
        yield harness


def test_asyncpg_statements_parameters_and_errors(proxy: ProxyHarness) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(proxy.dsn(application_name="asyncpg-app"))
        await conn.execute("CREATE TEMP TABLE items (id int, name text, price numeric)")
        await conn.executemany("INSERT INTO items VALUES ($1, $2, $3)", [(1, "one", 1.5), (2, "two", 2.25)])
        rows = await conn.fetch("SELECT id, name FROM items WHERE price > $1 ORDER BY id", 1.0)
        assert len(rows) == 2
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("CREATE UNIQUE INDEX ON items (id); INSERT INTO items VALUES (1, 'dup', 0)")
        await conn.close()

    asyncio.run(run())
    proxy.wait_idle()
    events = proxy.events("query", application_name="asyncpg-app")
    by_sql: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for e in events:
        by_sql.setdefault(e["db.query.text"], []).append(e)
    inserts = by_sql["INSERT INTO items VALUES ($1, $2, $3)"]
    assert [e["parameters"] for e in inserts] == [[1, "one", "1.5"], [2, "two", "2.25"]]
    assert all(e["rows"] == 1 and e["outcome"] == "ok" for e in inserts)
    (select,) = by_sql["SELECT id, name FROM items WHERE price > $1 ORDER BY id"]
    # asyncpg sends the float 1.0 as a binary numeric with scale 0, which reads "1"
    assert select["parameters"] == ["1"] and select["rows"] == 2 and select["db.response.returned_rows"] == 2
    failed = [e for e in events if e["outcome"] == "error"]
    assert [e["db.response.status_code"] for e in failed] == ["23505"]
    assert failed[0]["level"] == "error" and "duplicate key" in failed[0]["error"]["message"]


def test_psycopg_pipeline_with_an_error_reports_skipped(proxy: ProxyHarness) -> None:
    """Statements pipelined behind an error, before the Sync, are reported skipped.

    psycopg's `conn.pipeline()` reads answers while the block still queues
    statements, and raises the error at whichever `execute` comes after it
    arrived, so how many statements it sends behind the error depends on
    timing. Its libpq connection is driven directly here: all sixteen go out
    before one Sync, and the server skips exactly the five behind the error.
    """
    int4 = 23
    with psycopg.connect(proxy.dsn(sslmode="disable", application_name="pipeline"), autocommit=True) as conn:
        pgconn = conn.pgconn  # non-blocking, as psycopg keeps it: the proxy runs in this process
        pgconn.enter_pipeline_mode()
        statements = [(b"SELECT $1::int AS i", i) for i in range(10)]
        statements += [(b"SELECT 1 / $1::int", 0)]
        statements += [(b"SELECT $1::int + 100", i) for i in range(5)]
        for sql, value in statements:
            pgconn.send_query_params(sql, [str(value).encode()], param_types=[int4])
        pgconn.pipeline_sync()
        while pgconn.flush():
            select.select([], [pgconn.socket], [], 10)
        statuses = []
        while not statuses or statuses[-1] != psycopg.pq.ExecStatus.PIPELINE_SYNC:
            while pgconn.is_busy():  # libpq would block holding the GIL the proxy's thread needs
                select.select([pgconn.socket], [], [], 10)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is not None:  # None ends one statement's results
                statuses.append(result.status)
        pgconn.exit_pipeline_mode()
        ok, error, aborted = (
            psycopg.pq.ExecStatus.TUPLES_OK,
            psycopg.pq.ExecStatus.FATAL_ERROR,
            psycopg.pq.ExecStatus.PIPELINE_ABORTED,
        )
        assert statuses == [ok] * 10 + [error] + [aborted] * 5 + [psycopg.pq.ExecStatus.PIPELINE_SYNC]
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)
    proxy.wait_idle()
    events = proxy.events("query", application_name="pipeline")
    pipelined = [e for e in events if e.get("protocol") == "extended"]
    assert [e["outcome"] for e in pipelined] == ["ok"] * 10 + ["error"] + ["skipped"] * 5, [
        (e["db.query.text"], e["outcome"], e.get("parameters")) for e in events
    ]
    assert [e["parameters"] for e in pipelined[:3]] == [[0], [1], [2]]
    assert pipelined[10]["db.response.status_code"] == "22012"
    assert [e["db.query.text"] for e in pipelined[11:]] == ["SELECT $1::int + 100"] * 5


def test_pgbench_prepared_statement_counts(pg: EmbeddedPostgres, proxy: ProxyHarness) -> None:
    subprocess.run([pg.tool("pgbench"), "-i", "-q", "-s", "1", "-d", pg.dsn()], capture_output=True, check=True)
    out = subprocess.run(
        [
            pg.tool("pgbench"),
            "-n",
            "-S",
            "-M",
            "prepared",
            "-c",
            "2",
            "-j",
            "1",
            "-t",
            "200",
            "-d",
            proxy.dsn(sslmode="disable", application_name="pgbench-prepared"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "number of transactions actually processed: 400" in out.stdout
    proxy.wait_idle()
    events = [e for e in proxy.events("query") if e["db.query.text"].startswith("SELECT abalance")]
    assert len(events) == 400
    assert len({e["statement"] for e in events}) == 1  # the named statement (P0_1, or P_0 in 18)
    assert all(e["statement"] and e["rows"] == 1 and len(e["parameters"]) == 1 for e in events)
    # pgbench sends untyped text parameters (no Describe): shown as the text sent
    assert all(str(e["parameters"][0]).isdigit() for e in events)


def test_sqlalchemy_orm_scenario_is_logged_and_redacted(pg: EmbeddedPostgres, proxy: ProxyHarness) -> None:
    pg.psql("DROP TABLE IF EXISTS users_orm_check")  # the scenario creates its own users table
    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        admin.execute("CREATE DATABASE orm_demo")
    try:
        user = run_scenario(f"postgresql+psycopg://postgres@{proxy.host}:{proxy.port}/orm_demo")
        assert user == {"id": 1, "username": "Demo", "email": "demo@aa.io"}
        proxy.wait_idle()
        events = proxy.events("query", **{"db.namespace": "orm_demo"})
        (insert,) = [e for e in events if e["db.operation.name"] == "INSERT"]
        assert insert["parameters"][:2] == ["Demo", "demo@aa.io"]
        assert insert["parameters"][2] == "[redacted]"
        (select,) = [e for e in events if "users_username" in (e["db.query.text"] or "")]
        assert select["rows"] == 1 and select["parameters"] == ["Demo"]
        assert "pbkdf2" not in proxy.text()
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as admin:
            admin.execute("DROP DATABASE orm_demo WITH (FORCE)")


def test_asyncpg_close_and_pool_end_as_client_terminated_without_warnings(proxy: ProxyHarness) -> None:
    async def run() -> None:
        for _ in range(6):
            conn = await asyncpg.connect(proxy.dsn(application_name="asyncpg-close"))
            assert await conn.fetchval("select 1") == 1
            await conn.close()
        pool = await asyncpg.create_pool(proxy.dsn(application_name="asyncpg-pool"), min_size=4, max_size=4)
        await asyncio.gather(*(pool.fetchval("select $1::int", i) for i in range(20)))
        await pool.close()

    asyncio.run(run())
    proxy.wait_idle()
    ended = [e for e in proxy.events("session.ended") if e.get("application_name", "").startswith("asyncpg-")]
    assert len(ended) == 10
    assert {(e["reason"], e["level"]) for e in ended} == {("client_terminated", "info")}
    assert [e for e in proxy.events() if e["level"] in ("warning", "error")] == []


class _StampedWrites:
    """A transport whose writes are timestamped (everything else is the real transport's)."""

    def __init__(self, inner: Any, log: list[tuple[float, bytes]]) -> None:
        self._inner = inner
        self._log = log

    def write(self, data: bytes) -> None:
        self._log.append((time.monotonic(), bytes(data)))
        self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_timestamps_are_taken_when_bytes_arrive_before_forwarding(
    pg: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A duration from these stamps can never be shorter than the server's own."""
    forwarded: list[tuple[float, bytes]] = []
    observed: list[tuple[float | None, bytes]] = []

    def client_made(self: ClientSession, transport: Any) -> None:
        original_client_made(self, transport)
        self.client = _StampedWrites(self.client, forwarded)  # type: ignore[assignment]

    def upstream_made(self: UpstreamSide, transport: Any) -> None:
        original_upstream_made(self, transport)
        self.transport = _StampedWrites(self.transport, forwarded)  # type: ignore[assignment]

    def frontend(self: SessionTracker, data: bytes, now: float | None = None) -> list[Any]:
        observed.append((now, bytes(data)))
        return original_frontend(self, data, now)

    def backend(self: SessionTracker, data: bytes, now: float | None = None) -> list[Any]:
        observed.append((now, bytes(data)))
        return original_backend(self, data, now)

    original_client_made, original_upstream_made = ClientSession.connection_made, UpstreamSide.connection_made
    original_frontend, original_backend = SessionTracker.frontend, SessionTracker.backend
    monkeypatch.setattr(ClientSession, "connection_made", client_made)
    monkeypatch.setattr(UpstreamSide, "connection_made", upstream_made)
    monkeypatch.setattr(SessionTracker, "frontend", frontend)
    monkeypatch.setattr(SessionTracker, "backend", backend)
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions()) as proxy:
        with psycopg.connect(proxy.dsn(sslmode="disable"), autocommit=True) as conn:
            conn.execute("create temp table stamped (i int)")
            conn.execute("insert into stamped select generate_series(1, 100)")
            assert len(conn.execute("select * from stamped").fetchall()) == 100
        proxy.wait_idle()
    write_times = {data: at for at, data in forwarded}
    relayed = [(now, data) for now, data in observed if data in write_times]
    assert len(relayed) >= 8
    for now, data in relayed:
        assert now is not None and now <= write_times[data], data[:20]


def test_real_clients_statements_as_the_server_ran_them(pg: EmbeddedPostgres, proxy: ProxyHarness) -> None:
    """Bind failures are one event, fetchrow is ok, multi-statement Queries are batches (issue 7 items 2-5)."""

    async def with_asyncpg() -> None:
        conn = await asyncpg.connect(proxy.dsn(application_name="truth-asyncpg"))
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.fetchval("select 1/$1::int", 0)
        assert await conn.fetchrow("select g from generate_series(1, 3) g") == (1,)
        await conn.close()

    asyncio.run(with_asyncpg())
    with (
        psycopg.connect(proxy.dsn(sslmode="disable", application_name="truth-psycopg"), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InvalidTextRepresentation),
    ):
        conn.execute("select %s::int", ("abc",))
    psql = [pg.tool("psql"), "-X", "-q", "-d", proxy.dsn(sslmode="disable", application_name="truth-psql")]
    for script in (
        "select pg_sleep(0.02); select pg_sleep(0.03); select 1",
        "create temp table rb (i int); insert into rb values (1); select 1/0; select 3",
        "select 1 as s1; selec 2; select 3 as s3",
    ):
        subprocess.run([*psql, "-c", script], capture_output=True, timeout=60, check=False)
    proxy.wait_idle()

    asyncpg_events = proxy.events("query", application_name="truth-asyncpg")
    (failed,) = [e for e in asyncpg_events if "1/$1" in e["db.query.text"]]
    assert (failed["outcome"], failed["db.response.status_code"], failed["parameters"]) == ("error", "22012", [0])
    assert failed["statement"].startswith("__asyncpg_stmt")
    (fetchrow,) = [e for e in asyncpg_events if "generate_series" in e["db.query.text"]]
    assert (fetchrow["outcome"], fetchrow["rows"], fetchrow["portal_suspended"]) == ("ok", 1, True)

    (bad,) = proxy.events("query", application_name="truth-psycopg")
    assert (bad["outcome"], bad["db.response.status_code"], bad["parameters"]) == ("error", "22P02", ["abc"])

    batches = proxy.events("query", application_name="truth-psql")
    shape = [(e["db.query.text"], e["outcome"], e.get("rolled_back"), "duration_ms" in e) for e in batches]
    assert shape == [
        ("select pg_sleep(0.02)", "ok", None, False),
        ("select pg_sleep(0.03)", "ok", None, False),
        ("select 1", "ok", None, False),
        ("create temp table rb (i int)", "ok", True, False),
        ("insert into rb values (1)", "ok", True, False),
        ("select 1/0", "error", None, False),
        ("select 3", "skipped", None, False),
        ("select 1 as s1", "skipped", None, False),
        ("selec 2", "error", None, False),
        ("select 3 as s3", "skipped", None, False),
    ]
    # The server slept 50 ms in the first Query: its one duration cannot be shorter.
    assert batches[2]["batch_duration_ms"] >= 50.0
    assert [e["db.operation.batch.size"] for e in batches] == [3] * 3 + [4] * 4 + [3] * 3


def test_a_client_that_sends_without_reading_costs_a_bounded_queue_and_one_summary(
    pg: EmbeddedPostgres, proxy: ProxyHarness
) -> None:
    """Issue 8 item 7: a flood of empty queries, never read, then a vanished client."""
    with socket.create_connection((proxy.host, proxy.port)) as sock:
        sock.sendall(startup_message({"user": "postgres", "database": "postgres", "application_name": "flood"}))
        reply = b""
        while not reply.endswith(ready_for_query("I")):
            reply += sock.recv(65536)
        sock.sendall(query_message("") * 60_000)
    proxy.wait_idle(timeout=60)
    anomalies = proxy.events("session.anomaly", kind="pending_limit")
    assert len(anomalies) == 1
    interrupted = proxy.events("query", application_name="flood", outcome="interrupted")
    assert len(interrupted) <= 1
    (ended,) = proxy.events("session.ended", application_name="flood")
    assert ended["level"] == "info"
    # What was logged plus what was only counted is what the server ran.
    logged = proxy.events("query", application_name="flood")
    assert len(logged) + ended.get("unlogged_statements", 0) == ended["statements"]
    assert len(logged) <= 10_001
