"""Protocol 3.2 and start-up negotiation through pgproxy: longer cancel keys, NegotiateProtocolVersion, ``_pq_.``."""

from __future__ import annotations

import socket
import struct
import threading

import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.protocol.build import startup_message
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from tests.harness import ProxyHarness, chain, recv_until_ready

MESSAGE = TrackerOptions(detail=Detail.MESSAGE)


def _libpq_18() -> None:
    if psycopg.pq.version() < 180000:
        pytest.skip(f"SKIPPED LOUDLY: psycopg's libpq {psycopg.pq.version()} cannot ask for protocol 3.2")


def cancel_running_statement(proxy: ProxyHarness, dsn: str, server: EmbeddedPostgres) -> psycopg.Connection:  # type: ignore[type-arg]
    """Run pg_sleep through the proxy and cancel it with libpq's cancel API; returns the connection.

    The cancel is sent once the server shows the statement running: a cancel
    that arrives before the backend has read the query is (rightly) ignored.
    """
    conn = psycopg.connect(dsn, autocommit=True)
    failure: list[BaseException] = []

    def sleep() -> None:
        try:
            conn.execute("SELECT pg_sleep(60)")
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=sleep)
    worker.start()
    with psycopg.connect(server.dsn(), autocommit=True) as watcher:
        proxy.wait_for(
            lambda: (
                watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'"
                ).fetchone()
                == (1,)
            )
        )
    conn.cancel_safe(timeout=10)
    worker.join(30)
    assert not worker.is_alive()
    assert failure and isinstance(failure[0], psycopg.errors.QueryCanceled), failure
    return conn


def test_protocol_32_session_and_cancel(pg: EmbeddedPostgres) -> None:
    """PostgreSQL 18 with max_protocol_version=3.2: a 32-byte cancel key, and the cancel goes through."""
    _libpq_18()
    if pg.major < 18:
        pytest.skip(f"SKIPPED LOUDLY: protocol 3.2 needs PostgreSQL 18, the primary server is {pg.major}")
    with ProxyHarness(("127.0.0.1", pg.port), MESSAGE) as proxy:
        conn = cancel_running_statement(proxy, proxy.dsn(max_protocol_version="3.2"), pg)
        assert conn.info.pgconn.protocol_version == 3 and conn.execute("SELECT 1").fetchone() == (1,)
        conn.close()
        proxy.wait_idle()
        (ready,) = proxy.events("session.ready")
        assert ready["protocol_version"] == "3.2"
        (started,) = proxy.events("session.started")
        assert started["protocol_version"] == "3.2"
        (key,) = proxy.events("message", type="BackendKeyData")
        assert key["length"] == 4 + 4 + 32  # length word, process id, 32-byte secret key
        (cancel,) = proxy.events("cancel.forwarded")
        assert cancel["backend_pid"] == ready["backend_pid"] and cancel["target_session"] == ready["session"]
        (query,) = proxy.events("query", **{"db.query.text": "SELECT pg_sleep(60)"})
        assert query["db.response.status_code"] == "57014"


def test_older_server_negotiates_down(any_pg: EmbeddedPostgres) -> None:
    """A client asking for 3.2 from a server < 18 gets NegotiateProtocolVersion; the session runs 3.0."""
    _libpq_18()
    with ProxyHarness(("127.0.0.1", any_pg.port), MESSAGE) as proxy:
        with psycopg.connect(proxy.dsn(max_protocol_version="3.2")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.wait_idle()
        (ready,) = proxy.events("session.ready")
        negotiations = proxy.events("message", type="NegotiateProtocolVersion")
        if any_pg.major >= 18:
            assert ready["protocol_version"] == "3.2" and not negotiations
        else:
            assert ready["protocol_version"] == "3.0"
            (negotiation,) = negotiations
            assert negotiation["newest_minor"] == 0


def test_unknown_minor_version_and_pq_options_pass_untouched(pg: EmbeddedPostgres) -> None:
    """libpq-style probes (3.9999, ``_pq_.`` options) reach the server byte for byte; its answer is decoded."""
    startup = startup_message(
        {"user": "postgres", "database": "postgres", "_pq_.pgproxy_probe": "on", "application_name": ""}, minor=9999
    )
    with chain(("127.0.0.1", pg.port), MESSAGE) as (near_client, proxy, near_server):
        with socket.create_connection(("127.0.0.1", near_client.port), timeout=10) as sock:
            sock.sendall(startup)
            answer = recv_until_ready(sock)
            sock.sendall(b"X\x00\x00\x00\x04")
        near_client.wait_idle()
        near_server.wait_idle()
        assert bytes(near_server.recordings[0].client_sent).startswith(startup)
        assert bytes(near_client.recordings[0].server_sent) == bytes(near_server.recordings[0].server_sent)
        proxy.wait_idle()
        (negotiation,) = proxy.events("message", type="NegotiateProtocolVersion")
        assert negotiation["unrecognized_options"] == ["_pq_.pgproxy_probe"]
        assert answer.startswith(b"v")
        newest = struct.unpack_from("!i", answer, 5)[0] & 0xFFFF
        (ready,) = proxy.events("session.ready")
        assert ready["protocol_version"] == f"3.{newest}"
        assert ready["protocol_options_unsupported"] == ["_pq_.pgproxy_probe"]
        (started,) = proxy.events("session.started")
        assert started["application_name"] == "" and started["protocol_version"] == "3.9999"
