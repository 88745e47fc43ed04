"""Bad input loses nothing: hostile bytes, decoder bugs and slow log readers leave forwarding intact."""

from __future__ import annotations

import io
import socket
import threading

import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.protocol.build import startup_message
from pgproxy.sink.writer import QueueWriter
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.session import SessionTracker
from tests.harness import ProxyHarness, recv_until_ready, wait_until_running


def test_malformed_client_bytes_are_forwarded_and_logged(pg: EmbeddedPostgres) -> None:
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(detail=Detail.MESSAGE)) as proxy:
        sock = socket.create_connection((proxy.host, proxy.port))
        sock.sendall(startup_message({"user": "postgres", "database": "postgres"}))
        recv_until_ready(sock)
        sock.sendall(b"Q\x00\x00\x00\x02garbage")  # a length below 4: the stream is unframeable
        reply = b""
        sock.settimeout(10)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        sock.close()
        # The server itself judged the bytes (they reached it unchanged): it logs
        # "invalid message length" and hangs up, answering nothing.
        assert reply == b""
        assert "invalid message length" in pg.log_tail(20000)
        with psycopg.connect(proxy.dsn(sslmode="disable")) as conn:  # everyone else is still served
            assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.wait_idle()
        (anomaly,) = proxy.events("session.anomaly")
        assert anomaly["kind"] == "desynchronized" and anomaly["stream"] == "frontend"
        assert anomaly["excerpt"].startswith("5100000002")


def test_decoder_failure_switches_to_passthrough(pg: EmbeddedPostgres, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    original = SessionTracker.backend
    calls = {"n": 0}

    def flaky(self: SessionTracker, data: bytes, now: float | None = None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated decoder bug")
        return original(self, data, now)

    monkeypatch.setattr(SessionTracker, "backend", flaky)
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions()) as proxy:
        with psycopg.connect(proxy.dsn(sslmode="disable")) as conn:
            for i in range(20):
                assert conn.execute("SELECT %s::int * 2", (i,)).fetchone() == (i * 2,)
            rows = conn.execute("SELECT g FROM generate_series(1, 5000) g").fetchall()
            assert len(rows) == 5000
        proxy.wait_idle()
        (anomaly,) = proxy.events("session.anomaly")
        assert anomaly["kind"] == "decoder_failure" and "simulated decoder bug" in anomaly["reason"]
        (ended,) = proxy.events("session.ended")
        assert ended["decoding"] == "stopped after a decoder failure"
        assert ended["bytes_from_server"] > 5000 * 10  # counted after the failure too


class _StalledStream(io.StringIO):
    """A log destination that blocks, like a pipe nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait()
        return super().write(s)


def test_stalled_log_output_never_blocks_and_counts_drops() -> None:
    stream = _StalledStream()
    writer = QueueWriter(stream, max_queued=100)
    producer = threading.Thread(target=lambda: [writer.write(f'{{"n":{i}}}') for i in range(10_000)])
    producer.start()
    producer.join(60)
    assert not producer.is_alive(), "writing a log line waited for the stalled stream"
    assert not stream.release.is_set()
    assert writer.dropped >= 10_000 - 100 - 4096
    stream.release.set()
    writer.close()
    text = stream.getvalue()
    assert '"event": "log.dropped"' in text or '"event":"log.dropped"' in text


def test_slow_log_reader_does_not_slow_the_proxy(pg: EmbeddedPostgres) -> None:
    """The log stream stays stuck while a client runs 200 queries: they complete, the lost lines are counted."""
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(detail=Detail.MESSAGE)) as proxy:
        stalled = _StalledStream()
        writer = proxy.sink._destinations[0].writer  # simulate a stuck pipe
        writer.stream = stalled
        writer.max_queued = 1000

        completed: list[int] = []

        def client() -> None:
            with psycopg.connect(proxy.dsn(sslmode="disable")) as conn:
                for _ in range(200):
                    conn.execute("SELECT g, md5(g::text) FROM generate_series(1, 50) g").fetchall()
                    completed.append(1)

        worker = threading.Thread(target=client)
        worker.start()
        worker.join(120)
        assert not worker.is_alive(), "queries did not complete while the log stream was stuck"
        assert len(completed) == 200
        assert not stalled.release.is_set()
        stalled.release.set()
        assert proxy.sink.flush(10)
        assert proxy.sink.dropped > 0


def test_oversized_messages_are_forwarded_and_logged_header_only(pg: EmbeddedPostgres) -> None:
    options = TrackerOptions(detail=Detail.MESSAGE, max_frame=4096)
    with ProxyHarness(("127.0.0.1", pg.port), options) as proxy:
        with psycopg.connect(proxy.dsn(sslmode="disable")) as conn:
            (value,) = conn.execute("SELECT repeat('y', 100000)").fetchone()  # type: ignore[misc]
            assert value == "y" * 100000
            long_sql = "SELECT '" + "z" * 50000 + "' AS long_literal"
            assert conn.execute(long_sql).fetchone() == ("z" * 50000,)
        proxy.wait_idle()
        rows = proxy.events("message", type="DataRow")
        assert [r.get("oversized") for r in rows] == [True, True]
        assert rows[0]["length"] == 100000 + 4 + 2 + 4
        (anomaly,) = proxy.events("session.anomaly", kind="oversized")
        assert "Parse" in anomaly["reason"] or "Query" in anomaly["reason"]
        queries = proxy.events("query")
        assert any("exceeds max_frame" in (q["db.query.text"] or "") and q["rows"] == 1 for q in queries)
        assert "z" * 5000 not in proxy.text()


@pytest.mark.slow
def test_two_hundred_concurrent_sessions(pg: EmbeddedPostgres) -> None:
    """Many clients at once, each checking its own answers: sessions never mix."""
    import asyncio

    import asyncpg

    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions()) as proxy:

        async def client(n: int) -> None:
            conn = await asyncpg.connect(proxy.dsn(application_name=f"c{n}"))
            try:
                for i in range(5):
                    assert await conn.fetchval("SELECT $1::int * 1000 + $2::int", n, i) == n * 1000 + i
            finally:
                await conn.close()

        async def run_all() -> None:
            await asyncio.gather(*(client(n) for n in range(200)))

        asyncio.run(run_all())
        proxy.wait_idle(30)
        queries = proxy.events("query")
        mine = [q for q in queries if "* 1000" in q["db.query.text"]]
        assert len(mine) == 1000
        assert all(q["parameters"][0] == int(q["application_name"][1:]) for q in mine)
        assert len({q["session"] for q in mine}) == 200


def test_max_connections_rejects_extra_clients_clearly(pg: EmbeddedPostgres) -> None:
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(), max_connections=2) as proxy:
        first = psycopg.connect(proxy.dsn(sslmode="disable"))
        second = psycopg.connect(proxy.dsn(sslmode="disable"))
        try:
            try:
                psycopg.connect(proxy.dsn(sslmode="disable"))
                raise AssertionError("a third connection was accepted")
            except psycopg.OperationalError as exc:
                assert "too many connections" in str(exc)
            assert first.execute("SELECT 1").fetchone() == (1,)
        finally:
            first.close()
            second.close()
        proxy.wait_idle()
        (rejected,) = proxy.events("session.rejected")
        assert rejected["limit"] == 2


@pytest.mark.slow
def test_shutdown_drains_idle_sessions_and_aborts_busy_ones(pg: EmbeddedPostgres) -> None:
    """Idle sessions end at once, a statement that finishes within the grace finishes, a stuck one is cancelled."""
    proxy = ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(), shutdown_grace=3.0)
    idle = psycopg.connect(proxy.dsn(sslmode="disable", application_name="idle"), autocommit=True)
    idle.execute("SELECT 1")
    finishing = psycopg.connect(proxy.dsn(sslmode="disable", application_name="finishing"), autocommit=True)
    stuck = psycopg.connect(proxy.dsn(sslmode="disable", application_name="stuck"), autocommit=True)
    stuck.pgconn.send_query(b"SELECT pg_sleep(60)")
    finishing.pgconn.send_query(b"SELECT pg_sleep(1)")
    wait_until_running(pg, "SELECT pg_sleep(60)")
    wait_until_running(pg, "SELECT pg_sleep(1)")
    proxy.close()
    events = json_lines(proxy.stream.getvalue())
    order = [(e["event"], e.get("application_name")) for e in events if e["event"] in ("session.ended", "query")]
    ended = {e["application_name"]: e for e in events if e["event"] == "session.ended"}
    assert {name: e["reason"] for name, e in ended.items()} == dict.fromkeys(
        ("idle", "finishing", "stuck"), "proxy_shutdown"
    )
    # Draining: the idle session went first; the finishing statement ran to its end, then its session closed.
    (done,) = [e for e in events if e["event"] == "query" and e["db.query.text"] == "SELECT pg_sleep(1)"]
    assert done["outcome"] == "ok"
    assert order.index(("session.ended", "idle")) < order.index(("query", "finishing"))
    assert order.index(("query", "finishing")) < order.index(("session.ended", "finishing"))
    # Aborting: at the end of the grace the stuck statement was cancelled, not left running.
    (cancel,) = [e for e in events if e["event"] == "cancel.forwarded"]
    assert cancel["reason"] == "proxy_shutdown" and cancel["target_session"] == ended["stuck"]["session"]
    (stuck_query,) = [e for e in events if e["event"] == "query" and e["db.query.text"] == "SELECT pg_sleep(60)"]
    assert stuck_query["outcome"] in ("interrupted", "error")
    assert order.index(("session.ended", "finishing")) < order.index(("session.ended", "stuck"))
    with pytest.raises(psycopg.OperationalError, match="administrator command"):
        idle.execute("SELECT 1")
    for conn in (idle, finishing, stuck):
        conn.close()


def json_lines(text: str) -> list[dict]:  # type: ignore[type-arg]
    import json

    return [json.loads(line) for line in text.splitlines()]
